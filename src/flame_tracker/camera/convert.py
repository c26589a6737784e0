"""Conversions between the reference camera and standard camera descriptions.

The fitting works in the NDC of a square *fitting crop* of the original image (:class:`Crop`). The
exports here express the same camera in **original image pixels** (any aspect ratio):

* OpenCV world-to-camera ``[R | t]`` (x right, y down, z forward) with ``K`` in original pixels.
* OpenGL / Blender camera-to-world ``4x4`` (the camera looks down its local -Z, +Y up).
* Head-centric: the head is rotated and translated in front of a fixed OpenGL camera at the origin,
  ``X_cam = R_head @ X + t_head`` (what a renderer with an identity view matrix wants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from flame_tracker.camera.reference import (
    _as_tensor,
    focal_to_fov,
    fov_to_focal,
    matrix_to_rotvec,
    project_ndc,
    rotvec_to_matrix,
)
from flame_tracker.errors import InputError

if TYPE_CHECKING:
    from scipy.spatial.transform import Rotation

_FLIP = (1.0, -1.0, -1.0)  # OpenGL <-> OpenCV camera axes


@dataclass(frozen=True)
class Crop:
    """A square fitting crop of the original image, in original pixels (no rotation).

    ``x0, y0``: top-left corner; ``size``: side length. Scalars, or tensors ``[N]`` for per-frame crops.
    Mapping: ``ndc = (p - (x0, y0)) / size * 2 - 1`` and back ``p = (ndc + 1) / 2 * size + (x0, y0)``.
    The reference's 256² image is ``Crop(0, 0, 256)``.

    ``cx, cy``: the camera's principal point in original pixels. ``None`` (the reference) puts it at
    the crop's centre; a real camera has it at the image centre, wherever the face is. The camera
    then projects to ``ndc = project_ndc(...) + pp_ndc`` (:meth:`pp_ndc`), so the fitting works on
    targets shifted by ``-pp_ndc`` (:meth:`to_camera_ndc`) with the reference projection unchanged.
    """

    x0: float | Tensor
    y0: float | Tensor
    size: float | Tensor
    cx: float | Tensor | None = None
    cy: float | Tensor | None = None

    def __post_init__(self) -> None:
        if bool(torch.any(torch.as_tensor(self.size) <= 0)):
            raise InputError(f"Crop size must be positive, got {self.size!r}")

    def _fields(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return tuple(_as_tensor(v, like=like) for v in (self.x0, self.y0, self.size))  # type: ignore[return-value]

    def to_ndc(self, pixels: Tensor) -> Tensor:
        """Original-image pixels ``[..., 2]`` (leading dim N for per-frame crops) -> fitting NDC."""
        pixels = _as_tensor(pixels)
        x0, y0, size = self._fields(pixels)
        origin = torch.stack(torch.broadcast_tensors(x0, y0), dim=-1)
        if origin.ndim == 2:  # per-frame crop: [N, 2] -> broadcast over the point axis
            origin, size = origin[:, None, :], size[:, None, None]
        else:
            size = size[..., None] if size.ndim else size
        return (pixels - origin) / size * 2.0 - 1.0

    def from_ndc(self, ndc: Tensor) -> Tensor:
        """Fitting NDC ``[..., 2]`` -> original-image pixels."""
        ndc = _as_tensor(ndc)
        x0, y0, size = self._fields(ndc)
        origin = torch.stack(torch.broadcast_tensors(x0, y0), dim=-1)
        if origin.ndim == 2:
            origin, size = origin[:, None, :], size[:, None, None]
        else:
            size = size[..., None] if size.ndim else size
        return (ndc + 1.0) * 0.5 * size + origin

    def with_image_centre(self, image_size: tuple[int, int]) -> "Crop":
        """This crop with the principal point at the centre of a ``(W, H)`` image (a real camera)."""
        return Crop(self.x0, self.y0, self.size, cx=image_size[0] / 2.0, cy=image_size[1] / 2.0)

    def pp_ndc(self, like: Tensor) -> Tensor:
        """Principal point in this crop's NDC, ``[2]`` (``[N, 1, 2]`` for per-frame crops); zero when
        it is the crop centre."""
        if self.cx is None or self.cy is None:
            return like.new_zeros(2)
        x0, y0, size = self._fields(like)
        cx, cy = _as_tensor(self.cx, like=like), _as_tensor(self.cy, like=like)
        pp = torch.stack(torch.broadcast_tensors((cx - x0) / size * 2 - 1, (cy - y0) / size * 2 - 1), dim=-1)
        return pp[:, None, :] if pp.ndim == 2 else pp

    def to_camera_ndc(self, pixels: Tensor) -> Tensor:
        """Original pixels -> the NDC of the reference camera (principal point at 0): fitting targets."""
        pixels = _as_tensor(pixels)
        return self.to_ndc(pixels) - self.pp_ndc(pixels)

    def from_camera_ndc(self, ndc: Tensor) -> Tensor:
        """Inverse of :meth:`to_camera_ndc`: projected points (``project_ndc``) -> original pixels."""
        ndc = _as_tensor(ndc)
        return self.from_ndc(ndc + self.pp_ndc(ndc))

    @property
    def principal_point(self) -> tuple[Tensor, Tensor]:
        """``(cx, cy)`` in original pixels (the crop centre when not set)."""
        x0, y0, size = (torch.as_tensor(v, dtype=torch.float64) for v in (self.x0, self.y0, self.size))
        cx = x0 + size / 2 if self.cx is None else torch.as_tensor(self.cx, dtype=torch.float64)
        cy = y0 + size / 2 if self.cy is None else torch.as_tensor(self.cy, dtype=torch.float64)
        return cx, cy

    @classmethod
    def around(cls, points: Tensor, scale: float = 1.3) -> "Crop":
        """Square crop centred on the bounding box of ``points [P, 2]`` (pixels), side ``scale`` × its longer side."""
        points = _as_tensor(points)
        lo, hi = points.amin(dim=-2), points.amax(dim=-2)
        centre, side = (lo + hi) / 2, (hi - lo).amax(dim=-1) * scale
        return cls(centre[..., 0] - side / 2, centre[..., 1] - side / 2, side)


def intrinsics_pixels(fov: Tensor | float, crop: Crop) -> Tensor:
    """``K [..., 3, 3]`` in original pixels for a reference camera of ``fov`` degrees fitted in ``crop``."""
    fov = _as_tensor(fov)
    x0, y0, size = crop._fields(fov)
    f = fov_to_focal(fov, size)
    cx, cy = (c.to(f) for c in crop.principal_point)
    f, cx, cy = torch.broadcast_tensors(f, cx, cy)
    z, o = torch.zeros_like(f), torch.ones_like(f)
    return torch.stack([f, z, cx, z, f, cy, z, z, o], dim=-1).reshape(*f.shape, 3, 3)


def crop_fov(crop_size: float, image_size: tuple[int, int], image_fov: float) -> float:
    """FOV (degrees) over a fitting crop of side ``crop_size`` of a camera whose FOV over the longer
    side of an ``image_size`` ``(W, H)`` image is ``image_fov`` (the same focal length in pixels)."""
    focal = 0.5 * max(image_size) / math.tan(math.radians(image_fov) / 2)
    return math.degrees(2 * math.atan(float(crop_size) / (2 * focal)))


def fov_from_intrinsics(K: Tensor, crop: Crop) -> Tensor:
    """FOV (degrees) of the reference camera whose :func:`intrinsics_pixels` in ``crop`` is ``K``."""
    K = _as_tensor(K)
    _, _, size = crop._fields(K)
    return focal_to_fov(K[..., 0, 0], size)


def project_pixels(points: Tensor, pose6: Tensor, fov: Tensor | float, crop: Crop) -> Tensor:
    """Project model-space points ``[N, P, 3]`` to original-image pixels ``[N, P, 2]``."""
    return crop.from_camera_ndc(project_ndc(points, pose6, fov))


def pose6_to_opencv(pose6: Tensor) -> tuple[Tensor, Tensor]:
    """Reference ``pose6 [..., 6]`` -> OpenCV world-to-camera ``R [..., 3, 3]``, ``t [..., 3]``."""
    pose6 = _as_tensor(pose6)
    rot = rotvec_to_matrix(pose6[..., :3])
    flip = pose6.new_tensor(_FLIP)
    r_w2c = flip[:, None] * rot.transpose(-1, -2)  # D R^T
    t_w2c = -(r_w2c @ pose6[..., 3:, None])[..., 0]
    return r_w2c, t_w2c


def opencv_to_pose6(R: Tensor, t: Tensor) -> Tensor:
    """OpenCV world-to-camera ``R [..., 3, 3]``, ``t [..., 3]`` -> reference ``pose6``."""
    R, t = _as_tensor(R), _as_tensor(t)
    flip = R.new_tensor(_FLIP)
    rot = R.transpose(-1, -2) * flip  # R_c2w_gl = R_w2c^T D
    centre = -(R.transpose(-1, -2) @ t[..., None])[..., 0]
    return torch.cat([matrix_to_rotvec(rot), centre], dim=-1)


def to_opencv(pose6: Tensor, fov: Tensor | float, crop: Crop) -> tuple[Tensor, Tensor, Tensor]:
    """Reference camera -> OpenCV ``(K, R, t)``: ``K`` in original pixels, ``x_px ~ K (R X + t)``."""
    r_w2c, t_w2c = pose6_to_opencv(pose6)
    return intrinsics_pixels(_as_tensor(fov, like=r_w2c), crop), r_w2c, t_w2c


def to_opengl_c2w(pose6: Tensor) -> Tensor:
    """Reference ``pose6`` -> OpenGL/Blender camera-to-world ``[..., 4, 4]`` (it is ``[R(r) | t]``)."""
    pose6 = _as_tensor(pose6)
    out = torch.zeros(*pose6.shape[:-1], 4, 4, dtype=pose6.dtype, device=pose6.device)
    out[..., :3, :3] = rotvec_to_matrix(pose6[..., :3])
    out[..., :3, 3] = pose6[..., 3:]
    out[..., 3, 3] = 1.0
    return out


def opengl_c2w_to_pose6(c2w: Tensor) -> Tensor:
    """OpenGL/Blender camera-to-world ``[..., 4, 4]`` -> reference ``pose6``."""
    c2w = _as_tensor(c2w)
    return torch.cat([matrix_to_rotvec(c2w[..., :3, :3]), c2w[..., :3, 3]], dim=-1)


def to_head_centric(pose6: Tensor) -> tuple[Tensor, Tensor]:
    """Reference ``pose6`` -> head rotation (axis-angle) and translation in front of a fixed OpenGL camera.

    ``X_cam = R_head @ X + t_head`` with ``R_head = R^T``, ``t_head = -R^T t``.
    """
    pose6 = _as_tensor(pose6)
    rt = rotvec_to_matrix(pose6[..., :3]).transpose(-1, -2)
    return matrix_to_rotvec(rt), -(rt @ pose6[..., 3:, None])[..., 0]


def slerp(a: Rotation, b: Rotation, w: float | np.ndarray) -> Rotation:
    """Spherical interpolation: ``a`` turned by the fraction ``w`` of its rotation to ``b`` (scipy
    ``Rotation``; ``w`` scalar, or ``[n]`` for ``n`` rotations)."""
    return a * type(a).from_rotvec((a.inv() * b).as_rotvec() * np.asarray(w, float)[..., None])


def view_angle_deg(pose6: Tensor) -> Tensor:
    """``[N]`` angle in degrees between where the head faces (its model +z axis) and the direction from
    the head to the camera: 0 for a face looking into the lens, 90 for a profile (yaw and pitch
    together, off-centre faces included)."""
    r_head, t_head = to_head_centric(pose6)
    forward = rotvec_to_matrix(r_head)[..., :, 2]
    to_cam = -t_head / t_head.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.rad2deg(torch.arccos((forward * to_cam).sum(-1).clamp(-1.0, 1.0)))


def from_head_centric(head_rotvec: Tensor, head_transl: Tensor) -> Tensor:
    """Inverse of :func:`to_head_centric`."""
    head_rotvec, head_transl = _as_tensor(head_rotvec), _as_tensor(head_transl)
    rot = rotvec_to_matrix(head_rotvec).transpose(-1, -2)  # camera R = R_head^T
    return torch.cat([matrix_to_rotvec(rot), -(rot @ head_transl[..., None])[..., 0]], dim=-1)


__all__ = [
    "Crop", "crop_fov", "intrinsics_pixels", "fov_from_intrinsics", "project_pixels", "pose6_to_opencv",
    "opencv_to_pose6", "to_opencv", "to_opengl_c2w", "opengl_c2w_to_pose6", "to_head_centric",
    "from_head_centric", "slerp", "view_angle_deg",
]
