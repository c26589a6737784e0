"""Expression priors of named blendshape channels: MediaPipe's trusted channels, held channels,
left/right and antagonist couplings, the prior's fade with the view."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _stage2_toy import Toy  # noqa: E402  (tests/ is on sys.path under pytest)

from flame_tracker.camera import from_head_centric, project_ndc, view_angle_deg
from flame_tracker.errors import InputError
from flame_tracker.fitting.expressions import (
    channel_pairs,
    coupling_matrix,
    expr_from_blendshapes,
    held_channels,
    mediapipe_prior,
)
from flame_tracker.fitting.stage2 import fit_stage2

DT = torch.float64
NAMES = ["browInnerUp_L", "browInnerUp_R", "mouthSmile_L", "mouthSmile_R", "mouthFrown_L", "mouthFrown_R",
         "mouthLeft", "mouthRight", "PupilDilate_L", "cheekRaiser_L", "eyeLookUp_L", "jawOpen"]


def _named_toy() -> Toy:
    model = Toy(bounded=True, jaw=False)
    model.expr_names = list(NAMES)
    return model


def test_pairs_and_coupling_matrix_match_their_formula():
    sym, excl = channel_pairs(NAMES)
    idx = {n: i for i, n in enumerate(NAMES)}
    assert set(sym) == {(idx["browInnerUp_L"], idx["browInnerUp_R"]), (idx["mouthSmile_L"], idx["mouthSmile_R"]),
                        (idx["mouthFrown_L"], idx["mouthFrown_R"])}
    assert (idx["mouthLeft"], idx["mouthRight"]) in excl
    assert (idx["mouthSmile_L"], idx["mouthFrown_L"]) in excl and (idx["mouthSmile_R"], idx["mouthFrown_R"]) in excl
    q = coupling_matrix(NAMES, 3.0, 2.0)
    assert q is not None and np.allclose(q, q.T)
    e = np.random.default_rng(0).uniform(0, 1, len(NAMES))
    expected = 3.0 * sum((e[i] - e[j]) ** 2 for i, j in sym) + 2.0 * sum(e[i] * e[j] for i, j in excl)
    assert e @ q @ e == pytest.approx(expected)
    assert coupling_matrix(NAMES, 0.0, 0.0) is None and coupling_matrix(None, 1.0, 1.0) is None


def test_mediapipe_prior_keeps_only_the_scores_that_mean_the_channel():
    mp_names = ["browInnerUp", "mouthSmileLeft", "mouthSmileRight", "jawOpen", "mouthFrownLeft"]
    scores = np.array([0.8, 0.6, 0.5, 0.3, 0.4], np.float32)
    raw = expr_from_blendshapes(NAMES, mp_names, scores)
    prior = mediapipe_prior(NAMES, mp_names, scores)
    assert raw is not None and prior is not None
    assert float(raw[NAMES.index("browInnerUp_L")]) == pytest.approx(0.8)  # the raw mapping keeps it ...
    assert float(prior[NAMES.index("browInnerUp_L")]) == 0.0  # ... the prior does not (brow height is identity too)
    assert float(prior[NAMES.index("mouthFrown_L")]) == 0.0
    assert float(prior[NAMES.index("mouthSmile_L")]) == pytest.approx(0.6)
    assert float(prior[NAMES.index("jawOpen")]) == pytest.approx(0.3)
    assert mediapipe_prior(None, mp_names, scores) is None


def test_held_channels_need_names():
    assert [NAMES[i] for i in np.flatnonzero(held_channels(_named_toy()))] == ["PupilDilate_L", "cheekRaiser_L"]
    assert not held_channels(Toy(bounded=True)).any()  # unnamed (FLAME-like) coefficients


def _scene(model: Toy, expr: torch.Tensor, n: int = 3):
    g = torch.Generator().manual_seed(4)
    pose6 = torch.zeros(n, 6, dtype=DT)
    pose6[:, 5] = 1.0
    pose6[:, :3] = torch.randn(n, 3, generator=g, dtype=DT) * 0.05
    shape = torch.zeros(n, model.n_shape, dtype=DT)
    out = model.landmarks(shape=shape, expr=expr, eye_pose=torch.zeros(n, 6, dtype=DT))
    return pose6, shape, project_ndc(out.landmarks, pose6, 20.0), project_ndc(out.iris, pose6, 20.0)


def test_held_channels_stay_at_rest_and_the_rest_is_fitted():
    model = _named_toy()
    expr = torch.zeros(3, len(NAMES), dtype=DT)
    expr[:, NAMES.index("jawOpen")] = 0.6
    expr[:, NAMES.index("cheekRaiser_L")] = 0.7  # the landmarks need it, but it is held
    pose6, shape, lmk, iris = _scene(model, expr)
    kw = dict(iris_ndc=iris, init=dict(shape=shape, expr=torch.full((1, len(NAMES)), 0.5)), fit_shape=False,
              w_exp=0.01, w_exp_l1=0.0, w_exp_sym=0.0)
    held = fit_stage2(model, lmk, pose6, 20.0, **kw)
    assert torch.all(held.expr[:, held_channels(model)] == 0)
    assert float(held.expr[:, NAMES.index("jawOpen")].min()) > 0.3
    free = fit_stage2(model, lmk, pose6, 20.0, hold_expr=False, **kw)
    torch.testing.assert_close(free.expr, expr, atol=5e-3, rtol=0)  # without holding, the truth is reachable
    assert float(held.objective.sum()) > float(free.objective.sum())


def test_symmetric_coupling_pulls_a_one_sided_fit_together_and_lm_finds_the_optimum():
    model = _named_toy()
    expr = torch.zeros(3, len(NAMES), dtype=DT)
    expr[:, NAMES.index("mouthSmile_L")] = 0.6  # a one-sided smile
    pose6, shape, lmk, iris = _scene(model, expr)
    kw = dict(iris_ndc=iris, init=dict(shape=shape), fit_shape=False, w_exp=0.01, w_exp_l1=0.0)
    loose = fit_stage2(model, lmk, pose6, 20.0, w_exp_sym=0.0, **kw)
    tied = fit_stage2(model, lmk, pose6, 20.0, w_exp_sym=50.0, **kw)
    gap = lambda r: (r.expr[:, NAMES.index("mouthSmile_L")] - r.expr[:, NAMES.index("mouthSmile_R")]).abs().mean()  # noqa: E731
    assert float(gap(loose)) > 0.55 and float(gap(tied)) < 0.8 * float(gap(loose))
    # the LM's optimum with the coupling is not beaten by the Adam reference on the same objective
    adam = fit_stage2(model, lmk, pose6, 20.0, w_exp_sym=50.0, solver="adam", **kw)
    assert float(tied.objective.sum()) <= float(adam.objective.sum()) * 1.0001


def test_view_angle_and_the_prior_fade_with_it():
    for deg in (0.0, 30.0, 64.0):
        pose6 = from_head_centric(torch.tensor([[0.0, math.radians(deg), 0.0]], dtype=DT),
                                  torch.tensor([[0.0, 0.0, -1.0]], dtype=DT))
        assert float(view_angle_deg(pose6)[0]) == pytest.approx(deg, abs=1e-6)
    # a prior centre on a head turned past the fade's end counts for nothing: the fit rests at 0
    model = _named_toy()
    pose6 = from_head_centric(torch.tensor([[0.0, math.radians(80.0), 0.0]], dtype=DT),
                              torch.tensor([[0.0, 0.0, -1.0]], dtype=DT))
    shape = torch.zeros(1, model.n_shape, dtype=DT)
    out = model.landmarks(shape=shape, expr=torch.zeros(1, len(NAMES), dtype=DT))
    lmk = project_ndc(out.landmarks, pose6, 20.0)
    centre = torch.zeros(1, len(NAMES), dtype=DT)
    centre[0, NAMES.index("jawOpen")] = 0.9
    kw = dict(init=dict(shape=shape), fit_shape=False, w_lmk=1e-3, expr_prior_mean=centre)
    faded = fit_stage2(model, lmk, pose6, 20.0, **kw)
    full = fit_stage2(model, lmk, pose6, 20.0, prior_view_fade=None, **kw)
    assert float(faded.expr[0, NAMES.index("jawOpen")]) < 0.05
    assert float(full.expr[0, NAMES.index("jawOpen")]) > 0.6


def test_the_adam_reference_refuses_the_lm_only_blocks_by_name():
    """The reference's Adam schedule has learning rates for expression, jaw and eyes only: asked to
    refine the rigid pose (or shape, neck) too, it says which options to turn off instead of failing
    on a missing block."""
    model = _named_toy()
    pose6, shape, lmk, iris = _scene(model, torch.zeros(1, len(NAMES), dtype=DT))
    with pytest.raises(InputError, match="fit_rigid=False"):
        fit_stage2(model, lmk, pose6, 20.0, iris_ndc=iris, init=dict(shape=shape), fit_shape=False, fit_rigid=True,
                   solver="adam")
