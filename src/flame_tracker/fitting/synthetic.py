"""Synthetic ground truth for fitting tests and benchmarks.

:func:`make_synthetic` samples cameras (the reference parameterisation: the camera orbits the face),
identity shapes, expressions and FOVs, evaluates a head model's landmarks (landmark fast path),
projects them with the reference camera and adds Gaussian pixel noise, optional ear points and
outliers. Deterministic for a given ``seed``. Everything is returned as ground truth plus targets in
the reference NDC and in pixels of the ``image_size``² fitting image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from flame_tracker.camera.convert import Crop
from flame_tracker.camera.reference import (
    REFERENCE_SIZE,
    default_distance,
    euler_to_matrix,
    matrix_to_rotvec,
    ndc_to_pixels,
    pose6_to_cam,
    project_ndc,
)
from flame_tracker.errors import InputError

Motion = Literal["random", "smooth", "static"]


class LandmarkModel(Protocol):
    """What the generator needs of a :class:`flame_tracker.model.HeadModel`."""

    n_shape: int
    n_expr: int
    expr_bounds: tuple[float, float] | None

    def landmarks(self, **params: Tensor) -> object: ...


@dataclass
class SyntheticBatch:
    """Ground truth and targets for ``N`` frames (NDC: the reference's, x right, y down)."""

    pose6: Tensor  # [N, 6] true camera (axis-angle, camera centre)
    fov: Tensor  # [N] true FOV (degrees)
    shape: Tensor  # [N, S] identity coefficients (identical rows when the identity is shared)
    expr: Tensor  # [N, E] expression coefficients
    points3d: Tensor  # [N, 68 (+40), 3] model landmarks (+ left/right ear points), model space
    clean_ndc: Tensor  # [N, 68, 2] exact projections
    targets_ndc: Tensor  # [N, 68, 2] noisy targets (with outliers)
    iris_ndc: Tensor | None  # [N, 10, 2] noisy iris targets
    ear_targets_ndc: Tensor | None  # [N, 20, 2] noisy targets of the visible ear
    ear_side: Tensor | None  # [N] +1 left ear visible (yaw > 0), -1 right
    outliers: Tensor  # [N, 68] bool: which targets were displaced
    image_size: int
    noise_px: float

    @property
    def n(self) -> int:
        return self.pose6.shape[0]

    @property
    def cam(self) -> Tensor:
        """True ``cam`` (yaw, pitch, roll, x, y, z) as the reference saves it."""
        return pose6_to_cam(self.pose6)

    @property
    def crop(self) -> Crop:
        """The fitting image as a crop of itself (``Crop(0, 0, image_size)``)."""
        return Crop(0.0, 0.0, float(self.image_size))

    @property
    def targets_px(self) -> Tensor:
        """Noisy targets in pixels of the ``image_size``² image."""
        return ndc_to_pixels(self.targets_ndc, self.image_size)

    @property
    def clean_px(self) -> Tensor:
        return ndc_to_pixels(self.clean_ndc, self.image_size)

    @property
    def ear_targets_px(self) -> Tensor | None:
        return None if self.ear_targets_ndc is None else ndc_to_pixels(self.ear_targets_ndc, self.image_size)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float, dtype: torch.dtype) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=dtype)


def sample_euler(n: int, g: torch.Generator, *, yaw_deg: float | tuple[float, float] = 60.0,
                 pitch_deg: float | tuple[float, float] = 30.0, roll_deg: float | tuple[float, float] = 10.0,
                 motion: Motion = "random", dtype: torch.dtype = torch.float64) -> Tensor:
    """Camera (yaw, pitch, roll) in radians ``[N, 3]``.

    A scalar ``X_deg`` samples uniformly in ``±X``; a pair ``(lo, hi)`` in ``[lo, hi]`` (``(30, 30)``
    fixes it). ``motion="smooth"`` gives a smooth head-turn trajectory spanning the same ranges,
    ``"static"`` one pose repeated.
    """
    ranges = [(-r, r) if not isinstance(r, tuple) else r for r in (yaw_deg, pitch_deg, roll_deg)]
    if motion == "random":
        cols = [_uniform(g, n, lo, hi, dtype) for lo, hi in ranges]
    elif motion == "static":
        cols = [_uniform(g, 1, lo, hi, dtype).expand(n) for lo, hi in ranges]
    elif motion == "smooth":
        t = torch.linspace(0.0, 1.0, n, dtype=dtype)
        cols = []
        for k, (lo, hi) in enumerate(ranges):
            phase = float(torch.rand(1, generator=g, dtype=dtype)) * 2 * math.pi
            cycles = 1.0 + k * 0.37  # incommensurate frequencies per angle
            cols.append(lo + (hi - lo) * 0.5 * (1 + torch.sin(2 * math.pi * cycles * t + phase)))
    else:
        raise InputError(f"motion must be 'random', 'smooth' or 'static', got {motion!r}")
    return torch.deg2rad(torch.stack(cols, dim=1))


