"""Tracking through profiles and occlusions (frames where MediaPipe finds no face), against truth.

A synthetic video made with the project's renderer (``evaluation.scenes.turning_head``): one ICT
identity with a speckled per-vertex skin texture, talking, turning from frontal to 90° of yaw and
back; in a later passage a grey occluder covers the lower face. Every frame goes through the video
pipeline's detection (``detection.search.FaceFollower``) and landmark tracking
(``video.track.track_landmarks``), once with the frames without landmarks bridged by the smoother
(before) and once followed by optical flow (``video.flow``). Head rotation error (geodesic angle
between fitted and true model-to-camera rotation) on the frames where the detector gave nothing, and
on the frames with landmarks (which must not change).

Last line: ``rot_deg_gap_bridged=… rot_deg_gap_flow=… gap_frames=… flow_frames=… rot_deg_landmarks=…
flow_ms_per_frame=…`` (target: flow ≤ 3° where bridging is far worse).

Usage: ``python benchmarks/head_turn.py [--frames 90] [--fps 30] [--seed 11] [--save DIR]``
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from flame_tracker.detection.search import FaceFollower
from flame_tracker.evaluation.scenes import render_scene, turning_head
from flame_tracker.model import load_model
from flame_tracker.video.flow import flow_through_gaps, frames_in_memory
from flame_tracker.video.track import TrackOptions, track_landmarks


def rotation_error(pose6: np.ndarray, identity, R_true: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between fitted and true model -> OpenCV camera rotations."""
    from flame_tracker.camera import to_opencv

    _, R, _ = to_opencv(torch.as_tensor(pose6), identity.fov, identity.camera_crop)
    rel = np.einsum("nji,njk->nik", R.numpy(), R_true)
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
    return np.degrees(np.arccos(cos))


#: The turns the flow's settings are checked on (docs/profiles.md): the benchmark clip (seed 11) and
#: three others: other identities, turns to the other side, other face sizes and fields of view.
TURNS = {11: {}, 3: dict(yaw_peak=-85.0, face_frac=0.35, fov_deg=20.0),
         5: dict(yaw_peak=80.0, face_frac=0.55, fov_deg=40.0), 8: dict(yaw_peak=-80.0, face_frac=0.5, fov_deg=25.0)}


