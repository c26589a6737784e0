"""The reference tracker's camera, reproduced exactly (docs/reference.md §3).

* ``pose6 = (r, t)``: ``r`` an axis-angle rotation, ``t`` the camera centre in model space. ``[R(r) | t]``
  is the camera-to-world matrix in the OpenGL/Blender convention (the camera looks down its local -Z,
  +Y up), so the camera rotates about its own centre.
* FOV in degrees (square image of side ``S``), ``focal = 0.5*S/tan(FOV/2)``, principal point at
  ``S/2``.
* "NDC": x right, y **down**, [-1, 1] across the square image; ``pixel = (ndc + 1) / 2 * S``.
* Saved ``cam = (yaw, pitch, roll, x, y, z)`` with ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``.

All functions are batched over leading dimensions, differentiable and work for float32/float64 on
any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Reference constants (docs/reference.md §3.2).
DEFAULT_FOV = 20.0
REFERENCE_SIZE = 256
ZNEAR = 0.01
ZFAR = 100.0
FOV_MIN = 10.0
FOV_MAX = 50.0

# OpenGL camera axes (x right, y up, looking down -z) -> OpenCV axes (x right, y down, z forward).
_FLIP_YZ = (1.0, -1.0, -1.0)


def _as_tensor(x: Tensor | float, like: Tensor | None = None) -> Tensor:
    """Tensor view of ``x`` (numpy arrays and scalars accepted), float64 unless ``like`` says."""
    if isinstance(x, Tensor):
        return x if like is None else x.to(dtype=like.dtype, device=like.device)
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.to(torch.float64)


def fov_to_focal(fov: Tensor | float, size: float | Tensor = REFERENCE_SIZE) -> Tensor:
    """Focal length in pixels for a square image of side ``size`` and a FOV in degrees."""
    fov = _as_tensor(fov)
    return 0.5 * size / torch.tan(0.5 * torch.deg2rad(fov))


def ndc_scale(fov: Tensor | float) -> Tensor:
    """``2f/S = 1/tan(FOV/2)``: the projection's NDC units per unit of ``x/z`` (FOV in degrees)."""
    return fov_to_focal(fov, 2.0)


def focal_to_fov(focal: Tensor | float, size: float | Tensor = REFERENCE_SIZE) -> Tensor:
    """Inverse of :func:`fov_to_focal` (degrees)."""
    focal = _as_tensor(focal)
    return torch.rad2deg(2.0 * torch.atan(0.5 * size / focal))


def default_distance(fov: Tensor | float) -> Tensor:
    """Reference initial camera distance: the dolly-zoom ``f(fov)/f(20°)`` (metres)."""
    return fov_to_focal(fov) / fov_to_focal(DEFAULT_FOV)


def build_intrinsics(focal: Tensor | float, size: float = REFERENCE_SIZE) -> Tensor:
    """``K = [[f,0,S/2],[0,f,S/2],[0,0,1]]`` per batch element: ``[..., 3, 3]``."""
    focal = _as_tensor(focal)
    zero, one = torch.zeros_like(focal), torch.ones_like(focal)
    c = torch.full_like(focal, size / 2.0)
    rows = [focal, zero, c, zero, focal, c, zero, zero, one]
    return torch.stack(rows, dim=-1).reshape(*focal.shape, 3, 3)


def small_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for tiny matrices as broadcast-multiply-sum.

    Batched BLAS calls on 3×3 blocks are dominated by per-call and threading overhead (on a loaded
    CPU an OpenMP barrier can cost milliseconds); element-wise kernels do not spawn threads for
    tensors this small. Single-threaded (as inside the stage-1 LM) a plain matmul is cheaper.
    """
    if torch.get_num_threads() == 1:  # no thread pool to wake: BLAS is the cheaper single op
        return a @ b
    return (a[..., :, :, None] * b[..., None, :, :]).sum(dim=-2)


_EYE_CACHE: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def eye3(like: Tensor) -> Tensor:
    """A cached 3×3 identity of ``like``'s dtype and device (hot loops call this thousands of times)."""
    key = (like.dtype, like.device)
    eye = _EYE_CACHE.get(key)
    if eye is None:
        eye = _EYE_CACHE.setdefault(key, torch.eye(3, dtype=like.dtype, device=like.device))
    return eye


def outer_minus_dot(a: Tensor) -> Tensor:
    """``[a]x @ [a]x`` in closed form: ``a a^T - (a.a) I`` (exact for any vector ``a``)."""
    return a[..., :, None] * a[..., None, :] - (a * a).sum(dim=-1)[..., None, None] * eye3(a)


