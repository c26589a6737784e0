"""Make the README's overlay figure from synthetic data only (no third-party photo is copied).

A random ICT-FaceKit identity with a smile is rendered (shaded, skin-toned) at a known camera; the
picture goes through the full single-image pipeline (MediaPipe detection, stage 1, stage 2) and the
figure shows [synthetic input | flame-tracker overlay]. Run: ``python docs/make_readme_figure.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from flame_tracker.camera.convert import Crop, project_pixels
from flame_tracker.camera.reference import default_distance, euler_to_rotvec, world_to_view
from flame_tracker.rendering.overlay import shade_mesh
from flame_tracker.tracker import Tracker

SIZE = 512
OUT = Path(__file__).with_name("overlay_example.png")


def synthetic_photo(model, fov: float = 20.0) -> np.ndarray:
    g = torch.Generator().manual_seed(3)
    shape = 0.8 * torch.randn(1, model.n_shape, generator=g)
    expr = torch.zeros(1, model.n_expr)
    for name, w in {"mouthSmile_L": 0.7, "mouthSmile_R": 0.7, "jawOpen": 0.15}.items():
        if model.expr_names and name in model.expr_names:
            expr[0, model.expr_names.index(name)] = w
    verts = model(shape=shape, expr=expr).vertices  # [1, V, 3]
    euler = torch.tensor([[math.radians(18.0), math.radians(-6.0), math.radians(3.0)]])
    dist = float(default_distance(fov)) * 1.15
    rot = euler_to_rotvec(euler)
    # Orbit the camera: centre = R @ (0, 0, d) so it still looks at the head.
    from flame_tracker.camera.reference import rotvec_to_matrix

    centre = (rotvec_to_matrix(rot) @ torch.tensor([0.0, 0.0, dist]))[None]
    pose6 = torch.cat([rot, centre.reshape(1, 3)], dim=-1)
    crop = Crop(0.0, 0.0, float(SIZE))
    xy = project_pixels(verts, pose6, fov, crop)[0]
    depth = world_to_view(verts, pose6)[0, :, 2:3]
    intensity, mask = shade_mesh(torch.cat([xy, depth], -1), model.faces, SIZE, SIZE)
    yy = np.linspace(0, 1, SIZE, dtype=np.float32)[:, None, None]
    background = (np.array([70, 90, 120], np.float32) * (1 - yy) + np.array([30, 35, 45], np.float32) * yy)
    background = np.broadcast_to(background, (SIZE, SIZE, 3))
    skin = np.array([224, 172, 140], np.float32) * (0.35 + 0.75 * intensity[..., None])
    img = np.where(mask[..., None], skin, background)
    return np.clip(img, 0, 255).astype(np.uint8)


def main() -> None:
    with Tracker() as tracker:
        photo = synthetic_photo(tracker.model)
        result = tracker.fit_image(photo)
        overlay = result.overlay(photo)
    print(f"mean 68-point reprojection error on the synthetic photo: {result.reprojection_error_px:.2f} px")
    figure = np.concatenate([photo, overlay], axis=1)
    figure = cv2.resize(figure, (figure.shape[1] * 3 // 4, figure.shape[0] * 3 // 4), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(OUT), cv2.cvtColor(figure, cv2.COLOR_RGB2BGR))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
