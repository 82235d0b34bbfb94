"""Callbacks and checkpoint files: throughput/MFU arithmetic, the text sampler, the non-finite-loss guard
(which must leave the last good checkpoint untouched), last/best checkpoints, atomic writes and
weights_only loading, and finding the latest run's last.ckpt."""

from __future__ import annotations

import csv
import gc
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from test_module import TinyData, fit_to_tensorboard, make_module, make_trainer

from lit_llm.callbacks import (
    FreezeStartupObjects,
    NonFiniteLossError,
    NonFiniteLossGuard,
    ParameterHistograms,
    TextSamples,
    TokenThroughput,
    compute_precision,
    histogram_fields,
    lookup_peak_flops,
    sample_tokens,
)
from lit_llm.flops import estimate_flops_per_token
from lit_llm.run_checkpoints import AtomicCheckpointIO, RunCheckpoint
from lit_llm.train import find_last_checkpoint


def test_peak_flops_table_prefers_the_specific_name() -> None:
    assert lookup_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989.4e12
    assert lookup_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert lookup_peak_flops("NVIDIA A100-SXM4-80GB", "tf32") == 156e12
    assert lookup_peak_flops("Tesla V100-SXM2-16GB", "bf16") == 15.7e12  # no bf16 units: fp32 figure
    assert lookup_peak_flops("Some Future GPU", "bf16") is None
    assert compute_precision("bf16-mixed") == "bf16" and compute_precision("16-mixed") == "fp16"
    assert compute_precision("32-true") in ("fp32", "tf32")


def test_throughput_logs_tokens_per_second_and_mfu(tmp_path: Path) -> None:
    module, data = make_module(), TinyData(batch_size=4)
    peak = 1e11
    trainer = make_trainer(
        max_steps=6,
        log_every_n_steps=2,
        logger=CSVLogger(tmp_path, name="", version=""),
        callbacks=[TokenThroughput(peak_flops=peak)],
    )
    trainer.fit(module, datamodule=data)
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("throughput/tokens_per_sec")]
    assert len(rows) == 3  # steps 2, 4, 6
    per_token = estimate_flops_per_token(module.config)
    for row in rows:
        tokens_per_sec = float(row["throughput/tokens_per_sec"])
        assert tokens_per_sec > 0
        assert float(row["throughput/mfu"]) == pytest.approx(tokens_per_sec * per_token / peak, rel=1e-5)


def test_greedy_sampling_follows_the_argmax_and_stops_at_eot() -> None:
    model = make_module().model.eval()
    prompt = [1, 2, 3]
    new = sample_tokens(
        model, prompt, max_new_tokens=5, context_length=16, temperature=0, generator=torch.Generator()
    )
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(5):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert new == ids[3:]
    stop_at = new.index(new[-1])  # the first occurrence of some generated id
    stopped = sample_tokens(
        model,
        prompt,
        max_new_tokens=5,
        context_length=16,
        temperature=0,
        generator=torch.Generator(),
        stop_id=new[-1],
    )
    assert stopped == new[:stop_at]  # the stop id itself is not returned


