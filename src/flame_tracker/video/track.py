"""Fit a head model to a landmark sequence: one identity, per-frame fits, whole-sequence smoothing.

This is the video tracker without the video: it takes per-frame 2-D landmarks (from MediaPipe, or
synthetic ones in tests) and returns smooth per-frame parameters. :mod:`.pipeline` adds decoding,
detection and output files.

Steps:

1. **Fitting crop.** One square crop for the whole video (around the median face box), so every
   frame's camera lives in the same coordinates (the reference re-crops every frame, which turns crop
   jitter into camera jitter, docs/reference.md W14).
2. **Identity.** A quick rigid fit of all frames with the mean shape gives each frame's head pose;
   keyframes are chosen by farthest-point sampling of (yaw, pitch, mouth opening), so they span the
   pose range; one shape (and one FOV when estimated) is fitted jointly on them, alternating stage 1
   (shared FOV) and stage 2 (shared shape).
3. **Per-frame fits** in chunks of consecutive frames, in order: stage 1 then stage 2, each chunk
   warm-started from the last frame of the previous one, batched over the chunk.
4. **Smoothing** of pose and expression over the whole sequence at once
   (:func:`~flame_tracker.video.temporal.smooth_sequence`): no batch seams (W15), frames without a
   face bridged at their true temporal distance.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

import numpy as np
import torch

from flame_tracker.camera import Crop, crop_fov, matrix_to_rotvec, project_ndc, rotvec_to_euler, rotvec_to_matrix
from flame_tracker.defaults import EXPR_CUTOFF_HZ, IMAGE_FOV, POSE_CUTOFF_HZ
from flame_tracker.errors import NoFaceError
from flame_tracker.fitting.stage1 import Stage1Options
from flame_tracker.fitting.stage2 import Stage2Options
from flame_tracker.video.store import FrameArrays, unmap_pages
from flame_tracker.video.temporal import JitterMetrics, jitter_metrics, motion_scale, smooth_sequence

# fills frames without landmarks: (identity, raw fits, valid, shot cuts) -> (raw fits, flow [T], inliers [T])
GapFiller = Callable[["Identity", dict[str, np.ndarray], np.ndarray, np.ndarray],
                     tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]


# the video's "no face in any frame": the package's one no-face error (this name is kept for callers)
NoFacesError = NoFaceError


VIDEO_STAGE1 = Stage1Options(max_iter=20)
VIDEO_STAGE2 = Stage2Options(max_iter=6)


@dataclass(frozen=True)
class TrackOptions:
    """Settings of the sequence fit (everything that changes the result; stored in the manifest)."""

    fov: float = 20.0  # degrees in the fitting crop (used when image_fov is None); start value when estimated
    # FOV over the frame's longer side (the crop FOV follows from it) and the camera's principal
    # point at the frame centre, as in single images (flame_tracker.tracker.Tracker); None: the
    # reference's crop-relative `fov` with the principal point at the crop centre.
    image_fov: float | None = IMAGE_FOV
    estimate_fov: bool = False  # one FOV for the whole video, fitted on the keyframes
    n_keyframes: int = 6
    chunk: int = 32  # frames per batched per-frame solve (checkpoint granularity too)
    fit_iris: bool = True
    pose_cutoff_hz: float = POSE_CUTOFF_HZ  # smoothing of the rigid pose
    # ... relaxed where the head turns fast (temporal.motion_scale: the penalty falls off past this
    # angular acceleration, degrees/s²), so quick turns are followed instead of cut short; inf: a
    # fixed low-pass. Measured on the shared clips (docs/usage.md): talking_ex1's landmark error
    # 5.39 -> 4.13 px (95th percentile 11.9 -> 6.2 px), talking_wojtek's jitter 0.104 -> 0.112.
    pose_follow_deg_s2: float = 250.0
    expr_cutoff_hz: float = EXPR_CUTOFF_HZ  # smoothing of expression, jaw and eyes (speech is fast)
    max_gap_s: float = 0.5  # longer runs without a face are not bridged
    flow: bool = True  # follow the head by optical flow through frames without landmarks (video.flow)
    crop_scale: float = 1.6  # fitting crop side / median face-box side
    frame_temporal: bool = True  # reference temporal term between adjacent frames of a chunk
    identity_rounds: int = 2
    identity_iters: int = 10  # stage-2 iterations of the (one-off) shared-shape fit
    # "68": stage 2 fits the 68 iBUG points (+ iris), the reference's objective; "dense": the per-frame
    # stage 2 fits MediaPipe's 468 mesh points where the model's detector embedding puts them, weighted
    # by their spread. Stage 1, the identity and the reprojection error keep the 68: the identity's
    # last round on the dense points turned 4 synthetic head turns' landmark frames 0.04-1.4° further
    # from the truth (docs/accuracy.md).
    landmarks: Literal["68", "dense"] = "68"
    # The fits of every frame (and of the identity's keyframes): the reference's stage 1 and the
    # stage-2 objective without the jawline term, with per-frame iteration caps (warm starts converge
    # in a few steps). Expression priors left at None are the model's (fitting.stage2.expression_priors).
    stage1: Stage1Options = VIDEO_STAGE1
    stage2: Stage2Options = VIDEO_STAGE2


@dataclass(frozen=True)
class DenseTargets:
    """MediaPipe's 468 mesh points as stage-2 targets (``TrackOptions.landmarks="dense"``): the model
    whose landmark path gives them (the detector embedding), their weights and the detections."""

    model: Any  # HeadModel with the fitted points of the 468 embedded ones as its landmarks
    weights: torch.Tensor  # [K] their weights
    px: np.ndarray  # [T, 468|478, 2] original pixels (NaN where not detected)
    crop: Crop
    keep: np.ndarray  # [K] the fitted points (of the 468)

    @classmethod
    def build(cls, model: Any, dense_px: np.ndarray, crop: Crop, stage2: Stage2Options) -> DenseTargets:
        """From the detections ``dense_px [T, 468|478, 2]`` (original pixels) and ``model``'s
        detector embedding; :class:`InputError` when the model has none. Points whose weight is 0
        (the face outline when ``stage2.w_contour`` is 0, as in the video's default) are left out of
        the solve instead of costing rows of its Jacobian."""
        from flame_tracker.errors import InputError
        from flame_tracker.fitting.views import dense_weights
        from flame_tracker.model.embedding import DENSE, detector_embedding, with_landmarks

        emb = detector_embedding(model)
        if emb is None:
            raise InputError(f"landmarks='dense' needs a detector embedding of model {getattr(model, 'name', '')!r}: "
                             "run `flame-tracker embed --model ...` once, or use landmarks='68'")
        weights = dense_weights(emb, stage2.w_lmk, stage2.w_contour)
        keep = np.flatnonzero(weights.numpy() > 0)
        if not len(keep):
            raise InputError("landmarks='dense' with every point weighted 0 (w_lmk and w_contour): nothing to fit")
        points = np.arange(DENSE.stop)[DENSE][keep]
        return cls(with_landmarks(model, emb, points),
                   weights[keep].to(model.v_template.device, model.v_template.dtype), dense_px, crop, keep)

    def ndc(self, rows: np.ndarray) -> torch.Tensor:
        """``[n, K, 2]`` targets of ``rows`` in the video crop's camera NDC (0 where not detected)."""
        pts = np.nan_to_num(np.asarray(self.px[rows])[:, self.keep, :2])
        return self.crop.to_camera_ndc(torch.as_tensor(pts, dtype=self.weights.dtype))


class FrameTargets:
    """A sequence's detections as fitting targets in the video crop's camera NDC, converted for the
    rows asked (whole-video tensors would be ~1.5 KB per frame, 160 MB for an hour at 30 fps)."""

    def __init__(self, model: Any, lmks_px: np.ndarray, iris_px: np.ndarray | None, crop: Crop,
                 blendshapes: np.ndarray | None = None, blendshape_names: tuple[str, ...] = ()) -> None:
        self.lmks_px, self.iris_px, self.crop = lmks_px, iris_px, crop
        self.dtype = model.v_template.dtype
        self.expr_names = getattr(model, "expr_names", None) or None
        self.blendshapes = blendshapes if self.expr_names else None
        self.blendshape_names = blendshape_names

    def release(self) -> None:
        """Hand back the pages of detections kept in files (:func:`~.store.unmap_pages`)."""
        unmap_pages(self.lmks_px, self.iris_px, self.blendshapes)

    def lmks(self, rows: np.ndarray) -> torch.Tensor:
        """``[n, 68, 2]`` landmarks of ``rows`` (0 where not detected)."""
        return self.crop.to_camera_ndc(torch.as_tensor(np.nan_to_num(self.lmks_px[rows]), dtype=self.dtype))

    def iris(self, rows: np.ndarray) -> torch.Tensor | None:
        """``[n, 10, 2]`` iris points of ``rows`` (NaN where not detected), ``None`` without them."""
        if self.iris_px is None:
            return None
        return self.crop.to_camera_ndc(torch.as_tensor(self.iris_px[rows], dtype=self.dtype))

    def expr_mean(self, rows: np.ndarray) -> torch.Tensor | None:
        """``[n, E]`` centre of the expression prior (MediaPipe's scores, :func:`mediapipe_prior`) at
        ``rows``; ``None`` without scores or named expressions."""
        if self.blendshapes is None:
            return None
        from flame_tracker.fitting.expressions import mediapipe_prior

        out = mediapipe_prior(self.expr_names, self.blendshape_names, np.asarray(self.blendshapes[rows]))
        return None if out is None else out.to(self.dtype)


@dataclass
class Identity:
    """The per-video constants: shape, FOV and the fitting crop."""

    shape: np.ndarray  # [S]
    fov: float
    crop: tuple[float, float, float]  # x0, y0, size in original pixels
    keyframes: np.ndarray  # indices (into the sequence) used to fit the identity
    pp: tuple[float, float] | None = None  # principal point (original pixels); None: the crop centre

    @property
    def camera_crop(self) -> Crop:
        """The fitting crop with the camera's principal point."""
        return Crop(*self.crop) if self.pp is None else Crop(*self.crop, cx=self.pp[0], cy=self.pp[1])

    def as_arrays(self) -> dict[str, np.ndarray]:
        out = {"shape": self.shape, "fov": np.float64(self.fov), "crop": np.array(self.crop),
               "keyframes": self.keyframes}
        if self.pp is not None:
            out["pp"] = np.array(self.pp)
        return out

    @classmethod
    def from_arrays(cls, d: dict[str, np.ndarray]) -> "Identity":
        pp = tuple(float(v) for v in d["pp"]) if "pp" in d else None
        return cls(d["shape"], float(d["fov"]), tuple(float(v) for v in d["crop"]),
                   d["keyframes"], pp)


@dataclass
class SequenceFit:
    """Per-frame parameters over a sequence of ``T`` frames (NaN where ``covered`` is False)."""

    identity: Identity
    valid: np.ndarray  # [T] a face was detected
    covered: np.ndarray  # [T] valid or bridged: parameters exist
    pose6: np.ndarray  # [T, 6] smoothed reference camera (rotvec, centre)
    expr: np.ndarray  # [T, E]
    jaw_pose: np.ndarray  # [T, 3]
    eye_pose: np.ndarray  # [T, 6]
    raw: dict[str, np.ndarray]  # unsmoothed per-frame fits (same keys)
    reproj_px: np.ndarray  # [T] mean 68-landmark error of the smoothed fit, original pixels
    lmks_fit_px: np.ndarray  # [T, 68, 2]
    iris_fit_px: np.ndarray  # [T, 10, 2]
    jitter_raw: JitterMetrics | None = None
    jitter: JitterMetrics | None = None
    timings: dict[str, float] = field(default_factory=dict)
    flow: np.ndarray | None = None  # [T] frames without landmarks tracked by optical flow (.flow)
    flow_inliers: np.ndarray | None = None  # [T] points that carried each flow frame's pose
    cuts: np.ndarray | None = None  # the rows that start a new shot (shot_cuts), nothing carried across
    # rows whose landmarks were found again for a moment inside a gap and disagreed with the flow
    # followed through them (FlowOptions.probe_deg): not in ``valid``, their pose is the flow's
    rejected: np.ndarray | None = None

    @property
    def cut_mask(self) -> np.ndarray:
        """``[T]`` True at the rows that start a new shot (:attr:`cuts` as a mask)."""
        mask = np.zeros(len(self.valid), bool)
        if self.cuts is not None:
            mask[self.cuts] = True
        return mask

    @property
    def source(self) -> np.ndarray:
        """``[T]`` where each frame's parameters come from: ``landmarks``, ``flow`` (the head followed
        by optical flow through a gap), ``bridged`` (interpolated by the smoother) or ``dropped``."""
        flow = self.flow if self.flow is not None else np.zeros_like(self.valid)
        out = np.full(len(self.valid), "dropped", dtype="<U9")
        out[self.covered] = "bridged"
        out[self.covered & flow] = "flow"
        out[self.valid] = "landmarks"
        return out


# ---------------------------------------------------------------------------------------- helpers

#: A shot cut between two detected frames: the face's box moved by more than CUT_JUMP of its size, or
#: its size changed by more than CUT_SCALE times, plus what a head can do in the time between them
#: (CUT_SPEED face sizes and CUT_GROWTH in log-size per second beyond one frame at 25 fps): a low
#: --fps or missing frames do not turn motion into cuts. The shared talking clips move at most ~0.1 of
#: the face per frame (2.4 face sizes/s at the peak, 0.61 over one second).
CUT_JUMP = 0.5
CUT_SCALE = 1.5
CUT_SPEED = 2.5
CUT_GROWTH = 0.8
_CUT_FRAME_S = 0.04


def shot_cuts(lmks_px: np.ndarray, valid: np.ndarray, times: np.ndarray) -> np.ndarray:
    """``[T]`` True at the first frame of a new shot: a detected frame whose face is far from the
    previous detected frame's (a hard cut in edited footage: another framing, another person). A
    cut starts the per-frame fits afresh and splits the smoothing, the bridging and the optical flow
    (nothing is carried across). ``lmks_px [T, 68, 2]`` (read in blocks), NaN where not detected."""
    valid = np.asarray(valid, bool)
    t_len = len(valid)
    centre, size = np.full((t_len, 2), np.nan), np.full(t_len, np.nan)
    for start in range(0, t_len, SCAN_BLOCK):  # (lmks_px may be a file)
        blk = np.asarray(lmks_px[start:start + SCAN_BLOCK], np.float64)
        lo, hi = blk.min(1), blk.max(1)
        centre[start:start + SCAN_BLOCK] = (lo + hi) / 2
        size[start:start + SCAN_BLOCK] = (hi - lo).max(1)
    idx = np.flatnonzero(valid & np.isfinite(size) & (size > 0))
    cuts = np.zeros(t_len, bool)
    if len(idx) < 2:
        return cuts
    a, b = idx[:-1], idx[1:]
    extra_s = np.maximum(np.diff(np.asarray(times, np.float64)[idx]) - _CUT_FRAME_S, 0.0)
    moved = np.linalg.norm(centre[b] - centre[a], axis=1) / np.maximum(size[a], size[b])
    grown = np.abs(np.log(size[b] / size[a]))
    cuts[b] = (moved > CUT_JUMP + CUT_SPEED * extra_s) | (grown > np.log(CUT_SCALE) + CUT_GROWTH * extra_s)
    return cuts


def video_crop(lmks_px: np.ndarray, valid: np.ndarray, scale: float) -> Crop:
    """One square crop for the whole video: centred on the median face centre, ``scale`` × the
    median face-box side (robust to a few bad detections)."""
    rows = np.flatnonzero(valid)
    centres, sides = [], []
    for start in range(0, len(rows), SCAN_BLOCK):  # in blocks: a long video's detections may be a file
        # (float32 detections: the same crop as from float64)
        pts = np.asarray(lmks_px[rows[start:start + SCAN_BLOCK]], dtype=np.float64)
        lo, hi = np.nanmin(pts, axis=1), np.nanmax(pts, axis=1)
        centres.append((lo + hi) / 2)
        sides.append((hi - lo).max(axis=1))
        unmap_pages(lmks_px)  # (a file's pages go back as the blocks are read)
    centre = np.median(np.concatenate(centres), axis=0)
    side = float(np.median(np.concatenate(sides))) * scale
    return Crop(float(centre[0] - side / 2), float(centre[1] - side / 2), side)


def choose_keyframes(features: np.ndarray, k: int) -> np.ndarray:
    """Farthest-point sampling of ``features [T, F]`` (standardised), starting from the frame
    nearest the median (a typical, usually frontal, frame). Returns sorted indices."""
    t = features.shape[0]
    if t <= k:
        return np.arange(t)
    z = (features - np.median(features, 0)) / (features.std(0) + 1e-9)
    chosen = [int(np.argmin((z ** 2).sum(1)))]
    dist = ((z - z[chosen[0]]) ** 2).sum(1)
    for _ in range(k - 1):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, ((z - z[i]) ** 2).sum(1))
    return np.sort(np.array(chosen))


