"""Detector landmark embeddings and dense fitting, measured against ground truth.

1. **Re-projection on held-out renders.** The accuracy benchmark's seeded scenes (seed 0, disjoint
   from the embedding's renders, seed 7001) are rendered and detected; the embedding's points on the
   *true* head (true identity, expression and camera) are projected and compared with MediaPipe's
   detections: median distance in % of the face size (height of the true 68-point box), for the
   static embedding and the yaw table, for MediaPipe's 468 points and the 68 iBUG points, with the
   model's own 68 points as the reference's case.
2. **The 68-point subset against the model's own 68** (ICT's hand-made vertex list): mean distance on
   the mean head per region, mm (where MediaPipe's convention differs from the model's).
3. **FLAME topology** (``models/flame_topology``: FLAME's real mesh, the sample head, no bases): the
   embedding derived on it against FLAME's own static 68 points and dynamic contour, mm on the head.
4. **Dense against 68** on the same synthetic scenes through the full pipeline (``Tracker(landmarks=
   "68" | "dense")``): ``shape_mm``, ``posed_mm``, ``rot_deg`` per yaw bucket, the 68-point NME
   against the hand annotations of ``images/gt68`` per region, and the stage-2 time per image.
5. **Dense against 68 in the video tracker** (``TrackOptions(landmarks="68" | "dense")``, the same
   detections): the synthetic head turn of ``benchmarks/head_turn.py`` (rotation error on its frames
   with landmarks, against the truth) and the shared clips (jitter: RMS acceleration of the raw
   per-frame pose and of the fitted 68 points), with the reprojection error, the tracker's time and
   the time of its per-frame stage 2.

Last line: ``embed_reproj_pct=… shape_mm_68=… shape_mm_dense=… posed_mm_68=… posed_mm_dense=…
rot_deg_68=… rot_deg_dense=… stage2_ratio=… rot_deg_video_68=… rot_deg_video_dense=…
video_fit_ratio=… video_stage2_ratio=…`` (``embed_reproj_pct``: the yaw table, 468 points;
``video_fit_ratio``: the whole ``track_landmarks`` call, dense over 68; ``video_stage2_ratio``: its
per-frame stage 2 alone).

Usage: ``python benchmarks/embedding.py [--n 48] [--no-fit] [--no-video] [--flame-renders 120]``
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import numpy as np
import torch

from flame_tracker.detection import FaceLandmarker
from flame_tracker.detection.layout import GROUPS68
from flame_tracker.evaluation.metrics import face_region_mask
from flame_tracker.evaluation.runs import (
    annotated_photos,
    evaluate_annotated,
    evaluate_scene,
    summarise,
)
from flame_tracker.evaluation.scenes import render_scene, sample_scenes
from flame_tracker.model import load_model
from flame_tracker.model.embedding import (
    DENSE,
    IBUG68,
    ViewPoints,
    shipped_embedding,
    view_yaw_deg,
)
from flame_tracker.paths import data_dir
from flame_tracker.tracker import Tracker


def reprojection(model, emb, n: int, seed: int) -> dict[str, float]:
    """Median re-projection error (% of face height) of embedding points on the true heads."""
    views = {"468": ViewPoints(model, emb, DENSE), "68": ViewPoints(model, emb, IBUG68)}
    errs: dict[str, list[float]] = {k: [] for k in ("468 static", "468 yaw table", "68 static", "68 yaw table",
                                                     "68 model's own")}
    with FaceLandmarker(None, mode="image") as lm:
        for spec in sample_scenes(model, n, seed=seed):
            img, truth = render_scene(model, spec)
            det = lm.detect(img)
            if det is None:
                continue
            params = {k: torch.as_tensor(v, dtype=model.dtype)[None] for k, v in (("shape", spec.shape),
                                                                                    ("expr", spec.expr))}
            centre = truth.R @ truth.lmks68_3d.mean(0) + truth.t
            yaw = view_yaw_deg(torch.as_tensor(truth.R)[None], torch.as_tensor(centre)[None]).to(model.dtype)
            size = float(np.ptp(truth.lmks68_px[:, 1]))

            def px(points: torch.Tensor, truth=truth) -> np.ndarray:
                cam = points[0].double().numpy() @ truth.R.T + truth.t
                return cam[:, :2] / cam[:, 2:] * truth.K[0, 0] + truth.K[:2, 2]

            for name, target in (("468", det.points478[:468, :2]), ("68", det.lmks68)):
                static, viewed = views[name](params, yaw)
                for kind, pts in (("static", static), ("yaw table", viewed)):
                    d = np.linalg.norm(px(pts) - target, axis=1)
                    errs[f"{name} {kind}"].append(100 * float(np.median(d)) / size)
            own = np.linalg.norm(truth.lmks68_px - det.lmks68, axis=1)
            errs["68 model's own"].append(100 * float(np.median(own)) / size)
    return {k: float(np.median(v)) for k, v in errs.items()}


def subset_vs_own(model, emb) -> dict[str, float]:
    """Mean distance (mm, mean head) between the derived 68 iBUG points and the model's own, per region."""
    tpl, faces = model.v_template.double().numpy(), model.faces.numpy()
    derived = np.einsum("pi,pij->pj", emb.static_bary[IBUG68], tpl[faces[emb.static_faces_idx[IBUG68]]])
    own = np.einsum("pi,pij->pj", model.lmk_bary.double().numpy(), tpl[faces[model.lmk_faces_idx.numpy()]])
    d = np.linalg.norm(derived - own, axis=1) * 1000
    return {name: float(d[sl].mean()) for name, sl in GROUPS68.items()} | {"all": float(d.mean())}


