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


# ------------------------------------------------------------------ shared by the folder formats

#: Written into every export folder: a later export may replace a folder that has it, nothing else.
MARKER = ".flame-tracker-export"


def free_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as an absolute path that may be (re)written: missing, empty, or an earlier export
    of ours (:data:`MARKER`). Anything else is refused, never deleted."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.parent == out_dir:
        raise ExportError(f"{out_dir}: give a folder to create for the export, not the file system root")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir}: exists and is not a folder; give a new folder for the export")
        ours = (out_dir / MARKER).is_file()  # a VHAP folder looks like our export but is the user's
        if any(out_dir.iterdir()) and not ours:
            raise ExportError(f"{out_dir}: exists and holds other files; give a new (or empty) folder for the "
                              "export: an earlier export there would be replaced")
    return out_dir


def write_folder(out_dir: str | Path, fmt: str, write) -> Path:
    """Run ``write(tmp_folder)`` and put the result at ``out_dir`` (see :func:`free_out_dir`): written
    to a fresh hidden sibling folder first, swapped in when complete, removed on any failure (Ctrl-C
    included)."""
    import shutil
    import tempfile

    out_dir = free_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # fresh sibling folders of our own (a user's "<out>.part" or "<out>.old" is never touched)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.part-", dir=out_dir.parent))
    try:
        write(tmp)
        (tmp / MARKER).write_text(fmt + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        out_dir.rename(old / "export")
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def source_video(run: TrackedRun, video: str | Path | None) -> Path:
    """The video to decode the frames from: ``video``, else the one the run recorded."""
    path = Path(video) if video is not None else Path(str(run.arrays.get("video_path", "")))
    if not path.is_file():
        raise ExportError(f"the run's source video {str(path)!r} is not there; pass --video PATH")
    return path


def each_frame(run: TrackedRun, video: Path):
    """``(t, frame RGB)`` for every exported frame ``t`` of the run, decoded again from ``video``;
    :class:`ExportError` when frames are missing (not the tracked video)."""
    from flame_tracker.video.decode import VideoReader

    frames = [int(f) for f in run.arrays["frame"]]
    wanted = {f: t for t, f in enumerate(frames)}
    seen = 0
    for fr in VideoReader(video, max_frames=None):
        t = wanted.get(fr.index)
        if t is None:
            continue
        yield t, fr.image
        seen += 1
        if seen == len(frames):
            return
    raise ExportError(f"{video}: found {seen} of the run's {len(frames)} frames; is it the tracked video?")


def save_png(path: Path, image: np.ndarray) -> None:
    """An RGB (or single-channel) uint8 image as PNG; :class:`ExportError` when it cannot be written."""
    import cv2

    img = image[..., ::-1] if image.ndim == 3 else image
    if not cv2.imwrite(str(path), np.ascontiguousarray(img)):
        raise ExportError(f"{path}: could not write the image (disk full or not writable?)")


def check_flame(run: TrackedRun, model, fmt: str, version: str | None, n_shape: int, n_expr: int) -> None:
    """The run must have been tracked with ``model``, a FLAME model (``version``: ``"2020"`` or
    ``"2023"``, told by the file name) of at most ``n_shape``/``n_expr`` components."""
    if model.name != run.model_name:
        raise ExportError(f"{run.folder}: the run was tracked with model {run.model_name!r}, not {model.name!r}; "
                          "pass the same --model")
    pkl = {"2023": "flame2023.pkl", "2020": "generic_model.pkl"}.get(version or "", "generic_model.pkl")
    if not model.has_jaw_joint or model.n_verts != 5023:
        raise ExportError(f"{fmt} needs FLAME{' ' + version if version else ''}; this run was tracked with "
                          f"{model.name!r}: track the video with --model PATH/{pkl}")
    is_2023 = "2023" in model.name
    if version == "2023" and not is_2023:
        raise ExportError(f"{fmt} needs FLAME 2023 (flame2023.pkl or flame2023_Open.pkl); this run was tracked "
                          f"with {model.name!r}: track the video with --model .../flame2023.pkl")
    if version == "2020" and is_2023:
        raise ExportError(f"{fmt} needs FLAME 2020 (generic_model.pkl); this run was tracked with {model.name!r}: "
                          "track the video with --model .../generic_model.pkl (nothing is converted between "
                          "FLAME versions)")
    if model.n_shape > n_shape or model.n_expr > n_expr:
        raise ExportError(f"{model.name!r} has {model.n_shape} shape / {model.n_expr} expression components; "
                          f"{fmt} takes at most {n_shape} / {n_expr}")


def pad(a: np.ndarray, n: int) -> np.ndarray:
    """``[T, k]`` zero-padded to ``[T, n]`` float32."""
    out = np.zeros((a.shape[0], n), np.float32)
    out[:, : a.shape[1]] = a
    return out


def posed_vertices(run: TrackedRun, model, rows=None) -> np.ndarray:
    """The fitted mesh of each frame in model space ``[T, V, 3]`` (the camera moves, the head is
    still): identity, expression, jaw, eyes."""
    import torch

    a = run.arrays
    rows = np.arange(run.n_frames) if rows is None else np.asarray(rows)
    dt = model.dtype
    with torch.no_grad():
        out = model(shape=torch.as_tensor(a["shape"][:1], dtype=dt), expr=torch.as_tensor(a["exp"][rows], dtype=dt),
                    jaw_pose=torch.as_tensor(a["jaw_pose"][rows], dtype=dt),
                    eye_pose=torch.as_tensor(a["eye_pose"][rows], dtype=dt),
                    neck_pose=torch.as_tensor(a["neck_pose"][rows], dtype=dt))
    return out.vertices.double().cpu().numpy()
