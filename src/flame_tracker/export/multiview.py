"""A ``flame-tracker multiview`` run in GaussianAvatars' multi-camera VHAP layout (``../shared/reference/
export-formats.md`` §1, as VHAP exports NeRSemble captures)::

    images/{t:05d}_{c:02d}.png      every camera's frame of timestep t
    fg_masks/{t:05d}_{c:02d}.png    (--masks model) the fitted head's silhouette in that view
    flame_param/{t:05d}.npz         the head in the world (rotation about FLAME's root joint, translation)
    canonical_flame_param.npz
    transforms{,_train,_val,_test}.json

The cameras stay where the calibration puts them (camera-to-world in OpenGL axes) and the head moves.
GaussianAvatars reads one field of view (``camera_angle_x``) for all cameras and ignores ``cx``,
``cy``: every camera's frames are scaled about its principal point onto one shared camera (the
median focal length, the principal point at the centre; black borders), exactly, as a pinhole camera
with another focal length sees the same picture scaled. A camera without a frame at a timestep
(``--sync timestamps``) has no picture and no entry there. Splits: the first 70 % of the timesteps train
on every camera but one held out (the one nearest the rig's middle, when there are 3 or more), which
is ``val`` over those timesteps; the rest ``test`` on every camera.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flame_tracker.export.gaussian_avatars import TRAIN_FRACTION, write_flame_params
from flame_tracker.export.run import (
    FLAME_FORMATS,
    ExportError,
    TrackedRun,
    check_flame,
    common_camera,
    save_png,
    warp_picture,
    write_folder,
)
from flame_tracker.multiview.cameras import Rig

_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class MultiviewRun:
    """A finished multi-view run: its arrays (``tracking.npz``), calibration and summary."""

    folder: Path
    arrays: dict[str, np.ndarray]
    rig: Rig
    summary: dict

    @property
    def model_name(self) -> str:
        return str(self.arrays.get("model_name", ""))


def is_multiview_run(folder: str | Path) -> bool:
    """Whether ``folder`` is the output of ``flame-tracker multiview``."""
    try:
        return json.loads((Path(folder) / "manifest.json").read_text()).get("kind") == "multiview"
    except (OSError, ValueError):
        return False


def load_multiview_run(folder: str | Path) -> MultiviewRun:
    from flame_tracker.multiview import load_cameras

    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if not manifest.get("complete") or not (folder / "tracking.npz").is_file():
            raise ExportError(f"{folder}: not a finished `flame-tracker multiview` run; run it again")
        with np.load(folder / "tracking.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        summary = json.loads((folder / "summary.json").read_text())
        rig = load_cameras(folder / "cameras.json")
        summary["capture"]  # noqa: B018  (recorded by every run)
    except (OSError, ValueError, KeyError) as exc:  # MultiviewError is a ValueError
        raise ExportError(f"{folder}: an incomplete `flame-tracker multiview` run ({exc}); run it again") from exc
    return MultiviewRun(folder, arrays, rig, summary)


def export_multiview_gaussian_avatars(run: MultiviewRun, model, out_dir: str | Path, capture: str | Path | None = None,
                                      masks: str | None = None) -> Path:
    """Write the multi-camera VHAP folder ``out_dir`` (module docstring) for ``run``; the frames are
    read again from ``capture`` (default: the run's capture folder); ``masks="model"`` adds
    silhouettes. FLAME 2023 runs only (nothing is converted)."""
    a = run.arrays
    tracked = TrackedRun(run.folder, a, 30.0, run.model_name,
                         model_fingerprint=str(a.get("model_fingerprint", "")))
    check_flame(tracked, model, *FLAME_FORMATS["gaussian-avatars"])
    distorted = [c.name for c in run.rig.cameras if c.dist is not None and np.any(c.dist)]
    if distorted:
        raise ExportError(f"camera(s) {', '.join(distorted)} have lens distortion, which GaussianAvatars' pinhole "
                          "cameras cannot hold; undistort the frames first (calibration without dist)")
    if masks not in (None, "model"):
        raise ExportError("--masks for a multi-view run: 'model' (the fitted head's silhouettes) only")
    from flame_tracker.multiview.capture import open_capture

    root = Path(capture) if capture is not None else Path(run.summary["capture"])
    try:
        cap = open_capture(root, run.rig, every=int(run.summary.get("every", 1)),
                           max_frames=run.summary.get("max_frames"), sync=run.summary.get("sync", "index"))
    except ValueError as exc:  # MultiviewError: the capture moved or changed
        raise ExportError(f"cannot read the capture's frames again ({exc}); pass --images CAPTURE_FOLDER") from exc
    valid = a["valid"].astype(bool)
    if cap.n_frames != len(valid):
        raise ExportError(f"{root}: {cap.n_frames} timesteps, but the run has {len(valid)}: not the tracked capture")
    cams = run.rig.cameras
    K = np.stack([c.K for c in cams])
    s, d, canvas, K_shared = common_camera(K, K[:, :2, 2], np.array([[c.width, c.height] for c in cams]))
    def write(tmp: Path) -> None:
        try:
            _write(run, model, cap, tmp, (s, d, canvas, K_shared), masks == "model")
        except ValueError as exc:  # the capture's frames changed since tracking (MultiviewError)
            if isinstance(exc, ExportError):
                raise
            raise ExportError(f"cannot read the capture's frames again ({exc}); pass --images CAPTURE_FOLDER") from exc

    return write_folder(out_dir, "gaussian-avatars", write)


def _write(run: MultiviewRun, model, cap, tmp: Path, shared, with_masks: bool) -> None:
    s, d, canvas, K_shared = shared
    a = run.arrays
    cams = run.rig.cameras
    C = len(cams)
    steps = np.flatnonzero(a["valid"].astype(bool))  # timesteps with a fitted head
    index = {int(t): i for i, t in enumerate(steps)}
    (tmp / "images").mkdir()
    (tmp / "flame_param").mkdir()
    if with_masks:
        (tmp / "fg_masks").mkdir()
    sil = _silhouettes(run, model, steps, shared) if with_masks else None
    absent: set[tuple[int, int]] = set()  # (timestep, camera) without a frame
    for t, _, images in cap.frames():
        if t not in index:
            continue
        i = index[t]
        for c, image in enumerate(images):
            mask = next(sil) if sil is not None else None
            if image is None:  # no frame of this camera at this time (--sync timestamps): left out, as
                absent.add((i, c))  # a black picture would teach the avatar a black head
                continue
            save_png(tmp / "images" / f"{i:05d}_{c:02d}.png", warp_picture(image, float(s[c]), d[c], canvas))
            if mask is not None:
                save_png(tmp / "fg_masks" / f"{i:05d}_{c:02d}.png", mask)
    write_flame_params(tmp, model, a["shape"][:1], a["exp"][steps], a["head_pose"][steps], a["transl"][steps],
                       a["neck_pose"][steps], a["jaw_pose"][steps], a["eye_pose"][steps])
    w, h = (int(v) for v in canvas)
    f = float(K_shared[0, 0])
    intr = {"cx": w / 2, "cy": h / 2, "fl_x": f, "fl_y": f, "w": w, "h": h,
            "camera_angle_x": float(2 * np.arctan(w / (2 * f))), "camera_angle_y": float(2 * np.arctan(h / (2 * f)))}
    c2w = [np.linalg.inv(c.w2c()) @ _CV_TO_GL for c in cams]  # OpenCV camera axes -> OpenGL
    entries = [[{"timestep_index": i, "timestep_index_original": int(t), "timestep_id": f"{i:05d}", "camera_index": c,
                 "camera_id": cams[c].name, **intr, "transform_matrix": c2w[c].tolist(),
                 "file_path": f"images/{i:05d}_{c:02d}.png", "flame_param_path": f"flame_param/{i:05d}.npz",
                 **({"fg_mask_path": f"fg_masks/{i:05d}_{c:02d}.png"} if with_masks else {})}
                for c in range(C) if (i, c) not in absent] for i, t in enumerate(steps)]
    n_train = int(round(TRAIN_FRACTION * len(steps)))
    held = _held_out_camera(cams) if C >= 3 else None
    splits = {
        "": [e for row in entries for e in row],
        "_train": [e for row in entries[:n_train] for e in row if e["camera_index"] != held],
        "_val": [e for row in entries[:n_train] for e in row if e["camera_index"] == held],
        "_test": [e for row in entries[n_train:] for e in row],
    }
    for suffix, frs in splits.items():
        doc = {**intr, "timestep_indices": sorted({e["timestep_index"] for e in frs}),
               "camera_indices": sorted({e["camera_index"] for e in frs}), "frames": frs}
        (tmp / f"transforms{suffix}.json").write_text(json.dumps(doc, indent=1))


def _held_out_camera(cams) -> int:
    """The camera nearest the middle of the rig's viewing directions (a typical novel view)."""
    dirs = np.stack([c.R[2] for c in cams])  # each camera's forward axis in the world
    mean = dirs.mean(0)
    return int(np.argmax(dirs @ (mean / max(np.linalg.norm(mean), 1e-9))))


def _silhouettes(run: MultiviewRun, model, steps: np.ndarray, shared):
    """Masks (uint8, 255 on the fitted head) of every exported (timestep, camera), in order, as the
    shared camera sees them."""
    import torch

    from flame_tracker.rendering.raster import rasterize

    s, d, canvas, K_shared = shared
    a = run.arrays
    faces = model.faces.cpu()
    w, h = (int(v) for v in canvas)
    dt = model.dtype
    for t in steps:
        with torch.no_grad():
            v = model(shape=torch.as_tensor(a["shape"][:1], dtype=dt),
                      expr=torch.as_tensor(a["exp"][t:t + 1], dtype=dt),
                      jaw_pose=torch.as_tensor(a["jaw_pose"][t:t + 1], dtype=dt),
                      eye_pose=torch.as_tensor(a["eye_pose"][t:t + 1], dtype=dt)).vertices[0].double().cpu().numpy()
        for c in range(len(run.rig.cameras)):
            w2c = a["w2c_opencv"][t, c].astype(np.float64)  # model -> camera c
            cam = v @ w2c[:3, :3].T + w2c[:3, 3]
            px = cam[:, :2] / cam[:, 2:] * K_shared[0, 0] + K_shared[:2, 2]
            frags = rasterize(torch.as_tensor(np.concatenate([px, cam[:, 2:]], 1)), faces, h, w)
            yield (frags.face_idx[0].numpy() >= 0).astype(np.uint8) * 255


__all__ = ["MultiviewRun", "export_multiview_gaussian_avatars", "is_multiview_run", "load_multiview_run"]
