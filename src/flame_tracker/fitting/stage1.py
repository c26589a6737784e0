"""Stage 1: rigid camera fit against 2-D landmarks (docs/reference.md §8.2, ``stage1-seed.txt``).

The objective is the reference's, exactly, written once (:class:`Stage1Problem`) and used by both
solvers:

* face landmarks 17..67: mean Euclidean NDC distance × 300, jawline 0..16: × 200, summed over frames;
* ears (optional): the 20 ear targets are compared with the model's left and right ear; the side is
  chosen by the sign of the camera yaw, ``|yaw| < 0.1`` and ``|pitch| < 0.15`` are zeroed, the weight
  is ``150·(|yaw| + |pitch|)`` and a side is gated off when its mean distance is ≥ 0.25 (all of this
  evaluated at the current pose, without gradient, as the reference);
* temporal: ``150·Σ‖Δr‖² + 150·Σ‖Δt‖²`` between consecutive (neighbouring) frames;
* FOV clamped to [10°, 50°]; the total passes through ``nan_to_num(nan=0, posinf=1e5)``.

Missing targets (NaN/inf) are masked: means run over the valid points. A frame with fewer than 6
valid landmarks cannot be posed and raises a clear error.

Solvers:

* ``"adam"``: the reference loop, exactly (1500 iterations, lr 0.05 → 0.005 at 1000, temporal term
  only after iteration 600, weight decay 1e-5, offsets from zero around the base pose
  ``(0,0,0,0,0, f(fov)/f(20°))``).
* ``"lm"`` (default): closed-form weak-perspective initialisation, then batched Levenberg–Marquardt on
  the same objective. The objective is a weighted sum of Euclidean norms, so each iteration solves
  the IRLS-reweighted Gauss–Newton system (a majoriser of the objective); analytic Jacobians in the
  reference ``pose6`` parameterisation; frames are independent unless the temporal term (block
  tridiagonal, banded Cholesky) or a shared FOV (bordered system, Schur complement) couples them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from flame_tracker.camera.reference import (
    DEFAULT_FOV,
    FOV_MAX,
    FOV_MIN,
    REFERENCE_SIZE,
    default_distance,
    eye3,
    matrix_to_euler,
    matrix_to_rotvec,
    ndc_scale,
    outer_minus_dot,
    pose6_to_cam,
    rotvec_to_matrix,
    skew,
    small_matmul,
)
from flame_tracker.errors import InputError
from flame_tracker.threads import cpu_threads

N_FACE = 68
N_EAR = 20
MIN_VALID_POINTS = 6
# Reference Adam schedule (seed): iterations, lr before/after the drop, temporal term from iteration.
ADAM_ITERATIONS = 1500
ADAM_LR = 0.05
ADAM_LR_LATE = 0.005
ADAM_LR_DROP_AT = 1000
ADAM_TEMPORAL_AFTER = 600
ADAM_WEIGHT_DECAY = 1e-5
# LM: share of the radial curvature removed once near the optimum (1 = exact Gauss-Newton on the norms;
# slightly below keeps the system well conditioned), and the relative decrease that counts as "near".
NEWTON_ALPHA = 0.99
NEWTON_SWITCH = 0.2
SMOOTH_NDC = 1e-4  # 0.0128 px at 256²
FIXED_FOV_LIMITS = (0.05, 170.0)  # numerical safety only, for a FOV that is given, not fitted

FovMode = Literal["fixed", "per_frame", "shared"]
_FLIP = (1.0, -1.0, -1.0)


@dataclass(frozen=True)
class Stage1Options:
    """Weights, ear gating and solver of the stage-1 camera fit. The defaults are the reference's
    (docs/reference.md §8.2); the names match :class:`~flame_tracker.fitting.stage2.Stage2Options`."""

    w_lmk: float = 300.0  # face landmarks 17..67 (mean Euclidean NDC distance)
    w_contour: float = 200.0  # jawline 0..16
    w_ear: float = 150.0  # ear weight per radian of |yaw| + |pitch| beyond the dead zones
    w_temporal: float = 150.0  # squared pose change between neighbouring frames
    ear_gate: float = 0.25  # an ear side is off while its mean NDC distance is at least this
    yaw_deadzone: float = 0.1  # radians of |yaw| (and |pitch| below) that count as frontal for the ears
    pitch_deadzone: float = 0.15
    solver: Literal["lm", "adam"] = "lm"  # "adam": the reference loop, exactly
    max_iter: int | None = None  # None: 100 (lm) or the reference's 1500 (adam)
    tol: float = 1e-7  # relative objective decrease below which "lm" stops


class Stage1Forward(NamedTuple):
    """Intermediate quantities of one objective evaluation (shared by the solvers)."""

    rot: Tensor  # [N, 3, 3] camera-to-world rotation R(r)
    local: Tensor  # [N, P, 3] R^T (X - t)
    view: Tensor  # [N, P, 3] OpenCV view coordinates D R^T (X - t)
    proj: Tensor  # [N, P, 2] NDC
    err: Tensor  # [N, P, 2] proj - target (0 where masked)
    dist: Tensor  # [N, P] Euclidean NDC distance
    weights: Tensor  # [N, P] per-point weights (means, 300/200, ear gating), no gradient
    per_frame: Tensor  # [N] landmark + ear objective per frame
    fov: Tensor  # [N] clamped FOV


@dataclass
class Stage1Loss:
    """Value of the stage-1 objective."""

    total: Tensor  # scalar, after nan_to_num
    per_frame: Tensor  # [N] landmark + ear terms
    temporal: Tensor  # scalar


def _cpu(x: Tensor | np.ndarray | float, dtype: torch.dtype) -> Tensor:
    """Detached CPU copy: stage 1 is ~100 points per frame, so it runs on the CPU whatever the device."""
    return torch.as_tensor(x).detach().to(device="cpu", dtype=dtype)


class Stage1Problem:
    """Fixed 3-D points and 2-D targets of a stage-1 fit, validated once.

    ``points3d``: ``[N, P, 3]`` or ``[P, 3]`` model-space points, P = 68 (landmarks) or 108 (68 + 20
    left-ear + 20 right-ear vertices). ``targets_ndc``: ``[N, 68, 2]`` in the reference NDC (x right,
    y down). ``ear_targets``: ``[N, 20, 2]`` (needs P = 108) or None. NaN targets are masked.
    """

    def __init__(self, points3d: Tensor | np.ndarray, targets_ndc: Tensor | np.ndarray,
                 ear_targets: Tensor | np.ndarray | None = None, *, dtype: torch.dtype = torch.float64,
                 options: Stage1Options | None = None) -> None:
        self.options = options or Stage1Options()
        targets = _cpu(targets_ndc, dtype)
        if targets.ndim == 2:
            targets = targets[None]
        if targets.ndim != 3 or targets.shape[1:] != (N_FACE, 2):
            raise InputError(f"stage 1: targets_ndc must be [N, 68, 2] NDC landmarks, got {tuple(targets.shape)}")
        n = targets.shape[0]
        points = _cpu(points3d, dtype)
        if points.ndim == 2:
            points = points[None]
        if points.ndim != 3 or points.shape[-1] != 3 or points.shape[1] not in (N_FACE, N_FACE + 2 * N_EAR):
            raise InputError(f"stage 1: points3d must be [N, 68|108, 3] model points, got {tuple(points.shape)}")
        if points.shape[0] not in (1, n):
            raise InputError(f"stage 1: {points.shape[0]} point sets for {n} frames of targets")
        if not bool(torch.isfinite(points).all()):
            raise InputError("stage 1: points3d contains NaN/inf; the head model output is invalid")
        self.has_ears = ear_targets is not None
        self.fov_limits = (FOV_MIN, FOV_MAX)  # the reference's clamp; fit_camera widens it for a fixed FOV
        if ear_targets is not None:
            if points.shape[1] != N_FACE + 2 * N_EAR:
                raise InputError("stage 1: ear targets need 108 model points (68 landmarks + 20 left + 20 right ear)")
            ears = _cpu(ear_targets, dtype)
            if ears.ndim == 2:
                ears = ears[None]
            if ears.shape != (n, N_EAR, 2):
                raise InputError(f"stage 1: ear_targets must be [N, 20, 2], got {tuple(ears.shape)} for N={n}")
            targets = torch.cat([targets, ears, ears], dim=1)  # one target set for both model ears
        else:
            points = points[:, :N_FACE]
        self.points = points.expand(n, -1, -1)
        valid = torch.isfinite(targets).all(dim=-1)  # [N, P]
        n_valid = valid[:, :N_FACE].sum(dim=1)
        bad = torch.nonzero(n_valid < MIN_VALID_POINTS).flatten().tolist()
        if bad:
            raise InputError(
                f"stage 1: frame(s) {bad[:10]} have fewer than {MIN_VALID_POINTS} finite landmark targets; "
                "drop those frames (no face detected) or fill their landmarks before fitting")
        self.targets = torch.where(valid[..., None], targets, torch.zeros((), dtype=dtype))
        self.valid = valid
        # Constant part of the per-point weights: each region's mean over its valid points.
        v = valid.to(dtype)
        base = torch.zeros_like(v)
        o = self.options
        for sl, w in ((slice(17, N_FACE), o.w_lmk), (slice(0, 17), o.w_contour),
                      (slice(N_FACE, N_FACE + N_EAR), 1.0), (slice(N_FACE + N_EAR, None), 1.0)):
            part = v[:, sl]
            base[:, sl] = w * part / part.sum(dim=1, keepdim=True).clamp_min(1.0)
        self.base_weights = base
        self.n = n
        self.dtype = dtype

    @property
    def n_points(self) -> int:
        return self.points.shape[1]

    def subset(self, idx: Tensor) -> Stage1Problem:
        """The same problem restricted to frames ``idx`` (for solvers that drop converged frames)."""
        sub = copy.copy(self)
        sub.points, sub.targets = self.points[idx], self.targets[idx]
        sub.valid, sub.base_weights = self.valid[idx], self.base_weights[idx]
        sub.n = int(idx.numel())
        return sub

    def forward(self, pose6: Tensor, fov: Tensor) -> Stage1Forward:
        """Project with ``pose6 [N, 6]`` and ``fov [N]`` and evaluate the landmark + ear terms."""
        fov = torch.clamp(fov, *self.fov_limits)
        rot = rotvec_to_matrix(pose6[:, :3])
        local = small_matmul(self.points - pose6[:, None, 3:], rot)  # R^T (X - t)
        view = local * local.new_tensor(_FLIP)
        scale = ndc_scale(fov)[:, None, None]
        proj = scale * view[..., :2] / (view[..., 2:] + 1e-8)
        err = proj - self.targets
        dist = torch.linalg.vector_norm(err, dim=-1)
        with torch.no_grad():
            weights = self._weights(rot, dist)
        per_frame = (weights * dist).sum(dim=1)
        return Stage1Forward(rot, local, view, proj, err, dist, weights, per_frame, fov)

    def _weights(self, rot: Tensor, dist: Tensor) -> Tensor:
        if not self.has_ears:
            return self.base_weights
        o = self.options
        euler = matrix_to_euler(rot)
        yaw, pitch = euler[:, 0], euler[:, 1]
        ayaw = torch.where(yaw.abs() < o.yaw_deadzone, torch.zeros_like(yaw), yaw.abs())
        apitch = torch.where(pitch.abs() < o.pitch_deadzone, torch.zeros_like(pitch), pitch.abs())
        angle_w = o.w_ear * (ayaw + apitch)
        base = self.base_weights
        left, right = slice(N_FACE, N_FACE + N_EAR), slice(N_FACE + N_EAR, None)
        mean_l = (base[:, left] * dist[:, left]).sum(dim=1)  # base = 1/n_valid on ear points
        mean_r = (base[:, right] * dist[:, right]).sum(dim=1)
        gate_l = angle_w * ((yaw > 0) & (mean_l < o.ear_gate))
        gate_r = angle_w * ((yaw < 0) & (mean_r < o.ear_gate))
        gates = torch.cat([torch.ones_like(base[:, :N_FACE]), gate_l[:, None].expand(-1, N_EAR),
                           gate_r[:, None].expand(-1, N_EAR)], dim=1)
        return base * gates

    def objective(self, pose6: Tensor, fov: Tensor, temporal: Tensor | bool = False) -> Stage1Loss:
        """The stage-1 objective (differentiable in ``pose6`` and ``fov``)."""
        fw = self.forward(pose6, fov)
        temp = temporal_term(pose6, _pair_weights(temporal, self.n, pose6), self.options.w_temporal)
        total = torch.nan_to_num(fw.per_frame.sum() + temp, nan=0.0, posinf=1e5)
        return Stage1Loss(total, fw.per_frame, temp)


def _pair_weights(temporal: Tensor | bool, n: int, like: Tensor) -> Tensor | None:
    """``temporal`` as ``[N-1]`` neighbour weights (None when off). A tensor marks which consecutive
    frames are neighbours (0 between frames that are not adjacent in time)."""
    if isinstance(temporal, bool) or temporal is None:
        return like.new_ones(n - 1) if (temporal and n >= 2) else None
    w = torch.as_tensor(temporal, dtype=like.dtype, device=like.device)
    if w.shape != (n - 1,):
        raise InputError(f"stage 1: temporal neighbour weights must have shape [{n - 1}], got {tuple(w.shape)}")
    return w if n >= 2 else None


def temporal_term(pose6: Tensor, pair_w: Tensor | None, weight: float = Stage1Options.w_temporal) -> Tensor:
    """``weight·Σ_k w_k (‖r_{k+1}-r_k‖² + ‖t_{k+1}-t_k‖²)`` (zero when ``pair_w`` is None; the
    reference's weight is 150)."""
    if pair_w is None:
        return pose6.new_zeros(())
    diff = pose6[1:] - pose6[:-1]
    return weight * (pair_w * (diff * diff).sum(dim=1)).sum()


def stage1_objective(points3d: Tensor, targets_ndc: Tensor, pose6: Tensor, fov: Tensor | float, *,
                     ear_targets: Tensor | None = None, temporal: Tensor | bool = False,
                     options: Stage1Options | None = None) -> Stage1Loss:
    """Evaluate the stage-1 objective (the reference's with default ``options``) for given cameras."""
    pose6 = torch.as_tensor(pose6)
    prob = Stage1Problem(points3d, targets_ndc, ear_targets,
                         dtype=pose6.dtype if pose6.is_floating_point() else torch.float64, options=options)
    pose6 = pose6.to(prob.dtype).reshape(prob.n, 6)
    fov_t = torch.as_tensor(fov, dtype=prob.dtype).expand(prob.n)
    return prob.objective(pose6, fov_t, temporal)


@dataclass
class CameraFit:
    """Result of :func:`fit_camera` (reference camera parameterisation, NDC units)."""

    pose6: Tensor  # [N, 6] axis-angle + camera centre (model space, metres)
    fov: Tensor  # [N] degrees
    objective: float  # total objective (landmarks + ears + temporal)
    per_frame: Tensor  # [N] landmark + ear objective per frame
    residuals: Tensor  # [N, P] per-point NDC distance (NaN where the target was missing)
    iterations: int
    solver: str
    converged: bool = True
    history: list[float] = field(default_factory=list)

    @property
    def cam(self) -> Tensor:
        """The reference's saved ``cam``: (yaw, pitch, roll, x, y, z)."""
        return pose6_to_cam(self.pose6)

    def residuals_px(self, size: float = REFERENCE_SIZE) -> Tensor:
        """Per-point residuals in pixels of a ``size``² fitting image (NDC × size/2)."""
        return self.residuals * (size / 2.0)


def fit_camera(points3d: Tensor | np.ndarray, targets_ndc: Tensor | np.ndarray, *,
               ear_targets: Tensor | np.ndarray | None = None, fov: float | Tensor = DEFAULT_FOV,
               fov_mode: FovMode = "fixed", temporal: bool | Tensor = False,
               init: Tensor | None = None, options: Stage1Options | None = None,
               solver: Literal["lm", "adam"] | None = None, max_iter: int | None = None,
               tol: float | None = None) -> CameraFit:
    """Fit the reference camera (pose6 + FOV) of N frames to 2-D landmarks.

    Args:
        points3d: ``[N, P, 3]`` or ``[P, 3]`` fixed model points (68, or 108 with both ears).
        targets_ndc: ``[N, 68, 2]`` landmark targets in the reference NDC (NaN = missing).
        ear_targets: optional ``[N, 20, 2]`` ear targets (NDC).
        fov: initial (or fixed) FOV in degrees, scalar or ``[N]``.
        fov_mode: ``"fixed"`` (default), ``"per_frame"`` (the reference's ``optimize_fov``) or
            ``"shared"`` (one FOV for all frames, e.g. a video).
        temporal: smooth consecutive frames (reference temporal term); a ``[N-1]`` tensor of
            neighbour weights marks which consecutive frames are adjacent.
        init: optional ``[N, 6]`` warm-start poses (e.g. the previous frame's); ``None`` uses the
            closed-form initialisation (``lm``) or the reference base pose (``adam``).
        options: :class:`Stage1Options` (weights, gating, solver; the reference's by default).
        solver, max_iter, tol: override the fields of ``options`` of the same names.
    """
    opts = options or Stage1Options()
    if solver is not None:
        opts = replace(opts, solver=solver)
    if max_iter is not None:
        opts = replace(opts, max_iter=max_iter)
    if tol is not None:
        opts = replace(opts, tol=tol)
    if fov_mode not in ("fixed", "per_frame", "shared"):
        raise InputError(f"fov_mode must be 'fixed', 'per_frame' or 'shared', got {fov_mode!r}")
    if opts.solver == "adam":
        dtype = torch.as_tensor(targets_ndc).dtype
        dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        prob = Stage1Problem(points3d, targets_ndc, ear_targets, dtype=dtype, options=opts)
        if fov_mode == "fixed":
            prob.fov_limits = FIXED_FOV_LIMITS
        return _fit_adam(prob, _fov_vector(fov, prob), fov_mode, temporal, init, opts.max_iter or ADAM_ITERATIONS)
    if opts.solver != "lm":
        raise InputError(f"unknown stage-1 solver {opts.solver!r}; use 'lm' or 'adam'")
    prob = Stage1Problem(points3d, targets_ndc, ear_targets, dtype=torch.float64, options=opts)
    if fov_mode == "fixed":
        # A given FOV is used as it is: the reference's [10, 50] clamp bounds a *fitted* FOV, and a
        # small face in a wide picture has a crop FOV of a few degrees (see Tracker's image_fov).
        prob.fov_limits = FIXED_FOV_LIMITS
    fov0 = _fov_vector(fov, prob)
    if fov_mode == "shared":
        fov0 = fov0.mean().expand(prob.n).clone()
    # Tiny tensors (~100 points x 6 parameters per frame): threads only add fork/join latency.
    with cpu_threads(1):
        pose0 = closed_form_init(prob, fov0) if init is None else _cpu(init, prob.dtype).reshape(prob.n, 6)
        return _fit_lm(prob, pose0, fov0, fov_mode, temporal, opts.max_iter or 100, opts.tol)


def _fov_vector(fov: float | Tensor, prob: Stage1Problem) -> Tensor:
    fov_t = _cpu(fov, prob.dtype).flatten()
    if fov_t.numel() not in (1, prob.n) or not bool(torch.isfinite(fov_t).all()):
        raise InputError(f"stage 1: fov must be a finite scalar or [N={prob.n}] degrees, got {fov}")
    return fov_t.expand(prob.n).clone()


def _result(prob: Stage1Problem, pose6: Tensor, fov: Tensor, temporal: Tensor | bool, iterations: int,
            solver: str, converged: bool, history: list[float]) -> CameraFit:
    with torch.no_grad():
        fw = prob.forward(pose6, fov)
        temp = temporal_term(pose6, _pair_weights(temporal, prob.n, pose6), prob.options.w_temporal)
        total = float(torch.nan_to_num(fw.per_frame.sum() + temp, nan=0.0, posinf=1e5))
        residuals = torch.where(prob.valid, fw.dist, torch.full_like(fw.dist, float("nan")))
    return CameraFit(pose6.detach(), fw.fov.detach(), total, fw.per_frame.detach(), residuals, iterations, solver,
                     converged, history)


# ----------------------------------------------------------------------------------------------
# Reference solver
# ----------------------------------------------------------------------------------------------

def _fit_adam(prob: Stage1Problem, fov0: Tensor, fov_mode: FovMode, temporal: Tensor | bool,
              init: Tensor | None, iterations: int) -> CameraFit:
    """The seed's loop, exactly: Adam on offsets from a base pose, 1500 it, lr drop at 1000."""
    n, dtype = prob.n, prob.dtype
    if init is None:
        base = torch.zeros(n, 6, dtype=dtype)
        base[:, 5] = default_distance(fov0).to(dtype)
    else:
        base = _cpu(init, dtype).reshape(n, 6).clone()
    d_rot = torch.nn.Parameter(torch.zeros(n, 3, dtype=dtype))
    d_trans = torch.nn.Parameter(torch.zeros(n, 3, dtype=dtype))
    d_fov = torch.nn.Parameter(torch.zeros(1 if fov_mode == "shared" else n, dtype=dtype))
    groups = [{"params": [d_trans], "lr": ADAM_LR}, {"params": [d_rot], "lr": ADAM_LR}]
    if fov_mode != "fixed":
        groups.append({"params": [d_fov], "lr": ADAM_LR})
    opt = torch.optim.Adam(groups, weight_decay=ADAM_WEIGHT_DECAY)
    history: list[float] = []
    for it in range(iterations):
        if it == ADAM_LR_DROP_AT:
            for g in opt.param_groups:
                g["lr"] = ADAM_LR_LATE
        fov = fov0 + d_fov
        pose = base + torch.cat([d_rot, d_trans], dim=-1)
        loss = prob.objective(pose, fov, temporal if it > ADAM_TEMPORAL_AFTER else False).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 100 == 0:
            history.append(float(loss.detach()))
    with torch.no_grad():
        pose = base + torch.cat([d_rot, d_trans], dim=-1)
        fov = fov0 + d_fov
    return _result(prob, pose, fov, temporal, iterations, "adam", True, history)


# ----------------------------------------------------------------------------------------------
# Fast solver
# ----------------------------------------------------------------------------------------------

def closed_form_init(prob: Stage1Problem, fov: Tensor) -> Tensor:
    """Batched weak-perspective (scaled orthographic) pose from the face landmarks -> ``pose6 [N, 6]``.

    Fits ``ndc ≈ s·Q[:2] X + c`` by linear least squares, projects the 2×3 block onto the nearest
    scaled rotation (SVD) and places the centroid at depth ``a/s`` (``a = 1/tan(FOV/2)``).
    """
    x = prob.points[:, :N_FACE]
    u = prob.targets[:, :N_FACE]
    w = prob.valid[:, :N_FACE].to(prob.dtype)[..., None]
    wsum = w.sum(dim=1, keepdim=True)
    xc = (w * x).sum(dim=1, keepdim=True) / wsum
    uc = (w * u).sum(dim=1, keepdim=True) / wsum
    x0, u0 = (x - xc) * w, (u - uc) * w
    m = torch.linalg.solve(_gram(x0, x0), _gram(x0, u0)).transpose(1, 2)  # [N, 2, 3]
    us, sv, vh = torch.linalg.svd(m, full_matrices=False)
    rows = small_matmul(us, vh)
    q = torch.cat([rows, torch.linalg.cross(rows[:, 0], rows[:, 1])[:, None]], dim=1)  # model -> OpenCV view
    a = ndc_scale(torch.clamp(fov, *prob.fov_limits))
    depth = a / sv.mean(dim=1)
    centre_view = torch.cat([uc[:, 0] * (depth / a)[:, None], depth[:, None]], dim=1)  # [N, 3]
    s = centre_view - small_matmul(xc, q.transpose(1, 2))[:, 0]
    rot = q.transpose(1, 2) * q.new_tensor(_FLIP)  # camera-to-world R = Q^T D
    centre = -small_matmul(s[:, None], q)[:, 0]
    return torch.cat([matrix_to_rotvec(rot), centre], dim=1)


def _right_jacobian(r: Tensor) -> Tensor:
    """SO(3) right Jacobian: ``R(r + δ) ≈ R(r) exp([J_r(r) δ]x)``."""
    theta2 = (r * r).sum(dim=-1)[:, None, None]
    theta = torch.sqrt(theta2)
    small = theta2 < 1e-8
    safe = torch.where(small, torch.ones_like(theta), theta)
    c1 = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(safe)) / safe**2)
    c2 = torch.where(small, 1.0 / 6.0 - theta2 / 120.0, (safe - torch.sin(safe)) / safe**3)
    return eye3(r) - c1 * skew(r) + c2 * outer_minus_dot(r)


