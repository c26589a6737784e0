"""Run the full pipeline on ground-truth cases and measure it (used by ``benchmarks/accuracy.py`` and
the accuracy regression test).

* :func:`evaluate_scene`: render a synthetic scene, fit it like a user would (MediaPipe included,
  nothing taken from the truth) and compare camera, shape, posed face, landmarks and expression.
* :func:`evaluate_annotated`: 68-point NME of the detector and of the fit against hand annotations.
* :func:`fit_neutral`: the fitted identity (neutral face) of a photo, for identity-consistency checks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from flame_tracker.camera.reference import matrix_to_euler
from flame_tracker.evaluation.metrics import (
    mesh_distance_mm,
    nme,
    nme_by_region,
    outer_interocular,
    rotation_error_deg,
)
from flame_tracker.evaluation.scenes import SceneSpec, SceneTruth, render_scene

_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


def head_euler_deg(r_model_to_cv: np.ndarray) -> np.ndarray:
    """Head (yaw, pitch, roll) in degrees relative to the camera from a model→OpenCV-camera rotation."""
    r_head = _GL_TO_CV @ r_model_to_cv
    return np.degrees(matrix_to_euler(torch.as_tensor(r_head)[None])[0].numpy())


def yaw_bucket(yaw_deg: float) -> str:
    a = abs(yaw_deg)
    return "0-30" if a < 30 else ("30-60" if a < 60 else "60+")


@dataclass
class SceneEval:
    """What was measured on one synthetic scene (``detected=False``: the other fields are NaN)."""

    index: int
    preset: str
    yaw_true: float
    fov_true: float
    face_px: float  # height of the true 68-point box in pixels
    detected: bool
    shape_mm: float = math.nan
    shape_mm_mean_face: float = math.nan  # the mean face (shape 0) against the truth: the bar to beat
    posed_mm: float = math.nan
    rot_deg: float = math.nan
    yaw_fit: float = math.nan
    nme_fit: float = math.nan  # fitted 68 vs true 68
    nme_det: float = math.nan  # detected 68 vs true 68 (what the detector alone gives)
    expr_mae: float = math.nan  # mean |w_fit - w_true| over all expression channels (bounded models)
    expr_max_neutral: float = math.nan  # largest fitted weight on a neutral face
    seconds: float = math.nan
    extra: dict = field(default_factory=dict)

    @property
    def bucket(self) -> str:
        return yaw_bucket(self.yaw_true)


def fitted_camera_vertices(result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(R, t, vertices_cam)`` of a fitted :class:`~flame_tracker.tracker.Result` (OpenCV camera)."""
    w2c = result.camera_matrices()["w2c_opencv"][0].astype(np.float64)
    R, t = w2c[:3, :3], w2c[:3, 3]
    return R, t, result.vertices.astype(np.float64) @ R.T + t


def neutral_vertices(model, shape: np.ndarray) -> np.ndarray:
    """Vertices ``[V, 3]`` of the identity ``shape`` with no expression or pose."""
    with torch.no_grad():
        s = torch.as_tensor(np.asarray(shape).reshape(1, -1), dtype=model.dtype, device=model.device)
        return model(shape=s).vertices[0].double().cpu().numpy()


