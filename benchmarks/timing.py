"""The one timing loop of the benchmarks: every runner once per round, rounds interleaved, so a change
of machine load during the run hits all of them alike."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved_times(runners: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each call of each runner, ``rounds`` calls each, in the order a, b, c, a, b, c, ..."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return times
