"""The open ICT-FaceKit model through `HeadModel` (needs the shared data folder)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from flame_tracker.model import HeadModel, ModelFormatError, load_model, load_model_data
from flame_tracker.model.lbs import interpolate


@pytest.fixture(scope="module")
def ict(shared_dir) -> HeadModel:
    return load_model(shared_dir / "models" / "ict_facekit_light.npz", dtype=torch.float64)


def _params(m: HeadModel, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(shape=r(n, m.n_shape), expr=torch.rand(n, m.n_expr, generator=g, dtype=torch.float64),
                head_pose=0.3 * r(n, 3), neck_pose=0.2 * r(n, 3), jaw_pose=0.2 * r(n, 3),
                eye_pose=0.3 * r(n, 6))


def test_default_is_ict_in_metres(ict):
    m = load_model()  # None -> ICT from the data folder
    assert m.name == "ict_facekit_light" and m.dtype == torch.float32
    assert (m.n_shape, m.n_expr) == (100, 57) and m.expr_bounds == (0.0, 1.0)
    assert "jawOpen" in m.expr_names and "eyeBlink_L" in m.expr_names
    assert not m.has_jaw_joint and m.ear_idx is None and m.iris_idx.shape == (10,)
    extent = (m.v_template.max(0).values - m.v_template.min(0).values)
    assert 0.15 < float(extent[0]) < 0.4  # a head is ~25 cm wide: metres, not centimetres


def test_zero_params_give_template(ict):
    out = ict()
    assert out.vertices.shape == (1, ict.n_verts, 3) and out.ears is None
    assert torch.allclose(out.vertices[0], ict.v_template, atol=1e-12)


def test_fast_path_equals_barycentric_interpolation(ict):
    p = _params(ict, 5)
    full = ict(**p)
    fast = ict.landmarks(**p)
    assert fast.vertices is None
    ref = interpolate(full.vertices, ict.faces[ict.lmk_faces_idx], ict.lmk_bary)
    assert torch.allclose(fast.landmarks, ref, atol=1e-6, rtol=0)
    assert torch.allclose(fast.iris, full.vertices[:, ict.iris_idx], atol=1e-6, rtol=0)
    assert ict.n_sub < 300  # the fast path really is small


def test_neutral_landmarks_sane(ict):
    lmk = ict.landmarks().landmarks[0]
    nose_tip, chin = lmk[30], lmk[8]
    for corner in (36, 39, 42, 45):
        assert nose_tip[2] > lmk[corner][2] + 0.01
    assert int(torch.argmin(lmk[:, 1])) == 8  # chin is the lowest landmark
    assert lmk[36, 0] < 0 < lmk[45, 0]  # subject's right eye corner at -x
    assert abs(float(chin[0])) < 1e-6


def test_jaw_open_lowers_chin(ict):
    e = torch.zeros(1, ict.n_expr, dtype=torch.float64)
    e[0, ict.expr_names.index("jawOpen")] = 1.0
    drop = ict.landmarks().landmarks[0, 8, 1] - ict.landmarks(expr=e).landmarks[0, 8, 1]
    assert drop > 0.01  # more than a centimetre
    # jaw_pose has no effect on ICT (no jaw joint): fitters must use the blendshapes.
    j = ict.landmarks(jaw_pose=torch.tensor([[0.3, 0.0, 0.0]], dtype=torch.float64)).landmarks
    assert torch.allclose(j, ict.landmarks().landmarks)


def test_eye_pose_rotates_iris_about_eye_centre(ict):
    base = ict.landmarks().iris[0]
    yaw = torch.zeros(1, 6, dtype=torch.float64)
    yaw[0, 1] = 0.3  # left eye (joint 3) turns towards +x
    yaw[0, 4] = 0.3
    moved = ict.landmarks(eye_pose=yaw).iris[0]
    assert torch.all(moved[:, 0] > base[:, 0])  # both irises move to +x
    assert torch.allclose(moved[:, 1], base[:, 1], atol=2e-4)  # pure yaw keeps height (~)
    centres = ict.J_regressor[3:5] @ ict.v_template
    for k, c in ((slice(5, 10), centres[0]), (slice(0, 5), centres[1])):
        d0 = (base[k] - c).norm(dim=-1)
        d1 = (moved[k] - c).norm(dim=-1)
        assert torch.allclose(d0, d1, atol=1e-9)
    # iris order: centre, image-right (+x), up, image-left, down
    for eye in (base[:5], base[5:]):
        c = eye[0]
        assert eye[1, 0] > c[0] and eye[2, 1] > c[1] and eye[3, 0] < c[0] and eye[4, 1] < c[1]
    assert base[0, 0] < 0 < base[5, 0]  # right eye first


def test_head_pose_is_rigid(ict):
    hp = torch.tensor([[0.2, -0.4, 0.1]], dtype=torch.float64)
    v0 = ict().vertices[0, ::97]
    v1 = ict(head_pose=hp).vertices[0, ::97]
    dist = lambda v: (v[:, None] - v[None]).norm(dim=-1)  # noqa: E731
    assert torch.allclose(dist(v0), dist(v1), atol=1e-12)
    assert not torch.allclose(v0, v1)


def test_autograd_matches_finite_differences(ict):
    p = _params(ict, 2, seed=3)
    inputs = tuple(p[k].clone().requires_grad_() for k in ("shape", "expr", "head_pose", "eye_pose"))
    f = lambda s, e, h, y: ict.landmarks(shape=s, expr=e, head_pose=h, eye_pose=y)[1:3]  # noqa: E731
    assert torch.autograd.gradcheck(lambda *a: torch.cat([t.flatten() for t in f(*a)]), inputs,
                                    fast_mode=True)


def test_torch_func_jacobians(ict):
    """Fitters may use torch.func: vmap(jacrev) over the fast path equals per-frame autograd."""
    from torch.func import jacrev, vmap

    p = _params(ict, 3, seed=5)

    def f(e, h):
        return ict.landmarks(expr=e[None], head_pose=h[None]).landmarks[0]

    jac = vmap(jacrev(f, argnums=0))(p["expr"], p["head_pose"])  # [3,68,3,E]
    e1 = p["expr"][1].clone().requires_grad_()
    g = torch.autograd.grad(f(e1, p["head_pose"][1])[30, 2], e1)[0]
    assert torch.allclose(jac[1, 30, 2], g, atol=1e-12)


def test_float32_and_batch_broadcast(ict):
    m = load_model()
    out = m.landmarks(shape=torch.zeros(3, m.n_shape), eye_pose=torch.zeros(6))
    assert out.landmarks.shape == (3, 68, 3) and out.landmarks.dtype == torch.float32
    with pytest.raises(ValueError, match="expr must have shape"):
        m.landmarks(expr=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="inconsistent batch"):
        m.landmarks(shape=torch.zeros(2, m.n_shape), expr=torch.zeros(3, m.n_expr))


def test_cache_loads_fast(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FLAME_TRACKER_CACHE", str(tmp_path))
    src = shared_dir / "models" / "ict_facekit_light.npz"
    first = load_model_data(src)
    assert list((tmp_path / "models").glob("*.npz"))
    t = time.perf_counter()
    again = load_model_data(src)
    elapsed = time.perf_counter() - t
    assert np.array_equal(first.shapedirs, again.shapedirs)
    assert np.array_equal(first.iris_idx, again.iris_idx)
    assert elapsed < 1.0, f"cached load took {elapsed:.2f} s"


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_model(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, neutral=np.zeros((4, 3)))
    with pytest.raises(ModelFormatError, match=r"bad\.npz.*missing ICT keys"):
        load_model(bad, use_cache=False)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ModelFormatError, match="junk.npz"):
        load_model(junk, use_cache=False)


def test_models_offer_the_public_fitting_interface(shared_dir) -> None:
    """``HeadModel`` implements :class:`FittableModel` (what fitting uses; nothing private), also as
    a copy with other landmarks; the landmark path and sub-mesh rows reproduce the model."""
    import torch

    from flame_tracker.model import load_model, missing_members
    from flame_tracker.model.lbs import skin

    model = load_model()
    other = model.with_landmarks(model.lmk_faces_idx.numpy()[:10], model.lmk_bary.numpy()[:10])
    assert missing_members(model) == [] and missing_members(other) == []
    assert {"landmarks", "faces", "dtype", "n_shape"} <= set(missing_members(object()))
    lp = model.landmark_path()
    assert lp.n_rows == model.n_sub and lp.mix_t.shape == (model.n_sub, model.n_lmk + lp.n_iris)
    assert other.landmark_path().mix_t.shape[1] == 10 + lp.n_iris and other.landmark_triangles.shape == (10, 3)
    # skinning 5 vertices from their basis rows equals the full mesh there
    params = {"shape": torch.randn(2, model.n_shape) * 0.5, "expr": torch.rand(2, model.n_expr) * 0.5,
              "head_pose": torch.randn(2, 3) * 0.2, "eye_pose": torch.randn(2, 6) * 0.1}
    vids = torch.tensor([0, 17, 1234, 5000, model.n_verts - 1])
    rows = torch.cat([(vids[:, None] * 3 + torch.arange(3)).reshape(-1),
                      torch.arange(3 * model.n_verts, model.n_basis_rows)])
    template, dirs = model.basis_rows(rows)
    betas, rotvecs = model.blend_inputs(params)
    sub = skin(betas, rotvecs, template, dirs, len(vids), model.lbs_weights[vids], model.joint_levels,
               model.joint_parents, model.has_pose_correctives)
    assert torch.allclose(sub, model(**params).vertices[:, vids], atol=1e-5)


def test_model_evaluates_alike_on_every_device_and_dtype(ict, device, dtype):
    """The full mesh and the landmark path on ``device`` in ``dtype`` equal the CPU float64 ones."""
    p = _params(ict, 3)
    ref, ref_lmk = ict(**p), ict.landmarks(**p)
    m = load_model(dtype=dtype, device=device)
    q = {k: v.to(device, dtype) for k, v in p.items()}
    out, lmk = m(**q), m.landmarks(**q)
    assert out.vertices.device.type == device.type and out.vertices.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    assert torch.allclose(out.vertices.cpu().double(), ref.vertices, atol=tol)
    assert torch.allclose(lmk.landmarks.cpu().double(), ref_lmk.landmarks, atol=tol)
    assert torch.allclose(lmk.iris.cpu().double(), ref_lmk.iris, atol=tol)


def test_parameters_from_another_device_go_to_the_model_device(shared_dir) -> None:
    # the trackers hand numpy-side CPU tensors to a model that may live on CUDA (found on a GPU
    # machine); "meta" stands in for the other device on a machine without one
    import torch

    from flame_tracker.model import load_model

    model = load_model().to("meta")
    out = model(shape=torch.zeros(1, model.n_shape), expr=torch.zeros(2, model.n_expr))
    assert out.vertices.device.type == "meta" and out.vertices.shape == (2, model.n_verts, 3)
    lm = model.landmarks(shape=torch.zeros(1, model.n_shape), jaw_pose=torch.zeros(1, 3))
    assert lm.landmarks.device.type == "meta" and lm.landmarks.shape == (1, 68, 3)