def flame_topology_check(folder, n_renders: int, seed: int = 7001) -> dict[str, float]:
    """Derive the embedding on the real FLAME mesh (``flame_topology``: the sample head, no bases) and
    compare it with FLAME's own static and dynamic embeddings: mean distance on the head, mm."""
    from flame_tracker.model.embedding import derive_detector_embedding
    from flame_tracker.model.fixtures import flame_topology_model

    model = flame_topology_model(folder)
    with FaceLandmarker(None, mode="image") as lm:
        emb = derive_detector_embedding(model, lm, n_renders=n_renders, seed=seed)
    tpl, faces = model.v_template.double().numpy(), model.faces.numpy()

    def pos(f_idx, bary):
        return np.einsum("...i,...ij->...j", bary, tpl[faces[f_idx]])

    d68 = np.linalg.norm(pos(emb.static_faces_idx[IBUG68], emb.static_bary[IBUG68])
                         - pos(model.lmk_faces_idx.numpy(), model.lmk_bary.double().numpy()), axis=1) * 1000
    out = {f"static {name}": float(d68[sl].mean()) for name, sl in GROUPS68.items()} | {"static all": float(d68.mean())}
    # FLAME's dynamic contour (DECA's lookup: row y for yaw y >= 0, row 39 - y for y < 0) against the
    # yaw table's jaw points, under both sign conventions of yaw (the folder's README says to check)
    dyn = pos(model.dyn_lmk_faces_idx.numpy(), model.dyn_lmk_bary.double().numpy())  # [79, 17, 3]
    jaw = pos(emb.faces_idx[:, IBUG68][:, :17], emb.bary[:, IBUG68][:, :17])  # [B, 17, 3]
    for sign in (1, -1):
        dist = []
        for b, yaw in enumerate(emb.yaw_deg):
            y = int(np.clip(sign * yaw, -39, 39))
            row = y if y >= 0 else 39 - y
            if abs(yaw) <= 30:
                dist.append(np.linalg.norm(jaw[b] - dyn[row], axis=1).mean() * 1000)
        out[f"contour vs dynamic, sign {sign:+d}"] = float(np.mean(dist))
    out["renders detected"] = float(emb.renders)
    return out


def fit_compare(n: int, seed: int, **tracker_kw) -> tuple[dict, dict, float]:
    """Synthetic summary, annotated-photo NME per region and mean stage-2 seconds of one tracker setting."""
    with Tracker(**tracker_kw) as tracker:
        mask = face_region_mask(tracker.model)
        evals, stage2 = [], []
        for spec in sample_scenes(tracker.model, n, seed=seed):
            evals.append(evaluate_scene(tracker, spec, mask))
        rows = [evaluate_annotated(tracker, img, gt) for img, gt in annotated_photos(data_dir())]
        for img, _ in annotated_photos(data_dir()):
            stage2.append(tracker.fit_image(img).timings["stage2"])
    nme = {k: float(np.mean([r.fit[k] for r in rows])) for k in rows[0].fit}
    return summarise(evals), nme, float(np.median(stage2))


