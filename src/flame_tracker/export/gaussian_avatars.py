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
(GaussianAvatars' FLAME); nothing is converted between FLAME versions. ``fg_masks/`` (with
``fg_mask_path`` per frame) from the fitted head's silhouette (``masks="model"``) or the user's mattes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flame_tracker.export.run import (
    FLAME_FORMATS,
    ExportError,
    TrackedRun,
    check_flame,
    each_frame,
    pad,
    posed_vertices,
    save_png,
    source_video,
    to_shared_camera,
    write_folder,
)

N_SHAPE, N_EXPR = FLAME_FORMATS["gaussian-avatars"][2:]
TRAIN_FRACTION = 0.7


def _check(run: TrackedRun, model) -> None:
    check_flame(run, model, *FLAME_FORMATS["gaussian-avatars"])
    pp, size = run.arrays["principal_point_px"], run.arrays["image_size"]
    if np.abs(pp - size / 2.0).max() > 0.5:
        raise ExportError(f"{run.folder}: the camera's principal point is not the image centre (a run with "
                          "--fov); GaussianAvatars ignores cx, cy: track with --image-fov (the default)")


def head_motion(run: TrackedRun, model) -> tuple[np.ndarray, np.ndarray]:
    """Per frame FLAME ``rotation`` (axis-angle about the root joint) and ``translation`` that place
    the head in front of a camera at z = 1 (OpenGL axes) as the tracked camera sees it."""
    import torch

    from flame_tracker.camera import to_head_centric

    a = run.arrays
    head_rv, head_t = to_head_centric(torch.as_tensor(a["pose6"], dtype=torch.float64))  # X_cam = R X + t
    from scipy.spatial.transform import Rotation

    r = Rotation.from_rotvec(head_rv.numpy()).as_matrix()
    # the camera at (0, 0, 1): X_world = X_cam + e_z
    return head_rv.numpy(), model.root_translation(a["shape"][:1], a["exp"], r, head_t.numpy() + [0.0, 0.0, 1.0])


def export_gaussian_avatars(run: TrackedRun, model, out_dir: str | Path, video: str | Path | None = None,
                            masks: str | Path | None = None) -> Path:
    """Write the VHAP/GaussianAvatars folder ``out_dir`` for ``run`` (see the module docstring); the
    frames are decoded again from ``video`` (default: the run's source video). ``masks``:
    ``"model"`` writes ``fg_masks/`` from the fitted head's silhouette, a folder copies the user's
    mattes from it (``<source frame index, 6 digits>.png``, as the run's ``frames/``). Written to
    ``out_dir.part`` first and renamed when complete; ``out_dir`` must be new, empty or an earlier
    export (which is replaced); anything else is refused, never deleted."""
    _check(run, model)
    src = source_video(run, video)
    mask_dir = None
    if masks is not None and str(masks) != "model":
        mask_dir = Path(masks)
        names = run.frame_names
        missing = [n for n in names if not (mask_dir / f"{n}.png").is_file()]
        what = "the photo's name" if run.images else "its source frame index"
        if not mask_dir.is_dir() or missing:
            raise ExportError(f"--masks {mask_dir}: expected one matte per tracked frame named by {what} "
                              f"({names[0]}.png, ...); "
                              + ("not a folder" if not mask_dir.is_dir() else f"{len(missing)} missing"))
    return write_folder(out_dir, "gaussian-avatars",
                        lambda tmp: _write(run, model, src, tmp, masks is not None, mask_dir))