def test_temperature_sampling_is_reproducible_and_crops_the_context() -> None:
    model = make_module().model.eval()
    prompt = list(range(20))  # longer than the 16-token context: only the last 16 are fed

    def run(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return sample_tokens(model, prompt, max_new_tokens=8, context_length=16, temperature=1.0, generator=g)

    assert run(0) == run(0)
    assert len(run(0)) == 8 and all(0 <= i < 64 for i in run(0))


def test_text_samples_run_at_each_validation() -> None:
    module, data = make_module(), TinyData()
    samples = TextSamples(prompts=["hi", "there"], max_new_tokens=4, temperature=0.5, seed=1)
    trainer = make_trainer(
        max_steps=2, val_check_interval=1, check_val_every_n_epoch=None, limit_val_batches=1
    )
    trainer.callbacks.append(samples)
    trainer.fit(module, datamodule=data)
    assert len(samples.last_samples) == 2
    assert samples.last_samples[0].startswith("hi") and len(samples.last_samples[0]) == len("hi") + 4


class PoisonWeights(Callback):
    """Fills a weight with NaN just before optimizer step ``at`` (so its loss is the first non-finite one)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            with torch.no_grad():
                pl_module.model.lm_head.weight.fill_(float("nan"))


@pytest.mark.parametrize("check_every", [1, 100])
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, check_every: int) -> None:
    module, data = make_module(), TinyData()
    ckpt = RunCheckpoint(dirpath=str(tmp_path))
    trainer = make_trainer(
        max_steps=12,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        enable_checkpointing=True,
        callbacks=[PoisonWeights(at=5), NonFiniteLossGuard(check_every_n_steps=check_every), ckpt],
    )
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite training loss.*last good checkpoint is .*last\.ckpt"
    ):
        trainer.fit(module, datamodule=data)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4  # the last validation before the NaN (steps 2 and 4 validated)
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    assert sorted(os.listdir(tmp_path)) == ["best.ckpt", "last.ckpt"]  # no temporary files left


class Unsafe:
    """Any class: unpickling it would run code of the file's choosing."""


def test_atomic_io_keeps_the_old_file_when_a_write_fails(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.ckpt"]
    assert io.load_checkpoint(path)["step"].item() == 1


def test_atomic_io_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"payload": Unsafe()}, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_find_last_checkpoint_picks_the_newest_other_run(tmp_path: Path) -> None:
    for i, run in enumerate(["2026-01-02_00-00-00", "2026-01-01_00-00-00", "current"]):
        folder = tmp_path / run / "checkpoints"
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"x")
        stamp = time.time() - 100 + 10 * i  # written in list order: the oldest first
        os.utime(folder / "last.ckpt", (stamp, stamp))
    assert (
        find_last_checkpoint(tmp_path, exclude=tmp_path / "current").parent.parent.name
        == "2026-01-01_00-00-00"
    )
    with pytest.raises(FileNotFoundError, match="ckpt_path=last: no .*last.ckpt found"):
        find_last_checkpoint(tmp_path / "nothing")


def test_progress_bar_reads_metrics_only_on_logging_steps(monkeypatch) -> None:
    from lightning.pytorch.callbacks import RichProgressBar

    from lit_llm.callbacks import LogStepProgressBar

    reads: list[int] = []
    original = RichProgressBar.get_metrics

    def counting(self, trainer, pl_module):
        if trainer.training:
            reads.append(trainer.global_step)
        return original(self, trainer, pl_module)

    monkeypatch.setattr(RichProgressBar, "get_metrics", counting)
    bar = LogStepProgressBar()
    trainer = make_trainer(max_steps=9, log_every_n_steps=3, enable_progress_bar=True, callbacks=[bar])
    trainer.fit(make_module(), datamodule=TinyData())
    assert reads == [1, 3, 6, 9]  # the first batch, then logging steps only: not after every batch
    assert bar.train_progress_bar.description == "train"  # not Lightning's "Epoch 0/-2"


def test_histogram_fields_count_each_value_in_its_equal_bucket() -> None:
    """Values at the centres of 64 unit buckets between 0 and 64 (plus both ends): each counted in its
    own bucket, as numpy counts them; non-finite values are left out of every field."""
    g = torch.Generator().manual_seed(0)
    per_bucket = torch.randint(0, 5, (64,), generator=g)
    centres = torch.repeat_interleave(torch.arange(64) + 0.5, per_bucket)
    values = torch.cat([centres, torch.tensor([0.0, 64.0, float("nan"), float("inf"), -float("inf")])])
    values = values[torch.randperm(values.numel(), generator=g)].reshape(-1, 1)
    fields = histogram_fields(values, bins=64)
    finite = values[torch.isfinite(values)].double().numpy()
    counts, edges = np.histogram(finite, bins=64, range=(0.0, 64.0))
    assert fields["bucket_counts"] == counts.tolist()
    assert fields["bucket_limits"] == pytest.approx(edges[1:].tolist(), abs=1e-9)
    assert (fields["min"], fields["max"], fields["num"]) == (0.0, 64.0, finite.size)
    assert fields["sum"] == pytest.approx(finite.sum(), rel=1e-6)
    assert fields["sum_squares"] == pytest.approx((finite**2).sum(), rel=1e-6)


