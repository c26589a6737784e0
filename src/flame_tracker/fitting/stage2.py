"""Stage 2: expression, jaw, eyes (and identity shape, neck) from 2-D landmarks with the camera fixed.

The reference objective (docs/reference.md §8.3, stage 2a), per frame ``n``::

    E_n = 500 * mean_{51 face points 17..67} (|dx| + |dy|)
        + 500 * mean_{10 iris points} (|dx| + |dy|)
        + 0.025 * sum(exp_n ** 2)
    (+ 0.1 * sum_t ||exp_{t+1} - exp_t||^2 / 2 over consecutive frames when ``temporal``)

with distances in the reference's NDC of the fitting crop (an optional jawline term
``w_contour * mean_{points 0..16}(|dx| + |dy|)``, zero in the reference, helps the shape). On top of it
(what the reference delegated to a network we do not have) this module optionally fits the identity ``shape``
(one per frame, or one shared by all frames) with a ``w_shape * sum(shape**2)`` prior, and the neck pose with a
``w_neck * sum(neck**2)`` prior. :func:`objective` is the single definition both solvers minimise.

Solvers:

* ``"lm"`` (default): Levenberg-Marquardt on the landmark fast path, batched over frames. The L1
  (or Huber) data term is handled by iteratively reweighted least squares: at the current residual
  ``d`` the term ``c*rho(d)`` is majorised by ``c*w*d^2/2`` with ``w = 1/max(|d|, delta)``, whose
  gradient equals the true one. Jacobians: shape/expression columns in closed form from the
  landmark-path bases (exact: the points are affine in them for fixed rotations) through the
  analytic projection, rotation columns by forward differences of the projected points, points and
  all columns from one rotation/rigid-transform pass (the fixed bases are built once per model).
  At these sizes (~120 residuals, ~60 unknowns) time is per-torch-op overhead, so the code counts
  ops. Bounded parameters (ICT blendshapes in [0, 1]) use a projected Newton step with an active set:
  variables on a bound are held when their gradient or their Newton step points out of the box,
  and the step is re-solved (a clipped step mostly failed and cost a rejection). Independent
  frames: a trial the exact robust local model predicts to fail is rejected without a model
  evaluation, the damping follows the gain ratio (Nielsen), and the solve stops when the last step
  gained less than ``rtol_frames`` and the local model predicts less than half of that (a
  stationarity test; two small steps in a row alone once stopped 8% above the optimum).
  Frames are solved independently (batched Cholesky);
  a shared shape alone is solved exactly by a Schur complement; with a temporal term the damped
  normal equations are solved by block-Jacobi preconditioned conjugate gradients.
* ``"adam"``: the reference's schedule (200 iterations, lrs 0.01/0.025/0.03 for exp/jaw/eyes, all
  dropped to 0.005/0.01/0.01 at iteration 100, weight decay 1e-4), kept to compare against.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor

from flame_tracker.camera import ndc_scale, project_ndc, rotvec_to_matrix, view_angle_deg
from flame_tracker.errors import InputError
from flame_tracker.fitting.expressions import held_channels, model_coupling
from flame_tracker.threads import cpu_threads

# Residual points: jawline 0..16 (weight 0 in the reference), the 51 inner face points, 10 iris.
N_JAW = 17
N_FACE = 51
N_IRIS = 10


@dataclass(frozen=True)
class Stage2Options:
    """Weights and switches of the stage-2 objective and solver. Defaults = reference + identity."""

    w_lmk: float = 500.0
    w_iris: float = 500.0
    # Jawline 0..16 (not in the reference's stage 2): informs the identity shape's face width.
    w_contour: float = 0.0
    # Expression prior w_exp·Σ(exp - centre)²; None: the model's (:func:`expression_priors`: the
    # reference's 0.025 for FLAME-like coefficients, 4.0 for blendshape models such as ICT).
    w_exp: float | None = None
    # Sparsity of bounded (ICT, [0, 1]) expression weights: + w_exp_l1 * sum(exp). A blendshape
    # rests at 0 unless the landmarks need it (an L2 prior alone lets many channels share the work).
    # None: the model's (0 for FLAME-like models, 0.5 for blendshape models).
    w_exp_l1: float | None = None
    # Couplings of named blendshape channels (fitting.expressions.coupling_matrix): w_exp_sym·Σ(e_L - e_R)²
    # over left/right pairs, w_exp_exclusive·Σ e_a·e_b over antagonists. None: the model's.
    w_exp_sym: float | None = None
    w_exp_exclusive: float | None = None
    # Hold the channels fitting.expressions.held_channels names at 0 (pupils, cheekRaiser: they barely
    # move a landmark). None: the model's (True for named blendshape models).
    hold_expr: bool | None = None
    # MediaPipe's blendshape network sees near-frontal faces: the expression prior's centre
    # (``expr_prior_mean``) counts fully up to the first angle (degrees) between the head's facing
    # direction and the camera, fades linearly to 0 at the second (camera.view_angle_deg). None: always full.
    prior_view_fade: tuple[float, float] | None = (30.0, 70.0)
    w_temporal: float = 0.1
    w_shape: float = 0.1  # ~ the reference photometric stage's 0.1·Σd_shape²/2; shape coefficients are N(0,1)
    w_neck: float = 10.0
    temporal: bool = False
    fit_shape: bool = True
    shared_shape: bool = False
    fit_neck: bool = False
    fit_jaw: bool | None = None  # None: fit the jaw joint when the model has one
    fit_eyes: bool = True
    # Refine the head's rigid pose (rotation + translation) jointly with expression and shape, then
    # fold it into the camera: with the camera fixed, a pose error left by stage 1 (e.g. an open jaw
    # it did not know about) is absorbed by the expression and shape instead of being corrected.
    fit_rigid: bool = False
    loss: Literal["l1", "huber"] = "l1"
    # L1: floor of |d| in the IRLS weights (NDC; ~0.0013 px at 256). Huber: the quadratic zone.
    delta: float = 1e-5
    solver: Literal["lm", "adam"] = "lm"
    max_iter: int = 20
    # coupled solves stop after two iterations each lowering the objective by less than this fraction
    rtol: float = 1e-2
    # Independent frames (single images, per-frame video solves: no shared shape or temporal term)
    # stop once an iteration gained less than this fraction AND the robust local model predicts
    # less than half of it from there (or after three small gains in a row). Measured on the
    # benchmark photos: 6-9 iterations, objective 1.5-8% below the Adam reference's.
    rtol_frames: float = 5e-3


# Blendshape models (ICT, weights in [0, 1]): the reference's expression prior (0.025·Σexp², made for
# FLAME's N(0, 1) coefficients) lets the weights contort to every landmark error (measured: 2-8
# channels saturated at 1.0 per frame of real clips, median correlation with MediaPipe's own scores
# 0.00-0.43). Measured on benchmarks/expressions.py (docs/accuracy.md): a prior 4·Σ(exp - centre)²
# (centre: MediaPipe's scores on the channels they describe, fitting.expressions.mediapipe_prior),
# sparsity 0.5·Σexp, left/right coupling 4·Σ(e_L - e_R)² and pupils/cheekRaiser held at 0
# give synthetic weight errors 0.046 (0.078 with MediaPipe's every score as the centre), correlation
# with MediaPipe on real clips 0.91, no saturated channel. Sparsity 1.0 gave 0.039, but one person's
# photos then fit less alike identities (identity_ratio 0.515 -> 0.535); antagonist coupling no gain.
# Single photos of bounded models use 2.0 (tracker.PHOTO_EXPR_SPARSITY, set by the Tracker); videos and
# multi-view this default.
BLENDSHAPE_PRIORS = {"w_exp": 4.0, "w_exp_l1": 0.5, "w_exp_sym": 4.0, "w_exp_exclusive": 0.0, "hold_expr": True}
# the reference's, for N(0, 1) coefficients (FLAME)
REFERENCE_PRIORS = {"w_exp": 0.025, "w_exp_l1": 0.0, "w_exp_sym": 0.0, "w_exp_exclusive": 0.0, "hold_expr": False}


def expression_priors(model: Any) -> dict[str, float]:
    """The expression prior weights that suit ``model``: :data:`BLENDSHAPE_PRIORS` for bounded
    (blendshape) expressions, :data:`REFERENCE_PRIORS` otherwise."""
    if getattr(model, "expr_bounds", None) is not None:
        return dict(BLENDSHAPE_PRIORS)
    return dict(REFERENCE_PRIORS)


_Opts = TypeVar("_Opts")


def with_model_priors(options: _Opts, model: Any) -> _Opts:
    """``options`` (any options dataclass with ``w_exp`` and ``w_exp_l1``: stage 2, multi-view) with
    the expression priors left at None set to ``model``'s."""
    priors = expression_priors(model)
    unset = {k: v for k, v in priors.items() if hasattr(options, k) and getattr(options, k) is None}
    return replace(options, **unset) if unset else options


