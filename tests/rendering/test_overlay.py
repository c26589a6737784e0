"""Overlay internals: exact full-resolution silhouette, numpy shading equal to the differentiable path."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from flame_tracker.rendering import barycentrics, interpolate, rasterize, render_overlay, shade_mesh, vertex_normals
from flame_tracker.rendering.overlay import _coverage, _front_faces, _visible_faces, camera_points
from flame_tracker.rendering.raster import face_orientation


def sphere(centre: tuple[float, float, float], radius: float, n: int = 24,
           bumps: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A closed UV sphere in camera space (x right, y down, z forward), faces outward counter-clockwise."""
    th, ph = np.meshgrid(np.linspace(0, np.pi, n + 1)[1:-1], np.linspace(0, 2 * np.pi, 2 * n, endpoint=False),
                         indexing="ij")
    r = radius * (1 + bumps * np.sin(3 * th) * np.cos(5 * ph))
    ring = np.stack([r * np.sin(th) * np.cos(ph), r * np.cos(th), r * np.sin(th) * np.sin(ph)], -1).reshape(-1, 3)
    v = np.concatenate([ring, [[0, radius, 0], [0, -radius, 0]]]) + centre
    m = 2 * n
    idx = np.arange((n - 1) * m).reshape(n - 1, m)
    a, b = idx[:-1], np.roll(idx[:-1], -1, 1)
    c, d = idx[1:], np.roll(idx[1:], -1, 1)
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([b, d, c], -1).reshape(-1, 3)])
    top, bottom = len(v) - 2, len(v) - 1
    faces = np.concatenate([faces, np.stack([np.full(m, top), idx[0], np.roll(idx[0], -1)], -1),
                            np.stack([np.full(m, bottom), np.roll(idx[-1], -1), idx[-1]], -1)])
    # Orient every face outward.
    tri = v[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    out = (normal * (tri.mean(1) - centre)).sum(1) > 0
    faces[~out] = faces[~out][:, ::-1]
    return v, faces


def to_pixels(points: np.ndarray, focal: float, c: float) -> np.ndarray:
    x, y, z = points.T
    return np.stack([focal * x / z + c, focal * y / z + c, z], 1)


def scene(size: int = 160) -> tuple[torch.Tensor, torch.Tensor]:
    """A bumpy sphere partly in front of another one (self- and mutual occlusion), front faces negative."""
    v1, f1 = sphere((0.1, 0.05, 3.0), 0.8, bumps=0.15)
    v2, f2 = sphere((-0.45, -0.3, 2.2), 0.35, n=16)
    v = to_pixels(np.concatenate([v1, v2]), 1.3 * size, size / 2 + 0.123)
    f = np.concatenate([f1, f2 + len(v1)])
    vt, ft = torch.as_tensor(v, dtype=torch.float32), torch.as_tensor(f)
    # FLAME/ICT convention: faces seen from outside have negative screen area (y down); the camera
    # sees a face when its outward normal points towards the origin.
    p = np.concatenate([v1, v2])[f]
    facing = torch.as_tensor((np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]) * p.mean(1)).sum(1) < 0)
    if (face_orientation(vt, ft)[0][facing] > 0).all():
        ft = ft.flip(1)
    assert (face_orientation(vt, ft)[0][facing] < 0).all()
    return vt, ft


def test_coverage_equals_rasterizer_mask() -> None:
    v, f = scene()
    assert (face_orientation(v, f)[0] < 0).any()
    full = rasterize(v, f, 160, 160, cull_backfaces=True).mask[0].numpy()
    assert 2000 < full.sum() < 160 * 160 - 2000
    assert np.array_equal(_coverage(v, f, _front_faces(v, f), 0, 0, 160, 160), full)
    # A box: the same pixels, shifted.
    assert np.array_equal(_coverage(v, f, _front_faces(v, f), 30, 17, 120, 150), full[17:150, 30:120])


