"""Camera: the reference's exact projection and Euler convention (docs/reference.md §3, §14) and the
conversions to OpenCV / OpenGL / head-centric cameras in original pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from flame_tracker.camera import (
    Crop,
    build_intrinsics,
    cam_to_pose6,
    default_distance,
    euler_to_matrix,
    fov_from_intrinsics,
    fov_to_focal,
    from_head_centric,
    matrix_to_rotvec,
    ndc_to_pixels,
    opencv_to_pose6,
    opengl_c2w_to_pose6,
    pixels_to_ndc,
    pose6_to_cam,
    project_ndc,
    project_pixels,
    projection_matrix,
    rotvec_to_euler,
    rotvec_to_matrix,
    to_head_centric,
    to_opencv,
    to_opengl_c2w,
)

D = torch.float64


def reference_clip_pipeline(points: torch.Tensor, pose6: torch.Tensor, fov: float) -> torch.Tensor:
    """The reference's matrix pipeline written out literally (docs/reference.md §3.4 steps 1-5) -> NDC [N,P,3]."""
    n = pose6.shape[0]
    rt = torch.eye(4, dtype=D).repeat(n, 1, 1)
    rt[:, :3, :3] = rotvec_to_matrix(pose6[:, :3])
    rt[:, :3, 3] = pose6[:, 3:]
    rt[:, :, [1, 2]] *= -1
    world2view = torch.inverse(rt)
    proj = projection_matrix(fov_to_focal(torch.full((n,), fov, dtype=D)))
    full = proj @ world2view
    full[:, 1, :] *= -1
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    clip = homo @ full.transpose(1, 2)
    ndc = clip[..., :3] / (clip[..., 3:] + 1e-8)
    ndc[..., 1] *= -1
    return ndc


def test_spec_numeric_projection_checks() -> None:
    assert float(fov_to_focal(20.0)) == pytest.approx(725.924, abs=1e-3)
    pts = torch.tensor([[[0.05, 0.02, 0.03], [0.0, 0.0, 0.0], [0.1, -0.1, -0.05]]], dtype=D)
    pose = torch.tensor([[0, 0, 0, 0, 0, 1.0]], dtype=D)
    px = ndc_to_pixels(project_ndc(pts, pose, 20.0))[0]
    expected = torch.tensor([[165.419, 113.033], [128.0, 128.0], [197.136, 197.136]], dtype=D)
    assert torch.allclose(px, expected, atol=1e-3)
    # Plain pinhole: u = f x/(d-z) + 128, v = -f y/(d-z) + 128.
    f = 725.924
    assert float(px[0, 0]) == pytest.approx(f * 0.05 / 0.97 + 128, abs=1e-3)
    assert float(px[0, 1]) == pytest.approx(-f * 0.02 / 0.97 + 128, abs=1e-3)


def test_projection_equals_reference_matrix_pipeline() -> None:
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(4, 30, 3, generator=g, dtype=D) - 0.5) * 0.2
    pose = torch.cat([(torch.rand(4, 3, generator=g, dtype=D) - 0.5),
                      torch.tensor([[0.1, -0.05, 0.9]] * 4, dtype=D)], 1)
    ours = project_ndc(pts, pose, 23.0, with_depth=True)
    ref = reference_clip_pipeline(pts, pose, 23.0)
    assert torch.allclose(ours, ref, atol=1e-9)
    # float32 works too and agrees to float precision.
    ours32 = project_ndc(pts.float(), pose.float(), 23.0)
    assert torch.allclose(ours32.double(), ref[..., :2], atol=1e-5)


def test_camera_rotates_about_its_centre() -> None:
    pose = torch.tensor([[0.1, 0.7, -0.2, 0.3, 0.1, 0.8]], dtype=D)
    rot = rotvec_to_matrix(pose[:, :3])[0]
    on_axis = pose[0, 3:] - 0.5 * rot[:, 2]  # OpenGL camera looks down its local -Z
    ndc = project_ndc(on_axis[None, None], pose, 20.0)
    # 1e-8-level: the reference Rodrigues (angle = ||r + 1e-8||) is orthonormal only to ~1e-8.
    assert torch.allclose(ndc, torch.zeros_like(ndc), atol=1e-7)


def test_euler_convention() -> None:
    for rv, ypr in [((0, 0.3, 0), (0.3, 0, 0)), ((0.3, 0, 0), (0, 0.3, 0)), ((0, 0, 0.3), (0, 0, 0.3))]:
        e = rotvec_to_euler(torch.tensor(rv, dtype=D))
        assert torch.allclose(e, torch.tensor(ypr, dtype=D), atol=1e-7)
    rng = np.random.default_rng(1)
    ypr = rng.uniform(-1.2, 1.2, size=(50, 3))
    ours = euler_to_matrix(torch.from_numpy(ypr)).numpy()
    scipy_zyx = Rotation.from_euler("ZYX", ypr[:, [2, 0, 1]]).as_matrix()
    scipy_xyz = Rotation.from_euler("xyz", ypr[:, [1, 0, 2]]).as_matrix()
    assert np.allclose(ours, scipy_zyx, atol=1e-12) and np.allclose(ours, scipy_xyz, atol=1e-12)
    # The fork's from_euler('xyz', [yaw, pitch, roll]) does not match (docs/reference.md §14.2).
    assert not np.allclose(ours, Rotation.from_euler("xyz", ypr).as_matrix(), atol=1e-3)
    cam = torch.cat([torch.from_numpy(ypr), torch.from_numpy(rng.normal(size=(50, 3)))], 1)
    assert torch.allclose(pose6_to_cam(cam_to_pose6(cam)), cam, atol=1e-9)


