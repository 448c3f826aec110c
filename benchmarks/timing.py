"""Side-by-side timing shared by the benchmarks: the best wall time of each of several calls over
interleaved rounds, so that a machine whose speed drifts slows every side alike."""

from __future__ import annotations

import time
from typing import Callable


def best_of(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each function over `rounds` interleaved rounds (after one untimed call each)."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best
