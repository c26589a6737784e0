"""MediaPipe's native log silencing when several threads detect at once."""

from __future__ import annotations

import os
import threading

from flame_tracker.detection.landmarker import native_stderr_silenced


def test_interleaved_threads_restore_stderr() -> None:
    """Thread A enters, B enters, A leaves, B leaves: descriptor 2 is the real stderr again (before,
    B restored A's /dev/null and stderr stayed silent)."""
    before = os.fstat(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a() -> None:
        with native_stderr_silenced():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b() -> None:
        a_in.wait(5)
        with native_stderr_silenced():
            b_in.set()
            a_out.wait(5)
            seen["inside"] = os.fstat(2)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    null = os.stat(os.devnull)
    assert (seen["inside"].st_dev, seen["inside"].st_ino) == (null.st_dev, null.st_ino)  # still silent while B is in


def test_restore_stderr_gives_it_back_inside_an_open_block() -> None:
    """A command reporting an interruption gets the real stderr back even while a (stopped) thread's
    silencing block is still open; the block's own exit then leaves it alone."""
    from flame_tracker.detection.landmarker import restore_stderr

    before = os.fstat(2)
    null = os.stat(os.devnull)
    inside, release, done = threading.Event(), threading.Event(), threading.Event()

    def stuck() -> None:
        with native_stderr_silenced():
            inside.set()
            release.wait(5)
        done.set()

    t = threading.Thread(target=stuck)
    t.start()
    inside.wait(5)
    assert (os.fstat(2).st_dev, os.fstat(2).st_ino) == (null.st_dev, null.st_ino)
    restore_stderr()
    now = os.fstat(2)
    assert (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino)
    release.set()
    t.join(10)
    after = os.fstat(2)
    assert done.is_set() and (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    with native_stderr_silenced():  # and silencing still works afterwards
        assert (os.fstat(2).st_dev, os.fstat(2).st_ino) == (null.st_dev, null.st_ino)
    assert (os.fstat(2).st_dev, os.fstat(2).st_ino) == (before.st_dev, before.st_ino)


def test_a_landmarker_never_closed_exits_quietly(shared_dir) -> None:
    """A landmarker left open (a ``Tracker`` used without ``with``) is closed at exit, before the
    interpreter's teardown, where MediaPipe's own destructor printed a traceback."""
    import subprocess
    import sys

    code = ("from flame_tracker.detection import FaceLandmarker\n"
            "import numpy as np\n"
            "lm = FaceLandmarker()\n"
            "lm.detect(np.zeros((64, 64, 3), np.uint8))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "FLAME_TRACKER_DATA": str(shared_dir)})
    assert out.returncode == 0, out.stderr
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr
