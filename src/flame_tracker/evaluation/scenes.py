"""Synthetic photographs with known 3-D truth, for accuracy benchmarks and tests.

:func:`sample_scenes` draws seeded scene descriptions (identity, expression, head pose, camera FOV,
image size, framing, skin tone, lighting, background); :func:`render_scene` renders one with the
project's own rasteriser and SH shading: per-vertex albedo (skin tone with low-frequency variation,
lips, brows, hair, eyes with iris and pupil), harsh to soft light, a textured background, 2×
supersampled around the face. The picture then goes through the full pipeline (detection
included) and :mod:`flame_tracker.evaluation.metrics` compares the fit with :class:`SceneTruth`.

Camera convention of the truth: OpenCV (x right, y down, z forward), ``x_px ~ K (R X + t)`` for
model-space points ``X``, the same convention as ``Result.camera_matrices()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from flame_tracker.camera.reference import euler_to_matrix
from flame_tracker.evaluation.metrics import eyeball_mask
from flame_tracker.rendering.differentiable import render, vertex_normals

# Model axes (+y up, +z out of the face) -> OpenCV camera axes (y down, z forward, away from the face).
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])

# Skin albedo endpoints (linear-ish RGB in [0, 1]), light to dark; a subject's tone is a random mix.
_SKIN_TONES = np.array([
    [0.90, 0.72, 0.62], [0.80, 0.60, 0.48], [0.66, 0.47, 0.35], [0.50, 0.34, 0.24], [0.33, 0.22, 0.16],
])
_HAIR = np.array([[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.45, 0.32, 0.18], [0.12, 0.11, 0.10]])
_IRIS = np.array([[0.25, 0.15, 0.08], [0.18, 0.28, 0.40], [0.30, 0.33, 0.20], [0.12, 0.08, 0.05]])

# Expression presets for bounded (ICT/ARKit) models: name -> weight. Each scene mixes one preset
# (scaled) with a few random small channels, so the benchmark covers smiles, an open jaw, brows,
# blinks and asymmetric faces; "neutral" has no expression at all.
EXPRESSION_PRESETS: dict[str, dict[str, float]] = {
    "neutral": {},
    "smile": {"mouthSmile_L": 0.8, "mouthSmile_R": 0.8, "cheekSquint_L": 0.3, "cheekSquint_R": 0.3},
    "open_jaw": {"jawOpen": 0.7, "mouthLowerDown_L": 0.3, "mouthLowerDown_R": 0.3},
    "talk": {"jawOpen": 0.3, "mouthFunnel": 0.3, "mouthPucker": 0.2},
    "brows_up": {"browInnerUp_L": 0.8, "browInnerUp_R": 0.8, "browOuterUp_L": 0.6, "browOuterUp_R": 0.6,
                 "eyeWide_L": 0.4, "eyeWide_R": 0.4},
    "frown": {"browDown_L": 0.7, "browDown_R": 0.7, "mouthFrown_L": 0.5, "mouthFrown_R": 0.5},
    "blink": {"eyeBlink_L": 0.95, "eyeBlink_R": 0.95},
    "wink_smirk": {"eyeBlink_L": 0.9, "mouthSmile_L": 0.7, "mouthLeft": 0.3},
    "pucker": {"mouthPucker": 0.8, "mouthFunnel": 0.3},
    "surprise": {"jawOpen": 0.5, "browInnerUp_L": 0.7, "browInnerUp_R": 0.7, "eyeWide_L": 0.6, "eyeWide_R": 0.6},
}


@dataclass
class SceneSpec:
    """One synthetic photo (everything needed to render it again)."""

    index: int
    seed: int
    shape: np.ndarray  # [S]
    expr: np.ndarray  # [E]
    preset: str
    euler_deg: np.ndarray  # head (yaw, pitch, roll) relative to the camera, degrees
    fov_deg: float  # of the image's longer side
    width: int
    height: int
    face_frac: float  # height of the 68-landmark box / image height
    centre_frac: tuple[float, float]  # where the face centre sits (fraction of width, height)
    skin: np.ndarray  # [3]
    light_dir: np.ndarray  # [3] camera frame (GL axes)
    light_strength: float  # 0 = flat ambient, ~1 = harsh

    @property
    def yaw(self) -> float:
        return float(self.euler_deg[0])


@dataclass
class SceneTruth:
    """Ground truth of a rendered scene."""

    spec: SceneSpec
    K: np.ndarray  # [3, 3] original pixels
    R: np.ndarray  # [3, 3] model -> OpenCV camera rotation
    t: np.ndarray  # [3]
    vertices: np.ndarray  # [V, 3] posed mesh, model space
    neutral: np.ndarray  # [V, 3] shape only (no expression), model space
    lmks68_px: np.ndarray  # [68, 2] projected true landmarks
    lmks68_3d: np.ndarray  # [68, 3] model space

    @property
    def vertices_cam(self) -> np.ndarray:
        return self.vertices @ self.R.T + self.t


def _preset_expr(model, preset: str, rng: np.random.Generator) -> np.ndarray:
    e = np.zeros(model.n_expr)
    if model.expr_bounds is None or not model.expr_names:
        # Unbounded (FLAME) coefficients: a random N(0, 0.7²) expression unless neutral.
        return e if preset == "neutral" else rng.normal(0, 0.7, model.n_expr)
    if preset == "neutral":
        return e
    names = model.expr_names
    scale = rng.uniform(0.6, 1.15)
    for name, w in EXPRESSION_PRESETS[preset].items():
        if name in names:
            e[names.index(name)] = w * scale
    # a few small random channels on top (never the pupil/cheekRaiser shapes, which barely show)
    free = [i for i, n in enumerate(names) if not n.startswith(("Pupil", "cheekRaiser", "eyeLook"))]
    for i in rng.choice(free, size=3, replace=False):
        e[i] = max(e[i], rng.uniform(0.0, 0.25))
    lo, hi = model.expr_bounds
    return np.clip(e, lo, hi)


def sample_scenes(model, n: int, seed: int = 0, *, yaw_max: float = 75.0, pitch_max: float = 30.0,
                  roll_max: float = 20.0, fov_range: tuple[float, float] = (12.0, 50.0),
                  face_frac: tuple[float, float] = (0.10, 0.70), sizes: tuple[int, int] = (512, 1920),
                  shape_std: float = 1.0) -> list[SceneSpec]:
    """``n`` seeded scene descriptions (the same ``seed`` always gives the same scenes).

    Yaw is stratified over ``±yaw_max`` so every yaw bucket is represented; expression presets cycle.
    """
    rng = np.random.default_rng(seed)
    presets = list(EXPRESSION_PRESETS)
    out = []
    for i in range(n):
        s = int(rng.integers(1 << 31))
        r = np.random.default_rng(s)
        # stratified |yaw| (uniform within n equal slices of [0, yaw_max]), random sign
        yaw = (i + r.uniform()) / n * yaw_max * (1 if r.uniform() < 0.5 else -1)
        euler = np.array([yaw, r.uniform(-pitch_max, pitch_max), r.uniform(-roll_max, roll_max)])
        long_side = int(r.integers(sizes[0], sizes[1] + 1))
        aspect = [1.0, 4 / 3, 16 / 9][int(r.integers(3))]
        short_side = max(sizes[0], int(round(long_side / aspect)))
        landscape = r.uniform() < 0.7
        w, h = (long_side, short_side) if landscape else (short_side, long_side)
        w, h = w - w % 2, h - h % 2
        frac = float(np.exp(r.uniform(np.log(face_frac[0]), np.log(face_frac[1]))))
        margin = min(0.5, frac * 0.75 + 0.05)
        centre = (float(r.uniform(margin * h / w, 1 - margin * h / w)) if margin * h / w < 0.5 else 0.5,
                  float(r.uniform(margin, 1 - margin)) if margin < 0.5 else 0.5)
        mix = r.dirichlet(np.ones(len(_SKIN_TONES)) * 0.5)
        light_dir = r.normal(size=3)
        light_dir[2] = abs(light_dir[2]) + 0.3  # from the camera's side of the head
        out.append(SceneSpec(
            index=i, seed=s,
            shape=r.normal(0, shape_std, model.n_shape),
            expr=_preset_expr(model, presets[i % len(presets)], r),
            preset=presets[i % len(presets)],
            euler_deg=euler,
            fov_deg=float(r.uniform(*fov_range)),
            width=w, height=h, face_frac=frac, centre_frac=centre,
            skin=mix @ _SKIN_TONES,
            light_dir=light_dir / np.linalg.norm(light_dir),
            light_strength=float(r.uniform(0.0, 1.0)),
        ))
    return out


# -------------------------------------------------------------------------------------------------
# Appearance
# -------------------------------------------------------------------------------------------------


def _inside(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Point-in-polygon (even-odd rule), vectorised: ``points [P, 2]``, ``poly [K, 2]`` -> ``[P]`` bool."""
    x, y = points[:, 0:1], points[:, 1:2]
    a, b = poly, np.roll(poly, -1, axis=0)
    cond = (a[:, 1] > y) != (b[:, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return ((x < xc) & cond).sum(1) % 2 == 1


def vertex_albedo(model, neutral: np.ndarray, lmk3d: np.ndarray, spec: SceneSpec, detail: float = 0.0) -> np.ndarray:
    """Per-vertex albedo ``[V, 3]`` of a subject: skin with variation, lips, brows, hair, eyes;
    ``detail`` > 0 adds per-vertex speckle of that relative amplitude (pores, freckles: texture
    that optical flow can follow)."""
    r = np.random.default_rng(spec.seed + 1)
    v = neutral
    # low-frequency skin variation from random Fourier features of the position (blotches, redness)
    freq = r.normal(0, 40.0, (6, 3))
    phase = r.uniform(0, 2 * np.pi, 6)
    amp = r.uniform(0.01, 0.04, (6, 3))
    skin = spec.skin[None] * (1 + np.sin(v @ freq.T + phase) @ amp)
    alb = skin.copy()
    # redder cheeks/nose tip
    cheek = np.exp(-((np.abs(v[:, 0]) - 0.035) ** 2 + (v[:, 1] - lmk3d[30, 1]) ** 2) / (2 * 0.012**2))
    alb = alb * (1 - 0.12 * cheek[:, None]) + 0.12 * cheek[:, None] * spec.skin * np.array([1.1, 0.75, 0.75])
    front = v[:, 2] > lmk3d[[0, 16], 2].mean() - 0.005
    # lips: inside the outer lip contour seen from the front
    lips = _inside(v[:, :2], lmk3d[48:60, :2]) & front
    lip_col = spec.skin * np.array([0.95, 0.55, 0.55]) * r.uniform(0.75, 1.0)
    alb[lips] = 0.2 * alb[lips] + 0.8 * lip_col
    # brows: a band above each brow polyline
    hair_col = _HAIR[int(r.integers(len(_HAIR)))] * r.uniform(0.8, 1.2)
    for ids in (range(17, 22), range(22, 27)):
        p = lmk3d[list(ids)]
        band = np.concatenate([p[:, :2] + [0, 0.004], p[::-1, :2] - [0, 0.003]])
        brow = _inside(v[:, :2], band) & front
        alb[brow] = 0.3 * alb[brow] + 0.7 * hair_col
    # hair: scalp above a forehead line and the back of the head
    top = lmk3d[17:27, 1].max() + 0.045 + 0.25 * v[:, 0] ** 2
    back = v[:, 2] < lmk3d[[0, 16], 2].mean() - 0.03
    hair = (v[:, 1] > top) | (back & (v[:, 1] > lmk3d[2, 1]))
    alb[hair] = hair_col
    # eyes: sclera, iris, pupil by the angle from each eyeball's forward axis
    eye = eyeball_mask(model)
    if eye.any():
        iris_col = _IRIS[int(r.integers(len(_IRIS)))]
        for side in (v[:, 0] > 0, v[:, 0] <= 0):
            m = eye & side
            if not m.any():
                continue
            c = v[m].mean(0)
            c[2] = v[m, 2].min() + (v[m, 2].max() - v[m, 2].min()) * 0.45  # sphere centre, not the cornea bulge
            d = v[m] - c
            ang = np.arccos(np.clip(d[:, 2] / np.linalg.norm(d, axis=1).clip(1e-9), -1, 1))
            col = np.where(ang[:, None] < 0.22, 0.03, np.where(ang[:, None] < 0.52, iris_col, [0.88, 0.86, 0.82]))
            alb[m] = col
    if detail > 0:
        speckle = np.random.default_rng(spec.seed + 3).normal(0.0, detail, len(v))
        alb = alb * (1.0 + speckle)[:, None]
    return np.clip(alb, 0.0, 1.0)


def sh_light(spec: SceneSpec) -> np.ndarray:
    """``[9, 3]`` SH coefficients: ambient + one directional light of the scene's harshness."""
    light = np.zeros((9, 3))
    s = spec.light_strength
    ambient = 3.2 * (1.0 - 0.45 * s)
    light[0] = ambient
    light[1:4] = 1.6 * s * spec.light_dir[:, None]  # band 1 follows (x, y, z) of the SH basis
    tint = 1 + np.random.default_rng(spec.seed + 2).uniform(-0.08, 0.08, 3)
    return light * tint[None]


def background(width: int, height: int, seed: int) -> np.ndarray:
    """A textured background (smooth colour noise, blurred shapes and a gradient), RGB uint8."""
    r = np.random.default_rng(seed + 3)
    grey = r.uniform(40, 220, (6, 8, 1))
    small = (grey + r.normal(0, 30, (6, 8, 3))).astype(np.float32)  # muted colours, like rooms
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(r.integers(4, 10))):
        col = (r.uniform(30, 230) + r.normal(0, 35, 3)).clip(0, 255).tolist()
        c = (int(r.integers(width)), int(r.integers(height)))
        if r.uniform() < 0.5:
            ax = (int(r.integers(width // 20, width // 4)), int(r.integers(height // 20, height // 4)))
            cv2.ellipse(img, c, ax, float(r.uniform(0, 180)), 0, 360, col, -1)
        else:
            d = (int(r.integers(width // 10, width // 3)), int(r.integers(height // 10, height // 3)))
            cv2.rectangle(img, c, (c[0] + d[0], c[1] + d[1]), col, -1)
    img = cv2.GaussianBlur(img, (0, 0), max(1.0, min(width, height) / 200))
    grain = r.normal(0, 6, (height, width, 1)).astype(np.float32)
    return np.clip(img + grain, 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------------------
# Rendering
# -------------------------------------------------------------------------------------------------


def scene_truth(model, spec: SceneSpec) -> SceneTruth:
    """Camera, posed and neutral meshes and projected landmarks of ``spec`` (no rendering)."""
    dt = model.dtype
    with torch.no_grad():
        shape = torch.as_tensor(spec.shape, dtype=dt)[None]
        out = model(shape=shape, expr=torch.as_tensor(spec.expr, dtype=dt)[None])
        neutral = model(shape=shape).vertices[0].double().cpu().numpy()
    verts = out.vertices[0].double().cpu().numpy()
    lmk = out.landmarks[0].double().cpu().numpy()
    rot_head = euler_to_matrix(torch.as_tensor(np.deg2rad(spec.euler_deg))[None])[0].numpy()
    R = _GL_TO_CV @ rot_head
    f = 0.5 * max(spec.width, spec.height) / math.tan(math.radians(spec.fov_deg) / 2)
    K = np.array([[f, 0, spec.width / 2], [0, f, spec.height / 2], [0, 0, 1.0]])
    # depth so that the frontal-equivalent 68-point box height is face_frac of the image height
    box_h = np.ptp(lmk[:, 1])
    z = f * box_h / (spec.face_frac * spec.height)
    u, v = spec.centre_frac[0] * spec.width, spec.centre_frac[1] * spec.height
    centre = lmk.mean(0)
    t = np.array([(u - K[0, 2]) * z / f, (v - K[1, 2]) * z / f, z]) - R @ centre
    cam = lmk @ R.T + t
    px = cam[:, :2] / cam[:, 2:] * f + K[:2, 2]
    return SceneTruth(spec, K, R, t, verts, neutral, px, lmk)


def render_scene(model, spec: SceneSpec, *, supersample: int = 2, detail: float = 0.0
                 ) -> tuple[np.ndarray, SceneTruth]:
    """Render ``spec``: returns the RGB uint8 picture ``[H, W, 3]`` and its :class:`SceneTruth`
    (``detail``: per-vertex skin speckle, see :func:`vertex_albedo`)."""
    truth = scene_truth(model, spec)
    return draw_scene(model, spec, truth, supersample=supersample, detail=detail), truth


def draw_scene(model, spec: SceneSpec, truth: SceneTruth, *, supersample: int = 2, detail: float = 0.0
               ) -> np.ndarray:
    """The picture of ``spec``'s subject as ``truth``'s camera sees it (RGB uint8 ``[H, W, 3]``): its
    albedo, light and background from ``spec``, its pose, mesh and camera from ``truth`` (which may
    be any camera, e.g. one of a multi-view rig)."""
    cam = truth.vertices_cam
    f = truth.K[0, 0]
    px = cam[:, :2] / cam[:, 2:] * f + truth.K[:2, 2]
    img = background(spec.width, spec.height, spec.seed)
    # rasterise only a box around the head, at `supersample`x, then area-downsample into the picture
    x0, y0 = np.floor(px.min(0)).astype(int) - 2
    x1, y1 = np.ceil(px.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, spec.width), min(y1, spec.height)
    if x1 <= x0 or y1 <= y0:
        return img
    ss = supersample if max(x1 - x0, y1 - y0) * supersample <= 2400 else 1
    vpx = np.concatenate([(px - [x0, y0]) * ss, cam[:, 2:]], 1)
    faces = model.faces.cpu()
    # normals in a camera-aligned GL frame (+y up, +z towards the camera): the light's frame
    normals = vertex_normals(torch.as_tensor(cam * [1, -1, -1])[None], faces)[0]
    albedo = vertex_albedo(model, truth.neutral, truth.lmks68_3d, spec, detail)
    with torch.no_grad():
        out = render(torch.as_tensor(vpx)[None], faces, (y1 - y0) * ss, (x1 - x0) * ss,
                     normals=normals, light=torch.as_tensor(sh_light(spec)), albedo=torch.as_tensor(albedo))
    rgb = (out["image"][0].numpy() * 255.0).clip(0, 255).astype(np.float32)
    alpha = out["alpha"][0].numpy().astype(np.float32)[..., None]
    if ss > 1:
        size = (x1 - x0, y1 - y0)
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        alpha = cv2.resize(alpha, size, interpolation=cv2.INTER_AREA)[..., None]
    # the mouth is a hole in the mesh: behind it, a dark mouth interior instead of the background
    mouth = truth.lmks68_px[60:68].round().astype(np.int32)
    cv2.fillPoly(img, [mouth], (45, 18, 20), lineType=cv2.LINE_AA)
    patch = img[y0:y1, x0:x1].astype(np.float32)
    # rgb is premultiplied by coverage (black background in the render)
    img[y0:y1, x0:x1] = np.clip(rgb + patch * (1 - alpha), 0, 255).astype(np.uint8)
    return img


def turning_head(model, n_frames: int, *, seed: int = 11, yaw_peak: float = 90.0, size: tuple[int, int] = (640, 480),
                 face_frac: float = 0.45, fov_deg: float = 30.0, talk: float = 0.3) -> list[SceneSpec]:
    """A head turning from frontal to ``yaw_peak`` degrees and back over ``n_frames`` (a cosine
    ramp with a hold at the peak), talking (the jaw opens and closes, amplitude ``talk``), one
    identity, one light: the frames of a synthetic profile video."""
    base = sample_scenes(model, 1, seed, yaw_max=1.0, pitch_max=0.0, roll_max=0.0, sizes=(size[0], size[0]))[0]
    t = np.linspace(0.0, 1.0, n_frames)
    # 0 -> peak over the first 40 %, hold 20 %, back over the last 40 %
    ramp = np.clip(np.minimum(t / 0.4, (1.0 - t) / 0.4), 0.0, 1.0)
    yaw = yaw_peak * 0.5 * (1 - np.cos(np.pi * ramp))
    names = list(model.expr_names or [])
    out = []
    for i in range(n_frames):
        expr = np.zeros(model.n_expr)
        if "jawOpen" in names:
            expr[names.index("jawOpen")] = talk * 0.5 * (1 + np.sin(2 * np.pi * i / 9.0))
        out.append(SceneSpec(index=i, seed=base.seed, shape=base.shape, expr=expr, preset="talk",
                             euler_deg=np.array([yaw[i], 4.0, 0.0]), fov_deg=fov_deg, width=size[0], height=size[1],
                             face_frac=face_frac, centre_frac=(0.5, 0.5), skin=base.skin,
                             light_dir=np.array([0.3, 0.4, 0.87]), light_strength=0.4))
    return out


def write_scene_video(model, specs: list[SceneSpec], path, *, fps: float = 30.0, detail: float = 0.25) -> np.ndarray:
    """Render ``specs`` (e.g. :func:`turning_head`) as the frames of a video at ``path`` (speckled skin
    ``detail``, nearly lossless); returns the true model -> OpenCV camera rotations ``[T, 3, 3]``."""
    from flame_tracker.video.encode import VideoWriter

    rots = []
    with VideoWriter(path, fps=fps, crf=12) as out:
        for spec in specs:
            img, truth = render_scene(model, spec, detail=detail)
            out.write(img)
            rots.append(truth.R)
    return np.array(rots)


__all__ = ["SceneSpec", "SceneTruth", "EXPRESSION_PRESETS", "sample_scenes", "scene_truth", "render_scene",
           "draw_scene", "write_scene_video", "turning_head", "vertex_albedo", "sh_light", "background"]
