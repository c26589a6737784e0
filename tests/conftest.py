"""Shared test fixtures. Tests that need the shared data folder use ``shared_dir``; on a machine
without it they skip with a clear reason, but in CI (``CI`` set) a missing folder is an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flame_tracker.paths import data_dir


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = data_dir()
    if not (path / "models").is_dir():
        msg = f"shared data folder not found at {path} (set FLAME_TRACKER_DATA)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must provide it")
        pytest.skip(msg)
    return path
