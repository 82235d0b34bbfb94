"""``python -m lit_llm.tune``: the pieces of the lr range test and the batch-size search on known inputs,
then both modes as a user runs them on a tiny config."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lit_llm import tune

REPO = Path(__file__).resolve().parent.parent


def test_sweep_rates_are_a_constant_factor_apart_from_min_to_max() -> None:
    lrs = tune.sweep_lrs(1e-5, 1e-1, 9)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-1)
    ratios = [b / a for a, b in zip(lrs[:-1], lrs[1:], strict=True)]
    assert ratios == pytest.approx([10**0.5] * 8)


def test_backward_ema_keeps_a_constant_and_leaves_a_diverged_tail_alone() -> None:
    assert tune.backward_ema([2.0] * 10, 0.9) == pytest.approx([2.0] * 10)
    out = tune.backward_ema([3.0, 2.0, 1.0, math.nan], 0.5)
    assert math.isnan(out[-1])
    assert out[2] == pytest.approx(1.0)  # the first value of the backward pass is itself (bias corrected)
    assert out[1] == pytest.approx((0.5 * 0.5 * 1.0 + 0.5 * 2.0) / (1 - 0.5**2))


def test_suggestion_lies_two_thirds_down_the_descent_before_the_minimum() -> None:
    # A loss falling as a logistic step centred on lr = 1e-3, rising sharply after 3e-2 (its minimum).
    lrs = tune.sweep_lrs(1e-6, 1.0, 121)  # 20 points per decade
    losses = [
        5.0 - 2.0 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + (50 * (lr - 3e-2) if lr > 3e-2 else 0.0)
        for lr in lrs
    ]
    minimum = lrs[losses.index(min(losses))]
    assert minimum == pytest.approx(3e-2, rel=0.13)
    suggestion = tune.suggest_lr(lrs, losses, skip_begin=5)
    # start lrs[5] = 10**-5.75, minimum 10**-1.5: two thirds of the way is 10**-2.93, within a point
    assert suggestion == pytest.approx(10**-2.93, rel=0.13)
    assert tune.suggest_lr(lrs[:3], losses[:3], skip_begin=2) is None  # too few points before the minimum


def test_format_lr_gives_two_significant_digits() -> None:
    assert tune.format_lr(0.0024) == "2.4e-3"
    assert tune.format_lr(0.1) == "1.0e-1"
    assert tune.format_lr(3.0) == "3.0e0"


@pytest.mark.parametrize("limit", [1, 5, 37, 64])
def test_largest_fitting_finds_the_exact_boundary(limit: int) -> None:
    tried: list[int] = []

    def fits(n: int) -> bool:
        tried.append(n)
        return n <= limit

    assert tune.largest_fitting(fits, cap=1024) == limit
    assert len(tried) <= 2 * math.ceil(math.log2(limit + 1)) + 2


def test_largest_fitting_stops_at_the_cap_and_reports_zero_when_nothing_fits() -> None:
    assert tune.largest_fitting(lambda n: True, cap=16) == 16
    assert tune.largest_fitting(lambda n: True, cap=48) == 48
    assert tune.largest_fitting(lambda n: False, cap=16) == 0


def test_out_of_memory_errors_are_recognised_and_other_errors_are_not() -> None:
    assert tune.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ..."))
    assert tune.is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not tune.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not tune.is_out_of_memory(ValueError("out of memory"))


def run_tune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "lit_llm.tune", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_lr_mode_prints_a_rate_inside_the_sweep_and_writes_the_curve(
    tmp_path: Path, session_data_paths
) -> None:
    result = run_tune(
        "mode=lr",
        "debug=fast",
        "tune.steps=40",
        "tune.min_lr=1e-4",
        "tune.max_lr=1",
        *session_data_paths,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"optimizer\.lr=(\d\.\de-?\d+)", last)
    assert match, last
    lr = float(match.group(1))
    assert math.isfinite(lr) and 1e-4 <= lr <= 1.0
    (folder,) = (tmp_path / "logs" / "debug").glob("tune_*")
    with open(folder / "lr_find.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 2 <= len(rows) <= 40
    assert all(math.isfinite(float(row["lr"])) for row in rows)
    summary = json.loads((folder / "lr_find.json").read_text())
    assert summary["steps_run"] == len(rows) and tune.format_lr(summary["suggestion"]) == match.group(1)
    png = (folder / "lr_find.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "logs" / "debug").glob("2*")), "a tune run is not taken for a training run"


def test_batch_size_mode_prints_a_power_of_two_capped_on_cpu(tmp_path: Path) -> None:
    result = run_tune("mode=batch_size", "debug=fast", "tune.max_batch_size=8", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "data.batch_size=8"
    (folder,) = (tmp_path / "logs" / "debug").glob("tune_*")
    assert json.loads((folder / "batch_size.json").read_text())["batch_size"] == 8


def test_batch_search_finds_the_boundary_an_allocator_reports_and_frees_what_failed(
    monkeypatch, tmp_path: Path
) -> None:
    """An allocator that fails above 5 windows: the search returns 5 and training steps still work after
    the failures (gradients freed, the model's weights still finite)."""
    import torch
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="lit_llm.configs", version_base="1.3"):
        cfg = compose(
            "tune",
            overrides=[
                "mode=batch_size",
                "debug=fast",
                "tune.steps_per_trial=1",
                f"paths.root_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'run'}",
            ],
        )
    _, settings, config = tune.split_config(cfg)
    real_step = tune.train_step
    models = []

    def step(fabric, model, optimizer, batches, max_norm):
        models.append(model)
        if batches[0][0].shape[0] > 5:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")
        return real_step(fabric, model, optimizer, batches, max_norm)

    monkeypatch.setattr(tune, "train_step", step)
    batch, detects = tune.find_batch_size(config, settings)
    assert (batch, detects) == (5, False)
    assert all(torch.isfinite(p).all() and p.grad is None for p in models[-1].parameters())


def test_a_bad_mode_is_one_clear_error(tmp_path: Path) -> None:
    result = run_tune("mode=bogus", "debug=fast", cwd=tmp_path)
    assert result.returncode != 0
    assert "mode='bogus': expected one of lr, batch_size" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").rglob("tune_*"))
