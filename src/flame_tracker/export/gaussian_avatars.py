"""A tracked run in the VHAP layout GaussianAvatars trains on (``../shared/reference/export-formats.md`` §1):

```
images/{t:05d}_00.png          the tracked frames (original pixels)
flame_param/{t:05d}.npz        translation (1,3), rotation (1,3), neck_pose, jaw_pose (1,3),
                               eyes_pose (1,6), shape (300,), expr (1,100), static_offset (1,5023,3)
canonical_flame_param.npz      zeros, jaw_pose [[0.3, 0, 0]], the shape
transforms{,_train,_val,_test}.json
```

As VHAP's monocular export: one fixed camera (camera-to-world in OpenGL axes, at z = 1 looking at
the origin, before re-centring), the head moving (``rotation`` about FLAME's root joint, then
``translation``); translations re-centred by their mean, the camera shifted by the same. The
principal point must be the image centre (GaussianAvatars reads only ``camera_angle_x``): runs with
the default image-centred camera qualify, others are refused. Only FLAME 2023 runs are exported
(GaussianAvatars' FLAME); nothing is converted between FLAME versions. No ``fg_masks`` are written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from flame_tracker.export.run import ExportError, TrackedRun

N_SHAPE, N_EXPR = 300, 100  # GaussianAvatars' FLAME
TRAIN_FRACTION = 0.7


def _check(run: TrackedRun, model) -> None:
    if model.name != run.model_name:
        raise ExportError(f"{run.folder}: the run was tracked with model {run.model_name!r}, not {model.name!r}; "
                          "pass the same --model")
    if "2023" not in model.name or not model.has_jaw_joint or model.n_verts != 5023:
        raise ExportError(f"GaussianAvatars needs FLAME 2023 (flame2023.pkl or flame2023_Open.pkl); this run was "
                          f"tracked with {model.name!r}: track the video with --model .../flame2023.pkl")
    if model.n_shape > N_SHAPE or model.n_expr > N_EXPR:
        raise ExportError(f"{model.name!r} has {model.n_shape} shape / {model.n_expr} expression components; "
                          f"GaussianAvatars' FLAME takes at most {N_SHAPE} / {N_EXPR}")
    pp, size = run.arrays["principal_point_px"], run.arrays["image_size"]
    if np.abs(pp - size / 2.0).max() > 0.5:
        raise ExportError(f"{run.folder}: the camera's principal point is not the image centre (a run with "
                          "--fov); GaussianAvatars ignores cx, cy: track with --image-fov (the default)")


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((a.shape[0], n), np.float32)
    out[:, : a.shape[1]] = a
    return out


def head_motion(run: TrackedRun, model) -> tuple[np.ndarray, np.ndarray]:
    """Per frame FLAME ``rotation`` (axis-angle about the root joint) and ``translation`` that place
    the head in front of a camera at z = 1 (OpenGL axes) as the tracked camera sees it."""
    import torch

    from flame_tracker.camera import to_head_centric

    a = run.arrays
    head_rv, head_t = to_head_centric(torch.as_tensor(a["pose6"], dtype=torch.float64))  # X_cam = R X + t
    with torch.no_grad():  # each frame's root joint (joints move with shape AND expression)
        j0 = model.rest_joints(torch.as_tensor(a["shape"][:1], dtype=model.dtype),
                               torch.as_tensor(a["exp"], dtype=model.dtype))[:, 0].double().cpu().numpy()  # [T, 3]
    from scipy.spatial.transform import Rotation

    r = Rotation.from_rotvec(head_rv.numpy()).as_matrix()
    # FLAME: X_world = R (X - J0) + J0 + translation; the camera at (0, 0, 1): X_world = X_cam + e_z
    transl = head_t.numpy() + np.array([0.0, 0.0, 1.0]) + np.einsum("nij,nj->ni", r, j0) - j0
    return head_rv.numpy(), transl


def export_gaussian_avatars(run: TrackedRun, model, out_dir: str | Path, video: str | Path | None = None) -> Path:
    """Write the VHAP/GaussianAvatars folder ``out_dir`` for ``run`` (see the module docstring); the
    frames are decoded again from ``video`` (default: the run's source video). Written to
    ``out_dir.part`` first and renamed when complete. ``out_dir`` must be new, empty or a previous
    export (which is replaced); anything else is refused, never deleted."""
    _check(run, model)
    a = run.arrays
    video = Path(video) if video is not None else Path(str(a.get("video_path", "")))
    if not video.is_file():
        raise ExportError(f"the run's source video {str(video)!r} is not there; pass --video PATH")
    out_dir = _free_out_dir(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write(run, model, video, tmp)
    except BaseException:  # nothing half-written is left behind (Ctrl-C included)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out_dir.with_name(out_dir.name + ".old")
    if out_dir.exists():  # a previous export of ours (checked above): swapped out, then removed
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _free_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as an absolute path that may be (re)written: missing, empty, or a previous
    GaussianAvatars export. Anything else is refused rather than deleted."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.parent == out_dir:
        raise ExportError(f"{out_dir}: give a folder to create for the export, not the file system root")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir}: exists and is not a folder; give a new folder for the export")
        ours = (out_dir / "transforms.json").is_file() and (out_dir / "flame_param").is_dir()
        if any(out_dir.iterdir()) and not ours:
            raise ExportError(f"{out_dir}: exists and holds other files; give a new (or empty) folder for the "
                              "export: a previous gaussian-avatars export there would be replaced")
    return out_dir


def _write(run: TrackedRun, model, video: Path, tmp: Path) -> None:
    """Everything of the export into the fresh folder ``tmp``."""
    import cv2

    from flame_tracker.video.decode import VideoReader

    a = run.arrays
    (tmp / "images").mkdir(parents=True)
    (tmp / "flame_param").mkdir()
    frames = [int(f) for f in a["frame"]]
    wanted = {f: t for t, f in enumerate(frames)}
    written = 0
    for fr in VideoReader(video, max_frames=None):
        t = wanted.get(fr.index)
        if t is None:
            continue
        path = tmp / "images" / f"{t:05d}_00.png"
        if not cv2.imwrite(str(path), np.ascontiguousarray(fr.image[..., ::-1])):
            raise ExportError(f"{path}: could not write the frame image (disk full or not writable?)")
        written += 1
        if written == len(frames):
            break
    if written != len(frames):
        raise ExportError(f"{video}: found {written} of the run's {len(frames)} frames; is it the tracked video?")

    rot, transl = head_motion(run, model)
    centre = transl.mean(0)
    transl = transl - centre
    shape = _pad(a["shape"][:1], N_SHAPE)[0]
    expr = _pad(a["exp"], N_EXPR)
    # GaussianAvatars reads static_offset from the first frame's file unless told not to (zero: the
    # fitted shape is all the identity there is; it pads the 120 teeth vertices itself)
    offset = np.zeros((1, model.n_verts, 3), np.float32)
    for t in range(len(frames)):
        np.savez(tmp / "flame_param" / f"{t:05d}.npz", translation=transl[t : t + 1].astype(np.float32),
                 rotation=rot[t : t + 1].astype(np.float32), neck_pose=a["neck_pose"][t : t + 1].astype(np.float32),
                 jaw_pose=a["jaw_pose"][t : t + 1].astype(np.float32),
                 eyes_pose=a["eye_pose"][t : t + 1].astype(np.float32), shape=shape, expr=expr[t : t + 1],
                 static_offset=offset)
    zeros3 = np.zeros((1, 3), np.float32)
    np.savez(tmp / "canonical_flame_param.npz", translation=zeros3, rotation=zeros3, neck_pose=zeros3,
             jaw_pose=np.array([[0.3, 0.0, 0.0]], np.float32), eyes_pose=np.zeros((1, 6), np.float32),
             shape=shape, expr=np.zeros((1, N_EXPR), np.float32), static_offset=offset)

    w, h = (int(v) for v in a["image_size"][0])
    fx, fy = float(a["K_px"][0, 0, 0]), float(a["K_px"][0, 1, 1])
    c2w = np.eye(4)
    c2w[:3, 3] = np.array([0.0, 0.0, 1.0]) - centre  # the camera gets the translations' shift
    intr = {"cx": w / 2, "cy": h / 2, "fl_x": fx, "fl_y": fy, "w": w, "h": h,
            "camera_angle_x": float(2 * np.arctan(w / (2 * fx))), "camera_angle_y": float(2 * np.arctan(h / (2 * fy)))}
    entries = [{"timestep_index": t, "timestep_index_original": f, "timestep_id": f"{t:05d}", "camera_index": 0,
                "camera_id": "00", **intr, "transform_matrix": c2w.tolist(), "file_path": f"images/{t:05d}_00.png",
                "flame_param_path": f"flame_param/{t:05d}.npz"} for t, f in enumerate(frames)]
    n_train = int(round(TRAIN_FRACTION * len(frames)))
    splits = {"": entries, "_train": entries[:n_train], "_val": [], "_test": entries[n_train:]}
    for suffix, frs in splits.items():
        doc = {**intr, "timestep_indices": [e["timestep_index"] for e in frs], "camera_indices": [0], "frames": frs}
        (tmp / f"transforms{suffix}.json").write_text(json.dumps(doc, indent=1))


__all__ = ["export_gaussian_avatars", "head_motion"]
