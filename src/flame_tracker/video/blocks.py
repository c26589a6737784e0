"""How a video's landmark detection is cut into blocks (checkpoints, parallel detection, a batch's
parts). Kept apart from :mod:`.pipeline` and free of heavy imports: ``flame-tracker batch`` plans a
video's detection parts with it before its first task is sent (importing the pipeline, torch
included, held every batch's first task back by ~2 s on a 2-core machine)."""

from __future__ import annotations

DETECT_BLOCK = 128  # frames per landmark checkpoint; MediaPipe's tracking restarts at each block
#: Detection threads by default at most (each holds its own decoder and MediaPipe graphs, ~180 MB).
DETECT_THREADS = 4
#: Shortest block of a short clip (see :func:`detect_block`): each block costs a fresh start and
#: its warm-up frames
DETECT_MIN_BLOCK = 64


def detect_block(n_frames: int) -> int:
    """Frames per landmark block for a video of about ``n_frames`` selected frames (0: unknown):
    :data:`DETECT_BLOCK`, or fewer in a clip of under ``DETECT_THREADS`` blocks, so that a short clip
    is detected in parallel too (``DETECT_THREADS`` blocks of at least :data:`DETECT_MIN_BLOCK`
    frames). It depends on the video and the frame selection alone, not on the threads, so the
    landmarks do not either."""
    if n_frames <= 0:
        return DETECT_BLOCK
    return int(min(DETECT_BLOCK, max(DETECT_MIN_BLOCK, -(-n_frames // DETECT_THREADS))))


__all__ = ["DETECT_BLOCK", "DETECT_MIN_BLOCK", "DETECT_THREADS", "detect_block"]
