"""Downloadable assets (the MediaPipe Face Landmarker bundle) and where flame-tracker finds them.

Resolution order for the landmarker bundle: explicit argument > ``$FLAME_TRACKER_FACE_LANDMARKER`` >
``<data folder>/models/face_landmarker.task`` > ``<user cache>/models/face_landmarker.task``.
``flame-tracker assets download`` fills the user cache from the official public URL and checks the
file's SHA-256, so a truncated or tampered download is never used.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flame_tracker.errors import FlameTrackerError
from flame_tracker.io.results import atomic_path
from flame_tracker.paths import cache_dir, data_dir

LANDMARKER_ENV = "FLAME_TRACKER_FACE_LANDMARKER"


@dataclass(frozen=True)
class Asset:
    """A file flame-tracker can download: its name in ``models/``, public URL and SHA-256."""

    filename: str
    url: str
    sha256: str
    licence: str


FACE_LANDMARKER = Asset(
    filename="face_landmarker.task",
    url=(
        "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/"
        "float16/1/face_landmarker.task"
    ),
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    licence="Apache-2.0 (Google MediaPipe)",
)

ASSETS: dict[str, Asset] = {"face_landmarker": FACE_LANDMARKER}


class AssetError(FlameTrackerError, RuntimeError):
    """An asset is missing, or a download failed or did not match its checksum."""


def cached_asset_path(asset: Asset = FACE_LANDMARKER) -> Path:
    """Where ``download_asset`` stores ``asset`` in the user cache (the file may not exist)."""
    return cache_dir(create=False) / "models" / asset.filename


def face_landmarker_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Return the Face Landmarker bundle to use.

    Order: ``path`` > ``$FLAME_TRACKER_FACE_LANDMARKER`` > data folder > user cache. An explicit path
    or environment value that does not exist is an error (never silently replaced by another file).
    """
    for given, origin in ((path, "the given path"), (os.environ.get(LANDMARKER_ENV), LANDMARKER_ENV)):
        if given:
            p = Path(given).expanduser()
            if not p.is_file():
                raise AssetError(f"Face Landmarker model {p} (from {origin}) does not exist.")
            return p
    candidates = [data_dir() / "models" / FACE_LANDMARKER.filename, cached_asset_path()]
    for p in candidates:
        if p.is_file():
            return p
    raise AssetError(
        "MediaPipe Face Landmarker model not found (looked in "
        + ", ".join(str(p) for p in candidates)
        + "). Run `flame-tracker assets download`, or set "
        f"{LANDMARKER_ENV} to the path of face_landmarker.task."
    )


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_asset(
    asset: Asset = FACE_LANDMARKER,
    dest: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Download ``asset`` to ``dest`` (default: the user cache) and verify its SHA-256.

    The file is written to a temporary file in the destination folder and renamed into place only
    after the checksum matches, so an interrupted or corrupted download never leaves a partial
    file under the final name. ``url`` overrides the official URL (mirrors, tests).
    """
    target = Path(dest) if dest is not None else cached_asset_path(asset)
    if target.is_file() and not force and sha256_file(target) == asset.sha256:
        return target
    src = url or asset.url
    h = hashlib.sha256()
    with atomic_path(target) as tmp:  # renamed onto target only if the block completes
        try:
            with open(tmp, "xb") as out, urllib.request.urlopen(src, timeout=timeout) as resp:
                while block := resp.read(1 << 20):
                    h.update(block)
                    out.write(block)
        except (urllib.error.URLError, OSError) as exc:
            raise AssetError(f"Download of {src} failed: {exc}. Check the network or the URL.") from exc
        digest = h.hexdigest()
        if digest != asset.sha256:
            raise AssetError(
                f"Checksum mismatch for {src}: got sha256 {digest}, expected {asset.sha256}. "
                "The file was not saved; retry, or download it by hand and point "
                f"{LANDMARKER_ENV} at it."
            )
    return target
