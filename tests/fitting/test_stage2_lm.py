"""Stage-2 LM internals: Jacobian against differenced residuals, projected-Newton active set, stopping rule."""

from __future__ import annotations

import pytest
import torch
from _stage2_toy import Toy  # noqa: E402  (tests/ is on sys.path under pytest)

from flame_tracker.camera import project_ndc
from flame_tracker.fitting import stage2 as s2
from flame_tracker.fitting.stage2 import Stage2Options, fit_stage2

DT = torch.float64


def _problem(model, lay: s2._Layout, n: int, seed: int = 1,
             bounded: bool = False) -> tuple[s2._Problem, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, lay.n_frame, generator=g, dtype=DT) * 0.2
    s = torch.randn(lay.n_shared, generator=g, dtype=DT) * 0.5
    base = {"head_pose": torch.zeros(n, 3, dtype=DT),
            "shape": torch.randn(n, model.n_shape, generator=g, dtype=DT) * 0.3}
    if not lay.neck:
        base["neck_pose"] = torch.randn(n, 3, generator=g, dtype=DT) * 0.1
    if lay.shape != "fixed":
        del base["shape"]
    pose6 = torch.tensor([[0.1, 0.2, 0.05, 0.01, -0.02, 1.0]] * n, dtype=DT)
    target = torch.randn(n, 78, 2, generator=g, dtype=DT) * 0.05
    lo = hi = None
    if bounded:
        lo = torch.full((lay.n_frame,), -float("inf"), dtype=DT)
        hi = torch.full((lay.n_frame,), float("inf"), dtype=DT)
        lo[: lay.n_expr], hi[: lay.n_expr] = 0.0, 1.0
        x[:, : lay.n_expr] = x[:, : lay.n_expr].clamp(0.0, 1.0)
    problem = s2._Problem(model, lay, Stage2Options(), base, pose6, torch.full((n,), 20.0, dtype=DT),
                          target, torch.ones_like(target), lo, hi)
    return problem, x, s


def _differenced(problem: s2._Problem, x: torch.Tensor, s: torch.Tensor, h: float = 1e-6):
    """Central differences of the residuals w.r.t. every entry of x (per frame) and s."""
    cols_x = []
    for k in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, k] = h
        cols_x.append((problem.residuals(x + e, s) - problem.residuals(x - e, s)) / (2 * h))
    cols_s = []
    for k in range(s.shape[0]):
        e = torch.zeros_like(s)
        e[k] = h
        cols_s.append((problem.residuals(x, s + e) - problem.residuals(x, s - e)) / (2 * h))
    jx = torch.stack(cols_x, -1)
    js = torch.stack(cols_s, -1) if cols_s else x.new_zeros(*jx.shape[:2], 0)
    return jx, js


@pytest.mark.parametrize("shape_mode", ["fixed", "frame", "shared"])
def test_jacobians_match_differenced_residuals(shape_mode):
    """Residuals and the full stage-2 Jacobian (closed-form skinning columns through the analytic
    projection, rotation columns differenced on the projected points, columns in layout order)
    equal the residual function and its central differences, on a FLAME-format model with jaw,
    neck, eyes and pose correctives."""
    from flame_tracker.model.fixtures import synthetic_flame

    model = synthetic_flame("tiny", dtype=DT)
    lay = s2._Layout(n_expr=model.n_expr, n_shape=model.n_shape, jaw=True, eyes=True,
                     neck=shape_mode != "shared", shape=shape_mode)
    problem, x, s = _problem(model, lay, n=2)
    r, jx, js = s2._jacobians(problem, x, s)
    torch.testing.assert_close(r, problem.residuals(x, s), atol=1e-12, rtol=0)
    ref_x, ref_s = _differenced(problem, x, s)
    assert jx.shape == ref_x.shape and js.shape == ref_s.shape
    scale = ref_x.abs().amax()
    # rotation columns are forward differences (1e-3 rad): first-order accurate
    torch.testing.assert_close(jx, ref_x, atol=2e-3 * float(scale), rtol=0)
    if lay.n_shared:
        torch.testing.assert_close(js, ref_s, atol=1e-6 * float(ref_s.abs().amax()), rtol=0)
    lin_cols = torch.cat([torch.arange(st, st + size) for name, st, size, kind in s2._jac_plan(problem)["lin"]
                          if kind == "frame"])
    # the expression/shape columns are exact
    torch.testing.assert_close(jx[..., lin_cols], ref_x[..., lin_cols], atol=1e-7 * float(scale), rtol=0)


def test_jacobians_for_models_without_landmark_internals():
    """The differenced fallback (any model with ``landmarks``) goes through the same projection."""
    model = Toy()
    lay = s2._Layout(n_expr=model.n_expr, n_shape=model.n_shape, jaw=True, eyes=True, neck=False, shape="frame")
    problem, x, s = _problem(model, lay, n=2)
    r, jx, _ = s2._jacobians(problem, x, s)
    torch.testing.assert_close(r, problem.residuals(x, s), atol=1e-12, rtol=0)
    ref_x, _ = _differenced(problem, x, s)
    torch.testing.assert_close(jx, ref_x, atol=2e-3 * float(ref_x.abs().amax()), rtol=0)


