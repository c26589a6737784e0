"""Differentiable shading: barycentrics, interpolation, SH lighting, textures, face mask."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flame_tracker.rendering import (
    SH_CONSTANTS,
    barycentrics,
    interpolate,
    rasterize,
    render,
    sample_texture,
    sh_basis,
    vertex_normals,
)
from flame_tracker.rendering.mask import face_mask


def grid_mesh(n: int = 4, size: float = 24.0, offset: float = 4.0,
              depth_tilt: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """A tilted square grid facing the camera, vertices in pixels + depth (float64)."""
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    gy, gx = torch.meshgrid(t, t, indexing="ij")
    v = torch.stack([offset + gx * size, offset + gy * size, 2.0 + depth_tilt * gx + 0.3 * gy], -1).reshape(-1, 3)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    f = torch.cat([torch.stack([a, c, b], -1).reshape(-1, 3), torch.stack([b, c, d], -1).reshape(-1, 3)])
    return v, f


def test_barycentrics_reproduce_pixel_centres_and_perspective() -> None:
    v, f = grid_mesh()
    fr = rasterize(v, f, 32, 32)
    bary = barycentrics(v, f, fr)
    assert torch.allclose(bary.sum(1), torch.ones(len(bary), dtype=v.dtype))
    assert (bary > -1e-9).all()
    # Perspective-correct interpolation of camera-space X/Z, Y/Z and 1/Z is exact for planar
    # triangles: interpolating (x*z, y*z, z) (the 3-D point up to the focal) then dividing by z must
    # give back the pixel centre.
    pts = torch.stack([v[:, 0] * v[:, 2], v[:, 1] * v[:, 2], v[:, 2]], -1)
    p = interpolate(pts, f, fr, bary)
    assert torch.allclose(p[:, :2] / p[:, 2:], fr.pix_centres(v.dtype), atol=1e-9)


def test_barycentric_gradients_match_finite_differences() -> None:
    v, f = grid_mesh()
    fr = rasterize(v, f, 32, 32)
    attr = torch.rand(v.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    proj = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def fn(vv: torch.Tensor, aa: torch.Tensor) -> torch.Tensor:
        # Random projections of all pixel values keep gradcheck's analytic pass to a few outputs.
        return (interpolate(aa, f, fr, barycentrics(vv, f, fr)) @ proj).sum(0)

    assert torch.autograd.gradcheck(fn, (v.clone().requires_grad_(True), attr.clone().requires_grad_(True)), eps=1e-6,
                                    atol=1e-5, fast_mode=True)


def test_sh_constants_and_shading_gradients() -> None:
    # Reference factors (docs/reference.md §4.6).
    pi = math.pi
    assert SH_CONSTANTS[0] == pytest.approx(1 / math.sqrt(4 * pi))
    assert SH_CONSTANTS[1] == pytest.approx((2 * pi / 3) * math.sqrt(3 / (4 * pi)))
    assert SH_CONSTANTS[4] == pytest.approx((pi / 4) * 3 * math.sqrt(5 / (12 * pi)))
    assert SH_CONSTANTS[7] == pytest.approx((pi / 4) * 1.5 * math.sqrt(5 / (12 * pi)))
    assert SH_CONSTANTS[8] == pytest.approx((pi / 4) * 0.5 * math.sqrt(5 / (4 * pi)))
    n = torch.tensor([[0.0, 0.0, 1.0]])
    b = sh_basis(n)[0]
    expect = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0, 2.0]) * torch.tensor(SH_CONSTANTS)
    assert torch.allclose(b, expect.float())

    v, f = grid_mesh()
    fr = rasterize(v, f, 32, 32)
    light = torch.randn(9, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    light[0] += 3
    alb = torch.rand(v.shape[0], 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    w = torch.rand(32, 32, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def fn(vv: torch.Tensor, ll: torch.Tensor, aa: torch.Tensor) -> torch.Tensor:
        img = render(vv, f, 32, 32, normals=vertex_normals(vv, f), light=ll, albedo=aa, frags=fr)["image"][0]
        return (img[..., None] * w).sum((0, 1, 2))

    args = (v.clone().requires_grad_(True), light.clone().requires_grad_(True), alb.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, fast_mode=True)


def test_render_constant_colour_and_uv_texture() -> None:
    v, f = grid_mesh(depth_tilt=0.0)
    v[:, 2] = 2.0  # fronto-parallel: normal = -z in pixel frame
    light = torch.zeros(9, 3, dtype=torch.float64)
    light[0] = 1 / SH_CONSTANTS[0]  # shading = 1
    out = render(v, f, 32, 32, normals=vertex_normals(v, f), light=light,
                 albedo=torch.full((v.shape[0], 3), 0.4, dtype=torch.float64))
    m = out["alpha"][0] > 0
    assert torch.allclose(out["image"][0][m], torch.full((int(m.sum()), 3), 0.4, dtype=torch.float64))
    assert (out["image"][0][~m] == 0).all()
    # A UV texture whose colour is u in red and v in green: the render reproduces the UVs mapped
    # linearly from screen position.
    uvs = ((v[:, :2] - 4.0) / 24.0).clone()
    uvs[:, 1] = 1 - uvs[:, 1]  # OBJ v points up
    tex_res = 64
    t = (torch.arange(tex_res, dtype=torch.float64) + 0.5) / tex_res
    tex = torch.stack([t[None, :].expand(tex_res, -1), (1 - t)[:, None].expand(-1, tex_res),
                       torch.zeros(tex_res, tex_res, dtype=torch.float64)])[None]
    out = render(v, f, 32, 32, normals=vertex_normals(v, f), light=light, texture=tex, uvs=uvs, uv_faces=f)
    fr = out["frags"]
    c = fr.pix_centres(torch.float64)
    img = out["image"][0].reshape(-1, 3)[fr.pix]
    inner = ((c > 5) & (c < 27)).all(1)  # away from the texture border
    assert torch.allclose(img[inner, 0], ((c[inner, 0] - 4) / 24), atol=1e-6)
    assert torch.allclose(img[inner, 1], 1 - ((c[inner, 1] - 4) / 24), atol=1e-6)


def test_sample_texture_per_item_textures() -> None:
    tex = torch.stack([torch.full((3, 4, 4), 0.2), torch.full((3, 4, 4), 0.7)])
    uv = torch.rand(10, 2)
    batch = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 1])
    out = sample_texture(tex, uv, batch)
    assert torch.allclose(out[:, 0], torch.where(batch == 0, 0.2, 0.7))


def test_vertex_normals_point_out_of_a_ccw_triangle() -> None:
    v = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    n = vertex_normals(v, torch.tensor([[0, 1, 2]]))
    assert torch.allclose(n[0], torch.tensor([[0.0, 0, 1]] * 3))


def ring(cx: float, cy: float, rx: float, ry: float, k: int) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, k, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


def synthetic_68() -> np.ndarray:
    """A plausible 68-point layout (only the regions the mask uses matter)."""
    p = np.zeros((68, 2))
    a = np.linspace(np.pi * 0.05, np.pi * 0.95, 17)
    p[0:17] = np.stack([50 + 40 * np.cos(np.pi - a), 50 + 45 * np.sin(a)], 1)  # jaw, below the centre
    p[17:27] = np.stack([np.linspace(15, 85, 10), np.full(10, 25.0)], 1)  # brows
    p[27:36] = [50, 55]
    p[36:42] = ring(32, 38, 7, 3, 6)
    p[42:48] = ring(68, 38, 7, 3, 6)
    p[48:60] = ring(50, 75, 14, 6, 12)
    p[60:68] = ring(50, 75, 9, 3, 8)
    return p


def test_face_mask_excludes_eyes_mouth_and_outside() -> None:
    p = synthetic_68()
    m = face_mask(p, 110, 100)
    assert m.shape == (110, 100) and m.dtype == bool
    assert m[55, 50]  # nose
    assert m[60, 25]  # cheek
    assert not m[38, 32] and not m[38, 68]  # eyes
    assert not m[75, 50]  # mouth interior
    assert m[70, 50] or m[81, 50]  # lips kept
    assert not m[5, 50] and not m[105, 50] and not m[50, 2]  # forehead hair, below chin, background
    user = np.ones((110, 100), bool)
    user[:, 50:] = False
    mu = face_mask(p, 110, 100, user_mask=user)
    assert mu[60, 25] and not mu[60, 75]
    batch = face_mask(np.stack([p, p + [5, 0]]), 110, 100)
    assert batch.shape == (2, 110, 100) and batch[1, 60, 30] and np.array_equal(batch[1][:, 5:], batch[0][:, :-5])


def test_face_mask_bad_input() -> None:
    with pytest.raises(ValueError, match="68"):
        face_mask(np.zeros((10, 2)), 10, 10)
    with pytest.raises(ValueError, match="user mask"):
        face_mask(synthetic_68(), 110, 100, user_mask=np.ones((5, 5)))
