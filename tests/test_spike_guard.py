"""The loss-spike guard (lit_llm/spike_guard.py): a spike injected into a tiny run (its loss multiplied
by 100 through the loss function) triggers exactly one event of the configured action; a rollback
leaves model and optimizer exactly as in the snapshot; a healthy run triggers none; a run whose loss
stays non-finite stops naming the last good checkpoint; the guard's decisions survive a resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_callbacks import PoisonWeights
from test_module import TinyData, make_module, make_trainer
from tiny_lm import one_thread  # noqa: F401  (an autouse fixture)

import lit_llm.module
from lit_llm.run_checkpoints import RunCheckpoint
from lit_llm.spike_guard import SpikeGuard, SpikeGuardError

SPIKE_AT = 12  # the training_step call whose loss is multiplied by 100


@pytest.fixture
def spike(monkeypatch):
    """Multiply the loss of the SPIKE_AT-th training step (0-based) by 100."""
    real = lit_llm.module.cross_entropy
    calls = {"n": 0}

    def spiky(logits, targets):
        loss = real(logits, targets)
        calls["n"] += 1
        return loss * 100 if calls["n"] - 1 == SPIKE_AT else loss

    monkeypatch.setattr(lit_llm.module, "cross_entropy", spiky)


class Watch(Callback):
    """Weights and optimizer state around each step, and the learning rate each step used."""

    def __init__(self) -> None:
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[batch_idx] = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])  # after the guard lowered it

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[batch_idx] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def fit(tmp_path: Path, guard: SpikeGuard, steps: int = 20, **kwargs) -> tuple:
    module, watch = make_module(), Watch()
    callbacks = [guard, watch, *kwargs.pop("callbacks", [])]
    trainer = make_trainer(max_steps=steps, default_root_dir=str(tmp_path), callbacks=callbacks, **kwargs)
    trainer.fit(module, datamodule=TinyData(n_batches=64))
    return module, watch, trainer


def events_of(tmp_path: Path) -> list[dict]:
    path = tmp_path / "guard_events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_healthy_run_triggers_nothing(tmp_path: Path) -> None:
    guard = SpikeGuard(window=5)
    fit(tmp_path, guard, steps=30)
    assert guard.events == [] and guard.spikes == 0
    assert not (tmp_path / "guard_events.jsonl").exists()


def test_skip_drops_exactly_the_spiking_update(tmp_path: Path, spike) -> None:
    guard = SpikeGuard(window=5, action="skip")
    _, watch, _ = fit(tmp_path, guard)
    assert [(e["step"], e["action"]) for e in guard.events] == [(SPIKE_AT, "skip")]
    event = events_of(tmp_path)[0]
    assert event["loss"] > 100 and event["loss"] > 3 * event["median"]
    before, after = watch.before[SPIKE_AT], watch.after[SPIKE_AT]
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update from that batch
    # The next step updates again: Adam moves every weight with a non-zero gradient by about lr.
    assert not all(torch.equal(watch.before[SPIKE_AT + 1][k], watch.after[SPIKE_AT + 1][k]) for k in before)


def test_rollback_restores_the_snapshot_exactly_and_lowers_the_rate(tmp_path: Path, spike) -> None:
    class CheckRestore(Callback):
        """Right after the guard's rollback (it runs first): model and optimizer state = snapshot."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx != SPIKE_AT:
                return
            snapshot = guard._snapshot
            model = pl_module.state_dict()
            assert all(torch.equal(model[k], snapshot["model"][k]) for k in model)
            state, saved = trainer.optimizers[0].state_dict(), snapshot["optimizers"][0]
            for index, entry in saved["state"].items():
                for name, tensor in entry.items():
                    assert torch.equal(torch.as_tensor(state["state"][index][name]), torch.as_tensor(tensor))
            self.checked = True

    guard = SpikeGuard(window=5, action="rollback", lr_factor=0.5, lr_steps=3)
    check = CheckRestore()
    ckpt = RunCheckpoint(dirpath=str(tmp_path / "ckpt"))
    _, watch, _ = fit(
        tmp_path,
        guard,
        callbacks=[check, ckpt],
        val_check_interval=10,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        enable_checkpointing=True,
    )
    assert getattr(check, "checked", False)
    assert [(e["step"], e["action"]) for e in events_of(tmp_path)] == [(SPIKE_AT, "rollback")]
    assert guard.rollbacks == 1 and events_of(tmp_path)[0]["restored_step"] == 10  # the checkpoint's
    # The snapshot of step 10 is the weights written to the checkpoint of step 10.
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 20  # the end of training; step 10's was replaced
    # The three steps after the rollback ran at half the schedule's rate (3e-4 from step 6 on here).
    min_lr = 3e-4
    assert watch.lrs[SPIKE_AT - 1 : SPIKE_AT + 5] == pytest.approx([min_lr] * 2 + [min_lr / 2] * 3 + [min_lr])


def test_a_loss_that_stays_non_finite_stops_the_run_keeping_the_last_good_checkpoint(tmp_path: Path) -> None:
    guard = SpikeGuard(window=5, action="skip", max_skips=100)
    ckpt = RunCheckpoint(dirpath=str(tmp_path / "ckpt"))
    with pytest.raises(
        SpikeGuardError,
        match=r"non-finite training loss \(NaN or inf\) at step 5, its update skipped; training stopped and "
        r"the last good checkpoint is .*last\.ckpt",
    ):
        fit(
            tmp_path,
            guard,
            steps=30,
            callbacks=[PoisonWeights(at=5), ckpt],
            val_check_interval=2,
            check_val_every_n_epoch=None,
            limit_val_batches=1,
            enable_checkpointing=True,
        )
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    assert saved["global_step"] == 4  # the last validation before the weights turned NaN (at step 5)
    assert [e["loss"] for e in events_of(tmp_path)] == ["nan"]  # step 5: skipped; step 6: validation stops it


def test_decisions_survive_a_resume() -> None:
    losses = [3.0, 2.9, 2.8, 2.85, 2.7, 9.5, 2.6, 2.65, 30.0, 2.5, float("nan"), 2.4]
    whole, first = SpikeGuard(window=4), SpikeGuard(window=4)
    decisions = [whole.judge(x)[0] for x in losses]
    for x in losses[:6]:
        first.judge(x)
    resumed = SpikeGuard(window=4)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.judge(x)[0] for x in losses[6:]] == decisions[6:]
    assert decisions == [False] * 5 + [True, False, False, True, False, True, False]
    assert not math.isnan(max(whole.losses))  # spikes never join the window


def test_bad_settings_are_one_clear_error() -> None:
    with pytest.raises(
        ValueError, match=r"callbacks.spike_guard: factor=1: expected a number > 1; action='undo'"
    ):
        SpikeGuard(factor=1, action="undo")
