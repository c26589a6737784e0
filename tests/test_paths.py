from pathlib import Path

import pytest

from flame_tracker import paths


def test_data_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
    assert paths.data_dir() == tmp_path.resolve()


def test_data_dir_default_is_sibling_shared(monkeypatch):
    monkeypatch.delenv(paths.DATA_ENV, raising=False)
    assert paths.data_dir() == (paths.REPO_ROOT.parent / "shared").resolve()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path / "c"))
    assert paths.cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()


def test_data_file_missing_names_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="FLAME_TRACKER_DATA"):
        paths.data_file("models", "nope.npz")


def test_shared_folder_present(shared_dir: Path):
    assert (shared_dir / "models" / "ict_facekit_light.npz").is_file()
