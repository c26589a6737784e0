"""The main fitting paths give the CPU's results on every device (``device`` fixture: the CPU, and CUDA
where the machine has one): each test makes the same call with the model and inputs on ``device``
and on the CPU and compares. On a machine without a GPU they run once, on the CPU, and check that a
second identical call agrees (the paths are deterministic there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flame_tracker.camera import project_ndc
from flame_tracker.fitting import fit_camera, make_synthetic
from flame_tracker.fitting.stage2 import fit_stage2
from flame_tracker.model.fixtures import synthetic_flame


@pytest.fixture(scope="module")
def flame() -> torch.nn.Module:
    """A small FLAME-format model (jaw joint, pose correctives), float32 as users run it."""
    return synthetic_flame("flame", n_shape=20, n_expr=10)


def _batch(model: torch.nn.Module, n: int = 4, seed: int = 0):
    return make_synthetic(model, n, seed=seed, yaw_deg=40.0, pitch_deg=15.0, noise_px=0.3)


def test_stage1_on_device_matches_the_cpu(flame, device) -> None:
    b = _batch(flame)
    ref = fit_camera(b.points3d, b.targets_ndc)
    got = fit_camera(b.points3d.to(device), b.targets_ndc.to(device))
    torch.testing.assert_close(got.pose6.cpu(), ref.pose6.cpu(), atol=1e-6, rtol=0)


def test_stage2_on_device_matches_the_cpu(flame, device) -> None:
    b = _batch(flame, seed=1)
    cam = fit_camera(b.points3d, b.targets_ndc)
    model_dev = synthetic_flame("flame", n_shape=20, n_expr=10).to(device)
    kw = dict(fit_shape=True)
    ref = fit_stage2(flame, b.targets_ndc.float(), cam.pose6.float(), cam.fov.float(), **kw)
    got = fit_stage2(model_dev, b.targets_ndc.float().to(device), cam.pose6.float().to(device),
                     cam.fov.float().to(device), **kw)
    for key in ("expr", "jaw_pose", "shape"):
        a, r = getattr(got, key).cpu(), getattr(ref, key).cpu()
        assert torch.isfinite(a).all(), key
        torch.testing.assert_close(a, r, atol=2e-3, rtol=0, msg=key)


def test_photometric_fit_on_device_matches_the_cpu(device) -> None:
    # In float64. The fit starts at the truth, where the gradients are rounding noise, and Adam's
    # normalised first step turns their signs into full learning-rate moves: in float32 two CPUs
    # already part by 0.004 rad after 3 steps (the GPU machine's 16-core CPU against this one's),
    # while in float64 its CPU and its H200 agreed to 3e-13 rad (2026-12-04).
    from flame_tracker.fitting.photometric import fit_photometric, render_head

    flame = synthetic_flame("flame", n_shape=20, n_expr=10).double()
    res = 64
    n = 2
    dd = dict(dtype=torch.float64)
    pose = torch.tensor([[0.0, 0.2, 0.0, 0.0, 0.0, 0.6], [0.05, -0.2, 0.0, 0.0, 0.0, 0.6]], **dd)
    fov = torch.full((n,), 20.0, **dd)
    light = torch.zeros(n, 9, 3, **dd)
    light[:, 0] = 2.0
    albedo = torch.full((flame.n_verts, 3), 0.6, **dd)
    with torch.no_grad():
        out = flame(expr=torch.zeros(n, flame.n_expr, **dd))
        image = (render_head(out.vertices, flame.faces, pose, fov, res, light=light, albedo=albedo)["image"]
                 .clamp(0, 1) * 255).round().byte().numpy()
        lmk = project_ndc(out.landmarks, pose, fov)

    def fit(model, dev):
        return fit_photometric(model, image, lmk.to(dev), pose.to(dev), fov.to(dev), albedo=albedo.to(dev),
                               max_iter=3, resolution=res)

    ref = fit(flame, torch.device("cpu"))
    got = fit(synthetic_flame("flame", n_shape=20, n_expr=10).to(device, torch.float64), device)
    assert np.isfinite(np.asarray(got.history, dtype=float)).all()
    torch.testing.assert_close(got.pose6.cpu(), ref.pose6.cpu(), atol=1e-9, rtol=0)
    torch.testing.assert_close(got.expr.cpu(), ref.expr.cpu(), atol=1e-8, rtol=0)


def test_video_track_on_device_matches_the_cpu(flame, device) -> None:
    from flame_tracker.video.track import TrackOptions, track_landmarks

    n, size = 12, 512
    b = make_synthetic(flame, n, seed=2, yaw_deg=20.0, pitch_deg=10.0, noise_px=0.3)
    lmks = ((b.targets_ndc.numpy() + 1) * 0.5 * size).astype(np.float64)
    times = np.arange(n) / 25.0
    valid = np.ones(n, bool)
    opts = TrackOptions()
    ref = track_landmarks(flame, lmks, valid, times, options=opts, image_size=(size, size))
    got = track_landmarks(synthetic_flame("flame", n_shape=20, n_expr=10).to(device), lmks, valid, times,
                          options=opts, image_size=(size, size))
    np.testing.assert_allclose(got.pose6, ref.pose6, atol=1e-4)
    np.testing.assert_allclose(got.identity.shape, ref.identity.shape, atol=2e-3)
