"""``benchmarks/bench_gpu.py --dry-run``: the GPU benchmark's every code path on the CPU at tiny shapes.

The benchmark is run for real on a borrowed GPU with a few minutes to spare, where a crash in its last
section would waste the slot; this runs the same script, as the same command, before it gets there, and
checks what the GPU run must deliver: exit code 0, a results.json with all four sections and finite
positive figures, the table as the last thing printed, and a numerics verdict with its tolerance.
Nothing here asserts a time (the dry run's figures are CPU figures, meaningless as speed).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("a_lit_llm_train", "b_builtin_twin", "c_generation")


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One ``python -m benchmarks.bench_gpu --dry-run --out DIR`` from the repository root (as a user
    runs it); every test reads its output."""
    out = tmp_path_factory.mktemp("bench_gpu") / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_gpu", "--dry-run", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard only, far above any expected run; no test asserts a duration
    )
    return proc, out


def test_exits_cleanly_and_writes_its_files(dry_run) -> None:
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + "\n--- stderr ---\n" + proc.stderr[-4000:]
    for name in ("results.json", "log.txt", "table.txt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name


def test_every_section_has_finite_positive_throughput(dry_run) -> None:
    proc, out = dry_run
    results = json.loads((out / "results.json").read_text())
    assert results["errors"] == []
    assert results["meta"]["dry_run"] is True
    assert results["meta"]["torch"] and results["meta"]["device_name"]
    assert _positive(results["flops_per_token"])
    assert _positive(results["peak"]["measured_matmul_flops"])
    for key in SECTIONS:
        rows = results["sections"][key]
        assert rows, f"section {key} has no rows"
        for row in rows:
            assert _positive(row["tokens_per_s"]), (key, row)
    for key in ("a_lit_llm_train", "b_builtin_twin"):
        rows = results["sections"][key]
        assert {r["mode"] for r in rows} == {"eager", "compile"}, key
        for row in rows:
            assert row["steps_timed"] > 0 and _positive(row["seconds"])
            assert _positive(row["mfu_measured"]) and _positive(row["projected_s"])
            assert _positive(row["ratio_to_twin"])
            assert row["mfu_datasheet"] is None  # no datasheet figure for a CPU: shown as n/a
    assert {r["batch"] for r in results["sections"]["c_generation"]} == set(results["plan"]["gen_batches"])
    assert set(results["best"]) == {"eager", "compile"}


def test_numerics_reports_difference_and_tolerance(dry_run) -> None:
    proc, out = dry_run
    numerics = json.loads((out / "results.json").read_text())["sections"]["d_numerics"]
    assert numerics is not None
    assert math.isfinite(numerics["max_abs_loss_diff"]) and numerics["max_abs_loss_diff"] >= 0
    assert _positive(numerics["tolerance"])
    assert isinstance(numerics["passed"], bool)
    assert numerics["passed"] == (numerics["max_abs_loss_diff"] <= numerics["tolerance"])
    assert numerics["steps_done"] == numerics["steps"]
    lengths = {len(v) for v in numerics["losses"].values()}
    assert lengths == {numerics["steps"]}, "both precisions record one loss per step"


def test_table_is_printed_last_and_saved(dry_run) -> None:
    proc, out = dry_run
    table = (out / "table.txt").read_text().rstrip("\n")
    assert proc.stdout.rstrip().endswith(table)
    assert json.loads((out / "results.json").read_text())["table"] == table
    assert "d numerics:" in table and "tolerance" in table
    # the header the brief asks for comes first: torch version, device, date, load average
    head = proc.stdout.splitlines()[:4]
    assert head[0].startswith("torch ") and head[1].startswith("device: ")
    assert "date: " in head[2] and "load average" in head[2]
    log = (out / "log.txt").read_text()
    assert table.splitlines()[0] in log  # log.txt holds what was printed, the table included
