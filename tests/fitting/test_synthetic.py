"""Synthetic ground-truth generator: deterministic, consistent with the camera, noise and outliers
as asked, ears on the visible side; and stage 1 recovers its cameras (ICT model)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from flame_tracker.camera import ndc_to_pixels, project_ndc, rotvec_to_euler
from flame_tracker.fitting import fit_camera, make_synthetic

D = torch.float64


class LinearEarModel:
    """A tiny linear landmark model with ears (stands in for a FLAME model in unit tests)."""

    n_shape, n_expr, expr_bounds, dtype = 4, 3, None, D

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.base = (torch.rand(108, 3, generator=g, dtype=D) - 0.5) * torch.tensor([0.14, 0.18, 0.06], dtype=D)
        self.base[68:88, 0] = 0.08
        self.base[88:, 0] = -0.08
        self.base[68:, 2] = -0.05
        self.dirs = torch.randn(108, 3, 7, generator=g, dtype=D) * 0.002

    def landmarks(self, shape: torch.Tensor, expr: torch.Tensor) -> SimpleNamespace:
        pts = self.base + torch.einsum("pck,nk->npc", self.dirs, torch.cat([shape, expr], 1))
        return SimpleNamespace(landmarks=pts[:, :68], iris=None, ears=pts[:, 68:])


def test_deterministic_and_consistent() -> None:
    model = LinearEarModel()
    a = make_synthetic(model, 20, seed=3, noise_px=0.7)
    b = make_synthetic(model, 20, seed=3, noise_px=0.7)
    c = make_synthetic(model, 20, seed=4, noise_px=0.7)
    assert torch.equal(a.targets_ndc, b.targets_ndc) and torch.equal(a.pose6, b.pose6)
    assert not torch.equal(a.pose6, c.pose6)
    assert torch.allclose(a.clean_ndc, project_ndc(a.points3d, a.pose6, a.fov))
    assert torch.allclose(a.targets_px, ndc_to_pixels(a.targets_ndc, 256))
    assert torch.allclose(a.crop.to_ndc(a.targets_px), a.targets_ndc)
    assert torch.allclose(a.shape, a.shape[:1].expand(20, -1))  # one identity
    e = rotvec_to_euler(a.pose6[:, :3])
    assert torch.allclose(e, torch.deg2rad(a.cam[:, :3] * 180 / torch.pi))
    assert float(e[:, 0].abs().max()) <= torch.pi / 3 + 1e-9 and float(e[:, 1].abs().max()) <= torch.pi / 6 + 1e-9
    assert float(e[:, 0].abs().max()) > torch.pi / 6  # the range is actually used


def test_noise_outliers_and_ears() -> None:
    model = LinearEarModel()
    s = make_synthetic(model, 400, seed=1, noise_px=0.5, image_size=512, outlier_frac=0.1, ears=True)
    err_px = (s.targets_ndc - s.clean_ndc) * 256  # NDC -> pixels of the 512 image
    inl = err_px[~s.outliers]
    assert float(inl.std()) == pytest.approx(0.5, rel=0.05)
    frac = float(s.outliers.float().mean())
    assert 0.08 < frac < 0.12
    mag = err_px[s.outliers].norm(dim=-1)
    assert float(mag.min()) > 8 and float(mag.max()) < 32
    assert s.points3d.shape == (400, 108, 3) and s.ear_targets_ndc.shape == (400, 20, 2)
    yaw = s.cam[:, 0]
    assert torch.equal(s.ear_side, torch.where(yaw > 0, 1.0, -1.0).to(D))
    left = project_ndc(s.points3d[:, 68:88], s.pose6, s.fov)
    dl = (s.ear_targets_ndc - left).norm(dim=-1).mean(1)
    assert float(dl[yaw > 0].max()) < 0.01 and float(dl[yaw < 0].min()) > 0.01
    with pytest.raises(ValueError, match="ear"):
        make_synthetic(SimpleNamespace(n_shape=1, n_expr=1, expr_bounds=None, name="noears",
                                       landmarks=lambda **k: SimpleNamespace(landmarks=torch.zeros(1, 68, 3),
                                                                             iris=None, ears=None)), 1, ears=True)


def test_motion_modes_and_fov_range() -> None:
    model = LinearEarModel()
    st = make_synthetic(model, 5, motion="static", noise_px=0.0)
    assert torch.allclose(st.pose6, st.pose6[:1].expand(5, -1))
    sm = make_synthetic(model, 50, motion="smooth", fov=(12.0, 35.0))
    steps = (sm.pose6[1:, :3] - sm.pose6[:-1, :3]).norm(dim=1)
    assert float(steps.max()) < 0.2
    assert float(sm.fov.min()) >= 12 and float(sm.fov.max()) <= 35 and float(sm.fov.std()) > 1
    fixed = make_synthetic(model, 4, yaw_deg=(30.0, 30.0), pitch_deg=(0.0, 0.0), roll_deg=(0.0, 0.0))
    assert torch.allclose(fixed.cam[:, 0], torch.full((4,), 30.0, dtype=D).deg2rad())


def test_stage1_recovers_ict_cameras(shared_dir: Path) -> None:
    from flame_tracker.model import load_model

    model = load_model(dtype=D)
    s = make_synthetic(model, 16, seed=2, noise_px=0.5)
    assert s.iris_ndc is not None and s.iris_ndc.shape == (16, 10, 2)
    assert torch.all(s.expr >= 0) and torch.all(s.expr <= 1)  # ICT blendshapes are bounded
    fit = fit_camera(s.points3d, s.targets_ndc)
    rot_err = torch.rad2deg((fit.pose6[:, :3] - s.pose6[:, :3]).norm(dim=1))
    assert float(rot_err.max()) < 1.0, rot_err
    assert float(fit.residuals_px().mean()) < 1.0
    clean = fit_camera(s.points3d, s.clean_ndc)
    assert torch.allclose(clean.pose6, s.pose6, atol=1e-6)


def test_flame_fixture_with_ears() -> None:
    from flame_tracker.model.fixtures import synthetic_flame

    model = synthetic_flame("flame", n_shape=20, n_expr=10, dtype=D)
    s = make_synthetic(model, 8, seed=5, ears=True, noise_px=0.0, yaw_deg=(20.0, 60.0))
    assert s.points3d.shape == (8, 108, 3) and bool((s.ear_side > 0).all())
    fit = fit_camera(s.points3d, s.targets_ndc, ear_targets=s.ear_targets_ndc)
    assert torch.allclose(fit.pose6, s.pose6, atol=1e-6)
