"""The package's errors. Every error class of the package derives from :class:`FlameTrackerError`
(and from the built-in class it always was: ``ValueError`` for bad input, ``RuntimeError`` for a
failed step), and its message names what is wrong and what to do. Modules with errors of their own
define them beside their code (``ImageError``, ``VideoError``, ``ModelFormatError``, ``ConfigError``,
``ExportError``, ...); the generic ones are here."""

from __future__ import annotations


class FlameTrackerError(Exception):
    """Base of flame-tracker's own errors."""


class NoFaceError(FlameTrackerError, RuntimeError):
    """No face was found: in an image, or in any frame of a video."""


class InputError(FlameTrackerError, ValueError):
    """An argument the code cannot use: an array of the wrong shape, NaN where numbers are needed,
    an unknown option value (the message names it and what is expected)."""


class StepError(FlameTrackerError, RuntimeError):
    """A step that could not be carried out with what it was given (the message says what to change)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what one-line
    error reports (the image command, the batch summary) show."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


__all__ = ["FlameTrackerError", "InputError", "NoFaceError", "StepError", "first_line"]