def rotation_error_deg(rotvec_a: np.ndarray, rotvec_b: np.ndarray) -> np.ndarray:
    """Geodesic angle between two rotation sequences ``[T, 3]`` in degrees."""
    ra = rotvec_to_matrix(torch.as_tensor(rotvec_a, dtype=torch.float64))
    rb = rotvec_to_matrix(torch.as_tensor(rotvec_b, dtype=torch.float64))
    rel = matrix_to_rotvec(ra.transpose(-1, -2) @ rb)
    return np.degrees(rel.norm(dim=-1).numpy())


def _unwrap_rotvec(rotvec: np.ndarray) -> np.ndarray:
    """Make consecutive axis-angle vectors continuous (r and r - 2*pi*r/|r| are the same rotation),
    so smoothing never averages across the pi wrap."""
    out = rotvec.copy()
    for i in range(1, len(out)):  # sequential by nature; O(T) on 3-vectors
        r = out[i]
        n = np.linalg.norm(r)
        if n > 1e-9 and np.isfinite(n):
            alt = r * (1 - 2 * np.pi / n)
            if np.linalg.norm(alt - out[i - 1]) < np.linalg.norm(r - out[i - 1]):
                out[i] = alt
    return out


# ------------------------------------------------------------------------------ fitting adapters

