"""Photometric refinement (reference stage 2b, docs/reference.md §8.4) on the CPU.

Refines the camera, expression, jaw, eyes (and optionally shape) of a landmark fit so that an SH-lit
render of the head matches the photo inside a landmark face mask, with the reference's loss terms and
weights as defaults::

    2 · pixel L1 (mask)  +  1 · weighted mean landmark distance (68, §8.4 weights)  +  2 · iris
    + ears (1.5·|yaw|, 0.3 gate)  +  0.1·Σd_shape²/2  +  1e-4·Σexp²/2  (+ 1e-5·Σ‖Δexp‖²/2 temporal)

(distances in the fitting crop's NDC, pixel values in 0..1).

Appearance: per-vertex albedo (the ICT model, any model without UVs) or a UV texture (FLAME users
supply UVs), each either estimated (a free map, as the reference's ``d_texture``; no licensed albedo
model is needed) or given and fixed (video tracking with a canonical texture). The light is 9 SH
coefficients per channel per frame in the **camera** frame (the reference keeps it in the head frame,
where a turning head changes its own lighting, W10); it is initialised by linear least squares, and
the albedo from the image, so a short Adam run with a cosine schedule (default 40 iterations instead
of the reference's 400) converges.

Modes:

* single image / independent frames: ``fit_photometric(..., albedo=None)`` (per-frame appearance);
* canonical estimation for a video: ``estimate_canonical(...)`` (one appearance and shape shared by
  sampled frames), saved with :func:`save_texture_png`;
* video tracking: ``fit_photometric(..., albedo=canonical, temporal=True)`` (appearance fixed).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from flame_tracker.camera import fov_to_focal, rotvec_to_euler, world_to_view
from flame_tracker.errors import InputError
from flame_tracker.model import lbs
from flame_tracker.model.lbs import axis_angle_to_matrix, pose_features, skin
from flame_tracker.rendering.differentiable import (
    barycentrics,
    interpolate,
    pixel_albedo,
    render,
    sh_basis,
    sh_shading,
    to_image,
    vertex_normals,
)
from flame_tracker.rendering.mask import face_mask
from flame_tracker.rendering.raster import Fragments, rasterize
from flame_tracker.threads import cpu_threads

if TYPE_CHECKING:
    from flame_tracker.tracker import Result


def landmark_weights() -> np.ndarray:
    """The reference's per-landmark weights of the photometric stage (§8.4), ``[68]``."""
    w = np.full(68, 1.5)
    w[0:17] = 0.75
    w[[0, 1, 2, 14, 15, 16]] = 0.5
    w[36:48] = 3.0
    w[49:68] = 2.0
    w[31:36] = 0.75
    return w


@dataclass(frozen=True)
class PhotometricOptions:
    """Loss weights (reference defaults) and solver settings."""

    w_pixel: float = 2.0
    w_lmk: float = 1.0
    w_iris: float = 2.0
    w_ear: float = 1.5
    ear_threshold: float = 0.3
    w_shape: float = 0.1
    w_exp: float = 1e-4
    w_temporal: float = 1e-5
    temporal: bool = False
    resolution: int = 256
    max_iter: int = 40
    fit_camera: bool = True
    fit_shape: bool = False
    fit_eyes: bool = True
    # Adam learning rates (cosine-decayed to 5 %). Reference (400 its): 0.005 exp/jaw/eyes/light,
    # 0.0025 camera, 0.001 shape, 0.005 texture. Adam's first steps move every parameter by about
    # its lr, so the camera's is small: 0.002 rad is 1.5 px at 256 px, FOV 20°.
    lr_expr: float = 0.02
    lr_jaw: float = 0.005
    lr_eyes: float = 0.02
    lr_rot: float = 0.002
    lr_trans: float = 0.001
    lr_light: float = 0.01
    lr_shape: float = 0.05
    lr_albedo: float = 0.02
    mask_shrink: float = 0.03
    # Re-rasterise visibility every this many iterations (barycentrics, hence gradients, are
    # recomputed from the current geometry at every step; which triangle covers a pixel changes
    # little between Adam steps of a fraction of a pixel).
    raster_every: int = 10
    # Intra-op CPU threads inside the fit (None: torch's setting). The per-iteration tensors are
    # small (~10^4-10^5 elements): on this 2-core machine shared by several jobs one thread was 5-10×
    # faster than two (OpenMP regions wait for descheduled threads); raise it on an idle many-core CPU.
    cpu_threads: int | None = 1
    # Render the fitted head into PhotometricResult.render (a full-mesh render; video tracking,
    # which draws its own overlay, turns it off).
    render: bool = True


@dataclass
class PhotometricResult:
    """Refined parameters (detached, ``[N, ...]``) and pictures."""

    pose6: Tensor
    fov: Tensor
    shape: Tensor
    expr: Tensor
    jaw_pose: Tensor
    eye_pose: Tensor
    light: Tensor  # [N, 9, 3] SH per colour channel, camera frame
    albedo: Tensor  # [V, 3] or [N, V, 3] per-vertex albedo, or [1|N, 3, T, T] UV texture
    render: np.ndarray | None  # [N, R, R, 3] uint8 SH-lit render on black (None: options.render off)
    mask: np.ndarray  # [N, R, R] bool face mask used by the pixel term
    landmarks_ndc: Tensor  # [N, 68, 2]
    history: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Geometry and appearance
# --------------------------------------------------------------------------------------------------


def to_render_pixels(view: Tensor, fov: Tensor, res: int, pp_ndc: Tensor | None = None) -> Tensor:
    """OpenCV view-space points ``[N, V, 3]`` -> render pixels ``x, y`` + depth (square ``res`` image).

    Consistent with the reference NDC: ``px = (ndc + 1) / 2 · res``; ``pp_ndc`` (``[N, 2]`` or
    ``[2]``) is the principal point in the crop's NDC (``Crop.pp_ndc``; ``None``: the crop centre).
    """
    f = fov_to_focal(fov, res)[:, None]
    z = view[..., 2]
    cx = cy = res / 2
    if pp_ndc is not None:
        c = (pp_ndc.reshape(-1, 2) + 1.0) * (res / 2)
        cx, cy = c[:, 0:1], c[:, 1:2]
    return torch.stack([f * view[..., 0] / z + cx, f * view[..., 1] / z + cy, z], dim=-1)


