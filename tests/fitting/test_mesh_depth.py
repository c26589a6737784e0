"""The head rotation blended with the rotation of MediaPipe's 3-D mesh (fitting.mesh_depth)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from flame_tracker.camera import pose6_to_opencv
from flame_tracker.fitting.mesh_depth import (
    blend_with_mesh,
    head_yaw_deg,
    mesh_rotation,
    turn_camera,
    view_weight,
)

FLIP = np.diag([1.0, -1.0, -1.0])  # a frontal head: model (y up, z to the viewer) -> OpenCV camera


def head_rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Model -> OpenCV camera rotation of a head turned by these angles (degrees)."""
    return FLIP @ Rotation.from_euler("yxz", [yaw, pitch, roll], degrees=True).as_matrix()


def angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(Rotation.from_matrix(a @ b.T).magnitude()))


def pose_of(R: np.ndarray, t: np.ndarray) -> torch.Tensor:
    from flame_tracker.camera import opencv_to_pose6

    return opencv_to_pose6(torch.as_tensor(R)[None], torch.as_tensor(t)[None])[0]


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 0.05, (468, 3))


def test_mesh_rotation_is_the_similarity_rotation(points) -> None:
    R = head_rotation(20, -10, 5)
    mesh = 3000.0 * points @ R.T + np.array([500.0, 300.0, 40.0])  # pixels; MediaPipe's z in the same scale
    assert angle(mesh_rotation(points, mesh), R) < 1e-6


def test_view_weight_fades_out_in_profile() -> None:
    assert head_yaw_deg(head_rotation(30)) == pytest.approx(30)
    assert view_weight(head_rotation(0), 0.5, 45, 60) == pytest.approx(0.5)
    assert view_weight(head_rotation(-45), 0.5, 45, 60) == pytest.approx(0.5)
    assert view_weight(head_rotation(52.5), 0.5, 45, 60) == pytest.approx(0.25)
    assert view_weight(head_rotation(70), 0.5, 45, 60) == 0.0


def test_turn_camera_keeps_the_centre_in_place() -> None:
    R, t = head_rotation(10, 5), np.array([0.02, -0.01, 0.6])
    centre = np.array([0.0, 0.01, 0.03])
    R_new = head_rotation(10, -5)
    R2, t2 = (x[0].numpy() for x in pose6_to_opencv(turn_camera(pose_of(R, t), R_new, centre)[None]))
    assert angle(R2, R_new) < 1e-6
    np.testing.assert_allclose(R2 @ centre + t2, R @ centre + t, atol=1e-9)


def test_blend_goes_part_of_the_way_to_the_mesh(points) -> None:
    R_fit, t = head_rotation(15, 0), np.array([0.0, 0.0, 0.6])
    pose6 = torch.stack([pose_of(R_fit, t)] * 4)
    R_mesh = head_rotation(15, 12)  # MediaPipe sees the head 12° more pitched
    agree = 3000.0 * points @ R_fit.T
    disagree = 3000.0 * points @ R_mesh.T
    profile = head_rotation(75, 0)
    pose6[3] = pose_of(profile, t)
    out, used = blend_with_mesh(pose6, np.stack([points] * 4), [agree, disagree, None, disagree],
                                np.zeros((4, 3)), weight=0.5)
    R_out = pose6_to_opencv(out)[0].numpy()
    assert angle(R_out[0], R_fit) < 1e-6  # the mesh agrees: nothing moves
    assert angle(R_out[1], R_fit) == pytest.approx(6.0, abs=1e-6)  # half-way to the mesh
    assert angle(R_out[1], R_mesh) == pytest.approx(6.0, abs=1e-6)
    assert torch.equal(out[2], pose6[2]) and torch.equal(out[3], pose6[3])  # no mesh; in profile
    np.testing.assert_allclose(used, [0.5, 0.5, 0.0, 0.0])


def test_tracker_turns_the_head_towards_the_mesh(shared_dir) -> None:
    """A fit given MediaPipe's mesh with depth ends between the landmark fit and the mesh's rotation;
    without depth (or with ``mesh_depth=0``) it is the landmark fit."""
    from flame_tracker.camera import Crop, project_pixels
    from flame_tracker.model.embedding import DENSE, with_landmarks
    from flame_tracker.tracker import Tracker

    with Tracker(device="cpu") as tracker:
        model = tracker.model
        pose = torch.tensor([[0.05, 0.3, 0.0, 0.0, 0.02, 0.75]], dtype=torch.float64)
        crop = Crop(0.0, 0.0, 512.0)
        with torch.no_grad():
            lmk = tracker.fit_model.landmarks().landmarks.double()
            iris = model.landmarks().iris.double()
            dense = with_landmarks(model, tracker._embedding, DENSE).landmarks().landmarks.double()[0].numpy()
        px68 = project_pixels(lmk, pose, torch.tensor([20.0], dtype=torch.float64), crop)[0].numpy()
        pxi = project_pixels(iris, pose, torch.tensor([20.0], dtype=torch.float64), crop)[0].numpy()
        kw = dict(image_size=(512, 512))
        flat = tracker.fit_landmarks(px68, pxi, dense_px=np.zeros((478, 2)), **kw)
        R0 = flat.camera_matrices()["w2c_opencv"][0, :3, :3].astype(np.float64)
        # a mesh whose rotation is the fitted one pitched by 10° more
        R_mesh = R0 @ Rotation.from_euler("x", 10, degrees=True).as_matrix()
        mesh = np.zeros((478, 3))
        mesh[:468] = 1500.0 * dense @ R_mesh.T + np.array([256.0, 256.0, 0.0])
        turned = tracker.fit_landmarks(px68, pxi, dense_px=mesh, **kw)
        R1 = turned.camera_matrices()["w2c_opencv"][0, :3, :3].astype(np.float64)
        # several photos of one person: each camera turned, the one shape kept
        pair = tracker._fit_faces([(px68, pxi, (512, 512), None, (), mesh)] * 2, shared_shape=True)
        pair_flat = tracker._fit_faces([(px68, pxi, (512, 512), None, (), mesh[:, :2])] * 2, shared_shape=True)
    with Tracker(device="cpu", mesh_depth=0.0) as off:
        same = off.fit_landmarks(px68, pxi, dense_px=mesh, **kw)
    np.testing.assert_allclose(same.pose6, flat.pose6, atol=1e-6)
    for r, r0 in zip(pair, pair_flat):
        Rp = r.camera_matrices()["w2c_opencv"][0, :3, :3].astype(np.float64)
        R0p = r0.camera_matrices()["w2c_opencv"][0, :3, :3].astype(np.float64)
        assert angle(Rp, R0p) == pytest.approx(5.0, abs=0.5)
        np.testing.assert_array_equal(r.shape, r0.shape)
    assert angle(R1, R0) == pytest.approx(5.0, abs=0.5)  # half-way (the mesh is the mean head, not the fitted one)
    assert angle(R1, R_mesh) < angle(R0, R_mesh) - 4.0
    # the turned head (expression kept) still lies within a few pixels of its landmarks
    assert turned.reprojection_error_px < flat.reprojection_error_px + 3.0
