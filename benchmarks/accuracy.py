"""Accuracy against ground truth: synthetic 3-D truth, hand-annotated photos, one identity per person.

1. **Synthetic truth.** ``--n`` seeded scenes of the open ICT model (random identity ~ N(0, 1),
   expression presets, head yaw ±75°, pitch ±30°, roll ±20°, FOV 12–50°, face 10–70 % of the frame,
   512–1920 px, skin tones, soft to harsh SH light, textured backgrounds) are rendered by
   ``flame_tracker.evaluation.scenes`` and fitted by the **full** pipeline (MediaPipe detection,
   stage 1, stage 2; nothing taken from the truth). Per scene: ``shape_mm`` (neutral face vs truth
   over the face region, rigid alignment), ``posed_mm`` (posed face in camera space, similarity
   alignment), ``rot_deg`` (geodesic head-rotation error), ``nme_fit``/``nme_det`` (fitted / detected
   68 points vs the true projected ones, normalised by the frontal-equivalent inter-ocular distance),
   ``expr_mae`` (ICT weights), ``yaw_gain`` (slope of fitted on true yaw). Means per yaw bucket.
   ``--photometric N`` also refines the first N detected scenes photometrically.
2. **Several photos of one person** (``--multi``): one synthetic identity under 8 random views and
   expressions; shape error with 1, 2, 4, 8 photos fitted jointly (``Tracker.fit_same_person``).
3. **Annotated photos:** 68-point NME (outer inter-ocular) against the hand annotations in
   ``images/gt68`` (one person, 4 photos) and ``300w_image_0010``: detector vs fit, per region.
4. **Identity consistency on real people:** neutral faces fitted to single photos; the 4 gt68 photos
   are one person, 4 frames of each shared video one person each, the other photos one person
   each. ``identity_ratio`` = mean distance between fits of the same person / between different
   people (face region, rigid alignment; lower is better, 1 = the identity says nothing). The video
   tracker's identity fitted from the first half of each clip against the second half (mm).

Last line: ``shape_mm=… shape_mm_multi4=… posed_mm=… rot_deg=… identity_ratio=… nme_fit=… nme_det=…``
(``nme_*`` from the annotated photos).

Usage: ``python benchmarks/accuracy.py [--n 48] [--photometric 6] [--plots DIR] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from flame_tracker.evaluation.metrics import face_region_mask, identity_ratio, mesh_distance_mm
from flame_tracker.evaluation.runs import (
    annotated_photos,
    evaluate_annotated,
    evaluate_scene,
    fit_neutral,
    neutral_vertices,
    summarise,
    video_identity_halves,
)
from flame_tracker.evaluation.scenes import render_scene, sample_scenes
from flame_tracker.fitting.stage2 import REFERENCE_PRIORS, Stage2Options
from flame_tracker.paths import data_dir
from flame_tracker.tracker import DEFAULT_STAGE2, Tracker
from flame_tracker.video.track import VIDEO_STAGE2, TrackOptions


def table(title: str, summary: dict[str, dict[str, float]]) -> str:
    cols = ("n", "detected", "shape_mm", "shape_mm_mean_face", "posed_mm", "rot_deg", "yaw_gain", "nme_fit",
            "nme_det", "expr_mae", "neutral_max")
    heads = {"shape_mm_mean_face": "mean_face"}
    lines = [title, f"{'yaw':<8}" + "".join(f"{heads.get(c, c):>12}" for c in cols)]
    for name, row in summary.items():
        lines.append(f"{name:<8}" + "".join(f"{row.get(c, math.nan):>12.3f}" for c in cols))
    return "\n".join(lines)


def run_synthetic(tracker: Tracker, n: int, seed: int, photometric: int) -> tuple[list, list]:
    mask = face_region_mask(tracker.model)
    specs = sample_scenes(tracker.model, n, seed=seed)
    evals, phot = [], []
    for spec in specs:
        ev = evaluate_scene(tracker, spec, mask)
        evals.append(ev)
        if ev.detected and len(phot) < photometric:
            phot.append(evaluate_scene(tracker, spec, mask, photometric=True))
    return evals, phot


def run_multi(tracker: Tracker, seed: int, counts=(1, 2, 4, 8), subjects: int = 3) -> dict[int, float]:
    """Shape error (mm) of one synthetic identity fitted from 1, 2, 4, 8 photos jointly."""
    mask = face_region_mask(tracker.model)
    errs: dict[int, list[float]] = {c: [] for c in counts}
    for s in range(subjects):
        specs = sample_scenes(tracker.model, max(counts), seed=seed + 1000 + s, yaw_max=45.0,
                              face_frac=(0.25, 0.6))
        for sp in specs[1:]:
            sp.shape = specs[0].shape  # one person in every photo
        images = [render_scene(tracker.model, sp)[0] for sp in specs]
        truth = neutral_vertices(tracker.model, specs[0].shape)
        for c in counts:
            results = tracker.fit_same_person(images[:c])
            errs[c].append(mesh_distance_mm(neutral_vertices(tracker.model, results[0].shape), truth, mask))
    return {c: float(np.mean(v)) for c, v in errs.items()}


def video_frames(path: Path, k: int) -> list[np.ndarray]:
    """``k`` frames spread evenly over a video (RGB)."""
    from flame_tracker.video.decode import VideoReader, probe

    total = probe(path).n_frames
    want = set(np.linspace(0, total - 1, k + 2).round().astype(int)[1:-1].tolist())
    return [f.image for f in VideoReader(path) if f.index in want]


def run_identity(tracker: Tracker, data: Path, frames_per_video: int = 4) -> tuple[float, float, float, int]:
    mask = face_region_mask(tracker.model)
    neutrals, person = [], []
    for img, _ in annotated_photos(data):
        neutrals.append(fit_neutral(tracker, img))
        person.append("lfpw" if img.parent.name == "gt68" else img.stem)
    for p in sorted((data / "images").glob("ffhq_*.png")) + [data / "images" / "woman.jpg"]:
        if p.exists():
            neutrals.append(fit_neutral(tracker, p))
            person.append(p.stem)
    for v in sorted((data / "videos").glob("*.mp4")):
        for fr in video_frames(v, frames_per_video):
            try:
                neutrals.append(fit_neutral(tracker, fr))
                person.append(v.stem)
            except Exception:  # noqa: BLE001  (a frame without a face: skip it)
                continue
    ratio, same, diff = identity_ratio(neutrals, person, mask)
    return ratio, same, diff, len(neutrals)


def plots(out: Path, evals, multi: dict[int, float] | None, images: list[tuple[str, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    det = [e for e in evals if e.detected]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, label in zip(axes, ("rot_deg", "posed_mm", "shape_mm"),
                              ("head rotation error (deg)", "posed face error (mm)", "neutral shape error (mm)")):
        ax.scatter([abs(e.yaw_true) for e in det], [getattr(e, key) for e in det], s=14)
        ax.set_xlabel("|true yaw| (deg)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "error_by_yaw.png", dpi=110)
    plt.close(fig)
    if multi:
        fig, ax = plt.subplots(figsize=(4.2, 3.4))
        ax.plot(list(multi), list(multi.values()), "o-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("photos of the person")
        ax.set_ylabel("neutral shape error (mm)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / "error_by_photos.png", dpi=110)
        plt.close(fig)
    if images:
        import cv2

        tiles = [cv2.putText(cv2.resize(img, (320, 320)), name, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                             (255, 255, 255), 1, cv2.LINE_AA) for name, img in images]
        while len(tiles) % 4:
            tiles.append(np.zeros_like(tiles[0]))
        rows = [np.concatenate(tiles[i : i + 4], 1) for i in range(0, len(tiles), 4)]
        cv2.imwrite(str(out / "worst_cases.jpg"), cv2.cvtColor(np.concatenate(rows, 0), cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 85])


def worst_overlays(tracker: Tracker, evals, seed: int, n: int, k: int = 8) -> list[tuple[str, np.ndarray]]:
    """Overlays of the ``k`` scenes with the largest rotation error (cropped around the face)."""
    specs = sample_scenes(tracker.model, n, seed=seed)
    det = sorted((e for e in evals if e.detected), key=lambda e: -e.rot_deg)[:k]
    out = []
    for e in det:
        img, truth = render_scene(tracker.model, specs[e.index])
        res = tracker.fit_image(img)
        ov = res.overlay(img)
        x0, y0, side = (int(round(v)) for v in res.crop)
        pad = np.pad(ov, ((side, side), (side, side), (0, 0)))
        out.append((f"#{e.index} yaw {e.yaw_true:.0f} err {e.rot_deg:.1f}deg",
                    pad[y0 + side : y0 + 2 * side, x0 + side : x0 + 2 * side]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="synthetic scenes (landmark mode)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--photometric", type=int, default=6, help="scenes also refined photometrically")
    ap.add_argument("--no-multi", action="store_true", help="skip the several-photos experiment")
    ap.add_argument("--no-real", action="store_true", help="skip the annotated-photo and identity checks")
    ap.add_argument("--plots", type=Path, default=None, help="write error plots and a worst-case sheet here")
    ap.add_argument("--json", type=Path, default=None, help="write every measurement as JSON")
    ap.add_argument("--mesh-depth", type=float, default=None,
                    help="Tracker mesh_depth (default: the Tracker's; 0 = the landmark fit's rotation)")
    ap.add_argument("--baseline", action="store_true",
                    help="measure the first version of the pipeline: principal point at the crop centre, 20° "
                    "over the crop, the model's own 68-point embedding, 0.025·Σexp² prior, shape prior 0.1")
    ap.add_argument("--embedding", choices=("detector", "views", "model"), default="detector",
                    help="landmark embedding the fit uses (Tracker landmark_embedding)")
    ap.add_argument("--landmarks", choices=("68", "dense"), default="68",
                    help="points stage 2 fits: the 68 iBUG points or MediaPipe's dense mesh")
    ap.add_argument("--fit-rigid", action="store_true", help="stage 2 also refines the head's rigid pose")
    ap.add_argument("--stage2", action="append", default=[], metavar="KEY=VALUE",
                    help="a single-photo Stage2Options setting to try, e.g. w_shape=0.1 (repeatable)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    data = data_dir()
    report: dict = {}
    # the first version: crop-centred camera, 20° over the crop, ICT's own 68 points, the reference's
    # expression prior centred at zero, shape prior 0.1
    kw = dict(principal_point="crop", image_fov=None, landmark_embedding="model", expr_prior="zero",
              mesh_depth=0.0, stage2=Stage2Options(w_contour=200.0, **REFERENCE_PRIORS)) if args.baseline else \
        dict(landmark_embedding=args.embedding, landmarks=args.landmarks)
    if args.fit_rigid:
        kw["stage2"] = replace(kw.get("stage2") or DEFAULT_STAGE2, fit_rigid=True)
    if args.stage2:
        values = dict(item.split("=", 1) for item in args.stage2)
        kw["stage2"] = replace(kw.get("stage2") or DEFAULT_STAGE2, **{k: float(v) for k, v in values.items()})
    if args.mesh_depth is not None and not args.baseline:
        kw["mesh_depth"] = args.mesh_depth
    with Tracker(**kw) as tracker:
        evals, phot = run_synthetic(tracker, args.n, args.seed, args.photometric)
        syn = summarise(evals)
        report["synthetic"] = {"summary": syn, "scenes": [asdict(e) for e in evals]}
        print(table(f"Synthetic scenes, landmark mode (ICT, seed {args.seed}, {args.n} scenes)", syn))
        if phot:
            ps = summarise(phot)
            report["photometric"] = {"summary": ps, "scenes": [asdict(e) for e in phot]}
            print()
            print(table(f"The first {len(phot)} detected scenes, photometric refinement", ps))
        multi = None
        if not args.no_multi and hasattr(tracker, "fit_same_person"):
            multi = run_multi(tracker, args.seed)
            report["multi"] = multi
            print("\nOne synthetic identity (3 subjects), shape_mm by number of photos fitted jointly:")
            print("  " + "  ".join(f"{c} photos: {v:.3f}" for c, v in multi.items()))
        nme_fit = nme_det = ratio = math.nan
        if not args.no_real:
            rows = [evaluate_annotated(tracker, img, gt) for img, gt in annotated_photos(data)]
            regions = list(rows[0].det)
            print("\nAnnotated photos: 68-point NME (% of outer inter-ocular), detector / fit (the model's own 68) "
                  "/ fit (the detector's convention, fit_lmks_68_detector_px)")
            print(f"{'photo':<18}" + "".join(f"{r:>20}" for r in regions))
            for r in rows:
                print(f"{r.name:<18}" + "".join(
                    f"{100 * r.det[k]:>8.2f}/{100 * r.fit[k]:.2f}/{100 * r.fit_det[k]:<5.2f}" for k in regions))
            mean = {k: (np.mean([r.det[k] for r in rows]), np.mean([r.fit[k] for r in rows]),
                        np.mean([r.fit_det[k] for r in rows])) for k in regions}
            print(f"{'mean':<18}" + "".join(f"{100 * d:>8.2f}/{100 * f:.2f}/{100 * g:<5.2f}"
                                            for d, f, g in mean.values()))
            nme_det, nme_fit, _ = mean["all"]
            report["annotated"] = [asdict(r) for r in rows]
            ratio, same, diff, count = run_identity(tracker, data)
            report["identity"] = {"ratio": ratio, "same_mm": same, "different_mm": diff, "fits": count}
            print(f"\nIdentity on real people ({count} single-photo fits): same person {same:.3f} mm, "
                  f"different people {diff:.3f} mm, identity_ratio {ratio:.3f}")
            ref = TrackOptions(image_fov=None, stage2=replace(VIDEO_STAGE2, **REFERENCE_PRIORS))
            vkw = dict(options=ref, blendshapes=False) if args.baseline else {}
            halves = {v.stem: video_identity_halves(tracker, v, **vkw) for v in sorted((data / "videos").glob("*.mp4"))}
            report["identity"]["video_halves_mm"] = halves
            print("Video identity (flame-tracker video's keyframe fit), first half vs second half of each clip: "
                  + ", ".join(f"{k} {v:.3f} mm" for k, v in halves.items()))
        if args.plots:
            plots(args.plots, evals, multi, worst_overlays(tracker, evals, args.seed, args.n))
            print(f"plots -> {args.plots}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
    a = syn["all"]
    multi4 = multi.get(4, math.nan) if multi else math.nan
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    print(f"shape_mm={a['shape_mm']:.3f} shape_mm_multi4={multi4:.3f} posed_mm={a['posed_mm']:.3f} "
          f"rot_deg={a['rot_deg']:.3f} identity_ratio={ratio:.3f} nme_fit={100 * nme_fit:.3f} "
          f"nme_det={100 * nme_det:.3f}")


if __name__ == "__main__":
    main()