def render_head(
    vertices: Tensor,
    faces: Tensor,
    pose6: Tensor,
    fov: Tensor,
    res: int,
    *,
    light: Tensor,
    albedo: Tensor | None = None,
    texture: Tensor | None = None,
    uvs: Tensor | None = None,
    uv_faces: Tensor | None = None,
    pp: Tensor | None = None,
) -> dict[str, Tensor]:
    """SH-lit render of model-space meshes ``[N, V, 3]`` seen by the reference camera, in the square
    ``res`` image of the fitting crop: :func:`~flame_tracker.rendering.render`'s dict plus ``view``
    (OpenCV camera-space vertices) and ``vpx`` (render pixels + depth). Normals are camera-space;
    ``pp``: principal point in the crop's NDC (``None``: its centre)."""
    view = world_to_view(vertices, pose6)
    vpx = to_render_pixels(view, fov, res, pp)
    out = render(vpx, faces, res, res, normals=vertex_normals(view, faces), light=light, albedo=albedo,
                 texture=texture, uvs=uvs, uv_faces=uv_faces,
                 frags=rasterize(vpx, faces, res, res, cull_backfaces=True))
    return {**out, "view": view, "vpx": vpx}


def _pix_sums(frags: Fragments, values: Tensor, n: int) -> Tensor:
    """Sum per-pixel values ``[P, ...]`` per batch item -> ``[N, ...]``."""
    out = values.new_zeros(n, *values.shape[1:])
    return out.index_add(0, frags.pix_batch(), values)


def fit_light(basis: Tensor, albedo: Tensor, target: Tensor, weight: Tensor, frags: Fragments, n: int) -> Tensor:
    """Least-squares SH light ``[N, 9, 3]`` for per-pixel ``basis [P, 9]``, ``albedo [P, 3]``,
    ``target [P, 3]``, ``weight [P]`` (linear in the light: one 9×9 solve per frame and channel)."""
    a = albedo.unsqueeze(1) * basis.unsqueeze(-1)  # [P, 9, 3]
    wa = a * weight[:, None, None]
    ata = _pix_sums(frags, torch.einsum("pkc,plc->pckl", wa, a), n)  # [N, 3, 9, 9]
    atb = _pix_sums(frags, (wa * target[:, None, :]).permute(0, 2, 1), n)  # [N, 3, 9]
    eye = torch.eye(9, dtype=basis.dtype, device=basis.device)
    ridge = 1e-4 * (ata.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)[..., None] + 1e-6) * eye
    sol = torch.linalg.solve(ata + ridge, atb[..., None])[..., 0]  # [N, 3, 9]
    return sol.transpose(1, 2).contiguous()


def _faces_near_mask(vpx: Tensor, faces: Tensor, mask: Tensor, margin: int) -> Tensor:
    """``[F]`` bool: faces whose projected centroid is inside ``mask`` dilated by ``margin`` px in any frame."""
    n, h, w = mask.shape if mask.dim() == 3 else (1, *mask.shape)
    m = mask.reshape(n, 1, h, w).to(vpx.dtype)
    # Separable square dilation (two 1-D max pools).
    grown = F.max_pool2d(m, (2 * margin + 1, 1), stride=1, padding=(margin, 0))
    grown = F.max_pool2d(grown, (1, 2 * margin + 1), stride=1, padding=(0, margin))[:, 0] > 0
    c = vpx[:, faces, :2].mean(2)  # [N, F, 2]
    xi = c[..., 0].floor().long().clamp(0, w - 1)
    yi = c[..., 1].floor().long().clamp(0, h - 1)
    inside = (c[..., 0] >= 0) & (c[..., 0] < w) & (c[..., 1] >= 0) & (c[..., 1] < h)
    hit = grown.expand(vpx.shape[0], h, w)[torch.arange(vpx.shape[0])[:, None], yi, xi] & inside
    return hit.any(0)


class SubMesh:
    """Skinning of only the vertices some triangles use (the sub-mesh near the face mask).

    The bases are linear and skinning is per vertex, so slicing the rows of the model's
    template/basis/weights evaluates exactly those vertices (a third of the ICT head at typical
    crops). Vertices skinned only to joints at rest (``rest_joints``: unrotated, like their
    ancestors, and not optimised) have the identity transform, so they are just the linear blend
    shapes (+ pose correctives): one GEMM, no LBS. In the photometric fit that is every vertex but
    the eyeballs (and FLAME's jaw region): head pose is 0 and the neck fixed.
    """

    def __init__(self, model: torch.nn.Module, faces: Tensor, fixed_shape: Tensor | None = None,
                 extra: Tensor | None = None, rest_joints: Tensor | None = None) -> None:
        self.model = model
        self.fixed_shape = fixed_shape is not None
        ids = faces.reshape(-1) if extra is None else torch.cat([faces.reshape(-1), extra.reshape(-1)])
        vidx = torch.unique(ids)  # model vertex ids; ``extra`` ones need not be in a face
        self.n_static = 0
        dev = faces.device
        if rest_joints is not None:  # static vertices first, then the ones needing LBS
            static = (model.lbs_weights.index_select(0, vidx)[:, ~rest_joints.to(dev)] == 0).all(1)
            vidx = torch.cat([vidx[static], vidx[~static]])
            self.n_static = int(static.sum())
        # rows: xyz of the static vertices, of the others, then the joints (skin() layout)
        rows = torch.cat([(vidx[:, None] * 3 + torch.arange(3, device=dev)).reshape(-1),
                          torch.arange(3 * model.n_verts, model.n_basis_rows, device=dev)])
        template, dirs = model.basis_rows(rows)
        if self.fixed_shape:
            # A shape every frame shares and the fit does not change is folded into the
            # template once: the per-step GEMM then runs over the expression columns only.
            k = model.n_shape
            template = template + dirs[:, :k] @ fixed_shape.to(dirs.dtype)
            dirs = dirs[:, k:]
        ns = 3 * self.n_static
        self.s_template, self.s_dirs = template[:ns], dirs[:ns].contiguous()
        self.template, self.dirs = template[ns:], dirs[ns:].contiguous()
        self.weights = model.lbs_weights.index_select(0, vidx[self.n_static:])
        self.n = vidx.numel() - self.n_static
        self.vidx = vidx
        self._lut = torch.full((int(vidx.max()) + 1 if vidx.numel() else 1,), -1, dtype=torch.long, device=vidx.device)
        self._lut[vidx] = torch.arange(vidx.numel(), device=vidx.device)
        self.faces = self.local(faces)

    def local(self, ids: Tensor) -> Tensor:
        """Positions in :attr:`vidx` of model vertex ids (which must be among them)."""
        return self._lut[ids]

    def __call__(self, **params: Tensor) -> Tensor:
        """``[N, P, 3]`` posed vertices ``vidx`` of the model for ``params`` (as ``model.forward``)."""
        m = self.model
        betas, rotvecs = m.blend_inputs(params)
        if self.fixed_shape:
            betas = betas[:, m.n_shape:]
        parts = []
        if self.n_static:
            x = betas
            if m.has_pose_correctives:  # the same pose features as skin() appends
                x = torch.cat([betas, pose_features(axis_angle_to_matrix(rotvecs))], 1)
            parts.append(F.linear(x, self.s_dirs, self.s_template).view(betas.shape[0], self.n_static, 3))
        if self.n:
            parts.append(skin(betas, rotvecs, self.template, self.dirs, self.n, self.weights, m.joint_levels,
                              m.joint_parents, m.has_pose_correctives))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _rest_joints(model: torch.nn.Module, params: dict[str, Tensor], free: list[str]) -> Tensor:
    """``[J]`` bool: joints that stay at rest during a fit (their rotation and all their ancestors'
    are zero in every frame and none of the ``free`` parameters moves them)."""
    with torch.no_grad():
        _, rv = model.blend_inputs(params)
        rest = (rv == 0).all(-1).all(0)
        if free:
            _, moved = model.blend_inputs({**params, **{k: torch.ones_like(params[k]) for k in free}})
            rest &= ~(moved != rv).any(-1).any(0)
    for js, ps in model.joint_levels:  # propagate "not at rest" down the kinematic tree, depth by depth
        rest[js] &= rest[ps]
    return rest


