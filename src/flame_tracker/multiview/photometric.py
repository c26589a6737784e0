"""Photometric refinement of a multi-view fit: photo-consistency between the views
(``flame-tracker multiview --photometric``).

The landmark fit (:mod:`flame_tracker.multiview.fit`) is limited by where the detector puts its
points in each view. The pictures say more: a point of the face seen by several cameras at the same
time has the same colour in each of them (skin is close to Lambertian, and the light does not move
between the cameras of one timestep), so a head in the wrong place or of the wrong shape samples
different colours in different views. This refinement samples every view's picture at the projected
face vertices and moves the identity and each timestep's head pose, expression and jaw so that the
views agree, vertex by vertex (a robust distance to the mean over the views that see the vertex),
with the landmark fit's terms keeping it in place:

* no albedo and no light to estimate: the colour of a vertex is whatever the views agree on, so
  neither can soak up a misplaced head (an albedo estimated at a wrong pose does; measured,
  ``docs/multiview.md``);
* the gradient comes from the pictures' own gradients (bilinear sampling), coarse to fine over
  blurred copies of the pictures, so that edges (eyes, brows, lips, nostrils, the hairline) pull from
  a few pixels away;
* visibility (a vertex counts in a view when a triangle of it is visible there and it faces the
  camera) is recomputed at each level and every few steps;
* each view's colours are scaled per channel by the gain that best matches them to the other views
  (cameras differ in exposure and white balance).

Each view is cut to a square around its face (:func:`view_crops`); the cameras stay fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation
from torch import Tensor

from flame_tracker.errors import InputError
from flame_tracker.model.head import HeadModel
from flame_tracker.multiview.cameras import Rig
from flame_tracker.multiview.fit import MultiviewFit

# The pictures of the given timesteps, ``[len(steps)][C]`` RGB uint8 (None: no picture then).
FrameSource = Callable[[Sequence[int]], Sequence[Sequence[np.ndarray | None]]]


@dataclass(frozen=True)
class PhotoconsistencyOptions:
    """Weights, levels and steps of the refinement."""

    resolution: int = 256  # side of each view's face crop
    blur_px: tuple[float, ...] = (4.0, 2.0, 1.0)  # coarse to fine (Gaussian sigma, crop pixels)
    steps_per_level: int = 40
    w_photo: float = 1.0
    w_lmk: float = 0.1  # the landmark fit's points (normalised by half the face box)
    # the identity's prior towards the mean face: off. The photo term is small (colour distances of
    # a few hundredths), so even 1e-3 pulls the identity back towards the mean face, and the landmark
    # fit's identity is better than that (synthetic captures, seeds 10-12: 1.77 mm with 1e-3, 2.24 with
    # 1e-2, 1.43 with 0); the landmark term and the small steps keep it near the landmark fit
    w_shape: float = 0.0
    w_expr: float = 1e-3  # distance of the expression from the landmark fit's
    charbonnier: float = 0.02  # of the colour distance (0..1 colours)
    view_gains: bool = True  # per-view colour gains (cameras' exposure and white balance differ)
    facing_min: float = 0.3  # cosine between a vertex normal and the ray to the camera
    visibility_every: int = 10
    lr_shape: float = 0.01  # seeds 10-12: 1.41 mm with 0.005, 1.36 with 0.01, 1.73 with 0.05
    lr_rot: float = 0.002  # radians
    lr_trans: float = 0.0005  # metres
    lr_expr: float = 0.01
    lr_jaw: float = 0.002
    fit_shape: bool = True
    cpu_threads: int | None = 1


@dataclass
class ViewCrops:
    """Every (timestep, camera) view with a face, cut to a square around it."""

    step: Tensor  # [N] position among the refined timesteps
    camera: Tensor  # [N]
    images: list[Tensor]  # per blur level: [N, 3, R, R] float 0..1
    K: Tensor  # [N, 3, 3] intrinsics in crop pixels
    lmks: Tensor  # [N, 68, 2] detections in crop pixels (NaN: none)
    half: Tensor  # [N] half the detected face box (crop pixels)


def view_crops(rig: Rig, images: Sequence[Sequence[np.ndarray | None]], lmks: np.ndarray, seen: np.ndarray,
               opts: PhotoconsistencyOptions) -> ViewCrops:
    """The views of timesteps ``images [S][C]`` (detections ``lmks [S, C, 68, 2]``, ``seen [S, C]``)
    cut to squares of ``opts.resolution``² around the face, lens distortion removed, with each
    crop's intrinsics; one blurred copy per level."""
    import cv2

    from flame_tracker.io.images import crop_resize
    from flame_tracker.tracker import fitting_crop

    res = opts.resolution
    steps, cams, crops, Ks, pts, halves = [], [], [], [], [], []
    for s, row in enumerate(images):
        for c, img in enumerate(row):
            if img is None or not seen[s, c] or not np.isfinite(lmks[s, c]).all():
                continue
            cam = rig.cameras[c]
            if cam.dist is not None and np.any(cam.dist):
                img = cv2.undistort(img, cam.K_cv, cam.dist)
            p = cam.undistort(np.asarray(lmks[s, c], np.float64))
            box = fitting_crop(p)
            x0, y0, side = float(box.x0), float(box.y0), float(box.size)
            crops.append(crop_resize(np.asarray(img), (x0, y0, side, side), (res, res))[0])
            k = res / side  # original pixels -> crop pixels (pixel-corner convention)
            Ks.append(np.array([[cam.K[0, 0] * k, 0.0, (cam.K[0, 2] - x0) * k],
                                [0.0, cam.K[1, 1] * k, (cam.K[1, 2] - y0) * k], [0.0, 0.0, 1.0]]))
            q = (p - [x0, y0]) * k
            pts.append(q)
            halves.append(0.5 * np.ptp(q, axis=0).max())
            steps.append(s)
            cams.append(c)
    if not steps:
        raise InputError("multi-view photometric refinement: no view saw the face")
    levels = []
    for sigma in opts.blur_px:
        blurred = [cv2.GaussianBlur(im, (0, 0), sigma) if sigma > 0 else im for im in crops]
        levels.append(torch.as_tensor(np.stack(blurred)).permute(0, 3, 1, 2).float() / 255.0)
    return ViewCrops(torch.as_tensor(steps), torch.as_tensor(cams), levels, torch.as_tensor(np.stack(Ks)).float(),
                     torch.as_tensor(np.stack(pts)).float(), torch.as_tensor(halves).float())


