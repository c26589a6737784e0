"""Accuracy against ground truth: metrics, synthetic scenes, the camera's principal point, the
detector landmark embedding, and a seeded end-to-end accuracy regression check (slow)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from flame_tracker.evaluation.metrics import (
    align,
    face_region_mask,
    mesh_distance_mm,
    nme_by_region,
    rotation_error_deg,
)
from flame_tracker.evaluation.scenes import render_scene, sample_scenes, scene_truth


@pytest.fixture(scope="module")
def model(shared_dir):
    from flame_tracker.model import load_model

    return load_model()


def _rot(axis, deg):
    from scipy.spatial.transform import Rotation

    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return Rotation.from_rotvec(np.radians(deg) * axis).as_matrix()


def test_metrics_alignment_and_rotation() -> None:
    g = np.random.default_rng(0)
    pts = g.normal(size=(200, 3))
    R = _rot([0.3, 1.0, 0.2], 25.0)
    moved = 1.7 * pts @ R.T + [0.1, -2.0, 0.5]
    assert mesh_distance_mm(moved, pts, similarity=True) < 1e-9  # similarity removes all of it
    assert mesh_distance_mm(pts @ R.T + 3.0, pts) < 1e-9  # rigid removes rotation + translation
    assert mesh_distance_mm(1.1 * pts, pts) > 10.0  # but not a scale
    assert abs(rotation_error_deg(R, np.eye(3)) - 25.0) < 1e-9
    assert np.allclose(align(pts, pts), pts)
    e = nme_by_region(np.zeros((68, 2)) + [3.0, 4.0], np.zeros((68, 2)), 10.0)
    assert e["all"] == pytest.approx(0.5) and e["jaw"] == pytest.approx(0.5)


def test_face_region_and_scenes(model) -> None:
    mask = face_region_mask(model)
    eyes = model.lbs_weights.numpy()[:, 3:5].sum(1) > 0.5
    assert 1000 < mask.sum() < 0.6 * model.n_verts and not (mask & eyes).any()
    a, b = sample_scenes(model, 6, seed=3), sample_scenes(model, 6, seed=3)
    assert all(np.array_equal(x.shape, y.shape) and x.euler_deg.tolist() == y.euler_deg.tolist() for x, y in zip(a, b))
    img, truth = render_scene(model, a[1])
    assert img.shape == (a[1].height, a[1].width, 3) and img.dtype == np.uint8
    # the projected truth is consistent with K, R, t, and the face is drawn where the truth says
    cam = truth.lmks68_3d @ truth.R.T + truth.t
    assert np.allclose(cam[:, :2] / cam[:, 2:] * truth.K[0, 0] + truth.K[:2, 2], truth.lmks68_px)
    assert np.ptp(truth.lmks68_px[:, 1]) == pytest.approx(a[1].face_frac * a[1].height, rel=0.05)
    img2, _ = render_scene(model, a[1])
    assert np.array_equal(img, img2)  # deterministic


def _off_centre_truth(model):
    spec = sample_scenes(model, 1, seed=11)[0]
    spec.shape[:] = 0.0
    spec.expr[:] = 0.0
    spec.euler_deg = np.array([20.0, 10.0, 5.0])
    spec.fov_deg, spec.face_frac, spec.centre_frac = 45.0, 0.22, (0.82, 0.25)
    return spec, scene_truth(model, spec)


def test_principal_point_at_image_centre_recovers_rotation_of_off_centre_face(model) -> None:
    """Exact landmarks of an off-centre face: the camera with its principal point at the image
    centre recovers the head rotation; the reference's crop-centred camera is off by about the
    face's off-axis angle (the largest part of the head-rotation error measured on synthetic renders)."""
    from dataclasses import replace

    from flame_tracker.evaluation.runs import fitted_camera_vertices
    from flame_tracker.tracker import DEFAULT_STAGE2, Tracker

    spec, truth = _off_centre_truth(model)
    errs = {}
    for pp in ("image", "crop"):
        tr = Tracker(model, "cpu", principal_point=pp, image_fov=spec.fov_deg, landmark_embedding="model",
                     init_from_blendshapes=False, stage2=replace(DEFAULT_STAGE2, fit_shape=False))
        res = tr.fit_landmarks(truth.lmks68_px, None, image_size=(spec.width, spec.height))
        R, _, _ = fitted_camera_vertices(res)
        errs[pp] = rotation_error_deg(R, truth.R)
        if pp == "image":
            assert res.reprojection_error_px < 0.5
            K = res.camera_matrices()["K_px"][0]
            assert K[0, 2] == pytest.approx(spec.width / 2) and K[1, 2] == pytest.approx(spec.height / 2)
            assert K[0, 0] == pytest.approx(truth.K[0, 0], rel=1e-4)
            arr = res.arrays()
            assert np.allclose(arr["principal_point_px"][0], [spec.width / 2, spec.height / 2])
    assert errs["image"] < 0.3, errs
    assert errs["crop"] > 3.0, errs


