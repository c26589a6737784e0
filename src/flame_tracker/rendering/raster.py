"""Vectorised CPU/GPU z-buffer rasteriser (pure PyTorch, not differentiable).

Visibility is the only non-differentiable part of rendering: this module finds, for every pixel, the
nearest triangle covering its centre. Differentiable barycentrics are recomputed from that face-index
buffer in :mod:`flame_tracker.rendering.differentiable`.

Algorithm: the pixels of every triangle's bounding box are enumerated as one flat tensor of candidate
fragments (``repeat_interleave`` over the box sizes, processed in chunks of bounded size), so there is
no Python loop over pixels or triangles, only over a few memory-bounded chunks. The z-test packs
a quantised depth and the face index into one int64 key and takes a ``scatter_reduce(amin)`` per
pixel, which resolves all overlaps in a single pass.

Conventions (docs/architecture.md): vertex ``x, y`` are image pixels (x right, y down, origin at the
top-left corner of the top-left pixel, so pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``)
and ``z`` is the positive camera depth. Depth is interpolated perspective-correctly (``1/z`` is
linear in screen space).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from flame_tracker.errors import InputError

# Candidate fragments per chunk: bounds peak memory (~6 float tensors of this size) at any resolution.
_MAX_FRAGMENTS_PER_CHUNK = 1 << 22
_DEPTH_BITS = 30
_NO_HIT = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """Per-pixel rasterisation result for a batch of N images of size H×W.

    Attributes:
        face_idx: ``[N, H, W]`` long, index of the visible triangle, ``-1`` for background.
        pix: ``[P]`` long, flat indices ``n*H*W + y*W + x`` of the covered pixels.
        pix_face: ``[P]`` long, visible triangle of each covered pixel.
        shape: ``(N, H, W)``.
    """

    face_idx: torch.Tensor
    pix: torch.Tensor
    pix_face: torch.Tensor
    shape: tuple[int, int, int]
    # Per-pixel index tensors derived from the visibility, memoised: a fit reuses one visibility
    # pass for several differentiable steps, each asking for them several times.
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def mask(self) -> torch.Tensor:
        """``[N, H, W]`` bool, pixels covered by the mesh."""
        return self.face_idx >= 0

    def pix_batch(self) -> torch.Tensor:
        """``[P]`` long, batch index of each covered pixel."""
        if "batch" not in self.cache:
            n, h, w = self.shape
            self.cache["batch"] = torch.div(self.pix, h * w, rounding_mode="floor")
        return self.cache["batch"]

    def select(self, keep: torch.Tensor) -> "Fragments":
        """Keep only the covered pixels where ``keep`` (``[P]`` bool, or ``[N, H, W]`` bool image) is true.

        Used to shade only the pixels a loss looks at (e.g. inside a face mask).
        """
        if keep.dim() == 3:
            keep = keep.reshape(-1)[self.pix]
        pix = self.pix[keep]
        face_idx = torch.full_like(self.face_idx.view(-1), -1)
        face_idx[pix] = self.pix_face[keep]
        return Fragments(face_idx=face_idx.view(self.shape), pix=pix, pix_face=self.pix_face[keep], shape=self.shape)

    def pix_centres(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[P, 2]`` pixel-centre coordinates ``(x, y)`` of the covered pixels."""
        key = ("centres", dtype)
        if key not in self.cache:
            _, h, w = self.shape
            rem = self.pix % (h * w)
            y = torch.div(rem, w, rounding_mode="floor")
            x = rem % w
            self.cache[key] = torch.stack([x, y], dim=-1).to(dtype) + 0.5
        return self.cache[key]


def barycentric_2d(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Barycentric coordinates ``[..., 3]`` of 2-D ``points [..., 2]`` in the triangles ``corners
    [..., 3, 2]`` (broadcast); unclipped (negative outside the triangle), degenerate triangles safe."""
    a, b, c = corners[..., 0, :], corners[..., 1, :], corners[..., 2, :]
    v0, v1, v2 = b - a, c - a, points - a
    den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    l1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
    l2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
    return np.stack([1 - l1 - l2, l1, l2], -1)


def _as_batch(vertices: torch.Tensor) -> torch.Tensor:
    if vertices.dim() == 2:
        vertices = vertices[None]
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise InputError(f"vertices must be [V,3] or [N,V,3] (x px, y px, depth), got {tuple(vertices.shape)}")
    return vertices


def face_orientation(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Signed doubled screen area ``[N, F]`` of each triangle; negative means it faces the camera.

    With y pointing down, a triangle that is counter-clockwise seen from outside in the y-up model
    frame (FLAME and ICT convention) has a negative signed area on screen.
    """
    v = _as_batch(vertices)
    tri = v[:, faces.long(), :2]
    e1 = tri[:, :, 1] - tri[:, :, 0]
    e2 = tri[:, :, 2] - tri[:, :, 0]
    return e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]


