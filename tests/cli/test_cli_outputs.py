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
