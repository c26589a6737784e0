"""Photometric video tracking: one canonical texture, then every tracked frame refined against it.

Order (``track_video(..., VideoOptions(photometric=True))``):

1. the landmark track (:func:`~flame_tracker.video.track.track_landmarks`), smoothed;
2. the **canonical texture**: one appearance fitted on the identity keyframes
   (:func:`~flame_tracker.fitting.photometric.canonical_from_frames`), written as ``texture.png``
   and kept in ``work/canonical.npz`` for a resumed run;
3. **per-frame refinement**: chunks of consecutive frames with a face are decoded again, cropped to
   the video's fitting square and refined photometrically with the texture fixed (camera,
   expression, jaw, eyes and the per-frame SH light free; shape fixed), warm-started from the
   smoothed landmark track, batched over the chunk and checkpointed per chunk (``work/photometric/``:
   a killed run keeps its finished chunks);
4. the refined per-frame values are **smoothed again** with the track's cutoffs (the per-frame fits
   are independent, so the smoother removes their jitter and bridges frames without a face); the
   light is smoothed with the pose cutoff.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from flame_tracker.fitting.photometric import (
    PhotometricOptions,
    canonical_from_frames,
    crop_inputs,
    fit_photometric,
    save_texture_png,
)
from flame_tracker.io.results import load_npz, save_npz
from flame_tracker.progress import progress_bar
from flame_tracker.video.decode import AllBut, VideoReader
from flame_tracker.video.store import RunFolder
from flame_tracker.video.temporal import smooth_sequence
from flame_tracker.video.track import SequenceFit, TrackOptions, sequence_fit

if TYPE_CHECKING:  # (the pipeline imports this module)
    from flame_tracker.video.pipeline import DetectedFrames

PARAM_KEYS = ("pose6", "expr", "jaw_pose", "eye_pose")


def _canonical_path(run: RunFolder) -> Path:
    return run.root / "work" / "canonical.npz"


def load_canonical(run: RunFolder) -> torch.Tensor | None:
    """The canonical albedo a previous step of this run fitted (``work/canonical.npz``), or None."""
    path = _canonical_path(run)
    return torch.as_tensor(load_npz(path)["albedo"]) if path.is_file() else None


#: A frame is refined photometrically when its face lies inside the video's fitting square and fills at
#: least this part of its side (the square frames the median face at 1/1.6 of it; in a montage of shots
#: a face elsewhere in the picture, or a far smaller one, has nothing to render against there).
MIN_FACE_IN_CROP = 0.25


def refinable(fit: SequenceFit, lmks68_px: np.ndarray) -> np.ndarray:
    """``[T]`` the tracked frames the photometric refinement can work on (:data:`MIN_FACE_IN_CROP`);
    the others keep their landmark fits."""
    c = fit.identity.crop  # (x0, y0, side), original pixels
    lm = np.asarray(lmks68_px, np.float64)
    with np.errstate(invalid="ignore"):
        inside = ((lm[..., 0] >= c[0]) & (lm[..., 0] <= c[0] + c[2])
                  & (lm[..., 1] >= c[1]) & (lm[..., 1] <= c[1] + c[2])).all(1)
        big = np.ptp(lm, axis=1).max(1) >= MIN_FACE_IN_CROP * c[2]
    return np.asarray(fit.valid, bool) & inside & big


def canonical_texture(run: RunFolder, fit: SequenceFit, lm: DetectedFrames, reader: VideoReader,
                      model: torch.nn.Module, summary_timings: dict[str, float]) -> torch.Tensor | None:
    """The video's canonical appearance (``[V, 3]`` per-vertex albedo), fitted on the identity
    keyframes and written as ``texture.png``; read back from ``work/canonical.npz`` when a previous
    run already fitted it. ``None`` when no keyframe could be decoded."""
    dt = model.v_template.dtype
    albedo = load_canonical(run)
    if albedo is not None:
        albedo = albedo.to(dt)
        if not (run.root / "texture.png").exists():
            save_texture_png(run.root / "texture.png", albedo, model)
        return albedo
    t0 = time.perf_counter()
    ok = refinable(fit, lm.lmks68)
    want = {int(lm.frame[r]): int(r) for r in fit.identity.keyframes if ok[r]}
    frames: dict[int, np.ndarray] = {}
    # the keyframes only (a reader that jumps over the stretches between them), up to the last one
    with closing(iter(reader.reopen(skip=AllBut(want)))) as it:
        for frame in it:
            if frame.index in want:
                frames[frame.index] = frame.image
                if len(frames) == len(want):
                    break
    if not frames:
        return None
    rows = np.array([want[i] for i in frames])
    init = {"shape": fit.identity.shape, "expr": fit.expr[rows], "jaw_pose": fit.jaw_pose[rows],
            "eye_pose": fit.eye_pose[rows]}
    can = canonical_from_frames(model, list(frames.values()), fit.identity.camera_crop, lm.lmks68[rows],
                                fit.pose6[rows], fit.identity.fov, init, iris_px=lm.iris[rows])
    save_npz(_canonical_path(run), {"albedo": can.albedo.cpu().numpy()})
    save_texture_png(run.root / "texture.png", can.albedo, model)
    summary_timings["texture_s"] = time.perf_counter() - t0
    return can.albedo


def refine_frames(model: torch.nn.Module, fit: SequenceFit, lm: DetectedFrames,
                  frames: list[np.ndarray], rows: np.ndarray, albedo: torch.Tensor,
                  **overrides) -> dict[str, np.ndarray]:
    """Photometric refinement of the tracked frames ``rows`` (one batched fit) against the fixed
    canonical ``albedo``, warm-started from ``fit``. ``frames``: their RGB images (original pixels).

    Returns per-frame arrays ``pose6, expr, jaw_pose, eye_pose`` and ``light [n, 9, 3]``.
    """
    opts = replace(PhotometricOptions(), **{"render": False, **overrides})  # no render needed here
    dt = model.v_template.dtype
    crops, lmk, iris, crop = crop_inputs(frames, fit.identity.camera_crop, lm.lmks68[rows], lm.iris[rows],
                                         opts.resolution, dt)
    n = len(rows)
    init = {"shape": torch.as_tensor(fit.identity.shape, dtype=dt)[None].expand(n, -1),
            **{k: torch.as_tensor(getattr(fit, k)[rows], dtype=dt) for k in ("expr", "jaw_pose", "eye_pose")}}
    ph = fit_photometric(model, crops, lmk, torch.as_tensor(fit.pose6[rows], dtype=dt), fit.identity.fov,
                         init=init, iris_ndc=iris if bool(torch.isfinite(iris).any()) else None,
                         albedo=albedo, pp_ndc=crop.pp_ndc(lmk),
                         options=opts, temporal=n > 1)
    return {k: getattr(ph, k).double().cpu().numpy() for k in ("pose6", "expr", "jaw_pose", "eye_pose", "light")}


def photometric_track(run: RunFolder, fit: SequenceFit, lm: DetectedFrames, reader: VideoReader,
                      model: torch.nn.Module, options: TrackOptions, *, chunk: int = 8,
                      progress: bool = True, timings: dict[str, float] | None = None,
                      frames_done: dict[str, int] | None = None,
                      **overrides) -> tuple[SequenceFit, np.ndarray] | None:
    """Canonical texture + per-frame photometric refinement of a landmark track (module docstring).

    Args:
        run, fit, lm, reader: the run folder, the smoothed landmark track, the per-frame landmark
            records and the reader of the tracked frames.
        chunk: frames per batched photometric fit (and per checkpoint).
        timings, frames_done: filled with ``texture_s``/``photometric_s`` and the number of frames
            refined by this call.
        overrides: :class:`~flame_tracker.fitting.photometric.PhotometricOptions` fields.

    Returns:
        ``(refined and re-smoothed SequenceFit, light [T, 9, 3])`` (NaN where not covered), or
        ``None`` when no keyframe could be decoded.
    """
    from flame_tracker.threads import cpu_threads

    timings = {} if timings is None else timings
    albedo = canonical_texture(run, fit, lm, reader, model, timings)
    if albedo is None:
        return None
    t0 = time.perf_counter()
    t_len = len(lm.frame)
    row_of = {int(f): i for i, f in enumerate(lm.frame)}
    stage = run.stage("photometric", chunk=chunk)
    done = stage.done()
    ok = refinable(fit, lm.lmks68)
    cut = fit.cut_mask
    todo = [int(r) for r in np.flatnonzero(ok) if int(lm.frame[r]) not in done]
    # frames already refined, without a face or not refinable are passed over without converting them
    skip = set(done) | {int(f) for f, v in zip(lm.frame, ok) if not v}
    bar = progress_bar(total=int(ok.sum()), initial=int(ok.sum()) - len(todo), desc="photometric",
                       unit="frame", disable=not progress, dynamic_ncols=True)
    n_new = 0

    def flush(rows: list[int], images: list[np.ndarray]) -> None:
        nonlocal n_new
        out = refine_frames(model, fit, lm, images, np.array(rows), albedo, **overrides)
        for i, r in enumerate(rows):
            stage.add(int(lm.frame[r]), {k: v[i] for k, v in out.items()})
        stage.flush()  # a finished chunk survives a kill
        n_new += len(rows)
        bar.update(len(rows))

    try:
        if todo:
            want = set(todo)
            rows: list[int] = []
            images: list[np.ndarray] = []
            with cpu_threads(1, model.v_template.device), closing(iter(reader.reopen(skip=skip))) as it:
                for frame in it:
                    r = row_of.get(frame.index)
                    if r is None or r not in want:
                        continue
                    # a chunk holds consecutive tracked frames of one shot (the temporal term links
                    # neighbours)
                    if rows and (len(rows) == chunk or r != rows[-1] + 1 or cut[r]):
                        flush(rows, images)
                        rows, images = [], []
                    rows.append(r)
                    images.append(frame.image)
                if rows:
                    flush(rows, images)
    finally:
        bar.close()
        stage.flush()
    if frames_done is not None:
        frames_done["photometric"] = n_new

    valid, rec = stage.load_rows(lm.frame)
    raw = {k: rec.get(k, np.full_like(fit.raw[k], np.nan)) for k in PARAM_KEYS}
    raw["err_ndc"] = np.where(valid, fit.raw["err_ndc"], np.nan)
    light = rec.get("light", np.full((t_len, 9, 3), np.nan))
    valid &= ok
    if fit.flow is not None and fit.flow.any():  # flow-tracked frames keep their poses (not refined)
        for k in PARAM_KEYS:
            raw[k][fit.flow] = fit.raw[k][fit.flow]
    kept = np.asarray(fit.valid, bool) & ~valid  # tracked, not refined (not refinable): their landmark fits
    if kept.any():
        for k in PARAM_KEYS:
            raw[k][kept] = fit.raw[k][kept]
        raw["err_ndc"][kept] = fit.raw["err_ndc"][kept]
        valid |= kept
    # the landmark track's raw fits (raw_cam/raw_exp in tracking.npz) and jitter stay the baseline
    with cpu_threads(1, model.v_template.device):
        # (the landmark track's shot cuts: found again on the refined frames alone, one could move)
        new = sequence_fit(model, fit.identity, raw, lm.lmks68.astype(np.float64), valid, lm.time_s,
                           options, dict(fit.timings), cuts=fit.cut_mask, baseline=fit, flow=fit.flow,
                           flow_inliers=fit.flow_inliers, rejected=fit.rejected)
    light_s, _ = smooth_sequence(light.reshape(t_len, 27), valid, times=lm.time_s,
                                 cutoff_hz=options.pose_cutoff_hz, max_gap_s=options.max_gap_s, cuts=fit.cut_mask)
    timings["photometric_s"] = time.perf_counter() - t0
    return new, light_s.reshape(t_len, 9, 3)