def make_video(model, n: int, fps: float,
               seed: int = 11) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Frames, true rotations ``[T, 3, 3]``, true yaw ``[T]`` and the occluded frames ``[T]`` bool
    (``seed``: one of :data:`TURNS`, or any other with the benchmark clip's turn)."""
    specs = turning_head(model, n, seed=seed, **TURNS.get(seed, {}))
    # a second, frontal passage with the lower face covered (a hand, a microphone)
    occl_n = max(4, n // 6)
    base = specs[0]
    for i in range(occl_n + 6):
        specs.append(type(base)(**{**base.__dict__, "index": n + i}))
    frames, rots, yaw, occluded = [], [], [], []
    for k, spec in enumerate(specs):
        img, truth = render_scene(model, spec, detail=0.25)
        covered = n + 3 <= k < n + 3 + occl_n
        if covered:  # an occluder over the face below the eyes (a hand, a microphone, a cup)
            l68 = truth.lmks68_px
            x0, x1 = l68[:, 0].min() - 25, l68[:, 0].max() + 25
            y0, y1 = l68[[37, 38, 43, 44], 1].min() - 2, l68[8, 1] + 40  # eyes down
            cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), (128, 124, 120), -1)
        frames.append(img)
        rots.append(truth.R)
        yaw.append(spec.yaw)
        occluded.append(covered)
    return frames, np.array(rots), np.array(yaw), np.array(occluded)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=90, help="frames of the turn (default 90)")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--save", default=None, help="also write the synthetic video here (mp4)")
    ap.add_argument("--seed", type=int, default=11,
                    help="the turn (identity; with 3, 5 or 8 also its side, face size and FOV, see TURNS; default "
                         "11, the benchmark clip)")
    args = ap.parse_args()
    model = load_model()
    t0 = time.perf_counter()
    frames, R_true, yaw, occluded = make_video(model, args.frames, args.fps, args.seed)
    t_len = len(frames)
    times = np.arange(t_len) / args.fps
    print(f"rendered {t_len} frames in {time.perf_counter() - t0:.0f} s")
    if args.save:
        from flame_tracker.video.encode import VideoWriter

        with VideoWriter(args.save, fps=args.fps) as out:
            for f in frames:
                out.write(f)

    lmks = np.full((t_len, 68, 2), np.nan)
    iris = np.full((t_len, 10, 2), np.nan)
    with FaceFollower() as fol:
        for k, f in enumerate(frames):
            det = fol(f, times[k])
            if det is not None:
                lmks[k], iris[k] = det.lmks68, det.iris
    valid = np.isfinite(lmks).all((1, 2))
    from flame_tracker.model.embedding import detector_model

    fit_model = detector_model(model)
    h, w = frames[0].shape[:2]
    # bridging allowed across the whole turn (the default bridges 0.5 s and drops longer gaps), so
    # that its error can be measured on the same frames
    opts = TrackOptions(max_gap_s=4.0)
    source = frames_in_memory(frames)
    flow_time = [0.0, 0]

    def filler(identity, raw, valid_, cuts):
        t = time.perf_counter()
        out = flow_through_gaps(model, identity, raw, valid_, times, source, cuts=cuts)
        flow_time[0] += time.perf_counter() - t
        flow_time[1] += int(out[1].sum())
        return out

    runs = {}
    for name, gf in (("bridged", None), ("flow", filler)):
        runs[name] = track_landmarks(fit_model, lmks, valid, times, iris_px=iris, options=opts, image_size=(w, h),
                                     gap_filler=gf)
    gap = ~valid
    print(f"{t_len} frames, {int(valid.sum())} with landmarks, {int(gap.sum())} without "
          f"(turned {int((gap & ~occluded).sum())}, occluded {int((gap & occluded).sum())})")
    print(f"{'frames':<34} {'n':>4} {'bridged deg':>12} {'flow deg':>9}")
    err = {}
    for name, fit in runs.items():
        e = np.full(t_len, np.nan)
        rows = np.flatnonzero(fit.covered)
        e[rows] = rotation_error(fit.pose6[rows], fit.identity, R_true[rows])
        err[name] = e
    groups = [("without landmarks (all)", gap), ("  turned past the detector", gap & ~occluded),
              ("  occluded", gap & occluded), ("with landmarks", valid)]
    for label, m in groups:
        def mean(e, m=m):
            v = e[m]
            return f"{np.nanmean(v):.2f} ({int(np.isfinite(v).sum())})" if np.isfinite(v).any() else "-"
        print(f"{label:<34} {int(m.sum()):4d} {mean(err['bridged']):>12} {mean(err['flow']):>9}")
    print("per frame (yaw true, source, error bridged / flow):")
    src = runs["flow"].source
    for k in np.flatnonzero(gap):
        print(f"  frame {k:3d} yaw {yaw[k]:5.1f} {src[k]:<9} {err['bridged'][k]:6.2f} / {err['flow'][k]:6.2f}")

    def gap_mean(e):
        v = e[gap]
        return float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")

    # means over the frames each method covers (coverage printed)
    ms = 1000 * flow_time[0] / max(flow_time[1], 1)
    print(f"coverage of the frames without landmarks: bridged {np.isfinite(err['bridged'][gap]).mean():.0%}, "
          f"flow {np.isfinite(err['flow'][gap]).mean():.0%}")
    print(f"rot_deg_gap_bridged={gap_mean(err['bridged']):.2f} rot_deg_gap_flow={gap_mean(err['flow']):.2f} "
          f"gap_frames={int(gap.sum())} "
          f"flow_frames={int(runs['flow'].flow.sum()) if runs['flow'].flow is not None else 0} "
          f"rot_deg_landmarks={np.nanmean(err['flow'][valid]):.2f} flow_ms_per_frame={ms:.1f}")


if __name__ == "__main__":
    main()