@dataclass
class Stage2Result:
    """Fitted parameters (batched ``[N, ...]``; ``shape`` is ``[N, S]`` even when shared)."""

    shape: Tensor
    expr: Tensor
    jaw_pose: Tensor
    eye_pose: Tensor
    neck_pose: Tensor
    objective: Tensor  # [N] per-frame objective (the shared-shape prior and temporal term split evenly)
    landmarks_ndc: Tensor  # [N, L, 2] fitted landmarks (the model's L = 68, or its dense set) in the crop's NDC
    iris_ndc: Tensor  # [N, 10, 2]
    iterations: int
    history: list[float] = field(default_factory=list)  # total objective per iteration
    pose6: Tensor | None = None  # [N, 6] the camera with the refined rigid pose folded in (fit_rigid)


def n_landmarks(model: torch.nn.Module) -> int:
    """How many landmarks ``model``'s landmark path gives (68, or its dense point set)."""
    return int(getattr(model, "n_lmk", 68))


def model_has_jaw(model: torch.nn.Module) -> bool:
    """Whether ``model`` has a jaw joint (FLAME); the ICT model moves its jaw with blendshapes."""
    return bool(getattr(model, "has_jaw_joint", getattr(model, "has_jaw", True)))


# --------------------------------------------------------------------------------------------------
# Parameter layout
# --------------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """Which blocks of the per-frame vector ``x [N, P]`` and shared vector ``s [S']`` are free."""

    n_expr: int
    n_shape: int
    jaw: bool
    eyes: bool
    neck: bool
    shape: Literal["fixed", "frame", "shared"]
    rigid: bool = False  # head rotation (root joint) + translation, folded into the camera afterwards

    @property
    def frame_blocks(self) -> list[tuple[str, int]]:
        blocks = [("expr", self.n_expr)]
        if self.jaw:
            blocks.append(("jaw_pose", 3))
        if self.eyes:
            blocks.append(("eye_pose", 6))
        if self.neck:
            blocks.append(("neck_pose", 3))
        if self.shape == "frame":
            blocks.append(("shape", self.n_shape))
        if self.rigid:
            blocks += [("head_pose", 3), ("transl", 3)]
        return blocks

    @property
    def n_frame(self) -> int:
        return sum(n for _, n in self.frame_blocks)

    @property
    def n_shared(self) -> int:
        return self.n_shape if self.shape == "shared" else 0

    def split(self, x: Tensor, s: Tensor, base: dict[str, Tensor]) -> dict[str, Tensor]:
        """Model keyword arguments from the free vectors plus the fixed ``base`` parameters."""
        params = dict(base)
        start = 0
        for name, n in self.frame_blocks:
            params[name] = x[..., start : start + n]
            start += n
        if self.shape == "shared":
            params["shape"] = s.expand(x.shape[0], -1)
        return params

    def pack(self, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        x = torch.cat([params[name] for name, _ in self.frame_blocks], dim=-1)
        s = params["shape"][0].clone() if self.shape == "shared" else x.new_zeros(0)
        return x, s


@dataclass
class _Problem:
    """Everything fixed during one stage-2 solve."""

    model: torch.nn.Module
    layout: _Layout
    opts: Stage2Options
    base: dict[str, Tensor]
    pose6: Tensor
    fov: Tensor
    target: Tensor  # [N, L + 10, 2]
    coeff: Tensor  # [N, L + 10, 2] per-coordinate weight (0 where the target is missing)
    lo: Tensor | None  # [P] bounds of the per-frame vector (None: unbounded)
    hi: Tensor | None
    # Centre of the quadratic priors [N, P] (None: zero), e.g. MediaPipe's blendshape scores for
    # the matching expression channels.
    prior_mean: Tensor | None = None
    # Quantities fixed for the whole solve (basis slices, landmark interpolation, camera
    # projection constants), built on first use by the Jacobian code instead of every iteration.
    cache: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.opts = with_model_priors(self.opts, self.model)  # the expression priors left to the model

    def points3d(self, params: dict[str, Tensor]) -> Tensor:
        """Model-space landmarks + 10 iris points ``[B, L + 10, 3]`` (the landmark fast path), moved by
        the rigid refinement's translation ``transl`` when it is free."""
        transl = params.get("transl")
        out = self.model.landmarks(**{k: v for k, v in params.items() if k != "transl"})
        iris = out.iris if out.iris is not None else out.landmarks.new_zeros(out.landmarks.shape[0], N_IRIS, 3)
        pts = torch.cat([out.landmarks, iris], dim=1)
        return pts if transl is None else pts + transl[:, None, :]

    def project(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        ndc = project_ndc(self.points3d(self.layout.split(x, s, self.base)), self.pose6, self.fov)
        return ndc[:, :-N_IRIS], ndc[:, -N_IRIS:]

    def residuals(self, x: Tensor, s: Tensor) -> Tensor:
        lmk, iris = self.project(x, s)
        pred = torch.cat([lmk, iris], dim=1)
        return (pred - self.target).flatten(1)  # [N, 156]


def _rho(d: Tensor, loss: str, delta: float) -> Tensor:
    a = d.abs()
    if loss == "huber":  # smooth L1: quadratic inside delta, |d| - delta/2 outside (same slope as L1)
        return torch.where(a <= delta, 0.5 * d * d / delta, a - 0.5 * delta)
    return a


def objective(problem: _Problem, x: Tensor, s: Tensor) -> Tensor:
    """Per-frame objective ``[N]`` (shared-shape prior and temporal term split evenly over frames)."""
    return objective_from_residuals(problem, problem.residuals(x, s), x, s)


def objective_from_residuals(problem: _Problem, r: Tensor, x: Tensor, s: Tensor) -> Tensor:
    """:func:`objective` given the residuals ``r [N, R]`` at ``(x, s)``."""
    o = problem.opts
    n = x.shape[0]
    # The quadratic priors w_exp*|expr|^2 (+ w_shape*|shape|^2, w_neck*|neck|^2) as one weighted sum
    # over the free vector (weights from _prior_diag): the LM evaluates this a few times per iteration.
    lam_x, _ = _prior_diag(problem, x, s)
    d = x if problem.prior_mean is None else x - problem.prior_mean
    per = (problem.coeff.flatten(1) * _rho(r, o.loss, o.delta)).sum(1) + (d * d) @ lam_x
    lin = _prior_linear(problem, x)
    if lin is not None:
        per = per + x @ lin
    q = _prior_coupling(problem, x)
    if q is not None:
        xe = x[:, : q.shape[0]]
        per = per + ((xe @ q) * xe).sum(1)
    if problem.layout.shape == "shared":
        per = per + o.w_shape * (s**2).sum() / n
    if o.temporal and n >= 2:
        e = problem.layout.n_expr  # expression is the first block of x
        diff = ((x[1:, :e] - x[:-1, :e]) ** 2).sum()
        per = per + 0.5 * o.w_temporal * diff / n
    return torch.nan_to_num(per, nan=0.0, posinf=1e4)


# --------------------------------------------------------------------------------------------------
# Levenberg-Marquardt
# --------------------------------------------------------------------------------------------------


_LINEAR = ("expr", "shape")  # blocks the landmarks are affine in (for fixed joint rotations)
_ACTIVE_SET_PASSES = 3  # solves per damped step for bounded models: the first, then re-solves holding more bounds
_ROT_STEP = 1e-3  # radians, forward-difference step of the rotation columns of the Gauss-Newton matrix


def _skinned_configs(model: torch.nn.Module, params: dict[str, Tensor], lin: list[tuple[str, int, int, str]],
                     rot: list[tuple[str, int, int, str]], cache: dict, frame: Tensor | None = None
                     ) -> tuple[Tensor, Tensor, Tensor | None, Tensor] | None:
    """Points ``[N, Q, 3]`` (Q = L landmarks + 10 iris) at the current rotations (configuration 0);
    the points one ``_ROT_STEP`` of each ``rot`` (jaw/eye/neck axis-angle) column moves
    (configurations 1..M-1) ``[N, M-1, Q', 3]`` and which they are (``[Q']`` indices, ``None``: all;
    the eyes' steps move the iris points alone); and the exact derivatives w.r.t. the ``lin``
    (shape/expression) columns at configuration 0, coordinate-major ``[N, 3, Q, n_lin]``; from ONE
    rotation + rigid-transform pass. With ``frame``
    (``[N, 3, 3]``, e.g. world-to-camera) the derivatives are those of ``frame @ point``: the rotation
    is applied to the small factors, not to the columns.

    Linear blend skinning, written with the world transforms' translations as a linear map of the
    rest joints (``t(J) = C J``, closed form from the world rotations: ``C_jk = W_parent(k) - W_k`` for
    the joints ``k`` on the path root..j):
    a point is ``sum_j w_j (R_j v + C_j J)`` with ``v`` and ``J`` affine in the coefficients. So the
    rotation-perturbed configurations share one basis product, and the coefficient columns are
    ``sum_j R_j G_j + B C dJ`` with ``G`` (skinning-weighted, interpolated vertex basis) and ``B``
    (interpolated weights) fixed for the whole solve (:func:`_lin_basis`, kept in ``cache``).
    Returns ``None`` for models without the landmark-path internals of
    :class:`~flame_tracker.model.HeadModel` (the caller then differences the model).
    """
    if not lin or not hasattr(model, "landmark_path"):
        return None
    from flame_tracker.model.head import POSE_SLOTS
    from flame_tracker.model.lbs import axis_angle_to_matrix, pose_features, small_matmul

    keys = ("shape", "expr", "head_pose", "neck_pose", "jaw_pose", "eye_pose")
    betas, rotvecs = model.blend_inputs({k: params.get(k) for k in keys})
    n, nj = rotvecs.shape[:2]
    dt, dev = rotvecs.dtype, rotvecs.device
    fixed = cache.get("lin_basis")
    if fixed is None:
        fixed = cache["lin_basis"] = _lin_basis_cached(model, lin, dt, dev)
    g, b, dirs_j, path, mix, sub_dirs, sub_template, sub_weights, act, spans = fixed
    steps = cache.get("rot_steps")
    if steps is None:  # configuration 0 = current rotations, then one step per rotation column
        slot = {name: 3 * j0 for name, j0, _ in POSE_SLOTS}
        idx = [slot[name] + i for name, _, size, _ in rot for i in range(size)]
        steps = cache["rot_steps"] = torch.zeros(1 + len(idx), 3 * nj, dtype=dt, device=dev)
        steps[1 + torch.arange(len(idx), device=dev), torch.tensor(idx, dtype=torch.long, device=dev)] = _ROT_STEP
    m = steps.shape[0]
    rv = (rotvecs.reshape(n, 1, 3 * nj) + steps).view(n * m, nj, 3)
    rmat = axis_angle_to_matrix(rv)  # [N*M, J, 3, 3] local
    # World rotations W_j = W_parent R_j, one product per tree depth.
    chain = model.joint_chain
    if chain is not None:  # depth by depth with slices (FLAME, ICT): no index copies
        level = rmat[:, :1]
        world = [level]
        for js, parent in chain:
            level = small_matmul(level[:, parent : parent + 1], rmat[:, js])
            world.append(level)
        world_r = torch.cat(world, 1)
    else:
        world_r = rmat.clone()
        for js, ps in model.joint_levels:
            world_r[:, js] = world_r[:, ps] @ rmat[:, js]
    # Translations of the rest-relative transforms, t_j = sum_k C_jk J_k, in closed form: over the
    # joints k on the path root..j, C_jk = W_parent(k) - W_k (W_parent(root) = I). Equals
    # rigid_transforms on the 3J unit joint configurations, without chaining 3J 4x4 transforms.
    par = cache.get("parents")
    if par is None:
        par = cache["parents"] = (torch.eye(3, dtype=dt, device=dev)[None, None],
                                  torch.tensor(model.joint_parents[1:], dtype=torch.long, device=dev))
    w_par = torch.cat([par[0].expand(n * m, 1, 3, 3), world_r.index_select(1, par[1])], 1)
    c = (path[None, :, None, :, None] * (w_par - world_r).permute(0, 2, 1, 3)[:, None]).reshape(n * m, 3 * nj, 3 * nj)
    p = model.n_sub
    if model.has_pose_correctives:  # the shaped rest pose depends on the rotations: one per configuration
        feats = torch.cat([betas.repeat_interleave(m, 0), pose_features(rmat)], 1)
        shaped = torch.nn.functional.linear(feats, sub_dirs, sub_template).view(n, m, -1)
    else:  # one per frame, shared by its configurations (ICT)
        shaped = torch.nn.functional.linear(betas, sub_dirs, sub_template)[:, None]
    v, joints = shaped[..., : 3 * p].unflatten(-1, (p, 3)), shaped[..., 3 * p:, None]
    trans = (c.view(n, m, 3 * nj, 3 * nj) @ joints).view(n, m, nj, 3, 1)
    rt = torch.cat([world_r.view(n, m, nj, 3, 3), trans], -1).view(n, m, nj, 12)
    # Configuration 0 moves every landmark-path row; a rotation step moves only the rows skinned to
    # the rotated joints or their descendants (the eyes' steps: the iris rows alone).
    sub = _skin(sub_weights, rt[:, 0], v[:, 0])  # [N, P, 3]
    pts = sub if mix is None else mix @ sub  # [N, Q, 3]
    moved = None
    if m == 1:
        turned = pts.new_zeros(n, 0, pts.shape[1], 3)
    else:
        rows, moved, mix_moved = _rotated_points(model, rot, sub_weights, path, mix, cache)
        v_rot = v[:, 1:] if v.shape[1] > 1 else v
        if rows is None:
            turned = _skin(sub_weights, rt[:, 1:], v_rot)
        else:
            turned = _skin(sub_weights[rows], rt[:, 1:], v_rot[:, :, rows])  # [N, M-1, moved rows, 3]
            if mix_moved is not None:  # the moved points mix moved and unmoved rows
                turned = _with_unmoved(sub, turned, rows)
        if mix_moved is not None:
            turned = mix_moved @ turned
    k = dirs_j.shape[1]
    # Coefficient columns, coordinate-major [N, 3, Q, k]: row a of sum_j W_j G_j, plus B (C dJ), over
    # the joints that skin some landmark (the others' rows of G and columns of B are zero).
    r0 = world_r.view(n, m, nj, 3, 3)[:, 0]
    c0 = c.view(n, m, nj, 3, 3 * nj)[:, 0]
    if act is not None:
        r0, c0 = r0.index_select(1, act), c0.index_select(1, act)
    n_act = r0.shape[1]
    dt_joint = (c0.reshape(n, 3 * n_act, 3 * nj) @ dirs_j).view(n, n_act, 3, k)  # joint translations' columns
    left = r0.transpose(1, 2).reshape(n, 3, 3 * n_act)
    if frame is not None:
        dt_joint = frame[:, None] @ dt_joint
        left = torch.bmm(frame, left)
    d_lin = b @ dt_joint.transpose(1, 2)  # [N, 3, Q, k], a new tensor: the rotation part is added in place
    left = left.reshape(n * 3, 3 * n_act)
    if spans is None:
        d_lin.view(n * 3, -1).addmm_(left, g)
    else:
        for r, lo, hi in spans:
            d_lin.view(n * 3, -1)[:, lo:hi].addmm_(left[:, r : r + 3], g[r : r + 3, lo:hi])
    return pts, turned, moved, d_lin


def _skin(weights: Tensor, rt: Tensor, v: Tensor) -> Tensor:
    """Linear blend skinning of rest rows ``v [..., P, 3]`` with per-joint ``[R | t]`` rows ``rt [..., J, 12]``
    and skinning ``weights [P, J]``."""
    tw = (weights @ rt).unflatten(-1, (3, 4))
    return (tw[..., :3] * v[..., None, :]).sum(-1) + tw[..., 3]


def _with_unmoved(base: Tensor, moved: Tensor, idx: Tensor) -> Tensor:
    """``base [N, R, 3]`` repeated for each step of ``moved [N, S, R', 3]``, with its rows ``idx [R']``
    replaced by the moved ones: ``[N, S, R, 3]``."""
    full = base[:, None].expand(moved.shape[0], moved.shape[1], *base.shape[1:]).clone()
    full[:, :, idx] = moved
    return full


def _rotated_points(model: torch.nn.Module, rot: list[tuple[str, int, int, str]], weights: Tensor, path: Tensor,
                    mix: Tensor | None, cache: dict) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """What a step of the ``rot`` columns moves (cached per solve): the landmark-path rows skinned
    to a rotated joint or a descendant, the points (landmarks, iris) that mix them, and the mix
    matrix's rows of those points; ``None`` for "all of them" (and for no mix). With pose correctives
    a joint's rotation also reshapes rows it does not skin (its learned posedirs): every row moves
    (FLAME); the subset is for models without them (ICT: the eyes' steps move the iris alone)."""
    if model.has_pose_correctives:
        return None, None, mix
    if "rotated_points" not in cache:
        from flame_tracker.model.head import POSE_SLOTS

        first = {name: (j0, size) for name, j0, size in POSE_SLOTS}
        turned = sorted({j for name, _, _, _ in rot for j in range(first[name][0], first[name][0] + first[name][1])})
        # joint k follows joint j when j is on the path root..k (path[k, j] = 1)
        follows = path[:, turned].sum(1) > 0
        moved_rows = (weights[:, follows] != 0).any(1)
        rows = torch.nonzero(moved_rows).view(-1)
        if mix is None:
            points, mix_moved = rows, None
        else:
            points = torch.nonzero((mix[:, moved_rows] != 0).any(1)).view(-1)
            mix_moved = mix.index_select(0, points)
        all_rows, all_points = len(rows) == weights.shape[0], len(points) == (weights.shape[0] if mix is None
                                                                               else mix.shape[0])
        cache["rotated_points"] = (None if all_rows else rows, None if all_points else points,
                                   None if mix is None else mix_moved)
    return cache["rotated_points"]


def _skinned_jacobian(model: torch.nn.Module, params: dict[str, Tensor], lin: list[tuple[str, int, int, str]],
                      rot: list[tuple[str, int, int, str]], cache: dict) -> tuple[Tensor, Tensor, Tensor] | None:
    """:func:`_skinned_configs` as points ``[N, Q, 3]``, exact coefficient columns ``[N, Q, 3, n_lin]``
    and forward-differenced rotation columns ``[N, Q, 3, n_rot]`` (the layout of
    :func:`_differenced_jacobian`, against which the closed form is tested); ``None`` where the
    model lacks the landmark-path internals."""
    out = _skinned_configs(model, params, lin, rot, cache)
    if out is None:
        return None
    p0, turned, moved, d_lin = out
    if moved is not None:  # the points no rotation step moves
        turned = _with_unmoved(p0, turned, moved)
    return p0, d_lin.transpose(1, 2), ((turned - p0[:, None]) / _ROT_STEP).permute(0, 2, 3, 1)


# Per model: the fixed bases of :func:`_lin_basis` by column layout, dtype, device and buffer
# identity/version (building them costs about as much as two LM iterations; a tracker reuses them).
_BASES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _lin_basis_cached(model: torch.nn.Module, lin: list[tuple[str, int, int, str]], dt: torch.dtype,
                      dev: torch.device) -> tuple[Tensor, ...]:
    """:func:`_lin_basis`, built once per model and column layout (rebuilt if the model's landmark-path
    buffers are replaced or modified in place)."""
    bufs = model.landmark_path()[:4]
    key = (tuple((name, size) for name, _, size, _ in lin), dt, str(dev),
           tuple((b.data_ptr(), b._version) for b in bufs))
    per_model = _BASES.setdefault(model, {})
    fixed = per_model.get(key)
    if fixed is None:
        if len(per_model) >= 4:  # a tracker alternates a few layouts; stale buffers/layouts age out
            del per_model[next(iter(per_model))]
        fixed = per_model[key] = _lin_basis(model, lin, dt, dev)
    return fixed


def _lin_basis(model: torch.nn.Module, lin: list[tuple[str, int, int, str]], dt: torch.dtype,
               dev: torch.device) -> tuple[Tensor, ...]:
    """The solve-invariant parts of :func:`_skinned_configs`: ``G [(A, 3), Q * n_lin]`` and the
    interpolated skinning weights ``B [Q, A]`` over the ``A`` joints that skin some point, the joint
    basis rows ``[3J, n_lin]``, the path mask ``[J, J]`` (joint k is j or one of its ancestors), the
    ``[Q, P]`` landmark/iris interpolation matrix (``None`` where it is the identity), the
    landmark-path basis, template and skinning weights, and the ``A`` joints' ids (``None``: all)."""
    lp = model.landmark_path()
    p, nj = lp.n_rows, lp.weights.shape[1]
    offset = {"shape": 0, "expr": model.n_shape}
    cols = torch.cat([torch.arange(offset[name], offset[name] + size, device=dev)
                      for name, _, size, _ in lin])
    dirs = lp.dirs.index_select(1, cols).to(dt)  # [3P + 3J, n_lin]
    dv = dirs[: 3 * p].view(p, 3, -1)
    # landmarks: barycentric mixes of landmark-path rows; iris points: single rows (zero if absent);
    # the model's own mix matrix (columns: 68 landmarks, iris, ears)
    n_lmk = n_landmarks(model)
    interp = torch.zeros(n_lmk + N_IRIS, p, dtype=dt, device=dev)
    k = n_lmk + lp.n_iris
    interp[:k] = lp.mix_t[:, :k].T.to(dt)
    w = lp.weights.to(dt)  # [P, J]
    g = torch.einsum("lp,pj,pbk->jblk", interp, w, dv).reshape(3 * nj, -1)
    path = torch.zeros(nj, nj, dtype=dt, device=dev)  # path[j, k] = 1: joint k is j or an ancestor
    for j in range(nj):
        k = j
        while k >= 0:
            path[j, k] = 1.0
            k = model.joint_parents[k] if k > 0 else -1
    # The interpolation is skipped where it is the identity (ICT: every point is one landmark-path
    # row); the landmark-path buffers in the solve's dtype, converted once instead of every call.
    mix = None if interp.shape[0] == p and torch.equal(interp, torch.eye(p, dtype=dt, device=dev)) else interp
    # Only the joints that skin some landmark or iris point enter the coefficient columns (ICT: the
    # neck and the eyes; FLAME's 68 points: not the eyes).
    b = interp @ w
    act = torch.nonzero((b != 0).any(0)).view(-1)
    if len(act) < nj:
        g = g.view(nj, -1).index_select(0, act).view(3 * len(act), -1)
        b = b.index_select(1, act)
    # Each joint's points as one span of columns (ICT's dense points: the neck skins points 0..467,
    # each eye 5 iris points): the product then skips the zero blocks, 2/3 of it there.
    used = torch.nonzero(b != 0)
    k = len(cols)
    spans = [(3 * a, int(used[used[:, 1] == a, 0].min()) * k, (int(used[used[:, 1] == a, 0].max()) + 1) * k)
             for a in range(len(act))]
    if all(lo == 0 and hi == g.shape[1] for _, lo, hi in spans):
        spans = None  # one product over every joint
    return (g, b, dirs[3 * p:], path, mix, lp.dirs.to(dt), lp.template.to(dt), w,
            None if len(act) == nj else act, spans)


def _differenced_jacobian(problem: _Problem, params: dict[str, Tensor], lin: list, rot: list
                          ) -> tuple[Tensor, Tensor, Tensor]:
    """Fallback of :func:`_skinned_jacobian` for any landmark model: one batched landmark-path call
    over ``[N, 1 + columns]`` parameter sets (the current point, unit steps of every linear column,
    exact since the points are affine in them, and small steps of every rotation)."""
    n = next(iter(params.values())).shape[0]
    stepped = lin + rot
    n_lin = sum(b[2] for b in lin)
    cols = 1 + sum(b[2] for b in stepped)
    batch = {}
    for key, val in params.items():
        rep = val[:, None].expand(n, cols, val.shape[-1]).clone()
        col = 1
        for name, _, size, _ in stepped:
            if name == key:
                step = 1.0 if name in _LINEAR else _ROT_STEP
                rep[:, col : col + size] += step * torch.eye(size, dtype=val.dtype, device=val.device)
            col += size
        batch[key] = rep.flatten(0, 1)
    pts = problem.points3d(batch).view(n, cols, -1, 3)
    p0 = pts[:, 0]
    diff = (pts[:, 1:] - p0[:, None]).permute(0, 2, 3, 1)  # [N, Q, 3, columns]
    return p0, diff[..., :n_lin], diff[..., n_lin:] / _ROT_STEP


def _jac_plan(problem: _Problem) -> dict:
    """Column bookkeeping of :func:`_jacobians`, fixed per solve: the linear and rotation blocks,
    and the permutation from the ``[linear | rotation]`` column order to the layout's."""
    plan = problem.cache.get("plan")
    if plan is not None:
        return plan
    lay = problem.layout
    blocks, start = [], 0
    for name, size in lay.frame_blocks:
        blocks.append((name, start, size, "frame"))
        start += size
    if lay.shape == "shared":
        blocks.append(("shape", 0, lay.n_shape, "shared"))
    lin = [b for b in blocks if b[0] in _LINEAR]
    rot = [b for b in blocks if b[0] not in _LINEAR and b[0] != "transl"]
    tra = [b for b in blocks if b[0] == "transl"]  # analytic columns, after the rotations
    col, order, shared = 0, {}, None
    for name, _, size, kind in lin + rot + tra:
        if kind == "shared":
            shared = (col, size)
        else:
            order[name] = list(range(col, col + size))
        col += size
    perm = [i for name, _ in lay.frame_blocks for i in order[name]]
    identity = shared is None and perm == list(range(len(perm)))
    dev = problem.target.device
    plan = problem.cache["plan"] = dict(
        lin=lin, rot=rot, shared=shared, transl=bool(tra),
        perm=None if identity else torch.tensor(perm, dtype=torch.long, device=dev),
    )
    return plan


def _camera(problem: _Problem) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fixed stage-2 camera: world-to-view rotation (with the reference's axis flip) as a right
    factor ``[N, 3, 3]``, its transpose ``[N, 3, 3]``, the centre ``[N, 1, 1, 3]`` and the NDC scale
    ``[N, 1, 1, 1]`` (``view = (X - t) R flip``, ``ndc = scale * view_xy / (view_z + 1e-8)``)."""
    cam = problem.cache.get("camera")
    if cam is None:
        rmat = rotvec_to_matrix(problem.pose6[:, :3])
        rflip = rmat * rmat.new_tensor((1.0, -1.0, -1.0))
        scale = ndc_scale(problem.fov)
        cam = problem.cache["camera"] = (rflip, rflip.transpose(1, 2).contiguous(),
                                         problem.pose6[:, None, None, 3:], scale[:, None, None, None])
    return cam


def _jacobians(problem: _Problem, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Residuals ``[N,R]``, per-frame Jacobian ``[N,R,P]`` and shared Jacobian ``[N,R,S']``.

    Skinning is affine in shape and expression for fixed joint rotations (the joints move linearly
    with them, pose correctives depend on rotations only), so those columns are exact (closed form,
    :func:`_skinned_configs`; model differences ``L(theta + e_k) - L(theta)`` as the fallback) and
    go through the analytic projection Jacobian. The few rotation columns (jaw, eyes, neck) are
    forward differences with a 1e-3 rad step of the projected points themselves.
    At these sizes the cost is the number of torch operations, so the coefficient columns stay
    coordinate-major (the camera rotation is applied to their small factors) and the column
    bookkeeping is computed once per solve (:func:`_jac_plan`).
    """
    n = x.shape[0]
    plan = _jac_plan(problem)
    lin, rot = plan["lin"], plan["rot"]
    params = problem.layout.split(x, s, problem.base)
    rflip, rflip_t, centre, scale = _camera(problem)
    fast = _skinned_configs(problem.model, params, lin, rot, problem.cache, frame=rflip_t)
    add_transl = plan["transl"] and fast is not None  # the fallback's points3d already include it
    if fast is None:
        p0, d_lin, d_rot = _differenced_jacobian(problem, params, lin, rot)
        n_lin = d_lin.shape[-1]
        fast = (p0, p0[:, None] + _ROT_STEP * d_rot.permute(0, 3, 1, 2), None,
                (rflip_t @ d_lin.transpose(1, 2).reshape(n, 3, -1)).view(n, 3, -1, n_lin))
    # world points [N, Q, 3], the rotation steps' moved points [N, M-1, Q', 3] (which: ``moved``,
    # None = all), coefficient columns [N, 3, Q, n_lin] in the camera's frame
    pts, turned, moved, dview = fast
    if add_transl:
        pts = pts + params["transl"][:, None, :]
        turned = turned + params["transl"][:, None, None, :]
    m, n_pts = 1 + turned.shape[1], pts.shape[1]
    view = torch.bmm(pts - centre[:, 0], rflip)
    inv_z = 1.0 / (view[..., 2:] + 1e-8)
    ndc = scale[:, 0] * view[..., :2] * inv_z  # [N, Q, 2]
    r = (ndc - problem.target).flatten(1)  # residual points: the landmarks + 10 iris
    # d ndc = scale/z d view_xy - ndc/z d view_z, written point-major into one [N, Q, 2, columns]
    # array (the coordinate-major columns through a transposed view: no temporaries, no concatenation).
    n_lin = dview.shape[-1]
    n_rot = m - 1
    jac = x.new_empty(n, n_pts, 2, n_lin + n_rot + (3 if plan["transl"] else 0))
    iz = inv_z.transpose(1, 2)[..., None]  # [N, 1, Q, 1]
    j_lin = jac[..., :n_lin].transpose(1, 2)  # [N, 2, Q, n_lin] view
    torch.mul(dview[:, :2], scale * iz, out=j_lin)
    j_lin.addcmul_(ndc.transpose(1, 2)[..., None] * iz, dview[:, 2:].expand_as(j_lin), value=-1.0)
    if rot:  # forward differences of the moved points' projections; the others' columns are 0
        view_t = (turned - centre).flatten(1, 2) @ rflip
        ndc_t = (scale[:, 0] * view_t[..., :2] * (1.0 / (view_t[..., 2:] + 1e-8))).view(n, m - 1, -1, 2)
        base = ndc if moved is None else ndc.index_select(1, moved)
        d_rot = ((ndc_t - base[:, None]) * (1.0 / _ROT_STEP)).permute(0, 2, 3, 1)  # [N, Q', 2, M-1]
        if moved is None:
            jac[..., n_lin : n_lin + n_rot] = d_rot
        else:
            jac[..., n_lin : n_lin + n_rot] = 0.0
            jac[:, moved, :, n_lin : n_lin + n_rot] = d_rot
    if plan["transl"]:  # a translation moves every point by the same view-space vector rflip_t[:, :, k]
        dv = rflip_t[:, :, None, :]  # [N, 3, 1, 3]
        j_tr = dv[:, :2] * (scale * iz) - (ndc.transpose(1, 2)[..., None] * iz) * dv[:, 2:]  # [N, 2, Q, 3]
        jac[..., n_lin + n_rot:] = j_tr.transpose(1, 2)
    jac = jac.view(n, 2 * n_pts, -1)
    js = x.new_zeros(n, r.shape[1], 0)
    if plan["shared"] is not None:
        c0, size = plan["shared"]
        js = jac[..., c0 : c0 + size]
    if plan["perm"] is not None:
        jac = jac.index_select(-1, plan["perm"])
    return r, jac, js


def _prior_diag(problem: _Problem, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """Diagonal weights ``lam`` of the quadratic priors ``sum lam*x^2`` for ``x`` and ``s`` (cached)."""
    cached = problem.cache.get("prior")
    if cached is not None:
        return cached
    o, lay = problem.opts, problem.layout
    parts = []
    for name, n in lay.frame_blocks:
        w = {"expr": o.w_exp, "shape": o.w_shape, "neck_pose": o.w_neck}.get(name, 0.0)
        parts.append(torch.full((n,), w, dtype=x.dtype, device=x.device))
    lam_x = torch.cat(parts)
    lam_s = torch.full((lay.n_shared,), o.w_shape, dtype=x.dtype, device=x.device)
    problem.cache["prior"] = (lam_x, lam_s)
    return lam_x, lam_s


def _prior_linear(problem: _Problem, x: Tensor) -> Tensor | None:
    """The linear (sparsity) prior ``sum lin*x`` over ``x`` (``None`` when zero; cached): the L1 norm
    of the expression weights of models whose expressions are bounded below by 0."""
    key = "prior_lin"
    if key not in problem.cache:
        o, lay = problem.opts, problem.layout
        bounds = getattr(problem.model, "expr_bounds", None)
        lin = None
        if o.w_exp_l1 > 0 and bounds is not None and float(bounds[0]) >= 0:
            lin = x.new_zeros(lay.n_frame)
            lin[: lay.n_expr] = o.w_exp_l1  # expression is the first block
        problem.cache[key] = lin
    return problem.cache[key]


def _prior_coupling(problem: _Problem, x: Tensor) -> Tensor | None:
    """``Q [E, E]`` of the expression coupling prior ``e^T Q e`` (symmetric and antagonist pairs of
    named channels, :func:`~flame_tracker.fitting.expressions.coupling_matrix`; ``None`` when zero; cached)."""
    key = "prior_coupling"
    if key not in problem.cache:
        q = model_coupling(problem.model, problem.opts)
        problem.cache[key] = None if q is None else torch.as_tensor(q, dtype=x.dtype, device=x.device)
    return problem.cache[key]


def _temporal_apply(problem: _Problem, v: Tensor) -> Tensor:
    """``L v`` for the temporal term's Hessian (path-graph Laplacian times w_temporal on expr)."""
    out = torch.zeros_like(v)
    if not problem.opts.temporal or v.shape[0] < 2:
        return out
    e = problem.layout.n_expr
    d = v[1:, :e] - v[:-1, :e]
    w = problem.opts.w_temporal
    out[1:, :e] += w * d
    out[:-1, :e] -= w * d
    return out


def _temporal_diag(problem: _Problem, n: int, p: int, like: Tensor) -> Tensor:
    out = like.new_zeros(n, p)
    if problem.opts.temporal and n >= 2:
        deg = like.new_full((n,), 2.0)
        deg[0] = deg[-1] = 1.0
        out[:, : problem.layout.n_expr] = problem.opts.w_temporal * deg[:, None]
    return out


def _pcg(matvec, rhs: tuple[Tensor, Tensor], precond, iters: int = 200, tol: float = 1e-10):
    """Conjugate gradients on the pair ``(x [N,P], s [S'])`` with a block preconditioner."""

    def dot(a, b):
        return (a[0] * b[0]).sum() + (a[1] * b[1]).sum()

    x = (torch.zeros_like(rhs[0]), torch.zeros_like(rhs[1]))
    r = rhs
    z = precond(r)
    p = z
    rz = dot(r, z)
    r0 = dot(rhs, rhs).sqrt()
    for _ in range(iters):
        ap = matvec(p)
        alpha = rz / dot(p, ap).clamp_min(1e-300)
        x = (x[0] + alpha * p[0], x[1] + alpha * p[1])
        r = (r[0] - alpha * ap[0], r[1] - alpha * ap[1])
        if dot(r, r).sqrt() <= tol * r0:
            break
        z = precond(r)
        rz_new = dot(r, z)
        beta = rz_new / rz
        rz = rz_new
        p = (z[0] + beta * p[0], z[1] + beta * p[1])
    return x


def _bound_side(problem: _Problem, x: Tensor) -> Tensor:
    """``-1`` where ``x`` is on its lower bound, ``+1`` on its upper bound, ``0`` inside (bounded problems)."""
    eps = problem.cache.get("bounds_eps")
    if eps is None:
        eps = problem.cache["bounds_eps"] = (problem.lo + 1e-9, problem.hi - 1e-9)
    return (x >= eps[1]).to(x.dtype) - (x <= eps[0]).to(x.dtype)


def _free_mask(problem: _Problem, x: Tensor, g: Tensor) -> Tensor:
    """Active set of the box constraints: variables at a bound whose gradient pushes outwards are held."""
    if problem.lo is None:
        return torch.ones_like(x)
    # held: on a bound, with the descent direction -g leaving the box (side * g < 0), or fixed (lo = hi)
    movable = problem.cache.get("bounds_movable")
    if movable is None:
        movable = problem.cache["bounds_movable"] = problem.hi > problem.lo
    return ((_bound_side(problem, x) * g >= 0) & movable).to(x.dtype)


def _clip(problem: _Problem, x: Tensor) -> Tensor:
    if problem.lo is None:
        return x
    return torch.maximum(torch.minimum(x, problem.hi), problem.lo)


def _damped_step(problem: _Problem, x: Tensor, s: Tensor, gx: Tensor, hx: Tensor, mx: Tensor,
                 gs: Tensor | None, hss: Tensor | None, hxs: Tensor | None, mu: Tensor, coupled: bool
                 ) -> tuple[Tensor, Tensor | None]:
    """Solve the damped normal equations ``(H + mu diag(H)) step = -g`` (held variables stay put)."""
    n, p = x.shape
    temporal = problem.opts.temporal and n >= 2
    tdiag = _temporal_diag(problem, n, p, x) * mx if coupled else None  # (coupled includes temporal)
    diag_x = torch.diagonal(hx, dim1=1, dim2=2) + tdiag if temporal else torch.diagonal(hx, dim1=1, dim2=2)
    a = hx + torch.diag_embed(mu[:, None] * (diag_x + 1e-9))
    if not coupled:
        passes = _ACTIVE_SET_PASSES if problem.lo is not None else 1
        rhs = -gx[..., None]
        # +-1 where a free variable sits on a bound, the sign of a step that would leave the box
        outward = _bound_side(problem, x) * mx if passes > 1 else None
        for k in range(passes):
            chol, info = torch.linalg.cholesky_ex(a)  # SPD by construction; LU only if it is not
            step = (torch.cholesky_solve(rhs, chol) if not bool(info.any()) else torch.linalg.solve(a, rhs))[..., 0]
            if k + 1 == passes:
                break
            # Projected Newton: a free variable on its bound whose step leaves the box would only be
            # clipped back, and the clipped step often fails; hold it too and re-solve (no model call).
            out = outward * step > 0
            if not bool(out.any()):
                break
            held = out.to(x.dtype)
            keep = 1 - held
            outward = outward * keep
            rhs = rhs * keep[..., None]
            a = a * (keep[:, :, None] * keep[:, None, :]) + torch.diag_embed(held)
        return step, None
    ns = s.shape[0]
    # Block-Jacobi preconditioner: each frame's block (with the temporal diagonal) and the shared
    # block; the operator adds the temporal and frame-shared couplings.
    a_ss = a_ss_inv = None
    if ns:
        a_ss = hss + torch.diag(mu * (torch.diagonal(hss) + 1e-9))
        if not bool(tdiag.any()):
            return _schur_step(a, gx, hxs, a_ss, gs)  # exact: no preconditioner needed
        a_ss_inv = torch.linalg.inv(a_ss)
    a_inv = torch.linalg.inv(a + torch.diag_embed(tdiag))

    def matvec(v):
        vx, vs = v
        ox = torch.einsum("npq,nq->np", a, vx) + _temporal_apply(problem, vx * mx) * mx
        os_ = vs
        if ns:
            ox = ox + torch.einsum("nps,s->np", hxs, vs)
            os_ = a_ss @ vs + torch.einsum("nps,np->s", hxs, vx)
        return ox, os_

    def precond(v):
        zx = torch.einsum("npq,nq->np", a_inv, v[0])
        return zx, (a_ss_inv @ v[1] if ns else v[1])

    return _pcg(matvec, (-gx, -gs if ns else s.new_zeros(0)), precond)


def _schur_step(a: Tensor, gx: Tensor, hxs: Tensor, a_ss: Tensor, gs: Tensor) -> tuple[Tensor, Tensor]:
    """Exact solve of the frame/shared system ``[A B; B^T C] (x, s) = -(gx, gs)`` with ``A``
    block-diagonal over frames (no temporal coupling): eliminate the frames (batched Cholesky),
    solve the small dense Schur complement for the shared block, back-substitute. A few hundred
    unknowns: exact, and much cheaper than iterating conjugate gradients to 1e-10."""
    dt = a.dtype
    a, gx, hxs, a_ss, gs = (t.double() for t in (a, gx, hxs, a_ss, gs))
    chol, info = torch.linalg.cholesky_ex(a)
    if bool((info == 0).all()):
        inv_b = torch.cholesky_solve(hxs, chol)  # [N, P, S]
        inv_g = torch.cholesky_solve(gx[..., None], chol)[..., 0]  # [N, P]
    else:  # not SPD (should not happen): general solve
        inv_b = torch.linalg.solve(a, hxs)
        inv_g = torch.linalg.solve(a, gx)
    bt = hxs.transpose(1, 2)
    schur = a_ss - (bt @ inv_b).sum(0)
    rhs = -gs + (bt @ inv_g[..., None])[..., 0].sum(0)
    step_s = torch.linalg.solve(schur, rhs)
    step_x = -inv_g - (inv_b @ step_s)
    return step_x.to(dt), step_s.to(dt)


def _irls_system(problem: _Problem, xc: Tensor, sc: Tensor, r: Tensor, jx: Tensor, js: Tensor,
                 lam_x: Tensor, lam_s: Tensor, prior_h: Tensor) -> tuple:
    """Gradient and Gauss-Newton matrix of the IRLS majoriser at residuals ``r`` (point ``xc, sc``):
    ``(gx, hx, mx, gs, hss, hxs)``, bound-held variables masked out by ``mx``."""
    o = problem.opts
    ns = sc.shape[0]
    # IRLS weights: rho'(d)/d = 1/max(|d|, delta) for both L1 (delta = floor) and Huber.
    w = problem.coeff.flatten(1) / r.abs().clamp_min(o.delta)
    jw_t = (jx * w[..., None]).transpose(1, 2)
    d = xc if problem.prior_mean is None else xc - problem.prior_mean
    # J^T (w r) as a row vector times J: a batched matrix-vector product with the transposed J is
    # several times slower at dense sizes (~1000 residuals)
    gx = torch.addcmul(((w * r)[:, None, :] @ jx)[:, 0], lam_x, d, value=2.0)
    lin = _prior_linear(problem, xc)
    if lin is not None:
        gx = gx + lin
    q = _prior_coupling(problem, xc)
    if q is not None:
        gx = gx + torch.nn.functional.pad(2 * xc[:, : q.shape[0]] @ q, (0, gx.shape[1] - q.shape[0]))
    if o.temporal and xc.shape[0] >= 2:
        gx = gx + _temporal_apply(problem, xc)
    hx = torch.baddbmm(prior_h, jw_t, jx)
    mx = _free_mask(problem, xc, gx)
    if problem.lo is not None:  # hold the variables pushed against their bounds
        gx = gx * mx
        hx = hx * mx[:, :, None] * mx[:, None, :] + torch.diag_embed(1 - mx)
    gs = hss = hxs = None
    if ns:
        gs = (js * (w * r)[..., None]).sum((0, 1)) + 2 * lam_s * sc
        hss = ((js * w[..., None]).transpose(1, 2) @ js).sum(0) + torch.diag(2 * lam_s)
        hxs = (jw_t @ js) * mx[..., None]
    return gx, hx, mx, gs, hss, hxs


def _solve_lm(problem: _Problem, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, int, list[float], Tensor]:
    """Levenberg-Marquardt on the IRLS-convexified local model (L1/Huber reweighted at the current
    residuals).

    Each trial step is verified with one batched model call that also yields the residuals and
    the exact Jacobian at the trial point (reused when the step is accepted). Damping ``mu`` is the
    trust region.
    """
    o = problem.opts
    n, p = x.shape
    ns = s.shape[0]
    coupled = ns > 0 or (o.temporal and n >= 2)
    lam_x, lam_s = _prior_diag(problem, x, s)
    r0, jx, js = _jacobians(problem, x, s)
    f = objective_from_residuals(problem, r0, x, s)
    mu = torch.full((1 if coupled else n,), 1e-3, dtype=x.dtype, device=x.device)
    history = [float(f.sum())]
    it = 0
    converged = False
    n_small = 0  # consecutive iterations with a small decrease
    rtol = o.rtol if coupled else o.rtol_frames
    # Fixed across iterations; small solves are dominated by per-op overhead, so skip what is zero.
    prior_h = torch.diag_embed(2 * lam_x.expand(n, p))
    q = _prior_coupling(problem, x)
    if q is not None:
        prior_h[:, : q.shape[0], : q.shape[0]] += 2 * q
    for it in range(1, o.max_iter + 1):
        improved = False
        at_x = None  # the IRLS system at (x, s): a rejected trial only changes mu, so it is reused
        for _ in range(10):
            if at_x is None:
                at_x = _irls_system(problem, x, s, r0, jx, js, lam_x, lam_s, prior_h)
            gx, hx, mx, gs, hss, hxs = at_x
            step_x, step_s = _damped_step(problem, x, s, gx, hx, mx, gs, hss, hxs, mu, coupled)
            x_new = _clip(problem, torch.addcmul(x, step_x, mx))
            s_new = s + step_s if ns else s
            if not coupled:
                # Exact robust local model at the trial (linearised residuals + priors). A step
                # that does not lower it (clipping onto the ICT bounds can make the projected step
                # worse than none) is rejected without a model evaluation, which costs a Jacobian.
                r_lin = torch.add(r0, ((x_new - x)[:, None, :] @ jx.transpose(1, 2))[:, 0])  # r0 + J dx
                f_lin = objective_from_residuals(problem, r_lin, x_new, s_new)
                # Converged when the last step barely lowered the objective AND the local model
                # predicts no worthwhile decrease from here: a stationarity test, so a pair of small
                # (damped) steps before further progress no longer stops the solve early.
                if n_small and bool(((f - f_lin) <= 0.5 * rtol * f.abs()).all()):
                    converged = True
                    break
                promising = f_lin < f
                n_promising = int(promising.sum())
                if not n_promising:
                    mu = mu * 4
                    continue
                if n_promising < n:
                    x_new = torch.where(promising[:, None], x_new, x)
                    f_lin = torch.where(promising, f_lin, f)
            # The trial point is evaluated with its Jacobian in one batched call: steps are mostly
            # accepted, and then the next iteration needs no model evaluation of its own.
            r_new, jx_new, js_new = _jacobians(problem, x_new, s_new)
            f_new = objective_from_residuals(problem, r_new, x_new, s_new)
            if coupled:
                if f_new.sum() < f.sum():
                    x, s, f, r0, jx, js = x_new, s_new, f_new, r_new, jx_new, js_new
                    mu = (mu * 0.3).clamp_min(1e-9)
                    improved = True
                    break
                mu = mu * 10
            else:
                ok = f_new < f  # frames are independent: accept or reject each one
                n_ok = int(ok.sum())
                # Damping from the gain ratio (actual / predicted decrease of the exact L1 local
                # model; Nielsen's rule): a fixed "x0.3 on success" drove mu so low that every
                # other trial was rejected, each rejection costing a Jacobian evaluation.
                rho = (f - f_new) / (f - f_lin).clamp_min(1e-30)
                shrunk = (mu * (1 - (2 * rho - 1) ** 3).clamp(1 / 3, 2.0)).clamp_min(1e-9)
                if n_ok == n:  # the usual case: no per-frame selection
                    x, f, r0, jx, mu = x_new, f_new, r_new, jx_new, shrunk
                else:
                    x = torch.where(ok[:, None], x_new, x)
                    f = torch.where(ok, f_new, f)
                    r0 = torch.where(ok[:, None], r_new, r0)
                    jx = torch.where(ok[:, None, None], jx_new, jx)
                    mu = torch.where(ok, shrunk, mu * 4)
                if n_ok:
                    improved = True
                    break
        if converged:
            it -= 1  # this iteration evaluated no model
            break
        history.append(float(f.sum()))
        small = history[-2] - history[-1] <= rtol * max(abs(history[-2]), 1e-12)
        n_small = n_small + 1 if small else 0
        # Coupled: two small decreases in a row (one alone is often a damped step before further
        # progress). Independent frames stop on the test above, or after three small decreases.
        if not improved or n_small >= (2 if coupled else 3):
            break
    return x, s, it, history, r0


# --------------------------------------------------------------------------------------------------
# Adam reference (docs/reference.md §8.3)
# --------------------------------------------------------------------------------------------------


def _solve_adam(problem: _Problem, x0: Tensor, s: Tensor, iters: int = 200) -> tuple[Tensor, int, list[float]]:
    lay = problem.layout
    lrs = {"expr": (0.01, 0.005), "jaw_pose": (0.025, 0.01), "eye_pose": (0.03, 0.01)}
    if lay.shape != "fixed" or lay.neck or any(name not in lrs for name, _ in lay.frame_blocks):
        raise InputError("the adam reference fits expression, jaw and eyes only: use fit_shape=False, "
                         "fit_neck=False, fit_rigid=False")
    offsets: dict[str, Tensor] = {}
    start = 0
    blocks = {}
    for name, n in lay.frame_blocks:
        blocks[name] = (start, n)
        start += n
    # Reference: offsets on exp and jaw, absolute eye pose; all start at the initial values' offsets 0.
    groups = []
    for name, (st, n) in blocks.items():
        offsets[name] = torch.zeros(x0.shape[0], n, dtype=x0.dtype, device=x0.device, requires_grad=True)
        groups.append({"params": [offsets[name]], "lr": lrs[name][0], "name": name})
    opt = torch.optim.Adam(groups, weight_decay=1e-4)
    history = []

    def assemble() -> Tensor:
        parts = [x0[:, st : st + n] + offsets[name] for name, (st, n) in blocks.items()]
        return _clip(problem, torch.cat(parts, dim=1))

    for it in range(iters):
        if it == 100:
            for g in opt.param_groups:
                g["lr"] = lrs[g["name"]][1]
        opt.zero_grad(set_to_none=True)
        loss = objective(problem, assemble(), s).sum()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    with torch.no_grad():
        x = assemble()
    return x, iters, history


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def fit_stage2(
    model: torch.nn.Module,
    lmks_ndc: Tensor,
    pose6: Tensor,
    fov: Tensor | float,
    *,
    iris_ndc: Tensor | None = None,
    init: dict[str, Tensor] | None = None,
    expr_prior_mean: Tensor | None = None,
    point_weights: Tensor | None = None,
    options: Stage2Options | None = None,
    **overrides,
) -> Stage2Result:
    """Fit stage 2 for ``N`` frames with the camera fixed from stage 1.

    Args:
        model: a ``HeadModel`` (FLAME-format or ICT).
        lmks_ndc: ``[N, L, 2]`` detected landmarks in the fitting crop's NDC (NaN = missing point); L is
            the model's landmark count (68; or a dense set, e.g. MediaPipe's 468 points).
        pose6, fov: the stage-1 camera, ``[N, 6]`` and degrees (scalar or ``[N]``).
        iris_ndc: ``[N, 10, 2]`` iris targets (MediaPipe order) or ``None`` (eye pose then stays).
        init: warm start, any of ``shape``, ``expr``, ``jaw_pose``, ``eye_pose``, ``neck_pose`` (``[N, .]``
            or ``[1, .]``); a shared shape starts from the mean of ``init["shape"]``.
        expr_prior_mean: ``[N, E]`` or ``[E]`` centre of the expression prior ``w_exp·Σ(exp - mean)²``
            (default zero), e.g. MediaPipe's blendshape scores mapped to the model's channels.
        point_weights: ``[L]`` weight of each landmark's L1 distance (replaces ``w_lmk``/``w_contour``:
            the reference's means over the 51 face and 17 jaw points); needed when L is not 68.
        options: :class:`Stage2Options`; keyword ``overrides`` replace single fields.

    Returns:
        :class:`Stage2Result` with every parameter as ``[N, ...]`` tensors (detached).
    """
    opts = with_model_priors(replace(options or Stage2Options(), **overrides), model)
    dev, dt = model.v_template.device, model.v_template.dtype
    target, coeff, has_iris = _targets(model, lmks_ndc, iris_ndc, point_weights, opts)
    n = target.shape[0]
    pose6 = torch.as_tensor(pose6, dtype=dt, device=dev).reshape(n, 6)
    fov = torch.as_tensor(fov, dtype=dt, device=dev).expand(n).clone()
    layout = _Layout(
        n_expr=model.n_expr,
        n_shape=model.n_shape,
        jaw=model_has_jaw(model) if opts.fit_jaw is None else opts.fit_jaw,
        eyes=opts.fit_eyes and has_iris,
        neck=opts.fit_neck,
        shape="fixed" if not opts.fit_shape else ("shared" if opts.shared_shape else "frame"),
        rigid=opts.fit_rigid,
    )
    params = _initial_params(model, init or {}, layout, n)
    lo, hi = _bounds(model, layout, params, hold=bool(opts.hold_expr))
    free = {name for name, _ in layout.frame_blocks} | ({"shape"} if layout.shape == "shared" else set())
    base = {k: v for k, v in params.items() if k not in free}
    problem = _Problem(model, layout, opts, base, pose6, fov, target, coeff, lo, hi)
    x, s = layout.pack(params)
    if expr_prior_mean is not None:
        mean = torch.zeros_like(x)
        mean[:, : model.n_expr] = torch.as_tensor(expr_prior_mean, dtype=dt, device=dev).reshape(-1, model.n_expr)
        if opts.prior_view_fade is not None:
            a0, a1 = opts.prior_view_fade
            mean = mean * ((a1 - view_angle_deg(pose6)) / max(a1 - a0, 1e-6)).clamp(0.0, 1.0)[:, None]
        problem.prior_mean = mean

    # Solve and final evaluation in one single-thread scope: both are small (with the default two
    # threads a busy CPU stalled the final matrix product ~14 ms, a third of an LM solve, measured).
    with cpu_threads(1, dev):
        x, s, iters, history, r = _run_solver(problem, x, s)
        with torch.no_grad():
            final = layout.split(x, s, base)
            if r is not None:  # LM: its last Jacobian pass was at the final point, no model call
                pts = r.view(n, -1, 2) + problem.target
                lmk, iris = pts[:, :-N_IRIS], pts[:, -N_IRIS:]
            else:  # one model evaluation for both the points and the objective
                lmk, iris = problem.project(x, s)
                r = (torch.cat([lmk, iris], dim=1) - problem.target).flatten(1)
            f = objective_from_residuals(problem, r, x, s)
            new_pose6 = fold_rigid(model, final, pose6) if layout.rigid else None
    return Stage2Result(
        shape=final["shape"].detach().clone(),
        expr=final["expr"].detach().clone(),
        jaw_pose=final["jaw_pose"].detach().clone(),
        eye_pose=final["eye_pose"].detach().clone(),
        neck_pose=final["neck_pose"].detach().clone(),
        objective=f.detach(),
        landmarks_ndc=lmk.detach(),
        iris_ndc=iris.detach(),
        iterations=iters,
        history=history,
        pose6=new_pose6,
    )


def _targets(model: Any, lmks_ndc: Tensor, iris_ndc: Tensor | None, point_weights: Tensor | None,
             opts: Stage2Options) -> tuple[Tensor, Tensor, bool]:
    """Landmark + iris targets ``[N, L + 10, 2]`` (missing ones zeroed), their per-coordinate weights
    (0 where missing) and whether any iris is there; clear errors for unusable input."""
    dev, dt = model.v_template.device, model.v_template.dtype
    lmks_ndc = torch.as_tensor(lmks_ndc, dtype=dt, device=dev)
    n_lmk = n_landmarks(model)
    if lmks_ndc.ndim != 3 or lmks_ndc.shape[1:] != (n_lmk, 2):
        raise InputError(f"stage 2 needs [N, {n_lmk}, 2] landmarks for this model, got {tuple(lmks_ndc.shape)}")
    if point_weights is None and n_lmk != 68:
        raise InputError(f"stage 2: a model with {n_lmk} landmarks needs point_weights [{n_lmk}]")
    n = lmks_ndc.shape[0]
    if iris_ndc is None:
        iris_ndc = torch.full((n, N_IRIS, 2), float("nan"), dtype=dt, device=dev)
    iris_ndc = torch.as_tensor(iris_ndc, dtype=dt, device=dev).reshape(n, N_IRIS, 2)
    target = torch.cat([lmks_ndc, iris_ndc], dim=1)
    valid = torch.isfinite(target)
    if point_weights is None:  # the reference: means over the 17 jaw and the 51 inner face points
        point_weights = torch.cat([torch.full((N_JAW,), opts.w_contour / N_JAW),
                                   torch.full((N_FACE,), opts.w_lmk / N_FACE)])
    point_weights = torch.as_tensor(point_weights, dtype=dt, device=dev).reshape(n_lmk)
    if not (valid[:, :n_lmk].all(-1) & (point_weights > 0)).any(1).all():
        raise InputError("stage 2: a frame has no finite face landmark")
    w_iris = torch.full((N_IRIS,), opts.w_iris / N_IRIS, dtype=dt, device=dev)
    coeff = torch.cat([point_weights, w_iris])[None, :, None].expand(n, -1, 2) * valid.all(-1, keepdim=True)
    return torch.nan_to_num(target), coeff, bool(valid[:, n_lmk:].any())


def _initial_params(model: Any, init: dict[str, Tensor], layout: _Layout, n: int) -> dict[str, Tensor]:
    """Every model parameter ``[N, .]`` at its start (``init`` or zero; a shared shape at the mean)."""
    dev, dt = model.v_template.device, model.v_template.dtype
    sizes = {"shape": model.n_shape, "expr": model.n_expr, "jaw_pose": 3, "eye_pose": 6, "neck_pose": 3}
    params: dict[str, Tensor] = {}
    for key, size in sizes.items():
        v = init.get(key)
        v = torch.zeros(n, size, dtype=dt, device=dev) if v is None else torch.as_tensor(v, dtype=dt, device=dev)
        if v.ndim == 1:
            v = v[None]
        if v.shape[-1] != size:
            raise InputError(f"stage 2: init[{key!r}] has {v.shape[-1]} values, the model needs {size}")
        params[key] = v.expand(n, size).clone() if v.shape[0] == 1 else v.clone()
    if layout.shape == "shared":
        params["shape"] = params["shape"].mean(0, keepdim=True).expand(n, -1).clone()
    params["head_pose"] = torch.zeros(n, 3, dtype=dt, device=dev)  # the camera carries the rigid motion
    if layout.rigid:
        params["transl"] = torch.zeros(n, 3, dtype=dt, device=dev)
    return params


def _bounds(model: Any, layout: _Layout, params: dict[str, Tensor], hold: bool = False
            ) -> tuple[Tensor | None, Tensor | None]:
    """Box bounds ``[P]`` of the per-frame vector (bounded blendshape weights; None: unbounded;
    ``hold``: the model's :func:`~flame_tracker.fitting.expressions.held_channels` bounded to 0);
    clamps the start expression into them."""
    bounds = getattr(model, "expr_bounds", None)
    if bounds is None:
        return None, None
    dev, dt = model.v_template.device, model.v_template.dtype
    p = layout.n_frame
    lo = torch.full((p,), -float("inf"), dtype=dt, device=dev)
    hi = torch.full((p,), float("inf"), dtype=dt, device=dev)
    lo[: model.n_expr], hi[: model.n_expr] = float(bounds[0]), float(bounds[1])
    if hold:
        held = torch.as_tensor(held_channels(model), device=dev)
        hi[: model.n_expr] = torch.where(held, lo[: model.n_expr], hi[: model.n_expr])
    params["expr"] = torch.minimum(params["expr"].clamp(float(bounds[0]), float(bounds[1])), hi[: model.n_expr])
    return lo, hi


def _run_solver(problem: _Problem, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, int, list[float], Tensor | None]:
    """The options' solver from ``(x, s)``: ``(x, s, iterations, history, residuals)``, the residuals
    at the final point when the solver has them (LM), else None."""
    solver = problem.opts.solver
    if solver == "lm":
        with torch.no_grad():
            x, s, iters, history, r_lm = _solve_lm(problem, x, s)
        return x, s, iters, history, r_lm
    if solver == "adam":
        with torch.enable_grad():
            x, iters, history = _solve_adam(problem, x, s)
        return x, s, iters, history, None
    raise InputError(f"unknown stage-2 solver {solver!r} (use 'lm' or 'adam')")


def fold_rigid(model: torch.nn.Module, params: dict[str, Tensor], pose6: Tensor) -> Tensor:
    """The camera ``pose6 [N, 6]`` that sees the head with ``head_pose`` (about the root joint) and
    ``transl`` applied as the same head with neither (the reference keeps the head at rest).

    The posed head is ``X' = R_h X + b`` with ``b = J0 - R_h J0 + transl`` (``J0``: the root joint of
    the shaped head); the camera ``view = D R^T (X' - t)`` then equals ``D (R_h^T R)^T (X - R_h^T (t - b))``.
    """
    from flame_tracker.camera import matrix_to_rotvec

    rest = {k: params[k] for k in ("shape", "expr") if k in params}
    v = model(**rest).vertices  # zero pose: the shaped rest vertices the joints are regressed from
    j0 = (model.J_regressor[0].to(v.dtype) @ v)  # [N, 3]
    r_h = rotvec_to_matrix(params["head_pose"])
    b = j0 - (r_h @ j0[..., None])[..., 0] + params["transl"]
    r_c = rotvec_to_matrix(pose6[:, :3])
    r_new = r_h.transpose(1, 2) @ r_c
    t_new = (r_h.transpose(1, 2) @ (pose6[:, 3:] - b)[..., None])[..., 0]
    return torch.cat([matrix_to_rotvec(r_new), t_new], dim=1)
