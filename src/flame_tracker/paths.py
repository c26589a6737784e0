"""Where flame-tracker finds its data: the shared data folder and the user cache.

* ``FLAME_TRACKER_DATA``: folder with ``models/``, ``images/``, ``videos/`` (default: ``../shared``
  relative to the repository root, i.e. next to the checkout).
* ``FLAME_TRACKER_CACHE``: user cache for downloaded assets and converted models (default:
  ``$XDG_CACHE_HOME/flame-tracker`` or ``~/.cache/flame-tracker``).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "FLAME_TRACKER_DATA"
CACHE_ENV = "FLAME_TRACKER_CACHE"

# src/flame_tracker/paths.py -> repository root is three levels up.
REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Return the shared data folder (``$FLAME_TRACKER_DATA`` or ``<repo>/../shared``)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().resolve()
    # Editable installs find the checkout from this file; a regular install falls back to the
    # working directory's sibling ``shared`` folder.
    for root in (REPO_ROOT, Path.cwd()):
        candidate = (root.parent / "shared").resolve()
        if candidate.is_dir():
            return candidate
    return (REPO_ROOT.parent / "shared").resolve()


def cache_dir(create: bool = True) -> Path:
    """Return the user cache folder, creating it when ``create`` is true."""
    env = os.environ.get(CACHE_ENV)
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "flame-tracker"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def data_file(*parts: str) -> Path:
    """Path of a file inside the data folder; raise a clear error when it is missing."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found. Set {DATA_ENV} to the folder that holds flame-tracker's data "
            f"(models/, images/, videos/), or pass the file explicitly."
        )
    return path