def _jacobian(fw: Stage1Forward, pose6: Tensor, with_fov: bool) -> tuple[Tensor, Tensor]:
    """Analytic Jacobian of the NDC projections w.r.t. ``(r, t[, fov])``, factored as ``J = J0 T``.

    Returns ``[J0 | err]`` (the residuals as a last column, so the normal equations are one product)
    and ``T``. ``J0 [N, P*2, 6|7]`` is the Jacobian w.r.t. a local rotation / translation (per point) and
    ``T [N, 6|7, 6|7]`` the per-frame block diagonal ``(J_r(r), R^T[, 1])``: the caller forms the
    normal equations in ``J0`` coordinates and maps the small ``k×k`` system with ``T``, instead of
    multiplying every point's rows by ``T``.
    """
    view, local, proj = fw.view, fw.local, fw.proj
    inv_z = 1.0 / (view[..., 2] + 1e-8)  # [N, P]
    n, p = proj.shape[:2]
    a = ndc_scale(fw.fov)[:, None]
    # d proj / d local = d proj / d view · D (OpenGL->OpenCV flip), rows (a/z, 0, u/z), (0, -a/z, v/z).
    # d local / d r = [local]x J_r(r) -> rows g x local; d local / d t = -R^T -> rows -g. Written out.
    az = a * inv_z
    uz, vz = (proj * inv_z[..., None]).unbind(-1)
    lx, ly, lz = local.unbind(-1)
    zero = torch.zeros_like(az)
    cols = [-uz * ly, uz * lx - az * lz, az * ly, -az, zero, -uz,
            -az * lz - vz * ly, vz * lx, az * lx, zero, az, -vz]
    k = 7 if with_fov else 6
    if with_fov:
        half = torch.deg2rad(fw.fov) * 0.5
        dfov = (-(math.pi / 360.0) / (torch.sin(half) * torch.cos(half)))[:, None]
        pu, pv = proj.unbind(-1)
        cols = cols[:6] + [pu * dfov] + cols[6:] + [pv * dfov]
    eu, ev = fw.err.unbind(-1)
    j0e = torch.stack(cols[:k] + [eu] + cols[k:] + [ev], dim=-1).reshape(n, p * 2, k + 1)
    t = torch.zeros(n, k, k, dtype=view.dtype)
    t[:, :3, :3] = _right_jacobian(pose6[:, :3])
    t[:, 3:6, 3:6] = fw.rot.transpose(1, 2)
    if with_fov:
        t[:, 6, 6] = 1.0
    return j0e, t


