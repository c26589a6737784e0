"""The head rotation from MediaPipe's 3-D face mesh, blended with the landmark fit's.

The 2-D landmarks pin yaw and roll well but pitch poorly: tilting the head moves the nose tip, the
eye line and the chin by little in the picture, and MediaPipe's points carry errors of the same size
(on the synthetic scenes of ``benchmarks/accuracy.py`` the fitted pitch is about 0.8 × the true one,
4.7° off on average). MediaPipe also gives every mesh point a relative depth. The rotation of the
similarity that maps the fitted head's dense embedding points (where MediaPipe puts its 468 points on
this model, :mod:`flame_tracker.model.embedding`) onto MediaPipe's 3-D points is a second estimate of
the head's orientation, as poor alone (7.5° on those scenes) but wrong in other ways (its errors
correlate 0.3 with the fit's), so the geodesic half-way rotation between the two is better than either
(6.5° → 5.8° offline, 72 scenes). MediaPipe's depth breaks down in profile, so the blend fades out
between 45° and 60° of fitted yaw.

:func:`blend_with_mesh` does it for a batch of fitted photos: it turns each camera about the head's
centre (the head stays where it is in the picture) to the blended rotation; the expression stays the
landmark fit's (refitted to the turned camera, it followed MediaPipe's 2-D errors on real clips).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from flame_tracker.camera import opencv_to_pose6, pose6_to_opencv, slerp

#: OpenCV camera (x right, y down, z forward) -> a frame where a frontal head has no rotation.
_FLIP = np.diag([1.0, -1.0, -1.0])


def mesh_rotation(model_points: np.ndarray, mesh_points: np.ndarray) -> np.ndarray:
    """Rotation ``[3, 3]`` (model -> OpenCV camera axes) of the similarity that maps the model's
    points ``[P, 3]`` onto MediaPipe's mesh points ``[P, 3]`` (x, y pixels, z its relative depth in
    the same scale)."""
    from flame_tracker.multiview.geometry import similarity_transform

    return similarity_transform(np.asarray(model_points, np.float64), np.asarray(mesh_points, np.float64))[1]


def mesh_with_depth(points: np.ndarray | None) -> np.ndarray | None:
    """MediaPipe's 468 mesh points ``[468, 3]`` (float64) from ``[468|478, 3]`` mesh points with their
    depth, or ``None`` when there is no depth (2 columns, missing, or not finite)."""
    if points is None or np.ndim(points) != 2 or np.shape(points)[1] < 3:
        return None
    q = np.asarray(points, np.float64)[:468, :3]
    return q if np.isfinite(q).all() else None


def head_yaw_deg(R: np.ndarray) -> float:
    """|yaw| in degrees of a model -> OpenCV camera rotation (0 for a frontal head)."""
    return abs(float(Rotation.from_matrix(_FLIP @ R).as_euler("yxz", degrees=True)[0]))


def view_weight(R: np.ndarray, weight: float, full_deg: float, zero_deg: float) -> float:
    """``weight`` up to ``full_deg`` of yaw, falling linearly to 0 at ``zero_deg``."""
    yaw = head_yaw_deg(R)
    return weight * float(np.clip((zero_deg - yaw) / max(zero_deg - full_deg, 1e-9), 0.0, 1.0))


def turn_camera(pose6: torch.Tensor, R_new: np.ndarray, centre: np.ndarray) -> torch.Tensor:
    """``pose6 [6]`` with its (OpenCV) rotation replaced by ``R_new``, translated so that the model
    point ``centre`` keeps its place in the camera."""
    R, t = (x.double().cpu().numpy() for x in pose6_to_opencv(pose6[None].double()))
    R, t = R[0], t[0]
    t_new = R @ centre + t - R_new @ centre
    out = opencv_to_pose6(torch.as_tensor(R_new)[None], torch.as_tensor(t_new)[None])[0]
    return out.to(pose6)


def blend_with_mesh(pose6: torch.Tensor, model_points: np.ndarray, mesh_points: list[np.ndarray | None],
                    centres: np.ndarray, weight: float = 0.5, full_deg: float = 45.0,
                    zero_deg: float = 60.0) -> tuple[torch.Tensor, np.ndarray]:
    """Cameras ``pose6 [N, 6]`` turned towards the rotation of MediaPipe's mesh.

    Args:
        pose6: the fitted cameras.
        model_points: ``[N, P, 3]`` the fitted heads' dense embedding points (model space).
        mesh_points: per face MediaPipe's mesh points with their depth (:func:`mesh_with_depth`); a face
            without (``None``, 2 columns) is kept.
        centres: ``[N, 3]`` the point each camera turns about (model space; the head's centre).
        weight: the fraction of the way to the mesh's rotation (0: unchanged, 1: the mesh's).
        full_deg, zero_deg: the weight is full up to ``full_deg`` of fitted yaw and 0 from ``zero_deg``.

    Returns:
        ``(pose6 [N, 6], the weight used per face [N])``.
    """
    out = pose6.clone()
    used = np.zeros(len(pose6))
    for k, points in enumerate(mesh_points):
        q = mesh_with_depth(points)
        if q is None:
            continue
        R = pose6_to_opencv(pose6[k : k + 1].double())[0][0].cpu().numpy()
        w = view_weight(R, weight, full_deg, zero_deg)
        if w <= 0:
            continue
        Rm = mesh_rotation(model_points[k], q[: len(model_points[k])])
        out[k] = turn_camera(pose6[k], slerp(Rotation.from_matrix(R), Rotation.from_matrix(Rm), w).as_matrix(),
                             centres[k])
        used[k] = w
    return out, used


__all__ = ["blend_with_mesh", "head_yaw_deg", "mesh_rotation", "mesh_with_depth", "turn_camera", "view_weight"]
