"""Stage-2 landmark fitting: reference objective, LM vs Adam, bounds, shared shape, temporal term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _stage2_toy import Toy  # noqa: E402  (tests/ is on sys.path under pytest)

from flame_tracker.camera import project_ndc
from flame_tracker.fitting.expressions import expr_from_blendshapes
from flame_tracker.fitting.stage2 import REFERENCE_PRIORS, Stage2Options, fit_stage2

DT = torch.float64


def _scene(model: Toy, n: int = 6, seed: int = 0, shared: bool = False, bounded: bool = False):
    g = torch.Generator().manual_seed(seed)
    pose6 = torch.zeros(n, 6, dtype=DT)
    pose6[:, 5] = 1.0
    pose6[:, :3] = torch.randn(n, 3, generator=g, dtype=DT) * 0.1
    shape = torch.randn(1 if shared else n, model.n_shape, generator=g, dtype=DT) * 0.5
    expr = torch.rand(n, model.n_expr, generator=g, dtype=DT) * 0.8 + 0.1 if bounded else (
        torch.randn(n, model.n_expr, generator=g, dtype=DT) * 0.5
    )
    gt = dict(
        shape=shape.expand(n, -1),
        expr=expr,
        jaw_pose=torch.randn(n, 3, generator=g, dtype=DT) * 0.05,
        eye_pose=torch.randn(n, 6, generator=g, dtype=DT) * 0.1,
    )
    out = model.landmarks(**gt)
    return pose6, gt, project_ndc(out.landmarks, pose6, 20.0), project_ndc(out.iris, pose6, 20.0)


def test_objective_matches_reference_formula():
    model = Toy()
    pose6, gt, lmk, iris = _scene(model, n=2)
    shifted = lmk.clone()
    shifted[:, 17:, 0] += 0.01  # every face point off by 0.01 in x
    res = fit_stage2(model, shifted, pose6, 20.0, iris_ndc=iris, init=gt, fit_shape=False, max_iter=0)
    expected = 500 * 0.01 + 0.025 * (gt["expr"] ** 2).sum(1)  # L1 mean over 51 points, iris exact
    torch.testing.assert_close(res.objective, expected)
    # The temporal term adds 0.1 * sum ||exp[t+1]-exp[t]||^2 / 2 over the pair.
    res_t = fit_stage2(model, shifted, pose6, 20.0, iris_ndc=iris, init=gt, fit_shape=False, max_iter=0,
                       temporal=True)
    dexp = 0.05 * ((gt["expr"][1] - gt["expr"][0]) ** 2).sum()
    torch.testing.assert_close(res_t.objective.sum(), expected.sum() + dexp)


def test_lm_recovers_expression_jaw_eyes():
    model = Toy()
    pose6, gt, lmk, iris = _scene(model)
    res = fit_stage2(model, lmk, pose6, 20.0, iris_ndc=iris, init=dict(shape=gt["shape"]), fit_shape=False)
    assert res.iterations < 20
    torch.testing.assert_close(res.expr, gt["expr"], atol=1e-3, rtol=0)
    torch.testing.assert_close(res.jaw_pose, gt["jaw_pose"], atol=1e-3, rtol=0)
    torch.testing.assert_close(res.eye_pose, gt["eye_pose"], atol=1e-3, rtol=0)
    torch.testing.assert_close(res.landmarks_ndc[:, 17:], lmk[:, 17:], atol=1e-5, rtol=0)


def test_lm_beats_adam_reference_objective():
    model = Toy()
    pose6, gt, lmk, iris = _scene(model, n=1, seed=1)
    noisy = lmk + torch.randn(lmk.shape, generator=torch.Generator().manual_seed(3), dtype=DT) * 0.004
    kw = dict(iris_ndc=iris, init=dict(shape=gt["shape"]), fit_shape=False)
    lm = fit_stage2(model, noisy, pose6, 20.0, **kw)
    adam = fit_stage2(model, noisy, pose6, 20.0, solver="adam", **kw)
    assert adam.iterations == 200
    assert lm.objective.sum() <= adam.objective.sum() * 1.0001


def test_bounds_hold_for_blendshape_models():
    model = Toy(bounded=True, jaw=False)
    pose6, gt, lmk, iris = _scene(model, bounded=True)
    gt["expr"][:, 0] = 0.0  # an expression exactly at its bound
    out = model.landmarks(**gt)
    lmk, iris = project_ndc(out.landmarks, pose6, 20.0), project_ndc(out.iris, pose6, 20.0)
    # (the reference's weak expression prior: the blendshape models' default pulls towards rest)
    res = fit_stage2(model, lmk, pose6, 20.0, iris_ndc=iris, init=dict(shape=gt["shape"], expr=torch.ones(1, 12)),
                     fit_shape=False, **REFERENCE_PRIORS)
    assert float(res.expr.min()) >= 0.0 and float(res.expr.max()) <= 1.0
    torch.testing.assert_close(res.expr, gt["expr"], atol=2e-3, rtol=0)
    assert torch.all(res.jaw_pose == 0)  # no jaw joint: the jaw moves through blendshapes


def test_shared_shape_is_one_identity():
    model = Toy()
    pose6, gt, lmk, iris = _scene(model, n=6, shared=True)
    res = fit_stage2(model, lmk, pose6, 20.0, iris_ndc=iris, shared_shape=True, w_shape=1e-3)
    assert torch.equal(res.shape, res.shape[:1].expand_as(res.shape))
    torch.testing.assert_close(res.shape[0], gt["shape"][0], atol=2e-2, rtol=0)
    per_frame = fit_stage2(model, lmk, pose6, 20.0, iris_ndc=iris, w_shape=1e-3)
    assert not torch.equal(per_frame.shape[0], per_frame.shape[1])


def test_temporal_term_smooths_expression():
    model = Toy()
    pose6, gt, lmk, iris = _scene(model, n=4, seed=2)
    noisy = lmk + torch.randn(lmk.shape, generator=torch.Generator().manual_seed(0), dtype=DT) * 0.01
    kw = dict(iris_ndc=iris, init=dict(shape=gt["shape"]), fit_shape=False)
    free = fit_stage2(model, noisy, pose6, 20.0, **kw)
    smooth = fit_stage2(model, noisy, pose6, 20.0, temporal=True, w_temporal=1e3, **kw)
    jerk = lambda e: float(((e[1:] - e[:-1]) ** 2).sum())  # noqa: E731
    assert jerk(smooth.expr) < 0.1 * jerk(free.expr)
    assert smooth.history[-1] <= smooth.history[0]


def test_missing_points_are_masked():
    model = Toy()
    pose6, gt, lmk, iris = _scene(model, n=2)
    lmk = lmk.clone()
    lmk[0, 40] = float("nan")
    res = fit_stage2(model, lmk, pose6, 20.0, iris_ndc=None, init=gt, fit_shape=False)
    assert torch.isfinite(res.objective).all() and torch.isfinite(res.expr).all()
    torch.testing.assert_close(res.eye_pose, gt["eye_pose"])  # no iris: eye pose stays as given
    lmk[1] = float("nan")
    with pytest.raises(ValueError, match="no finite face landmark"):
        fit_stage2(model, lmk, pose6, 20.0)
    with pytest.raises(ValueError, match=r"\[N, 68, 2\]"):
        fit_stage2(model, lmk[:, :51], pose6, 20.0)
    with pytest.raises(ValueError, match="init\\['expr'\\]"):
        fit_stage2(model, lmk[:1], pose6[:1], 20.0, init=dict(expr=torch.zeros(1, 3)))


def test_huber_option_is_used():
    model = Toy()
    pose6, gt, lmk, iris = _scene(model, n=1)
    shifted = lmk + 1e-3
    kw = dict(iris_ndc=iris, init=gt, fit_shape=False, max_iter=0)
    l1 = fit_stage2(model, shifted, pose6, 20.0, **kw)
    hub = fit_stage2(model, shifted, pose6, 20.0, options=Stage2Options(loss="huber", delta=1e-2), **kw)
    # Inside the quadratic zone Huber is d^2/(2 delta) = |d| * 0.05 of L1 here.
    data_l1 = l1.objective - 0.025 * (gt["expr"] ** 2).sum()
    data_hub = hub.objective - 0.025 * (gt["expr"] ** 2).sum()
    torch.testing.assert_close(data_hub, data_l1 * 0.05)


def test_expr_from_blendshapes_maps_arkit_names():
    names = ["_neutral", "eyeBlinkLeft", "eyeBlinkRight", "jawOpen"]
    scores = np.array([0.9, 0.2, 0.3, 0.7], np.float32)
    out = expr_from_blendshapes(["jawOpen", "eyeBlink_L", "eyeBlink_R", "cheekPuff"], names, scores)
    torch.testing.assert_close(out, torch.tensor([0.7, 0.2, 0.3, 0.0]))
    assert expr_from_blendshapes(None, names, scores) is None


def test_flame_format_model_with_jaw_joint():
    """A FLAME-format model (skeleton, jaw joint, pose correctives): jaw and expression recovered."""
    from flame_tracker.model.fixtures import synthetic_flame

    model = synthetic_flame("tiny", n_shape=10, n_expr=8, dtype=DT)
    assert model.has_jaw_joint
    g = torch.Generator().manual_seed(5)
    pose6 = torch.tensor([[0.05, 0.1, 0.0, 0.0, 0.0, 1.0]], dtype=DT)
    gt = dict(shape=torch.randn(1, 10, generator=g, dtype=DT) * 0.5,
              expr=torch.randn(1, 8, generator=g, dtype=DT) * 0.5,
              jaw_pose=torch.tensor([[0.15, 0.0, 0.0]], dtype=DT))
    out = model.landmarks(**gt)
    lmk = project_ndc(out.landmarks, pose6, 20.0)
    res = fit_stage2(model, lmk, pose6, 20.0, init=dict(shape=gt["shape"]), fit_shape=False, w_exp=1e-6, rtol=1e-6)
    torch.testing.assert_close(res.jaw_pose, gt["jaw_pose"], atol=5e-3, rtol=0)
    torch.testing.assert_close(res.landmarks_ndc[:, 17:], lmk[:, 17:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape_mode", ["frame", "shared"])
def test_closed_form_jacobian_matches_differenced_model(shape_mode):
    """The one-pass skinned Jacobian (points, exact coefficient columns, rotation differences) equals
    differencing the landmark path itself, on a FLAME-format model with jaw, neck, eyes and pose
    correctives."""
    from flame_tracker.fitting import stage2 as s2
    from flame_tracker.model.fixtures import synthetic_flame

    model = synthetic_flame("tiny", dtype=DT)
    n = 3
    g = torch.Generator().manual_seed(1)
    lay = s2._Layout(n_expr=model.n_expr, n_shape=model.n_shape, jaw=True, eyes=True,
                     neck=shape_mode == "frame", shape=shape_mode)
    x = torch.randn(n, lay.n_frame, generator=g, dtype=DT) * 0.2
    s = torch.randn(lay.n_shared, generator=g, dtype=DT) * 0.5
    base = {"head_pose": torch.zeros(n, 3, dtype=DT)}
    if not lay.neck:
        base["neck_pose"] = torch.randn(n, 3, generator=g, dtype=DT) * 0.1
    pose6 = torch.tensor([[0.1, 0.2, 0.0, 0.0, 0.0, 1.0]] * n, dtype=DT)
    target = torch.zeros(n, 78, 2, dtype=DT)
    problem = s2._Problem(model, lay, Stage2Options(), base, pose6, torch.full((n,), 20.0, dtype=DT),
                          target, torch.ones_like(target), None, None)
    params = lay.split(x, s, base)
    blocks = [(name, 0, size, "frame") for name, size in lay.frame_blocks]
    if lay.shape == "shared":
        blocks.append(("shape", 0, lay.n_shape, "shared"))
    lin = [b for b in blocks if b[0] in s2._LINEAR]
    rot = [b for b in blocks if b[0] not in s2._LINEAR]
    fast = s2._skinned_jacobian(model, params, lin, rot, {})
    ref = s2._differenced_jacobian(problem, params, lin, rot)
    for a, b in zip(fast, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    assert fast[2].abs().amax() > 1e-3  # the rotation columns are not trivially zero


def test_rotation_columns_with_pose_correctives_on_unskinned_points(tmp_path, monkeypatch) -> None:
    """A joint's pose correctives may reshape points it does not skin (learned posedirs are not
    masked by the skinning weights): the jaw and eye steps' columns must still match differences."""
    import numpy as np

    from flame_tracker.fitting import stage2 as s2
    from flame_tracker.model import fixtures as fx
    from flame_tracker.model.head import HeadModel
    from flame_tracker.model.loader import load_model_data

    arrays = fx.flame_model_arrays

    def unmasked(*args, **kwargs):
        out = arrays(*args, **kwargs)
        out["posedirs"] = out["posedirs"] + np.random.default_rng(5).normal(0, 0.001, out["posedirs"].shape)
        return out

    monkeypatch.setattr(fx, "flame_model_arrays", unmasked)
    model = HeadModel(load_model_data(fx.write_flame_model(tmp_path, "tiny"), use_cache=False), dtype=DT)
    n = 3
    g = torch.Generator().manual_seed(1)
    lay = s2._Layout(n_expr=model.n_expr, n_shape=model.n_shape, jaw=True, eyes=True, neck=False, shape="fixed")
    x = torch.randn(n, lay.n_frame, generator=g, dtype=DT) * 0.2
    base = {"head_pose": torch.zeros(n, 3, dtype=DT), "neck_pose": torch.randn(n, 3, generator=g, dtype=DT) * 0.1,
            "shape": torch.zeros(n, model.n_shape, dtype=DT)}
    pose6 = torch.tensor([[0.1, 0.2, 0.0, 0.0, 0.0, 1.0]] * n, dtype=DT)
    target = torch.zeros(n, 78, 2, dtype=DT)
    problem = s2._Problem(model, lay, Stage2Options(), base, pose6, torch.full((n,), 20.0, dtype=DT),
                          target, torch.ones_like(target), None, None)
    params = lay.split(x, torch.zeros(0, dtype=DT), base)
    plan = s2._jac_plan(problem)
    fast = s2._skinned_jacobian(model, params, plan["lin"], plan["rot"], {})
    ref = s2._differenced_jacobian(problem, params, plan["lin"], plan["rot"])
    torch.testing.assert_close(fast[2], ref[2], atol=1e-8, rtol=1e-6)
