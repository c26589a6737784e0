"""Progress bars in a terminal and in a log."""

from __future__ import annotations

import io

from flame_tracker.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_written_into_a_log_is_one_line_per_refresh() -> None:
    """Into a pipe or a file: no carriage returns, each refresh a line of its own, the last one the
    finished count; refreshes limited in time (here every update: mininterval 0)."""
    log = io.StringIO()
    for _ in progress_bar(range(5), desc="frames", file=log, mininterval=0, miniters=1):
        pass
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) >= 2 and all(line.startswith("frames") for line in lines)
    assert "5/5" in lines[-1] and "5/5" not in lines[0]


def test_a_log_gets_few_lines_from_a_fast_bar() -> None:
    """With the default interval a quick loop writes its start and its end, not every step."""
    log = io.StringIO()
    for _ in progress_bar(range(10_000), desc="x", file=log):
        pass
    assert len(log.getvalue().splitlines()) <= 3


def test_a_terminal_keeps_the_redrawn_bar() -> None:
    term = _Terminal()
    for _ in progress_bar(range(3), desc="x", file=term, mininterval=0, miniters=1):
        pass
    assert "\r" in term.getvalue()


def test_no_stderr_at_all_draws_nothing(monkeypatch) -> None:
    """pythonw or a daemon has no stderr: the bar is off instead of failing on write."""
    import sys

    monkeypatch.setattr(sys, "stderr", None)
    assert sum(1 for _ in progress_bar(range(3), desc="x")) == 3


def test_two_bars_in_a_log_write_no_cursor_codes() -> None:
    """Two bars open at once (tqdm moves the cursor up to redraw the second): the log gets plain
    lines of both bars, no terminal control sequences, no empty lines."""
    log = io.StringIO()
    a = progress_bar(total=3, desc="outer", file=log, mininterval=0, miniters=1)
    b = progress_bar(total=3, desc="inner", file=log, mininterval=0, miniters=1)
    for _ in range(3):
        a.update()
        b.update()
    b.close()
    a.close()
    text = log.getvalue()
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert all(line.startswith(("outer", "inner")) for line in lines)
    assert any("outer" in ln and "3/3" in ln for ln in lines) and any("inner" in ln and "3/3" in ln for ln in lines)
