"""The package's errors. Every error class of the package derives from :class:`FlameTrackerError`
(and from the built-in class it always was: ``ValueError`` for bad input, ``RuntimeError`` for a
failed step), and its message names what is wrong and what to do. Some checks deep in the code
still raise plain ``ValueError`` / ``RuntimeError`` (not yet converted)."""

from __future__ import annotations


class FlameTrackerError(Exception):
    """Base of flame-tracker's own errors."""


class NoFaceError(FlameTrackerError, RuntimeError):
    """No face was found: in an image, or in any frame of a video."""


__all__ = ["FlameTrackerError", "NoFaceError"]
