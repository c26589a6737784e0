"""Photometric fitting: reference loss pieces, and a synthetic textured head recovered better than
with landmarks alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flame_tracker.camera import project_ndc, world_to_view
from flame_tracker.fitting.photometric import (
    PhotometricResult,
    ear_loss,
    estimate_canonical,
    fit_photometric,
    l2ps,
    landmark_weights,
    render_head,
    save_texture_png,
    to_render_pixels,
)
from flame_tracker.rendering import vertex_normals

RES = 128


def test_landmark_weights_are_the_reference_ones() -> None:
    w = landmark_weights()
    assert w.shape == (68,)
    assert w[0] == w[16] == 0.5 and w[3] == 0.75 and w[17] == 1.5 and w[48] == 1.5
    assert (w[36:48] == 3.0).all() and (w[49:68] == 2.0).all() and (w[31:36] == 0.75).all()
    assert w[27] == 1.5


def test_l2ps_and_ear_gating() -> None:
    a = torch.zeros(2, 3, 2)
    b = torch.tensor([[[3.0, 4], [0, 0], [float("nan"), 0]], [[0, 1], [0, 1], [0, 1]]])
    assert torch.allclose(l2ps(a, b), torch.tensor([2.5, 1.0]))  # NaN target ignored
    ears = torch.zeros(3, 40, 2)
    gt = torch.full((3, 20, 2), 0.1)
    rot = torch.tensor([[0.0, 0.3, 0.0], [0.0, -0.3, 0.0], [0.0, 0.05, 0.0]])  # yaw +0.3, -0.3, small
    out = ear_loss(ears, gt, rot, threshold=0.3)
    d = float(np.hypot(0.1, 0.1))
    assert out[0] == pytest.approx(d * 0.3, rel=1e-4) and out[1] == pytest.approx(d * 0.3, rel=1e-4)
    assert out[2] == 0  # |yaw| < 0.1 is zeroed
    assert ear_loss(ears, torch.full((3, 20, 2), 0.5), rot, threshold=0.3).abs().sum() == 0  # gated off


@pytest.fixture(scope="module")
def scene(shared_dir):
    """A known textured ICT head rendered with SH light over a noisy background."""
    from flame_tracker.model import load_model

    torch.manual_seed(0)
    model = load_model()
    v = model.v_template
    x, y, z = v.unbind(-1)
    pattern = 1 + 0.25 * torch.sin(x * 180) * torch.sin(y * 160) + 0.15 * torch.sin(z * 220 + x * 90)
    albedo = (torch.tensor([0.75, 0.55, 0.45]) * pattern[:, None]).clamp(0, 1)
    expr = torch.zeros(1, model.n_expr)
    for name, val in [("jawOpen", 0.3), ("mouthSmile_L", 0.5), ("mouthSmile_R", 0.4), ("eyeBlink_L", 0.2)]:
        expr[0, model.expr_names.index(name)] = val
    pose = torch.tensor([[0.05, 0.2, 0.02, 0.2, 0.03, 0.97]])
    fov = torch.full((1,), 20.0)
    light = torch.zeros(1, 9, 3)
    light[:, 0], light[:, 1], light[:, 2], light[:, 3] = 2.5, 0.3, -0.4, -0.6
    with torch.no_grad():
        out = model(expr=expr)
        r = render_head(out.vertices, model.faces, pose, fov, RES, light=light, albedo=albedo)
        view = r["view"]
        bg = torch.rand(1, RES, RES, 3, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.2
        image = (torch.where(r["alpha"][..., None] > 0, r["image"], bg).clamp(0, 1) * 255).round().byte().numpy()
        lmk = project_ndc(out.landmarks, pose, fov)
        iris = project_ndc(out.iris, pose, fov)
    g = torch.Generator().manual_seed(1)
    noise = 0.015  # ~1 px at 128 px: a good detector
    return {
        "model": model, "albedo": albedo, "expr": expr, "pose": pose, "fov": fov, "image": image,
        "view": view, "lmk": lmk + noise * torch.randn(lmk.shape, generator=g),
        "iris": iris + noise * torch.randn(iris.shape, generator=g),
        "pose0": pose + torch.tensor([0.01, -0.01, 0.01, 0.01, -0.01, 0.02]),
        "expr0": (expr + 0.1 * torch.randn(expr.shape, generator=g)).clamp(0, 1),
    }


def vertex_error_px(scene, res: PhotometricResult) -> float:
    """Mean image distance (px at 256) of the face vertices from the ground truth: pose + expression."""
    with torch.no_grad():
        o = scene["model"](expr=res.expr, eye_pose=res.eye_pose)
        a = to_render_pixels(world_to_view(o.vertices, res.pose6), scene["fov"], 256)[:, :9409, :2]
        b = to_render_pixels(scene["view"], scene["fov"], 256)[:, :9409, :2]
        return float((a - b).norm(dim=-1).mean())


@pytest.mark.slow
def test_synthetic_head_recovered_better_than_landmarks_alone(scene, tmp_path) -> None:
    s = scene
    common = dict(iris_ndc=s["iris"], resolution=RES)
    # Landmarks alone (same solver, no pixel term), from the perturbed pose and expression.
    lm = fit_photometric(s["model"], s["image"], s["lmk"], s["pose0"], s["fov"], init={"expr": s["expr0"]},
                         albedo=s["albedo"], w_pixel=0.0, max_iter=60, lr_rot=0.005, lr_trans=0.003, lr_expr=0.03,
                         **common)
    err_lm = vertex_error_px(s, lm)
    # Photometric refinement with the known (canonical) texture.
    ph = fit_photometric(s["model"], s["image"], s["lmk"], lm.pose6, s["fov"],
                         init={"expr": lm.expr, "eye_pose": lm.eye_pose}, albedo=s["albedo"], **common)
    err_ph = vertex_error_px(s, ph)
    assert err_ph < 0.9 * err_lm, (err_ph, err_lm)
    assert ph.history[-1] < ph.history[0]
    assert ph.render.shape == (1, RES, RES, 3) and ph.render.dtype == np.uint8
    assert ph.light.shape == (1, 9, 3) and ph.mask.shape == (1, RES, RES)
    # The pixel term sees the head: rendered colours match the photo inside the mask.
    m = ph.mask[0] & (ph.render[0].sum(-1) > 0)
    assert np.abs(ph.render[0][m].astype(float) - s["image"][0][m]).mean() < 12

    # Estimated texture (video canonical mode): a shared per-vertex albedo close to the truth on
    # the visible face, written as a PNG.
    can = estimate_canonical(s["model"], s["image"], s["lmk"], lm.pose6, s["fov"],
                             init={"expr": lm.expr, "eye_pose": lm.eye_pose}, max_iter=20, **common)
    assert can.albedo.shape == (s["model"].n_verts, 3)
    with torch.no_grad():
        front = vertex_normals(s["view"], s["model"].faces)[0, :, 2] < -0.5  # faces the camera
    front[9409:] = False
    # Albedo and light trade a global scale per channel: compare after matching the means.
    est, gt = can.albedo[front], s["albedo"][front]
    est = est * (gt.mean(0) / est.mean(0))
    assert (est - gt).abs().mean() < 0.08
    png = save_texture_png(tmp_path / "texture.png", can.albedo, s["model"])
    from PIL import Image

    assert Image.open(png).size == (512, 512)


def test_bad_input(scene) -> None:
    s = scene
    with pytest.raises(ValueError, match="images must be"):
        fit_photometric(s["model"], s["image"][:, :64], s["lmk"], s["pose0"], s["fov"], resolution=RES, max_iter=0)
    with pytest.raises(ValueError, match="landmarks"):
        fit_photometric(s["model"], s["image"], s["lmk"][:, :10], s["pose0"], s["fov"], resolution=RES, max_iter=0)
    with pytest.raises(ValueError, match="expr"):
        fit_photometric(s["model"], s["image"], s["lmk"], s["pose0"], s["fov"], init={"expr": torch.zeros(3)},
                        resolution=RES, max_iter=0)


def test_refine_result_updates_a_tracker_result(scene) -> None:
    from flame_tracker.tracker import Tracker

    s = scene
    to_px = lambda ndc: ((ndc[0] + 1) * 0.5 * RES).numpy()  # noqa: E731  (the image is the crop)
    with Tracker(s["model"]) as tracker:
        res = tracker.fit_landmarks(to_px(s["lmk"]), to_px(s["iris"]), image_size=(RES, RES))
    from flame_tracker.fitting.photometric import refine_result

    new, ph = refine_result(s["model"], res, s["image"][0], max_iter=4, resolution=96)
    assert new.vertices.shape == res.vertices.shape and not np.allclose(new.vertices, res.vertices)
    assert new.pose6.shape == res.pose6.shape and new.exp.shape == res.exp.shape
    assert np.isfinite(new.fit_lmks68_px).all() and "photometric" in new.timings
    assert ph.render.shape == (1, 96, 96, 3)
    assert new.reprojection_error_px < res.reprojection_error_px + 1.0
    # the plain model alone fits with the detector embedding the landmark fit used (Tracker.fit_model)
    new, _ = refine_result(tracker.model, res, s["image"][0], max_iter=4, resolution=96)
    same, _ = refine_result(tracker.fit_model, res, s["image"][0], output_model=tracker.model, max_iter=4,
                            resolution=96)
    np.testing.assert_allclose(new.pose6, same.pose6)
    np.testing.assert_allclose(new.fit_lmks68_px, same.fit_lmks68_px)


def test_refine_result_with_a_free_shape_keeps_the_result_consistent(scene) -> None:
    # PhotometricOptions.fit_shape frees the identity: the Result's shape must be the refined one,
    # the one its vertices were made with.
    from flame_tracker.fitting.photometric import refine_result
    from flame_tracker.tracker import Tracker

    s = scene
    to_px = lambda ndc: ((ndc[0] + 1) * 0.5 * RES).numpy()  # noqa: E731
    with Tracker(s["model"]) as tracker:
        res = tracker.fit_landmarks(to_px(s["lmk"]), to_px(s["iris"]), image_size=(RES, RES))
    new, ph = refine_result(s["model"], res, s["image"][0], max_iter=4, resolution=96, fit_shape=True)
    assert new.shape.shape == res.shape.shape and new.shape.dtype == res.shape.dtype
    assert not np.allclose(new.shape, res.shape)
    np.testing.assert_array_equal(new.shape.ravel(), ph.shape[0].numpy().astype(new.shape.dtype))
    m = s["model"]
    row = lambda a: torch.as_tensor(a, dtype=m.dtype).reshape(1, -1)  # noqa: E731
    with torch.no_grad():
        verts = m(shape=row(new.shape), expr=row(new.exp), jaw_pose=row(new.jaw_pose), eye_pose=row(new.eye_pose),
                  neck_pose=row(new.neck_pose)).vertices[0].numpy()
    np.testing.assert_allclose(new.vertices, verts, atol=1e-5)


def test_canonical_from_frames_matches_the_crop_level_call(scene) -> None:
    # Original-pixel inputs (a 2x larger frame with the fitting square in its middle) give the same
    # texture as estimate_canonical on the crop itself.
    from flame_tracker.fitting.photometric import canonical_from_frames

    s = scene
    big = np.zeros((2 * RES, 2 * RES, 3), np.uint8)
    big[RES // 2:RES // 2 + RES, RES // 2:RES // 2 + RES] = s["image"][0]
    to_px = lambda ndc: ((ndc + 1) / 2 * RES + RES // 2).numpy()  # noqa: E731
    kw = dict(max_iter=3, resolution=RES)
    ref = estimate_canonical(s["model"], s["image"], s["lmk"], s["pose0"], s["fov"], init={"expr": s["expr0"]},
                             iris_ndc=s["iris"], **kw)
    got = canonical_from_frames(s["model"], [big], (RES // 2, RES // 2, RES), to_px(s["lmk"]), s["pose0"].numpy(),
                                float(s["fov"][0]), {"expr": s["expr0"][0].numpy()}, iris_px=to_px(s["iris"]), **kw)
    assert got.albedo.shape == (s["model"].n_verts, 3)
    assert torch.allclose(got.albedo, ref.albedo, atol=1e-4)
    with pytest.raises(ValueError, match="no frames"):
        canonical_from_frames(s["model"], [], (0, 0, RES), np.zeros((0, 68, 2)), np.zeros((0, 6)), 20.0, {})


def test_uv_texture_path_fits(scene) -> None:
    # FLAME-style appearance: a UV texture (here a planar projection of the template as the UVs).
    s = scene
    v = s["model"].v_template
    uvs = (v[:, :2] - v[:, :2].min(0).values) / (v[:, :2].max(0).values - v[:, :2].min(0).values)
    def fit(iters: int) -> tuple[PhotometricResult, float]:
        ph = fit_photometric(s["model"], s["image"], s["lmk"], s["pose0"], s["fov"], init={"expr": s["expr0"]},
                             iris_ndc=s["iris"], uvs=uvs, uv_faces=s["model"].faces, texture_size=64, resolution=RES,
                             max_iter=iters)
        m = ph.mask[0] & (ph.render[0].sum(-1) > 0)
        return ph, float(np.abs(ph.render[0][m].astype(float) - s["image"][0][m]).mean())

    ph, err = fit(30)
    assert ph.albedo.shape == (1, 3, 64, 64)
    assert ph.history[-1] < ph.history[0]
    assert err < 0.75 * fit(0)[1]  # texture and light fit the photo better than their initial guess


@pytest.mark.parametrize("neck", [0.0, 0.2])
def test_submesh_static_vertices_equal_the_full_model(neck: float) -> None:
    # The fit skins only a sub-mesh, and vertices tied to joints at rest skip LBS (linear blend
    # shapes + pose correctives only): positions must equal the full model's, with jaw and eye
    # rotations free (FLAME-sized fixture: pose correctives on).
    from flame_tracker.fitting.photometric import SubMesh, _rest_joints
    from flame_tracker.model.fixtures import synthetic_flame

    m = synthetic_flame("flame")
    g = torch.Generator().manual_seed(0)
    n = 2
    params = dict(shape=torch.randn(1, m.n_shape, generator=g).expand(n, -1),
                  expr=torch.randn(n, m.n_expr, generator=g) * 0.3, jaw_pose=torch.randn(n, 3, generator=g) * 0.1,
                  eye_pose=torch.randn(n, 6, generator=g) * 0.1, neck_pose=torch.full((n, 3), neck))
    rest = _rest_joints(m, params, ["jaw_pose", "eye_pose"])
    assert rest.tolist() == [True, neck == 0.0, False, False, False]
    sub = SubMesh(m, m.faces[::3], fixed_shape=params["shape"][0], extra=torch.tensor([7, 11]), rest_joints=rest)
    assert (sub.n_static > 0) == (neck == 0.0) and sub.n > 0
    full = m(**params).vertices
    assert torch.allclose(sub(**params), full.index_select(1, sub.vidx), atol=1e-6)
    assert (sub.vidx[sub.local(torch.tensor([11, 7]))] == torch.tensor([11, 7])).all()
    assert torch.equal(sub.vidx[sub.faces], m.faces[::3])