@torch.no_grad()
def rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    *,
    cull_backfaces: bool = False,
    near: float = 1e-4,
) -> Fragments:
    """Rasterise triangle meshes with a z-buffer.

    Args:
        vertices: ``[V, 3]`` or ``[N, V, 3]``: pixel ``x, y`` and camera depth ``z`` (> 0 in front).
        faces: ``[F, 3]`` triangle vertex indices (shared by the batch).
        height, width: output image size in pixels.
        cull_backfaces: drop triangles that face away from the camera (about half the work on a
            closed head mesh; keep False for open or inconsistently wound meshes).
        near: triangles with a vertex closer than this depth are dropped (no clipping).

    Returns:
        :class:`Fragments` with the visible triangle per pixel.
    """
    v = _as_batch(vertices).detach()
    n_batch = v.shape[0]
    device = v.device
    faces = faces.to(device=device, dtype=torch.long)
    hw = height * width
    tri, boxes, keep = _triangles(v, faces, height, width, cull_backfaces, near)
    kept = torch.nonzero(keep, as_tuple=True)[0]
    zbuf = torch.full((n_batch * hw,), _NO_HIT, dtype=torch.int64, device=device)
    if kept.numel():
        coef_t, f_idx, base, tw, th = _pixel_equations(tri, boxes, kept, faces.shape[0], height, width)
        _fill_zbuffer(zbuf, coef_t, f_idx, base, tw, th, width)
    hit = zbuf != _NO_HIT
    face_idx = torch.where(hit, zbuf & 0xFFFFFFFF, torch.full_like(zbuf, -1))
    pix = torch.nonzero(hit, as_tuple=True)[0]
    return Fragments(
        face_idx=face_idx.view(n_batch, height, width),
        pix=pix,
        pix_face=face_idx[pix],
        shape=(n_batch, height, width),
    )