def _write(run: TrackedRun, model, video: Path, tmp: Path, with_masks: bool = False,
           mask_dir: Path | None = None) -> None:
    """Everything of the export into the fresh folder ``tmp``."""
    import shutil

    a = run.arrays
    (tmp / "images").mkdir()
    (tmp / "flame_param").mkdir()
    if with_masks:
        (tmp / "fg_masks").mkdir()
    frames = [int(f) for f in a["frame"]]
    names = run.frame_names
    sil = silhouettes(run, model) if with_masks and mask_dir is None else None
    for t, image in each_frame(run, video):
        save_png(tmp / "images" / f"{t:05d}_00.png", image)
        if sil is not None:
            save_png(tmp / "fg_masks" / f"{t:05d}_00.png", next(sil))
        elif mask_dir is not None and run.warps is not None:  # photos of other cameras: the matte moves too
            import cv2

            matte = cv2.imread(str(mask_dir / f"{names[t]}.png"), cv2.IMREAD_UNCHANGED)
            if matte is None:
                raise ExportError(f"{mask_dir / f'{names[t]}.png'}: not a readable image")
            if not cv2.imwrite(str(tmp / "fg_masks" / f"{t:05d}_00.png"), to_shared_camera(run, t, matte)):
                raise ExportError(f"{tmp}: could not write a matte (disk full or not writable?)")
        elif mask_dir is not None:
            shutil.copyfile(mask_dir / f"{names[t]}.png", tmp / "fg_masks" / f"{t:05d}_00.png")

    rot, transl = head_motion(run, model)
    centre = transl.mean(0)
    transl = transl - centre
    write_flame_params(tmp, model, a["shape"][:1], a["exp"], rot, transl, a["neck_pose"], a["jaw_pose"], a["eye_pose"])

    w, h = (int(v) for v in a["image_size"][0])
    fx, fy = float(a["K_px"][0, 0, 0]), float(a["K_px"][0, 1, 1])
    c2w = np.eye(4)
    c2w[:3, 3] = np.array([0.0, 0.0, 1.0]) - centre  # the camera gets the translations' shift
    intr = {"cx": w / 2, "cy": h / 2, "fl_x": fx, "fl_y": fy, "w": w, "h": h,
            "camera_angle_x": float(2 * np.arctan(w / (2 * fx))), "camera_angle_y": float(2 * np.arctan(h / (2 * fy)))}
    entries = [{"timestep_index": t, "timestep_index_original": f, "timestep_id": f"{t:05d}", "camera_index": 0,
                "camera_id": "00", **intr, "transform_matrix": c2w.tolist(), "file_path": f"images/{t:05d}_00.png",
                "flame_param_path": f"flame_param/{t:05d}.npz",
                **({"fg_mask_path": f"fg_masks/{t:05d}_00.png"} if with_masks else {})}
               for t, f in enumerate(frames)]
    n_train = int(round(TRAIN_FRACTION * len(frames)))
    splits = {"": entries, "_train": entries[:n_train], "_val": [], "_test": entries[n_train:]}
    for suffix, frs in splits.items():
        doc = {**intr, "timestep_indices": [e["timestep_index"] for e in frs], "camera_indices": [0], "frames": frs}
        (tmp / f"transforms{suffix}.json").write_text(json.dumps(doc, indent=1))


def write_flame_params(tmp: Path, model, shape, expr, rotation, translation, neck, jaw, eyes) -> None:
    """``flame_param/{t:05d}.npz`` for every row ``t`` of the per-timestep arrays and the canonical
    parameters, with GaussianAvatars' 300 shape / 100 expression components (zero-padded)."""
    shape = pad(np.asarray(shape).reshape(1, -1), N_SHAPE)[0]
    expr = pad(expr, N_EXPR)
    f32 = lambda x, t: np.asarray(x[t : t + 1], np.float32)  # noqa: E731
    # GaussianAvatars reads static_offset from the first frame's file unless told not to (zero: the
    # fitted shape is all the identity there is; it pads the 120 teeth vertices itself)
    offset = np.zeros((1, model.n_verts, 3), np.float32)
    for t in range(len(expr)):
        np.savez(tmp / "flame_param" / f"{t:05d}.npz", translation=f32(translation, t), rotation=f32(rotation, t),
                 neck_pose=f32(neck, t), jaw_pose=f32(jaw, t), eyes_pose=f32(eyes, t), shape=shape,
                 expr=expr[t : t + 1], static_offset=offset)
    zeros3 = np.zeros((1, 3), np.float32)
    np.savez(tmp / "canonical_flame_param.npz", translation=zeros3, rotation=zeros3, neck_pose=zeros3,
             jaw_pose=np.array([[0.3, 0.0, 0.0]], np.float32), eyes_pose=np.zeros((1, 6), np.float32),
             shape=shape, expr=np.zeros((1, N_EXPR), np.float32), static_offset=offset)


def silhouettes(run: TrackedRun, model):
    """Foreground masks (uint8, 255 on the fitted head) of every exported frame, in order: the
    rasterised head mesh seen by the frame's camera."""
    import torch

    from flame_tracker.rendering.raster import rasterize

    a = run.arrays
    w, h = (int(v) for v in a["image_size"][0])
    faces = model.faces.cpu()
    for t in range(run.n_frames):
        verts = posed_vertices(run, model, [t])[0]
        w2c = a["w2c_opencv"][t].astype(np.float64)
        cam = verts @ w2c[:3, :3].T + w2c[:3, 3]
        K = a["K_px"][t].astype(np.float64)
        px = cam[:, :2] / cam[:, 2:] * K[[0, 1], [0, 1]] + K[:2, 2]
        frags = rasterize(torch.as_tensor(np.concatenate([px, cam[:, 2:]], 1)), faces, h, w)
        yield (frags.face_idx[0].numpy() >= 0).astype(np.uint8) * 255


__all__ = ["export_gaussian_avatars", "head_motion", "silhouettes", "write_flame_params"]
