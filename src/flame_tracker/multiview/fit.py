"""One head per timestep and one identity for the whole capture, from the landmarks of every view.

Unknowns: per timestep ``t`` the head's rigid pose in the world (``x_world = R(r_t) x_model + u_t``,
about the model's origin), its expression, jaw (models with a jaw joint) and eyes; one identity
``shape`` for the capture. The cameras are fixed and known (:mod:`.cameras`).

Objective (the reference's stage-2 terms, summed over the views that see the face)::

    E = sum_t sum_c [ w_lmk/51 sum_{k in 17..67} rho(d_tck) + w_iris/10 sum_iris rho(d)
                      + w_contour/17 sum_{k in 0..16, visible} rho(d) ]
        + sum_t [ w_exp |e_t - m_t|^2 + w_exp_l1 sum e_t + e_t^T Q e_t (bounded models) + w_eyes |eyes_t|^2
                  + w_jaw |jaw_t|^2 ]
        + w_shape |shape|^2

with ``d`` the pixel residual divided by half the size of that view's detected face box (the
reference's crop coordinates, one unit per half face), ``rho`` a smoothed L1 (the reference's L1),
``m_t`` MediaPipe's blendshape scores averaged over the views (bounded models; zero otherwise).
A point is used in a view only when the head's surface there faces that camera (a profile view
contributes the half it sees; its far jawline, which the detector slides onto the visible outline,
is dropped). Initialisation: the landmarks triangulated from every view, the mean face aligned to
them by a similarity (whose scale also checks the calibration's unit); one view alone: PnP.
Solver: Levenberg-Marquardt with iteratively reweighted least squares for the L1 term, Jacobians by
forward differences batched over all parameters (one model evaluation per iteration), the shared
shape eliminated by a Schur complement over the per-timestep blocks, bounded expressions held by an
active set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from flame_tracker.fitting.expressions import held_channels, model_coupling
from flame_tracker.multiview.cameras import MultiviewError, Rig
from flame_tracker.multiview.geometry import similarity_transform, triangulate

INNER = slice(17, 68)
CONTOUR = slice(0, 17)


@dataclass(frozen=True)
class MultiviewOptions:
    """Weights and switches of the multi-view fit (defaults: the reference's stage-2 weights)."""

    w_lmk: float = 500.0
    w_iris: float = 500.0
    w_contour: float = 100.0  # the visible jawline (the identity's face width)
    # identity prior: stronger than one photo's 0.1 (the views' detector biases, not a lack of data,
    # limit the shape; on synthetic captures of seeds 10-15: 1.75 mm with 1.0, 1.84 with 0.5, 2.2 with 0.1)
    w_shape: float = 1.0
    w_exp: float | None = None  # None: the model's stage-2 prior (fitting.stage2.expression_priors)
    w_exp_l1: float | None = None
    # named channels (fitting.expressions): left/right and antagonist couplings, held channels;
    # None: the model's stage-2 priors
    w_exp_sym: float | None = None
    w_exp_exclusive: float | None = None
    hold_expr: bool | None = None
    w_eyes: float = 1.0
    w_jaw: float = 1.0
    fit_shape: bool = True
    # centre bounded expressions on MediaPipe's scores: off, as several views pin the expression
    # down better than the scores do (mean |w - w_true| 0.04 without, 0.07 with, synthetic captures)
    blendshape_prior: bool = False
    max_iter: int = 40
    delta: float = 2e-3  # smoothing of the L1 loss (units of half a face box)
    facing_min: float = 0.2  # cosine: a point counts in a view when its surface faces the camera this much
    # a view's weight: (cosine of the face's angle to it) ** view_power; the detector is most
    # accurate from the front (seeds 10-15: 1.75 mm with 4, 1.77 with 2, 1.87 with 1)
    view_power: float = 4.0
    view_points: str = "all"  # with a view table: move "all" 68 points or the "contour" only
    smooth: bool = True  # whole-sequence smoothing (as monocular video)
    # cameras estimated from the face (--cameras estimate): rounds of placing them again against the
    # fit (multiview.estimate.refine_cameras). The tests' rig: the worst camera's landmark error 24 ->
    # 8 px; 6 synthetic subjects: identity 3.04 mm with none, 3.22 with 2 (within their scatter).
    # Cameras that agree with the pictures matter to avatar training
    camera_rounds: int = 2
    # refine against the pictures afterwards (multiview.photometric: photo-consistency between the
    # views); keyframes: the timesteps of its identity solve
    photometric: bool = False
    photometric_keyframes: int = 8


@dataclass
class PointSet:
    """The detector points a fit uses (before the iris): per-point data weights, which ones are the
    face outline (the detector slides them), the nose tip (a view's angle) and the points that place
    the head at first (triangulation / PnP)."""

    weights: np.ndarray  # [P]
    contour: np.ndarray  # [P] bool
    nose: int
    anchors: np.ndarray  # indices

    @classmethod
    def ibug68(cls, opts: MultiviewOptions) -> PointSet:
        """The 68 iBUG points: the reference's ``w_lmk`` mean over the inner 51, ``w_contour`` over the jawline."""
        w = np.zeros(68)
        w[INNER] = opts.w_lmk / 51
        w[CONTOUR] = opts.w_contour / 17
        contour = np.zeros(68, bool)
        contour[CONTOUR] = True
        return cls(w, contour, 30, np.arange(17, 68))

    @classmethod
    def dense(cls, emb, opts: MultiviewOptions) -> PointSet:
        """MediaPipe's 468-point mesh, weighted by how consistently the detector places each point
        (:func:`flame_tracker.fitting.views.dense_weights`: the same totals as the 68 points)."""
        from flame_tracker.detection.layout import FACE_OVAL
        from flame_tracker.fitting.views import dense_weights

        w = dense_weights(emb, opts.w_lmk, opts.w_contour).double().numpy()
        contour = np.zeros(len(w), bool)
        contour[np.asarray(FACE_OVAL)] = True
        return cls(w, contour, 1, np.flatnonzero(~contour))


@dataclass
class MultiviewFit:
    """The fitted capture. Rigid pose: ``x_world = R(rotvec) x_model + transl`` (about the model's origin)."""

    shape: np.ndarray  # [S]
    rotvec: np.ndarray  # [T, 3]
    transl: np.ndarray  # [T, 3]
    expr: np.ndarray  # [T, E]
    jaw_pose: np.ndarray  # [T, 3]
    eye_pose: np.ndarray  # [T, 6]
    valid: np.ndarray  # [T] some view saw the face
    seen: np.ndarray  # [T, C] the view saw the face
    used: np.ndarray  # [T, C, K] points that counted (facing the camera, detected)
    scale_ratio: float  # triangulated face / model's mean face (1 = the calibration's unit is right)
    objective: float
    iterations: int
    history: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def model_to_world(self) -> np.ndarray:
        """``[T, 4, 4]``."""
        from scipy.spatial.transform import Rotation

        m = np.tile(np.eye(4), (len(self.rotvec), 1, 1))
        m[:, :3, :3] = Rotation.from_rotvec(self.rotvec).as_matrix()
        m[:, :3, 3] = self.transl
        return m


# ------------------------------------------------------------------------------------------ layout


class _Layout:
    """Per-timestep parameter vector: rotvec 3, transl 3, expr E, jaw 3 (jaw joint only), eyes 6."""

    def __init__(self, model) -> None:
        self.E = model.n_expr
        self.jaw = bool(getattr(model, "has_jaw_joint", False))
        self.S = model.n_shape
        self.e = slice(6, 6 + self.E)
        self.j = slice(6 + self.E, 6 + self.E + (3 if self.jaw else 0))
        self.y = slice(self.j.stop, self.j.stop + 6)
        self.P = self.y.stop


def _rotvec_to_matrix(rv: torch.Tensor) -> torch.Tensor:
    from flame_tracker.camera import rotvec_to_matrix

    return rotvec_to_matrix(rv)


class _Problem:
    """Residuals of every timestep in every view, as a batched function of the parameters."""

    def __init__(self, model, rig: Rig, targets: np.ndarray, weights: np.ndarray, half: np.ndarray,
                 expr_mean: np.ndarray, opts: MultiviewOptions) -> None:
        dt = torch.float64
        self.model, self.lay, self.opts = model, _Layout(model), opts
        self.K = torch.as_tensor(np.stack([c.K for c in rig.cameras]), dtype=dt)  # [C, 3, 3]
        self.R = torch.as_tensor(np.stack([c.R for c in rig.cameras]), dtype=dt)
        self.t = torch.as_tensor(np.stack([c.t for c in rig.cameras]), dtype=dt)
        self.y = torch.as_tensor(np.nan_to_num(targets), dtype=dt)  # [T, C, K, 2]
        self.w = torch.as_tensor(weights, dtype=dt)  # [T, C, K] data weights (0: not used)
        self.half = torch.as_tensor(half, dtype=dt)  # [T, C]
        self.m = torch.as_tensor(expr_mean, dtype=dt)  # [T, E]
        assert opts.w_exp is not None and opts.w_exp_l1 is not None  # resolved: fitting.stage2.with_model_priors
        self.w_exp, self.w_l1 = opts.w_exp, opts.w_exp_l1
        self.bounds = getattr(model, "expr_bounds", None)
        # e^T Q e over the named channels' pairs, and the channels held at 0 (as stage 2)
        q = model_coupling(model, opts) if self.bounds is not None else None
        self.q = None if q is None else torch.as_tensor(q, dtype=dt)
        self.held = torch.as_tensor(held_channels(model) & bool(opts.hold_expr) & (self.bounds is not None))
        self.n_pts = targets.shape[2]
        # [T, C, K, 3] model-space offsets from the static points to where the detector puts them in
        # each view (the view table, fitting.views); zero without one
        self.off = torch.zeros(*targets.shape[:3], 3, dtype=dt)

    def points(self, x: torch.Tensor, s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """World points ``[N, C, K, 3]`` as each view's detector means them (68 landmarks, then iris
        when the fit uses them)."""
        lay = self.lay
        jaw = x[:, lay.j] if lay.jaw else None
        pts = model_points(self.model, self.n_pts, shape=s, expr=x[:, lay.e], jaw_pose=jaw, eye_pose=x[:, lay.y])
        pts = pts[:, None] + self.off[rows]
        return torch.einsum("nij,nckj->ncki", _rotvec_to_matrix(x[:, :3]), pts) + x[:, None, None, 3:6]

    def pixels(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pixels [N, C, K, 2], camera-space points [N, C, K, 3])`` of world points ``[N, C, K, 3]``."""
        cam = torch.einsum("cij,nckj->ncki", self.R, pts) + self.t[None, :, None]
        f = self.K[:, [0, 1], [0, 1]][None, :, None]
        pp = self.K[:, :2, 2][None, :, None]
        return cam[..., :2] / cam[..., 2:].clamp_min(1e-6) * f + pp, cam

    def residuals(self, x: torch.Tensor, s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Normalised residuals ``[N, C, K, 2]`` of timesteps ``rows`` (one per row of ``x``)."""
        px, _ = self.pixels(self.points(x, s, rows))
        return (px - self.y[rows]) / self.half[rows][:, :, None, None]

    # ------------------------------------------------------------------ objective pieces
    def rho(self, d: torch.Tensor) -> torch.Tensor:
        delta = self.opts.delta
        return torch.sqrt(d * d + delta * delta) - delta

    def prior(self, x: torch.Tensor, s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Per-timestep prior ``[N]`` (the shape's is added once by :meth:`objective`)."""
        lay, o = self.lay, self.opts
        e = x[:, lay.e]
        p = self.w_exp * ((e - self.m[rows]) ** 2).sum(1) + o.w_eyes * (x[:, lay.y] ** 2).sum(1)
        if self.bounds is not None:
            p = p + self.w_l1 * e.sum(1)
        if self.q is not None:
            p = p + ((e @ self.q) * e).sum(1)
        if lay.jaw:
            p = p + o.w_jaw * (x[:, lay.j] ** 2).sum(1)
        return p

    def objective(self, x: torch.Tensor, s: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        d = self.residuals(x, s.expand(len(x), -1), rows)
        data = (self.w[rows][..., None] * self.rho(d)).sum((1, 2, 3))
        return data.sum() + self.prior(x, s.expand(len(x), -1), rows).sum() + self.opts.w_shape * (s * s).sum()


# ------------------------------------------------------------------------------------------ solver


def _jacobians(prob: _Problem, x: torch.Tensor, s: torch.Tensor, rows: torch.Tensor, with_shape: bool,
               eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Residuals ``r [T, M]`` and forward-difference Jacobians ``Jx [T, M, P]``, ``Js [T, M, S]``
    (one batched model evaluation over every perturbed parameter)."""
    T, P = x.shape
    S = s.shape[-1] if with_shape else 0
    xs = x[None].repeat(1 + P + S, 1, 1)  # [1+P+S, T, P]
    idx = torch.arange(P)
    xs[1 + idx, :, idx] += eps
    ss = s.expand(1 + P + S, T, -1).clone()  # the shared shape [S], one copy per row
    if S:
        sidx = torch.arange(S)
        ss[1 + P + sidx, :, sidx] += eps
    r = prob.residuals(xs.reshape(-1, P), ss.reshape(-1, ss.shape[-1]), rows.repeat(1 + P + S))
    r = r.reshape(1 + P + S, T, -1)
    J = (r[1:] - r[:1]) / eps  # [P+S, T, M]
    return r[0], J[:P].permute(1, 2, 0), (J[P:].permute(1, 2, 0) if S else None)


def _solve(prob: _Problem, x: torch.Tensor, s: torch.Tensor, rows: torch.Tensor, opts: MultiviewOptions
           ) -> tuple[torch.Tensor, torch.Tensor, int, list[float]]:
    lay = prob.lay
    T, P = x.shape
    S = s.shape[0]
    fit_s = opts.fit_shape and S > 0
    lo, hi = prob.bounds if prob.bounds is not None else (-math.inf, math.inf)
    bounded = torch.zeros(P, dtype=torch.bool)
    if prob.bounds is not None:
        bounded[lay.e] = True
    if bool(prob.held.any()):  # the held channels start (and stay) at 0
        x = x.clone()
        x[:, lay.e] = x[:, lay.e].masked_fill(prob.held, 0.0)
    cost = prob.objective(x, s, rows).item()
    history, lam, it = [cost], 1e-3, 0
    eye_p = torch.eye(P, dtype=x.dtype)
    for it in range(1, opts.max_iter + 1):
        # chunks of timesteps keep the Jacobian batch small on long captures
        gx, Hx = torch.zeros(T, P, dtype=x.dtype), torch.zeros(T, P, P, dtype=x.dtype)
        gs, Hs = torch.zeros(S, dtype=x.dtype), torch.zeros(S, S, dtype=x.dtype)
        Hxs = torch.zeros(T, P, S if fit_s else 0, dtype=x.dtype)
        chunk = max(1, 4096 // (1 + P + S))
        for a in range(0, T, chunk):
            sl = slice(a, min(T, a + chunk))
            r, Jx, Js = _jacobians(prob, x[sl], s, rows[sl], fit_s)
            w = prob.w[rows[sl]][..., None].expand(-1, -1, -1, 2).reshape(r.shape)
            W = w / torch.sqrt(r * r + opts.delta ** 2)  # IRLS weights of the smoothed L1
            gx[sl] = torch.einsum("tmp,tm->tp", Jx, W * r)
            Hx[sl] = torch.einsum("tmp,tmq->tpq", Jx * W[..., None], Jx)
            if Js is not None:
                gs += torch.einsum("tms,tm->s", Js, W * r)
                Hs += torch.einsum("tms,tmq->sq", Js * W[..., None], Js)
                Hxs[sl] = torch.einsum("tmp,tms->tps", Jx * W[..., None], Js)
        # priors (exact gradients and Hessians)
        e = x[:, lay.e]
        gx[:, lay.e] += 2 * prob.w_exp * (e - prob.m[rows]) + (prob.w_l1 if prob.bounds is not None else 0.0)
        Hx[:, lay.e, lay.e] += 2 * prob.w_exp * torch.eye(lay.E, dtype=x.dtype)
        if prob.q is not None:
            gx[:, lay.e] += 2 * e @ prob.q
            Hx[:, lay.e, lay.e] += 2 * prob.q
        gx[:, lay.y] += 2 * opts.w_eyes * x[:, lay.y]
        Hx[:, lay.y, lay.y] += 2 * opts.w_eyes * torch.eye(6, dtype=x.dtype)
        if lay.jaw:
            gx[:, lay.j] += 2 * opts.w_jaw * x[:, lay.j]
            Hx[:, lay.j, lay.j] += 2 * opts.w_jaw * torch.eye(3, dtype=x.dtype)
        if fit_s:
            gs += 2 * opts.w_shape * s
            Hs += 2 * opts.w_shape * torch.eye(S, dtype=x.dtype)
        # active set: a bounded variable on its bound whose gradient pushes outwards is held
        held = bounded & (((x <= lo + 1e-9) & (gx > 0)) | ((x >= hi - 1e-9) & (gx < 0)))
        held[:, lay.e] |= prob.held  # the held channels (at 0 from the start) never move
        free = (~held).to(x.dtype)
        gx = gx * free
        mask2 = free[:, :, None] * free[:, None, :]
        Hx = Hx * mask2 + torch.diag_embed(1 - free)
        if fit_s:
            Hxs = Hxs * free[:, :, None]
        improved = False
        for _ in range(8):
            A = Hx + lam * torch.diag_embed(torch.diagonal(Hx, dim1=1, dim2=2).clamp_min(1e-9)) + 1e-12 * eye_p
            L = torch.linalg.cholesky(A)
            if fit_s:
                Ainv_B = torch.cholesky_solve(Hxs, L)  # [T, P, S]
                Ainv_g = torch.cholesky_solve(gx[..., None], L)[..., 0]
                Hs_d = Hs + lam * torch.diag(torch.diagonal(Hs).clamp_min(1e-9))
                schur = Hs_d - torch.einsum("tps,tpq->sq", Hxs, Ainv_B)
                rhs = gs - torch.einsum("tps,tp->s", Hxs, Ainv_g)
                ds = -torch.linalg.solve(schur, rhs)
                dx = -(Ainv_g + torch.einsum("tps,s->tp", Ainv_B, ds))
            else:
                ds = torch.zeros_like(s)
                dx = -torch.cholesky_solve(gx[..., None], L)[..., 0]
            xn = x + dx * free
            if prob.bounds is not None:
                xn[:, lay.e] = xn[:, lay.e].clamp(lo, hi)
            sn = s + ds
            c = prob.objective(xn, sn, rows).item()
            if c < cost:
                x, s, improved = xn, sn, True
                gain = (cost - c) / max(cost, 1e-12)
                cost = c
                lam = max(lam / 3, 1e-7)
                break
            lam *= 10
        history.append(cost)
        if not improved or gain < 1e-7:
            break
    return x, s, it, history


# ------------------------------------------------------------------------------------------ set-up


def _facing(model, x: np.ndarray, shape: np.ndarray, rig: Rig, n_pts: int) -> np.ndarray:
    """``[T, C, K]`` cosine between each point's outward direction (from a point 7 cm behind the
    face centre, on the neutral face of identity ``shape``) and the direction to each camera."""
    with torch.no_grad():
        neutral = model_points(model, n_pts, shape=torch.as_tensor(shape, dtype=model.dtype)[None])
    pts = neutral[0].double().cpu().numpy()
    centre = pts[: model.n_lmk].mean(0) - np.array([0.0, 0.0, 0.07])
    normal = pts - centre
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    from scipy.spatial.transform import Rotation

    R = Rotation.from_rotvec(x[:, :3]).as_matrix()  # [T, 3, 3]
    world = np.einsum("tij,kj->tki", R, pts) + x[:, None, 3:6]
    n_world = np.einsum("tij,kj->tki", R, normal)
    centres = np.stack([c.centre for c in rig.cameras])  # [C, 3]
    to_cam = centres[None, :, None] - world[:, None]  # [T, C, K, 3]
    to_cam /= np.linalg.norm(to_cam, axis=-1, keepdims=True)
    return np.einsum("tcki,tki->tck", to_cam, n_world)


def view_offsets(views, model, x: np.ndarray, shape: np.ndarray, lay: _Layout, rig: Rig, n_pts: int,
                 contour: np.ndarray | None = None) -> np.ndarray:
    """``[T, C, K, 3]``: per timestep and view, the model-space move from the static points to the
    view table's points at that view's yaw (the detector's convention there; iris: none); with
    ``contour`` (a mask) only those points move."""
    from flame_tracker.model.embedding import view_yaw_deg

    T, C = len(x), len(rig)
    dt = views.static_bary.dtype
    params = {"shape": torch.as_tensor(shape, dtype=dt)[None].expand(T, -1),
              "expr": torch.as_tensor(x[:, lay.e], dtype=dt)}
    if lay.jaw:
        params["jaw_pose"] = torch.as_tensor(x[:, lay.j], dtype=dt)
    with torch.no_grad():
        static, _ = views(params, None)  # [T, P, 3]
        from scipy.spatial.transform import Rotation

        R_h = Rotation.from_rotvec(x[:, :3]).as_matrix()
        Rc = np.stack([c.R for c in rig.cameras])
        rot_cv = np.einsum("cij,tjk->tcik", Rc, R_h)  # model -> each camera
        centre_w = np.einsum("tij,tj->ti", R_h, static.mean(1).double().numpy()) + x[:, 3:6]
        centre_cv = np.einsum("cij,tj->tci", Rc, centre_w) + np.stack([c.t for c in rig.cameras])[None]
        yaw = view_yaw_deg(torch.as_tensor(rot_cv), torch.as_tensor(centre_cv))  # [T, C]
        rep = {k: v.repeat_interleave(C, 0) for k, v in params.items()}
        st, viewed = views(rep, yaw.reshape(-1).to(dt))
    n = st.shape[1]
    off = np.zeros((T, C, n_pts, 3))
    off[:, :, :n] = (viewed - st).double().numpy().reshape(T, C, n, 3)
    if contour is not None:
        off[:, :, :n][:, :, ~contour] = 0.0
    return off


def model_points(model, n_pts: int, **params) -> torch.Tensor:
    """``[N, n_pts, 3]``: the model's landmarks for ``params``, then its iris points when ``n_pts``
    counts them too (the fitted point set)."""
    out = model.landmarks(**params)
    return out.landmarks if n_pts == out.landmarks.shape[1] else torch.cat([out.landmarks, out.iris], 1)


def _mean_points(model, n_pts: int) -> np.ndarray:
    with torch.no_grad():
        return model_points(model, n_pts)[0].double().cpu().numpy()


def initial_poses(model, rig: Rig, lmks: np.ndarray, seen: np.ndarray, anchors: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """Per timestep ``[T, 6]`` (rotvec, translation) from the triangulated ``anchors`` points of
    ``lmks [T, C, P, 2]`` (PnP with one view), whether it could be placed ``[T]``, and the median
    triangulated-to-model scale."""
    import cv2
    from scipy.spatial.transform import Rotation

    T, C = seen.shape
    anchors = np.arange(17, 68) if anchors is None else anchors
    mean_pts = _mean_points(model, lmks.shape[2])[anchors]
    P = np.stack([c.P for c in rig.cameras])
    out, ok, scales = np.zeros((T, 6)), np.zeros(T, bool), []
    for t in range(T):
        views = np.flatnonzero(seen[t])
        if len(views) >= 2:
            X = triangulate(lmks[t, views][:, anchors], P[views])
            good = np.isfinite(X).all(1)
            if good.sum() >= 6:
                s, R, u = similarity_transform(mean_pts[good], X[good])
                scales.append(s)
                # the rigid part with the model's own size: centroids matched
                u = X[good].mean(0) - R @ mean_pts[good].mean(0)
                out[t] = np.concatenate([Rotation.from_matrix(R).as_rotvec(), u])
                ok[t] = True
                continue
        best = None  # one view: PnP (SQPnP, global), in every view that sees the face; the head must be
        for c in views:  # in front of the camera and face it; the lowest reprojection error wins
            cam = rig.cameras[c]
            img = np.ascontiguousarray(lmks[t, c, anchors] - 0.5)
            good, rvec, tvec = cv2.solvePnP(mean_pts, img, cam.K_cv, None, flags=cv2.SOLVEPNP_SQPNP)
            if not good:
                continue
            Rm = cv2.Rodrigues(rvec)[0]
            x_cam = mean_pts @ Rm.T + tvec[:, 0]
            # behind the camera, or turned away from it (the model's +z comes out of the face)
            if (x_cam[:, 2] <= 0).any() or Rm[2, 2] > 0.3:
                continue
            err = float(np.linalg.norm(cv2.projectPoints(mean_pts, rvec, tvec, cam.K_cv, None)[0][:, 0] - img,
                                       axis=1).mean())
            if best is None or err < best[0]:
                best = (err, cam.R.T @ Rm, cam.R.T @ (tvec[:, 0] - cam.t))  # model -> world
        if best is not None:
            out[t] = np.concatenate([Rotation.from_matrix(best[1]).as_rotvec(), best[2]])
            ok[t] = True
    scale = float(np.median(scales)) if scales else 1.0
    return out, ok, scale


#: A head this many times bigger or smaller than the model's is a calibration in the wrong unit:
#: the fit stops (mm read as m is 1000x, cm 100x, inches 40x); between 3x and this, a warning.
UNIT_MISTAKE = 10.0


def scale_note(ratio: float, unit: str) -> str | None:
    """A warning when the calibration makes the head implausibly big or small (unit mistakes)."""
    if 1 / 3 < ratio < 3:
        return None
    from flame_tracker.multiview.cameras import UNITS

    # the unit that would bring the ratio to 1: its metres per unit = ours / ratio
    guess = min(UNITS, key=lambda u: abs(math.log(UNITS[u]) - math.log(UNITS[unit] / ratio)))
    return (f"the calibration makes the head {ratio:.3g}x the size of a human head (triangulated landmarks vs the "
            f"model); its translations are probably not in {unit}: try --unit {guess}")


def fit_multiview(model, rig: Rig, lmks: np.ndarray, seen: np.ndarray, *, iris: np.ndarray | None = None,
                  times: np.ndarray | None = None, blendshapes: np.ndarray | None = None,
                  blendshape_names: tuple[str, ...] = (), options: MultiviewOptions | None = None,
                  views=None, points: PointSet | None = None) -> MultiviewFit:
    """Fit one head per timestep and one identity to ``lmks [T, C, P, 2]`` (pixels as each camera
    recorded them; undistorted here) seen in ``seen [T, C]``: the 68 iBUG points, or with ``points``
    (:meth:`PointSet.dense`) and a model whose landmarks are that set, MediaPipe's dense mesh;
    ``iris [T, C, 10, 2]`` optional;
    ``blendshapes [T, C, 52]`` MediaPipe's scores (a prior for bounded models); ``views``: a
    :class:`~flame_tracker.model.embedding.ViewPoints` of the detector's view table, to fit each
    view's points where the detector puts them at that view's angle."""
    from flame_tracker.fitting.expressions import mediapipe_prior
    from flame_tracker.fitting.stage2 import with_model_priors

    opts = options or MultiviewOptions()
    lmks = np.asarray(lmks, np.float64)
    T, C = lmks.shape[:2]
    if C != len(rig):
        raise MultiviewError(f"landmarks of {C} views for a rig of {len(rig)} cameras")
    seen = np.asarray(seen, bool) & np.isfinite(lmks).all((-1, -2))
    if not seen.any():
        raise MultiviewError("no camera saw a face in any frame: check the frames and the face detector")
    und = np.stack([rig.cameras[c].undistort(lmks[:, c]) for c in range(C)], 1)
    use_iris = iris is not None and getattr(model, "iris_idx", None) is not None
    if use_iris:
        iris_u = np.stack([rig.cameras[c].undistort(np.asarray(iris, np.float64)[:, c]) for c in range(C)], 1)
        targets = np.concatenate([und, iris_u], 2)
    else:
        targets = und
    K = targets.shape[2]
    pset = points or PointSet.ibug68(opts)
    init, placed, ratio = initial_poses(model, rig, und, seen, pset.anchors)
    note = scale_note(ratio, rig.unit)
    if note and not 1 / UNIT_MISTAKE < ratio < UNIT_MISTAKE:  # no head: a unit mistake, not a person
        raise MultiviewError(note)
    notes = [note] if note else []
    valid = placed
    rows = np.flatnonzero(valid)
    if len(rows) == 0:
        raise MultiviewError("the face could not be placed in any frame (no view pair or PnP solution)")
    # half the detected face box's longer side, per view (1 where unseen: those have no weight)
    filled = np.where(seen[..., None, None], und, 0.0)
    half = np.where(seen, 0.5 * np.ptp(filled, axis=2).max(-1), 1.0)
    # data weights: inner points, iris, contour; gated by detection and by facing the camera
    n_pts = und.shape[2]
    base = np.zeros(K)
    base[:n_pts] = pset.weights
    if use_iris:
        base[n_pts:] = opts.w_iris / 10
    finite = np.isfinite(targets).all(-1)
    lay = _Layout(model)
    opts = with_model_priors(opts, model)
    expr_mean = np.zeros((T, lay.E))
    if opts.blendshape_prior and blendshapes is not None and getattr(model, "expr_bounds", None) is not None:
        scores = mediapipe_prior(getattr(model, "expr_names", None), blendshape_names,
                                       np.nan_to_num(np.asarray(blendshapes).reshape(T * C, -1)))
        if scores is not None:
            mp = scores.double().numpy().reshape(T, C, -1)
            cnt = seen.sum(1, keepdims=True).clip(1)
            expr_mean = (mp * seen[..., None]).sum(1) / cnt
    x0 = np.zeros((T, lay.P))
    x0[:, :6] = init
    x0[:, lay.e] = expr_mean
    # the model in float64 for the forward differences (a copy; the caller's model is untouched)
    import copy

    m64 = copy.deepcopy(model).double() if model.dtype != torch.float64 else model
    shape = np.zeros(lay.S)
    x, s_t = torch.as_tensor(x0[rows]), torch.as_tensor(shape)
    history, iterations = [], 0
    for _round in range(2):  # visibility from the current pose, then the fit; twice (poses move)
        facing = _facing(m64, x.numpy() if _round else x0[rows], s_t.numpy(), rig, K)
        thr = np.full(K, opts.facing_min)
        thr[:n_pts][pset.contour] = max(opts.facing_min, 0.35)  # the far outline goes first (the detector slides it)
        used = seen[rows][..., None] & finite[rows] & (facing > thr)
        # the detector is most reliable seen from the front: a view's weight follows how squarely
        # the face (nose tip) faces it
        view = np.clip(facing[..., pset.nose:pset.nose + 1], 0.0, 1.0) ** opts.view_power
        weights = base[None, None] * used * view
        prob = _Problem(m64, rig, targets[rows], weights, half[rows], expr_mean[rows], opts)
        if views is not None:
            xr = x.numpy() if _round else x0[rows]
            prob.off = torch.as_tensor(view_offsets(views, m64, xr, s_t.numpy(), lay, rig, K,
                                                    pset.contour if opts.view_points == "contour" else None))
        x, s_t, it, hist = _solve(prob, x, s_t, torch.arange(len(rows)), opts)
        history += hist
        iterations += it
    used_all = np.zeros((T, C, K), bool)
    used_all[rows] = used
    out = x0.copy()
    out[rows] = x.numpy()
    fit = MultiviewFit(shape=s_t.numpy().copy(), rotvec=out[:, :3], transl=out[:, 3:6], expr=out[:, lay.e],
                       jaw_pose=out[:, lay.j] if lay.jaw else np.zeros((T, 3)), eye_pose=out[:, lay.y],
                       valid=valid, seen=seen, used=used_all, scale_ratio=ratio, objective=history[-1],
                       iterations=iterations, history=history, notes=notes)
    if opts.smooth and T > 2:
        fit = smooth(fit, times if times is not None else np.arange(T, dtype=np.float64), model)
    return fit


def smooth(fit: MultiviewFit, times: np.ndarray, model=None) -> MultiviewFit:
    """Whole-sequence smoothing of the head's world pose, expression, jaw and eyes (the monocular
    video tracker's filter and cut-offs; the expression clipped to ``model``'s range, when given);
    timesteps without a face are filled in."""
    from dataclasses import replace

    from flame_tracker.video.track import TrackOptions, model_expr_bounds, smooth_fits

    expr_bounds = None if model is None else model_expr_bounds(model)

    raw = {"pose6": np.concatenate([fit.rotvec, fit.transl], 1), "expr": fit.expr, "jaw_pose": fit.jaw_pose,
           "eye_pose": fit.eye_pose}
    sm, covered = smooth_fits(raw, fit.valid, np.asarray(times, np.float64), TrackOptions(), expr_bounds=expr_bounds)
    # timesteps the smoother did not reach (before the first face, after the last, long gaps) keep
    # their unsmoothed values and stay invalid
    keep = ~np.asarray(covered, bool)
    for k in sm:
        sm[k] = np.where(keep[:, None], raw[k], sm[k])
    return replace(fit, rotvec=sm["pose6"][:, :3], transl=sm["pose6"][:, 3:], expr=sm["expr"],
                   jaw_pose=sm["jaw_pose"], eye_pose=sm["eye_pose"], valid=fit.valid & np.asarray(covered, bool))


__all__ = ["MultiviewOptions", "MultiviewFit", "PointSet", "fit_multiview", "initial_poses", "scale_note", "smooth"]