# [v]x = v @ _SKEW_BASIS (flattened row-major): one op instead of unbind/zeros/stack.
_SKEW_BASIS = torch.tensor([
    [0, 0, 0, 0, 0, -1, 0, 1, 0],
    [0, 0, 1, 0, 0, 0, -1, 0, 0],
    [0, -1, 0, 1, 0, 0, 0, 0, 0],
], dtype=torch.float64)
_SKEW_CACHE: dict[tuple[torch.dtype, torch.device], Tensor] = {}


def skew(v: Tensor) -> Tensor:
    """Cross-product matrices ``[v]x`` of ``v [..., 3]`` -> ``[..., 3, 3]``."""
    key = (v.dtype, v.device)
    basis = _SKEW_CACHE.get(key)
    if basis is None:
        basis = _SKEW_CACHE.setdefault(key, _SKEW_BASIS.to(dtype=v.dtype, device=v.device))
    return (v @ basis).reshape(*v.shape, 3)


def rotvec_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues' formula exactly as the reference (``angle = ||r + 1e-8||``): ``[..., 3] -> [..., 3, 3]``."""
    angle = torch.linalg.vector_norm(rotvec + 1e-8, dim=-1, keepdim=True)
    axis = rotvec / angle
    angle = angle.unsqueeze(-1)
    return eye3(rotvec) + torch.sin(angle) * skew(axis) + (1.0 - torch.cos(angle)) * outer_minus_dot(axis)


def matrix_to_rotvec(matrix: Tensor) -> Tensor:
    """Axis-angle of rotation matrices ``[..., 3, 3]`` (robust up to angle pi), via quaternions."""
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # Shepperd's method: pick the largest of 4 candidate denominators for numerical stability.
    cands = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22,
                         1 - m00 - m11 + m22], dim=-1)
    best = cands.argmax(dim=-1, keepdim=True)
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s21, s02, s10 = m[..., 2, 1] + m[..., 1, 2], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1]
    c = cands.clamp_min(1e-30)
    q = torch.stack([
        torch.stack([c[..., 0], d21, d02, d10], -1),
        torch.stack([d21, c[..., 1], s10, s02], -1),
        torch.stack([d02, s10, c[..., 2], s21], -1),
        torch.stack([d10, s02, s21, c[..., 3]], -1),
    ], dim=-2)  # [..., 4 candidates, (w, x, y, z)]
    q = torch.take_along_dim(q, best.unsqueeze(-1), dim=-2).squeeze(-2)
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0)  # w >= 0 -> angle in [0, pi]
    q = q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    v = q[..., 1:]
    sin_half = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(sin_half, q[..., :1])
    # angle / sin(angle/2) -> 2 as the angle -> 0.
    scale = torch.where(sin_half > 1e-12, angle / sin_half.clamp_min(1e-12), torch.full_like(angle, 2.0))
    return v * scale


def euler_to_matrix(euler: Tensor) -> Tensor:
    """``(yaw, pitch, roll)`` radians ``[..., 3]`` -> ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``."""
    yaw, pitch, roll = euler.unbind(-1)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    rows = [
        cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp,
        sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp,
        -sy, cy * sp, cy * cp,
    ]
    return torch.stack(rows, dim=-1).reshape(*euler.shape[:-1], 3, 3)


def matrix_to_euler(matrix: Tensor) -> Tensor:
    """Reference ZYX decomposition -> ``(yaw, pitch, roll)`` with its gimbal-lock fallback."""
    r = matrix
    sy = torch.sqrt(r[..., 0, 0] ** 2 + r[..., 1, 0] ** 2)
    singular = sy < 1e-6
    pitch = torch.where(singular, torch.atan2(-r[..., 1, 2], r[..., 1, 1]), torch.atan2(r[..., 2, 1], r[..., 2, 2]))
    yaw = torch.atan2(-r[..., 2, 0], sy)
    roll = torch.where(singular, torch.zeros_like(sy), torch.atan2(r[..., 1, 0], r[..., 0, 0]))
    return torch.stack([yaw, pitch, roll], dim=-1)


def rotvec_to_euler(rotvec: Tensor) -> Tensor:
    """Axis-angle -> the reference's saved ``(yaw, pitch, roll)``."""
    return matrix_to_euler(rotvec_to_matrix(rotvec))