def test_detector_embedding_is_shipped_for_the_open_model(model) -> None:
    from flame_tracker.detection.layout import table68_id
    from flame_tracker.model import load_model
    from flame_tracker.model.embedding import fingerprint, shipped_embedding, with_landmarks

    emb = shipped_embedding(model)
    assert emb is not None and emb.fingerprint == fingerprint(model)
    assert emb.table68 == table68_id()  # derived with the 68-point table detection uses
    assert shipped_embedding(load_model(dtype=torch.float64)) is not None  # the same model in float64
    assert emb.static_faces_idx.shape == (478 + 68,) and np.allclose(emb.static_bary.sum(1), 1.0)
    assert (emb.static_bary >= 0).all()
    det = with_landmarks(model, emb)  # its 68 iBUG points
    g = torch.Generator().manual_seed(1)
    p = dict(shape=torch.randn(1, model.n_shape, generator=g), expr=torch.rand(1, model.n_expr, generator=g) * 0.3)
    a, b = model(**p), det(**p)
    assert torch.allclose(a.vertices, b.vertices)  # same model, only the 68 points moved
    assert torch.allclose(det.landmarks(**p).landmarks, b.landmarks, atol=1e-6)
    moved = (a.landmarks - b.landmarks).norm(dim=-1)[0] * 1000
    assert float(moved[:17].median()) > 3.0  # MediaPipe's jawline sits elsewhere than ICT's
    assert float(moved[36:48].median()) < 3.0  # its eye corners nearly where ICT's are


# Seeded subset of benchmarks/accuracy.py (full pipeline: render, MediaPipe, stage 1, stage 2).
# Measured on this machine at the commit that added it; the test fails when any mean gets worse
# than measured by more than the tolerance (renders and the detector are deterministic here, the
# margin covers BLAS/platform differences).
REGRESSION_SCENES = 10
# (The previous pipeline, crop-centred camera and ICT's own embedding, measured on the same subset:
# posed 5.01 mm, shape 3.66 mm, rotation 4.55°, NME 0.046.)
# rot_deg re-measured with the head turned towards MediaPipe's 3-D mesh (Tracker mesh_depth 0.5):
# 4.283 (5.116 without it, at that commit).
REGRESSION_MEASURED = {"posed_mm": 2.733, "shape_mm": 3.026, "rot_deg": 4.283, "nme_fit": 0.0399,
                       "expr_mae": 0.0759}
REGRESSION_TOLERANCE = 1.25


@pytest.mark.slow
def test_accuracy_regression_on_seeded_synthetic_scenes(shared_dir) -> None:
    from flame_tracker.evaluation.runs import evaluate_scene, summarise
    from flame_tracker.tracker import Tracker

    with Tracker(device="cpu") as tracker:
        mask = face_region_mask(tracker.model)
        specs = sample_scenes(tracker.model, REGRESSION_SCENES, seed=2024, face_frac=(0.25, 0.6), yaw_max=60.0)
        evals = [evaluate_scene(tracker, s, mask) for s in specs]
    summary = summarise(evals)["all"]
    assert summary["detected"] >= REGRESSION_SCENES - 1
    for key, measured in REGRESSION_MEASURED.items():
        assert summary[key] <= measured * REGRESSION_TOLERANCE, (key, summary[key], measured)


