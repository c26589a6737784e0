"""Overlay pictures: a grey shaded mesh blended over the photo, with landmarks and a small legend."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from flame_tracker.rendering.differentiable import barycentrics, interpolate, vertex_normals
from flame_tracker.rendering.raster import Fragments, rasterize

# RGB colours of the landmark sets.
COLOR_DETECTED = (0, 230, 0)
COLOR_FITTED = (255, 40, 40)
COLOR_IRIS = (40, 140, 255)
MESH_GREY = 210.0
MESH_BLACK = 30.0
# Longer side of the shading render inside overlays (see render_overlay): 1024² photos and 1080p
# video frames are shaded at half resolution.
SHADING_MAX_SIDE = 512


def _to_tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return x.detach().cpu().to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


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

    Args:
        vertices_px: ``[V, 3]`` pixel ``x, y`` (original image) and camera depth ``z``.
        faces: ``[F, 3]`` triangles (counter-clockwise seen from outside).
        focal: focal length in pixels, used to recover camera-space normals; ``None`` assumes a
            60° field of view over the larger image side (only the shading contrast depends on it).

    Returns:
        ``(intensity [H, W] float32 in 0..1, mask [H, W] bool)``.
    """
    v = _to_tensor(vertices_px)
    f = _to_tensor(faces, torch.long)
    if v.dim() != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices_px must be [V,3] (x px, y px, depth), got {tuple(v.shape)}")
    if f.dim() != 2 or f.shape[1] != 3 or (f.numel() and (f.min() < 0 or f.max() >= v.shape[0])):
        raise ValueError(f"faces must be [F,3] indices into the {v.shape[0]} vertices")
    if focal is None:
        focal = 0.5 * max(height, width) / np.tan(np.deg2rad(30.0))
    frags: Fragments = rasterize(v, f, height, width, cull_backfaces=True)
    intensity = torch.zeros(height * width)
    if frags.pix.numel():
        pts = camera_points(v, float(focal), width / 2, height / 2)
        normals = vertex_normals(pts, f)[0]
        bary = barycentrics(v, f, frags)
        n = F.normalize(interpolate(normals, f, frags, bary), dim=-1)
        view = -F.normalize(interpolate(pts, f, frags, bary), dim=-1)  # surface -> camera
        # Light beside the camera, slightly up-left (camera frame: y down, z forward).
        to_light = F.normalize(torch.tensor([-0.3, -0.5, -1.0]), dim=0)
        diffuse = (n @ to_light).clamp(min=0)
        half = F.normalize(view + to_light, dim=-1)
        specular = (n * half).sum(-1).clamp(min=0) ** 24
        intensity[frags.pix] = (0.18 + 0.72 * diffuse + 0.25 * specular).clamp(0, 1)
    return intensity.view(height, width).numpy(), frags.mask[0].numpy()


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
    cv2.rectangle(image, (0, 0), (box_w, line * len(items) + 6), (0, 0, 0), -1)
    for k, (text, color) in enumerate(items):
        y = 4 + line * k + line // 2
        cv2.circle(image, (8, y), max(2, line // 5), color, -1)
        cv2.putText(image, text, (16, y + line // 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def _coverage(v: torch.Tensor, f: torch.Tensor, h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``[y1-y0, x1-x0]`` float32 coverage (0/1) of the front-facing triangles inside a box of an H×W image."""
    from flame_tracker.rendering.raster import face_orientation

    front = (face_orientation(v, f)[0] < 0) & (v[f, 2] > 1e-4).all(1)
    # 2 bits of sub-pixel precision; pixel centres are at +0.5, OpenCV's at integers.
    tri = ((v[f[front], :2] - v.new_tensor([x0 + 0.5, y0 + 0.5])) * 4).round().numpy().astype(np.int32)
    tri = tri[(np.abs(tri) < 1 << 20).all((1, 2))]
    cov = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for t in tri:  # C calls, ~2 µs per triangle
        cv2.fillConvexPoly(cov, t, 1, lineType=cv2.LINE_8, shift=2)
    return cov.astype(np.float32)


def _blend_mesh(out: np.ndarray, vertices_px: np.ndarray | torch.Tensor, faces: np.ndarray | torch.Tensor,
                alpha: float, focal: float | None, max_side: int | None) -> None:
    """Blend the shaded mesh into ``out`` (``[H, W, 3]`` uint8) in place, touching only its bounding box."""
    h, w = out.shape[:2]
    # At most 2x: beyond that, occlusion edges inside the mesh (ear over cheek) would look blocky.
    s = 1.0 if max_side is None or max(h, w) <= max_side else max(0.5, max_side / max(h, w))
    v = _to_tensor(vertices_px)
    if focal is None:
        focal = 0.5 * max(h, w) / np.tan(np.deg2rad(30.0))
    if s < 1.0:
        # Scaling x, y, the principal point and the focal length together leaves the camera-space
        # points (hence the normals and the shading) unchanged; pixel edges scale with x, y.
        hs, ws = max(1, round(h * s)), max(1, round(w * s))
        sx, sy = ws / w, hs / h
        if v.dim() == 2 and v.shape[-1] == 3:
            v = v * v.new_tensor([sx, sy, 1.0])
        intensity, mask = shade_mesh(v, faces, hs, ws, focal=float(focal) * sx)
    else:
        intensity, mask = shade_mesh(v, faces, h, w, focal=focal)
    if not mask.any():
        return
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if s < 1.0:
        # Box in full-resolution pixels, one low-res pixel of margin for the bilinear footprint.
        y0, y1 = max(0, int((rows[0] - 1) / sy)), min(h, int(np.ceil((rows[-1] + 2) / sy)))
        x0, x1 = max(0, int((cols[0] - 1) / sx)), min(w, int(np.ceil((cols[-1] + 2) / sx)))
        # The silhouette must stay sharp: coverage at full resolution is the union of the
        # front-facing triangles (exact without a depth test), filled by OpenCV one convex polygon
        # at a time (fillPoly on many polygons is even-odd and would punch holes into overlaps).
        cov = _coverage(_to_tensor(vertices_px), _to_tensor(faces, torch.long), h, w, x0, y0, x1, y1)
        # Shading: spread one low-res pixel outwards (so every covered full-res pixel has a shaded
        # neighbour), then upsample premultiplied by that support and divide it out.
        grow = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
        lit = np.where(mask, intensity, cv2.dilate(intensity, np.ones((3, 3), np.uint8))) * grow
        both = cv2.resize(np.stack([lit, grow], -1), (w, h), interpolation=cv2.INTER_LINEAR)[y0:y1, x0:x1]
        intensity = both[..., 0] / np.maximum(both[..., 1], 1e-6)
    else:
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        cov = mask[y0:y1, x0:x1].astype(np.float32)
        intensity = intensity[y0:y1, x0:x1]
    grey = (intensity * MESH_GREY + MESH_BLACK) * cov
    a = (alpha * cov)[..., None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = np.clip(region * (1 - a) + alpha * grey[..., None] + 0.5, 0, 255).astype(np.uint8)


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
        legend: draw a small legend in the top-left corner naming the landmark colours.
        shading_max_side: render the shading at most this many pixels on the longer image side and
            (but at least half resolution) and upsample it bilinearly; the silhouette (coverage) is
            always drawn at full resolution. ``None`` shades at full resolution. At 1024² this is
            about 2x faster; occlusion edges inside the mesh get 2-pixel instead of 1-pixel steps.

    Returns:
        ``[H, W, 3]`` uint8 RGB overlay (a new array).
    """
    img = np.asarray(image_rgb_uint8)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"render_overlay needs an RGB uint8 H×W×3 image, got {img.dtype} {img.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h, w = img.shape[:2]
    out = img.copy()
    if alpha > 0:
        _blend_mesh(out, vertices_px, faces, alpha, focal, shading_max_side)
    radius = max(1, int(round(min(h, w) / 300)))
    items: list[tuple[str, tuple[int, int, int]]] = []
    if lmks_detected is not None:
        draw_points(out, lmks_detected, COLOR_DETECTED, radius + 1)
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