def euler_to_rotvec(euler: Tensor) -> Tensor:
    """The reference's ``(yaw, pitch, roll)`` -> axis-angle."""
    return matrix_to_rotvec(euler_to_matrix(euler))


def pose6_to_cam(pose6: Tensor) -> Tensor:
    """Internal ``pose6`` (axis-angle, centre) -> saved ``cam`` (yaw, pitch, roll, x, y, z)."""
    return torch.cat([rotvec_to_euler(pose6[..., :3]), pose6[..., 3:]], dim=-1)


def cam_to_pose6(cam: Tensor) -> Tensor:
    """Saved ``cam`` (yaw, pitch, roll, x, y, z) -> internal ``pose6``."""
    return torch.cat([euler_to_rotvec(cam[..., :3]), cam[..., 3:]], dim=-1)


def world_to_view(points: Tensor, pose6: Tensor) -> Tensor:
    """Model-space points ``[N, P, 3]`` -> OpenCV view space ``D R^T (X - t)`` (x right, y down, z fwd)."""
    rot = rotvec_to_matrix(pose6[..., :3])  # [N, 3, 3]
    local = small_matmul(points - pose6[..., None, 3:], rot)  # rows: R^T (X - t)
    flip = local.new_tensor(_FLIP_YZ)
    return local * flip


def project_ndc(points: Tensor, pose6: Tensor, fov: Tensor | float, *, with_depth: bool = False) -> Tensor:
    """Project model-space points with the reference camera to its NDC (x right, y down).

    ``points [N, P, 3]`` (or ``[P, 3]``, shared), ``pose6 [N, 6]``, ``fov`` degrees (scalar or ``[N]``).
    Returns ``[N, P, 2]`` (``[N, P, 3]`` with the reference's NDC depth when ``with_depth``).
    Equals the reference's clip-space pipeline (including its ``+1e-8`` in the divide) to float
    precision: ``ndc = (2f/S) * (x, y) / (z + 1e-8)`` with ``2f/S = 1/tan(FOV/2)``.
    """
    view = world_to_view(points, pose6)
    fov = _as_tensor(fov, like=pose6)
    scale = ndc_scale(fov)
    if scale.ndim:
        scale = scale[..., None, None]
    z = view[..., 2:3]
    xy = scale * view[..., :2] / (z + 1e-8)
    if not with_depth:
        return xy
    zn = (ZFAR + ZNEAR) / (ZFAR - ZNEAR) - 2.0 * ZFAR * ZNEAR / ((ZFAR - ZNEAR) * (z + 1e-8))
    return torch.cat([xy, zn], dim=-1)


def ndc_to_pixels(ndc: Tensor, size: float = REFERENCE_SIZE) -> Tensor:
    """Reference NDC -> pixels of the square ``size`` image: ``(ndc/2 + 0.5) * size`` (no half-pixel shift)."""
    return (ndc * 0.5 + 0.5) * size


def pixels_to_ndc(pixels: Tensor, size: float = REFERENCE_SIZE) -> Tensor:
    """Pixels of the square ``size`` image -> reference NDC: ``p / size * 2 - 1``."""
    return pixels / size * 2.0 - 1.0


def projection_matrix(focal: Tensor | float, size: float = REFERENCE_SIZE, near: float = ZNEAR,
                      far: float = ZFAR) -> Tensor:
    """The reference's ``projection_from_intrinsics`` (z_sign=+1, principal point at the centre): ``[..., 4, 4]``."""
    focal = _as_tensor(focal)
    z, o = torch.zeros_like(focal), torch.ones_like(focal)
    a = 2.0 * focal / size
    c1 = (far + near) / (far - near) * o
    c2 = -2.0 * far * near / (far - near) * o
    rows = [a, z, z, z, z, a, z, z, z, z, c1, c2, z, z, o, z]
    return torch.stack(rows, dim=-1).reshape(*focal.shape, 4, 4)


__all__ = [
    "DEFAULT_FOV", "REFERENCE_SIZE", "ZNEAR", "ZFAR", "FOV_MIN", "FOV_MAX", "fov_to_focal", "ndc_scale", "focal_to_fov",
    "default_distance", "build_intrinsics", "small_matmul", "outer_minus_dot", "eye3", "skew", "rotvec_to_matrix",
    "matrix_to_rotvec", "euler_to_matrix",
    "matrix_to_euler", "rotvec_to_euler", "euler_to_rotvec", "pose6_to_cam", "cam_to_pose6", "world_to_view",
    "project_ndc", "ndc_to_pixels", "pixels_to_ndc", "projection_matrix"
]