def _gram(a: Tensor, b: Tensor) -> Tensor:
    """``a^T b`` over the middle axis, ``[N, M, k] x [N, M, k] -> [N, k, k]`` (BLAS; the LM runs
    single-threaded, see :func:`~flame_tracker.threads.cpu_threads`)."""
    return a.transpose(1, 2) @ b


def _banded_lower(blocks: Tensor, pair_w: np.ndarray, nb: int, w_temporal: float) -> np.ndarray:
    """Lower banded storage of a block-tridiagonal SPD matrix: diagonal blocks ``[N, b, b]`` and
    off-diagonal blocks ``-2·w_temporal·w_k·I`` on the first 6 entries (the temporal term's Hessian)."""
    n, b, _ = blocks.shape
    ab = np.zeros((b + 1, n * b))
    blk = blocks.numpy()
    for i in range(b):  # band row i holds A[j+i, j]
        m = np.arange(b - i)
        ab[i].reshape(n, b)[:, m] = blk[:, m + i, m]
    off = np.zeros((n, b))
    off[:-1, :nb] = -2.0 * w_temporal * pair_w[:, None]
    ab[b] = off.reshape(-1)
    return ab


def _fit_lm(prob: Stage1Problem, pose: Tensor, fov: Tensor, fov_mode: FovMode, temporal: Tensor | bool,
            max_iter: int, tol: float) -> CameraFit:
    """Batched IRLS Levenberg–Marquardt on the stage-1 objective."""
    n, dtype = prob.n, prob.dtype
    pair_w = _pair_weights(temporal, n, pose)
    w_temp = prob.options.w_temporal
    with_fov = fov_mode != "fixed"
    shared = fov_mode == "shared"
    coupled = pair_w is not None or shared

    cur = prob  # the frames still iterating (independent frames drop out once converged)

    def evaluate(p: Tensor, f: Tensor) -> tuple[Stage1Forward, Tensor]:
        # The solver minimises |e| smoothed to sqrt(|e|² + δ²): the optimum of a sum of norms often
        # has residuals exactly at zero (a kink where Newton steps fail); δ = SMOOTH_NDC costs < 1e-4
        # of the true objective (measured) and saves most iterations. The reported objective is exact.
        fw = cur.forward(p, f)
        smoothed = (fw.weights * torch.sqrt(fw.dist.square() + SMOOTH_NDC**2)).sum(dim=1)
        return fw, smoothed + _temporal_split(p, pair_w, w_temp)

    fw, f_frames = evaluate(pose, fov)
    # LM state per independent group: one group per frame, or a single one when frames are coupled.
    n_groups = 1 if coupled else n

    def grouped(x: Tensor) -> Tensor:
        return x.sum().reshape(1) if coupled else x

    def per_frame(x: Tensor) -> Tensor:
        return x.expand(n) if coupled else x

    lam = torch.full((n_groups,), 1e-3, dtype=dtype)
    # 0: IRLS (majoriser, safe far away); NEWTON_ALPHA: Gauss-Newton on the norms (fast near the optimum).
    alpha = torch.zeros(n_groups, dtype=dtype)
    done = torch.zeros(n_groups, dtype=torch.bool)
    history = [float(f_frames.sum())]
    # Independent frames: converged ones are written out and dropped, so late iterations only pay for
    # the few frames still moving. ``active`` maps working rows to frames.
    out_pose, out_fov, active, f_out = pose.clone(), fov.clone(), torch.arange(n), 0.0
    it = 0
    for it in range(1, max_iter + 1):
        grad, hess = _normal_equations(fw, pose, with_fov, per_frame(alpha), pair_w, w_temp)
        diag = torch.diagonal(hess, dim1=1, dim2=2)
        damp = hess + torch.diag_embed(per_frame(lam)[:, None] * diag + 1e-12)
        step = _solve(damp, grad, pair_w, shared, w_temp)
        new_pose = pose + step[:, :6]
        new_fov = torch.clamp(fov + step[:, 6], FOV_MIN, FOV_MAX) if with_fov else fov
        new_fw, new_f = evaluate(new_pose, new_fov)
        old_g, new_g = grouped(f_frames), grouped(new_f)
        ok = (new_g <= old_g) & ~done
        rel = (old_g - new_g) / old_g.clamp_min(1e-300)
        newton = alpha > 0
        # Accepted: relax damping, go (or stay) Newton once close. Rejected Newton step: fall back to
        # IRLS at the same damping; rejected IRLS step: damp more.
        lam = torch.where(ok, (lam / 3).clamp_min(1e-9), torch.where(newton, lam, lam * 4))
        alpha = torch.where(ok, torch.where(rel < NEWTON_SWITCH, NEWTON_ALPHA, alpha), torch.zeros_like(alpha))
        # Converged: an accepted step gains < tol, or an IRLS step fails by < 10·tol (the optimum of a
        # sum of norms often sits on a kink where some residuals are exactly zero).
        done |= (ok & (rel < tol)) | (~ok & ~newton & (rel.abs() < 10 * tol)) | (lam > 1e8)
        # An exact fit (noise-free targets) stops on the absolute value, above the smoothing floor Σw·δ.
        floor = grouped((new_fw.weights * SMOOTH_NDC).sum(dim=1))
        done |= torch.minimum(old_g, new_g) - floor < 1e-13 * (n if coupled else 1)
        accept = per_frame(ok)
        pose = torch.where(accept[:, None], new_pose, pose)
        fov = torch.where(accept, new_fov, fov)
        f_frames = torch.where(accept, new_f, f_frames)
        if bool(accept.all()):
            fw = new_fw
        elif bool(accept.any()):
            fw = Stage1Forward(*[torch.where(_bcast(accept, old), new, old) for old, new in zip(fw, new_fw)])
        history.append(f_out + float(f_frames.sum()))
        if bool(done.all()):
            break
        # (compacting costs ~a dozen small copies: worth it once a quarter of the rows are finished)
        if not coupled and 4 * int(done.sum()) >= done.numel():
            keep = ~done
            out_pose[active], out_fov[active] = pose, fov
            f_out += float(f_frames[done].sum())
            active = active[keep]
            pose, fov, f_frames, lam, alpha, done = (x[keep] for x in (pose, fov, f_frames, lam, alpha, done))
            fw = Stage1Forward(*(x[keep] for x in fw))
            cur = prob.subset(active)
    out_pose[active], out_fov[active] = pose, fov
    return _result(prob, out_pose, out_fov, temporal, it, "lm", bool(done.all()), history)


