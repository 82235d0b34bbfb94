"""The Lightning side of checkpoints: ``AtomicCheckpointIO`` and ``RunCheckpoint`` (last.ckpt + best.ckpt).

Both are thin: the file work is ``lit_llm.checkpoint`` (``save``: atomic; ``safe_load``: weights only,
one-line errors) and ``tokenizer.files.copy_file``.

Why not Lightning's own pieces as they are:
- ``TorchCheckpointIO`` serialises into memory and writes through an fsspec transaction whose temporary
  file lives in the system temp folder; where that is another filesystem the final move is a copy, and
  a crash during it leaves a truncated checkpoint. It also loads with whatever ``weights_only`` it is
  given. ``AtomicCheckpointIO`` writes beside the target and always loads with ``weights_only=True``.
- ``ModelCheckpoint(save_last=True, save_top_k=1)`` (Lightning 2.6) writes last.ckpt only at a step where
  it also wrote a top-k checkpoint (``on_validation_end``: ``_last_global_step_saved == global_step``),
  and at the end of training only if it never wrote one (``on_train_end``). So a validation that does
  not improve, and the end of training, leave last.ckpt behind; resuming would lose those steps.
  ``tests/test_checkpoint.py`` proves this against the installed Lightning. ``RunCheckpoint`` keeps the
  contract resume needs: last.ckpt after every validation and at the end, best.ckpt on improvement.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

from lit_llm.checkpoint import safe_load, save
from lit_llm.cli import is_disk_error
from tokenizer.files import copy_file

LAST = "last.ckpt"
BEST = "best.ckpt"


def _is_remote(path: Any) -> bool:
    return "://" in str(path)


def _disk_error(exc: BaseException) -> OSError | None:
    """The full/read-only/forbidden-disk ``OSError`` behind ``exc``: torch.save reports a failed write as a
    RuntimeError ("PytorchStreamWriter failed writing ..."), the OSError only as its ``__context__``."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and is_disk_error(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Local checkpoint files written all-or-nothing, read with ``weights_only=True``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if _is_remote(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            save(checkpoint, path)
        except (OSError, RuntimeError) as exc:
            disk = _disk_error(exc)
            if disk is None:
                raise
            # One line naming the checkpoint (the CLI prints "error: cannot write PATH: CAUSE").
            raise OSError(disk.errno, os.strerror(disk.errno), str(path)) from None

    def load_checkpoint(
        self, path: Any, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        # weights_only is always True here, whatever the caller asks for; tensors land on the CPU
        # (as with Lightning's default) and the strategy moves them.
        if _is_remote(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return safe_load(path, map_location=map_location)


class RunCheckpoint(Checkpoint):
    """``last.ckpt`` after every validation and when training ends; ``best.ckpt`` whenever ``monitor``
    improves at a validation. Both live in ``dirpath`` (the run's checkpoints/ folder).

    A resumed run writes into its own new folder; best-score tracking carries over only when the folder
    is the same (as Lightning's ModelCheckpoint does), so every run folder gets its own best.ckpt.
    """

    def __init__(
        self, dirpath: str, monitor: str = "val/loss", mode: str = "min", save_best: bool = True
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}: expected 'min' or 'max'")
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.mode = mode
        self.save_best = save_best
        self.best_model_score: float | None = None
        self.best_model_path = ""
        self.last_model_path = ""
        self._last_saved_step = -1

    @property
    def state_key(self) -> str:
        return f"RunCheckpoint[monitor={self.monitor}]"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._save(trainer, validated=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_saved_step and trainer.global_step > 0:
            self._save(trainer, validated=False)

    def _improved(self, trainer: pl.Trainer) -> float | None:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return None
        score = float(value)
        if not math.isfinite(score):
            return None
        if self.best_model_score is None:
            return score
        better = score < self.best_model_score if self.mode == "min" else score > self.best_model_score
        return score if better else None

    def _save(self, trainer: pl.Trainer, *, validated: bool) -> None:
        last, best = self.dirpath / LAST, self.dirpath / BEST
        score = self._improved(trainer) if (validated and self.save_best) else None
        # Update the state first: it is part of what the checkpoint records.
        if score is not None:
            self.best_model_score, self.best_model_path = score, str(best)
        self.last_model_path = str(last)
        trainer.save_checkpoint(last, weights_only=False)  # False: the full training state
        if score is not None:
            if trainer.is_global_zero:
                copy_file(last, best)
            trainer.strategy.barrier("RunCheckpoint.best")
        self._last_saved_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {
            "dirpath": str(self.dirpath),
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") == str(self.dirpath):
            self.best_model_score = state_dict.get("best_model_score")
            self.best_model_path = state_dict.get("best_model_path", "")
