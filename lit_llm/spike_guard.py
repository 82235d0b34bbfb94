"""``SpikeGuard``: a run that survives its own loss spikes (the ``callbacks.spike_guard`` node).

A spike is a training loss above ``factor`` x the median of the last ``window`` losses (once
``window`` losses have been seen), or a loss that is not finite. On a spike the guard either

- ``action: skip``: drops that batch's update (its ``training_step`` returns None, which Lightning's
  automatic optimization takes as "no backward, no optimizer step"), or
- ``action: rollback``: drops that update too, then restores model and optimizer from the last good
  snapshot (taken in memory whenever a checkpoint is written, and at the start: so after a resume it
  is last.ckpt itself), multiplies the learning rate by ``lr_factor`` for the next ``lr_steps`` steps,
  and goes on with the *next* windows: the data stream follows the step counter, which a rollback
  does not rewind, so the bad windows are not seen again.

After ``max_rollbacks`` rollbacks (or ``max_skips`` skips) the run stops with ``SpikeGuardError``,
which names the last good checkpoint as the non-finite guard does. Every event is logged
(``guard/spikes``, ``guard/rollbacks``, running counts) and appended to ``<run>/guard_events.jsonl``
(step, loss, median, action), each line flushed and fsynced.

Why a median: a mean is dragged up by the spike it should catch, and early in training, when the loss
falls fast, any fixed threshold would either fire on every step or miss the spikes of later. The loss
of each step is read on the host (one read per step: free on a CPU, a small stall on a GPU); the guard
is off by default. Determinism: its state (the window of losses, counts, the rate reduction still to
run) is saved in checkpoints, so a resumed run makes the same decisions.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections import deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_llm.callbacks import NonFiniteLossError, last_good_checkpoint

ACTIONS = ("skip", "rollback")


def _json_value(value: Any) -> Any:
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


class SpikeGuardError(NonFiniteLossError):
    """The loss kept spiking after the allowed number of skips or rollbacks."""


def _clone(state: Any) -> Any:
    """A copy of a state dict whose tensors own their memory (``state_dict()`` returns views of the live
    weights, and ``Optimizer.load_state_dict`` may keep the tensors it is given)."""
    return apply_to_collection(state, Tensor, lambda t: t.detach().clone())


class SpikeGuard(Callback):
    """Skip or roll back the updates of loss spikes (the module docstring says what and why)."""

    def __init__(
        self,
        factor: float = 3.0,
        window: int = 50,
        action: str = "skip",
        lr_factor: float = 0.5,
        lr_steps: int = 100,
        max_rollbacks: int = 3,
        max_skips: int = 100,
        events_file: str | None = None,
    ) -> None:
        problems = []
        if not (isinstance(factor, int | float) and factor > 1):
            problems.append(f"factor={factor!r}: expected a number > 1")
        if not (isinstance(window, int) and window >= 3):
            problems.append(f"window={window!r}: expected an integer >= 3")
        if action not in ACTIONS:
            problems.append(f"action={action!r}: expected one of {', '.join(ACTIONS)}")
        if not (isinstance(lr_factor, int | float) and 0 < lr_factor <= 1):
            problems.append(f"lr_factor={lr_factor!r}: expected a number in (0, 1]")
        counts = {"lr_steps": lr_steps, "max_rollbacks": max_rollbacks, "max_skips": max_skips}
        for name, value in counts.items():
            if not (isinstance(value, int) and value >= 0):
                problems.append(f"{name}={value!r}: expected a non-negative integer")
        if problems:
            raise ValueError("callbacks.spike_guard: " + "; ".join(problems))
        self.factor, self.window, self.action = float(factor), window, action
        self.lr_factor, self.lr_steps = float(lr_factor), lr_steps
        self.max_rollbacks, self.max_skips = max_rollbacks, max_skips
        self.events_file = Path(events_file) if events_file else None
        self.losses: deque[float] = deque(maxlen=window)
        self.spikes = self.rollbacks = self.skips = 0
        self.lr_steps_left = 0
        self.events: list[dict[str, Any]] = []
        self._pending: dict[str, Any] | None = None  # a rollback spike seen in training_step
        self._snapshot: dict[str, Any] | None = None
        self._snapshot_step = 0
        self._nonfinite_weights = False
        self._nonfinite_step = 0

    # -- the decision ---------------------------------------------------------------------------

    def judge(self, loss: float) -> tuple[bool, float | None]:
        """(is this loss a spike, the median it was compared with); a healthy loss joins the window."""
        median = statistics.median(self.losses) if len(self.losses) == self.window else None
        spike = not math.isfinite(loss) or (median is not None and loss > self.factor * median)
        if not spike:
            self.losses.append(loss)
        return spike, median

    def check_loss(self, pl_module: pl.LightningModule, loss: Tensor) -> bool:
        """Called by ``LanguageModelModule.training_step`` with the micro-batch's loss: False means "drop
        this update". On a spike both actions drop it; rollback then also restores the snapshot."""
        trainer = pl_module.trainer
        value = float(loss.detach())  # the one host read per step
        spike, median = self.judge(value)
        # A non-finite loss whose update is skipped says the weights themselves are bad: nothing may be
        # validated or saved from them (rollback restores good ones right after this step).
        if not math.isfinite(value) and self.action == "skip" and not self._nonfinite_weights:
            self._nonfinite_weights, self._nonfinite_step = True, trainer.global_step
        if not spike:
            return True
        self.spikes += 1
        event = {"step": trainer.global_step, "loss": value, "median": median, "action": self.action}
        if self.action == "skip":
            self.skips += 1
            self._record(trainer, event)
            if self.skips > self.max_skips:
                self._give_up(
                    trainer,
                    f"the training loss kept spiking: {self.skips} skipped updates (max_skips="
                    f"{self.max_skips}) by step {trainer.global_step}",
                )
        else:
            self._pending = event  # restored after this (skipped) step, in on_train_batch_end
        return False  # the offending batch never updates the weights, whichever the action

    # -- Lightning hooks ------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(pl_module, "spike_guard"):
            raise TypeError("callbacks.spike_guard needs a LanguageModelModule (its training_step asks it)")
        if trainer.world_size > 1:
            # Lightning refuses a training_step that returns None under DDP (the ranks would disagree on
            # whether to step): the guard would need a collective per step. Off rather than wrong.
            rank_zero_warn("callbacks.spike_guard acts on one device only; with several it is off")
            return
        pl_module.spike_guard = self
        if self.events_file is None:
            self.events_file = Path(trainer.default_root_dir) / "guard_events.jsonl"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.action == "rollback":
            self._take_snapshot(trainer, pl_module)  # the start, or the checkpoint resumed from

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.lr_steps_left > 0:  # the scheduler set this step's rate; lower it (not compounded)
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] *= self.lr_factor

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.lr_steps_left > 0:
            self.lr_steps_left -= 1
        if self._pending is None:
            return
        event, self._pending = self._pending, None
        self.rollbacks += 1
        if self.rollbacks > self.max_rollbacks:
            self._record(trainer, event)
            self._give_up(
                trainer,
                f"the training loss kept spiking: {self.rollbacks} spikes needing a rollback "
                f"(max_rollbacks={self.max_rollbacks}) by step {trainer.global_step}",
            )
        self._restore(trainer, pl_module)
        event["restored_step"] = self._snapshot_step
        self.lr_steps_left = self.lr_steps
        self._record(trainer, event)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._nonfinite_weights and not trainer.sanity_checking:
            self._give_up(trainer, self._nonfinite_reason())

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self._nonfinite_weights:  # raising here leaves the checkpoint files as they were
            self._give_up(trainer, self._nonfinite_reason())
        if self.action == "rollback" and not trainer.sanity_checking:
            self._take_snapshot(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "spikes": self.spikes,
            "rollbacks": self.rollbacks,
            "skips": self.skips,
            "lr_steps_left": self.lr_steps_left,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.losses = deque(state_dict["losses"], maxlen=self.window)
        self.spikes, self.rollbacks = state_dict["spikes"], state_dict["rollbacks"]
        self.skips, self.lr_steps_left = state_dict["skips"], state_dict["lr_steps_left"]

    # -- helpers --------------------------------------------------------------------------------

    def _take_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot = {
            "model": _clone(pl_module.state_dict()),
            "optimizers": [_clone(opt.state_dict()) for opt in trainer.optimizers],
        }
        self._snapshot_step = trainer.global_step

    def _restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Model and optimizer state as in the snapshot (copied in: the snapshot stays for later use).
        The step counter, the schedule and the data stream go on: the windows after the spike are new."""
        assert self._snapshot is not None
        pl_module.load_state_dict(self._snapshot["model"])
        for optimizer, state in zip(trainer.optimizers, self._snapshot["optimizers"], strict=True):
            lrs = [group["lr"] for group in optimizer.param_groups]  # the schedule's, kept
            optimizer.load_state_dict(_clone(state))
            for group, lr in zip(optimizer.param_groups, lrs, strict=True):
                group["lr"] = lr

    def _record(self, trainer: pl.Trainer, event: dict[str, Any]) -> None:
        self.events.append(event)
        metrics = {"guard/spikes": float(self.spikes), "guard/rollbacks": float(self.rollbacks)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=event["step"])
        if trainer.is_global_zero and self.events_file is not None:
            self.events_file.parent.mkdir(parents=True, exist_ok=True)
            # A NaN/inf loss as "nan"/"inf": the file stays strict JSON, one object per line.
            line = json.dumps({k: _json_value(v) for k, v in event.items()})
            with open(self.events_file, "a", encoding="utf-8") as f:  # whole lines, flushed and synced
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())

    def _nonfinite_reason(self) -> str:
        return f"non-finite training loss (NaN or inf) at step {self._nonfinite_step}, its update skipped"

    def _give_up(self, trainer: pl.Trainer, reason: str) -> None:
        keep = last_good_checkpoint(trainer)
        raise SpikeGuardError(
            f"{reason}; training stopped and {keep}. Try a lower optimizer.lr, a longer "
            "scheduler.warmup_iters or trainer.gradient_clip_val, then resume with ckpt_path=..."
        )
