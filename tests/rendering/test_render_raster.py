"""Rasteriser and overlay: coverage, depth ordering, landmark pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flame_tracker.rendering import rasterize, render_overlay
from flame_tracker.rendering.overlay import COLOR_DETECTED, COLOR_FITTED, draw_points


def quad(x0: float, y0: float, x1: float, y1: float, z: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An axis-aligned screen rectangle at constant depth, wound to face the camera (negative area)."""
    v = torch.tensor([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 3, 2]])
    return v, f


def cube(center: tuple[float, float, float], half: float, focal: float, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A cube in camera space (x right, y down, z forward) projected to pixels; outward CCW faces."""
    s = torch.tensor([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
                      [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], dtype=torch.float64)
    p = torch.tensor(center, dtype=torch.float64) + half * s
    px = torch.stack([focal * p[:, 0] / p[:, 2] + c, focal * p[:, 1] / p[:, 2] + c, p[:, 2]], -1)
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 6, 5], [4, 7, 6], [0, 4, 5], [0, 5, 1], [3, 2, 6], [3, 6, 7], [0, 3, 7],
                      [0, 7, 4], [1, 5, 6], [1, 6, 2]]).flip(1)
    return px.float(), f


def test_rectangle_coverage_exact(device) -> None:
    v, f = quad(10.0, 20.0, 50.0, 40.0, 2.0)
    fr = rasterize(v.to(device), f.to(device), 64, 64)
    mask = fr.mask[0].cpu()
    # Pixel centres j+0.5 in [10, 50] -> columns 10..49, rows 20..39: exactly 40x20 pixels.
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[20:40, 10:50] = True
    assert torch.equal(mask, expected)
    assert set(fr.pix_face.cpu().tolist()) == {0, 1}


def test_depth_ordering_and_culling() -> None:
    far_v, f = quad(0.0, 0.0, 40.0, 40.0, 5.0)
    near_v, _ = quad(20.0, 20.0, 60.0, 60.0, 2.0)
    v = torch.cat([far_v, near_v])
    faces = torch.cat([f, f + 4])
    # Either triangle order must give the same result: the near quad wins where they overlap.
    for order in (faces, faces.flip(0)):
        fr = rasterize(v, order, 64, 64)
        fid = fr.face_idx[0]
        owner = torch.where(fid >= 0, order[fid.clamp(min=0), 0] >= 4, torch.zeros_like(fid, dtype=torch.bool))
        assert owner[30, 30] and owner[50, 50]  # near quad in front in the overlap and alone
        assert not owner[10, 10] and fid[10, 10] >= 0  # far quad where alone
        assert fid[62, 2] == -1
    # Reversed winding faces away: culled.
    back = rasterize(far_v, f.flip(1), 64, 64, cull_backfaces=True)
    assert not back.mask.any()
    assert rasterize(far_v, f.flip(1), 64, 64).mask.sum() == 40 * 40


def test_cube_visible_faces_and_batch() -> None:
    v, f = cube((0.0, 0.0, 3.0), 0.5, 100.0, 64.0)
    fr = rasterize(torch.stack([v, v + torch.tensor([5.0, 0.0, 0.0])]), f, 128, 128, cull_backfaces=False)
    fid = fr.face_idx[0]
    # Seen head-on, only the front face (z = -1 side, triangles 0 and 1) is visible.
    assert set(torch.unique(fid[fid >= 0]).tolist()) == {0, 1}
    side = 100 * 0.5 / 2.5
    assert abs(fr.mask[0].sum().item() - (2 * side) ** 2) < 4 * 2 * side
    # Second batch item is shifted by 5 px.
    assert torch.equal(fr.mask[1][:, 5:], fr.mask[0][:, :-5])
    # Off-axis cube: side faces become visible, and culling does not change what is seen.
    v2, _ = cube((0.8, 0.0, 3.0), 0.5, 100.0, 64.0)
    a = rasterize(v2, f, 128, 128).face_idx
    b = rasterize(v2, f, 128, 128, cull_backfaces=True).face_idx
    assert torch.equal(a, b)
    assert {8, 9} & set(torch.unique(a[a >= 0]).tolist())  # the x = -1 face is seen from the left


def test_chunked_enumeration_matches_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large renders enumerate candidates in chunks; every chunk must give the same pixels as one.

    (Regression: candidates of the second and later chunks were offset, so renders above ~4 M
    candidates, e.g. a face at 1080p, lost most of their coverage.)
    """
    from flame_tracker.rendering import raster

    g = torch.Generator().manual_seed(0)
    v = torch.rand(300, 3, generator=g) * torch.tensor([120.0, 100.0, 1.0]) + torch.tensor([0.0, 0.0, 1.0])
    f = torch.randint(0, 300, (400, 3), generator=g)
    one = rasterize(v, f, 100, 120).face_idx
    monkeypatch.setattr(raster, "_MAX_FRAGMENTS_PER_CHUNK", 997)
    many = rasterize(v, f, 100, 120).face_idx
    assert (one >= 0).float().mean() > 0.5
    assert torch.equal(one, many)


def test_overlay_shape_dtype_and_blend() -> None:
    img = np.full((90, 120, 3), 50, np.uint8)
    v, f = quad(30.0, 20.0, 90.0, 70.0, 1.0)
    out = render_overlay(img, v.numpy(), f.numpy(), alpha=0.6, legend=False)
    assert out.shape == img.shape and out.dtype == np.uint8
    inside, outside = out[45, 60], out[5, 5]
    assert (outside == 50).all()
    assert (inside > 80).all()  # grey mesh lit from the camera side blended over a dark image
    assert np.ptp(inside.astype(int)) <= 1  # grey
    assert (render_overlay(img, v, f, alpha=0.0, legend=False) == img).all()


def test_overlay_landmarks_at_right_pixels() -> None:
    img = np.zeros((200, 200, 3), np.uint8)
    det = np.array([[100.2, 150.7], [150.9, 60.1]])
    fit = np.array([[40.5, 120.5]])
    out = render_overlay(img, np.zeros((3, 3)) + [0, 0, 1], np.array([[0, 1, 2]]), lmks_detected=det, lmks_fitted=fit)
    assert tuple(out[150, 100]) == COLOR_DETECTED and tuple(out[60, 150]) == COLOR_DETECTED
    assert tuple(out[120, 40]) == COLOR_FITTED
    assert (out[190, 190] == 0).all()
    # A legend is drawn in the top-left corner and nowhere near the points.
    assert out[:20, :60].any()
    # not on a small picture, where it would hide the face
    small = render_overlay(img[:64, :64], np.zeros((3, 3)) + [0, 0, 1], np.array([[0, 1, 2]]), lmks_detected=det / 4)
    assert np.array_equal(small, render_overlay(img[:64, :64], np.zeros((3, 3)) + [0, 0, 1], np.array([[0, 1, 2]]),
                                                lmks_detected=det / 4, legend=False))


def test_draw_points_skips_nan_and_outside() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    draw_points(img, np.array([[np.nan, 1.0], [-50, -50], [2.5, 3.5]]), (9, 9, 9), 0)
    assert img.sum() == 27 and tuple(img[3, 2]) == (9, 9, 9)


def test_bad_input_errors() -> None:
    with pytest.raises(ValueError, match="uint8"):
        render_overlay(np.zeros((4, 4, 3)), np.zeros((3, 3)), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="faces"):
        render_overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 3)), np.array([[0, 1, 7]]))
    with pytest.raises(ValueError, match="vertices"):
        rasterize(torch.zeros(3, 2), torch.tensor([[0, 1, 2]]), 4, 4)


def test_overlay_reduced_resolution_shading_matches_full() -> None:
    # A 1000² image is shaded at 512² and upsampled; the silhouette is drawn at full resolution.
    img = np.full((1000, 1000, 3), 20, np.uint8)
    v, f = cube((0.4, 0.3, 3.0), 0.6, 900.0, 500.0)
    fast = render_overlay(img, v, f, alpha=1.0, legend=False).astype(int)
    full = render_overlay(img, v, f, alpha=1.0, legend=False, shading_max_side=None).astype(int)
    cov_fast, cov_full = (fast != 20).any(-1), (full != 20).any(-1)
    assert cov_full.sum() > 50_000
    # Same silhouette up to pixels on the outline (both fill pixel centres, sub-pixel rounding differs).
    assert (cov_fast ^ cov_full).sum() < 0.01 * cov_full.sum()
    # Same shading away from the edges between the cube's faces.
    diff = np.abs(fast - full)[cov_fast & cov_full]
    assert np.median(diff) <= 1 and np.mean(diff) < 2.0