def _sample_image(images: Tensor, xy: Tensor) -> Tensor:
    """Bilinear colours ``[N, K, 3]`` of images ``[N, R, R, 3]`` at pixel positions ``xy [N, K, 2]``."""
    res = images.shape[1]
    grid = (xy / res * 2 - 1).unsqueeze(1)  # align_corners=False matches the pixel-corner convention
    out = F.grid_sample(images.permute(0, 3, 1, 2), grid, mode="bilinear", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


def init_vertex_albedo(
    images: Tensor, vpx: Tensor, normals: Tensor, light: Tensor, faces: Tensor, frags: Fragments, mask: Tensor,
    shared: bool
) -> Tensor:
    """Per-vertex albedo from the photo: colour at each visible, masked vertex over its shading.

    Vertices never seen inside the mask get the mean albedo. ``shared`` averages over frames.
    """
    n, v = vpx.shape[:2]
    col = _sample_image(images, vpx[..., :2])  # [N, V, 3]
    shade = sh_shading(normals, light[:, None]).clamp(min=0.05)  # light per frame
    alb = (col / shade).clamp(0, 1.5)
    # A vertex counts as seen when one of its triangles is visible in a masked pixel.
    seen = torch.zeros(n * v, dtype=torch.bool, device=vpx.device)
    inside = mask.reshape(-1)[frags.pix]
    tri = faces[frags.pix_face[inside]]
    seen[(frags.pix_batch()[inside][:, None] * v + tri).reshape(-1)] = True
    w = seen.view(n, v, 1).to(alb.dtype)
    mean = (alb * w).sum((0, 1)) / w.sum((0, 1)).clamp(min=1)
    if shared:
        cnt = w.sum(0)
        return torch.where(cnt > 0, (alb * w).sum(0) / cnt.clamp(min=1), mean)
    return torch.where(w > 0, alb, mean)


# --------------------------------------------------------------------------------------------------
# Losses (reference definitions)
# --------------------------------------------------------------------------------------------------


def l2ps(a: Tensor, b: Tensor, w: Tensor | None = None) -> Tensor:
    """Per-sample mean Euclidean distance ``[N]`` (optionally weighted per point); NaN targets ignored."""
    valid = torch.isfinite(b).all(-1)
    d = torch.sqrt(((a - torch.nan_to_num(b)) ** 2).sum(-1) + 1e-12)
    if w is not None:
        d = d * w
    return (d * valid).sum(-1) / valid.sum(-1).clamp(min=1)


def ear_loss(ears: Tensor, gt_ears: Tensor, rotvec: Tensor, threshold: float) -> Tensor:
    """The photometric stage's ear term without its weight: side by the sign of yaw, ``|yaw|`` (zeroed
    below 0.1 rad) as the factor, each side gated off when its mean distance is ≥ ``threshold``."""
    with torch.no_grad():
        yaw = rotvec_to_euler(rotvec)[:, 0]
        ang = torch.where(yaw.abs() < 0.1, torch.zeros_like(yaw), yaw.abs())
    left = l2ps(ears[:, :20], gt_ears)
    right = l2ps(ears[:, 20:], gt_ears)
    left = left * (left < threshold) * (yaw > 0)
    right = right * (right < threshold) * (yaw < 0)
    return (left + right) * ang


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


class _Adam:
    """Adam (``torch.optim.Adam``'s update: no weight decay, no amsgrad) with a learning-rate factor
    per step. ``torch.optim.Adam`` imports ``torch._dynamo`` on first use (~2 s per process, paid
    by every CLI run) and costs ~1 ms of bookkeeping per step; this is the same arithmetic."""

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = [p for g in groups for p in g["params"]]
        self.lrs = [float(g["lr"]) for g in groups for _ in g["params"]]
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.b1, self.b2, self.eps, self.t = betas[0], betas[1], eps, 0

    @torch.no_grad()
    def step(self, grads: tuple[Tensor, ...], scale: float = 1.0) -> None:
        """One update with gradients ``grads`` (one per parameter) and learning rates × ``scale``."""
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, math.sqrt(1 - self.b2**self.t)
        for p, g, m, v, lr in zip(self.params, grads, self.m, self.v, self.lrs):
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            p.addcdiv_(m, v.sqrt().div_(c2).add_(self.eps), value=-lr * scale / c1)


def _as(x, n: int, size: int, dt, dev, name: str) -> Tensor:
    if x is None:
        return torch.zeros(n, size, dtype=dt, device=dev)
    t = torch.as_tensor(x, dtype=dt, device=dev)
    if t.ndim == 1:
        t = t[None]
    if t.shape[-1] != size:
        raise InputError(f"photometric: {name} has {t.shape[-1]} values, the model needs {size}")
    return t.expand(n, size).clone()


def _images_tensor(images: np.ndarray | Tensor, res: int, dt, dev) -> Tensor:
    im = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if im.ndim == 3:
        im = im[None]
    if im.ndim != 4 or im.shape[1:] != (res, res, 3):
        raise InputError(
            f"photometric: images must be [N,{res},{res},3] crops of the fitting square (see "
            f"flame_tracker.io.images.crop_resize), got {tuple(im.shape)}"
        )
    im = im.to(dev)
    return im.to(dt) / 255.0 if im.dtype == torch.uint8 else im.to(dt)


def fit_photometric(
    model: torch.nn.Module,
    images: np.ndarray | Tensor,
    lmks_ndc: Tensor,
    pose6: Tensor,
    fov: Tensor | float,
    *,
    init: dict[str, Tensor] | None = None,
    iris_ndc: Tensor | None = None,
    ears_ndc: Tensor | None = None,
    albedo: Tensor | None = None,
    shared_appearance: bool = False,
    uvs: Tensor | None = None,
    uv_faces: Tensor | None = None,
    texture_size: int = 256,
    user_mask: np.ndarray | None = None,
    pp_ndc: Tensor | None = None,
    options: PhotometricOptions | None = None,
    **overrides,
) -> PhotometricResult:
    """Photometric refinement of ``N`` frames.

    Args:
        model: a ``HeadModel``.
        images: ``[N, R, R, 3]`` uint8 (or float 0..1) crops of the fitting square at
            ``options.resolution`` (NDC ``[-1, 1]`` spans the crop).
        lmks_ndc: ``[N, 68, 2]`` detected landmarks in the crop's NDC (NaN = missing).
        pose6, fov: stage-1 camera (``[N, 6]``, degrees); FOV stays fixed (as the reference).
        init: stage-2 parameters ``shape``, ``expr``, ``jaw_pose``, ``eye_pose``, ``neck_pose``.
        iris_ndc: ``[N, 10, 2]`` iris targets; ears_ndc: ``[N, 20, 2]`` ear targets (optional).
        albedo: fixed appearance (canonical): per-vertex ``[V, 3]`` or a UV texture ``[1, 3, T, T]``;
            ``None`` estimates it (per frame, or one for all frames with ``shared_appearance``).
        uvs, uv_faces: ``[Vt, 2]`` / ``[F, 3]`` texture coordinates: use a UV texture instead of
            per-vertex albedo; ``texture_size`` is the side of an estimated texture.
        user_mask: optional ``[N|1, R, R]`` mask ANDed into the landmark face mask.
        pp_ndc: the camera's principal point in the crop's NDC (``Crop.pp_ndc``; ``None``: centre).
        options: :class:`PhotometricOptions`; keyword ``overrides`` replace single fields.
    """
    opts = replace(options or PhotometricOptions(), **overrides)
    dev = model.v_template.device
    threads = nullcontext() if opts.cpu_threads is None else cpu_threads(opts.cpu_threads, dev)
    with threads:
        problem = PhotometricProblem(model, images, lmks_ndc, pose6, fov, opts, init=init, iris_ndc=iris_ndc,
                                     ears_ndc=ears_ndc, albedo=albedo, shared_appearance=shared_appearance,
                                     uvs=uvs, uv_faces=uv_faces, texture_size=texture_size, user_mask=user_mask,
                                     pp_ndc=pp_ndc)
        return problem.solve()


class PhotometricProblem:
    """One photometric fit of ``N`` frames: the checked inputs, the free variables (offsets from the
    initial values, as the reference), the visible sub-mesh and the named loss terms.

    Steps: :meth:`__init__` checks the inputs and sets the initial light and appearance (linear
    least squares); :meth:`solve` runs Adam with a cosine schedule on :meth:`loss` (the sum of
    :meth:`terms`) and returns the :class:`PhotometricResult`. See :func:`fit_photometric` for the
    arguments.
    """

    def __init__(self, model: torch.nn.Module, images: np.ndarray | Tensor, lmks_ndc: Tensor, pose6: Tensor,
                 fov: Tensor | float, opts: PhotometricOptions, *, init: dict[str, Tensor] | None = None,
                 iris_ndc: Tensor | None = None, ears_ndc: Tensor | None = None, albedo: Tensor | None = None,
                 shared_appearance: bool = False, uvs: Tensor | None = None, uv_faces: Tensor | None = None,
                 texture_size: int = 256, user_mask: np.ndarray | None = None, pp_ndc: Tensor | None = None) -> None:
        self.model, self.opts = model, opts
        self.dev, self.dt = model.v_template.device, model.v_template.dtype
        self.res = opts.resolution
        self._check_inputs(images, lmks_ndc, pose6, fov, init or {}, iris_ndc, ears_ndc, uvs, uv_faces, user_mask,
                           pp_ndc)
        self._make_variables(shared_appearance)
        self._initial_appearance(albedo, shared_appearance, texture_size)
        self._prepare_landmarks()

    # ------------------------------------------------------------------ set-up
    def _check_inputs(self, images, lmks_ndc, pose6, fov, init, iris_ndc, ears_ndc, uvs, uv_faces, user_mask,
                      pp_ndc) -> None:
        """Inputs as tensors on the model's device (clear errors for wrong shapes) and the face mask."""
        model, dt, dev, res = self.model, self.dt, self.dev, self.res
        lmks_ndc = torch.as_tensor(lmks_ndc, dtype=dt, device=dev)
        if lmks_ndc.ndim == 2:
            lmks_ndc = lmks_ndc[None]
        if lmks_ndc.shape[1:] != (68, 2):
            raise InputError(f"photometric: landmarks must be [N,68,2] NDC, got {tuple(lmks_ndc.shape)}")
        n = self.n = lmks_ndc.shape[0]
        self.lmks_ndc = lmks_ndc
        self.img = _images_tensor(images, res, dt, dev)
        if self.img.shape[0] != n:
            raise InputError(f"photometric: {self.img.shape[0]} images for {n} landmark sets")
        self.pose6 = torch.as_tensor(pose6, dtype=dt, device=dev).reshape(n, 6)
        self.fov = torch.as_tensor(fov, dtype=dt, device=dev).expand(n).clone()
        self.all_faces = model.faces.to(dev)
        self.pp = None if pp_ndc is None else torch.as_tensor(pp_ndc, dtype=dt, device=dev).reshape(-1, 2).expand(n, 2)
        self.shape0 = _as(init.get("shape"), n, model.n_shape, dt, dev, "shape")
        self.expr0 = _as(init.get("expr"), n, model.n_expr, dt, dev, "expr")
        self.jaw0 = _as(init.get("jaw_pose"), n, 3, dt, dev, "jaw_pose")
        self.eye0 = _as(init.get("eye_pose"), n, 6, dt, dev, "eye_pose")
        self.neck = _as(init.get("neck_pose"), n, 3, dt, dev, "neck_pose")
        self.use_uv = uvs is not None
        self.uvs = self.all_uv_faces = None
        if self.use_uv:
            if uv_faces is None or uv_faces.shape != self.all_faces.shape:
                raise InputError("photometric: uvs need uv_faces [F,3] with one row per model face")
            self.uvs = torch.as_tensor(uvs, dtype=dt, device=dev)
            self.all_uv_faces = torch.as_tensor(uv_faces, device=dev).long()
        self.lw = torch.as_tensor(landmark_weights(), dtype=dt, device=dev)
        lmk_px = ((lmks_ndc + 1) * 0.5 * res).cpu().numpy()
        self.mask_np = face_mask(lmk_px, res, res, shrink=self.opts.mask_shrink, user_mask=user_mask)
        self.mask = torch.as_tensor(self.mask_np, device=dev)
        self.has_iris = iris_ndc is not None and bool(torch.isfinite(torch.as_tensor(iris_ndc)).any())
        self.gt_iris = None if iris_ndc is None else torch.as_tensor(iris_ndc, dtype=dt, device=dev).reshape(n, 10, 2)
        self.gt_ears = None if ears_ndc is None else torch.as_tensor(ears_ndc, dtype=dt, device=dev).reshape(n, 20, 2)

    def _make_variables(self, shared_appearance: bool) -> None:
        """The free variables: offsets of camera, expression, jaw and shape; the eye pose itself."""
        n, dt, dev, opts, model = self.n, self.dt, self.dev, self.opts, self.model
        self.bounds = getattr(model, "expr_bounds", None)
        self.has_jaw = bool(getattr(model, "has_jaw_joint", True))
        self.d_rot = torch.zeros(n, 3, dtype=dt, device=dev, requires_grad=opts.fit_camera)
        self.d_trans = torch.zeros(n, 3, dtype=dt, device=dev, requires_grad=opts.fit_camera)
        self.d_expr = torch.zeros(n, model.n_expr, dtype=dt, device=dev, requires_grad=True)
        self.d_jaw = torch.zeros(n, 3, dtype=dt, device=dev, requires_grad=self.has_jaw)
        self.eye = self.eye0.clone().requires_grad_(opts.fit_eyes and self.has_iris)
        self.d_shape = torch.zeros(1 if shared_appearance else n, model.n_shape, dtype=dt, device=dev,
                                   requires_grad=opts.fit_shape)

    def params(self) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Model parameters, (bounded) expression and camera ``pose6`` at the current offsets."""
        expr = self.expr0 + self.d_expr
        if self.bounds is not None:
            expr = expr.clamp(float(self.bounds[0]), float(self.bounds[1]))
        p6 = self.pose6 + torch.cat([self.d_rot, self.d_trans], dim=1)
        return dict(shape=self.shape0 + self.d_shape, expr=expr, jaw_pose=self.jaw0 + self.d_jaw, eye_pose=self.eye,
                    neck_pose=self.neck), expr, p6

    @torch.no_grad()
    def _initial_appearance(self, albedo: Tensor | None, shared_appearance: bool, texture_size: int) -> None:
        """The sub-mesh near the face mask, the initial light (least squares) and the appearance
        (estimated from the photo, or the given one)."""
        n, res, dt, model = self.n, self.res, self.dt, self.model
        params, _, p6 = self.params()
        view = world_to_view(model(**params).vertices, p6)
        vpx = to_render_pixels(view, self.fov, res, self.pp)
        # Only triangles near the face mask can cover a masked pixel: render that sub-mesh (a
        # third of the ICT head at typical crops). The margin covers the motion during the fit.
        near = _faces_near_mask(vpx, self.all_faces, self.mask, margin=max(4, res // 16))
        if not bool(near.any()):
            raise InputError("photometric: no triangle of the head is near the face region of the crops (the "
                             "face lies outside them, or the landmarks are): nothing to refine")
        faces = self.faces = self.all_faces[near]
        self.uv_faces = None if self.all_uv_faces is None else self.all_uv_faces[near]
        frags = rasterize(vpx, faces, res, res, cull_backfaces=True).select(self.mask)
        normals = vertex_normals(view, faces)
        bary = barycentrics(vpx, faces, frags)
        nrm = F.normalize(interpolate(normals, faces, frags, bary), dim=-1)
        target = self.img.reshape(-1, 3)[frags.pix]
        wpix = self.mask.reshape(-1)[frags.pix].to(dt)
        basis = sh_basis(nrm)
        if albedo is None:
            # Albedo and light colour are ambiguous: start from a white light (fitted to the
            # luminance) so that the skin colour goes into the albedo, not the light.
            grey = torch.full_like(target, 0.6)
            light = fit_light(basis, grey, target.mean(1, keepdim=True).expand_as(target), wpix, frags, n)
            alb_v = init_vertex_albedo(self.img, vpx, normals, light, faces, frags, self.mask, shared_appearance)
            if self.use_uv:
                tex = _vertex_to_uv_texture(alb_v if shared_appearance else alb_v.mean(0), self.uvs,
                                            self.all_uv_faces, self.all_faces, texture_size)
                appearance = tex if shared_appearance else tex.expand(n, -1, -1, -1).clone()
            else:
                appearance = alb_v
        else:
            appearance = torch.as_tensor(albedo, dtype=dt, device=self.dev)
        tex_kw = dict(texture=appearance, uvs=self.uvs, uv_faces=self.uv_faces) if self.use_uv else \
            dict(albedo=appearance)
        alb_pix = pixel_albedo(frags, bary, faces, **tex_kw)
        light = fit_light(basis, alb_pix, target, wpix, frags, n)
        self.fit_appearance = albedo is None
        with torch.enable_grad():
            self.app = appearance.clone().requires_grad_(self.fit_appearance)
            self.light = light.clone().requires_grad_(True)
        # A fixed (canonical) albedo shared by all frames: gathered per pixel at each visibility pass.
        self.fixed_albedo = appearance.clamp(0, 1) if albedo is not None and not self.use_uv and \
            appearance.dim() == 2 else None

    def _prepare_landmarks(self) -> None:
        """The sub-mesh skinning of the steps, with the landmark, iris and ear vertices in it.

        The loop evaluates only the vertices of the triangles near the mask; visibility is
        re-rasterised every ``raster_every`` iterations. Landmarks (68 on triangles, iris and ear
        vertices) come from the same skinning pass as the rendered vertices: one model evaluation and
        one camera transform per step.
        """
        model, dev, opts = self.model, self.dev, self.opts
        same_shape = not opts.fit_shape and bool((self.shape0 == self.shape0[:1]).all())
        self.fixed_shape = self.shape0[0] if same_shape else None
        self.lmk_tri = model.landmark_triangles.to(dev)  # [68, 3] vertex ids
        self.lmk_bary = model.lmk_bary.to(dev, self.dt)
        self.iris_idx = getattr(model, "iris_idx", None) if self.gt_iris is not None else None
        self.ear_idx = getattr(model, "ear_idx", None) if self.gt_ears is not None else None
        self.point_ids = torch.cat([self.lmk_tri.reshape(-1)] + [i.to(dev) for i in (self.iris_idx, self.ear_idx)
                                                                 if i is not None])
        free_joints = [k for k, on in (("jaw_pose", self.has_jaw), ("eye_pose", self.eye.requires_grad)) if on]
        self.rest = _rest_joints(model, dict(shape=self.shape0, expr=self.expr0, jaw_pose=self.jaw0,
                                             eye_pose=self.eye0, neck_pose=self.neck), free_joints)
        self.sub = SubMesh(model, self.faces, fixed_shape=self.fixed_shape, rest_joints=self.rest)
        self.vis: dict = {}
        if opts.w_pixel <= 0:  # landmarks only: skin just the landmark vertices
            self._set_mesh(SubMesh(model, self.faces[:0], fixed_shape=self.fixed_shape, extra=self.point_ids,
                                    rest_joints=self.rest))

    def _set_mesh(self, mesh: SubMesh) -> None:
        """Use ``mesh`` (which holds ``point_ids``) for the steps: where its landmark vertices are."""
        dev = self.dev
        self.vis.update(mesh=mesh, lmk_loc=mesh.local(self.lmk_tri.reshape(-1)),
                        iris_loc=None if self.iris_idx is None else mesh.local(self.iris_idx.to(dev)),
                        ear_loc=None if self.ear_idx is None else mesh.local(self.ear_idx.to(dev)))

    @torch.no_grad()
    def refresh(self, params: dict[str, Tensor], p6: Tensor) -> None:
        """Visibility pass (no gradient) at the current geometry and what depends only on it.

        Between passes a step skins only the corners of the triangles visible in masked pixels
        (``vis["mesh"]``, ~30 % of the sub-mesh near the mask) and the landmark vertices, and the
        per-pixel SH basis (normals) is held fixed: like the reference, which detaches its normals,
        geometry is driven through the barycentrics (albedo/texture lookup); the light keeps its
        exact gradient.
        """
        n, res, dev, sub_faces = self.n, self.res, self.dev, self.sub.faces
        view = world_to_view(self.sub(**params), p6)
        vpx = to_render_pixels(view, self.fov, res, self.pp)
        fr = rasterize(vpx, sub_faces, res, res, cull_backfaces=True).select(self.mask)
        used, local = torch.unique(fr.pix_face, return_inverse=True)
        self._set_mesh(SubMesh(self.model, self.faces[used], fixed_shape=self.fixed_shape, extra=self.point_ids,
                                rest_joints=self.rest))
        face_idx = torch.full((n * res * res,), -1, dtype=torch.long, device=dev)
        face_idx[fr.pix] = local
        fr = Fragments(face_idx=face_idx.view(n, res, res), pix=fr.pix, pix_face=local, shape=fr.shape)
        # Normals of the sub-mesh (indexed by sub.vidx) at the visible triangles' corners.
        corners = sub_faces[used]
        bary = barycentrics(vpx, corners, fr)
        nrm = F.normalize(interpolate(vertex_normals(view, sub_faces), corners, fr, bary), dim=-1, eps=1e-12)
        b = fr.pix_batch()
        counts = torch.bincount(b, minlength=n)
        if self.fixed_albedo is not None:  # a fixed per-vertex albedo: each pixel's corner colours, once
            self.vis["corner_albedo"] = self.fixed_albedo[self.faces[used][local]]  # [P, 3 corners, 3]
        self.vis.update(frags=fr, batch=b, target=self.img.reshape(-1, 3)[fr.pix], counts=counts.tolist(),
                        norm=1.0 / (3 * counts.to(self.dt) + 1e-8), basis=sh_basis(nrm).split(counts.tolist()),
                        uv_faces=None if self.uv_faces is None else self.uv_faces[used])

    # ------------------------------------------------------------------ objective
    def state(self, it: int = 0) -> dict[str, Tensor]:
        """The current parameters and what the loss terms read: the steps' mesh in pixels and the
        68 model landmarks in NDC (a visibility pass first, every ``raster_every`` iterations)."""
        params, expr, p6 = self.params()
        if self.opts.w_pixel > 0 and ("frags" not in self.vis or it % max(1, self.opts.raster_every) == 0):
            self.refresh(params, p6)
        view = world_to_view(self.vis["mesh"](**params), p6)
        lmk_view = lbs.interpolate(view, self.vis["lmk_loc"].view(68, 3), self.lmk_bary)  # (mesh points)
        pts = to_render_pixels(torch.cat([view, lmk_view], 1), self.fov, self.res, self.pp)
        vpx = pts[:, : view.shape[1]]
        lmk = pts[:, view.shape[1]:, :2] * (2.0 / self.res) - 1  # = project_ndc of the model landmarks
        return {"params": params, "expr": expr, "p6": p6, "vpx": vpx, "lmk": lmk, "app": self.app.clamp(0, 1)}

    def terms(self, st: dict[str, Tensor]) -> dict[str, Tensor]:
        """The weighted loss terms at state ``st`` (:meth:`state`), by name; the ones switched off
        (zero weight, no targets, not fitted) are absent."""
        opts = self.opts
        out = {"landmarks": opts.w_lmk * l2ps(st["lmk"], self.lmks_ndc, self.lw).sum()}
        if opts.w_pixel > 0:
            out["pixels"] = opts.w_pixel * self.pixel_l1(st).sum()
        if self.vis["iris_loc"] is not None:
            iris = st["vpx"].index_select(1, self.vis["iris_loc"])[..., :2] * (2.0 / self.res) - 1
            out["iris"] = opts.w_iris * l2ps(iris, self.gt_iris).sum()
        if self.vis["ear_loc"] is not None:
            ears = st["vpx"].index_select(1, self.vis["ear_loc"])[..., :2] * (2.0 / self.res) - 1
            out["ears"] = opts.w_ear * ear_loss(ears, self.gt_ears, st["p6"][:, :3], opts.ear_threshold).sum()
        if opts.fit_shape:
            out["shape_prior"] = opts.w_shape * (self.d_shape**2).sum() / 2
        expr = st["expr"]
        out["expression_prior"] = opts.w_exp * (expr**2).sum() / 2
        if opts.temporal and self.n >= 2:
            out["temporal"] = opts.w_temporal * ((expr[1:] - expr[:-1]) ** 2).sum() / 2
        return out

    def pixel_l1(self, st: dict[str, Tensor]) -> Tensor:
        """The reference's ``pix_L1`` per frame ``[N]``: Σ|photo − render| over the masked pixels /
        (3 × masked pixels), rendering only the covered masked pixels (no full images per step)."""
        vis, mesh = self.vis, self.vis["mesh"]
        frags = vis["frags"]
        bary = barycentrics(st["vpx"], mesh.faces, frags)
        if self.use_uv:
            alb = pixel_albedo(frags, bary, mesh.faces, texture=st["app"], uvs=self.uvs, uv_faces=vis["uv_faces"])
        elif self.fixed_albedo is not None:  # gathered per pixel once per visibility pass
            alb = (bary.unsqueeze(-1) * vis["corner_albedo"]).sum(1)
        else:
            alb = pixel_albedo(frags, bary, mesh.faces, albedo=st["app"].index_select(-2, mesh.vidx))
        # Covered pixels come sorted by frame: one [P_i, 9] @ [9, 3] product per frame instead of
        # gathering a light matrix per pixel.
        colour = alb * torch.cat([bi @ self.light[i] for i, bi in enumerate(vis["basis"])])
        err = (vis["target"] - colour).abs().sum(1)
        return torch.zeros(self.n, dtype=self.dt, device=self.dev).index_add(0, vis["batch"], err) * vis["norm"]

    def loss(self, it: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """The total loss (the sum of :meth:`terms`, in their order) and the state it was taken at."""
        st = self.state(it)
        total: Tensor | None = None
        for value in self.terms(st).values():
            total = value if total is None else total + value
        assert total is not None  # the landmark term is always there
        return total, st

    # ------------------------------------------------------------------ solver
    def optimiser(self) -> _Adam:
        """Adam over the free variables, with the per-group learning rates of the options."""
        opts = self.opts
        groups = [{"params": [self.d_expr], "lr": opts.lr_expr}, {"params": [self.light], "lr": opts.lr_light}]
        if self.has_jaw:
            groups.append({"params": [self.d_jaw], "lr": opts.lr_jaw})
        if self.eye.requires_grad:
            groups.append({"params": [self.eye], "lr": opts.lr_eyes})
        if opts.fit_camera:
            groups += [{"params": [self.d_rot], "lr": opts.lr_rot}, {"params": [self.d_trans], "lr": opts.lr_trans}]
        if opts.fit_shape:
            groups.append({"params": [self.d_shape], "lr": opts.lr_shape})
        if self.fit_appearance:
            groups.append({"params": [self.app], "lr": opts.lr_albedo})
        return _Adam(groups)

    def solve(self) -> PhotometricResult:
        """``max_iter`` Adam steps (learning rates cosine-decayed to 5 %), then the result at exact
        visibility."""
        optim = self.optimiser()
        iters = self.opts.max_iter
        history: list[float] = []
        for it in range(iters):
            loss, _ = self.loss(it)
            grads = torch.autograd.grad(loss, optim.params, allow_unused=True, materialize_grads=True)
            optim.step(grads, 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * it / max(iters, 1))))
            history.append(float(loss.detach()))
        with torch.no_grad():
            self.vis.pop("frags", None)  # the final loss at exact visibility
            loss, st = self.loss()
            history.append(float(loss))
            return self._result(st, history)

    def _result(self, st: dict[str, Tensor], history: list[float]) -> PhotometricResult:
        rendered = None
        if self.opts.render:
            tex_kw = dict(texture=st["app"], uvs=self.uvs, uv_faces=self.all_uv_faces) if self.use_uv else \
                dict(albedo=st["app"])
            r = render_head(self.model(**st["params"]).vertices, self.all_faces, st["p6"], self.fov, self.res,
                            light=self.light, pp=self.pp, **tex_kw)
            rendered = (r["image"].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        n = self.n
        return PhotometricResult(
            pose6=st["p6"].detach().clone(),
            fov=self.fov,
            shape=(self.shape0 + self.d_shape).detach().expand(n, -1).clone(),
            expr=st["expr"].detach().clone(),
            jaw_pose=(self.jaw0 + self.d_jaw).detach().clone(),
            eye_pose=self.eye.detach().clone(),
            light=self.light.detach().clone(),
            albedo=st["app"].detach().clone(),
            render=rendered,
            mask=self.mask_np if self.mask_np.ndim == 3 else self.mask_np[None],
            landmarks_ndc=st["lmk"].detach().clone(),
            history=history,
        )


def _vertex_to_uv_texture(albedo_v: Tensor, uvs: Tensor, uv_faces: Tensor, faces: Tensor, size: int) -> Tensor:
    """Splat per-vertex albedo ``[V, 3]`` into a UV texture ``[1, 3, T, T]`` (texel-nearest, mean fill)."""
    vt = torch.zeros(uvs.shape[0], 3, dtype=albedo_v.dtype, device=albedo_v.device)
    cnt = torch.zeros(uvs.shape[0], 1, dtype=albedo_v.dtype, device=albedo_v.device)
    vt.index_add_(0, uv_faces.reshape(-1), albedo_v[faces.reshape(-1)])
    cnt.index_add_(0, uv_faces.reshape(-1), cnt.new_ones(uv_faces.numel(), 1))
    vt = vt / cnt.clamp(min=1)
    # Rasterise the UV layout (x = u, y = 1 - v) with the same rasteriser: Gouraud-fill the texture.
    uvpx = torch.stack([uvs[:, 0] * size, (1 - uvs[:, 1]) * size, torch.ones_like(uvs[:, 0])], -1)
    frags = rasterize(uvpx, uv_faces, size, size)
    bary = barycentrics(uvpx, uv_faces, frags)
    col = interpolate(vt, uv_faces, frags, bary)
    tex = albedo_v.mean(0).expand(size * size, 3).clone()
    tex[frags.pix] = col
    return tex.view(1, size, size, 3).permute(0, 3, 1, 2).contiguous()


def estimate_canonical(
    model: torch.nn.Module,
    images: np.ndarray | Tensor,
    lmks_ndc: Tensor,
    pose6: Tensor,
    fov: Tensor | float,
    **kwargs,
) -> PhotometricResult:
    """One appearance (and, with ``fit_shape=True``, one shape) shared by sampled video frames.

    Same arguments as :func:`fit_photometric`; use the result's ``albedo`` as the fixed canonical
    texture for tracking and :func:`save_texture_png` to write it.
    """
    return fit_photometric(model, images, lmks_ndc, pose6, fov, shared_appearance=True, **kwargs)


def crop_inputs(frames: list[np.ndarray] | np.ndarray, crop, lmks68_px: np.ndarray,
                iris_px: np.ndarray | None, res: int, dtype: torch.dtype):
    """Photometric inputs from original-pixel data: the frames cut to the fitting square ``crop``
    ``(x0, y0, side)`` at ``res``², the detected landmarks ``[K, 68, 2]`` and iris points
    ``[K, 10, 2]`` (or None) in that square's NDC, and the :class:`~flame_tracker.camera.Crop`."""
    from flame_tracker.camera import Crop
    from flame_tracker.io.images import crop_resize

    c = crop if isinstance(crop, Crop) else Crop(*map(float, crop))  # a Crop keeps its principal point
    x0, y0, side = float(c.x0), float(c.y0), float(c.size)
    crops = np.stack([crop_resize(np.asarray(f), (x0, y0, side, side), (res, res))[0] for f in frames])
    lmk = c.to_ndc(torch.as_tensor(np.asarray(lmks68_px), dtype=dtype))
    iris = None if iris_px is None else c.to_ndc(torch.as_tensor(np.asarray(iris_px), dtype=dtype))
    return crops, lmk, iris, c


def canonical_from_frames(
    model: torch.nn.Module,
    frames: list[np.ndarray],
    crop,
    lmks68_px: np.ndarray,
    pose6: np.ndarray,
    fov: float | np.ndarray,
    init: dict[str, np.ndarray],
    *,
    iris_px: np.ndarray | None = None,
    **overrides,
) -> PhotometricResult:
    """Canonical appearance of a video from a few of its frames (e.g. the identity keyframes).

    Args:
        frames: ``K`` RGB uint8 frames in original pixels.
        crop: the fitting square ``(x0, y0, side)`` in original pixels that ``pose6``/``fov`` refer to,
            or a :class:`~flame_tracker.camera.Crop` (with the camera's principal point).
        lmks68_px, iris_px: ``[K, 68, 2]`` / ``[K, 10, 2]`` detected points in original pixels (NaN = missing).
        pose6: ``[K, 6]`` fitted cameras; fov: degrees.
        init: fitted ``shape`` (``[S]`` or ``[K, S]``), ``expr``, ``jaw_pose``, ``eye_pose`` per frame.
        overrides: :class:`PhotometricOptions` fields.

    Returns:
        :func:`estimate_canonical`'s result (``albedo`` is the texture: :func:`save_texture_png`).
    """
    if not frames:
        raise InputError("canonical texture: no frames given")
    opts = replace(PhotometricOptions(), **overrides)
    dt = model.v_template.dtype
    crops, lmk, iris, c = crop_inputs(frames, crop, lmks68_px, iris_px, opts.resolution, dt)
    if iris is not None and not bool(torch.isfinite(iris).all()):
        iris = None
    k = len(frames)
    ini = {key: torch.as_tensor(np.asarray(v), dtype=dt).reshape(k if np.asarray(v).ndim > 1 else 1, -1).expand(k, -1)
           for key, v in init.items() if v is not None}
    fov = float(np.asarray(fov, dtype=np.float64).reshape(-1)[0])  # one FOV (a scalar or a 1-vector)
    return estimate_canonical(model, crops, lmk, torch.as_tensor(np.asarray(pose6), dtype=dt), fov, init=ini,
                              iris_ndc=iris, pp_ndc=c.pp_ndc(lmk), options=opts)


def texture_image(albedo: Tensor, model: torch.nn.Module | None = None, size: int = 512) -> np.ndarray:
    """A viewable RGB uint8 picture of an appearance.

    A UV texture ``[1, 3, T, T]`` is returned as it is; per-vertex albedo ``[V, 3]`` is rendered
    unlit, orthographically, from the front of the neutral head of ``model``.
    """
    a = albedo.detach()
    if a.dim() == 4:
        return (a[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    if model is None:
        raise InputError("texture_image: per-vertex albedo needs the model to draw it")
    if a.dim() == 3:
        a = a[0]
    v = model.v_template.detach()
    lo, hi = v[:, :2].min(0).values, v[:, :2].max(0).values
    scale = 0.95 * size / (hi - lo).max()
    mid = (lo + hi) / 2
    px = torch.stack([(v[:, 0] - mid[0]) * scale + size / 2, (mid[1] - v[:, 1]) * scale + size / 2, 10.0 - v[:, 2]], -1)
    frags = rasterize(px, model.faces, size, size, cull_backfaces=True)
    bary = barycentrics(px, model.faces, frags)
    col = interpolate(a.to(px.device, px.dtype), model.faces, frags, bary)  # (an albedo read from disk: CPU)
    img = to_image(col.clamp(0, 1), frags)[0]
    return (img * 255 + 0.5).to(torch.uint8).cpu().numpy()


def save_texture_png(path: str | Path, albedo: Tensor, model: torch.nn.Module | None = None) -> Path:
    """Write the canonical texture (see :func:`texture_image`) as a PNG."""
    from flame_tracker.io.results import save_image

    return save_image(path, texture_image(albedo, model))


def refine_result(model: torch.nn.Module, result: Result, image: np.ndarray, *,
                  output_model: torch.nn.Module | None = None, **overrides) -> tuple[Result, PhotometricResult]:
    """Photometric refinement of a single-image landmark fit (``flame_tracker.tracker.Result``).

    ``model`` is the model fitted (``Tracker.fit_model``: the detector's landmark embedding);
    ``output_model`` (``Tracker.model``, default ``model``) gives the Result's own 68 points. Given
    the plain model (``Tracker.model``) and no ``output_model``, the fit uses its detector embedding
    as the landmark fit did (matching MediaPipe's points to the model's own 68 instead doubled the
    error on the shared photos).

    Crops ``image`` (RGB uint8, original size) to the result's fitting square at
    ``options.resolution``, refines camera, expression, jaw and eyes (and the shape with
    ``fit_shape=True``; by default it stays), and returns
    ``(updated Result, PhotometricResult)``; the Result's mesh, fitted landmarks and camera are the
    refined ones, with ``timings["photometric"]`` added.
    """
    import time

    from flame_tracker.camera import project_pixels

    t0 = time.perf_counter()
    if output_model is None and getattr(model, "info", {}).get("landmark_embedding") is None:  # plain model
        from flame_tracker.model.embedding import detector_model

        model, output_model = detector_model(model), model
    opts = replace(PhotometricOptions(), **overrides)
    dt = model.v_template.dtype
    crops, lmk, iris, crop = crop_inputs([image], result.crop_obj, result.lmks68_px[None], result.iris_px[None],
                                         opts.resolution, dt)  # the Crop carries the fit's principal point
    init = {k: torch.as_tensor(getattr(result, a), dtype=dt) for k, a in
            [("shape", "shape"), ("expr", "exp"), ("jaw_pose", "jaw_pose"), ("eye_pose", "eye_pose"),
             ("neck_pose", "neck_pose")]}
    ph = fit_photometric(model, crops, lmk, torch.as_tensor(result.pose6, dtype=dt),
                         torch.as_tensor(result.fov, dtype=dt),
                         init=init, iris_ndc=iris if torch.isfinite(iris).all() else None,
                         pp_ndc=crop.pp_ndc(lmk), options=opts)
    with torch.no_grad():
        dev = model.v_template.device
        out = model(shape=ph.shape.to(dev), expr=ph.expr.to(dev), jaw_pose=ph.jaw_pose.to(dev),
                    eye_pose=ph.eye_pose.to(dev), neck_pose=init["neck_pose"].to(dev))
        pose6, fov = ph.pose6.cpu(), ph.fov.cpu()
        target68 = project_pixels(out.landmarks.cpu(), pose6, fov, crop)[0].numpy()
        fit68 = target68
        if output_model is not None and output_model is not model:
            own = output_model.landmarks(shape=ph.shape.to(dev), expr=ph.expr.to(dev), jaw_pose=ph.jaw_pose.to(dev),
                                         eye_pose=ph.eye_pose.to(dev), neck_pose=init["neck_pose"].to(dev))
            fit68 = project_pixels(own.landmarks.cpu(), pose6, fov, crop)[0].numpy()
        fit_iris = (project_pixels(out.iris.cpu(), pose6, fov, crop)[0].numpy() if out.iris is not None
                    else result.fit_iris_px)
    timings = dict(result.timings, photometric=time.perf_counter() - t0)
    # the shape too (it moves with options.fit_shape): the Result's vertices are made with it
    shape = ph.shape[0].cpu().numpy().astype(result.shape.dtype).reshape(result.shape.shape)
    new = replace(result, shape=shape, exp=ph.expr.cpu().numpy(), jaw_pose=ph.jaw_pose.cpu().numpy(),
                  eye_pose=ph.eye_pose.cpu().numpy(), pose6=pose6.numpy(), fit_lmks68_px=fit68, fit_iris_px=fit_iris,
                     fit_target68_px=None if fit68 is target68 else target68,
                     vertices=out.vertices[0].cpu().numpy().astype(result.vertices.dtype), timings=timings)
    return new, ph
