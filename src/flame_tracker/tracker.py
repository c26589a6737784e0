"""Single-image pipeline: detect landmarks → fit the camera (stage 1) → fit expression/shape (stage 2).

>>> from flame_tracker.tracker import Tracker
>>> with Tracker() as tracker:                     # open ICT model, CPU (CUDA when present)
...     result = tracker.fit_image("photo.jpg")
...     result.save("out/", stem="photo", image=tracker.last_image)

Everything a :class:`Result` exposes to users is in **original image pixels** (landmarks, ``K_px``,
OpenCV/OpenGL cameras); the reference's own keys keep the reference's meaning (see
:mod:`flame_tracker.io.results`). The fitting crop is square, unrotated and chosen from the detected
landmarks with the reference's FFHQ "tracking" framing (docs/reference.md §6.5, without the rotation).
"""

from __future__ import annotations

import copy
import os
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from flame_tracker.camera import (
    DEFAULT_FOV,
    REFERENCE_SIZE,
    Crop,
    build_intrinsics,
    crop_fov,
    fov_to_focal,
    intrinsics_pixels,
    pose6_to_cam,
    project_pixels,
    to_opencv,
    to_opengl_c2w,
    world_to_view,
)
from flame_tracker.defaults import IMAGE_FOV
from flame_tracker.errors import FlameTrackerError, InputError, NoFaceError, first_line
from flame_tracker.fitting.expressions import mediapipe_prior
from flame_tracker.fitting.stage1 import FovMode, Stage1Options, fit_camera
from flame_tracker.fitting.stage2 import Stage2Options, fit_stage2
from flame_tracker.io.results import REFERENCE_KEYS, save_image, save_json, save_npz
from flame_tracker.threads import cpu_threads

if TYPE_CHECKING:
    from flame_tracker.config import Config

# Single images: the reference objective + identity shape, with the jawline informing face width.
# The shape prior is 3x the video default: from one photo's 68 detected points the identity does
# not beat the mean face (synthetic truth, tuning seed: mean-face baseline 3.44 mm; fitted with
# w_shape 0.1 / 0.3 / 1.0: 3.82 / 3.60 / 3.47 mm, posed face 3.16 / 2.92 / 2.83 mm), but a strong
# prior holds the brows of real faces away from their annotations (68-point NME on the annotated
# photos 4.11 / 4.17 / 4.32 %, brows 4.7 / 5.6 / 6.9 %). 0.3 is the compromise.
# Stage 2 refines the head's rigid pose with the expression and shape (fit_rigid): on the accuracy
# benchmark (2026-12-04) single-photo identity 3.81 -> 3.57 mm (the mean face: 3.68), posed face
# 3.12 -> 3.04 mm, rotation 6.81 -> 6.50 deg, one person's photos fit more alike identities
# (identity_ratio 0.516 -> 0.443), landmark error on the clips 2.90 -> 2.76 px, in the last round
# only (all rounds: the same numbers at twice the extra time). Not for several photos of one person
# (fit_same_person): with one shared identity it made it worse (4 photos 2.60 -> 2.89 mm).
# Blendshape sparsity 4x the model's default (PHOTO_EXPR_SPARSITY, set by the Tracker when w_exp_l1 is
# left to the model and its expressions are bounded blendshapes): in one photo the expression
# competes with identity and pose for the same points, and small weights absorb what neither
# explains. Synthetic truth (2026-12-04; tuning seed / held-out seed): largest weight on a neutral
# face 0.209 / 0.292 -> 0.139 / 0.145, weight error 0.046 / 0.045 -> 0.034 / 0.034, posed face
# 3.04 / 2.97 -> 3.00 / 2.94 mm, identity 3.57 / 3.42 -> 3.61 / 3.49 mm; real clips: correlation
# with MediaPipe's scores 0.917 -> 0.876, landmark error 2.76 -> 2.95 px; one person's photos:
# identity_ratio 0.443 -> 0.497. Not in videos: there (shared identity, smoothing) it moved the
# flow-tracked profiles of four synthetic turns from 4.3 to 5.2 deg.
DEFAULT_STAGE2 = Stage2Options(w_contour=200.0, w_shape=0.3, fit_rigid=True)
PHOTO_EXPR_SPARSITY = 2.0
#: A saved overlay of a larger photo is drawn scaled down to this longer side (4K UHD stays whole).
OVERLAY_MAX_SIDE = 3840
# Reference framing (docs/reference.md §6.5): half-side = max(2·|eye-to-eye|, 1.8·|eye-to-mouth|) · 1.3.
CROP_SCALE = 1.3


def fitting_crop(lmks68: np.ndarray, scale: float = CROP_SCALE) -> Crop:
    """Square, unrotated fitting crop (original pixels) from 68 landmarks, framed like the reference."""
    lm = np.asarray(lmks68, dtype=np.float64)
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_l + eye_r) / 2, eye_r - eye_l
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    half = max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth)) * scale
    centre = eye_avg + 0.1 * eye_to_mouth
    if not np.isfinite(half) or half <= 0:
        raise InputError("cannot frame a fitting crop: the eye/mouth landmarks are degenerate")
    return Crop(float(centre[0] - half), float(centre[1] - half), float(2 * half))