def test_span_zbuffer_equals_rasterizer() -> None:
    # Self-occlusion (bumps) and one sphere in front of the other: the same visible face everywhere.
    v, f = scene()
    frags = rasterize(v, f, 160, 160, cull_backfaces=True)
    pix, face = _visible_faces(v, f, 160, 160, _front_faces(v, f))
    assert torch.equal(pix, frags.pix) and torch.equal(face, frags.pix_face)
    assert len(torch.unique(face)) > 200
    empty = _visible_faces(v + torch.tensor([1000.0, 0, 0]), f, 160, 160, _front_faces(v, f))
    assert empty[0].numel() == 0 and empty[1].numel() == 0


def test_coverage_overlapping_triangles_do_not_cancel() -> None:
    # Two front-facing quads overlapping (even-odd polygon filling would punch a hole in the overlap).
    v = torch.tensor([[10, 10, 1], [40, 10, 1], [40, 40, 1], [10, 40, 1]], dtype=torch.float32)
    v = torch.cat([v, v + torch.tensor([15.0, 15.0, 1.0])])
    f = torch.tensor([[0, 2, 1], [0, 3, 2]])
    f = torch.cat([f, f + 4])
    cov = _coverage(v, f, _front_faces(v, f), 0, 0, 64, 64)
    assert cov[30, 30] and cov[50, 50] and cov[12, 12] and not cov[50, 12]
    assert cov.sum() == 30 * 30 * 2 - 15 * 15


def test_shade_mesh_equals_differentiable_shading() -> None:
    v, f = scene()
    focal = 1.3 * 160
    intensity, mask = shade_mesh(v, f, 160, 160, focal=focal)
    # The same Phong model through the generic differentiable path.
    frags = rasterize(v, f, 160, 160, cull_backfaces=True)
    pts = camera_points(v, focal, 80.0, 80.0)
    bary = barycentrics(v, f, frags)
    n = F.normalize(interpolate(vertex_normals(pts, f)[0], f, frags, bary), dim=-1)
    view = -F.normalize(interpolate(pts, f, frags, bary), dim=-1)
    to_light = F.normalize(torch.tensor([-0.3, -0.5, -1.0]), dim=0)
    half = F.normalize(view + to_light, dim=-1)
    ref = (0.18 + 0.72 * (n @ to_light).clamp(min=0) + 0.25 * (n * half).sum(-1).clamp(min=0) ** 24).clamp(0, 1)
    assert np.array_equal(mask, frags.mask[0].numpy())
    got = torch.as_tensor(intensity).view(-1)[frags.pix]
    assert (got - ref).abs().max() < 1e-4
    assert ref.std() > 0.05  # really shaded, not flat


def test_reduced_resolution_overlay_has_the_exact_silhouette() -> None:
    # 1000² image shaded at 512²: the blended region is exactly the full-resolution mask.
    v, f = scene(1000)
    img = np.full((1000, 1000, 3), 7, np.uint8)
    out = render_overlay(img, v, f, alpha=1.0, legend=False)
    full = rasterize(v, f, 1000, 1000, cull_backfaces=True).mask[0].numpy()
    assert np.array_equal((out != 7).any(-1), full)
    ref = render_overlay(img, v, f, alpha=1.0, legend=False, shading_max_side=None)
    diff = np.abs(out.astype(int) - ref.astype(int))[full]
    assert np.median(diff) <= 1 and diff.mean() < 1.5


def test_landmark_dots_stay_smaller_than_a_small_face() -> None:
    """Dots are sized by the picture (a 600-pixel photo: radius 2, the detected ones 3) but never
    beyond about a hundredth of the face: on a 64×64 thumbnail with a 30-pixel face they are single
    pixels (they were 5-pixel discs that hid the face, a user trial)."""
    from flame_tracker.rendering.overlay import COLOR_DETECTED

    for side, face_px, area in ((64, 30, 1), (600, 300, 37)):
        img = np.zeros((side, side, 3), np.uint8)
        c = side / 2 + 0.5
        lmk = np.array([[c - face_px / 2, c], [c + face_px / 2, c], [c, c]])  # the face's extent, a dot
        out = render_overlay(img, np.zeros((3, 3)), np.array([[0, 1, 2]]), alpha=0.0, lmks_detected=lmk,
                             legend=False)
        coloured = (out == COLOR_DETECTED).all(-1)
        k = int(c)
        assert coloured[k - 8:k + 9, k - 8:k + 9].sum() == area, side