def compare(model, result, truth: SceneTruth, mask: np.ndarray) -> dict[str, float]:
    """Metrics of a fitted ``result`` against ``truth`` (see :class:`SceneEval`)."""
    R, _, vcam = fitted_camera_vertices(result)
    # frontal-equivalent inter-ocular distance in pixels: stays meaningful on profiles
    iod3 = np.linalg.norm(truth.lmks68_3d[36] - truth.lmks68_3d[45])
    z = (truth.lmks68_3d @ truth.R.T + truth.t)[:, 2].mean()
    iod_px = truth.K[0, 0] * iod3 / z
    out = {
        "shape_mm": mesh_distance_mm(neutral_vertices(model, result.shape), truth.neutral, mask),
        "shape_mm_mean_face": mesh_distance_mm(neutral_vertices(model, np.zeros(model.n_shape)), truth.neutral, mask),
        "posed_mm": mesh_distance_mm(vcam, truth.vertices_cam, mask, similarity=True),
        "rot_deg": rotation_error_deg(R, truth.R),
        "yaw_fit": float(head_euler_deg(R)[0]),
        "nme_fit": float(nme(result.fit_lmks68_px, truth.lmks68_px, iod_px).mean()),
        "nme_det": float(nme(result.lmks68_px, truth.lmks68_px, iod_px).mean()),
    }
    if model.expr_bounds is not None:
        e_fit = np.asarray(result.exp).reshape(-1)
        e_true = truth.spec.expr
        out["expr_mae"] = float(np.abs(e_fit - e_true).mean())
        if not np.any(e_true):
            out["expr_max_neutral"] = float(e_fit.max())
    return out


def evaluate_scene(tracker, spec: SceneSpec, mask: np.ndarray, *, photometric: bool = False) -> SceneEval:
    """Render ``spec``, fit it with ``tracker`` (full pipeline) and compare with the truth."""
    from flame_tracker.detection import NoFaceError

    img, truth = render_scene(tracker.model, spec)
    ev = SceneEval(spec.index, spec.preset, float(spec.yaw), spec.fov_deg,
                   float(np.ptp(truth.lmks68_px[:, 1])), detected=False)
    t0 = time.perf_counter()
    try:
        result = tracker.fit_image(img)
    except NoFaceError:
        return ev
    if photometric:
        from flame_tracker.fitting.photometric import refine_result

        result, _ = refine_result(tracker.fit_model, result, img, output_model=tracker.model)
    ev.seconds = time.perf_counter() - t0
    ev.detected = True
    for k, v in compare(tracker.model, result, truth, mask).items():
        setattr(ev, k, v)
    return ev


def summarise(evals: list[SceneEval]) -> dict[str, dict[str, float]]:
    """Means over detected scenes: overall (``"all"``) and per yaw bucket, plus detection rate."""
    keys = ("shape_mm", "shape_mm_mean_face", "posed_mm", "rot_deg", "nme_fit", "nme_det", "expr_mae")
    groups: dict[str, list[SceneEval]] = {"all": evals}
    for b in ("0-30", "30-60", "60+"):
        groups[b] = [e for e in evals if e.bucket == b]
    out = {}
    for name, es in groups.items():
        det = [e for e in es if e.detected]
        row = {"n": float(len(es)), "detected": float(len(det))}
        for k in keys:
            vals = [getattr(e, k) for e in det if np.isfinite(getattr(e, k))]
            row[k] = float(np.mean(vals)) if vals else math.nan
        # yaw gain: least-squares slope of fitted on true yaw (1 = unbiased, > 1 overestimates)
        yt = np.array([e.yaw_true for e in det])
        yf = np.array([e.yaw_fit for e in det])
        row["yaw_gain"] = float((yt @ yf) / (yt @ yt)) if len(det) and (yt @ yt) > 0 else math.nan
        neutral = [e.expr_max_neutral for e in det if np.isfinite(e.expr_max_neutral)]
        row["neutral_max"] = float(np.max(neutral)) if neutral else math.nan
        out[name] = row
    return out


# -------------------------------------------------------------------------------------------------
# Real photos
# -------------------------------------------------------------------------------------------------


@dataclass
class AnnotatedEval:
    name: str
    det: dict[str, float]  # NME by region, detector vs annotation
    fit: dict[str, float]  # NME by region, fitted model landmarks (the model's own 68) vs annotation
    fit_det: dict[str, float]  # NME by region, the fitted head's points in the detector's convention