def test_histogram_fields_of_a_constant_and_of_nothing_finite() -> None:
    ones = histogram_fields(torch.ones(3, 5))  # a norm gain at initialisation
    assert (ones["bucket_limits"], ones["bucket_counts"], ones["num"]) == ([1.0], [15.0], 15)
    assert histogram_fields(torch.full((4,), float("nan"))) is None
    assert histogram_fields(torch.empty(0, 3)) is None
    random = histogram_fields(torch.randn(1000, generator=torch.Generator().manual_seed(1)), bins=30)
    assert len(random["bucket_counts"]) == len(random["bucket_limits"]) == 30
    assert sum(random["bucket_counts"]) == 1000 and random["bucket_limits"][-1] == random["max"]


def test_parameter_histograms_reach_tensorboard(tmp_path: Path) -> None:
    module = make_module()
    events = fit_to_tensorboard(
        tmp_path, ParameterHistograms(bins=16), max_steps=2, val_check_interval=2, module=module
    )
    names = [name for name, _ in module.named_parameters()]
    assert sorted(events.Tags()["histograms"]) == sorted(
        f"{k}/{n}" for k in ("weights", "grads") for n in names
    )
    weight = module.model.lm_head.weight.detach()
    (written,) = events.Histograms("weights/model.lm_head.weight")
    assert written.step == 2 and written.histogram_value.num == weight.numel()
    assert written.histogram_value.min == pytest.approx(float(weight.min()))
    assert written.histogram_value.max == pytest.approx(float(weight.max()))
    assert sum(written.histogram_value.bucket) == weight.numel()


@pytest.mark.parametrize("bins", [0, -3, 2.5, True, "64"])
def test_parameter_histograms_refuse_a_bucket_count_that_is_no_positive_integer(bins) -> None:
    with pytest.raises(ValueError, match=rf"^bins={bins!r}: expected a positive integer$"):
        ParameterHistograms(bins=bins)


class FrozenCount(Callback):
    """Records how many objects are frozen (``gc.get_freeze_count``) at every training step."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.counts.append(gc.get_freeze_count())


def test_startup_objects_are_frozen_while_training_and_given_back_after() -> None:
    seen = FrozenCount()
    trainer = make_trainer(max_steps=3, callbacks=[FreezeStartupObjects(), seen])
    trainer.fit(make_module(), datamodule=TinyData())
    assert len(seen.counts) == 3 and min(seen.counts) > 0  # the objects made before training
    assert gc.get_freeze_count() == 0


def test_startup_objects_are_given_back_when_training_fails() -> None:
    module, data = make_module(), TinyData()
    trainer = make_trainer(
        max_steps=12, callbacks=[FreezeStartupObjects(), PoisonWeights(at=2), NonFiniteLossGuard()]
    )
    with pytest.raises(NonFiniteLossError):
        trainer.fit(module, datamodule=data)
    assert gc.get_freeze_count() == 0


def test_objects_the_process_froze_itself_stay_frozen() -> None:
    gc.freeze()  # before training, for reasons of the user's own
    try:
        frozen = gc.get_freeze_count()
        trainer = make_trainer(max_steps=2, callbacks=[FreezeStartupObjects()])
        trainer.fit(make_module(), datamodule=TinyData())
        # Still frozen, and nothing added (only gc.freeze adds; frozen objects freed by refcount leave).
        assert 0 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
