"""Overlay pictures: a grey shaded mesh blended over the photo, with landmarks and a small legend."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import torch

from flame_tracker.errors import InputError
from flame_tracker.rendering.differentiable import vertex_normals
from flame_tracker.rendering.raster import face_orientation
from flame_tracker.threads import cpu_threads

# RGB colours of the landmark sets.
COLOR_DETECTED = (0, 230, 0)
COLOR_FITTED = (255, 40, 40)
COLOR_IRIS = (40, 140, 255)
MESH_GREY = 210.0
MESH_BLACK = 30.0
# Longer side of the shading render inside overlays (see render_overlay): 1024² photos and 1080p
# video frames are shaded at half resolution.
SHADING_MAX_SIDE = 512
# Unit direction to the light, beside the camera, slightly up-left (camera frame: y down, z forward).
_TO_LIGHT = (np.array([-0.3, -0.5, -1.0]) / np.linalg.norm([-0.3, -0.5, -1.0])).astype(np.float32)


def _to_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(dtype)
    a = np.asarray(x)
    # (a read-only array, such as a Result's triangles, is copied: torch warns about sharing it)
    return torch.as_tensor(a if a.flags.writeable else a.copy(), dtype=dtype)


def _check_mesh(vertices_px: np.ndarray | torch.Tensor,
                faces: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(float32 [V, 3], long [F, 3])`` CPU tensors, or a ``ValueError`` naming the problem."""
    v = _to_tensor(vertices_px)
    f = _to_tensor(faces, torch.long)
    if v.dim() != 2 or v.shape[1] != 3:
        raise InputError(f"vertices_px must be [V,3] (x px, y px, depth), got {tuple(v.shape)}")
    if f.dim() != 2 or f.shape[1] != 3 or (f.numel() and (f.min() < 0 or f.max() >= v.shape[0])):
        raise InputError(f"faces must be [F,3] indices into the {v.shape[0]} vertices")
    return v, f


def camera_points(vertices_px: torch.Tensor, focal: float, cx: float, cy: float) -> torch.Tensor:
    """Unproject pixel ``x, y`` + depth ``z`` to camera-space points (OpenCV axes: x right, y down, z forward)."""
    x, y, z = vertices_px.unbind(-1)
    return torch.stack([(x - cx) * z / focal, (y - cy) * z / focal, z], dim=-1)


