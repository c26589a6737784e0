"""Stage 1: the seed's objective (hand-computed values, ear gating, temporal coupling, masks), the
reference Adam loop against a literal transcription of the seed, and the fast LM solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flame_tracker.camera import (
    cam_to_pose6,
    euler_to_matrix,
    euler_to_rotvec,
    fov_to_focal,
    project_ndc,
    rotvec_to_euler,
)
from flame_tracker.fitting.stage1 import (
    Stage1Options,
    Stage1Problem,
    _solve,
    fit_camera,
    stage1_objective,
    temporal_term,
)

D = torch.float64


def face_points(seed: int = 0, n_points: int = 108) -> torch.Tensor:
    """A face-sized 3-D point cloud (metres); ears at the sides (x = ±0.075) for 108 points."""
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n_points, 3, generator=g, dtype=D) - 0.5) * torch.tensor([0.14, 0.18, 0.06], dtype=D)
    pts[:, 2] += 0.03
    if n_points == 108:
        pts[68:88, 0] = 0.075 + 0.01 * torch.rand(20, generator=g, dtype=D)  # left ear: +x (subject's left)
        pts[88:, 0] = -0.075 - 0.01 * torch.rand(20, generator=g, dtype=D)
        pts[68:, 2] = -0.06 + 0.02 * torch.rand(40, generator=g, dtype=D)
    return pts


def orbit_pose(yaw: torch.Tensor, pitch: torch.Tensor, dist: float = 1.0) -> torch.Tensor:
    """Cameras orbiting the origin at ``dist`` (reference convention: yaw > 0 sees the left ear)."""
    e = torch.stack([yaw, pitch, torch.zeros_like(yaw)], dim=1)
    centre = euler_to_matrix(e)[:, :, 2] * dist
    return torch.cat([euler_to_rotvec(e), centre], dim=1)


def test_objective_hand_computed() -> None:
    pts = face_points(n_points=68)
    pose = torch.tensor([[0, 0, 0, 0, 0, 1.0]], dtype=D)
    proj = project_ndc(pts[None], pose, 20.0)
    tg = proj.clone()
    tg[:, 17:] += torch.tensor([0.003, 0.004], dtype=D)  # distance 0.005 on every face point
    tg[:, :17] += torch.tensor([0.0, -0.01], dtype=D)  # distance 0.01 on the jawline
    loss = stage1_objective(pts, tg, pose, 20.0)
    assert float(loss.total) == pytest.approx(0.005 * 300 + 0.01 * 200, rel=1e-9)
    # Summed over frames; the temporal term is 150 (|dr|^2 + |dt|^2) between neighbours.
    pose2 = torch.cat([pose, pose + torch.tensor([0.01, 0, 0, 0, 0.02, 0], dtype=D)])
    tg2 = project_ndc(pts.expand(2, -1, -1), pose2, 20.0)
    loss2 = stage1_objective(pts, tg2, pose2, 20.0, temporal=True)
    assert float(loss2.total) == pytest.approx(150 * (0.01**2 + 0.02**2), rel=1e-6)
    assert float(stage1_objective(pts, tg2, pose2, 20.0).total) == pytest.approx(0.0, abs=1e-9)
    # FOV is clamped to [10, 50]: 80 degrees evaluates like 50.
    a = stage1_objective(pts, tg, pose, 80.0).total
    b = stage1_objective(pts, tg, pose, 50.0).total
    assert float(a) == pytest.approx(float(b))


def test_weights_come_from_the_options() -> None:
    """The same hand-computed objective with other weights, and a fit that ignores the jawline when
    its weight is zero (its targets may then be anything)."""
    pts = face_points(n_points=68)
    pose = torch.tensor([[0, 0, 0, 0, 0, 1.0]], dtype=D)
    tg = project_ndc(pts[None], pose, 20.0)
    tg[:, 17:] += torch.tensor([0.003, 0.004], dtype=D)
    tg[:, :17] += torch.tensor([0.0, -0.01], dtype=D)
    opts = Stage1Options(w_lmk=30.0, w_contour=7.0)
    assert float(stage1_objective(pts, tg, pose, 20.0, options=opts).total) == pytest.approx(0.005 * 30 + 0.01 * 7)
    clean = project_ndc(pts[None], pose, 20.0)
    wrong_jaw = clean.clone()
    wrong_jaw[:, :17] += 0.05
    no_jaw = fit_camera(pts, wrong_jaw, options=Stage1Options(w_contour=0.0))
    assert torch.allclose(no_jaw.pose6, pose, atol=1e-6) and no_jaw.objective < 1e-6
    assert fit_camera(pts, wrong_jaw).objective > 10.0  # the default counts it (200 × its 0.07 error)
    # the solver and its cap are options too (keywords override them)
    assert fit_camera(pts, clean, options=Stage1Options(solver="adam", max_iter=3)).solver == "adam"
    assert fit_camera(pts, clean, options=Stage1Options(solver="adam"), solver="lm").solver == "lm"


@pytest.mark.parametrize("yaw,pitch,side,weight", [
    (0.3, 0.0, "left", 0.3), (-0.3, 0.0, "right", 0.3), (0.05, 0.0, None, 0.0),
    (0.3, 0.2, "left", 0.5), (0.05, -0.2, "left", 0.2), (-0.05, -0.2, "right", 0.2),
])
def test_ear_gating_by_yaw_and_pitch(yaw: float, pitch: float, side: str | None, weight: float) -> None:
    pts = face_points()
    pose = orbit_pose(torch.tensor([yaw], dtype=D), torch.tensor([pitch], dtype=D))
    e = rotvec_to_euler(pose[:, :3])[0]
    assert float(e[0]) == pytest.approx(yaw) and float(e[1]) == pytest.approx(pitch)
    proj = project_ndc(pts[None], pose, 20.0)
    face = proj[:, :68]
    for ear_side, sl in (("left", slice(68, 88)), ("right", slice(88, 108))):
        ears = proj[:, sl] + torch.tensor([0.0, 0.02], dtype=D)  # mean distance 0.02 to that side
        loss = float(stage1_objective(pts, face, pose, 20.0, ear_targets=ears).total)
        # The other side is compared too, but gated by the yaw sign (and by its mean distance).
        expected = 150 * weight * 0.02 if ear_side == side else None
        if expected is not None:
            assert loss == pytest.approx(expected, rel=1e-6)
        else:
            other = float(stage1_objective(pts, face, pose, 20.0, ear_targets=ears).total)
            # Only the chosen side can contribute, and the far side is >= 0.25 away here.
            assert other == pytest.approx(loss)
            assert loss < 150 * 0.6 * 0.02 * 0.5 or side is None or loss == pytest.approx(0.0, abs=1e-9)


def test_ear_side_dropped_beyond_gate() -> None:
    pts = face_points()
    pose = orbit_pose(torch.tensor([0.4], dtype=D), torch.tensor([0.0], dtype=D))
    proj = project_ndc(pts[None], pose, 20.0)
    near = proj[:, 68:88] + torch.tensor([0.0, 0.2], dtype=D)
    far = proj[:, 68:88] + torch.tensor([0.0, 0.26], dtype=D)
    assert (float(stage1_objective(pts, proj[:, :68], pose, 20.0, ear_targets=near).total)
            == pytest.approx(150 * 0.4 * 0.2))
    assert float(stage1_objective(pts, proj[:, :68], pose, 20.0, ear_targets=far).total) == pytest.approx(0.0, abs=1e-9)


def test_temporal_term_couples_only_neighbours() -> None:
    pose = torch.randn(5, 6, dtype=D)
    hess = torch.autograd.functional.hessian(lambda p: temporal_term(p.reshape(5, 6), torch.ones(4, dtype=D)),
                                             pose.flatten()).reshape(5, 6, 5, 6)
    assert torch.allclose(hess[0, :, 1], -300 * torch.eye(6, dtype=D))
    for i, j in [(0, 2), (0, 3), (1, 3), (0, 4), (2, 4)]:
        assert torch.count_nonzero(hess[i, :, j]) == 0
    # Neighbour weights: frames 1 and 2 are not adjacent (e.g. a dropped frame between them).
    w = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=D)
    hess = torch.autograd.functional.hessian(lambda p: temporal_term(p.reshape(5, 6), w),
                                             pose.flatten()).reshape(5, 6, 5, 6)
    assert torch.count_nonzero(hess[1, :, 2]) == 0 and torch.count_nonzero(hess[2, :, 3]) > 0


def test_nan_targets_are_masked_or_refused() -> None:
    pts = face_points(n_points=68)
    gt = orbit_pose(torch.tensor([0.3, -0.2], dtype=D), torch.tensor([0.1, 0.0], dtype=D))
    tg = project_ndc(pts.expand(2, -1, -1), gt, 20.0)
    tg[0, [3, 20, 40]] = float("nan")
    tg[1, 50] = float("inf")
    fit = fit_camera(pts, tg)
    assert torch.isfinite(fit.pose6).all() and np.isfinite(fit.objective)
    assert torch.allclose(fit.pose6, gt, atol=1e-6)
    assert torch.isnan(fit.residuals[0, [3, 20, 40]]).all() and torch.isfinite(fit.residuals[0, :3]).all()
    # Means run over the valid points: masking a perfectly fitted point does not change the value.
    off = tg.clone()
    off[:, 17:] += 0.001
    assert float(stage1_objective(pts, off, gt, 20.0).total) == pytest.approx(2 * 300 * 0.001 * 2**0.5, rel=1e-6)
    tg[1] = float("nan")
    with pytest.raises(ValueError, match=r"frame\(s\) \[1\]"):
        fit_camera(pts, tg)
    with pytest.raises(ValueError, match="68, 2"):
        fit_camera(pts, tg[:, :60])
    with pytest.raises(ValueError, match="108"):
        fit_camera(pts, tg[:1], ear_targets=torch.zeros(1, 20, 2))


def test_lm_recovers_pose_exactly_and_under_noise() -> None:
    pts = face_points(1, n_points=68)
    g = torch.Generator().manual_seed(3)
    yaw = torch.tensor([0.0, 0.5, -0.9, 1.0, 0.2], dtype=D)
    pitch = torch.tensor([0.0, 0.3, -0.4, 0.1, -0.5], dtype=D)
    gt = orbit_pose(yaw, pitch, 1.1)
    gt[:, 3:] += 0.03 * torch.randn(5, 3, generator=g, dtype=D)
    clean = project_ndc(pts.expand(5, -1, -1), gt, 20.0)
    fit = fit_camera(pts, clean)
    assert fit.converged and fit.iterations < 40
    assert torch.allclose(fit.pose6, gt, atol=1e-6) and fit.objective < 1e-6
    noisy = clean + torch.randn(clean.shape, generator=g, dtype=D) * (0.5 / 128)  # 0.5 px at 256²
    fit = fit_camera(pts, noisy)
    rot_err = torch.rad2deg((fit.pose6[:, :3] - gt[:, :3]).norm(dim=1))
    assert float(rot_err.max()) < 1.0
    assert float(fit.residuals_px().nanmean()) < 1.0
    # Warm start from the truth converges immediately; the objective gradient is ~0 at the solution.
    warm = fit_camera(pts, noisy, init=fit.pose6)
    assert warm.iterations <= 3 and warm.objective <= fit.objective + 1e-9
    # float32 inputs on any layout work and return float64 CPU results.
    assert fit_camera(pts.float(), noisy.float()).pose6.dtype == D


@pytest.mark.slow
def test_lm_beats_or_matches_adam_reference() -> None:
    pts = face_points(2, n_points=68)
    g = torch.Generator().manual_seed(4)
    gt = orbit_pose(torch.tensor([0.4], dtype=D), torch.tensor([0.1], dtype=D), 0.9)
    tg = project_ndc(pts[None], gt, 20.0) + torch.randn(1, 68, 2, generator=g, dtype=D) * (0.5 / 128)
    lm = fit_camera(pts, tg)
    adam = fit_camera(pts, tg, solver="adam")
    adam_obj = float(stage1_objective(pts, tg, adam.pose6.double(), adam.fov.double()).total)
    assert lm.objective <= adam_obj * 1.001
    assert adam.iterations == 1500 and adam.solver == "adam"


def test_fov_modes() -> None:
    pts = face_points(5, n_points=68)
    n = 12
    yaw = torch.linspace(-1.0, 1.0, n, dtype=D)
    pitch = 0.3 * torch.sin(torch.arange(n, dtype=D))
    true_fov = 32.0
    from flame_tracker.camera import default_distance
    gt = orbit_pose(yaw, pitch, float(default_distance(true_fov)) * 0.45)  # close: strong perspective
    tg = project_ndc(pts.expand(n, -1, -1), gt, true_fov)
    shared = fit_camera(pts, tg, fov=20.0, fov_mode="shared")
    assert torch.allclose(shared.fov, torch.full((n,), true_fov, dtype=D), atol=1e-3)
    assert torch.allclose(shared.pose6, gt, atol=1e-5)
    per = fit_camera(pts, tg[:2], fov=20.0, fov_mode="per_frame")
    assert per.fov.shape == (2,) and per.objective < 1e-4
    fixed = fit_camera(pts, tg, fov=20.0)
    assert torch.all(fixed.fov == 20.0) and fixed.objective > shared.objective
    with pytest.raises(ValueError, match="fov_mode"):
        fit_camera(pts, tg, fov_mode="bogus")


def test_temporal_lm_smooths_and_solves_block_tridiagonal() -> None:
    # The banded solve equals a dense solve of the same block-tridiagonal (+ border) system.
    g = torch.Generator().manual_seed(6)
    n, k = 5, 7
    a = torch.randn(n, k, k, generator=g, dtype=D)
    blocks = a @ a.transpose(1, 2) + 5 * torch.eye(k, dtype=D)
    w = torch.tensor([1.0, 0.5, 0.0, 1.0], dtype=D)
    grad = torch.randn(n, k, generator=g, dtype=D)
    dense = torch.zeros(n * k, n * k, dtype=D)
    for i in range(n):
        dense[i * k:(i + 1) * k, i * k:(i + 1) * k] = blocks[i]
    for i in range(n - 1):
        idx = torch.arange(6)
        dense[i * k + idx, (i + 1) * k + idx] = -300 * w[i]
        dense[(i + 1) * k + idx, i * k + idx] = -300 * w[i]
        dense[i * k + idx, i * k + idx] += 300 * w[i]
        dense[(i + 1) * k + idx, (i + 1) * k + idx] += 300 * w[i]
    diag_t = torch.zeros(n, dtype=D)
    diag_t[1:] += 300 * w
    diag_t[:-1] += 300 * w
    blocks_t = blocks.clone()
    blocks_t[:, range(6), range(6)] += diag_t[:, None]
    ours = _solve(blocks_t, grad, w, shared=False, w_temporal=150.0)
    ref = -torch.linalg.solve(dense, grad.flatten()).reshape(n, k)
    assert torch.allclose(ours, ref, atol=1e-9)
    # Shared FOV: the 7th unknown is one scalar for all frames (bordered system).
    sh = dense.clone()
    keep = [i * k + j for i in range(n) for j in range(6)] + [k - 1]
    big = torch.zeros(6 * n + 1, 6 * n + 1, dtype=D)
    big[:6 * n, :6 * n] = (dense[[i * k + j for i in range(n) for j in range(6)]]
                           [:, [i * k + j for i in range(n) for j in range(6)]])
    big[:6 * n, -1] = blocks[:, :6, 6].flatten()
    big[-1, :6 * n] = blocks[:, :6, 6].flatten()
    big[-1, -1] = blocks[:, 6, 6].sum()
    rhs = torch.cat([grad[:, :6].flatten(), grad[:, 6].sum().reshape(1)])
    ref = -torch.linalg.solve(big, rhs)
    ours = _solve(blocks_t, grad, w, shared=True, w_temporal=150.0)
    assert (torch.allclose(ours[:, :6].flatten(), ref[:-1], atol=1e-9)
            and torch.allclose(ours[:, 6], ref[-1].expand(n), atol=1e-9))
    del sh, keep

    # Smoothing on a noisy static head: the coupled optimum is smoother and lowers the coupled objective.
    pts = face_points(7, n_points=68)
    gt = orbit_pose(torch.full((8,), 0.3, dtype=D), torch.zeros(8, dtype=D))
    tg = project_ndc(pts.expand(8, -1, -1), gt, 20.0) + torch.randn(8, 68, 2, generator=g, dtype=D) * (1.0 / 128)
    indep = fit_camera(pts, tg)
    smooth = fit_camera(pts, tg, temporal=True)
    assert smooth.converged
    indep_obj = float(stage1_objective(pts, tg, indep.pose6, 20.0, temporal=True).total)
    assert smooth.objective < indep_obj
    jitter = lambda p: float((p[1:] - p[:-1]).norm(dim=1).mean())  # noqa: E731
    assert jitter(smooth.pose6) < jitter(indep.pose6)


def seed_reference_loop(pts: torch.Tensor, gt_lmk: torch.Tensor, gt_ear: torch.Tensor, fov0: float,
                        iterations: int, temporal_smoothing: bool, optimize_fov: bool, drop_at: int,
                        temporal_after: int) -> tuple[torch.Tensor, torch.Tensor]:
    """stage1-seed.txt transcribed literally (its own loss helpers and the projection matrices); only
    the schedule's iteration numbers are parameters so that the test runs in seconds."""
    from flame_tracker.camera import projection_matrix, rotvec_to_matrix

    dt = gt_lmk.dtype

    def l2ps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(((a - b) ** 2).sum(-1)).mean(-1)

    def project(verts: torch.Tensor, pose: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
        n = pose.shape[0]
        rt = torch.cat([torch.cat([rotvec_to_matrix(pose[:, :3]), pose[:, 3:, None]], 2),
                        torch.tensor([0, 0, 0, 1.0], dtype=dt).expand(n, 1, 4)], 1)
        rt = torch.cat([rt[:, :, :1], -rt[:, :, 1:3], rt[:, :, 3:]], dim=2)  # Rt[:, :, [1, 2]] *= -1
        full = projection_matrix(fov_to_focal(fov)) @ torch.inverse(rt)
        full = torch.cat([full[:, :1], -full[:, 1:2], full[:, 2:]], dim=1)  # y flip
        clip = torch.cat([verts, torch.ones_like(verts[..., :1])], -1) @ full.transpose(1, 2)
        ndc = clip[..., :3] / (clip[..., 3:] + 1e-8)
        return torch.cat([ndc[..., :1], -ndc[..., 1:2]], dim=-1)

    n = gt_lmk.shape[0]
    camera_pose = torch.zeros(n, 6, dtype=dt)
    camera_pose[:, 5] = float(fov_to_focal(fov0) / fov_to_focal(20.0))
    fov = torch.full((n,), fov0, dtype=dt)
    d_rot = torch.nn.Parameter(torch.zeros(n, 3, dtype=dt))
    d_trans = torch.nn.Parameter(torch.zeros(n, 3, dtype=dt))
    d_fov = torch.nn.Parameter(torch.zeros(n, dtype=dt))
    params = [{"params": [d_trans], "lr": 0.05}, {"params": [d_rot], "lr": 0.05}]
    if optimize_fov:
        params.append({"params": [d_fov], "lr": 0.05})
    opt = torch.optim.Adam(params, weight_decay=1e-5)
    for it in range(iterations):
        if it == drop_at:
            for g in opt.param_groups:
                g["lr"] = 0.005
        ofov = torch.clamp(fov + d_fov, min=10.0, max=50.0)
        pose = camera_pose + torch.cat([d_rot, d_trans], dim=-1)
        ndc = project(pts, pose, ofov)
        lmk = ndc[:, :68]
        loss_lmk = l2ps(lmk[:, 17:], gt_lmk[:, 17:]).sum() * 300 + l2ps(lmk[:, :17], gt_lmk[:, :17]).sum() * 200
        with torch.no_grad():
            e = rotvec_to_euler(pose[:, :3])
            yaw, pitch = e[:, 0], e[:, 1]
            use_l, use_r = (yaw > 0).to(dt), (yaw < 0).to(dt)
            ay, ap = yaw.abs(), pitch.abs()
            ay[ay < 0.1] = 0.0
            ap[ap < 0.15] = 0.0
            aw = ay + ap
        l_ear = l2ps(ndc[:, 68:88], gt_ear)
        r_ear = l2ps(ndc[:, 88:108], gt_ear)
        l_ear = l_ear * (l_ear < 0.25).to(dt) * use_l
        r_ear = r_ear * (r_ear < 0.25).to(dt) * use_r
        loss_ear = ((l_ear + r_ear) * 150 * aw).sum()
        reg = 0
        if temporal_smoothing and n >= 2 and it > temporal_after:
            reg = (150 * torch.sum((pose[1:, :3] - pose[:-1, :3]) ** 2)
                   + 150 * torch.sum((pose[1:, 3:] - pose[:-1, 3:]) ** 2))
        loss = torch.nan_to_num(loss_lmk + loss_ear + reg, nan=0.0, posinf=1e5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (camera_pose + torch.cat([d_rot, d_trans], -1)).detach(), torch.clamp(fov + d_fov, 10, 50).detach()


def test_adam_reproduces_the_seed_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """All branches: ears (both sides and a gated one), temporal term switched on late, FOV, lr drop.
    The seed's schedule is 1500 / 1000 / 600 iterations; the test compresses it to 90 / 60 / 30."""
    import flame_tracker.fitting.stage1 as s1

    assert (s1.ADAM_ITERATIONS, s1.ADAM_LR_DROP_AT, s1.ADAM_TEMPORAL_AFTER) == (1500, 1000, 600)
    assert (s1.ADAM_LR, s1.ADAM_LR_LATE, s1.ADAM_WEIGHT_DECAY) == (0.05, 0.005, 1e-5)
    monkeypatch.setattr(s1, "ADAM_LR_DROP_AT", 60)
    monkeypatch.setattr(s1, "ADAM_TEMPORAL_AFTER", 30)
    pts = face_points(8)
    g = torch.Generator().manual_seed(8)
    gt = orbit_pose(torch.tensor([0.5, -0.4, 0.05], dtype=D), torch.tensor([0.2, 0.0, 0.0], dtype=D), 1.05)
    proj = project_ndc(pts.expand(3, -1, -1), gt, 22.0)
    tg = proj[:, :68] + torch.randn(3, 68, 2, generator=g, dtype=D) * 0.004
    ears = torch.stack([proj[0, 68:88], proj[1, 88:108], proj[2, 68:88]]) + 0.01
    # The seed projects through inv([R|t]) while we use R^T: its Rodrigues (angle = |r + 1e-8|) is
    # orthonormal only to ~1e-8, so the two loops agree to ~1e-8 and Adam (which divides by sqrt(v))
    # slowly amplifies that in near-zero gradient directions: tight early, looser after 90 steps.
    ref_pose, ref_fov = seed_reference_loop(pts, tg, ears, 24.0, 20, False, True, 60, 30)
    fit = fit_camera(pts, tg, ear_targets=ears, fov=24.0, fov_mode="per_frame", solver="adam", max_iter=20)
    assert torch.allclose(fit.pose6, ref_pose, atol=1e-7), (fit.pose6 - ref_pose).abs().max()
    assert torch.allclose(fit.fov, ref_fov, atol=1e-6)
    ref_pose, ref_fov = seed_reference_loop(pts, tg, ears, 24.0, 90, True, True, 60, 30)
    fit = fit_camera(pts, tg, ear_targets=ears, fov=24.0, fov_mode="per_frame", temporal=True, solver="adam",
                     max_iter=90)
    assert fit.pose6.dtype == D and fit.iterations == 90
    assert torch.allclose(fit.pose6, ref_pose, atol=1e-3), (fit.pose6 - ref_pose).abs().max()
    assert torch.allclose(fit.fov, ref_fov, atol=1e-3)
    ref_obj = float(stage1_objective(pts, tg, ref_pose, ref_fov, ear_targets=ears, temporal=True).total)
    assert fit.objective == pytest.approx(ref_obj, rel=2e-3)
    # float32 (the seed's dtype) runs the same loop.
    fit32 = fit_camera(pts.float(), tg.float(), ear_targets=ears.float(), fov=24.0, solver="adam", max_iter=5)
    assert fit32.pose6.dtype == torch.float32


def test_problem_shapes() -> None:
    pts = face_points()
    prob = Stage1Problem(pts, torch.zeros(3, 68, 2), torch.zeros(3, 20, 2))
    assert prob.points.shape == (3, 108, 3) and prob.has_ears
    prob = Stage1Problem(pts, torch.zeros(3, 68, 2))
    assert prob.points.shape == (3, 68, 3) and not prob.has_ears
    assert cam_to_pose6(torch.zeros(6, dtype=D)).shape == (6,)


def test_lm_with_ear_targets() -> None:
    """Ears enter the LM through the same gated weights: consistent ears keep the exact solution,
    ears of the wrong side (gated off by the 0.25 threshold) do not disturb it."""
    pts = face_points(9)
    gt = orbit_pose(torch.tensor([0.6, -0.5, 0.02], dtype=D), torch.tensor([0.2, -0.1, 0.0], dtype=D), 1.0)
    proj = project_ndc(pts.expand(3, -1, -1), gt, 20.0)
    visible = torch.stack([proj[0, 68:88], proj[1, 88:108], proj[2, 68:88]])
    fit = fit_camera(pts, proj[:, :68], ear_targets=visible)
    assert torch.allclose(fit.pose6, gt, atol=1e-6) and fit.objective < 1e-6
    assert fit.residuals.shape == (3, 108)
    g = torch.Generator().manual_seed(9)
    noisy = proj[:, :68] + torch.randn(3, 68, 2, generator=g, dtype=D) * (0.5 / 128)
    wrong = torch.stack([proj[0, 88:108], proj[1, 68:88], proj[2, 88:108]])  # far side: mean distance > 0.25
    a = fit_camera(pts, noisy)
    b = fit_camera(pts, noisy, ear_targets=wrong)
    assert torch.allclose(a.pose6, b.pose6, atol=1e-6)
    c = fit_camera(pts, noisy, ear_targets=visible)
    assert float(stage1_objective(pts, noisy, c.pose6, 20.0, ear_targets=visible).total) == pytest.approx(c.objective)


@pytest.mark.parametrize("fov_mode", ["fixed", "per_frame"])
def test_lm_batch_equals_frames_solved_alone(fov_mode: str) -> None:
    """Independent frames that converge early leave the batch (the solver compacts its working set):
    every frame of a batch must still get exactly the pose it gets when solved on its own."""
    pts = face_points(5, n_points=68)
    g = torch.Generator().manual_seed(6)
    n = 12
    gt = orbit_pose(torch.linspace(-1.0, 1.0, n, dtype=D), torch.linspace(0.4, -0.4, n, dtype=D), 1.0)
    tg = project_ndc(pts.expand(n, -1, -1), gt, 20.0)
    # Mixed difficulty: exact frames converge in a few iterations, noisy ones take longer.
    tg[::2] += torch.randn(tg[::2].shape, generator=g, dtype=D) * (2.0 / 128)
    batch = fit_camera(pts, tg, fov_mode=fov_mode)
    alone = [fit_camera(pts, tg[i:i + 1], fov_mode=fov_mode) for i in range(n)]
    assert batch.converged
    assert torch.allclose(batch.pose6, torch.cat([a.pose6 for a in alone]), atol=1e-10)
    assert torch.allclose(batch.fov, torch.cat([a.fov for a in alone]), atol=1e-10)
    assert batch.iterations == max(a.iterations for a in alone)
    assert batch.objective == pytest.approx(sum(a.objective for a in alone), rel=1e-12)