def _triangles(v: torch.Tensor, faces: torch.Tensor, height: int, width: int, cull_backfaces: bool,
               near: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-triangle set-up of the batch (``N*F`` rows): corners ``[N*F, 3, 3]`` (float64: no cracks
    between neighbouring triangles at 1080p), ``(area, x0, y0, box width, box height)`` ``[N*F, 5]``
    of the pixel boxes, and which triangles can cover a pixel (not degenerate, in front of ``near``,
    facing the camera when culling, box inside the image)."""
    n_batch, n_faces = v.shape[0], faces.shape[0]
    tri = v.index_select(1, faces.reshape(-1)).to(torch.float64).view(n_batch * n_faces, 3, 3)
    xy = tri[..., :2]
    z = tri[..., 2]
    e1, e2 = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]  # [N*F], as face_orientation
    keep = (area.abs() > 1e-12) & (z > near).all(-1)
    if cull_backfaces:
        keep &= area < 0
    lo = xy.amin(dim=1)
    hi = xy.amax(dim=1)
    # Pixel j is a candidate when its centre j + 0.5 lies inside [lo, hi].
    x0 = torch.ceil(lo[:, 0] - 0.5).clamp(min=0)
    x1 = torch.floor(hi[:, 0] - 0.5).clamp(max=width - 1)
    y0 = torch.ceil(lo[:, 1] - 0.5).clamp(min=0)
    y1 = torch.floor(hi[:, 1] - 0.5).clamp(max=height - 1)
    bw = (x1 - x0 + 1).clamp(min=0)
    bh = (y1 - y0 + 1).clamp(min=0)
    keep &= (bw > 0) & (bh > 0)
    return tri, torch.stack([area, x0, y0, bw, bh], 1), keep


def _pixel_equations(tri: torch.Tensor, boxes: torch.Tensor, kept: torch.Tensor, n_faces: int, height: int,
                     width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the ``kept`` triangles: the 12 coefficients ``[12, K]`` of (b0, b1, b2, scaled 1/z) as
    linear functions of the pixel offset in the box, the face index, the flat index of each box's
    first pixel, and the box widths and heights."""
    # One gather of everything the kept triangles need (flat index_select, no 2-D indexing).
    packed = torch.cat([tri.reshape(-1, 9), boxes], 1).index_select(0, kept)
    t = packed[:, :9].view(-1, 3, 3)[..., :2]  # [K, 3, 2]
    zt = packed[:, :9].view(-1, 3, 3)[..., 2]
    a = packed[:, 9]
    tx0, ty0, kbw, kbh = packed[:, 10], packed[:, 11], packed[:, 12], packed[:, 13]
    b_idx = torch.div(kept, n_faces, rounding_mode="floor")
    f_idx = kept - b_idx * n_faces
    # Barycentric k is linear in the pixel centre: b_k = A_k x + B_k y + C_k (edge function
    # opposite vertex k over the signed area); 1/z is then linear too. Precomputing these
    # 12 coefficients per triangle leaves a few multiply-adds per candidate pixel.
    i1, i2 = [1, 2, 0], [2, 0, 1]
    p1, p2 = t[:, i1], t[:, i2]  # [K, 3, 2]
    ca = -(p2[..., 1] - p1[..., 1]) / a[:, None]
    cb = (p2[..., 0] - p1[..., 0]) / a[:, None]
    cc = -(ca * p1[..., 0] + cb * p1[..., 1])
    iz = 1.0 / zt
    inv_lo, inv_hi = iz.min(), iz.max()  # quantise 1/z: exact ordering, no division per pixel
    scale = ((1 << _DEPTH_BITS) - 1) / torch.clamp(inv_hi - inv_lo, min=1e-30)
    # Rows A, B, C of (b0, b1, b2, 1/z) = A x + B y + C, re-centred on each box's first pixel
    # centre (in float64) so that the per-candidate evaluation runs in float32 on small offsets
    # without losing precision; 1/z is mapped to the quantisation scale up front.
    ra = torch.cat([ca, (ca * iz).sum(1, keepdim=True)], 1)
    rb = torch.cat([cb, (cb * iz).sum(1, keepdim=True)], 1)
    rc = torch.cat([cc, (cc * iz).sum(1, keepdim=True)], 1)
    rc = rc + ra * (tx0 + 0.5)[:, None] + rb * (ty0 + 0.5)[:, None]
    ra[:, 3] *= scale
    rb[:, 3] *= scale
    rc[:, 3] = (rc[:, 3] - inv_lo) * scale
    coef_t = torch.cat([ra, rb, rc], 1).to(torch.float32).T.contiguous()  # [12, K]
    base = b_idx * (height * width) + ty0.long() * width + tx0.long()
    return coef_t, f_idx, base, kbw.long(), kbh.long()


def _fill_zbuffer(zbuf: torch.Tensor, coef_t: torch.Tensor, f_idx: torch.Tensor, base: torch.Tensor,
                  tw: torch.Tensor, th: torch.Tensor, width: int) -> None:
    """Scan exactly the box pixels of every kept triangle (no padding), in chunks of about
    ``_MAX_FRAGMENTS_PER_CHUNK`` candidates, keeping the nearest face per pixel in ``zbuf``."""
    device = zbuf.device
    count = tw * th
    ends = torch.cumsum(count, 0)
    bounds = torch.arange(0, int(ends[-1]) + _MAX_FRAGMENTS_PER_CHUNK, _MAX_FRAGMENTS_PER_CHUNK, device=device)
    cuts = [0] + torch.unique(torch.searchsorted(ends, bounds, right=True).clamp(max=ends.numel())).tolist()
    first = ends - count  # first candidate of each triangle
    for lo_t, hi_t in zip(cuts[:-1], cuts[1:]):
        if hi_t <= lo_t:
            continue
        tid = torch.repeat_interleave(torch.arange(lo_t, hi_t, device=device), count[lo_t:hi_t])
        # candidate index within its triangle (the chunk's candidates start at first[lo_t])
        local = torch.arange(tid.numel(), device=device) + first[lo_t] - first.index_select(0, tid)
        w = tw.index_select(0, tid)
        dy = torch.div(local, w, rounding_mode="floor")
        dx = local - dy * w
        k = coef_t.index_select(1, tid)  # [12, C]: rows A, B, C' of (b0, b1, b2, scaled 1/z)
        # (b0, b1, b2, (1/z - 1/z_min) * scale) of every candidate as one [4, C] evaluation
        # (candidate-major rows: contiguous, vectorised element-wise kernels).
        e = k[0:4] * dx.to(torch.float32) + k[4:8] * dy.to(torch.float32) + k[8:12]
        sel = torch.nonzero((e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0), as_tuple=True)[0]  # inside
        # Larger 1/z is nearer: key = (quantised "farness") << 32 | face index.
        q = ((((1 << _DEPTH_BITS) - 1) - e[3].index_select(0, sel)).clamp(0, (1 << _DEPTH_BITS) - 1)).long()
        ti = tid.index_select(0, sel)
        key = (q << 32) | f_idx.index_select(0, ti)
        pix = base.index_select(0, ti) + dy.index_select(0, sel) * width + dx.index_select(0, sel)
        zbuf.scatter_reduce_(0, pix, key, reduce="amin")
