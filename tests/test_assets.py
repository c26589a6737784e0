"""Model-path resolution and the checksum-verified downloader (against a local HTTP server only)."""

from __future__ import annotations

import functools
import http.server
import os
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from flame_tracker import assets
from flame_tracker.assets import (
    FACE_LANDMARKER,
    LANDMARKER_ENV,
    AssetError,
    download_asset,
    face_landmarker_path,
    sha256_file,
)
from flame_tracker.cli.main import main


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def local_server(shared_dir: Path):
    """Serve ``shared/models`` on 127.0.0.1 (never the internet)."""
    handler = functools.partial(_QuietHandler, directory=str(shared_dir / "models"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_shared_file_matches_pinned_checksum(shared_dir: Path) -> None:
    assert sha256_file(shared_dir / "models" / FACE_LANDMARKER.filename) == FACE_LANDMARKER.sha256


def test_download_verifies_and_writes_atomically(local_server: str, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "face_landmarker.task"
    out = download_asset(FACE_LANDMARKER, dest, url=f"{local_server}/face_landmarker.task")
    assert out == dest and sha256_file(dest) == FACE_LANDMARKER.sha256
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no temporary left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask  # the user's umask, not mkstemp's 0600


def test_checksum_mismatch_leaves_no_file(local_server: str, tmp_path: Path) -> None:
    wrong = assets.Asset("x.task", f"{local_server}/ict_facekit_light.npz", "0" * 64, "test")
    dest = tmp_path / "x.task"
    with pytest.raises(AssetError, match="Checksum mismatch"):
        download_asset(wrong, dest)
    assert list(tmp_path.iterdir()) == []


def test_download_http_error_is_clear(local_server: str, tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="failed"):
        download_asset(FACE_LANDMARKER, tmp_path / "a.task", url=f"{local_server}/missing.task")
    assert list(tmp_path.iterdir()) == []


def test_cli_download_to_cache(local_server: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FLAME_TRACKER_CACHE", str(tmp_path))
    res = CliRunner().invoke(
        main, ["assets", "download", "--url", f"{local_server}/face_landmarker.task"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "models" / "face_landmarker.task").is_file()


def test_resolution_order(shared_dir: Path, tmp_path: Path, monkeypatch) -> None:
    explicit = tmp_path / "explicit.task"
    explicit.write_bytes(b"x")
    env_file = tmp_path / "env.task"
    env_file.write_bytes(b"y")
    monkeypatch.setenv(LANDMARKER_ENV, str(env_file))
    assert face_landmarker_path(explicit) == explicit
    assert face_landmarker_path() == env_file
    monkeypatch.delenv(LANDMARKER_ENV)
    assert face_landmarker_path() == shared_dir / "models" / "face_landmarker.task"
    # No data folder: fall back to the user cache.
    monkeypatch.setenv("FLAME_TRACKER_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("FLAME_TRACKER_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "models" / "face_landmarker.task"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"z")
    assert face_landmarker_path() == cached


def test_missing_model_error_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(LANDMARKER_ENV, raising=False)
    monkeypatch.setenv("FLAME_TRACKER_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("FLAME_TRACKER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AssetError, match="assets download"):
        face_landmarker_path()
    with pytest.raises(AssetError, match="does not exist"):
        face_landmarker_path(tmp_path / "nope.task")


def test_cli_where_and_download_failure(local_server: str, shared_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(LANDMARKER_ENV, raising=False)
    res = CliRunner().invoke(main, ["assets", "where"])
    assert res.exit_code == 0 and res.output.strip() == str(shared_dir / "models" / "face_landmarker.task")
    wrong_url = f"{local_server}/ict_facekit_light.npz"
    res = CliRunner().invoke(main, ["assets", "download", "--dest", str(tmp_path / "f.task"), "--url", wrong_url])
    assert res.exit_code != 0 and "Checksum mismatch" in res.output
    assert list(tmp_path.iterdir()) == []