# The first three neutral faces of benchmarks/expressions.py's scenes (seed 0): their largest fitted
# weights measured 0.068 / 0.139 / 0.066 with photo sparsity (w_exp_l1 2.0), 0.135 / 0.209 / 0.093 at
# the blendshape default 0.5 (jawRight on the second).
NEUTRAL_MAX_MEASURED = 0.139


@pytest.mark.slow
def test_a_neutral_photo_gets_no_expression(shared_dir) -> None:
    from flame_tracker.evaluation.runs import evaluate_scene
    from flame_tracker.tracker import PHOTO_EXPR_SPARSITY, Tracker
    from flame_tracker.video.track import TrackOptions

    assert TrackOptions().stage2.w_exp_l1 is None  # videos keep the model's sparsity
    with Tracker(device="cpu") as tracker:
        assert tracker.stage2.w_exp_l1 == PHOTO_EXPR_SPARSITY  # ICT's bounded blendshapes
        mask = face_region_mask(tracker.model)
        # the benchmark's scenes (yaw is spread over all 48), the first 21
        specs = [s for s in sample_scenes(tracker.model, 48, seed=0)[:21] if not np.any(s.expr)]
        assert len(specs) == 3
        evals = [evaluate_scene(tracker, s, mask) for s in specs]
    assert all(e.detected for e in evals)
    worst = max(e.expr_max_neutral for e in evals)
    assert worst <= NEUTRAL_MAX_MEASURED * REGRESSION_TOLERANCE, [e.expr_max_neutral for e in evals]