class Photoconsistency:
    """The refinement of ``S`` timesteps seen in the views of :class:`ViewCrops` (module docstring)."""

    def __init__(self, model: HeadModel, fit_model: HeadModel, rig: Rig, views: ViewCrops, heads: dict[str, np.ndarray],
                 opts: PhotoconsistencyOptions, region: np.ndarray) -> None:
        self.model, self.fit_model, self.opts = model, fit_model, opts
        dt, dev = self.dt, self.dev = model.v_template.dtype, model.v_template.device
        self.views = views = replace(views, step=views.step.to(dev), camera=views.camera.to(dev),
                                     images=[im.to(dev, dt) for im in views.images], K=views.K.to(dev, dt),
                                     lmks=views.lmks.to(dev, dt), half=views.half.to(dev, dt))
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=dt, device=dev)  # noqa: E731
        self.R0 = f32(Rotation.from_rotvec(heads["rotvec"]).as_matrix())  # [S, 3, 3] model -> world
        self.T0 = f32(heads["transl"])
        self.shape0 = f32(heads["shape"]).reshape(1, -1)
        self.expr0, self.jaw0, self.eye = f32(heads["expr"]), f32(heads["jaw_pose"]), f32(heads["eye_pose"])
        S = len(self.T0)
        self.Rc = f32(np.stack([c.R for c in rig.cameras]))[views.camera]  # [N, 3, 3]
        self.tc = f32(np.stack([c.t for c in rig.cameras]))[views.camera]
        from flame_tracker.fitting.photometric import SubMesh

        self.region = torch.as_tensor(np.flatnonzero(region), device=dev)
        # the steps skin only the face-region vertices (a half of the ICT head)
        self.sub = SubMesh(model, model.faces[:0], extra=self.region)
        self.d_shape = torch.zeros_like(self.shape0, requires_grad=opts.fit_shape)
        self.d_rot = torch.zeros(S, 3, dtype=dt, device=dev, requires_grad=True)
        self.d_trans = torch.zeros(S, 3, dtype=dt, device=dev, requires_grad=True)
        self.d_expr = torch.zeros_like(self.expr0, requires_grad=True)
        self.has_jaw = bool(getattr(model, "has_jaw_joint", True))
        self.d_jaw = torch.zeros(S, 3, dtype=dt, device=dev, requires_grad=self.has_jaw)
        self.bounds = getattr(model, "expr_bounds", None)
        # visibility rasterises the face region's triangles (and the eyeballs', which hide the
        # sockets behind them): what can hide a face-region vertex from a camera in front of it
        from flame_tracker.evaluation.metrics import eyeball_mask

        faces = model.faces.to(dev)
        keep = torch.as_tensor(region | eyeball_mask(model), device=dev)
        self.faces = faces[keep[faces].all(1)]
        self.weights: Tensor | None = None  # [N, Vr] visibility x facing
        self.den = self.both = torch.zeros(0)  # set with the weights (visibility)
        self.views_per_step = torch.bincount(views.step, minlength=S).clamp_min(1).to(dt)
        self.gains: Tensor | None = None  # [N, 3] per-view colour gains (view_gains)

    # ------------------------------------------------------------------ geometry
    def params(self) -> dict[str, Tensor]:
        expr = self.expr0 + self.d_expr
        if self.bounds is not None:
            expr = expr.clamp(float(self.bounds[0]), float(self.bounds[1]))
        S = len(self.T0)
        return dict(shape=(self.shape0 + self.d_shape).expand(S, -1), expr=expr, jaw_pose=self.jaw0 + self.d_jaw,
                    eye_pose=self.eye)

    def head(self) -> tuple[Tensor, Tensor]:
        """Model -> world rotation ``[S, 3, 3]`` and translation ``[S, 3]`` of each timestep."""
        from flame_tracker.camera import rotvec_to_matrix

        return rotvec_to_matrix(self.d_rot) @ self.R0, self.T0 + self.d_trans

    def to_camera(self, points: Tensor) -> Tensor:
        """Model-space points of each timestep ``[S, P, 3]`` -> each view's camera space ``[N, P, 3]``."""
        rot, transl = self.head()
        st = self.views.step
        world = points[st] @ rot[st].transpose(1, 2) + transl[st][:, None]
        return world @ self.Rc.transpose(1, 2) + self.tc[:, None]

    def to_pixels(self, cam: Tensor) -> Tensor:
        K = self.views.K
        xy = cam[..., :2] / cam[..., 2:].clamp_min(1e-4)
        return xy * K[:, None, [0, 1], [0, 1]] + K[:, None, :2, 2]

    @torch.no_grad()
    def visibility(self) -> None:
        """Per view and region vertex: the facing cosine where a triangle of the vertex is visible."""
        from flame_tracker.rendering.differentiable import vertex_normals
        from flame_tracker.rendering.raster import rasterize

        res = self.opts.resolution
        verts = self.model(**self.params()).vertices
        cam = self.to_camera(verts)
        px = torch.cat([self.to_pixels(cam), cam[..., 2:]], -1)
        frags = rasterize(px, self.faces, res, res, cull_backfaces=True)
        n, v = cam.shape[:2]
        seen = torch.zeros(n * v, dtype=torch.bool, device=cam.device)
        tri = self.faces[frags.pix_face]  # [P, 3]
        seen[(frags.pix_batch()[:, None] * v + tri).reshape(-1)] = True
        normals = vertex_normals(cam, self.faces)
        ray = F.normalize(cam, dim=-1)
        facing = -(normals * ray).sum(-1)  # [N, V]
        w = (facing.clamp_min(0) * seen.view(n, v) * (facing > self.opts.facing_min))[:, self.region]
        self.weights = w
        # what the loss needs of the weights, fixed until the next pass: per timestep and vertex the
        # weight sum over its views, and the weights of the vertices two views of the timestep see
        S, st = len(self.T0), self.views.step
        self.den = w.new_zeros(S, w.shape[1]).index_add(0, st, w)
        count = w.new_zeros(S, w.shape[1]).index_add(0, st, (w > 0).to(w.dtype))
        self.both = (count[st] >= 2).to(w.dtype) * w

    # ------------------------------------------------------------------ objective
    def loss(self, level: int) -> tuple[Tensor, dict[str, float]]:
        o, views = self.opts, self.views
        params = self.params()
        cam = self.to_camera(self.sub(**params))
        px = self.to_pixels(cam)  # [N, Vr, 2]
        res = o.resolution
        grid = (px / res * 2 - 1).unsqueeze(1)  # [N, 1, Vr, 2]; align_corners=False: pixel corners
        col = F.grid_sample(views.images[level], grid, mode="bilinear", padding_mode="border",
                            align_corners=False)[:, :, 0].transpose(1, 2)  # [N, Vr, 3]
        assert self.weights is not None  # visibility() ran
        w, den, both = self.weights, self.den, self.both
        S = len(self.T0)
        st = views.step

        def view_mean(c: Tensor) -> Tensor:
            """The mean colour ``[S, Vr, 3]`` of each vertex over the views of its timestep."""
            return c.new_zeros(S, w.shape[1], 3).index_add(0, st, c * w[..., None]) / den.clamp_min(1e-6)[..., None]

        if o.view_gains:
            # cameras differ in exposure and white balance: each view's colours scaled per channel by
            # the least-squares gain onto the other views' mean (held fixed within the step), the
            # gains of a timestep's views normalised to a geometric mean of 1
            with torch.no_grad():
                m0 = view_mean(col)[st]
                wb = both[..., None]
                g = (wb * m0 * col).sum(1) / (wb * col * col).sum(1).clamp_min(1e-9)  # [N, 3]
                g = g.clamp(0.25, 4.0).log()
                g_mean = g.new_zeros(S, 3).index_add(0, st, g) / self.views_per_step[:, None]
                self.gains = (g - g_mean[st]).exp()
            col = col * self.gains[:, None]
        mean = view_mean(col)
        d = col - mean[st]
        rho = torch.sqrt((d * d).sum(-1) + o.charbonnier**2) - o.charbonnier
        photo = (both * rho).sum() / both.sum().clamp_min(1e-6)
        # the detector's 68 points (the fit model's embedding) where the landmark fit put them
        lm = self.fit_model.landmarks(**params).landmarks
        lpx = self.to_pixels(self.to_camera(lm))
        ok = torch.isfinite(views.lmks).all(-1)
        dl = torch.nan_to_num(lpx - views.lmks) / views.half[:, None, None]
        lmk = (torch.sqrt((dl * dl).sum(-1) + 1e-6) * ok).sum() / ok.sum().clamp_min(1)
        shape = self.shape0 + self.d_shape
        prior = o.w_shape * (shape**2).sum() + o.w_expr * (self.d_expr**2).sum()
        total = o.w_photo * photo + o.w_lmk * lmk + prior
        return total, {"photo": float(photo.detach()), "landmarks": float(lmk.detach())}

    def solve(self) -> list[dict[str, float]]:
        """Adam, coarse to fine (a visibility pass at each level and every ``visibility_every`` steps)."""
        from flame_tracker.fitting.photometric import _Adam

        o = self.opts
        groups = [{"params": [self.d_rot], "lr": o.lr_rot}, {"params": [self.d_trans], "lr": o.lr_trans},
                  {"params": [self.d_expr], "lr": o.lr_expr}]
        if self.has_jaw:
            groups.append({"params": [self.d_jaw], "lr": o.lr_jaw})
        if o.fit_shape:
            groups.append({"params": [self.d_shape], "lr": o.lr_shape})
        optim = _Adam(groups)
        history = []
        for level in range(len(o.blur_px)):
            for it in range(o.steps_per_level):
                if it % max(1, o.visibility_every) == 0:
                    self.visibility()
                loss, parts = self.loss(level)
                grads = torch.autograd.grad(loss, optim.params, allow_unused=True, materialize_grads=True)
                optim.step(grads, 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * it / o.steps_per_level)))
                history.append({"level": level, "loss": float(loss.detach()), **parts})
        with torch.no_grad():
            self.visibility()
            loss, parts = self.loss(len(o.blur_px) - 1)
            history.append({"level": len(o.blur_px) - 1, "loss": float(loss), **parts})
        return history