@dataclass
class Result:
    """One fitted image. Arrays are numpy; parameters carry a leading frame dimension of 1.

    Units: rotations are axis-angle in radians, lengths in metres (model space), ``fov`` in degrees
    over the fitting ``crop``; ``*_px`` are pixels of the original picture (x right, y down, origin at
    the top-left corner of the top-left pixel). The camera (``pose6``: axis-angle + camera centre) is
    the reference tracker's; :meth:`camera_matrices` gives it as ``K_px``, OpenCV ``w2c_opencv`` and
    OpenGL ``c2w_opengl``. ``lmks68_px`` / ``iris_px`` are the detections, ``fit_lmks68_px`` /
    ``fit_iris_px`` the fitted model's points projected; ``vertices`` the fitted mesh and ``faces``
    its triangles. :meth:`save` writes everything (``.npz`` with the reference's keys), :meth:`overlay`
    draws it.
    """

    model_name: str
    image_size: tuple[int, int]  # (W, H)
    crop: tuple[float, float, float]  # fitting crop (x0, y0, side) in original pixels
    shape: np.ndarray  # [1, S]
    exp: np.ndarray  # [1, E]
    head_pose: np.ndarray  # [1, 3] (zero: the camera carries the rigid motion, as the reference)
    jaw_pose: np.ndarray  # [1, 3]
    neck_pose: np.ndarray  # [1, 3]
    eye_pose: np.ndarray  # [1, 6]
    pose6: np.ndarray  # [1, 6] reference camera: axis-angle + camera centre (model space, m)
    fov: np.ndarray  # [1] degrees (relative to the crop)
    lmks68_px: np.ndarray  # [68, 2] detected
    iris_px: np.ndarray  # [10, 2] detected (NaN when absent)
    fit_lmks68_px: np.ndarray  # [68, 2] fitted model landmarks projected
    fit_iris_px: np.ndarray  # [10, 2]
    vertices: np.ndarray  # [V, 3] fitted mesh, model space (metres)
    faces: np.ndarray  # [F, 3]
    objective: float  # final stage-2 objective
    stage1_objective: float
    blendshape_scores: np.ndarray  # [52] MediaPipe scores (empty when unavailable)
    blendshape_names: tuple[str, ...] = ()
    expr_names: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    iterations: dict[str, int] = field(default_factory=dict)
    source: str = ""
    # The camera's principal point (original pixels): the image centre; None = the crop centre (the
    # reference's convention, which puts the optical axis through the face).
    principal_point: tuple[float, float] | None = None
    # [68, 2] the fitted model's points in the detector's convention (the points the fit matched to
    # the detections; ``fit_lmks68_px`` are the model's own, semantic 68). None: the same as those.
    fit_target68_px: np.ndarray | None = None
    # the model file's fingerprint (model.embedding.fingerprint): tells two files of one name apart
    model_fingerprint: str = ""
    # the settings of the fit as `flame-tracker image` records them ({section: {key: value}}), written
    # to the summary JSON: photos fitted into one folder by runs with other settings say their own
    settings: dict[str, Any] | None = None

    # -------------------------------------------------------------------------------- derived
    @property
    def crop_obj(self) -> Crop:
        """The fitting crop (with the principal point) as a :class:`~flame_tracker.camera.Crop`."""
        pp = self.principal_point
        return Crop(*self.crop) if pp is None else Crop(*self.crop, cx=pp[0], cy=pp[1])

    @property
    def matched_lmks68_px(self) -> np.ndarray:
        """The fitted points the fit matched to the detections (``fit_target68_px``, or the model's
        own 68 when the fit used them): what residuals and overlays compare with the detections."""
        return self.fit_lmks68_px if self.fit_target68_px is None else self.fit_target68_px

    @property
    def residuals_px(self) -> np.ndarray:
        """Per-point distance detected ↔ fitted in original pixels: ``[78]`` = 68 landmarks + 10 iris
        (``[N, 78]`` for a Result of ``N`` frames)."""
        d68 = np.linalg.norm(self.matched_lmks68_px - self.lmks68_px, axis=-1)
        dir_ = np.linalg.norm(self.fit_iris_px - self.iris_px, axis=-1)
        return np.concatenate([d68, dir_], axis=-1).astype(np.float32)

    @property
    def reprojection_error_px(self) -> float:
        """Mean 68-point reprojection error in original pixels."""
        return float(np.nanmean(self.residuals_px[:68]))

    def camera_matrices(self) -> dict[str, np.ndarray]:
        """``K_px`` (original pixels), OpenCV ``w2c_opencv`` and OpenGL ``c2w_opengl`` 4×4 matrices."""
        pose6 = torch.as_tensor(self.pose6, dtype=torch.float64)
        fov = torch.as_tensor(self.fov, dtype=torch.float64)
        K, R, t = to_opencv(pose6, fov, self.crop_obj)
        w2c = torch.eye(4, dtype=torch.float64).repeat(pose6.shape[0], 1, 1)
        w2c[:, :3, :3], w2c[:, :3, 3] = R, t
        return {
            "K_px": K.numpy().astype(np.float32),
            "w2c_opencv": w2c.numpy().astype(np.float32),
            "c2w_opengl": to_opengl_c2w(pose6).numpy().astype(np.float32),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz content: the reference keys (reference meaning) plus pixel-space extras.

        A Result may also hold ``N`` frames at once (``pose6 [N, 6]``, landmarks ``[N, 68, 2]``, ...,
        as the video writer builds it): every per-frame key then has a leading dimension ``N``, so
        the whole video is converted in one vectorised call instead of one call per frame.
        """
        n = int(np.asarray(self.pose6).reshape(-1, 6).shape[0])
        crop = self.crop_obj
        to_ndc = lambda p: crop.to_ndc(torch.as_tensor(p, dtype=torch.float64)).numpy()  # noqa: E731
        pose6 = torch.as_tensor(self.pose6, dtype=torch.float64)
        focal = fov_to_focal(torch.as_tensor(self.fov, dtype=torch.float64), REFERENCE_SIZE)
        f32 = np.float32
        k256 = build_intrinsics(focal, REFERENCE_SIZE).reshape(n, 3, 3)
        # principal point of the 256² crop image (the reference has it at the centre, 128)
        k256[:, :2, 2] = (crop.pp_ndc(pose6).reshape(-1, 2) + 1.0) * (REFERENCE_SIZE / 2)
        out: dict[str, np.ndarray] = {
            "shape": self.shape.astype(f32),
            "exp": self.exp.astype(f32),
            "head_pose": self.head_pose.astype(f32),
            "jaw_pose": self.jaw_pose.astype(f32),
            "neck_pose": self.neck_pose.astype(f32),
            "eye_pose": self.eye_pose.astype(f32),
            "cam": pose6_to_cam(pose6).numpy().astype(f32),
            "fov": self.fov.astype(f32),
            "K": k256.numpy().astype(f32),
            "lmks_68": to_ndc(self.lmks68_px).reshape(n, 68, 2).astype(f32),
            "lmks_eyes": to_ndc(self.iris_px).reshape(n, 10, 2).astype(f32),
            "blendshape_scores": self.blendshape_scores.astype(f32).reshape(n, -1),
        }
        out.update({k: v for k, v in self.camera_matrices().items()})
        out.update(
            pose6=self.pose6.astype(f32),
            crop=np.asarray(self.crop, f32)[None],
            principal_point_px=np.broadcast_to(torch.stack(crop.principal_point, -1).numpy().astype(f32).reshape(-1, 2),
                                               (n, 2)).copy(),
            image_size=np.broadcast_to(np.asarray(self.image_size, np.int32).reshape(-1, 2), (n, 2)).copy(),
            lmks_68_px=self.lmks68_px.astype(f32).reshape(n, 68, 2),
            lmks_eyes_px=self.iris_px.astype(f32).reshape(n, 10, 2),
            fit_lmks_68_px=self.fit_lmks68_px.astype(f32).reshape(n, 68, 2),
            fit_lmks_eyes_px=self.fit_iris_px.astype(f32).reshape(n, 10, 2),
            fit_lmks_68=to_ndc(self.fit_lmks68_px).reshape(n, 68, 2).astype(f32),
            fit_lmks_68_detector_px=self.matched_lmks68_px.astype(f32).reshape(n, 68, 2),
            residuals_px=self.residuals_px.reshape(n, 78),
            objective=np.asarray(self.objective, f32).reshape(n),
            stage1_objective=np.asarray(self.stage1_objective, f32).reshape(n),
            blendshape_names=np.asarray(self.blendshape_names, dtype=np.str_),
            expr_names=np.asarray(self.expr_names, dtype=np.str_),
            model_name=np.asarray(self.model_name, dtype=np.str_),
            model_fingerprint=np.asarray(self.model_fingerprint, dtype=np.str_),
        )
        assert all(k in out for k in REFERENCE_KEYS)
        return out

    def vertices_px(self) -> np.ndarray:
        """Mesh vertices as ``[V, 3]``: x, y in original pixels, z the camera depth (metres)."""
        pose6 = torch.as_tensor(self.pose6, dtype=torch.float64)
        v = torch.as_tensor(self.vertices, dtype=torch.float64)[None]
        xy = project_pixels(v, pose6, torch.as_tensor(self.fov, dtype=torch.float64), self.crop_obj)[0]
        z = world_to_view(v, pose6)[0, :, 2:]
        return torch.cat([xy, z], -1).numpy()

    def overlay(self, image: np.ndarray | str | os.PathLike[str], max_side: int | None = None) -> np.ndarray:
        """Shaded mesh blended over ``image`` (the fitted picture: its pixels in any form
        :func:`~flame_tracker.io.images.load_image` takes, or its file) with detected/fitted landmarks;
        ``max_side``: a larger picture is drawn scaled down to this longer side (the overlay's cost and
        file grow with its pixels: 8000² took 7 s and 26 MB as PNG).
        :class:`~flame_tracker.io.images.ImageError` when it is not of the fitted picture's size."""
        return self._draw(self._picture(image), max_side)

    def _draw(self, image: np.ndarray, max_side: int | None) -> np.ndarray:
        """:meth:`overlay` of the fitted picture ``image`` (RGB uint8, checked by :meth:`_picture`)."""
        import cv2

        from flame_tracker.rendering.overlay import render_overlay

        h, w = image.shape[:2]
        s = np.ones(2)  # per axis: the rounded size (pixel corners scale with the picture: x' = s x)
        if max_side is not None and max(h, w) > max_side:
            size = (max(1, round(w * max_side / max(h, w))), max(1, round(h * max_side / max(h, w))))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            s = np.array([size[0] / w, size[1] / h])
        focal = float(intrinsics_pixels(torch.as_tensor(self.fov[0], dtype=torch.float64), self.crop_obj)[0, 0])
        verts = self.vertices_px()
        verts[:, :2] *= s
        return render_overlay(
            image,
            verts,
            self.faces,
            lmks_detected=self.lmks68_px * s,
            lmks_fitted=self.matched_lmks68_px * s,
            iris=self.fit_iris_px * s if np.isfinite(self.iris_px).all() else None,
            focal=focal * float(s[0]),
        )

    def _picture(self, image: np.ndarray | str | os.PathLike[str]) -> np.ndarray:
        """``image`` as RGB uint8, checked to be of the fitted picture's size."""
        from flame_tracker.io.images import ImageError, load_image

        rgb = load_image(image)
        if (rgb.shape[1], rgb.shape[0]) != tuple(self.image_size):
            w, h = self.image_size
            raise ImageError(f"the overlay's picture is {rgb.shape[1]}×{rgb.shape[0]}, the fitted one {w}×{h}: "
                             "give the picture this result was fitted to")
        return rgb

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (camera, errors, timings)."""
        res = self.residuals_px
        cams = self.camera_matrices()
        return {
            "source": self.source,
            "model": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "image_size": list(self.image_size),
            "crop_xywh": [self.crop[0], self.crop[1], self.crop[2], self.crop[2]],
            "fov_deg": float(self.fov[0]),
            "cam_yaw_pitch_roll_xyz": pose6_to_cam(torch.as_tensor(self.pose6, dtype=torch.float64))[0].tolist(),
            "K_px": cams["K_px"][0].tolist(),
            "reprojection_px": {
                "mean_68": float(np.nanmean(res[:68])),
                "median_68": float(np.nanmedian(res[:68])),
                "max_68": float(np.nanmax(res[:68])),
                "mean_iris": float(np.nanmean(res[68:])) if np.isfinite(res[68:]).any() else None,
            },
            "objective": self.objective,
            "stage1_objective": self.stage1_objective,
            "iterations": dict(self.iterations),
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            **({"settings": self.settings} if self.settings is not None else {}),
        }

    def save(
        self,
        out_dir: str | os.PathLike[str],
        stem: str,
        image: np.ndarray | str | os.PathLike[str] | None = None,
        *,
        mesh: bool = True,
        overlay: bool = True,
    ) -> dict[str, Path]:
        """Write ``<stem>.npz``, ``.obj``, ``.ply``, ``_overlay.png`` (needs ``image``: the fitted picture
        or its file, see :meth:`overlay`) and ``.json``.

        Every file is written atomically; returns the paths written.
        """
        from flame_tracker.io.mesh import save_obj, save_ply

        t0 = time.perf_counter()
        out = Path(out_dir)
        picture = self._picture(image) if overlay and image is not None else None  # checked before writing
        # Small tensor work only: one intra-op thread (on the busy shared CPU a 2-thread region
        # waiting for a descheduled thread turned 2 ms of projection into 40-90 ms, measured).
        with cpu_threads(1):
            paths = {"npz": save_npz(out / f"{stem}.npz", self.arrays())}
            if mesh:
                paths["obj"] = save_obj(out / f"{stem}.obj", self.vertices, self.faces)
                paths["ply"] = save_ply(out / f"{stem}.ply", self.vertices, self.faces)
            if picture is not None:
                paths["overlay"] = save_image(out / f"{stem}_overlay.png", self._draw(picture, OVERLAY_MAX_SIDE))
            # The JSON (a few kB) is written last so that it can list the files and this timing;
            # benchmarks/single_image.py times the whole call, JSON included.
            self.timings["write"] = time.perf_counter() - t0
            summary = self.summary()
        summary["files"] = {k: p.name for k, p in paths.items()}
        paths["json"] = save_json(out / f"{stem}.json", summary)
        return paths


def _face_tuple(det, rgb: np.ndarray) -> tuple:
    """A detection as the fitting input ``(lmks68, iris, (W, H), blendshapes, names, points478)``
    (MediaPipe's mesh with its relative depth: :mod:`flame_tracker.fitting.mesh_depth`)."""
    return (det.lmks68, det.iris, (rgb.shape[1], rgb.shape[0]), det.blendshapes, det.blendshape_names,
            det.points478)


@dataclass
class _FaceBatch:
    """The faces of one fit in their fitting crops (NDC) and the crops' FOVs."""

    lmk_ndc: torch.Tensor  # [N, 68, 2]
    iris_ndc: torch.Tensor  # [N, 10, 2] (NaN: none)
    dense_ndc: torch.Tensor | None  # [N, 468, 2] with landmarks="dense"
    crops: list[Crop]
    fov: torch.Tensor  # [N] degrees over each crop
    expr0: torch.Tensor | None  # [N, E] MediaPipe's scores on the model's channels (every face has them)


@dataclass
class _RoundsFit:
    """The last round's camera and stage-2 fit of a batch of faces."""

    pose6: torch.Tensor
    fov: torch.Tensor
    camera: Any  # the last stage-1 CameraFit
    stage2: Any  # the last Stage2Result
    params: dict[str, torch.Tensor]  # shape, expr, jaw_pose, eye_pose, neck_pose
    timings: dict[str, float]
    iterations: dict[str, int]


@dataclass(frozen=True)
class ImageOptions:
    """How a photo is fitted (the ``[image]`` section of the configuration tree): its camera, the
    points fitted, the rounds and which face. See :class:`Tracker` for each setting."""

    image_fov: float | None = IMAGE_FOV
    fov: float = DEFAULT_FOV
    principal_point: Literal["image", "crop"] = "image"
    fov_mode: FovMode = "fixed"
    rounds: int = 2
    init_from_blendshapes: bool = True
    expr_prior: Literal["zero", "blendshapes"] | None = None
    landmarks: Literal["68", "dense"] = "68"
    landmark_embedding: Literal["detector", "views", "model"] = "detector"
    face: str = "largest"
    mesh_depth: float = 0.5


class Tracker:
    """Fits a head model to single images. Reuse one tracker for many images (models load once).

    Args:
        model: a ``HeadModel``, a model file/folder path, or ``None`` for the open ICT model.
        device: torch device; ``None`` picks a given ``HeadModel``'s own device, else CUDA when
            available, else CPU. A ``HeadModel`` on another device is copied there, never moved.
        landmarker: path of MediaPipe's ``face_landmarker.task`` (``None``: default resolution).
        options: :class:`ImageOptions` (all of the settings below from ``fov`` to ``face``); keyword
            ``overrides`` of the same names replace single fields.
        fov: camera field of view in degrees (relative to the fitting crop; reference default 20°).
        fov_mode: ``"fixed"`` (default: one image cannot identify the FOV) or ``"per_frame"``.
        stage1: :class:`~flame_tracker.fitting.stage1.Stage1Options` (weights, ear gating, solver;
            the reference's by default).
        stage2: :class:`~flame_tracker.fitting.stage2.Stage2Options` (solver, loss, weights, shape);
            ``None``: :data:`DEFAULT_STAGE2` (its expression priors left at ``None`` are the
            model's: :func:`~flame_tracker.fitting.stage2.expression_priors`, except the
            sparsity of bounded blendshapes, :data:`PHOTO_EXPR_SPARSITY`).
        rounds: camera/expression alternations; the second round refits the camera with the fitted
            identity and expression (the reference has a regressed shape for its one round).
        init_from_blendshapes: start ICT expressions from MediaPipe's blendshape scores.
        principal_point: ``"image"`` (default): the camera's optical axis through the image centre,
            as in a real camera, wherever the face is; ``"crop"``: through the fitting crop's centre
            (the reference; an off-centre face then gets a head rotation off by its off-axis angle).
        image_fov: FOV in degrees over the image's longer side; when given, the crop FOV of each
            image follows from it (a small face in a wide shot has a crop FOV of a few degrees) and
            ``fov`` is ignored. ``None``: ``fov`` over the fitting crop (the reference).
        landmark_embedding: ``"detector"`` (default): fit the model points where the detector puts
            its landmarks on this model (``flame_tracker.model.embedding``, its static embedding;
            shipped for the ICT model, ``flame-tracker embed`` derives it for others); ``"views"``:
            the same with the face outline sliding with the head's yaw (the embedding's view table,
            ``flame_tracker.fitting.views``); ``"model"``: the model's own 68 (the reference).
            ``Result.fit_lmks68_px`` (and the meshes) are the model's own points; the residuals and
            the overlay use the detector-convention points (``fit_target68_px``), comparable with
            the detections.
        expr_prior: centre of the expression prior: ``"zero"`` (rest) or ``"blendshapes"``
            (MediaPipe's ARKit scores for the model's matching channels); ``None``: blendshapes
            for models with named (ARKit) expressions (ICT), zero otherwise.
        landmarks: ``"68"`` (default): stage 2 fits the 68 iBUG points (+ iris); ``"dense"``: MediaPipe's
            468 mesh points in stage 2's last round, weighted by how consistently the detector places
            each one (needs a detector embedding; stage 1 and the earlier rounds keep the 68). Outputs keep the 68
            iBUG points either way.
        face: which face of a picture with several to fit: ``largest`` (default), ``center``,
            ``left``, ``right``, ``index N`` (from the left) or ``near X,Y``
            (:class:`~flame_tracker.detection.search.FaceChoice`); small faces in wide shots are
            searched for over tiles (:class:`~flame_tracker.detection.search.FaceFinder`).
        mesh_depth: how far (0-1) each photo's head rotation is turned, after the fit, from the
            landmark fit's towards the rotation of MediaPipe's 3-D mesh (its relative depth, aligned to
            the fitted head's detector embedding), about the head's centre, full up to 45° of yaw and
            fading out at 60° (:mod:`flame_tracker.fitting.mesh_depth`). 0: off (the landmark fit, the
            reference); it also needs a detector embedding and the mesh's depth (``dense_px`` with 3
            columns: ``fit_image`` and ``fit_same_person`` pass it).
        verbose: let MediaPipe's native log lines through.
    """

    def __init__(
        self,
        model: Any = None,
        device: str | torch.device | None = None,
        *,
        landmarker: str | os.PathLike[str] | None = None,
        options: ImageOptions | None = None,
        stage1: Stage1Options | None = None,
        stage2: Stage2Options | None = None,
        verbose: bool = False,
        **overrides: Any,
    ) -> None:
        from flame_tracker.model import HeadModel, load_model

        known = {f.name for f in fields(ImageOptions)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InputError(f"Tracker: unknown setting(s) {', '.join(unknown)}; settings: {', '.join(sorted(known))}")
        opts = replace(options or ImageOptions(), **overrides)
        self.options = opts
        fov, fov_mode, rounds, principal_point = opts.fov, opts.fov_mode, opts.rounds, opts.principal_point
        image_fov, landmark_embedding, landmarks = opts.image_fov, opts.landmark_embedding, opts.landmarks
        init_from_blendshapes, expr_prior, face = opts.init_from_blendshapes, opts.expr_prior, opts.face
        if not 0.0 <= opts.mesh_depth <= 1.0:
            raise InputError(f"mesh_depth must be between 0 and 1, got {opts.mesh_depth}")
        self.mesh_depth = float(opts.mesh_depth)

        if not 1.0 <= float(fov) <= 150.0:  # (used with image_fov=None: the reference's crop FOV)
            raise InputError(f"fov must be in [1, 150] degrees, got {fov}")
        if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {str(device)!r}: this torch build or machine has no CUDA; use device='cpu' "
                             "(or None: CUDA when there is one)")
        if isinstance(model, HeadModel):
            # a given model keeps its device unless told otherwise, and is never moved under the
            # caller's feet (``Module.to`` works in place): another device gets a copy
            self.device = torch.device(device) if device is not None else model.device
            # compare resolved devices: "cuda" and "cuda:0" are the same card
            same = torch.empty(0, device=self.device).device == model.device
            self.model = model if same else copy.deepcopy(model).to(self.device)
        else:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model = load_model(model, device=self.device)
        self.model.eval()
        if landmark_embedding not in ("views", "detector", "model"):
            raise InputError(f"landmark_embedding must be 'views', 'detector' or 'model', got {landmark_embedding!r}")
        if landmarks not in ("68", "dense"):
            raise InputError(f"landmarks must be '68' or 'dense', got {landmarks!r}")
        from flame_tracker.fitting.views import ViewCorrection
        from flame_tracker.model.embedding import DENSE, detector_embedding, with_landmarks

        emb = None if landmark_embedding == "model" else detector_embedding(self.model)
        if emb is None and (landmarks == "dense" or landmark_embedding == "views"):
            what = "landmarks='dense'" if landmarks == "dense" else "landmark_embedding='views'"
            raise InputError(f"{what} needs a detector embedding of model {self.model.name!r}: "
                             "derive one with `flame-tracker embed --model ...`")
        self.landmark_embedding = landmark_embedding if emb is not None else "model"
        self.landmarks = landmarks
        # fit_model: the model with the detector's 68 (fitting); model: its own 68 (outputs)
        self.fit_model = self.model if emb is None else with_landmarks(self.model, emb)
        use_views = emb is not None and landmark_embedding == "views"
        self.views68 = ViewCorrection(self.model, emb) if emb is not None and use_views else None
        self.dense_model: HeadModel | None = None
        self.views_dense: ViewCorrection | None = None
        self._embedding = emb
        self._dense_weights: dict[tuple[float, float], torch.Tensor] = {}  # by (w_lmk, w_contour)
        if landmarks == "dense" and emb is not None:
            self.dense_model = with_landmarks(self.model, emb, DENSE)
            self.views_dense = ViewCorrection(self.model, emb, DENSE) if use_views else None
        if expr_prior is None:  # MediaPipe's ARKit scores name ICT's channels; FLAME's have no names
            expr_prior = "blendshapes" if self.model.expr_names else "zero"
        if expr_prior not in ("zero", "blendshapes"):
            raise InputError(f"expr_prior must be 'zero' or 'blendshapes', got {expr_prior!r}")
        self.expr_prior = expr_prior
        self.fov = float(fov)
        if fov_mode not in ("fixed", "per_frame", "shared"):
            raise InputError(f"fov_mode must be 'fixed', 'per_frame' or 'shared', got {fov_mode!r}")
        self.fov_mode: FovMode = fov_mode
        self.stage1 = stage1 or Stage1Options()
        stage2 = stage2 or DEFAULT_STAGE2
        if stage2.w_exp_l1 is None and self.model.expr_bounds is not None:  # photos: sparser (see above)
            stage2 = replace(stage2, w_exp_l1=PHOTO_EXPR_SPARSITY)
        self.stage2 = stage2
        if rounds < 1:
            raise InputError(f"rounds must be >= 1, got {rounds}")
        self.rounds = rounds
        self.init_from_blendshapes = init_from_blendshapes
        if principal_point not in ("image", "crop"):
            raise InputError(f"principal_point must be 'image' or 'crop', got {principal_point!r}")
        if image_fov is not None and not 1.0 <= image_fov <= 150.0:
            raise InputError(f"image_fov must be in [1, 150] degrees, got {image_fov}")
        self.principal_point = principal_point
        self.image_fov = image_fov
        from flame_tracker.detection.search import FaceChoice

        self._landmarker_path = landmarker
        self._landmarker = None
        self._finder = None
        self._scorer: Any = None  # detection.orientation.UprightScorer, created on first use
        self.face = FaceChoice.parse(face)
        self.verbose = verbose
        self._last = threading.local()
        self._latest: np.ndarray | None = None
        with torch.no_grad():
            self._faces = self.model.faces.cpu().numpy()

    @property
    def last_image(self) -> np.ndarray | None:
        """The picture (RGB uint8) of the last fit, for :meth:`Result.save`'s overlay: this thread's
        (a tracker shared by threads gives each its own), else the last of any thread."""
        return getattr(self._last, "image", self._latest)

    @last_image.setter
    def last_image(self, image: np.ndarray | None) -> None:
        self._last.image = self._latest = image

    @property
    def last_faces(self) -> int:
        """How many faces the last picture's search found (this thread's; 0 before any): a photo
        of several people fitted with the default ``face="largest"`` can say so."""
        return int(getattr(self._last, "faces", 0))

    def settings(self) -> Config:
        """The settings this tracker fits with, as a photo run records them (a
        :class:`~flame_tracker.config.Config`: the image options with the expression prior chosen for
        the model, stage 1 and stage 2)."""
        from flame_tracker.config import Config

        return Config(image=replace(self.options, expr_prior=self.expr_prior), stage1=self.stage1,
                      stage2=self.stage2)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_last")  # (thread-local: not picklable; a copy starts with the last picture only)
        state.update(_landmarker=None, _finder=None, _scorer=None)  # MediaPipe's handles: a copy opens its own
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._last = threading.local()

    # ------------------------------------------------------------------------- lifecycle
    @property
    def landmarker(self):
        """The MediaPipe landmarker (IMAGE mode), created on first use."""
        if self._landmarker is None:
            from flame_tracker.detection import FaceLandmarker

            self._landmarker = FaceLandmarker(self._landmarker_path, mode="image", max_faces=6,
                                              verbose=self.verbose)
        return self._landmarker

    @property
    def finder(self):
        """The face search (whole frame, then tiles; :class:`~flame_tracker.detection.search.FaceFinder`)
        on :attr:`landmarker`."""
        if self._finder is None:
            from flame_tracker.detection.search import FaceFinder

            self._finder = FaceFinder(landmarker=self.landmarker)
        return self._finder

    def _upright(self, rgb: np.ndarray, det: Any) -> float:
        """:class:`~flame_tracker.detection.orientation.UprightScorer`'s rating of ``det`` (created on
        first use)."""
        if self._scorer is None:
            from flame_tracker.detection.orientation import UprightScorer

            self._scorer = UprightScorer(self._landmarker_path, verbose=self.verbose)
        return float(self._scorer(rgb, det.lmks68))

    def close(self) -> None:
        """Release the landmarker."""
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None
        if self._finder is not None:  # its tile landmarker (the main one is closed below)
            self._finder.close()
            self._finder = None
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- fitting
    def fit_image(self, image: str | os.PathLike[str] | np.ndarray) -> Result:
        """Detect the (largest) face in ``image`` and fit the model.

        Raises ``FileNotFoundError``/``ImageError`` for unreadable input and
        :class:`~flame_tracker.detection.NoFaceError` when no face is found.
        """
        face, timings = self._detect(image, "the image")
        result = self.fit_landmarks(face[0], face[1], image_size=face[2], blendshapes=face[3],
                                    blendshape_names=face[4], dense_px=face[5])
        result.timings = {**timings, **result.timings}
        result.source = str(image) if isinstance(image, (str, os.PathLike)) else ""
        return result

    def fit_image_faces(self, image: str | os.PathLike[str] | np.ndarray) -> list[Result]:
        """Fit every face of ``image``, from left to right (one :class:`Result` each, fitted as one
        batch). Raises :class:`~flame_tracker.detection.NoFaceError` when there is none."""
        from flame_tracker.detection.search import FaceChoice

        dets, rgb, timings = self._find(image, "the image", exhaustive=True)
        faces = [_face_tuple(d, rgb) for d in FaceChoice("left").order(dets)]
        with cpu_threads(1, self.device):
            results = self._fit_faces(faces)
        for r in results:
            r.timings = {**timings, **r.timings}
            r.source = str(image) if isinstance(image, (str, os.PathLike)) else ""
        return results

    def _find(self, image, name: str, exhaustive: bool = False) -> tuple[list, np.ndarray, dict[str, float]]:
        """Load ``image`` (kept as ``last_image``) and find its faces (small ones included;
        ``exhaustive``: every face, also small ones beside a large one)."""
        from flame_tracker.io.images import load_image

        t0 = time.perf_counter()
        rgb = load_image(image)
        self.last_image = rgb
        t1 = time.perf_counter()
        dets = self.finder.find(rgb, exhaustive=exhaustive)
        self._last.faces = len(dets)
        # A picture stored upside down (no EXIF orientation): MediaPipe finds no face in some of the
        # shared photos turned over, and in the others draws an upright face across the turned one
        # (7 of 12); all are found once turned back. Its face detector tells a turned face
        # (detection.orientation): the largest face found is rated, and the picture searched again
        # turned over when there is none or it looks turned.
        from flame_tracker.detection.orientation import UPRIGHT_MARGIN
        from flame_tracker.detection.search import FaceChoice, turned_over

        largest = FaceChoice("largest").pick
        if not dets or self._upright(rgb, largest(dets)) < -UPRIGHT_MARGIN:
            back = np.ascontiguousarray(rgb[::-1, ::-1])
            found = self.finder.find(back, exhaustive=exhaustive)
            # (kept only when its largest face looks upright there: MediaPipe draws faces across
            # turned ones in either direction)
            if found and (not dets or self._upright(back, largest(found)) > UPRIGHT_MARGIN):
                dets = [turned_over(d) for d in found]
        if not dets:
            where = str(image) if isinstance(image, (str, os.PathLike)) else name
            raise NoFaceError(f"No face found in {where} (searched the whole picture and tiles down to faces of "
                              f"about {self.finder.min_face_px:.0f} px from eyes to chin, also turned over).")
        return dets, rgb, {"load": t1 - t0, "detect": time.perf_counter() - t1}

    def _detect(self, image, name: str) -> tuple[tuple, dict[str, float]]:
        """Load ``image`` (kept as ``last_image``) and detect the face :attr:`face` chooses:
        ``((lmks68, iris, (W, H), blendshapes, blendshape_names, points478), {"load": s, "detect": s})``.
        Raises ``NoFaceError`` naming the file (or ``name`` for an array)."""
        # choosing a person (not simply the largest face) needs every face, small ones included
        dets, rgb, timings = self._find(image, name, exhaustive=self.face.rule != "largest")
        det = self.face.pick(dets)
        if det is None:
            where = str(image) if isinstance(image, (str, os.PathLike)) else name
            raise NoFaceError(f"{where}: found {len(dets)} face(s), so there is no face {self.face} "
                              f"(faces are counted from 0, left to right)")
        return _face_tuple(det, rgb), timings

    def dense_weights(self, opts: Stage2Options) -> torch.Tensor:
        """Per-point weights ``[468]`` of the dense mesh for stage-2 options ``opts`` (their
        landmark and contour totals; computed when first asked, so a changed ``stage2`` counts)."""
        from flame_tracker.fitting.views import dense_weights

        key = (float(opts.w_lmk), float(opts.w_contour))
        if self._embedding is None:
            raise InputError("dense weights need a detector embedding (landmark_embedding='detector' or 'views')")
        if key not in self._dense_weights:
            self._dense_weights[key] = dense_weights(self._embedding, *key).to(self.device, self.model.dtype)
        return self._dense_weights[key]

    def fit_landmarks(
        self,
        lmks68_px: np.ndarray,
        iris_px: np.ndarray | None = None,
        *,
        image_size: tuple[int, int],
        blendshapes: np.ndarray | None = None,
        blendshape_names: tuple[str, ...] = (),
        dense_px: np.ndarray | None = None,
    ) -> Result:
        """Fit to given landmarks (original pixels): ``[68, 2]`` + optional ``[10, 2]`` iris (+ MediaPipe's
        ``[478, 2|3]`` or ``[468, 2|3]`` mesh points, needed with ``landmarks="dense"``; with its depth
        as a third column they also steer the head rotation, see ``mesh_depth``)."""
        with cpu_threads(1, self.device):
            return self._fit_faces([(lmks68_px, iris_px, image_size, blendshapes, blendshape_names, dense_px)])[0]

    def fit_same_person(self, images: list, errors: dict[int, Exception] | None = None) -> list[Result]:
        """Fit several photos of **one person** with one identity shape (fitted jointly from all
        of them); each photo keeps its own camera, expression, jaw and eyes. ``images``: paths or
        RGB arrays. Returns one :class:`Result` per image (all with the same ``shape``). Stage 2 runs
        without its rigid refinement here (``Stage2Options.fit_rigid`` is for independent photos).

        ``errors``: when given, a photo that cannot be read or has no face is left out (its index
        and exception are stored there) and the others are fitted; the result list then has one
        entry per photo fitted, in order.

        Raises :class:`~flame_tracker.detection.NoFaceError` naming the photo without a face (with
        ``errors``: only when no photo is usable).
        """
        from PIL import Image

        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)) or hasattr(images, "detach"):
            raise InputError("fit_same_person takes a list of photos (paths or arrays), got one "
                             f"{type(images).__name__}: pass [photo] or use fit_image")
        if not images:
            raise InputError("fit_same_person needs at least one image")
        detected, kept = [], []
        for i, img in enumerate(images):
            try:
                detected.append(self._detect(img, f"image {i}"))
                kept.append(img)
            except (FlameTrackerError, OSError) as exc:
                if errors is None:
                    raise
                errors[i] = exc
        if not detected:
            raise NoFaceError(f"none of the {len(images)} photos could be fitted: "
                              + "; ".join(first_line(e) for e in (errors or {}).values()))
        images = kept
        with cpu_threads(1, self.device):
            results = self._fit_faces([face for face, _ in detected], shared_shape=True)
        for r, img, (_, t) in zip(results, images, detected):
            r.source = str(img) if isinstance(img, (str, os.PathLike)) else ""
            r.timings = {**t, **r.timings}
        return results

    def _fit_faces(self, faces: list[tuple], shared_shape: bool = False) -> list[Result]:
        """Fit ``N`` faces ``(lmks68_px, iris_px, image_size, blendshapes, blendshape_names, dense_px)``
        as one batch: independent faces, or one identity shared by all (``shared_shape``)."""
        batch = self._face_batch(faces)
        fit = self._fit_rounds(batch, shared_shape)
        if self.mesh_depth > 0 and self._embedding is not None:  # each photo's camera; the shape stays
            fit = self._turn_to_mesh(faces, fit)
        return self._results(faces, batch, fit)

    def _turn_to_mesh(self, faces: list[tuple], fit: _RoundsFit) -> _RoundsFit:
        """Each camera turned part of the way to the rotation of MediaPipe's 3-D mesh, about the
        head's centre (:mod:`~flame_tracker.fitting.mesh_depth`). The expression, jaw and eyes stay
        the landmark fit's: refitting them to the turned camera made them follow MediaPipe's 2-D
        errors (median correlation with its scores on the shared clips 0.88 -> 0.84)."""
        from flame_tracker.fitting.mesh_depth import blend_with_mesh, mesh_with_depth
        from flame_tracker.model.embedding import DENSE, with_landmarks

        meshes = [mesh_with_depth(f[5]) for f in faces]
        if all(m is None for m in meshes):
            return fit
        t = time.perf_counter()
        if self.dense_model is None:  # where MediaPipe puts its 468 points on this model
            assert self._embedding is not None
            self.dense_model = with_landmarks(self.model, self._embedding, DENSE)
        with torch.no_grad():
            dense = self.dense_model.landmarks(**fit.params).landmarks.double().cpu().numpy()
            centres = self.fit_model.landmarks(**fit.params).landmarks.double().mean(1).cpu().numpy()
        pose6, _ = blend_with_mesh(fit.pose6, dense, meshes, centres, weight=self.mesh_depth)
        return replace(fit, pose6=pose6, timings=dict(fit.timings, mesh_depth=time.perf_counter() - t))

    def _face_batch(self, faces: list[tuple]) -> _FaceBatch:
        """The faces' detections checked and moved into their fitting crops' NDC, with each crop's
        FOV and the blendshape-mapped expressions (when every face has scores)."""
        model, dev, dt = self.model, self.device, self.model.dtype
        lmks, irises, dense, crops, fovs, e0s = [], [], [], [], [], []
        for lmks68_px, iris_px, image_size, blendshapes, blendshape_names, dense_px in faces:
            lmks68_px = np.asarray(lmks68_px, dtype=np.float64)
            if lmks68_px.shape != (68, 2):
                raise InputError(f"expected [68, 2] landmarks, got {lmks68_px.shape}")
            iris_px = np.full((10, 2), np.nan) if iris_px is None else np.asarray(iris_px, dtype=np.float64)
            if iris_px.shape != (10, 2):
                raise InputError(f"expected [10, 2] iris points, got {iris_px.shape}")
            crop = self.camera_crop(lmks68_px, image_size)
            lmks.append(crop.to_camera_ndc(torch.as_tensor(lmks68_px)))
            irises.append(crop.to_camera_ndc(torch.as_tensor(iris_px)))
            if self.landmarks == "dense":
                if dense_px is None or np.shape(dense_px)[0] not in (468, 478):
                    raise InputError("landmarks='dense' needs MediaPipe's [478, 2] mesh points (dense_px)")
                dense.append(crop.to_camera_ndc(torch.as_tensor(np.asarray(dense_px, np.float64)[:468, :2])))
            crops.append(crop)
            fovs.append(self.crop_fov(crop, image_size))
            e0 = None
            if blendshapes is not None and len(blendshapes):
                e0 = mediapipe_prior(model.expr_names, blendshape_names, blendshapes)
            e0s.append(e0)
        given = [e for e in e0s if e is not None]
        expr0 = torch.stack(given).to(dev, dt) if len(given) == len(e0s) else None
        return _FaceBatch(torch.stack(lmks).to(dev, dt), torch.stack(irises).to(dev, dt),
                          torch.stack(dense).to(dev, dt) if dense else None, crops,
                          torch.tensor(fovs, dtype=dt, device=dev), expr0)

    def _fit_rounds(self, batch: _FaceBatch, shared_shape: bool) -> _RoundsFit:
        """Alternate stage 1 (camera) and stage 2 (shape, expression, jaw, eyes) ``rounds`` times,
        each starting from the last; with a view table the detections are moved into the static
        embedding's convention at the current view."""
        # fm: the model with the detector's landmark embedding (fitting); model: its own (outputs)
        fm, n = self.fit_model, len(batch.crops)
        lmk_ndc, iris_ndc, dense_ndc = batch.lmk_ndc, batch.iris_ndc, batch.dense_ndc
        init: dict[str, torch.Tensor] = {}
        expr_mean = None
        if batch.expr0 is not None:
            if self.init_from_blendshapes:
                init["expr"] = batch.expr0
            if self.expr_prior == "blendshapes":
                expr_mean = batch.expr0
        # one identity for several photos: without the rigid refinement (see DEFAULT_STAGE2)
        opts = replace(self.stage2, shared_shape=True, fit_rigid=False) if shared_shape else self.stage2
        timings = {"stage1": 0.0, "stage2": 0.0}
        iters = {"stage1": 0, "stage2": 0}
        pose6 = None
        fov = batch.fov

        def corrected(targets: torch.Tensor, views) -> torch.Tensor:
            """Detections moved into the static embedding's convention at the current view."""
            if views is None or pose6 is None:
                return targets
            return targets - views(init, pose6, fov)[0]

        for rnd in range(self.rounds):
            t = time.perf_counter()
            with torch.no_grad():
                pts = fm.landmarks(**init).landmarks.expand(n, -1, -1)
            # with a view table, the first camera (no view known yet) is refitted once at its view
            for _pass in range(2 if self.views68 is not None and pose6 is None else 1):
                cam = fit_camera(pts, corrected(lmk_ndc, self.views68), fov=fov, fov_mode=self.fov_mode,
                                 options=self.stage1, init=pose6)
                pose6 = cam.pose6.to(self.device, self.model.dtype)
                fov = cam.fov.to(self.device, self.model.dtype)
                iters["stage1"] += cam.iterations
            assert pose6 is not None  # the camera was fitted
            timings["stage1"] += time.perf_counter() - t
            t = time.perf_counter()
            # dense points in the last round only: the rounds before are warm starts, and 68 points
            # give them at less than half the cost
            # the rigid refinement in the last round only: the first round's camera is refitted by
            # stage 1 anyway (measured: the same accuracy at ~half the extra cost)
            ropts = opts if rnd == self.rounds - 1 or not opts.fit_rigid else replace(opts, fit_rigid=False)
            if dense_ndc is None or self.dense_model is None or rnd < self.rounds - 1:
                s2 = fit_stage2(fm, corrected(lmk_ndc, self.views68), pose6, fov, iris_ndc=iris_ndc, init=init,
                                options=ropts, expr_prior_mean=expr_mean)
            else:
                s2 = fit_stage2(self.dense_model, corrected(dense_ndc, self.views_dense), pose6, fov,
                                iris_ndc=iris_ndc, init=init, options=ropts, expr_prior_mean=expr_mean,
                                point_weights=self.dense_weights(ropts))
            if s2.pose6 is not None:  # the rigid pose refined with the expression (fit_rigid)
                pose6 = s2.pose6
            timings["stage2"] += time.perf_counter() - t
            iters["stage2"] += s2.iterations
            init = dict(shape=s2.shape, expr=s2.expr, jaw_pose=s2.jaw_pose, eye_pose=s2.eye_pose,
                        neck_pose=s2.neck_pose)
        assert pose6 is not None  # rounds >= 1
        return _RoundsFit(pose6, fov, cam, s2, init, timings, iters)

    def _results(self, faces: list[tuple], batch: _FaceBatch, fit: _RoundsFit) -> list[Result]:
        """One :class:`Result` per face: parameters, the mesh, and the fitted points in pixels."""
        model, fm = self.model, self.fit_model
        init, pose6, fov, s2, cam = fit.params, fit.pose6, fit.fov, fit.stage2, fit.camera
        timings, iters, crops = fit.timings, fit.iterations, batch.crops
        with torch.no_grad():
            out = model(**init)
            pts = torch.cat([out.landmarks, out.iris if out.iris is not None else out.landmarks[:, :10] * np.nan], 1)
            det_pts = fm.landmarks(**init).landmarks if fm is not model else None
            # the points the detections were matched to: at each head's view, with a view table
            viewed = None if self.views68 is None else self.views68(init, pose6, fov)[1]
        np_ = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
        from flame_tracker.model.embedding import fingerprint

        model_fp = fingerprint(model)
        results = []
        for k, (crop, face) in enumerate(zip(crops, faces)):
            lmks68_px, iris_px, image_size, blendshapes, blendshape_names, _ = face
            p6, fv = pose6[k : k + 1].double().cpu(), fov[k : k + 1].double().cpu()
            px = project_pixels(pts[k : k + 1].double().cpu(), p6, fv, crop)[0].numpy()
            if viewed is not None:
                target68 = crop.from_camera_ndc(viewed[k].double().cpu()).numpy()
            elif det_pts is not None:
                target68 = project_pixels(det_pts[k : k + 1].double().cpu(), p6, fv, crop)[0].numpy()
            else:
                target68 = None
            results.append(Result(
                model_name=str(model.name), model_fingerprint=model_fp,
                image_size=(int(image_size[0]), int(image_size[1])),
                crop=(float(crop.x0), float(crop.y0), float(crop.size)),
                shape=np_(s2.shape[k : k + 1]),
                exp=np_(s2.expr[k : k + 1]),
                head_pose=np.zeros((1, 3)),
                jaw_pose=np_(s2.jaw_pose[k : k + 1]),
                neck_pose=np_(s2.neck_pose[k : k + 1]),
                eye_pose=np_(s2.eye_pose[k : k + 1]),
                pose6=np_(pose6[k : k + 1]),
                fov=np_(fov[k : k + 1]),
                lmks68_px=np.asarray(lmks68_px, dtype=np.float64),
                iris_px=np.full((10, 2), np.nan) if iris_px is None else np.asarray(iris_px, dtype=np.float64),
                fit_lmks68_px=px[:68],
                fit_iris_px=px[68:],
                vertices=out.vertices[k].detach().float().cpu().numpy(),
                faces=self._faces.copy(),  # (the caller's own: an edit must not reach later fits)
                objective=float(s2.objective[k]),
                stage1_objective=float(cam.per_frame[k]),
                blendshape_scores=(np.zeros(0, np.float32) if blendshapes is None
                                   else np.asarray(blendshapes, np.float32)),
                blendshape_names=tuple(blendshape_names),
                expr_names=tuple(model.expr_names or ()),
                timings=dict(timings),
                iterations=dict(iters),
                principal_point=None if crop.cx is None or crop.cy is None else (float(crop.cx), float(crop.cy)),
                fit_target68_px=target68,
            ))
        return results

    def camera_crop(self, lmks68_px: np.ndarray, image_size: tuple[int, int]) -> Crop:
        """The fitting crop of a face, with the principal point this tracker assumes."""
        crop = fitting_crop(lmks68_px)
        return crop if self.principal_point == "crop" else crop.with_image_centre(image_size)

    def crop_fov(self, crop: Crop, image_size: tuple[int, int]) -> float:
        """FOV (degrees) over the fitting ``crop``: ``fov``, or the one ``image_fov`` implies."""
        if self.image_fov is None:
            return self.fov
        return crop_fov(float(crop.size), image_size, self.image_fov)
