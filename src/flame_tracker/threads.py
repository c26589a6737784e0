"""Scoped intra-op thread counts: torch's for the small solves of stages 1 and 2, photometric fitting and
overlays; OpenCV's where work already runs side by side in threads (the optical flow's tracks)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_opencv_lock = threading.Lock()
_opencv_users = [0, 0]  # blocks inside opencv_single_thread, OpenCV's thread count before the first


@contextmanager
def cpu_threads(n: int = 1, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with ``n`` intra-op CPU threads, then restore the previous setting.

    Stage 1/2 work on matrices of a few hundred entries: OpenMP parallelism cannot pay for its
    synchronisation there, and on a busy machine a parallel region waiting for a descheduled thread
    made the solves 10-20x slower (measured). CUDA devices are left alone.
    """
    if torch.device(device).type != "cpu" or torch.get_num_threads() <= n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def opencv_single_thread() -> Iterator[None]:
    """Run a block with OpenCV's own threads off, then restore them (when the last of any blocks
    running at once in other threads ends: the setting is the process's)."""
    import cv2

    with _opencv_lock:
        if _opencv_users[0] == 0:
            _opencv_users[1] = cv2.getNumThreads()
            cv2.setNumThreads(1)
        _opencv_users[0] += 1
    try:
        yield
    finally:
        with _opencv_lock:
            _opencv_users[0] -= 1
            if _opencv_users[0] == 0:
                cv2.setNumThreads(_opencv_users[1])


def available_cpus() -> int:
    """The cores this process may use: its CPU affinity, capped by ``OMP_NUM_THREADS`` when set (a
    batch worker's share, :mod:`flame_tracker.batch`)."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        n = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(n, int(limit))) if limit.isdigit() and int(limit) > 0 else max(1, n)
