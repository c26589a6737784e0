"""External landmark files: bring landmarks from any detector (e.g. an ear detector for stage 1).

Two equivalent formats, chosen by the file suffix (documented in the README):

* ``.npz`` arrays over N frames: ``lmks68 [N,68,2]`` (required), ``iris [N,10,2]``,
  ``ears [N,20,2]``, ``ears_conf [N,20]`` or ``[N]``, ``frame_index [N]`` (int, increasing),
  ``valid [N]`` (bool), ``image_size [2]`` (W, H). Optional arrays may be absent.
* ``.json``: ``{"image_size": [W, H], "frames": [{"frame": 0, "lmks68": [[x, y], ...68],
  "iris": [[x, y], ...10], "ears": [[x, y], ...20], "ears_conf": 0.9 | [..20]}, ...]}``; a
  frame whose ``lmks68`` is ``null`` (or missing) has no face. A bare list of frames also works.

Coordinates are pixels of the original image/frame (x right, y down, origin at the top-left corner
of the top-left pixel). Missing points are NaN (npz) or ``null`` (json).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flame_tracker.errors import FlameTrackerError

if TYPE_CHECKING:
    from flame_tracker.detection import FaceDetection

_SIZES = {"lmks68": 68, "iris": 10, "ears": 20}


class LandmarksFileError(FlameTrackerError, ValueError):
    """A landmarks file is malformed; the message names the file, the entry and the problem."""


@dataclass
class LandmarkTrack:
    """Per-frame 2-D landmarks in original pixels (NaN where absent).

    ``lmks68 [N,68,2]``, optional ``iris [N,10,2]``, ``ears [N,20,2]`` with ``ears_conf [N,20]`` in
    [0, 1], ``frame_index [N]`` (video frame of each row), ``valid [N]`` (a face was found),
    ``image_size`` ``(W, H)`` or None.
    """

    lmks68: np.ndarray
    iris: np.ndarray | None = None
    ears: np.ndarray | None = None
    ears_conf: np.ndarray | None = None
    frame_index: np.ndarray | None = None
    valid: np.ndarray | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        n = len(self.lmks68)
        if self.frame_index is None:
            self.frame_index = np.arange(n)
        if self.valid is None:
            self.valid = np.isfinite(self.lmks68).all(axis=(1, 2))
        if self.ears is not None and self.ears_conf is None:
            self.ears_conf = np.isfinite(self.ears).all(axis=2).astype(np.float32)

    def __len__(self) -> int:
        return len(self.lmks68)

    def row_of(self, frame: int) -> int | None:
        """Row holding video frame ``frame``, or None when the file has no entry for it."""
        index = self.frame_index
        assert index is not None  # set by __post_init__
        i = int(np.searchsorted(index, frame))
        return i if i < len(self) and index[i] == frame else None

    @classmethod
    def from_detections(
        cls, detections: Sequence[FaceDetection | None], frame_index: Sequence[int] | None = None
    ) -> LandmarkTrack:
        """Stack per-frame detections (``None`` = no face) into a track, e.g. to cache them."""
        n = len(detections)
        lmks = np.full((n, 68, 2), np.nan, np.float32)
        iris = np.full((n, 10, 2), np.nan, np.float32)
        found = np.array([d is not None for d in detections], dtype=bool)
        if found.any():
            lmks[found] = np.stack([d.lmks68 for d in detections if d is not None])
            iris[found] = np.stack([d.iris for d in detections if d is not None])
        size = next((d.image_size for d in detections if d is not None), None)
        fi = np.arange(n) if frame_index is None else np.asarray(frame_index)
        return cls(lmks, iris, frame_index=fi, valid=found, image_size=size)


def _array(name: str, value: Any, n: int | None, src: str, dtype: type = np.float32) -> np.ndarray:
    try:
        a: np.ndarray = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise LandmarksFileError(f"{src}: '{name}' is not numeric ({exc}).") from exc
    if n is not None and len(a) != n:
        raise LandmarksFileError(f"{src}: '{name}' has {len(a)} rows, but lmks68 has {n} frames.")
    return a


def _validate(track: LandmarkTrack, src: str) -> LandmarkTrack:
    n = len(track.lmks68)
    for key, count in _SIZES.items():
        a = getattr(track, key)
        if a is None:
            continue
        if a.ndim != 3 or a.shape[1:] != (count, 2) or len(a) != n:
            raise LandmarksFileError(
                f"{src}: '{key}' must have shape [N, {count}, 2] with N = {n} frames, got {a.shape}."
            )
        if np.isinf(a).any():
            raise LandmarksFileError(f"{src}: '{key}' contains infinite values (use NaN for missing).")
    if track.ears_conf is not None:
        c = track.ears_conf
        if c.ndim == 1:
            c = track.ears_conf = np.repeat(c[:, None], 20, axis=1).astype(np.float32)
        if c.shape != (n, 20):
            raise LandmarksFileError(f"{src}: 'ears_conf' must be [N] or [N, 20], got {c.shape}.")
        if np.isnan(c).any() or (c < 0).any() or (c > 1).any():
            raise LandmarksFileError(f"{src}: 'ears_conf' must lie in [0, 1].")
        if track.ears is None:
            raise LandmarksFileError(f"{src}: 'ears_conf' given without 'ears'.")
    fi = np.asarray(track.frame_index)
    if fi.shape != (n,) or not np.issubdtype(fi.dtype, np.integer):
        raise LandmarksFileError(f"{src}: 'frame_index' must be N integers, got {fi.dtype} {fi.shape}.")
    if n > 1 and (np.diff(fi) <= 0).any():
        raise LandmarksFileError(f"{src}: 'frame_index' must be strictly increasing.")
    v = np.asarray(track.valid)
    if v.shape != (n,):
        raise LandmarksFileError(f"{src}: 'valid' must have N = {n} entries, got {v.shape}.")
    track.valid = v.astype(bool) & np.isfinite(track.lmks68).all(axis=(1, 2))
    if track.image_size is not None:
        size = tuple(int(s) for s in np.asarray(track.image_size).ravel())
        if len(size) != 2 or min(size) <= 0:
            raise LandmarksFileError(f"{src}: 'image_size' must be [W, H] > 0, got {track.image_size}.")
        track.image_size = size  # type: ignore[assignment]
    return track


def _load_npz(path: Path) -> LandmarkTrack:
    src = str(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise LandmarksFileError(f"{src}: cannot read as .npz ({exc}).") from exc
    with z:
        if "lmks68" not in z.files:
            raise LandmarksFileError(f"{src}: no 'lmks68' array (found: {', '.join(z.files) or 'none'}).")
        lm = _array("lmks68", z["lmks68"], None, src)
        if lm.ndim == 2:  # a single image
            lm = lm[None]
        n = len(lm)

        def opt(key: str, dtype: type = np.float32) -> np.ndarray | None:
            if key not in z.files:
                return None
            a = _array(key, z[key], None, src, dtype)
            return a[None] if key in _SIZES and a.ndim == 2 and n == 1 else a

        return LandmarkTrack(
            lm, opt("iris"), opt("ears"), opt("ears_conf"),
            opt("frame_index", np.int64), opt("valid", bool),
            tuple(opt("image_size", np.int64)) if "image_size" in z.files else None,  # type: ignore[arg-type]
        )


def _load_json(path: Path) -> LandmarkTrack:
    src = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LandmarksFileError(f"{src}: not valid JSON ({exc}).") from exc
    frames = doc.get("frames") if isinstance(doc, dict) else doc
    if not isinstance(frames, list) or not frames:
        raise LandmarksFileError(f"{src}: expected a non-empty 'frames' list.")
    n = len(frames)
    out: dict[str, np.ndarray] = {k: np.full((n, c, 2), np.nan, np.float32) for k, c in _SIZES.items()}
    conf = np.zeros((n, 20), np.float32)
    present = {k: False for k in _SIZES}
    fi = np.arange(n, dtype=np.int64)
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise LandmarksFileError(f"{src}: frames[{i}] is not an object.")
        if "frame" in fr:
            if not isinstance(fr["frame"], int):
                raise LandmarksFileError(f"{src}: frames[{i}].frame must be an integer.")
            fi[i] = fr["frame"]
        for key, count in _SIZES.items():
            val = fr.get(key)
            if val is None:
                continue
            # null entries inside a list mark single missing points
            a = _array(f"frames[{i}].{key}", [[np.nan, np.nan] if p is None else p for p in val], None, src)
            if a.shape != (count, 2):
                raise LandmarksFileError(f"{src}: frames[{i}].{key} must be {count} [x, y] pairs, got {a.shape}.")
            out[key][i] = a
            present[key] = True
        if fr.get("ears") is not None:
            c = fr.get("ears_conf", 1.0)
            conf[i] = _array(f"frames[{i}].ears_conf", c, None, src)
    size = doc.get("image_size") if isinstance(doc, dict) else None
    return LandmarkTrack(
        out["lmks68"],
        out["iris"] if present["iris"] else None,
        out["ears"] if present["ears"] else None,
        conf if present["ears"] else None,
        fi,
        None,
        tuple(size) if size is not None else None,  # type: ignore[arg-type]
    )


def load_landmarks(path: str | os.PathLike[str]) -> LandmarkTrack:
    """Read an external landmarks file (``.npz`` or ``.json``, see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Landmarks file {p} does not exist.")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        track = _load_npz(p)
    elif suffix == ".json":
        track = _load_json(p)
    else:
        raise LandmarksFileError(f"{p}: unknown landmarks format '{suffix}'; use .npz or .json.")
    return _validate(track, str(p))


def save_landmarks(path: str | os.PathLike[str], track: LandmarkTrack) -> Path:
    """Write ``track`` as ``.npz`` or ``.json`` (by suffix), readable by :func:`load_landmarks`."""
    p = Path(path)
    _validate(track, str(p))
    arrays = {k: getattr(track, k) for k in ("lmks68", "iris", "ears", "ears_conf", "frame_index", "valid")}
    if track.image_size is not None:
        arrays["image_size"] = np.asarray(track.image_size, np.int64)
    if p.suffix.lower() == ".npz":
        np.savez(p, **{k: v for k, v in arrays.items() if v is not None})
        return p
    if p.suffix.lower() != ".json":
        raise LandmarksFileError(f"{p}: unknown landmarks format '{p.suffix}'; use .npz or .json.")

    def pts(a: np.ndarray) -> list[list[float] | None]:
        return [None if not np.isfinite(q).all() else [float(q[0]), float(q[1])] for q in a]

    frames = []
    index, valid, ears_conf = track.frame_index, track.valid, track.ears_conf
    assert index is not None and valid is not None  # set by __post_init__
    for i in range(len(track)):
        fr: dict[str, Any] = {"frame": int(index[i])}
        fr["lmks68"] = pts(track.lmks68[i]) if valid[i] else None
        if track.iris is not None and np.isfinite(track.iris[i]).any():
            fr["iris"] = pts(track.iris[i])
        if track.ears is not None and np.isfinite(track.ears[i]).any():
            fr["ears"] = pts(track.ears[i])
            assert ears_conf is not None  # set with the ears by __post_init__
            fr["ears_conf"] = [float(c) for c in ears_conf[i]]
        frames.append(fr)
    doc = {"image_size": list(track.image_size) if track.image_size else None, "frames": frames}
    p.write_text(json.dumps(doc), encoding="utf-8")
    return p