def test_fold_rigid_keeps_the_projection(model) -> None:
    """Stage 2's rigid refinement (head rotation about the root joint + translation) folded into the
    camera projects every vertex exactly where the posed head did."""
    from flame_tracker.camera import project_ndc
    from flame_tracker.fitting.stage2 import fold_rigid
    from flame_tracker.model import load_model

    m = load_model(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    p = dict(shape=torch.randn(2, m.n_shape, generator=g, dtype=torch.float64),
             expr=torch.rand(2, m.n_expr, generator=g, dtype=torch.float64) * 0.3)
    hp = torch.tensor([[0.1, -0.2, 0.05], [0.0, 0.3, 0.1]], dtype=torch.float64)
    tr = torch.tensor([[0.01, 0.02, -0.03], [0.0, 0.0, 0.05]], dtype=torch.float64)
    pose6 = torch.tensor([[0.05, 0.1, 0.0, 0.02, 0.01, 1.0], [0.0, -0.1, 0.02, 0.0, 0.0, 0.8]], dtype=torch.float64)
    posed = project_ndc(m(**p, head_pose=hp).vertices + tr[:, None], pose6, 20.0)
    folded = project_ndc(m(**p).vertices, fold_rigid(m, dict(p, head_pose=hp, transl=tr), pose6), 20.0)
    assert float((posed - folded).abs().max()) < 1e-7


@pytest.mark.slow
def test_same_person_fits_one_identity(shared_dir, tmp_path) -> None:
    """Several photos of one person: one shape for all, each photo its own camera and expression;
    the CLI writes one result per photo."""
    from click.testing import CliRunner

    from flame_tracker.cli.main import main
    from flame_tracker.tracker import Tracker

    photos = sorted((shared_dir / "images" / "gt68").glob("*.png"))
    with Tracker(device="cpu") as tr:
        res = tr.fit_same_person(photos)
        single = tr.fit_image(photos[0])
    assert len(res) == len(photos)
    assert all(np.array_equal(r.shape, res[0].shape) for r in res)
    assert not np.allclose(res[0].pose6, res[1].pose6) and not np.allclose(res[0].exp, res[1].exp)
    assert all(r.reprojection_error_px < 0.02 * r.crop[2] for r in res)
    assert not np.allclose(single.shape, res[0].shape)
    out = CliRunner().invoke(main, ["image", *map(str, photos), "--same-person", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    shapes = [np.load(tmp_path / f"{p.stem}.npz")["shape"] for p in photos]
    assert all(np.array_equal(s, shapes[0]) for s in shapes)

    # a photo without a face and a missing one are reported, once each; the others are fitted together
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 128, np.uint8))
    out2 = tmp_path / "with_bad"
    out = CliRunner().invoke(main, ["image", str(photos[0]), str(blank), str(photos[1]), str(tmp_path / "nope.png"),
                                    "--same-person", "--out", str(out2), "--no-mesh", "--no-overlay"])
    assert out.exit_code == 1, out.output
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "No face found" in errors[0] and "nope.png" in errors[1], errors
    assert all(line.count(str(blank)) <= 1 for line in errors)  # the path is named once
    assert "2/4 image(s) fitted" in out.output
    pair = [np.load(out2 / f"{p.stem}.npz")["shape"] for p in photos[:2]]
    assert np.array_equal(pair[0], pair[1]) and not (out2 / "blank.npz").exists()


def test_a_given_fov_is_not_clamped_by_either_stage1_solver() -> None:
    """The reference clamps a *fitted* FOV to [10, 50]; a small face in a wide shot has a crop FOV
    of a few degrees, which both solvers must use as given."""
    from flame_tracker.camera import project_ndc
    from flame_tracker.fitting.stage1 import fit_camera

    g = torch.Generator().manual_seed(0)
    pts = torch.randn(68, 3, generator=g, dtype=torch.float64) * 0.03
    pose6 = torch.tensor([[0.1, -0.2, 0.05, 0.01, 0.02, 3.0]], dtype=torch.float64)
    target = project_ndc(pts, pose6, 5.0)
    for solver, iters in (("lm", 50), ("adam", 30)):
        fit = fit_camera(pts, target, fov=5.0, solver=solver, max_iter=iters)
        assert float(fit.fov[0]) == pytest.approx(5.0), solver


@pytest.mark.slow
def test_embed_command_derives_an_embedding_that_fitting_then_uses(shared_dir, tmp_path, monkeypatch) -> None:
    """`flame-tracker embed` renders the model, detects, and stores the detector embedding in the user
    cache, where detector_model finds it; a small run agrees with the shipped (240-render) one."""
    from click.testing import CliRunner

    from flame_tracker.cli.main import main
    from flame_tracker.model import load_model
    from flame_tracker.model.embedding import (
        IBUG68,
        ViewEmbedding,
        cached_path,
        detector_model,
        shipped_embedding,
    )

    monkeypatch.setenv("FLAME_TRACKER_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["embed", "--renders", "16", "--seed", "5", "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    model = load_model()
    cached = cached_path(model)
    assert cached.is_file() and (tmp_path / "e.npz").is_file()
    emb, ref = ViewEmbedding.load(cached), shipped_embedding(model)
    assert emb.renders >= 12 and emb.seed == 5
    tpl, faces = model.v_template.double().numpy(), model.faces.numpy()
    pos = lambda e: np.einsum("pi,pij->pj", e.static_bary, tpl[faces[e.static_faces_idx]])  # noqa: E731
    dist = np.linalg.norm(pos(emb) - pos(ref), axis=1) * 1000
    assert np.median(dist[IBUG68][17:]) < 3.0, dist  # inner points: the same place within a few mm
    assert np.median(dist[:468]) < 3.0  # MediaPipe's mesh points too
    det = detector_model(model)  # the cached (derived) embedding wins over the shipped one
    assert torch.equal(det.lmk_faces_idx, torch.as_tensor(emb.static_faces_idx[IBUG68]))
    # ... unless it was derived with another 68-point table (an older version's): the shipped one then
    assert not np.array_equal(emb.static_faces_idx[IBUG68], ref.static_faces_idx[IBUG68])  # told apart below
    stale = ViewEmbedding(**{**emb.__dict__, "table68": "another-table"})
    stale.save(cached)
    with pytest.warns(UserWarning, match="another 68-point table"):
        det = detector_model(model)
    assert torch.equal(det.lmk_faces_idx, torch.as_tensor(ref.static_faces_idx[IBUG68]))