@dataclass
class MultiviewRefinement:
    """What :func:`refine_multiview` did: the refined fit and per solve (keyframes first) the
    timesteps, views and the photo-consistency term before and after."""

    fit: MultiviewFit
    keyframes: np.ndarray
    solves: list[dict] = field(default_factory=list)


def _spread(steps: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` of ``steps``, evenly spread (all of them when there are no more)."""
    if len(steps) <= k:
        return steps
    return steps[np.unique(np.round(np.linspace(0, len(steps) - 1, k)).astype(int))]


def refine_multiview(model: HeadModel, fit_model: HeadModel, fit: MultiviewFit, rig: Rig, frames: FrameSource,
                     lmks: np.ndarray, *, options: PhotoconsistencyOptions | None = None, keyframes: int = 8,
                     chunk: int = 8, progress: bool = False) -> MultiviewRefinement:
    """Refine ``fit`` against the pictures (module docstring). The identity comes from up to
    ``keyframes`` timesteps spread over the capture (one joint solve); the other timesteps follow in
    chunks of ``chunk`` with it fixed.

    Args:
        model: the head model; fit_model: the same with the detector's landmarks (the fit's).
        frames: ``frames(steps)`` -> the pictures of those timesteps, ``[len(steps)][C]``.
        lmks: the detections ``[T, C, 68, 2]`` (pixels as recorded).
    """
    from contextlib import nullcontext

    from flame_tracker.evaluation.metrics import face_region_mask
    from flame_tracker.threads import cpu_threads

    opts = options or PhotoconsistencyOptions()
    valid = np.flatnonzero(fit.valid & (fit.seen.sum(1) >= 2))
    if not len(valid):
        raise InputError("multi-view photometric refinement: no timestep is seen by two cameras")
    keys = _spread(valid, max(1, keyframes))
    rest = np.setdiff1d(valid, keys)
    out = replace(fit, shape=fit.shape.copy(), rotvec=fit.rotvec.copy(), transl=fit.transl.copy(),
                  expr=fit.expr.copy(), jaw_pose=fit.jaw_pose.copy(), eye_pose=fit.eye_pose.copy())
    region = face_region_mask(model)
    groups = [keys] + [rest[i:i + chunk] for i in range(0, len(rest), max(1, chunk))]
    it: Sequence[np.ndarray] = groups
    if progress:
        from flame_tracker.progress import progress_bar

        it = progress_bar(groups, desc="photometric", unit="chunk")
    solves = []
    for g, steps in enumerate(it):
        views = view_crops(rig, frames([int(t) for t in steps]), lmks[steps], fit.seen[steps], opts)
        heads = {"shape": out.shape, "rotvec": out.rotvec[steps], "transl": out.transl[steps], "expr": out.expr[steps],
                 "jaw_pose": out.jaw_pose[steps], "eye_pose": out.eye_pose[steps]}
        o = opts if g == 0 else replace(opts, fit_shape=False)
        with nullcontext() if o.cpu_threads is None else cpu_threads(o.cpu_threads, model.v_template.device):
            prob = Photoconsistency(model, fit_model, rig, views, heads, o, region)
            history = prob.solve()
        with torch.no_grad():
            rot, transl = prob.head()
            p = prob.params()
        cpu = lambda x: x.detach().double().cpu().numpy()  # noqa: E731
        out.rotvec[steps] = Rotation.from_matrix(cpu(rot)).as_rotvec()
        out.transl[steps] = cpu(transl)
        out.expr[steps] = cpu(p["expr"])
        out.jaw_pose[steps] = cpu(p["jaw_pose"])
        if o.fit_shape:
            out.shape = cpu(p["shape"][0])
        solves.append({"timesteps": [int(t) for t in steps], "views": int(len(views.step)),
                       "photo_start": history[0]["photo"], "photo_end": history[-1]["photo"]})
    return MultiviewRefinement(out, keys, solves)
