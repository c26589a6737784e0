"""Shared timing for the benchmark scripts (imported as ``timing``: scripts run from this folder)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def fastest(fn: Callable[[], Any], repeats: int, *, warmup: bool = False,
            budget_s: float | None = None) -> tuple[float, Any]:
    """Fastest wall time (s) of ``repeats`` calls of ``fn`` and the last call's result.

    The minimum, not the median: on a shared, oversubscribed CPU a call that has to wait for a
    descheduled BLAS/OpenMP worker can take 100x longer, and the median then measures the load.
    ``warmup``: one untimed call first. ``budget_s``: after one more untimed call to size it, as
    many calls as fit in about that time (at least 5, at most ``repeats``), so fast and slow
    functions get the same sampling time.
    """
    if warmup:
        fn()
    if budget_s is not None:
        t0 = time.perf_counter()
        fn()
        repeats = max(5, min(repeats, int(budget_s / max(time.perf_counter() - t0, 1e-6))))
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
