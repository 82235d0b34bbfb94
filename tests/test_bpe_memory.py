"""Training memory grows with the number of distinct pre-tokens, not with the file: no process ever
holds the file. Measured as in ``benchmarks/bench_bpe.py``: the summed RSS of the training process and
its workers, sampled every 5 ms from outside, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_bpe import OURS, PEAK_KB, run
from benchmarks.markov_corpus import markov_corpus_path

WORKERS = 2
# Beyond what the interpreters and imports take (measured, per process): counts, merge state, one
# 64 KB chunk of text per process. Measured ~14 MB for 100 MB of text.
DATA_BOUND_MB = 24
GROWTH_BOUND_MB = 16  # measured ~7 MB from 10 MB to 100 MB of text (more distinct pre-tokens)


def import_baseline_mb() -> float:
    """Peak RSS of a fresh interpreter that only imports the trainer."""
    script = PEAK_KB + "import tokenizer.bpe\nprint(peak_kb())"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024


@pytest.mark.slow
def test_peak_memory_on_a_100_mb_file(fixtures_dir):
    small = run(OURS, markov_corpus_path(10), 1000, workers=WORKERS)["peak_tree_mb"]
    large_run = run(OURS, markov_corpus_path(100), 1000, workers=WORKERS)
    large, baseline = large_run["peak_tree_mb"], import_baseline_mb()
    assert len(large_run["merges"]) == 1000 - 257
    assert large < 100, f"{large:.1f} MB: as much as the file itself"
    assert large - WORKERS * baseline < DATA_BOUND_MB, (large, baseline)
    assert large - small < GROWTH_BOUND_MB, (small, large)