def test_damped_step_holds_bound_variables_the_newton_step_pushes_out():
    """Projected Newton: x0 sits on its lower bound with zero gradient (free by the gradient test), but
    the coupled Newton step would push it below the bound. The step holds it and solves for the rest:
    the box-constrained minimiser of the quadratic model (KKT: the held variable's gradient >= 0)."""
    model = Toy(n_expr=2, bounded=True, jaw=False)
    lay = s2._Layout(n_expr=2, n_shape=model.n_shape, jaw=False, eyes=False, neck=False, shape="fixed")
    problem, _, _ = _problem(model, lay, n=1, bounded=True)
    x = torch.tensor([[0.0, 0.5]], dtype=DT)
    hx = torch.tensor([[[1.0, 0.9], [0.9, 1.0]]], dtype=DT)
    gx = torch.tensor([[0.0, -0.3]], dtype=DT)
    mx = s2._free_mask(problem, x, gx)
    assert mx.tolist() == [[1.0, 1.0]]  # the gradient alone does not hold x0
    free_step = -torch.linalg.solve(hx[0], gx[0])
    assert free_step[0] < 0  # ... but the unconstrained step leaves the box
    mu = torch.tensor([1e-12], dtype=DT)
    step, _ = s2._damped_step(problem, x, x.new_zeros(0), gx, hx, mx, None, None, None, mu, False)
    torch.testing.assert_close(step, torch.tensor([[0.0, 0.3]], dtype=DT), atol=1e-9, rtol=0)
    assert float(hx[0, 0] @ step[0] + gx[0, 0]) >= 0  # KKT for the held lower bound


@pytest.mark.parametrize("bounded", [False, True])
def test_lm_stops_at_a_stationary_point(bounded):
    """The stopping rule ends at a point LM itself cannot improve: restarting from the result lowers
    the objective by less than the independent-frame tolerance (a premature stop after a couple of
    small damped steps would leave a clear decrease for the restart)."""
    model = Toy(bounded=bounded, jaw=not bounded)
    n = 3
    g = torch.Generator().manual_seed(4)
    pose6 = torch.zeros(n, 6, dtype=DT)
    pose6[:, 5] = 1.0
    pose6[:, :3] = torch.randn(n, 3, generator=g, dtype=DT) * 0.1
    shape = torch.randn(n, model.n_shape, generator=g, dtype=DT) * 0.5
    expr = torch.rand(n, model.n_expr, generator=g, dtype=DT) * (0.6 if bounded else 1.0)
    if bounded:
        expr[:, :4] = 0.0  # several expressions on their bound, as for real faces
    gt = dict(shape=shape, expr=expr, jaw_pose=torch.randn(n, 3, generator=g, dtype=DT) * 0.05,
              eye_pose=torch.randn(n, 6, generator=g, dtype=DT) * 0.1)
    out = model.landmarks(**gt)
    lmk = project_ndc(out.landmarks, pose6, 20.0) + torch.randn(n, 68, 2, generator=g, dtype=DT) * 0.006
    iris = project_ndc(out.iris, pose6, 20.0)
    kw = dict(iris_ndc=iris, fit_shape=False)
    first = fit_stage2(model, lmk, pose6, 20.0, init=dict(shape=shape), **kw)
    assert first.iterations < Stage2Options().max_iter
    restart = fit_stage2(model, lmk, pose6, 20.0, init=dict(shape=shape, expr=first.expr, jaw_pose=first.jaw_pose,
                                                            eye_pose=first.eye_pose), **kw)
    tol = Stage2Options().rtol_frames
    assert float(restart.objective.sum()) >= float(first.objective.sum()) * (1 - tol)
    adam = fit_stage2(model, lmk, pose6, 20.0, init=dict(shape=shape), solver="adam", **kw)
    assert float(first.objective.sum()) <= float(adam.objective.sum()) * 1.0001


def test_fixed_bases_are_reused_per_model_and_rebuilt_when_its_buffers_change():
    from flame_tracker.model.fixtures import synthetic_flame

    model = synthetic_flame("tiny", dtype=DT)
    lin = [("expr", 0, model.n_expr, "frame")]
    first = s2._lin_basis_cached(model, lin, DT, torch.device("cpu"))
    assert s2._lin_basis_cached(model, lin, DT, torch.device("cpu")) is first  # built once per model/layout
    with_shape = lin + [("shape", model.n_expr, model.n_shape, "frame")]
    s2._lin_basis_cached(model, with_shape, DT, torch.device("cpu"))
    assert s2._lin_basis_cached(model, lin, DT, torch.device("cpu")) is first  # a second layout keeps the first
    with torch.no_grad():
        model._sub_dirs.mul_(2.0)  # in-place change of the landmark-path basis
    rebuilt = s2._lin_basis_cached(model, lin, DT, torch.device("cpu"))
    assert rebuilt is not first
    torch.testing.assert_close(rebuilt[0], 2 * first[0])
