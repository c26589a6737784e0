"""Detector embeddings: back-projection, aggregation with a known answer, the view (yaw) table, the
view correction of targets, and stage 2 on a dense landmark set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flame_tracker.model.embedding import (
    DENSE,
    IBUG68,
    N_MP,
    ViewEmbedding,
    ViewPoints,
    _surface_points,
    view_yaw_deg,
)


@pytest.fixture(scope="module")
def model(shared_dir):
    from flame_tracker.model import load_model

    return load_model()


def _rot_y(deg: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec([0.0, np.radians(deg), 0.0]).as_matrix()


def test_view_yaw_is_relative_to_the_ray_to_the_head() -> None:
    facing = np.diag([1.0, -1.0, -1.0])  # model -> OpenCV camera of a head looking into the camera
    axis = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    assert abs(float(view_yaw_deg(torch.as_tensor(facing)[None], axis)[0])) < 1e-9
    on_axis = view_yaw_deg(torch.as_tensor(facing @ _rot_y(30.0))[None], axis)
    assert abs(abs(float(on_axis[0])) - 30.0) < 1e-6
    mirrored = view_yaw_deg(torch.as_tensor(facing @ _rot_y(-30.0))[None], axis)
    assert abs(float(mirrored[0]) + float(on_axis[0])) < 1e-6
    # a head that faces along the camera axis, placed 20° off-axis, is seen turned by 20°
    side = torch.tensor([[np.tan(np.radians(20.0)), 0.0, 1.0]], dtype=torch.float64)
    off = float(view_yaw_deg(torch.as_tensor(facing)[None], side)[0])
    assert abs(abs(off) - 20.0) < 1e-6
    # ... and one turned by the opposite view yaw there faces the camera: frontal
    back = -off * np.sign(float(on_axis[0]))  # a model rotation of +30° gives a view yaw of on_axis
    assert abs(float(view_yaw_deg(torch.as_tensor(facing @ _rot_y(back))[None], side)[0])) < 1e-6


def test_back_projection_finds_the_triangle_under_a_rendered_point(model) -> None:
    """A known surface point, projected into a render, comes back to its own triangle and barycentrics."""
    from flame_tracker.evaluation.scenes import sample_scenes, scene_truth
    from flame_tracker.rendering.raster import rasterize

    spec = sample_scenes(model, 1, seed=3, yaw_max=5.0, pitch_max=5.0, roll_max=0.0, sizes=(640, 640),
                         face_frac=(0.6, 0.6))[0]
    truth = scene_truth(model, spec)
    cam = truth.vertices_cam
    vpx = np.concatenate([cam[:, :2] / cam[:, 2:] * truth.K[0, 0] + truth.K[:2, 2], cam[:, 2:]], 1)
    faces = model.faces.numpy()
    fr = rasterize(torch.as_tensor(vpx)[None], model.faces, spec.height, spec.width)
    tri = np.asarray(model.lmk_faces_idx[27:36])  # the nose: front-facing, not occluded, triangles of several px
    bary = np.tile([[0.3, 0.3, 0.4]], (len(tri), 1))  # inside the triangle, off its edges
    pts2d = np.einsum("pi,pij->pj", bary, vpx[faces[tri], :2])
    got_tri, got_bary, ok = _surface_points(vpx, faces, fr.face_idx[0].numpy(), pts2d)
    assert ok.all()
    same = got_tri == tri
    assert same.all(), same
    assert np.abs(got_bary[same] - bary[same]).max() < 1e-6
    verts = truth.vertices
    dist = np.linalg.norm(np.einsum("pi,pij->pj", got_bary, verts[faces[got_tri]])
                          - np.einsum("pi,pij->pj", bary, verts[faces[tri]]), axis=1) * 1000
    assert dist.max() < 1.0, dist  # within a pixel's footprint (~0.6 mm here)


class _Oracle:
    """A landmarker that 'detects' known surface points of the last rendered scene: point k at the
    mean-head location ``static`` except point 0, which sits on ``turned`` when the head's view yaw
    is positive (a contour-like point that moves with the view)."""

    def __init__(self, model, static, turned):
        self.model, self.static, self.turned = model, static, turned
        self.truth = None

    def detect(self, img):
        from types import SimpleNamespace

        t = self.truth
        faces = self.model.faces.numpy()
        verts = t.vertices_cam
        centre = t.R @ t.lmks68_3d.mean(0) + t.t
        yaw = float(view_yaw_deg(torch.as_tensor(t.R)[None], torch.as_tensor(centre)[None])[0])
        f_idx, bary = self.static
        f_idx, bary = f_idx.copy(), bary.copy()
        if yaw > 0:
            f_idx[0], bary[0] = self.turned
        p = np.einsum("pi,pij->pj", bary, verts[faces[f_idx]])
        px = p[:, :2] / p[:, 2:] * t.K[0, 0] + t.K[:2, 2]
        return SimpleNamespace(points478=np.concatenate([px[:N_MP], np.zeros((N_MP, 1))], 1), lmks68=px[N_MP:])


@pytest.mark.slow
def test_aggregation_recovers_known_points_and_a_view_dependent_one(model, monkeypatch) -> None:
    from flame_tracker.evaluation import scenes
    from flame_tracker.model import embedding

    faces = model.faces.numpy()
    rng = np.random.default_rng(0)
    # every point on a front-facing triangle no other part of the face hides (the nose's, cycled)
    tris = np.asarray(model.lmk_faces_idx[27:36])
    f_idx = tris[np.arange(N_MP + 68) % len(tris)]
    bary = rng.dirichlet((4, 4, 4), N_MP + 68)
    turned = (int(tris[5]), np.array([0.2, 0.3, 0.5]))
    oracle = _Oracle(model, (f_idx, bary), turned)
    render = scenes.render_scene

    def recording_render(m, spec, **kw):
        img, truth = render(m, spec, **kw)
        oracle.truth = truth
        return img, truth

    monkeypatch.setattr(scenes, "render_scene", recording_render)
    monkeypatch.setattr(embedding, "MIN_HITS", 2)
    emb = embedding.derive_detector_embedding(model, oracle, n_renders=60, seed=11)
    tpl = model.v_template.double().numpy()

    def pos(fi, b):
        return np.einsum("...i,...ij->...j", b, tpl[faces[fi]])

    want = pos(f_idx, bary)
    static = pos(emb.static_faces_idx, emb.static_bary)
    err = np.linalg.norm(static[1:] - want[1:], axis=1) * 1000
    # exact detections come back exactly (a point near a triangle edge to within its pixel's footprint)
    assert np.median(err) < 0.01 and err.max() < 0.2, err
    bins = pos(emb.faces_idx, emb.bary)  # [B, P, 3]
    far = np.linalg.norm(bins[:, 0] - pos(*turned), axis=1) * 1000
    near = np.linalg.norm(bins[:, 0] - want[0], axis=1) * 1000
    # (up to 60°: at 70° the nose's far side starts to hide behind its ridge)
    right, left = (emb.yaw_deg >= 20) & (emb.yaw_deg <= 60), (emb.yaw_deg <= -20) & (emb.yaw_deg >= -60)
    assert (far[right] < 0.2).all() and (near[left] < 0.2).all(), (far, near)
    assert np.isfinite(emb.spread_mm).all() and emb.renders >= 30


def _toy_embedding(model, n_pts: int, shift_face: int | None = None) -> ViewEmbedding:
    """A view embedding whose every bin equals the static one, except (optionally) that every point
    of bins with positive yaw moves to the triangle ``shift_face``."""
    tris = np.asarray(model.lmk_faces_idx)
    f = tris[np.arange(n_pts) % 68]
    b = np.tile([[0.2, 0.3, 0.5]], (n_pts, 1))
    yaws = np.arange(-70.0, 70.1, 10.0)
    bf = np.repeat(f[None], len(yaws), 0)
    bb = np.repeat(b[None], len(yaws), 0)
    if shift_face is not None:
        bf[yaws > 0] = shift_face
    return ViewEmbedding(yaws, bf, bb, f, b, np.ones(n_pts), np.full(n_pts, 10), "toy")


def test_view_points_blend_bins_and_the_correction_moves_targets(model) -> None:
    from flame_tracker.camera import project_ndc
    from flame_tracker.fitting.views import ViewCorrection

    emb = _toy_embedding(model, N_MP + 68, shift_face=int(model.lmk_faces_idx[30]))
    vp = ViewPoints(model, emb)
    g = torch.Generator().manual_seed(0)
    params = dict(shape=torch.randn(2, model.n_shape, generator=g), expr=torch.rand(2, model.n_expr, generator=g) * 0.3)
    verts = model(**params).vertices
    faces = model.faces
    static, viewed = vp(params, torch.tensor([-30.0, 5.0]))
    want = (verts[:, faces[torch.as_tensor(emb.static_faces_idx[IBUG68])]] *
            torch.as_tensor(emb.static_bary[IBUG68], dtype=verts.dtype)[..., None]).sum(-2)
    assert torch.allclose(static, want, atol=1e-5)
    assert torch.allclose(viewed[0], static[0], atol=1e-5)  # yaw -30: bins equal the static points
    shifted = (verts[1, faces[int(model.lmk_faces_idx[30])]] * torch.tensor([0.2, 0.3, 0.5])[:, None]).sum(0)
    assert torch.allclose(viewed[1], 0.5 * static[1] + 0.5 * shifted, atol=1e-5)  # halfway between 0° and 10°

    # the correction, from two cameras 30° either side of the head: the view table equals the static
    # embedding on one side (no offset) and moves every point to ``shifted`` on the other
    one = {k: v[1:] for k, v in params.items()}
    th = 0.5236
    pose6 = torch.tensor([[0.0, s * th, 0.0, 1.5 * np.sin(s * th), 0.0, 1.5 * np.cos(s * th)] for s in (1, -1)],
                         dtype=model.dtype)
    fov = torch.tensor([20.0, 20.0], dtype=model.dtype)
    off, p_view, yaw = ViewCorrection(model, emb)(one, pose6, fov)
    assert off.shape == (2, 68, 2) and yaw.shape == (2,)
    assert (yaw.abs() > 20).all() and (yaw[0] * yaw[1] < 0), yaw  # the cameras see opposite view yaws
    pos, neg = int(yaw.argmax()), int(yaw.argmin())
    p_static = project_ndc(static[1:].expand(2, -1, -1), pose6, fov)
    assert torch.allclose(p_view, p_static + off, atol=1e-6)
    assert off[neg].abs().max() < 1e-9  # negative yaw: bins = static points
    want_off = project_ndc(shifted.expand(2, 68, 3), pose6, fov)[pos] - p_static[pos]
    assert torch.allclose(off[pos, :17], want_off[:17], atol=1e-6) and want_off[:17].abs().max() > 1e-3
    assert off[pos, 17:].abs().max() < 1e-12  # only the outline slides (contour_only)
    off_all, _, _ = ViewCorrection(model, emb, contour_only=False)(one, pose6, fov)
    assert torch.allclose(off_all[pos], want_off, atol=1e-6)


def test_stage2_fits_a_dense_landmark_set(model) -> None:
    """Stage 2 on a model whose landmark path gives 468 points recovers the expression from exact targets,
    and agrees with the differenced-Jacobian path."""
    from flame_tracker.camera import project_ndc
    from flame_tracker.fitting.stage2 import fit_stage2

    emb = _toy_embedding(model, N_MP + 68)
    rng = np.random.default_rng(1)
    emb.static_faces_idx[DENSE] = rng.choice(np.asarray(model.lmk_faces_idx), 468)
    emb.static_bary[DENSE] = rng.dirichlet((3, 3, 3), 468)
    dense = model.with_landmarks(emb.static_faces_idx[DENSE], emb.static_bary[DENSE])
    assert dense.n_lmk == 468
    g = torch.Generator().manual_seed(2)
    expr = torch.zeros(1, model.n_expr)
    # channels the landmark triangles see (the mouth, jaw and brows)
    chans = [i for i, name in enumerate(model.expr_names) if name.startswith(("jawOpen", "mouthSmile", "browInnerUp"))]
    expr[0, chans] = 0.2 + 0.5 * torch.rand(len(chans), generator=g)
    pose6 = torch.tensor([[0.1, 0.2, 0.0, 0.0, 0.0, 1.0]])
    target = project_ndc(dense.landmarks(expr=expr).landmarks, pose6, 20.0)
    w = torch.full((468,), 500.0 / 468)
    # priors off (this scene is exact; its channels differ left and right)
    res = fit_stage2(dense, target, pose6, 20.0, point_weights=w, fit_shape=False, w_exp=1e-4, w_exp_l1=0.0,
                     w_exp_sym=0.0)
    assert res.landmarks_ndc.shape == (1, 468, 2)
    assert (res.landmarks_ndc - target).abs().max() < 1e-3
    assert (res.expr[0, chans] - expr[0, chans]).abs().max() < 0.05, (res.expr[0, chans], expr[0, chans])
    with pytest.raises(ValueError, match="point_weights"):
        fit_stage2(dense, target, pose6, 20.0)


def test_shipped_view_embedding_is_complete(model) -> None:
    from flame_tracker.model.embedding import fingerprint, shipped_embedding

    emb = shipped_embedding(model)
    assert emb is not None and emb.fingerprint == fingerprint(model)
    assert emb.faces_idx.shape == (len(emb.yaw_deg), N_MP + 68) and emb.static_faces_idx.shape == (N_MP + 68,)
    assert np.allclose(emb.bary.sum(-1), 1.0, atol=1e-5) and (emb.bary >= 0).all()
    assert np.isfinite(emb.spread_mm).all() and emb.renders >= 200


@pytest.mark.parametrize("kw", [dict(landmarks="dense"), dict(landmark_embedding="views")])
def test_tracker_fits_dense_points_and_sliding_outline_on_a_photo(shared_dir, kw) -> None:
    """The dense and view-table modes fit a real photo; outputs keep the 68 iBUG points."""
    from flame_tracker.tracker import Tracker

    photo = (sorted((shared_dir / "images" / "gt68").glob("*.jpg"))
             + sorted((shared_dir / "images" / "gt68").glob("*.png")))
    with Tracker(device="cpu") as ref, Tracker(device="cpu", **kw) as tracker:
        base = ref.fit_image(photo[0])
        r = tracker.fit_image(photo[0])
    assert r.fit_lmks68_px.shape == (68, 2) and r.fit_target68_px.shape == (68, 2)
    assert np.isfinite(r.vertices).all()
    face = float(np.ptp(r.lmks68_px[:, 1]))
    # as close to the detections as the default fit (within 1 % of the face height)
    assert r.reprojection_error_px < base.reprojection_error_px + 0.01 * face, (r.reprojection_error_px,
                                                                            base.reprojection_error_px)
    if kw.get("landmarks") == "dense":
        with pytest.raises(ValueError, match="dense_px"):
            Tracker(device="cpu", **kw).fit_landmarks(r.lmks68_px, r.iris_px, image_size=r.image_size)
