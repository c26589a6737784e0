"""Output folders that cannot take the results: one line before any work, for every command."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from flame_tracker.cli.main import main


def _commands(shared: Path, out: Path) -> dict[str, list[str]]:
    return {"video": ["video", str(shared / "videos" / "talking_ex3.mp4"), "--out", str(out)],
            "multiview": ["multiview", str(shared), "--cameras", "estimate", "--out", str(out)],
            "export": ["export", str(shared), "--format", "arkit-csv", "--out", str(out)]}


@pytest.mark.parametrize("command", ["video", "multiview", "export"])
def test_a_file_in_place_of_the_output_folder_is_one_line(shared_dir: Path, tmp_path: Path, command: str) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        res = CliRunner().invoke(main, _commands(shared_dir, out)[command])
        assert res.exit_code == 2, res.output
        assert "is a file" in res.output and "Traceback" not in res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("command", ["video", "multiview", "export"])
def test_an_unwritable_output_folder_is_one_line(shared_dir: Path, tmp_path: Path, command: str, monkeypatch) -> None:
    """(A read-only folder cannot be made for root, who runs CI here: the probe write is refused instead.)"""
    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    res = CliRunner().invoke(main, _commands(shared_dir, tmp_path / "ro" / "out")[command])
    assert res.exit_code == 1, res.output
    assert f"cannot write to {tmp_path / 'ro' / 'out'}: Permission denied" in res.output
    assert isinstance(res.exception, SystemExit)
    assert not (tmp_path / "ro").exists()  # nothing was made


@pytest.mark.parametrize("args", [["video", "talking_ex3.mp4", "--fov", "nan"],
                                  ["video", "talking_ex3.mp4", "--end", "nan"],
                                  ["video", "talking_ex3.mp4", "--smooth-pose", "nan"],
                                  ["image", "woman.jpg", "--fov", "nan"],
                                  ["multiview", ".", "--cameras", "estimate", "--image-fov", "nan"]])
def test_nan_options_are_refused_before_any_work(shared_dir: Path, tmp_path: Path, args: list[str]) -> None:
    """NaN passes every range check: it used to be ignored (--fps), turn smoothing off, or fail after
    the whole detection with a half-made folder; now a usage error naming the option."""
    folder = {"video": "videos", "image": "images", "multiview": ""}[args[0]]
    argv = [args[0], str(shared_dir / folder / args[1]), *args[2:], "--out", str(tmp_path / "out")]
    res = CliRunner().invoke(main, argv)
    assert res.exit_code == 2 and "NaN is not a value" in res.output and args[-2] in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_nonsense_settings_are_refused_before_any_work(shared_dir: Path, tmp_path: Path) -> None:
    """Values that used to switch something off silently: a negative or zero smoothing cutoff (inf is
    'none'), an end before the start."""
    clip = str(shared_dir / "videos" / "talking_ex3.mp4")
    for extra, message in ((["--smooth-pose", "-1"], "track.pose_cutoff_hz: must be above 0"),
                           (["--smooth-expr", "0"], "(inf: no smoothing)"),
                           (["--start", "2", "--end", "1"], "video.end_s (1) must be after video.start_s (2)")):
        res = CliRunner().invoke(main, ["video", clip, "--out", str(tmp_path / "out"), *extra])
        assert res.exit_code == 1 and message in res.output, res.output
        assert not (tmp_path / "out").exists()


def test_an_output_folder_under_a_folder_that_cannot_be_searched_is_one_line(shared_dir: Path, tmp_path: Path,
                                                                            monkeypatch) -> None:
    """``Path.exists`` raises (not returns False) under a parent without search permission, e.g. ``--out
    /root/x`` for another user (root, who runs CI here, passes every permission check: simulated)."""
    locked = tmp_path / "locked"
    real_exists = Path.exists

    def exists(self, *args, **kwargs):
        if self == locked / "out":
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    res = CliRunner().invoke(main, _commands(shared_dir, locked / "out")["export"])
    assert res.exit_code == 1 and f"cannot write to {locked / 'out'}: Permission denied" in res.output, res.output
    assert isinstance(res.exception, SystemExit)


def test_a_frame_rate_above_the_clips_is_said(shared_dir, tmp_path) -> None:
    """``--fps 60`` on a 24 fps clip keeps every frame: a note says so (a user trial: nothing did);
    one below the clip's rate says nothing."""
    from click.testing import CliRunner

    from flame_tracker.cli.main import main

    clip = str(shared_dir / "videos" / "talking_ex3.mp4")
    res = CliRunner().invoke(main, ["video", clip, "--out", str(tmp_path / "a"), "--fps", "60", "--max-frames", "3",
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    assert "note: --fps 60 is not below the clip's 24 fps: every frame is kept" in res.output
    res = CliRunner().invoke(main, ["video", clip, "--out", str(tmp_path / "b"), "--fps", "10", "--max-frames", "3",
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    assert "note: --fps" not in res.output
