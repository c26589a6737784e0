"""The package's errors. Every error flame-tracker raises on purpose derives from
:class:`FlameTrackerError` (and, for code written before it, from the built-in class it always was:
``ValueError`` for bad input, ``RuntimeError`` for a failed step), and its message names what is
wrong and what to do, so ``except FlameTrackerError`` catches them all and nothing else."""

from __future__ import annotations


class FlameTrackerError(Exception):
    """Base of flame-tracker's own errors."""


class NoFaceError(FlameTrackerError, RuntimeError):
    """No face was found: in an image, or in any frame of a video."""


__all__ = ["FlameTrackerError", "NoFaceError"]
