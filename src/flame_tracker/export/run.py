"""A finished ``flame-tracker video`` run folder, as the exporters read it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ExportError(ValueError):
    """The run cannot be exported in the asked format (the message says why and what to do)."""


@dataclass
class TrackedRun:
    """The arrays of ``tracking.npz`` over the tracked (valid) frames, plus the video's metadata."""

    folder: Path
    arrays: dict[str, np.ndarray]  # tracking.npz, frame arrays restricted to the tracked frames
    fps: float
    model_name: str

    @property
    def n_frames(self) -> int:
        return int(self.arrays["exp"].shape[0])

    @property
    def times(self) -> np.ndarray:
        """Seconds from the start of the tracked range, ``[T]``."""
        t = self.arrays["time_s"].astype(np.float64)
        return t - t[0]


def load_run(folder: str | Path) -> TrackedRun:
    """Read a finished run; :class:`ExportError` for a folder that is not one."""
    folder = Path(folder)
    manifest, tracking = folder / "manifest.json", folder / "tracking.npz"
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such folder (give the --out folder of `flame-tracker video`)")
    try:
        complete = json.loads(manifest.read_text()).get("complete", False)
    except (OSError, ValueError):
        complete = False
    if not complete or not tracking.is_file():
        raise ExportError(f"{folder}: not a finished `flame-tracker video` run (no complete manifest.json and "
                          "tracking.npz); run or resume the tracking first")
    with np.load(tracking, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    valid = arrays.get("valid")
    if valid is not None and not valid.all():
        n = valid.shape[0]
        per_frame = {k for k, v in arrays.items() if v.ndim and v.shape[0] == n
                     and k not in ("shape", "crop", "keyframes") and not k.startswith("all_")}
        arrays = {k: (v[valid] if k in per_frame else v) for k, v in arrays.items()}
    if arrays["exp"].shape[0] == 0:
        raise ExportError(f"{folder}: the run has no tracked frame")
    return TrackedRun(folder, arrays, float(arrays.get("video_fps", 30.0)), str(arrays.get("model_name", "")))