def make_synthetic(model: LandmarkModel, n_frames: int, *, seed: int = 0,
                   yaw_deg: float | tuple[float, float] = 60.0, pitch_deg: float | tuple[float, float] = 30.0,
                   roll_deg: float | tuple[float, float] = 10.0, motion: Motion = "random",
                   fov: float | tuple[float, float] = 20.0, distance_jitter: float = 0.1,
                   offset_m: float = 0.02, shape_std: float = 1.0, expr_scale: float = 0.5,
                   shared_shape: bool = True, noise_px: float = 0.5, image_size: int = REFERENCE_SIZE,
                   ears: bool = False, outlier_frac: float = 0.0, outlier_px: tuple[float, float] = (10.0, 30.0),
                   dtype: torch.dtype = torch.float64) -> SyntheticBatch:
    """Sample ``n_frames`` synthetic frames of ``model`` (see :class:`SyntheticBatch`).

    Cameras orbit the landmark centroid (reference convention: yaw > 0 sees the subject's left),
    at the reference's dolly-zoom distance ``f(fov)/f(20°)`` × ``1 ± distance_jitter``, with the
    aim point shifted by up to ``offset_m`` so faces are not always centred. ``fov``: degrees, or a
    ``(lo, hi)`` range sampled per frame. Shapes ~ N(0, shape_std²) (one identity for all frames
    when ``shared_shape``); expressions: bounded models (ICT blendshapes in [0, 1]) get sparse
    U(0, expr_scale) weights, others N(0, expr_scale²). ``noise_px`` is the Gaussian noise std in
    pixels of the ``image_size``² image; ``outlier_frac`` of the 68 targets per frame are moved by
    ``outlier_px`` pixels in a random direction. ``ears=True`` needs a model with ear points.
    """
    if n_frames < 1:
        raise InputError(f"n_frames must be >= 1, got {n_frames}")
    g = torch.Generator().manual_seed(seed)
    n = n_frames
    shape = torch.randn(1 if shared_shape else n, model.n_shape, generator=g, dtype=dtype) * shape_std
    shape = shape.expand(n, -1).clone()
    if model.expr_bounds is not None:
        lo, hi = model.expr_bounds
        raw = torch.rand(n, model.n_expr, generator=g, dtype=dtype) * expr_scale
        keep = torch.rand(n, model.n_expr, generator=g, dtype=dtype) < 0.3
        expr = torch.clamp(raw * keep, lo, hi)
    else:
        expr = torch.randn(n, model.n_expr, generator=g, dtype=dtype) * expr_scale
    mdtype = getattr(model, "dtype", dtype)
    with torch.no_grad():
        out = model.landmarks(shape=shape.to(mdtype), expr=expr.to(mdtype))
    lmk = out.landmarks.to(dtype)
    iris = None if getattr(out, "iris", None) is None else out.iris.to(dtype)
    ear_pts = None if getattr(out, "ears", None) is None else out.ears.to(dtype)
    if ears and ear_pts is None:
        raise InputError(f"make_synthetic(ears=True): model {getattr(model, 'name', model)!r} has no ear points")

    fovs = (torch.full((n,), float(fov), dtype=dtype) if not isinstance(fov, tuple)
            else _uniform(g, n, fov[0], fov[1], dtype))
    euler = sample_euler(n, g, yaw_deg=yaw_deg, pitch_deg=pitch_deg, roll_deg=roll_deg, motion=motion, dtype=dtype)
    rot = euler_to_matrix(euler)
    dist = default_distance(fovs) * _uniform(g, n, 1 - distance_jitter, 1 + distance_jitter, dtype)
    aim = lmk.mean(dim=1) + (torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1) * offset_m
    if motion == "static":
        dist, aim = dist[:1].expand(n), aim[:1].expand(n, -1)
    centre = aim + rot[:, :, 2] * dist[:, None]  # the OpenGL camera looks down its -Z at the aim point
    pose6 = torch.cat([matrix_to_rotvec(rot), centre], dim=1)

    sigma = noise_px * 2.0 / image_size  # pixels -> NDC

    def noisy(x: Tensor) -> Tensor:
        return x + torch.randn(x.shape, generator=g, dtype=dtype) * sigma

    points = lmk if not ears else torch.cat([lmk, ear_pts], dim=1)
    clean = project_ndc(points, pose6, fovs)
    targets = noisy(clean[:, :68])
    outliers = torch.rand(n, 68, generator=g, dtype=dtype) < outlier_frac
    if outlier_frac > 0:
        angle = torch.rand(n, 68, generator=g, dtype=dtype) * 2 * math.pi
        mag = _uniform(g, n * 68, *outlier_px, dtype).reshape(n, 68) * 2.0 / image_size
        shift = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1) * mag[..., None]
        targets = targets + shift * outliers[..., None]
    iris_ndc = None if iris is None else noisy(project_ndc(iris, pose6, fovs))
    ear_targets = ear_side = None
    if ears:
        ear_side = torch.where(euler[:, 0] > 0, 1.0, -1.0).to(dtype)
        visible = torch.where((ear_side > 0)[:, None, None], clean[:, 68:88], clean[:, 88:108])
        ear_targets = noisy(visible)
    return SyntheticBatch(pose6, fovs, shape, expr, points, clean[:, :68], targets, iris_ndc, ear_targets,
                          ear_side, outliers, image_size, noise_px)


__all__ = ["SyntheticBatch", "make_synthetic", "sample_euler", "LandmarkModel"]
