"""Progress bars that read well both in a terminal and in a log.

In a terminal a bar redraws itself in place. Written into a pipe or a file (``2> run.log``, a job
scheduler, ``nohup``), tqdm's carriage returns turn an hour of progress into one line of thousands
of redraws; there each refresh is written as its own line instead, at most every
:data:`LOG_INTERVAL_S` seconds (and at the end).
"""

from __future__ import annotations

import re
import sys
from typing import Any, TextIO

from tqdm import tqdm

#: Seconds between two progress lines when stderr is not a terminal.
LOG_INTERVAL_S = 15.0

# terminal control sequences (tqdm moves the cursor up to redraw a second bar): meaningless in a log
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Lines:
    """A stream for tqdm that writes each refresh as a line of its own (no carriage returns)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for line in _CONTROL.sub("", text).replace("\r", "\n").split("\n"):
            if line.strip():
                self.stream.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A :class:`tqdm.tqdm` on stderr (same arguments); when stderr is not a terminal, one line per
    refresh, at most every :data:`LOG_INTERVAL_S` seconds."""
    stream = kwargs.pop("file", None) or sys.stderr
    if stream is None:  # no stderr at all (pythonw, a daemon): nothing to draw on
        kwargs["disable"] = True
    elif not _is_terminal(stream) and not kwargs.get("disable", False):
        kwargs.update(file=_Lines(stream), dynamic_ncols=False, ascii=True)
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("ncols", 100)
    else:
        kwargs["file"] = stream
    return tqdm(iterable, **kwargs)


__all__ = ["LOG_INTERVAL_S", "progress_bar"]
