"""Synthetic multi-view captures with known truth (``benchmarks/multiview.py``, the multi-view tests):
one subject (identity, skin, light) talking and moving its head, seen by a ring of calibrated cameras,
rendered with the project's own renderer (:func:`flame_tracker.evaluation.scenes.draw_scene`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flame_tracker.multiview.cameras import Camera, Rig


@dataclass
class SyntheticCapture:
    """The truth of a synthetic capture (world: the model's axes, y up, metres)."""

    rig: Rig
    images: list[list[np.ndarray]]  # [T][C] RGB uint8
    shape: np.ndarray  # [S]
    expr: np.ndarray  # [T, E]
    rotation: np.ndarray  # [T, 3, 3] model -> world
    transl: np.ndarray  # [T, 3]
    neutral: np.ndarray  # [V, 3] the identity's neutral mesh

    def write(self, root: str | Path, *, videos: bool = False, unit: str = "m") -> Path:
        """The capture as a user would have it: ``root/cameras.json`` (translations in ``unit``) and
        ``root/<camera>/000000.png ...`` (or ``root/<camera>.mp4`` with ``videos``)."""
        import json

        from flame_tracker.io.results import save_image
        from flame_tracker.multiview.cameras import UNITS

        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        cams = {}
        for c in self.rig.cameras:
            d = c.as_dict()
            d["t"] = (c.t / UNITS[unit]).tolist()
            cams[c.name] = d
        (root / "cameras.json").write_text(json.dumps({"cameras": cams}, indent=1))
        for ci, cam in enumerate(self.rig.cameras):
            if videos:
                from flame_tracker.video.encode import VideoWriter

                with VideoWriter(root / f"{cam.name}.mp4", fps=30.0, crf=12) as out:
                    for frame in self.images:
                        out.write(frame[ci])
            else:
                for t, frame in enumerate(self.images):
                    save_image(root / cam.name / f"{t:06d}.png", frame[ci])
        return root


def look_at(position: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera ``(R, t)`` (OpenCV axes) of a camera at ``position`` looking at ``target``,
    upright in a world whose +y is up."""
    fwd = target - position
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])
    return R, -R @ position


def camera_ring(n: int, *, arc_deg: float = 150.0, distance: float = 0.9, size: tuple[int, int] = (640, 640),
                fov_deg: float = 30.0, pitch_deg: float = 12.0, seed: int = 0) -> Rig:
    """``n`` cameras spread over ``arc_deg`` of yaw in front of the origin at ``distance`` metres,
    at different heights (up to ``pitch_deg`` above or below), focal lengths and distances."""
    r = np.random.default_rng(seed)
    cams = []
    for i, yaw in enumerate(np.linspace(-arc_deg / 2, arc_deg / 2, n)):
        pitch = r.uniform(-pitch_deg, pitch_deg)
        d = distance * r.uniform(0.9, 1.1)
        y, p = np.radians(yaw), np.radians(pitch)
        pos = d * np.array([np.sin(y) * np.cos(p), np.sin(p), np.cos(y) * np.cos(p)])
        R, t = look_at(pos, np.zeros(3))
        f = 0.5 * max(size) / np.tan(np.radians(fov_deg * r.uniform(0.9, 1.1)) / 2)
        K = np.array([[f, 0, size[0] / 2], [0, f, size[1] / 2], [0, 0, 1.0]])
        cams.append(Camera(f"cam_{i:02d}", K, R, t, size[0], size[1]))
    return Rig(cams, "synthetic ring (OpenCV world-to-camera, metres)")


def synthetic_capture(model, n_cams: int = 6, n_steps: int = 6, *, seed: int = 0, arc_deg: float = 150.0,
                      size: tuple[int, int] = (640, 640), fov_deg: float = 30.0, head_yaw_deg: float = 20.0,
                      head_pitch_deg: float = 8.0, camera_pitch_deg: float = 12.0,
                      detail: float = 0.0) -> SyntheticCapture:
    """Render a seeded capture: a random identity (shape ~ N(0, 1)), expressions cycling through the
    presets, the head turning up to ``head_yaw_deg`` and nodding up to ``head_pitch_deg``, seen by
    :func:`camera_ring` (``camera_pitch_deg``); ``detail``: the skin's speckle
    (:func:`~flame_tracker.evaluation.scenes.vertex_albedo`; 0: smooth skin)."""
    from flame_tracker.camera.reference import euler_to_matrix
    from flame_tracker.evaluation.scenes import SceneTruth, draw_scene, sample_scenes

    rig = camera_ring(n_cams, arc_deg=arc_deg, size=size, fov_deg=fov_deg, pitch_deg=camera_pitch_deg, seed=seed)
    specs = sample_scenes(model, n_steps, seed, yaw_max=1.0, pitch_max=0.0, roll_max=0.0, sizes=(size[0], size[0]))
    base = specs[0]
    dt = model.dtype
    with torch.no_grad():
        s = torch.as_tensor(base.shape, dtype=dt)[None]
        neutral = model(shape=s).vertices[0].double().cpu().numpy()
        centre = model(shape=s).landmarks[0].double().cpu().numpy().mean(0)
    r = np.random.default_rng(seed + 7)
    images, exprs, rots, transls = [], [], [], []
    phase = np.linspace(0, 2 * np.pi, n_steps, endpoint=False)
    light_world = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])
    for t in range(n_steps):
        euler = np.array([head_yaw_deg * np.sin(phase[t]), head_pitch_deg * np.sin(2 * phase[t]), r.uniform(-5, 5)])
        R_h = euler_to_matrix(torch.as_tensor(np.radians(euler))[None])[0].numpy()
        u = -R_h @ centre + r.normal(0, 0.01, 3)
        expr = specs[t].expr  # the presets cycle over the timesteps
        with torch.no_grad():
            out = model(shape=s, expr=torch.as_tensor(expr, dtype=dt)[None])
        verts = out.vertices[0].double().cpu().numpy()
        lmk = out.landmarks[0].double().cpu().numpy()
        row = []
        for cam in rig.cameras:
            R, tc = cam.R @ R_h, cam.R @ u + cam.t
            cam_pts = lmk @ R.T + tc
            px = cam_pts[:, :2] / cam_pts[:, 2:] * cam.K[0, 0] + cam.K[:2, 2]
            light = np.diag([1.0, -1.0, -1.0]) @ cam.R @ light_world  # the world's light in the camera's GL frame
            spec = type(base)(**{**base.__dict__, "expr": expr, "width": cam.width, "height": cam.height,
                                 "light_dir": light, "light_strength": 0.35})
            truth = SceneTruth(spec, cam.K, R, tc, verts, neutral, px, lmk)
            row.append(draw_scene(model, spec, truth, detail=detail))
        images.append(row)
        exprs.append(expr)
        rots.append(R_h)
        transls.append(u)
    return SyntheticCapture(rig, images, base.shape.copy(), np.array(exprs), np.array(rots), np.array(transls), neutral)


__all__ = ["SyntheticCapture", "camera_ring", "look_at", "synthetic_capture"]