def _normal_equations(fw: Stage1Forward, pose: Tensor, with_fov: bool, alpha: Tensor, pair_w: Tensor | None,
                      w_temporal: float) -> tuple[Tensor, Tensor]:
    """Gradient ``[N, k]`` and Gauss-Newton Hessian ``[N, k, k]`` of the smoothed objective in the
    ``pose6[, fov]`` parameters: IRLS weights ``w/|e|``, minus the share ``alpha [N]`` of the norms'
    radial curvature, plus the temporal term's diagonal blocks."""
    jac_err, tmat = _jacobian(fw, pose, with_fov)  # J = jac @ tmat: [N, M, k+1], [N, k, k]
    k = jac_err.shape[-1] - 1
    jac = jac_err[..., :k]
    rad = torch.sqrt(fw.dist.square() + SMOOTH_NDC**2)
    inv_d = fw.weights / rad  # [N, P]
    jc = jac * inv_d.repeat_interleave(2, dim=1)[..., None]
    # Hessian and gradient in one batched product: jc^T [jac | err] -> [N, k, k+1].
    hg = _gram(jc, jac_err)
    hess = hg[..., :k]
    if bool((alpha > 0).any()):
        # The Hessian of |e| is (I - u u^T)/|e|: remove (part of) the radial curvature.
        unit = fw.err / rad[..., None]
        q = (jac.reshape(jac.shape[0], -1, 2, k) * unit[..., None]).sum(dim=2)  # [N, P, k]
        hess = hess - alpha[:, None, None] * _gram(q * inv_d[..., None], q)
    # Back to the pose6 parameters: H = T^T H0 T, g = T^T g0 (T is k×k per frame).
    grad = (hg[..., k:].transpose(1, 2) @ tmat)[:, 0]
    hess = tmat.transpose(1, 2) @ hess @ tmat
    if pair_w is not None:
        tgrad, tdiag = _temporal_grad(pose, pair_w, w_temporal)
        grad[:, :6] += tgrad
        hess[:, range(6), range(6)] += tdiag[:, None]
    return grad, hess