@contextlib.contextmanager
def _stage2_clock():
    """Seconds spent in the video tracker's per-frame stage 2 (the identity fit's stage 2, on the
    68 points in both settings, not counted), accumulated in the yielded one-element list."""
    from flame_tracker.video import track

    spent = [0.0]
    inner = track._stage2

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        if not kwargs.get("identity"):
            spent[0] += time.perf_counter() - t0
        return out

    track._stage2 = timed
    try:
        yield spent
    finally:
        track._stage2 = inner


def video_compare(model) -> dict[str, dict[str, float]]:
    """Part 5: per clip and setting, rotation error (synthetic turn) or raw jitter (shared clips),
    reprojection error and fitting seconds of ``track_landmarks`` on the same detections."""
    from head_turn import make_video, rotation_error

    from flame_tracker.detection import BLENDSHAPE_NAMES
    from flame_tracker.detection.search import FaceFollower
    from flame_tracker.model.embedding import detector_model
    from flame_tracker.video.decode import VideoReader
    from flame_tracker.video.track import TrackOptions, track_landmarks

    fm = detector_model(model)
    frames, R_true, _, _ = make_video(model, 90, 30.0)
    clips = {"synthetic turn": (frames, np.arange(len(frames)) / 30.0, R_true)}
    for name in ("talking_ex1", "talking_ex3", "talking_wojtek"):
        read = list(VideoReader(data_dir() / "videos" / f"{name}.mp4", max_frames=240))
        clips[name] = ([f.image for f in read], np.array([f.time_s for f in read]), None)
    out = {}
    for name, (images, times, truth) in clips.items():
        n = len(images)
        lm, iris, dense = np.full((n, 68, 2), np.nan), np.full((n, 10, 2), np.nan), np.full((n, 478, 2), np.nan)
        scores = np.zeros((n, len(BLENDSHAPE_NAMES)))
        with FaceFollower() as follower:  # as the video pipeline detects
            for k, image in enumerate(images):
                det = follower(image, times[k])
                if det is not None:
                    lm[k], iris[k], dense[k, :len(det.points478)] = det.lmks68, det.iris, det.points478[:, :2]
                    scores[k] = det.blendshapes
        valid = np.isfinite(lm).all((1, 2))
        h, w = images[0].shape[:2]
        for mode in ("68", "dense"):
            t0 = time.perf_counter()
            with _stage2_clock() as stage2_s:
                fit = track_landmarks(fm, lm, valid, times, iris_px=iris,
                                      options=TrackOptions(landmarks=mode, flow=False), image_size=(w, h),
                                      blendshapes=scores, blendshape_names=BLENDSHAPE_NAMES, dense_px=dense)
            row = {"frames": float(valid.sum()), "seconds": time.perf_counter() - t0, "stage2_s": stage2_s[0],
                   "reproj_px": float(np.nanmean(fit.reproj_px))}
            if truth is not None:
                row["rot_deg"] = float(rotation_error(fit.pose6[valid], fit.identity, truth[valid]).mean())
            else:
                assert fit.jitter_raw is not None
                row.update(pose_jitter=fit.jitter_raw.pose_acc_deg, lmk_jitter=fit.jitter_raw.lmk_acc_px)
            out[f"{name} / {mode}"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="synthetic scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fit", action="store_true", help="skip the dense-vs-68 fits (part 4)")
    ap.add_argument("--no-video", action="store_true", help="skip the dense-vs-68 video tracking (part 5)")
    ap.add_argument("--flame-renders", type=int, default=120,
                    help="renders of the FLAME-topology sample head (part 4; 0 skips it)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    model = load_model()
    emb = shipped_embedding(model)
    if emb is None:
        raise SystemExit("no detector embedding for the model (flame-tracker embed)")
    print(f"embedding: {emb.renders} renders (seed {emb.seed}), {len(emb.yaw_deg)} yaw bins, "
          f"median spread {np.median(emb.spread_mm):.2f} mm")

    rep = reprojection(model, emb, args.n, args.seed)
    print("\nRe-projection on held-out renders (true head), median % of face height:")
    for k, v in rep.items():
        print(f"  {k:<16} {v:6.2f}")
    own = subset_vs_own(model, emb)
    print("\nDerived 68 vs the model's own 68 (mean head), mm: "
          + "  ".join(f"{k} {v:.1f}" for k, v in own.items()))

    topo = data_dir() / "models" / "flame_topology"
    if args.flame_renders and topo.is_dir():
        ft = flame_topology_check(topo, args.flame_renders)
        print(f"\nFLAME topology ({topo.name}: the sample head, {ft.pop('renders detected'):.0f} detected renders), "
              "derived vs FLAME's own embedding, mean distance mm:")
        print("  " + "  ".join(f"{k} {v:.1f}" for k, v in ft.items()))

    out = {"68": (math.nan,) * 3, "dense": (math.nan,) * 3}
    ratio = math.nan
    if not args.no_fit:
        res = {lm: fit_compare(args.n, args.seed, landmarks=lm) for lm in ("68", "dense")}
        print(f"\nFull pipeline, {args.n} synthetic scenes (seed {args.seed}):")
        print(f"{'':<8}{'bucket':<8}{'detected':>9}{'shape_mm':>10}{'posed_mm':>10}{'rot_deg':>9}")
        for lm, (syn, _, _) in res.items():
            for bucket, row in syn.items():
                print(f"{lm:<8}{bucket:<8}{row['detected']:>9.0f}{row['shape_mm']:>10.3f}{row['posed_mm']:>10.3f}"
                      f"{row['rot_deg']:>9.3f}")
        print("\nAnnotated photos (gt68), fitted 68-point NME % per region:")
        regions = list(res["68"][1])
        print(f"{'':<8}" + "".join(f"{r:>12}" for r in regions))
        for lm, (_, nme, _) in res.items():
            print(f"{lm:<8}" + "".join(f"{100 * nme[r]:>12.2f}" for r in regions))
        print("\nStage 2 per image (median over the annotated photos): "
              + ", ".join(f"{lm} {1000 * t:.1f} ms" for lm, (_, _, t) in res.items()))
        ratio = res["dense"][2] / res["68"][2]
        out = {lm: (r[0]["all"]["shape_mm"], r[0]["all"]["posed_mm"], r[0]["all"]["rot_deg"]) for lm, r in res.items()}
    video = {}
    if not args.no_video:
        video = video_compare(model)
        print("\nVideo tracker, dense against 68 on the same detections (raw per-frame fits; jitter: RMS "
              "acceleration, deg/frame² and px/frame²):")
        print(f"{'clip / points':<30}{'frames':>7}{'rot_deg':>9}{'pose jitter':>12}{'lmk jitter':>11}"
              f"{'reproj px':>10}{'fit s':>7}{'stage 2 s':>10}")
        for key, r in video.items():
            nan = math.nan
            print(f"{key:<30}{r['frames']:>7.0f}{r.get('rot_deg', nan):>9.2f}{r.get('pose_jitter', nan):>12.3f}"
                  f"{r.get('lmk_jitter', nan):>11.2f}{r['reproj_px']:>10.2f}{r['seconds']:>7.2f}"
                  f"{r['stage2_s']:>10.2f}")
    vrot = {m: video.get(f"synthetic turn / {m}", {}).get("rot_deg", math.nan) for m in ("68", "dense")}
    vtime = {m: sum(r["seconds"] for k, r in video.items() if k.endswith(f"/ {m}")) for m in ("68", "dense")}
    vstage2 = {m: sum(r["stage2_s"] for k, r in video.items() if k.endswith(f"/ {m}")) for m in ("68", "dense")}
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    print(f"embed_reproj_pct={rep['468 yaw table']:.3f} shape_mm_68={out['68'][0]:.3f} "
          f"shape_mm_dense={out['dense'][0]:.3f} posed_mm_68={out['68'][1]:.3f} posed_mm_dense={out['dense'][1]:.3f} "
          f"rot_deg_68={out['68'][2]:.3f} rot_deg_dense={out['dense'][2]:.3f} stage2_ratio={ratio:.2f} "
          f"rot_deg_video_68={vrot['68']:.3f} rot_deg_video_dense={vrot['dense']:.3f} "
          f"video_fit_ratio={vtime['dense'] / vtime['68'] if vtime['68'] else math.nan:.2f} "
          f"video_stage2_ratio={vstage2['dense'] / vstage2['68'] if vstage2['68'] else math.nan:.2f}")


if __name__ == "__main__":
    main()
