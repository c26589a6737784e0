"""A finished ``flame-tracker video`` run folder, as the exporters read it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def is_video_metadata(key: str) -> bool:
    """Whether ``tracking.npz``'s ``key`` is one value for the whole video (not one row per frame)."""
    from flame_tracker.video.pipeline import FIXED_KEYS, VIDEO_KEYS

    return key in FIXED_KEYS or key in VIDEO_KEYS or key.startswith("all_")


class ExportError(ValueError):
    """The run cannot be exported in the asked format (the message says why and what to do)."""


@dataclass
class TrackedRun:
    """The arrays of ``tracking.npz`` over the tracked frames (with landmarks or followed by optical
    flow; interpolated ones are left out), plus the video's metadata."""

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
    if valid is not None and "source" in arrays:  # frames followed by optical flow are tracked too
        valid = valid | (arrays["source"] == "flow")
    if valid is not None and not valid.all():
        arrays = {k: (v if is_video_metadata(k) else v[valid]) for k, v in arrays.items()}
    if arrays["exp"].shape[0] == 0:
        raise ExportError(f"{folder}: the run has no tracked frame")
    fps = float(arrays.get("video_fps", 0.0))
    if not np.isfinite(fps) or fps <= 0:  # a container without a frame rate: from the timestamps
        frames, times = arrays["frame"].astype(np.float64), arrays["time_s"].astype(np.float64)
        span = times[-1] - times[0]
        fps = (frames[-1] - frames[0]) / span if span > 0 else 30.0
    return TrackedRun(folder, arrays, fps, str(arrays.get("model_name", "")))
