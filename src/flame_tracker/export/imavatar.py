"""A tracked run as the IMavatar family reads it: ``flame_params.json`` with ``image/`` and ``mask/``
(IMavatar, PointAvatar, SplattingAvatar, MonoGaussianAvatar, BakedAvatar;
``../shared/reference/export-formats.md`` §2, checked against IMavatar's ``preprocess/DECA/optimize.py``).

Their convention: FLAME 2020 with 100 shape / 50 expression coefficients, the global head rotation in
``pose`` (15 = global 3, neck 3, jaw 3, eyes 6; about FLAME's root joint), the mesh **scaled by 4**,
then ``world_mat = [I | T]`` (3×4) into a camera that looks down −z with y up, and pixels
``u = size · (x/z · intrinsics[0] + intrinsics[2])``, ``v = size · (y/z · intrinsics[1] + intrinsics[3])``
with ``intrinsics = [−fx/size, fy/size, cx/size, cy/size]``. The frames are square: each is cut to
the largest square of the frame around the tracked face (one crop for the whole run, so the
intrinsics are shared), ``image/{k}.png`` with ``k`` from 1, ``mask/{k}.png`` the fitted head's
silhouette (approximate: no hair, neck or shoulders). ``bbox`` and ``flame_keypoints`` are in the
[−1, 1] coordinates of the square, as IMavatar writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flame_tracker.export.run import (
    FLAME_FORMATS,
    TrackedRun,
    check_flame,
    each_frame,
    pad,
    save_png,
    source_video,
    write_folder,
)

N_SHAPE, N_EXPR = FLAME_FORMATS["imavatar"][2:]
SCALE = 4.0  # IMavatar scales FLAME by 4 "to fit the unit sphere tightly"
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def square_crop(run: TrackedRun) -> tuple[int, int, int]:
    """``(x0, y0, side)``: the largest square of the frame centred (as far as it can be) on the
    median centre of the tracked face."""
    w, h = (int(v) for v in run.arrays["image_size"][0])
    side = min(w, h)
    lm = run.arrays["fit_lmks_68_px"]
    c = np.nanmedian((lm.min(1) + lm.max(1)) / 2, axis=0)
    x0 = int(np.clip(round(c[0] - side / 2), 0, w - side))
    y0 = int(np.clip(round(c[1] - side / 2), 0, h - side))
    return x0, y0, side


def imavatar_frames(run: TrackedRun, model) -> tuple[dict, tuple[int, int, int]]:
    """The ``flame_params.json`` content and the square crop ``(x0, y0, side)``."""
    from scipy.spatial.transform import Rotation

    a = run.arrays
    x0, y0, side = square_crop(run)
    K = a["K_px"][0].astype(np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2] - x0, K[1, 2] - y0
    w2c = a["w2c_opencv"].astype(np.float64)
    R_g = np.einsum("ij,njk->nik", _CV_TO_GL, w2c[:, :3, :3])  # the head's rotation in their camera
    # 4 (R_g (X - J0) + J0) + T = 4 D (R X + t): T / 4 is FLAME's translation of X -> R_g X + D t
    T = SCALE * model.root_translation(a["shape"][:1], a["exp"], R_g, w2c[:, :3, 3] @ _CV_TO_GL.T)
    glob = Rotation.from_matrix(R_g).as_rotvec()
    pose = np.concatenate([glob, a["neck_pose"], a["jaw_pose"], a["eye_pose"]], 1)
    expr = pad(a["exp"], N_EXPR)
    kp = (a["fit_lmks_68_px"] - [x0, y0]) / side * 2 - 1  # [-1, 1] of the square
    frames = []
    for t in range(run.n_frames):
        world_mat = np.concatenate([np.eye(3), T[t][:, None]], 1)
        frames.append({"file_path": f"./image/{t + 1}", "world_mat": world_mat.tolist(),
                       "expression": expr[t].astype(float).tolist(), "pose": pose[t].astype(float).tolist(),
                       "bbox": [float(kp[t, :, 0].min()), float(kp[t, :, 1].min()), float(kp[t, :, 0].max()),
                                float(kp[t, :, 1].max())],
                       "flame_keypoints": kp[t].astype(float).tolist(),
                       "source_frame": int(a["frame"][t])})
    doc = {"intrinsics": [-fx / side, fy / side, cx / side, cy / side],
           "shape_params": pad(a["shape"][:1], N_SHAPE)[0].astype(float).tolist(), "frames": frames}
    return doc, (x0, y0, side)


def export_imavatar(run: TrackedRun, model, out_dir: str | Path, video: str | Path | None = None) -> Path:
    """Write ``flame_params.json``, ``image/`` and ``mask/`` for ``run`` into ``out_dir``."""
    from flame_tracker.export.gaussian_avatars import silhouettes

    check_flame(run, model, *FLAME_FORMATS["imavatar"])
    src = source_video(run, video)
    doc, (x0, y0, side) = imavatar_frames(run, model)

    def write(tmp: Path) -> None:
        (tmp / "image").mkdir()
        (tmp / "mask").mkdir()
        masks = silhouettes(run, model)
        for t, image in each_frame(run, src):
            save_png(tmp / "image" / f"{t + 1}.png", image[y0:y0 + side, x0:x0 + side])
            save_png(tmp / "mask" / f"{t + 1}.png", next(masks)[y0:y0 + side, x0:x0 + side])
        (tmp / "flame_params.json").write_text(json.dumps(doc))

    return write_folder(out_dir, "imavatar", write)


__all__ = ["export_imavatar", "imavatar_frames", "square_crop"]
