"""Detections corrected for where the detector puts its points at the head's current view.

The detector's convention moves with the view (``flame_tracker.model.embedding``: the face outline
slides over the cheek, the far eye's corner moves by a centimetre), while a landmark path gives fixed
surface points. Rather than a different model per frame (frames of one batch have different yaws),
the fit keeps the static embedding in the model and moves each *detection* by the projected
difference between the view table's point at the head's current yaw and the static point::

    target' = target - (proj(P_view(yaw)) - proj(P_static))

so that fitting ``proj(P_static)`` to ``target'`` fits ``proj(P_view)`` to ``target``. The offsets are
re-evaluated from the current camera and parameters between solver stages (a fixed point: a few
degrees of yaw change the offsets by a fraction of a millimetre).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flame_tracker.camera import rotvec_to_matrix
from flame_tracker.camera.reference import project_ndc, world_to_view
from flame_tracker.model.embedding import (
    DENSE,
    IBUG68,
    ViewEmbedding,
    ViewPoints,
    view_yaw_deg,
)
from flame_tracker.model.head import HeadModel

# Dense point weights: 1 / (spread² + SPREAD_FLOOR_MM²), so the steadiest points do not take over.
SPREAD_FLOOR_MM = 1.5


class ViewCorrection:
    """Offsets (crop NDC) that move detections of ``points`` (:data:`~flame_tracker.model.embedding.IBUG68`
    or :data:`~flame_tracker.model.embedding.DENSE`) into the static embedding's convention."""

    def __init__(self, model: HeadModel, emb: ViewEmbedding, points: slice = IBUG68, *,
                 contour_only: bool = True) -> None:
        self.points = ViewPoints(model, emb, points)
        # Which points move with the view: the face outline only (a sliding contour, like FLAME's
        # dynamic one), or every point. Measured (docs/accuracy.md): moving every point made the
        # rotation worse (7.1° vs 5.9° mean on the 48 synthetic scenes), the outline alone did not.
        self.moving = None
        if contour_only:
            from flame_tracker.detection.layout import FACE_OVAL

            n = points.stop - points.start
            moving = torch.zeros(n, dtype=torch.bool)
            if points == IBUG68:
                moving[:17] = True
            else:
                moving[torch.as_tensor(FACE_OVAL)] = True
            self.moving = moving.to(model.v_template.device)

    @staticmethod
    def yaw(static: Tensor, pose6: Tensor) -> Tensor:
        """View yaw (degrees, ``[N]``) of heads whose static points are ``static [N, P, 3]`` seen by
        cameras ``pose6 [N, 6]`` (the head's centre: the points' mean)."""
        rot = rotvec_to_matrix(pose6[:, :3])  # camera-to-world
        rot_cv = rot.transpose(1, 2) * rot.new_tensor((1.0, -1.0, -1.0))[:, None]  # model -> OpenCV camera
        centre = world_to_view(static.mean(1, keepdim=True), pose6)[:, 0]
        return view_yaw_deg(rot_cv, centre)

    def __call__(self, params: dict[str, Tensor], pose6: Tensor, fov: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(offsets [N, P, 2], the points the detections mean, projected [N, P, 2], yaw [N])`` for heads with
        ``params`` (the landmark path's keywords) seen by ``pose6`` / ``fov``."""
        with torch.no_grad():
            static, _ = self.points(params, None)
            n = pose6.shape[0]
            static = static.expand(n, -1, -1)
            yaw = self.yaw(static, pose6)
            _, viewed = self.points(params, yaw)
            assert viewed is not None  # given a yaw, the view-table points come back
            viewed = viewed.expand(n, -1, -1)
            p_static = project_ndc(static, pose6, fov)
            p_view = project_ndc(viewed, pose6, fov)
        off = p_view - p_static
        if self.moving is not None:
            off = off * self.moving[:, None].to(off.dtype)
        return off, p_static + off, yaw


def dense_weights(emb: ViewEmbedding, w_face: float, w_contour: float) -> Tensor:
    """Per-point stage-2 weights ``[468]`` of MediaPipe's dense mesh: ``1 / (spread² + floor²)``,
    scaled so that the face outline's points sum to ``w_contour`` and the others to ``w_face`` (the
    68-point objective's totals: a mean over the inner points, another over the jawline)."""
    from flame_tracker.detection.layout import FACE_OVAL

    spread = torch.as_tensor(emb.spread_mm[DENSE], dtype=torch.float64)
    w = 1.0 / (spread**2 + SPREAD_FLOOR_MM**2)
    oval = torch.zeros_like(w, dtype=torch.bool)
    oval[torch.as_tensor(FACE_OVAL)] = True
    w = torch.where(oval, w / w[oval].sum() * w_contour, w / w[~oval].sum() * w_face)
    return w


__all__ = ["SPREAD_FLOOR_MM", "ViewCorrection", "dense_weights"]