def test_matrix_to_rotvec_matches_scipy_including_near_pi() -> None:
    rng = np.random.default_rng(2)
    rv = Rotation.random(200, random_state=3).as_rotvec()
    axis = rng.normal(size=(5, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    rv = np.concatenate([rv, axis * (np.pi - 1e-7), axis * 1e-9, np.zeros((1, 3))])
    mats = Rotation.from_rotvec(rv).as_matrix()
    ours = matrix_to_rotvec(torch.from_numpy(mats)).numpy()
    assert np.allclose(Rotation.from_rotvec(ours).as_matrix(), mats, atol=1e-9)
    assert np.allclose(ours[:200], rv[:200], atol=1e-9)


def test_intrinsics_and_distance() -> None:
    K = build_intrinsics(fov_to_focal(torch.tensor([20.0, 30.0], dtype=D)))
    assert K.shape == (2, 3, 3) and float(K[0, 0, 2]) == 128.0 and float(K[1, 2, 2]) == 1.0
    assert float(default_distance(20.0)) == pytest.approx(1.0)
    assert float(default_distance(40.0)) == pytest.approx(np.tan(np.deg2rad(10)) / np.tan(np.deg2rad(20)))


def test_crop_mapping_and_opencv_export_in_original_pixels() -> None:
    crop = Crop(x0=310.0, y0=-40.0, size=517.0)  # any crop, even partly outside the image
    px = torch.tensor([[310.0, -40.0], [827.0, 477.0], [568.5, 218.5]], dtype=D)
    ndc = crop.to_ndc(px)
    assert torch.allclose(ndc, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]], dtype=D))
    assert torch.allclose(crop.from_ndc(ndc), px)
    assert torch.allclose(pixels_to_ndc(ndc_to_pixels(ndc)), ndc)

    g = torch.Generator().manual_seed(4)
    pts = (torch.rand(3, 40, 3, generator=g, dtype=D) - 0.5) * 0.2
    pose = torch.tensor([[0.2, 0.5, 0.1, 0.4, 0.1, 0.9], [0, 0, 0, 0, 0, 1.0], [-0.3, -0.6, 0.2, -0.5, -0.2, 0.8]],
                        dtype=D)
    fov = torch.tensor([20.0, 14.0, 33.0], dtype=D)
    K, R, t = to_opencv(pose, fov, crop)
    assert torch.allclose(K[:, 0, 2], torch.tensor(310.0 + 258.5, dtype=D))
    ours = project_pixels(pts, pose, fov, crop)
    for i in range(3):  # independent check with OpenCV's own projection
        cv, _ = cv2.projectPoints(pts[i].numpy(), cv2.Rodrigues(R[i].numpy())[0], t[i].numpy(), K[i].numpy(), None)
        assert np.allclose(cv[:, 0], ours[i].numpy(), atol=1e-6)
    assert torch.allclose(opencv_to_pose6(R, t), pose, atol=1e-10)
    assert torch.allclose(fov_from_intrinsics(K, crop), fov, atol=1e-10)


def test_per_frame_crops() -> None:
    crop = Crop(x0=torch.tensor([0.0, 100.0]), y0=torch.tensor([0.0, 50.0]), size=torch.tensor([256.0, 512.0]))
    ndc = torch.zeros(2, 3, 2, dtype=D)
    px = crop.from_ndc(ndc)
    assert torch.allclose(px[0], torch.full((3, 2), 128.0, dtype=D))
    assert torch.allclose(px[1], torch.tensor([356.0, 306.0], dtype=D).expand(3, 2))
    assert torch.allclose(crop.to_ndc(px), ndc)
    with pytest.raises(ValueError, match="size"):
        Crop(0, 0, 0)


def test_opengl_and_head_centric_round_trips() -> None:
    g = torch.Generator().manual_seed(5)
    pose = torch.cat([(torch.rand(6, 3, generator=g, dtype=D) - 0.5) * 2, torch.rand(6, 3, generator=g, dtype=D)], 1)
    c2w = to_opengl_c2w(pose)
    assert torch.allclose(opengl_c2w_to_pose6(c2w), pose, atol=1e-10)
    assert torch.allclose(c2w[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=D).expand(6, 4))
    rot_h, t_h = to_head_centric(pose)
    assert torch.allclose(from_head_centric(rot_h, t_h), pose, atol=1e-10)
    # A head-centric point equals the point in the OpenGL camera frame: c2w^-1 X.
    pts = torch.rand(6, 10, 3, generator=g, dtype=D)
    x_cam = pts @ rotvec_to_matrix(rot_h).transpose(1, 2) + t_h[:, None]
    homo = torch.cat([pts, torch.ones_like(pts[..., :1])], -1)
    assert torch.allclose(x_cam, (homo @ torch.inverse(c2w).transpose(1, 2))[..., :3], atol=1e-10)


def test_slerp_goes_the_fraction_of_the_way() -> None:
    from scipy.spatial.transform import Rotation

    from flame_tracker.camera import slerp

    a = Rotation.from_euler("xyz", [[10, 20, 0], [0, 0, 0]], degrees=True)
    b = Rotation.from_euler("xyz", [[10, 20, 30], [0, 90, 0]], degrees=True)
    full = (a.inv() * b).magnitude()
    for w in (0.0, 0.25, 1.0):
        got = slerp(a, b, np.full(2, w))
        np.testing.assert_allclose((a.inv() * got).magnitude(), w * full, atol=1e-12)
        np.testing.assert_allclose((got.inv() * b).magnitude(), (1 - w) * full, atol=1e-12)
    one = slerp(a[0], b[0], 0.5)  # a single rotation and a scalar weight
    assert one.single and np.isclose((a[0].inv() * one).magnitude(), full[0] / 2)