def _bcast(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape(-1, *([1] * (like.ndim - 1)))


def _temporal_grad(pose: Tensor, pair_w: Tensor, w_temporal: float) -> tuple[Tensor, Tensor]:
    """Gradient ``[N, 6]`` and (diagonal-block) Hessian diagonal ``[N]`` of :func:`temporal_term`;
    its off-diagonal blocks are ``-2·w_temporal·w_k·I`` (see :func:`_banded_lower`)."""
    n = pose.shape[0]
    diff = 2 * w_temporal * pair_w[:, None] * (pose[1:] - pose[:-1])
    grad = torch.zeros(n, 6, dtype=pose.dtype)
    grad[1:] += diff
    grad[:-1] -= diff
    deg = torch.zeros(n, dtype=pose.dtype)
    deg[1:] += pair_w
    deg[:-1] += pair_w
    return grad, 2 * w_temporal * deg


def _temporal_split(pose: Tensor, pair_w: Tensor | None, w_temporal: float) -> Tensor:
    """Temporal term attributed to frames (half of each pair to each side), for acceptance tests;
    a scalar zero when there is no temporal term."""
    if pair_w is None:
        return pose.new_zeros(())
    out = torch.zeros(pose.shape[0], dtype=pose.dtype)
    diff = pose[1:] - pose[:-1]
    pair = w_temporal * pair_w * (diff * diff).sum(dim=1)
    out[1:] += 0.5 * pair
    out[:-1] += 0.5 * pair
    return out


def _solve(hess: Tensor, grad: Tensor, pair_w: Tensor | None, shared: bool, w_temporal: float) -> Tensor:
    """Solve ``H δ = -g`` for all frames: block diagonal, block tridiagonal (temporal) and/or
    bordered by one shared FOV column (Schur complement)."""
    n, k = grad.shape
    if pair_w is None and not shared:
        return -torch.linalg.solve(hess, grad[..., None])[..., 0]
    kp = 6 if shared else k  # per-frame block size
    a = hess[:, :kp, :kp]
    rhs = grad[:, :kp, None]
    if shared:
        border = hess[:, :kp, 6:7]
        rhs = torch.cat([rhs, border], dim=-1)  # [N, kp, 2]
    if pair_w is None:
        sol = torch.linalg.solve(a, rhs)
    else:
        from scipy.linalg import solveh_banded  # only the temporal solve needs it (~0.1-0.3 s import)

        ab = _banded_lower(a, pair_w.numpy(), 6, w_temporal)
        sol_np = solveh_banded(ab, rhs.numpy().reshape(n * kp, -1), lower=True, check_finite=False)
        sol = torch.from_numpy(sol_np).reshape(n, kp, -1)
    if not shared:
        return -sol[..., 0]
    ainv_g, ainv_b = sol[..., 0], sol[..., 1]
    corner = hess[:, 6, 6].sum()
    g_f = grad[:, 6].sum()
    d_f = (-g_f + (border[..., 0] * ainv_g).sum()) / (corner - (border[..., 0] * ainv_b).sum())
    d_p = -ainv_g - ainv_b * d_f
    return torch.cat([d_p, d_f.expand(n, 1)], dim=1)


__all__ = [
    "Stage1Options", "Stage1Problem", "Stage1Loss", "Stage1Forward", "CameraFit", "fit_camera",
    "stage1_objective", "closed_form_init", "temporal_term",
]
