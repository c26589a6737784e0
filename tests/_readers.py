"""Consumers' reading code, written from their published loaders, shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def gaussian_avatars_landmarks(ga: Path, frame: dict, camera_angle_x: float, model) -> np.ndarray:
    """The landmarks ``[68, 2]`` (pixels of the frame's image) of one ``transforms.json`` entry, read
    as GaussianAvatars does: OpenGL camera-to-world flipped to OpenCV and inverted, one field of view
    (``camera_angle_x``) with the principal point at the image centre, FLAME with the entry's
    ``flame_param`` (global ``rotation`` about the root joint, then ``translation``)."""
    c2w = np.array(frame["transform_matrix"])
    c2w[:3, 1:3] *= -1
    w2c = np.linalg.inv(c2w)
    w, h = frame["w"], frame["h"]
    focal = w / (2 * np.tan(camera_angle_x / 2))
    p = np.load(ga / frame["flame_param_path"])
    assert p["shape"].shape == (300,) and p["expr"].shape == (1, 100) and p["eyes_pose"].shape == (1, 6)
    assert p["static_offset"].shape == (1, 5023, 3)  # GaussianAvatars reads it from the first frame
    with torch.no_grad():
        lmk = model.landmarks(shape=torch.as_tensor(p["shape"][: model.n_shape])[None],
                              expr=torch.as_tensor(p["expr"][:, : model.n_expr]),
                              head_pose=torch.as_tensor(p["rotation"]), neck_pose=torch.as_tensor(p["neck_pose"]),
                              jaw_pose=torch.as_tensor(p["jaw_pose"]),
                              eye_pose=torch.as_tensor(p["eyes_pose"])).landmarks[0].double().numpy()
    x = (lmk + p["translation"][0]) @ w2c[:3, :3].T + w2c[:3, 3]
    return np.stack([w / 2 + focal * x[:, 0] / x[:, 2], h / 2 + focal * x[:, 1] / x[:, 2]], 1)