def shade_mesh(
    vertices_px: np.ndarray | torch.Tensor,
    faces: np.ndarray | torch.Tensor,
    height: int,
    width: int,
    *,
    focal: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Phong-shaded grey render of a mesh given in pixel coordinates.

    Visibility is an exact z-buffer of the front faces (:func:`_visible_faces`: the semantics of
    :func:`~flame_tracker.rendering.raster.rasterize` with ``cull_backfaces=True``, enumerating only
    covered pixels); shading is per pixel from perspective-correct interpolated vertex normals, in
    float32 without autograd (an overlay needs no gradient).

    Args:
        vertices_px: ``[V, 3]`` pixel ``x, y`` (original image) and camera depth ``z``.
        faces: ``[F, 3]`` triangles (counter-clockwise seen from outside).
        focal: focal length in pixels, used to recover camera-space normals; ``None`` assumes a
            60° field of view over the larger image side (only the shading contrast depends on it).

    Returns:
        ``(intensity [H, W] float32 in 0..1, mask [H, W] bool)``.
    """
    v, f = _check_mesh(vertices_px, faces)
    if focal is None:
        focal = _default_focal(height, width)
    return _shade(v, f, height, width, float(focal), _front_faces(v, f))


def _shade(v: torch.Tensor, f: torch.Tensor, height: int, width: int, focal: float, face: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`shade_mesh` for checked tensors and the front faces ``face`` (from :func:`_front_faces`)."""
    pix, pix_face = _visible_faces(v, f, height, width, face)
    intensity = torch.zeros(height * width)
    mask = torch.zeros(height * width, dtype=torch.bool)
    if pix.numel():
        mask[pix] = True
        normals = vertex_normals(camera_points(v, focal, width / 2, height / 2), f)[0]
        # Corner attributes as [attribute, corner, P] rows: one index_select each, and every
        # per-pixel operation below runs on contiguous rows.
        corner = f.T.contiguous().index_select(1, pix_face).view(-1)  # [3P]
        (tx, ty, tz), nrm = (a.T.contiguous().index_select(1, corner).view(3, 3, -1) for a in (v, normals))
        # Screen-space barycentrics as edge functions at the pixel centres, then weighted by 1/z
        # (perspective-correct) and renormalised; the common triangle-area factor cancels.
        y = torch.div(pix, width, rounding_mode="floor")
        x = (pix - y * width).float() + 0.5
        y = y.float() + 0.5
        i1, i2 = [1, 2, 0], [2, 0, 1]
        bary = ((tx[i2] - tx[i1]) * (y - ty[i1]) - (ty[i2] - ty[i1]) * (x - tx[i1])) / tz
        bary /= bary.sum(0)  # also fixes the sign: edge functions of front faces are negative
        n = (nrm * bary).sum(1)  # [3, P]
        n /= (n * n).sum(0).clamp(min=1e-24).sqrt()
        # The visible surface point lies on the pixel's ray: direction to the camera = -ray.
        view = torch.stack([(width / 2 - x) / focal, (height / 2 - y) / focal, torch.full_like(x, -1.0)])
        light = torch.from_numpy(_TO_LIGHT)[:, None]
        half = view / (view * view).sum(0).sqrt() + light
        half /= (half * half).sum(0).sqrt()
        diffuse = (n * light).sum(0).clamp(min=0)
        specular = (n * half).sum(0).clamp(min=0) ** 24
        intensity[pix] = (0.18 + 0.72 * diffuse + 0.25 * specular).clamp(0, 1)
    return intensity.view(height, width).numpy(), mask.view(height, width).numpy()


def draw_points(image: np.ndarray, points: np.ndarray, color: tuple[int, int, int], radius: int) -> None:
    """Draw filled discs of ``radius`` at ``points [K, 2]`` (pixels) in place, vectorised; NaN points are skipped."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if not len(pts):
        return
    r = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(r, r, indexing="ij")
    disc = (dx**2 + dy**2) <= radius**2 + radius  # slightly fuller than a Euclidean disc at small r
    dx, dy = dx[disc], dy[disc]
    # Pixel (i, j) has its centre at (j + 0.5, i + 0.5): the containing pixel is floor(p).
    cx = np.floor(pts[:, 0]).astype(np.int64)[:, None] + dx[None]
    cy = np.floor(pts[:, 1]).astype(np.int64)[:, None] + dy[None]
    h, w = image.shape[:2]
    ok = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    image[cy[ok], cx[ok]] = color


def _draw_legend(image: np.ndarray, items: list[tuple[str, tuple[int, int, int]]]) -> None:
    h, w = image.shape[:2]
    scale = max(0.35, min(h, w) / 1800)
    thick = max(1, int(round(scale * 2)))
    line = int(22 * scale) + 6
    box_w = int(110 * scale) + 20
    if box_w > w / 3 or line * len(items) + 6 > h / 3:  # a small picture: the legend would hide the face
        return
    cv2.rectangle(image, (0, 0), (box_w, line * len(items) + 6), (0, 0, 0), -1)
    for k, (text, color) in enumerate(items):
        y = 4 + line * k + line // 2
        cv2.circle(image, (8, y), max(2, line // 5), color, -1)
        cv2.putText(image, text, (16, y + line // 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick,
                    cv2.LINE_AA)


def _default_focal(height: int, width: int) -> float:
    """Focal length (pixels) of a 60° field of view over the larger image side: the shading's
    default when no camera is given (only the shading contrast depends on it)."""
    return 0.5 * max(height, width) / np.tan(np.deg2rad(30.0))


def _front_faces(v: torch.Tensor, f: torch.Tensor) -> np.ndarray:
    """Indices of the faces :func:`~flame_tracker.rendering.raster.rasterize` keeps with
    ``cull_backfaces=True``: facing the camera (negative screen area), not degenerate, in front of
    the near plane. The test is invariant to scaling x and y (the low-res shading pass)."""
    v = v.double()
    area = face_orientation(v, f)[0]
    in_front = (v[:, 2] > 1e-4)[f.long()].all(1)
    return torch.nonzero((area < -1e-12) & in_front)[:, 0].numpy()


# Edge topology of the overlay meshes by content digest (a tracker draws one topology for every
# image or frame): per face corner, its undirected edge and the direction it runs in.
_EDGES: dict[tuple[tuple[int, ...], bytes], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}


def _edge_topology(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(edge [F*3], sign [F*3], lo [E], hi [E])``: face corner ``3 k + i`` runs along the edge
    ``f[k, i] -> f[k, (i + 1) % 3]``, which is undirected edge ``edge`` from ``lo`` to ``hi`` (``sign``
    +1) or from ``hi`` to ``lo`` (-1)."""
    key = (f.shape, hashlib.blake2b(np.ascontiguousarray(f).data, digest_size=16).digest())
    hit = _EDGES.get(key)
    if hit is None:
        a, b = f.ravel(), f[:, [1, 2, 0]].ravel()
        nv = int(f.max(initial=0)) + 1
        keys, edge = np.unique(np.minimum(a, b) * nv + np.maximum(a, b), return_inverse=True)
        hit = (edge.ravel(), np.where(a < b, 1, -1), keys // nv, keys % nv)
        if len(_EDGES) >= 4:  # a handful of topologies at most; keep memory bounded
            _EDGES.clear()
        _EDGES[key] = hit
    return hit


def _front_spans(v: torch.Tensor, f: torch.Tensor, face: np.ndarray, width: int, height: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Scanline spans of the front faces ``face`` (:func:`_front_faces`) inside a ``width × height``
    image.

    Returns ``(tri [K, 3, 3], tid [S], row [S], c0 [S], c1 [S])``: the faces' corners (pixels x, y
    and depth, float64) and per (triangle, row) pair the inclusive columns whose pixel centres lie
    inside the triangle. Enumerating exactly the covered pixels, rather than every
    triangle's bounding box as the general rasteriser does, is ~3x less work on a head mesh.
    """
    tri = v.numpy().astype(np.float64)[f.numpy()[face]]  # [K, 3, 3]
    # Corners sorted top to bottom by a 3-element sorting network (argsort would be 5x slower).
    (xt, xm, xb), (yt, ym, yb) = tri[..., 0].T, tri[..., 1].T
    for i, j in ((0, 1), (1, 2), (0, 1)):
        xs, ys = [xt, xm, xb], [yt, ym, yb]
        swap = ys[i] > ys[j]
        xs[i], xs[j] = np.where(swap, xs[j], xs[i]), np.where(swap, xs[i], xs[j])
        ys[i], ys[j] = np.where(swap, ys[j], ys[i]), np.where(swap, ys[i], ys[j])
        (xt, xm, xb), (yt, ym, yb) = xs, ys

    def slope(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        return np.divide(dx, dy, out=np.zeros_like(dx), where=dy > 0)

    # Each edge as x = x_at_row0 + row * slope, at the pixel-centre line y = row + 0.5. Rows above
    # the middle corner lie between the long (top -> bottom) and the upper edge, the others between
    # the long and the lower edge: two trapezoids per triangle, each with 4 numbers per row.
    s_long, s_top, s_bot = slope(xb - xt, yb - yt), slope(xm - xt, ym - yt), slope(xb - xm, yb - ym)
    o_long, o_top, o_bot = xt + (0.5 - yt) * s_long, xt + (0.5 - yt) * s_top, xm + (0.5 - ym) * s_bot
    first = np.maximum(np.ceil(np.stack([yt, ym]) - 0.5), 0)  # first row of each trapezoid [2, K]
    last = np.minimum(np.stack([np.ceil(ym - 0.5) - 1, np.floor(yb - 0.5)]), height - 1)
    count = (last - first + 1).clip(0).astype(np.int64).ravel()  # [2K]: upper halves, then lower
    edges = np.stack([np.concatenate([o_long, o_long]), np.concatenate([s_long, s_long]),
                      np.concatenate([o_top, o_bot]), np.concatenate([s_top, s_bot])], 1)  # [2K, 4]
    half = np.repeat(np.arange(2 * len(tri)), count)
    row = np.arange(len(half)) - np.repeat(np.cumsum(count) - count - first.ravel().astype(np.int64), count)
    e = edges.take(half, axis=0)  # one row gather instead of one per edge parameter
    x_long, x_short = e[:, 0] + row * e[:, 1], e[:, 2] + row * e[:, 3]
    c0 = np.maximum(np.ceil(np.minimum(x_long, x_short) - 0.5), 0).astype(np.int64)
    c1 = np.minimum(np.floor(np.maximum(x_long, x_short) - 0.5), width - 1).astype(np.int64)
    ok = c0 <= c1
    tid = half % max(len(tri), 1)
    return tri, tid[ok], row[ok], c0[ok], c1[ok]


def _coverage(v: torch.Tensor, f: torch.Tensor, face: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``[y1-y0, x1-x0]`` bool: pixel centres of the box covered by one of the front faces ``face``.

    The silhouette of a mesh is the union of its front-facing triangles (exact without a depth test).
    Front faces all have the same orientation on screen, so the number of them covering a point is
    the winding number of their boundary: the edges not shared by two front faces (a shared edge runs
    once each way and cancels), i.e. the contours, ~20x fewer than the faces' edges. Each contour
    edge adds +1 (running down: a left boundary) or -1 (up: a right boundary) where it crosses a
    row's pixel-centre line, and a cumulative sum over the row gives the count, so overlaps (ear over
    cheek) add up instead of cancelling. Same inclusive pixel-centre rule as
    :func:`~flame_tracker.rendering.raster.rasterize` (its mask with ``cull_backfaces=True``).
    """
    bh, bw = y1 - y0, x1 - x0
    fn = f.numpy()
    edge, sign, lo, hi = _edge_topology(fn)
    corners = (face[:, None] * 3 + np.arange(3)).ravel()
    net = np.bincount(edge[corners], weights=sign[corners], minlength=len(lo)).astype(np.int64)
    keep = np.nonzero(net)[0]
    xy = v.numpy()[:, :2].astype(np.float64) - (x0, y0)
    pa, pb, w = xy[lo[keep]], xy[hi[keep]], net[keep]  # net multiplicity of lo -> hi
    down = pb[:, 1] > pa[:, 1]
    top, bottom = np.where(down[:, None], pa, pb), np.where(down[:, None], pb, pa)
    step = np.where(down, w, -w)  # > 0: left boundary of the covered region, < 0: right boundary
    # Rows whose pixel-centre line y = row + 0.5 lies in [top, bottom): a vertex where two contour
    # edges meet is counted once.
    r0 = np.maximum(np.ceil(top[:, 1] - 0.5), 0)
    count = (np.minimum(np.ceil(bottom[:, 1] - 0.5) - 1, bh - 1) - r0 + 1).clip(0).astype(np.int64)
    dy = bottom[:, 1] - top[:, 1]
    slope = np.divide(bottom[:, 0] - top[:, 0], dy, out=np.zeros_like(dy), where=dy > 0)
    offset = top[:, 0] + (0.5 - top[:, 1]) * slope  # x at row 0's centre line
    eid = np.repeat(np.arange(len(keep)), count)
    row = np.arange(len(eid)) - np.repeat(np.cumsum(count) - count - r0.astype(np.int64), count)
    x = offset[eid] + row * slope[eid]
    st = step[eid]
    # Inclusive: a left boundary starts at the first centre >= x, a right one stops after the last <= x.
    col = np.where(st > 0, np.ceil(x - 0.5), np.floor(x - 0.5) + 1).clip(0, bw).astype(np.int64)
    diff = torch.zeros(bh * (bw + 1), dtype=torch.int32).index_add_(
        0, torch.from_numpy(row * (bw + 1) + col), torch.from_numpy(st.astype(np.int32)))
    return np.cumsum(diff.numpy().reshape(bh, bw + 1)[:, :bw], axis=1, dtype=np.int32) > 0


def _visible_faces(v: torch.Tensor, f: torch.Tensor, height: int, width: int, face: np.ndarray
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-buffer of the front faces from their spans: ``(pix [P], face [P])``, the covered pixels
    (flat ``y * W + x``) and the nearest triangle at each.

    Same semantics as :func:`~flame_tracker.rendering.raster.rasterize` with ``cull_backfaces=True``
    (pixel centres, perspective-correct depth as 1/z, quantised to 30 bits, ties to the lower face
    index), ~3x cheaper because only covered pixels are enumerated.
    """
    tri, tid, row, c0, c1 = _front_spans(v, f, face, width, height)
    if not len(tid):
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    # 1/z is affine in screen space: 1/z = a x + b y + c per triangle.
    xy, iz = tri[..., :2], 1.0 / tri[..., 2]
    e1, e2 = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0]
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    d1, d2 = iz[:, 1] - iz[:, 0], iz[:, 2] - iz[:, 0]
    a = (d1 * e2[:, 1] - d2 * e1[:, 1]) / det
    b = (d2 * e1[:, 0] - d1 * e2[:, 0]) / det
    c = iz[:, 0] - a * xy[:, 0, 0] - b * xy[:, 0, 1]
    # Fragments: every pixel of every span.
    n = c1 - c0 + 1
    sid = np.repeat(np.arange(len(tid)), n)
    col = np.arange(len(sid)) - np.repeat(np.cumsum(n) - n - c0, n)
    t, r = tid[sid], row[sid]
    near = a[t] * (col + 0.5) + b[t] * (r + 0.5) + c[t]  # 1/z: larger is nearer
    lo, hi = iz.min(), iz.max()
    far = np.clip((hi - near) * (((1 << 30) - 1) / max(hi - lo, 1e-30)), 0, (1 << 30) - 1).astype(np.int64)
    zbuf = torch.full((height * width,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    zbuf.scatter_reduce_(0, torch.from_numpy(r * width + col), torch.from_numpy((far << 32) | face[t]), reduce="amin")
    pix = torch.nonzero(zbuf != torch.iinfo(torch.int64).max, as_tuple=True)[0]
    return pix, zbuf[pix] & 0xFFFFFFFF


def _blend_mesh(out: np.ndarray, vertices_px: np.ndarray | torch.Tensor, faces: np.ndarray | torch.Tensor,
                alpha: float, focal: float | None, max_side: int | None) -> None:
    """Blend the shaded mesh into ``out`` (``[H, W, 3]`` uint8) in place, touching only its bounding box."""
    h, w = out.shape[:2]
    # At most 2x: beyond that, occlusion edges inside the mesh (ear over cheek) would look blocky.
    s = 1.0 if max_side is None or max(h, w) <= max_side else max(0.5, max_side / max(h, w))
    v, f = _check_mesh(vertices_px, faces)
    if focal is None:
        focal = _default_focal(h, w)
    face = _front_faces(v, f)  # scaling x, y by s keeps every face's orientation
    if s < 1.0:
        # Scaling x, y, the principal point and the focal length together leaves the camera-space
        # points (hence the normals and the shading) unchanged; pixel edges scale with x, y.
        hs, ws = max(1, round(h * s)), max(1, round(w * s))
        sx, sy = ws / w, hs / h
        intensity, mask = _shade(v * v.new_tensor([sx, sy, 1.0]), f, hs, ws, float(focal) * sx, face)
    else:
        intensity, mask = _shade(v, f, h, w, float(focal), face)
    if not mask.any():
        return
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if s < 1.0:
        # Box in full-resolution pixels, one low-res pixel of margin for the bilinear footprint.
        y0, y1 = max(0, int((rows[0] - 1) / sy)), min(h, int(np.ceil((rows[-1] + 2) / sy)))
        x0, x1 = max(0, int((cols[0] - 1) / sx)), min(w, int(np.ceil((cols[-1] + 2) / sx)))
        # Shading: spread one low-res pixel outwards (so every covered full-res pixel has a shaded
        # neighbour), then upsample premultiplied by that support and divide it out. Only the
        # low-res box (2 pixels of margin) is processed and only the full-res box is resampled.
        ly0, ly1 = max(0, rows[0] - 2), min(hs, rows[-1] + 3)
        lx0, lx1 = max(0, cols[0] - 2), min(ws, cols[-1] + 3)
        m, lit = mask[ly0:ly1, lx0:lx1], intensity[ly0:ly1, lx0:lx1]
        kernel = np.ones((3, 3), np.uint8)
        grow = cv2.dilate(m.astype(np.uint8), kernel).astype(np.float32)
        lit = np.where(m, lit, cv2.dilate(lit, kernel)) * grow
        support = np.dstack([lit, grow])
        if sx == sy == 0.5:
            # Exactly half resolution (even-sized images): an aligned box is upsampled by cv2.resize
            # itself (5x faster than warpAffine), with the same bilinear map as a full-image resize.
            x0, x1, y0, y1 = 2 * lx0, min(w, 2 * lx1), 2 * ly0, min(h, 2 * ly1)
            both = cv2.resize(support, (2 * (lx1 - lx0), 2 * (ly1 - ly0)), interpolation=cv2.INTER_LINEAR)
            both = both[: y1 - y0, : x1 - x0]
        else:
            # cv2.resize's bilinear map (src = (dst + 0.5) * scale - 0.5), restricted to the box.
            warp = np.array([[sx, 0, (x0 + 0.5) * sx - 0.5 - lx0], [0, sy, (y0 + 0.5) * sy - 0.5 - ly0]])
            both = cv2.warpAffine(support, warp, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE)
        intensity = both[..., 0] / np.maximum(both[..., 1], 1e-6)
        cov = _coverage(v, f, face, x0, y0, x1, y1).astype(np.float32)
    else:
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        cov = mask[y0:y1, x0:x1].astype(np.float32)
        intensity = intensity[y0:y1, x0:x1]
    # Per-pixel alpha blend in OpenCV (one pass, no float temporaries of the 3-channel box); the
    # grey level is rounded to uint8 first, which moves a result by at most one level.
    grey = cv2.cvtColor((intensity * MESH_GREY + (MESH_BLACK + 0.5)).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    a = alpha * cov
    out[y0:y1, x0:x1] = cv2.blendLinear(np.ascontiguousarray(out[y0:y1, x0:x1]), grey, 1.0 - a, a)


def render_overlay(
    image_rgb_uint8: np.ndarray,
    vertices_px: np.ndarray | torch.Tensor,
    faces: np.ndarray | torch.Tensor,
    *,
    alpha: float = 0.6,
    lmks_detected: np.ndarray | None = None,
    lmks_fitted: np.ndarray | None = None,
    iris: np.ndarray | None = None,
    focal: float | None = None,
    legend: bool = True,
    shading_max_side: int | None = SHADING_MAX_SIDE,
) -> np.ndarray:
    """Blend a grey shaded mesh over a photo and draw landmarks.

    Args:
        image_rgb_uint8: ``[H, W, 3]`` uint8 RGB image (original pixels).
        vertices_px: ``[V, 3]`` mesh vertices: ``x, y`` in original-image pixels, ``z`` camera depth.
        faces: ``[F, 3]`` triangles.
        alpha: opacity of the mesh (0 = photo only, 1 = mesh only).
        lmks_detected: ``[K, 2]`` detected landmarks in pixels (drawn green).
        lmks_fitted: ``[K, 2]`` model landmarks in pixels (drawn red, smaller, on top).
        iris: ``[M, 2]`` iris points in pixels (drawn blue).
        focal: focal length in pixels for the shading normals (see :func:`shade_mesh`).
        legend: draw a small legend in the top-left corner naming the landmark colours (not on a
            picture it would cover a third of the sides of).
        shading_max_side: render the shading at most this many pixels on the longer image side and
            (but at least half resolution) and upsample it bilinearly; the silhouette (coverage) is
            always drawn at full resolution. ``None`` shades at full resolution. At 1024² this is
            about 2x faster; occlusion edges inside the mesh get 2-pixel instead of 1-pixel steps.

    Returns:
        ``[H, W, 3]`` uint8 RGB overlay (a new array).
    """
    img = np.asarray(image_rgb_uint8)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError(f"render_overlay needs an RGB uint8 H×W×3 image, got {img.dtype} {img.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha}")
    h, w = img.shape[:2]
    out = img.copy()
    if alpha > 0:
        # One intra-op thread: its small torch ops measured 3.4x faster than with two on a busy
        # 2-core CPU (thread-pool waits); photos and every video overlay frame come through here.
        with cpu_threads(1):
            _blend_mesh(out, vertices_px, faces, alpha, focal, shading_max_side)
    radius = max(1, int(round(min(h, w) / 300)))
    pts = lmks_detected if lmks_detected is not None else lmks_fitted
    if pts is not None and np.isfinite(pts).any():
        # a small face (a thumbnail, a wide shot): dots of the picture's size would hide it (a 30-pixel
        # face under 5-pixel discs, from a user trial); at most about a hundredth of the face each
        face = float(np.nanmax(np.ptp(np.asarray(pts, float)[np.isfinite(pts).all(1)], axis=0)))
        radius = min(radius, int(face / 100))
    items: list[tuple[str, tuple[int, int, int]]] = []
    if lmks_detected is not None:
        draw_points(out, lmks_detected, COLOR_DETECTED, radius + 1 if radius else 0)
        items.append(("detected", COLOR_DETECTED))
    if lmks_fitted is not None:
        draw_points(out, lmks_fitted, COLOR_FITTED, radius)
        items.append(("fitted", COLOR_FITTED))
    if iris is not None:
        draw_points(out, iris, COLOR_IRIS, radius)
        items.append(("iris", COLOR_IRIS))
    if legend and items:
        _draw_legend(out, items)
    return out