def annotated_photos(data: Path) -> list[tuple[Path, np.ndarray]]:
    """The shared photos with hand-annotated 68 points, as (image, 0-based pixel points)."""
    from flame_tracker.detection.layout import read_pts

    out = []
    for pts in sorted((data / "images" / "gt68").glob("*.pts")):
        img = next((p for p in pts.parent.glob(pts.stem + ".*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")),
                   None)
        if img is not None:
            # gt68/ stores 0-based pixel centres; read_pts assumes the source's 1-based ones
            out.append((img, read_pts(str(pts)) + 1.0))
    one = data / "images" / "300w_image_0010.pts"
    if one.exists():
        out.append((one.with_suffix(".png"), read_pts(str(one))))
    return out


def evaluate_annotated(tracker, image: Path, gt68: np.ndarray) -> AnnotatedEval:
    """NME (outer inter-ocular) of MediaPipe's 68 points, of the fitted model's own and of the fitted
    head's points in the detector's convention (``fit_lmks_68_detector_px``), per region."""
    result = tracker.fit_image(image)
    norm = outer_interocular(gt68)
    return AnnotatedEval(image.stem, nme_by_region(result.lmks68_px, gt68, norm),
                         nme_by_region(result.fit_lmks68_px, gt68, norm),
                         nme_by_region(result.matched_lmks68_px, gt68, norm))


def fit_neutral(tracker, image) -> np.ndarray:
    """Neutral-face vertices ``[V, 3]`` of the identity fitted to one photo (path or RGB array)."""
    result = tracker.fit_image(image)
    return neutral_vertices(tracker.model, result.shape)


__all__ = ["SceneEval", "AnnotatedEval", "evaluate_scene", "evaluate_annotated", "summarise", "compare",
           "fit_neutral", "neutral_vertices", "fitted_camera_vertices", "head_euler_deg", "yaw_bucket",
           "annotated_photos"]


# -------------------------------------------------------------------------------------------------
# Expressions on real clips (MediaPipe's ARKit scores as a semantic reference)
# -------------------------------------------------------------------------------------------------

# ICT channel -> MediaPipe score that MediaPipe gets right on talking heads (issue: expressions)
RELIABLE_CHANNELS = {
    "jawOpen": "jawOpen", "eyeBlink_L": "eyeBlinkLeft", "eyeBlink_R": "eyeBlinkRight",
    "mouthSmile_L": "mouthSmileLeft", "mouthSmile_R": "mouthSmileRight", "mouthPucker": "mouthPucker",
    "mouthFunnel": "mouthFunnel", "browInnerUp_L": "browInnerUp",
}


@dataclass
class ClipExpressions:
    """Per-frame single-image fits of a clip's frames and MediaPipe's scores for them."""

    name: str
    expr: np.ndarray  # [T, E] fitted weights
    scores: np.ndarray  # [T, 52] MediaPipe
    score_names: tuple[str, ...]
    reproj_px: np.ndarray  # [T]
    noisy_delta: np.ndarray  # [T] max |w(landmarks + 0.5 px noise) - w(landmarks)| per frame

    def correlations(self, expr_names: list[str]) -> dict[str, float]:
        """Pearson correlation over time of each reliable channel with MediaPipe's score (0 if flat)."""
        out = {}
        for ch, mp in RELIABLE_CHANNELS.items():
            if ch in expr_names and mp in self.score_names:
                a, b = self.expr[:, expr_names.index(ch)], self.scores[:, self.score_names.index(mp)]
                c = np.corrcoef(a, b)[0, 1] if a.std() > 1e-9 and b.std() > 1e-9 else 0.0
                out[ch] = float(c)
        return out

    def spurious(self, expr_names: list[str]) -> list[str]:
        """Channels with a fitted mean above 0.3 where MediaPipe's matching mean is below 0.1."""
        from flame_tracker.fitting.expressions import expr_from_blendshapes

        scores = expr_from_blendshapes(expr_names, self.score_names, self.scores)
        if scores is None:  # a model without named expressions: nothing to compare
            return []
        mp = scores.numpy()
        matched = [i for i in range(len(expr_names)) if np.any(mp[:, i] > 0)]
        return [expr_names[i] for i in matched if self.expr[:, i].mean() > 0.3 and mp[:, i].mean() < 0.1]


