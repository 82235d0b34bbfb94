"""Hydra multirun with our configs, exactly as a user types it: two learning rates of a tiny config run
as two jobs, each in its own folder under logs/<name>/multirun_<time>/ with its own event file; then
`python -m lit_llm.plot` draws both from those real event files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_llm import plot

REPO = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{module} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_multirun_runs_every_job_in_its_own_folder_and_plot_reads_them(tmp_path: Path) -> None:
    # The default sweep folder (logs/ under the folder run from) is what is tested: cwd is tmp_path.
    run_module(
        "lit_llm.train",
        "-m",
        "debug=fast",
        "logger=tensorboard",
        "callbacks.model_checkpoint=null",
        "optimizer.lr=1e-3,3e-2",
        cwd=tmp_path,
    )
    sweeps = list((tmp_path / "logs" / "debug").glob("multirun_*"))
    assert len(sweeps) == 1, sweeps
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [job.name for job in jobs] == ["0", "1"]
    event_files = [list(job.glob("tensorboard/events.out.tfevents.*")) for job in jobs]
    assert [len(files) for files in event_files] == [1, 1]

    runs = [plot.load_run(job) for job in jobs]
    plot.assign_labels(runs)
    assert [run.label for run in runs] == ["optimizer.lr=0.001", "optimizer.lr=0.03"]  # as Hydra writes them
    for run, lr in zip(runs, (1e-3, 3e-2), strict=True):
        assert run.tokens_per_step == 4 * 32  # debug=fast: batch 4, context 32
        assert len(run.scalars["val/bpb"]) == 2  # validated at steps 2 and 4
        assert max(value for _, _, value in run.scalars["lr"]) <= lr * (1 + 1e-6)
    final_losses = [run.scalars["train/loss"][-1][2] for run in runs]
    assert final_losses[0] != final_losses[1]  # two different trainings, not one run twice

    # The HParams tab: each job records its own override and its final and best validation metrics.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    table = {}
    for job, files in zip(jobs, event_files, strict=True):
        events = EventAccumulator(str(files[0]), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        scalars = set(events.Tags()["scalars"])
        assert {"hp/val_loss", "hp/val_bpb", "hp/best_val_loss", "hp/best_val_bpb"} <= scalars, scalars
        best = events.Scalars("hp/best_val_loss")[-1].value
        assert best == pytest.approx(min(e.value for e in events.Scalars("val/loss")), rel=1e-6)
        table[job.name] = hparams["override/optimizer.lr"].number_value
        assert hparams["override/debug"].string_value == "fast"
    assert table == {"0": pytest.approx(1e-3), "1": pytest.approx(3e-2)}

    out = tmp_path / "sweep.png"
    result = run_module("lit_llm.plot", *map(str, jobs), "--out", str(out), cwd=tmp_path)
    assert out.stat().st_size > 0
    assert "| optimizer.lr=0.001 | 4 |" in result.stdout and "| optimizer.lr=0.03 | 4 |" in result.stdout