#: Frames per batch of the identity's first rigid pass over the whole video (memory stays flat).
SCAN_BLOCK = 1024


def _stage1(points3d: torch.Tensor, targets: torch.Tensor, fov: float, *, options: TrackOptions,
            init: torch.Tensor | None, estimate_fov: bool,
            neighbours: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rigid camera fit (stage 1) of ``N`` frames; returns ``(pose6 [N,6], fov [N])`` in the
    targets' dtype. ``neighbours [N-1]`` marks consecutive rows that are adjacent frames (temporal
    coupling only between those)."""
    from flame_tracker.fitting.stage1 import fit_camera

    temporal: bool | torch.Tensor = False
    if neighbours is not None and len(neighbours) and neighbours.any():
        temporal = torch.as_tensor(neighbours, dtype=torch.float64)
    res = fit_camera(points3d, targets, fov=fov, init=init, options=options.stage1,
                     fov_mode="shared" if estimate_fov else "fixed", temporal=temporal)
    return res.pose6.to(targets.dtype), res.fov.to(targets.dtype)


def _stage2(model: Any, lmks_ndc: torch.Tensor, iris_ndc: torch.Tensor | None,
            pose6: torch.Tensor, fov: torch.Tensor, init: dict[str, torch.Tensor], *,
            options: TrackOptions, identity: bool = False, expr_mean: torch.Tensor | None = None,
            dense: tuple[DenseTargets, np.ndarray] | None = None):
    """Stage 2 of ``N`` frames with ``options.stage2``; ``identity``: one shared shape over them
    (``identity_iters`` iterations); ``dense``: the dense targets and the frames' rows in them (fitted
    instead of the 68 points)."""
    from flame_tracker.fitting.stage2 import fit_stage2

    extra: dict[str, Any] = dict(fit_shape=True, shared_shape=True, max_iter=options.identity_iters) if identity \
        else dict(fit_shape=False)
    if dense is not None:
        targets, rows = dense
        model, lmks_ndc = targets.model, targets.ndc(rows)
        extra["point_weights"] = targets.weights
    res = fit_stage2(model, lmks_ndc, pose6, fov, iris_ndc=iris_ndc, init=init, expr_prior_mean=expr_mean,
                     options=options.stage2, **extra)
    # the solver runs on the model's device; the tracker's bookkeeping (stage 1, numpy) on the CPU
    return replace(res, **{f.name: getattr(res, f.name).cpu() for f in fields(res)
                           if isinstance(getattr(res, f.name), torch.Tensor)})


def _model_points(model: torch.nn.Module, shape: torch.Tensor, expr: torch.Tensor | None = None,
                  jaw: torch.Tensor | None = None) -> torch.Tensor:
    """The 68 model landmarks stage 1 aligns (landmark fast path), on the CPU."""
    return _landmarks(model, shape=shape, expr=expr, jaw_pose=jaw).landmarks


def _landmarks(model: Any, **params: torch.Tensor | None) -> Any:
    """``model.landmarks`` of CPU parameters, evaluated on the model's device, returned on the CPU
    (stage 1 and the tracker's bookkeeping run there whatever the model's device)."""
    with torch.no_grad():
        out = model.landmarks(**params)
    return type(out)(*(None if t is None else t.cpu() for t in out))


# ------------------------------------------------------------------------------------ main entry

def fit_identity(model: torch.nn.Module, targets: FrameTargets, valid: np.ndarray, crop: Crop,
                 options: TrackOptions, *, fov: float | None = None) -> Identity:
    """Choose keyframes spanning the pose range and fit one shape (and FOV) jointly on them.
    ``targets``: the detections (and the expression prior's centre, MediaPipe's scores);
    ``fov``: the crop FOV to start from (default ``options.fov``)."""
    dt = model.v_template.dtype
    fov0 = options.fov if fov is None else float(fov)
    idx_valid = np.flatnonzero(valid)
    zero_shape = torch.zeros(1, model.n_shape, dtype=dt)
    pts = _model_points(model, zero_shape)
    # a rigid fit of every frame (independent frames: the same result in any batch) in blocks, so that
    # memory does not grow with the video (the solver's working arrays are ~65 KB per frame: 7 GB for
    # an hour at 30 fps in one batch)
    poses, mouths = [], []
    for start in range(0, len(idx_valid), SCAN_BLOCK):
        tv = targets.lmks(idx_valid[start:start + SCAN_BLOCK])
        poses.append(_stage1(pts.expand(len(tv), -1, -1), tv, fov0, options=options, init=None,
                             estimate_fov=False)[0])
        # mouth opening (inner lips 62 vs 66) relative to the face size: keyframes also vary expression
        face = (tv[:, 16] - tv[:, 0]).norm(dim=-1)
        mouths.append(((tv[:, 66] - tv[:, 62]).norm(dim=-1) / face).numpy())
        targets.release()
    euler = rotvec_to_euler(torch.cat(poses)[:, :3]).numpy()
    feats = np.column_stack([euler[:, 0], euler[:, 1], 0.5 * np.concatenate(mouths)])
    keys = idx_valid[choose_keyframes(feats, options.n_keyframes)]

    kl, ki = targets.lmks(keys), targets.iris(keys) if options.fit_iris else None
    expr_mean = targets.expr_mean(keys)
    shape = zero_shape
    fov = torch.full((len(keys),), fov0, dtype=dt)
    init: dict[str, torch.Tensor] = {}
    kpose = None
    for _ in range(options.identity_rounds):  # alternate rigid (shared FOV) and shape
        pts = _model_points(model, shape, init.get("expr"), init.get("jaw_pose"))
        kpose, fov = _stage1(pts.expand(len(keys), -1, -1), kl, float(fov.mean()), options=options, init=kpose,
                             estimate_fov=options.estimate_fov)
        res = _stage2(model, kl, ki, kpose, fov, {**init, "shape": shape}, options=options, identity=True,
                      expr_mean=expr_mean)
        shape = res.shape[:1]
        init = {"expr": res.expr, "jaw_pose": res.jaw_pose, "eye_pose": res.eye_pose}
    pp = None if crop.cx is None else (float(crop.cx), float(crop.cy))
    return Identity(shape[0].numpy().astype(np.float32), float(fov.mean()),
                    (float(crop.x0), float(crop.y0), float(crop.size)), keys, pp)


def fit_frames(model: torch.nn.Module, identity: Identity, targets: FrameTargets, frames: np.ndarray,
               options: TrackOptions, warm: dict[str, np.ndarray] | None = None,
               dense: DenseTargets | None = None) -> dict[str, np.ndarray]:
    """Stage 1 + stage 2 for one chunk of consecutive valid frames (batched), warm-started from
    ``warm`` (the previous chunk's last frame); ``dense``: stage 2 fits those points. Returns
    per-frame arrays ``[n, ...]``."""
    dt = model.v_template.dtype
    n = len(frames)
    shape = torch.as_tensor(identity.shape, dtype=dt)[None]
    tl = targets.lmks(frames)
    ti = targets.iris(frames) if options.fit_iris else None
    init: dict[str, torch.Tensor] = {}
    pose_init = None
    if warm is not None:
        init = {k: torch.as_tensor(warm[k], dtype=dt)[None].expand(n, -1)
                for k in ("expr", "jaw_pose", "eye_pose")}
        pose_init = torch.as_tensor(warm["pose6"], dtype=dt)[None].expand(n, -1)
    # the rigid fit sees the warm-start expression (mouth, jaw contour) of the previous frame
    pts = _model_points(model, shape, init.get("expr"), init.get("jaw_pose")).expand(n, -1, -1)
    neighbours = np.diff(frames) == 1 if options.frame_temporal else None
    pose6, fov = _stage1(pts, tl, identity.fov, options=options, init=pose_init, estimate_fov=False,
                         neighbours=neighbours)
    res = _stage2(model, tl, ti, pose6, fov, {**init, "shape": shape},
                  options=options, expr_mean=targets.expr_mean(frames),
                  dense=None if dense is None else (dense, frames))
    if dense is not None:  # the reprojection error stays the 68 points'
        lm68 = _landmarks(model, shape=shape, expr=res.expr, jaw_pose=res.jaw_pose).landmarks
        err = (project_ndc(lm68, pose6, fov) - tl).norm(dim=-1).nanmean(dim=-1)
    else:
        err = (res.landmarks_ndc - tl).norm(dim=-1).nanmean(dim=-1)
    return {"pose6": pose6.numpy(), "expr": res.expr.numpy(), "jaw_pose": res.jaw_pose.numpy(),
            "eye_pose": res.eye_pose.numpy(), "err_ndc": err.numpy()}


def smooth_fits(raw: dict[str, np.ndarray], valid: np.ndarray, times: np.ndarray,
                options: TrackOptions, arrays: FrameArrays | None = None,
                expr_bounds: tuple[float, float] | None = None,
                cuts: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Smooth the per-frame fits over the whole sequence, never across a shot cut (``cuts``,
    :func:`shot_cuts`); returns (smoothed dict, covered). The arrays are ``arrays``' (default: in
    memory). ``expr_bounds``: the model's expression range
    (``model.expr_bounds``, ICT's blendshape weights [0, 1]), which the smoothed expression is
    clipped to: the low-pass overshoots a bounded channel's steps (weights down to -0.01 before)."""
    arrays = arrays or FrameArrays()
    t_len = len(valid)
    rot = raw["pose6"][:, :3].copy()
    rot[valid] = _unwrap_rotvec(rot[valid])
    blocks = [("rot", rot, options.pose_cutoff_hz), ("trans", raw["pose6"][:, 3:], options.pose_cutoff_hz),
              ("expr", raw["expr"], options.expr_cutoff_hz),
              ("jaw_pose", raw["jaw_pose"], options.expr_cutoff_hz),
              ("eye_pose", raw["eye_pose"], options.expr_cutoff_hz)]
    widths = [b[1].shape[1] for b in blocks]
    x = arrays.full("smooth_in", (t_len, sum(widths)), np.nan)
    for start in range(0, t_len, SCAN_BLOCK):  # (in blocks: raw and x may be files)
        sl = slice(start, start + SCAN_BLOCK)
        x[sl] = np.concatenate([np.asarray(b[1][sl]) for b in blocks], axis=1)
        arrays.release()
    del rot
    cut = np.concatenate([np.full(w, b[2]) for w, b in zip(widths, blocks)])
    y, covered = smooth_sequence(x, valid, times=times, cutoff_hz=cut, max_gap_s=options.max_gap_s,
                                 out=arrays.full("smooth_out", x.shape, np.nan), cuts=cuts)
    if np.isfinite(options.pose_follow_deg_s2):
        # the pose again, its penalty relaxed where the smoothed head turns fast (two passes: the
        # acceleration of each pass sets the next one's penalty); its 6 columns in memory, read
        # and written in blocks (x and y may be files)
        def columns(arr: np.ndarray) -> np.ndarray:
            out = np.empty((t_len, 6))
            for start in range(0, t_len, SCAN_BLOCK):
                out[start:start + SCAN_BLOCK] = arr[start:start + SCAN_BLOCK, :6]
                arrays.release()
            return out

        pose_x, pose_y = columns(x), columns(y)
        for _ in range(2):
            scale = motion_scale(np.degrees(pose_y[:, :3]), times, covered, options.pose_follow_deg_s2)
            pose_y, _ = smooth_sequence(pose_x, valid, times=times, cutoff_hz=cut[:6],
                                        max_gap_s=options.max_gap_s, scale=scale, cuts=cuts)
        for start in range(0, t_len, SCAN_BLOCK):
            y[start:start + SCAN_BLOCK, :6] = pose_y[start:start + SCAN_BLOCK]
            arrays.release()
        del pose_x, pose_y
    out, c = {}, 0
    for (name, _, _), w in zip(blocks, widths):
        out[name] = y[:, c:c + w]
        c += w
    if expr_bounds is not None:
        lo, hi = float(expr_bounds[0]), float(expr_bounds[1])
        for start in range(0, t_len, SCAN_BLOCK):
            blk = out["expr"][start:start + SCAN_BLOCK]
            np.clip(blk, lo, hi, out=blk)  # (NaN stays NaN)
            arrays.release()
    arrays.release()
    # (rotation and translation are y's first 6 columns: the pose is a view of them)
    return {"pose6": y[:, :6], "expr": out["expr"], "jaw_pose": out["jaw_pose"], "eye_pose": out["eye_pose"]}, covered


def model_expr_bounds(model: torch.nn.Module) -> tuple[float, float] | None:
    """A model's expression range (``expr_bounds``: ICT's blendshape weights), None when unbounded."""
    b = getattr(model, "expr_bounds", None)
    return None if b is None else (float(b[0]), float(b[1]))


def project_fit(model: torch.nn.Module, identity: Identity, params: dict[str, np.ndarray],
                rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fitted 68 landmarks and 10 iris points in original pixels, ``[len(rows), 68 | 10, 2]``
    (iris NaN when the model has none). Evaluated in blocks of :data:`SCAN_BLOCK` frames: the
    model's working arrays are ~10 KB per frame (250 MB for 24 000 frames in one batch)."""
    dt = model.v_template.dtype
    crop = identity.camera_crop
    rows = np.asarray(rows)
    lmk = np.empty((len(rows), 68, 2))
    iris = np.full((len(rows), 10, 2), np.nan)
    shape = torch.as_tensor(identity.shape, dtype=dt)[None]
    with torch.no_grad():
        for start in range(0, len(rows), SCAN_BLOCK):
            blk = rows[start:start + SCAN_BLOCK]
            out = _landmarks(model, shape=shape, expr=torch.as_tensor(params["expr"][blk], dtype=dt),
                             jaw_pose=torch.as_tensor(params["jaw_pose"][blk], dtype=dt),
                             eye_pose=torch.as_tensor(params["eye_pose"][blk], dtype=dt))
            pose6 = torch.as_tensor(params["pose6"][blk], dtype=dt)
            sl = slice(start, start + len(blk))
            lmk[sl] = crop.from_camera_ndc(project_ndc(out.landmarks, pose6, identity.fov)).numpy()
            if out.iris is not None:
                iris[sl] = crop.from_camera_ndc(project_ndc(out.iris, pose6, identity.fov)).numpy()
    return lmk, iris


def track_landmarks(model: torch.nn.Module, lmks_px: np.ndarray, valid: np.ndarray,
                    times: np.ndarray, *, iris_px: np.ndarray | None = None,
                    options: TrackOptions | None = None,
                    identity: Identity | None = None,
                    done: dict[str, np.ndarray] | None = None,
                    on_chunk: Callable[[np.ndarray, dict[str, np.ndarray]], None] | None = None,
                    on_identity: Callable[[Identity], None] | None = None,
                    image_size: tuple[int, int] | None = None,
                    blendshapes: np.ndarray | None = None,
                    blendshape_names: tuple[str, ...] = (),
                    gap_filler: GapFiller | None = None,
                    dense_px: np.ndarray | None = None,
                    arrays: FrameArrays | None = None,
                    ) -> SequenceFit:
    """Track a landmark sequence.

    Args:
        model: a ``HeadModel``.
        lmks_px: ``[T, 68, 2]`` detected landmarks in original pixels (anything where not valid),
            float32 or float64 (the same result: they are converted where used).
        valid: ``[T]`` frames with a face.
        times: ``[T]`` timestamps in seconds.
        iris_px: ``[T, 10, 2]`` iris points (MediaPipe order) or ``None``.
        options: :class:`TrackOptions`.
        identity: a previously fitted identity (resume); fitted here when ``None``.
        done: per-frame fits already computed (resume): arrays over ``T`` with a ``done [T]`` mask.
        on_chunk: called with ``(rows, fits)`` after each chunk (checkpointing).
        on_identity: called once the identity is fitted.
        image_size: ``(W, H)`` of the frames: puts the camera's principal point at the frame centre
            and derives the crop FOV from ``options.image_fov`` (``None``: the reference's crop-centred
            camera with ``options.fov``).
        blendshapes: ``[T, 52]`` MediaPipe scores with their ``blendshape_names``: the centre of the
            expression prior for models with ARKit-named expressions (ICT).
        gap_filler: ``(identity, raw, valid, cuts) -> (raw', flow [T], inliers [T])`` fills frames
            without landmarks before smoothing, not across a shot cut (``cuts [T]``, :func:`shot_cuts`;
            :func:`flame_tracker.video.flow.flow_through_gaps` with the video's frames); ``None``: gaps
            are bridged or dropped.
        dense_px: ``[T, 478, 2]`` MediaPipe's mesh points (original pixels), needed with
            ``options.landmarks="dense"``.
        arrays: where the per-frame arrays of the result live (:class:`~.store.FrameArrays`: a long
            video's in memory-mapped files); default: in memory.

    Raises:
        NoFaceError: no frame is valid.
        InputError: dense landmarks without ``dense_px`` or without the model's detector embedding.
    """
    from flame_tracker.threads import cpu_threads

    # Everything here works on small tensors (a few hundred numbers per frame): one intra-op
    # thread avoids fork/join waits that a busy 2-core machine turns into stalls (see cpu_threads).
    # Measured (400 frames, load 2-3): 2.8-6.4 s with one thread, 17-35 s with torch's default two.
    with cpu_threads(1, model.v_template.device):
        return _track_landmarks(model, lmks_px, valid, times, iris_px, options or TrackOptions(),
                                identity, done, on_chunk, on_identity, image_size, blendshapes,
                                blendshape_names, gap_filler, dense_px, arrays or FrameArrays())


def _track_landmarks(model: torch.nn.Module, lmks_px: np.ndarray, valid: np.ndarray,
                     times: np.ndarray, iris_px: np.ndarray | None, opts: TrackOptions,
                     identity: Identity | None, done: dict[str, np.ndarray] | None,
                     on_chunk: Callable[[np.ndarray, dict[str, np.ndarray]], None] | None,
                     on_identity: Callable[[Identity], None] | None,
                     image_size: tuple[int, int] | None, blendshapes: np.ndarray | None,
                     blendshape_names: tuple[str, ...], gap_filler: GapFiller | None,
                     dense_px: np.ndarray | None, arrays: FrameArrays) -> SequenceFit:
    from flame_tracker.errors import InputError

    valid = np.asarray(valid, bool)
    t_len = len(valid)
    if not valid.any():
        raise NoFaceError(f"no face in any of the {t_len} frames")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if identity is not None:
        crop = identity.camera_crop
    else:
        crop = video_crop(lmks_px, valid, opts.crop_scale)
        if image_size is not None and opts.image_fov is not None:
            crop = crop.with_image_centre(image_size)
    fov0 = (crop_fov(float(crop.size), image_size, opts.image_fov)
            if image_size is not None and opts.image_fov is not None else opts.fov)
    # the detections are converted chunk by chunk, as the fits need them
    targets = FrameTargets(model, lmks_px, iris_px if opts.fit_iris else None, crop, blendshapes,
                           blendshape_names)
    dense = None
    if opts.landmarks == "dense":
        if dense_px is None or np.shape(dense_px)[:2] not in ((t_len, 468), (t_len, 478)):
            raise InputError(f"landmarks='dense' needs MediaPipe's mesh points of every frame ([{t_len}, 478, 2])")
        dense = DenseTargets.build(model, dense_px, crop, opts.stage2)
    elif opts.landmarks != "68":
        raise InputError(f"landmarks must be '68' or 'dense', got {opts.landmarks!r}")
    if identity is None:
        identity = fit_identity(model, targets, valid, crop, opts, fov=fov0)
        if on_identity is not None:
            on_identity(identity)
    timings["identity_s"] = time.perf_counter() - t0

    # per-frame fits, chunk by chunk, in order
    t0 = time.perf_counter()
    raw = {k: arrays.full(f"raw_{k}", (t_len, *size), np.nan) for k, size in
           (("pose6", (6,)), ("expr", (model.n_expr,)), ("jaw_pose", (3,)), ("eye_pose", (6,)), ("err_ndc", ()))}
    have = np.zeros(t_len, bool)
    if done is not None:
        have = np.asarray(done["done"], bool)
        for start in range(0, t_len, SCAN_BLOCK):  # in blocks: both may be files
            sl = slice(start, start + SCAN_BLOCK)
            for k in raw:
                raw[k][sl] = np.where(have[sl].reshape(-1, *[1] * (raw[k].ndim - 1)), done[k][sl], raw[k][sl])
    todo = np.flatnonzero(valid & ~have)
    cuts = shot_cuts(lmks_px, valid, times)
    # chunks of at most opts.chunk frames, none across a shot cut (a resumed run cuts them the same)
    chunks = [piece[k:k + opts.chunk] for piece in np.split(todo, np.flatnonzero(cuts[todo]))
              for k in range(0, len(piece), opts.chunk)]
    for n_chunk, rows in enumerate(chunks):
        prev = np.flatnonzero(have[: rows[0]] & valid[: rows[0]])
        # warm start only from a frame close in time in the same shot (never across a long gap or a cut)
        if prev.size and times[rows[0]] - times[prev[-1]] <= opts.max_gap_s + 1e-9 \
                and not cuts[prev[-1] + 1: rows[0] + 1].any():
            warm = {k: raw[k][prev[-1]] for k in ("pose6", "expr", "jaw_pose", "eye_pose")}
        else:
            warm = None
        fits = fit_frames(model, identity, targets, rows, opts, warm, dense)
        for k in raw:
            raw[k][rows] = fits[k]
        have[rows] = True
        if on_chunk is not None:
            on_chunk(rows, fits)
        if (n_chunk + 1) % max(SCAN_BLOCK // opts.chunk, 1) == 0:  # (about every SCAN_BLOCK frames)
            arrays.release()
    timings["fit_s"] = time.perf_counter() - t0
    arrays.release()

    flow = inliers = rejected = None
    if gap_filler is not None and not valid.all():
        t0 = time.perf_counter()
        raw, flow, inliers = gap_filler(identity, raw, valid, cuts)
        timings["flow_s"] = time.perf_counter() - t0
        rejected = np.flatnonzero(valid & flow)  # landmarks the flow through them proved wrong
        if len(rejected):
            valid = valid & ~flow
    return sequence_fit(model, identity, raw, lmks_px, valid, times, opts, timings, cuts=cuts, flow=flow,
                        flow_inliers=inliers, arrays=arrays, rejected=rejected)


def sequence_fit(model: torch.nn.Module, identity: Identity, raw: dict[str, np.ndarray],
                 lmks_px: np.ndarray, valid: np.ndarray, times: np.ndarray, opts: TrackOptions,
                 timings: dict[str, float], *, cuts: np.ndarray, baseline: SequenceFit | None = None,
                 flow: np.ndarray | None = None, flow_inliers: np.ndarray | None = None,
                 arrays: FrameArrays | None = None, rejected: np.ndarray | None = None) -> SequenceFit:
    """Smooth per-frame fits ``raw`` (``pose6, expr, jaw_pose, eye_pose [T, .]``, ``err_ndc``) over the
    sequence and measure them: fitted landmarks, reprojection error, jitter before/after. Shared by
    the landmark track and the photometric refinement (:mod:`.photometric`), which passes the
    landmark track as ``baseline``: its raw fits and raw jitter are reported instead of ``raw``'s.
    ``arrays``: where the per-frame arrays live (default: in memory); everything over the frames is
    done in blocks, so a long video's memory stays flat. ``cuts [T]``: the shot cuts
    (:func:`shot_cuts`, found once on the landmark track's detections). ``rejected``: rows whose
    landmarks the flow through them rejected (:attr:`SequenceFit.rejected`; not in ``valid``)."""
    arrays = arrays or FrameArrays()
    t_len = len(valid)
    t0 = time.perf_counter()
    observed = valid if flow is None else valid | flow  # flow frames are measurements of the pose
    smooth, covered = smooth_fits(raw, observed, times, opts, arrays, expr_bounds=model_expr_bounds(model),
                                  cuts=cuts)
    timings["smooth_s"] = timings.get("smooth_s", 0.0) + time.perf_counter() - t0

    fit_px = arrays.full("fit_lmks68", (t_len, 68, 2), np.nan)
    fit_iris = arrays.full("fit_iris", (t_len, 10, 2), np.nan)
    reproj = np.full(t_len, np.nan)
    raw_px = arrays.full("raw_lmks68", (t_len, 68, 2), np.nan) if baseline is None else None
    for start in range(0, t_len, SCAN_BLOCK):
        sl = slice(start, start + SCAN_BLOCK)
        rows = start + np.flatnonzero(covered[sl])
        fit_px[rows], fit_iris[rows] = project_fit(model, identity, smooth, rows)
        vr = start + np.flatnonzero((valid & covered)[sl])
        reproj[vr] = np.linalg.norm(fit_px[vr] - np.asarray(lmks_px[vr]), axis=-1).mean(-1)
        if raw_px is not None:
            raw_px[vr] = project_fit(model, identity, raw, vr)[0]
        arrays.release()
    if raw_px is not None:
        jit_raw = jitter_metrics(raw["pose6"][:, :3], raw["pose6"][:, 3:], valid, raw_px, cuts)
    else:
        assert baseline is not None
        raw, jit_raw = baseline.raw, baseline.jitter_raw
    jit = jitter_metrics(smooth["pose6"][:, :3], smooth["pose6"][:, 3:], valid, fit_px, cuts)
    arrays.release()
    return SequenceFit(identity, valid, covered, smooth["pose6"], smooth["expr"],
                       smooth["jaw_pose"], smooth["eye_pose"], raw, reproj, fit_px, fit_iris,
                       jit_raw, jit, timings, flow, flow_inliers, np.flatnonzero(cuts),
                       np.zeros(0, int) if rejected is None else np.asarray(rejected, int))
