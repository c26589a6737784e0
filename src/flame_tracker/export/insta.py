"""A tracked run as INSTA reads metrical-tracker's output after its ``scripts/transforms.py``
(``../shared/reference/export-formats.md`` §3)::

    images/{id:05d}.png        the tracked frames
    meshes/{id:05d}.obj        the fitted FLAME mesh of each frame (the head still, the camera moving)
    flame/exp/{id:05d}.txt     the 100 expression coefficients, one per line
    canonical.obj              the identity with the jaw open 12 degrees (metrical-tracker's canonical)
    transforms.json            all frames; transforms_{train,val,test}.json: train = all but the last
                               350 frames (or 20 % of a shorter clip), test = those, val = the last 20

``transform_matrix`` is the camera-to-world matrix in OpenCV axes (the inverse of ``[R|t]``, no axis
flip); the top level has ``w, h, cx, cy, fl_x, fl_y, camera_angle_x/y, x_fov, y_fov`` and
``integer_depth_scale``. FLAME 2020 runs only (metrical-tracker's FLAME). No depth maps or
segmentation masks are written (``depth_path``/``seg_mask_path`` are left out).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from flame_tracker.export.run import (
    FLAME_FORMATS,
    TrackedRun,
    check_flame,
    each_frame,
    pad,
    posed_vertices,
    save_png,
    source_video,
    write_folder,
)

N_SHAPE, N_EXPR = FLAME_FORMATS["insta"][2:]
TEST_FRAMES, VAL_FRAMES = 350, 20
CANONICAL_JAW_DEG = 12.0


def export_insta(run: TrackedRun, model, out_dir: str | Path, video: str | Path | None = None) -> Path:
    """Write the INSTA layout for ``run`` into ``out_dir``; frames decoded again from ``video``."""
    import torch

    from flame_tracker.io.mesh import save_obj

    check_flame(run, model, *FLAME_FORMATS["insta"])
    src = source_video(run, video)
    a = run.arrays
    n = run.n_frames
    w, h = (int(v) for v in a["image_size"][0])
    K = a["K_px"][0].astype(np.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    faces = model.faces.cpu().numpy()

    def write(tmp: Path) -> None:
        for sub in ("images", "meshes", "flame/exp"):
            (tmp / sub).mkdir(parents=True)
        for t, image in each_frame(run, src):
            save_png(tmp / "images" / f"{t:05d}.png", image)
        for t in range(n):
            save_obj(tmp / "meshes" / f"{t:05d}.obj", posed_vertices(run, model, [t])[0], faces)
        exp = pad(a["exp"], N_EXPR)
        for t in range(n):
            (tmp / "flame" / "exp" / f"{t:05d}.txt").write_text("\n".join(f"{v:.8f}" for v in exp[t]) + "\n")
        with torch.no_grad():
            jaw = torch.tensor([[math.radians(CANONICAL_JAW_DEG), 0.0, 0.0]], dtype=model.dtype)
            canon = model(shape=torch.as_tensor(a["shape"][:1], dtype=model.dtype), jaw_pose=jaw).vertices[0]
        save_obj(tmp / "canonical.obj", canon.double().cpu().numpy(), faces)
        top = {"w": w, "h": h, "cx": cx, "cy": cy, "fl_x": fx, "fl_y": fy,
               "camera_angle_x": 2 * math.atan(w / (2 * fx)), "camera_angle_y": 2 * math.atan(h / (2 * fy)),
               "x_fov": math.degrees(2 * math.atan(w / (2 * fx))), "y_fov": math.degrees(2 * math.atan(h / (2 * fy))),
               "integer_depth_scale": 0.001}
        frames = []
        for t in range(n):
            c2w = np.linalg.inv(a["w2c_opencv"][t].astype(np.float64))
            frames.append({"file_path": f"images/{t:05d}.png", "mesh_path": f"meshes/{t:05d}.obj",
                           "exp_path": f"flame/exp/{t:05d}.txt", "transform_matrix": c2w.tolist(),
                           "source_frame": int(a["frame"][t])})
        n_test = min(TEST_FRAMES, max(1, n // 5)) if n > 1 else 0
        splits = {"": frames, "_train": frames[: n - n_test], "_test": frames[n - n_test:],
                  "_val": frames[n - min(VAL_FRAMES, n_test):]}  # (the last of the test frames, as INSTA's)
        for suffix, frs in splits.items():
            (tmp / f"transforms{suffix}.json").write_text(json.dumps({**top, "frames": frs}, indent=1))

    return write_folder(out_dir, "insta", write)


__all__ = ["export_insta"]