def clip_expressions(tracker, video: Path, *, every: int = 3, noise_px: float = 0.5, seed: int = 0
                     ) -> ClipExpressions:
    """Fit every ``every``-th frame of ``video`` as a single photo; refit each with ``noise_px``
    Gaussian noise on its landmarks to measure how well-conditioned the weights are."""
    from flame_tracker.video.decode import VideoReader

    rng = np.random.default_rng(seed)
    expr, scores, reproj, delta, names = [], [], [], [], ()
    for frame in VideoReader(video, every=every):
        det = tracker.landmarker.detect(frame.image)
        if det is None:
            continue
        size = (frame.image.shape[1], frame.image.shape[0])
        kw = dict(image_size=size, blendshapes=det.blendshapes, blendshape_names=det.blendshape_names)
        dense = det.points478.astype(np.float64)  # with MediaPipe's depth, as fit_image passes it
        r = tracker.fit_landmarks(det.lmks68, det.iris, dense_px=dense, **kw)
        moved = dense.copy()
        moved[:, :2] += rng.normal(0, noise_px, (len(dense), 2))
        noisy = tracker.fit_landmarks(det.lmks68 + rng.normal(0, noise_px, det.lmks68.shape), det.iris,
                                      dense_px=moved, **kw)
        expr.append(r.exp[0])
        scores.append(det.blendshapes)
        reproj.append(r.reprojection_error_px)
        delta.append(float(np.abs(noisy.exp[0] - r.exp[0]).max()))
        names = det.blendshape_names
    return ClipExpressions(video.stem, np.array(expr), np.array(scores), tuple(names), np.array(reproj),
                           np.array(delta))


def video_identity_halves(tracker, video: Path, *, every: int = 2, options=None, blendshapes: bool = True) -> float:
    """Identity stability of the video tracker: the neutral face fitted (``video.track.fit_identity``,
    as ``flame-tracker video`` does) from the first half of a clip against the one from the second
    half, face region, rigid alignment, mean mm. ``options``: the ``TrackOptions`` (default ones);
    ``blendshapes``: centre the expression prior on MediaPipe's scores."""
    from flame_tracker.evaluation.metrics import face_region_mask
    from flame_tracker.video.decode import VideoReader
    from flame_tracker.video.track import TrackOptions, track_landmarks

    lmks, iris, valid, times, scores, size = [], [], [], [], [], None
    for frame in VideoReader(video, every=every):
        det = tracker.landmarker.detect(frame.image)
        size = (frame.image.shape[1], frame.image.shape[0])
        valid.append(det is not None)
        lmks.append(det.lmks68 if det is not None else np.full((68, 2), np.nan))
        iris.append(det.iris if det is not None else np.full((10, 2), np.nan))
        scores.append(det.blendshapes if det is not None else np.zeros(52, np.float32))
        times.append(frame.time_s)
    from flame_tracker.detection.landmarker import BLENDSHAPE_NAMES

    names = BLENDSHAPE_NAMES
    half = len(valid) // 2
    model, mask, shapes = tracker.fit_model, face_region_mask(tracker.model), []
    for sl in (slice(0, half), slice(half, None)):
        fit = track_landmarks(model, np.array(lmks[sl]), np.array(valid[sl]), np.array(times[sl]),
                              iris_px=np.array(iris[sl]), options=options or TrackOptions(), image_size=size,
                              blendshapes=np.array(scores[sl]) if blendshapes else None,
                              blendshape_names=names)
        shapes.append(fit.identity.shape)
    a, b = (neutral_vertices(tracker.model, s) for s in shapes)
    return mesh_distance_mm(a, b, mask)
