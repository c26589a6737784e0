"""Multi-view accuracy on synthetic captures with known truth (issue: calibrated multi-view capture).

Each subject (random identity, expressions cycling through the presets, the head turning and
nodding) is rendered by a ring of calibrated cameras (``evaluation.multiview.synthetic_capture``),
detected with MediaPipe in every view (nothing taken from the truth), then fitted

* by ``flame-tracker multiview`` (every view, one identity, the cameras known), and
* view by view as a monocular video (``video.track.track_landmarks``, told the true field of view):
  the best single view (the camera whose identity came out closest to the truth) and the mean over
  all views fitted independently;
* by the multi-view fit with the cameras estimated from the face (``multiview.estimate``: the field
  of view given, the cameras' positions not);
* both refined against the pictures (``multiview.photometric``, ``--photometric``: photo-consistency
  between the views).

Errors: the neutral face (identity) against the truth over the face region after rigid alignment
(mm), the head's rotation in the world (degrees), the expression (mean |w - w_true|, ICT).

    python benchmarks/multiview.py [--subjects 4] [--cameras 6] [--steps 6]

The last line: ``shape_mm_1view=… shape_mm_indep=… shape_mm_multiview=… rot_deg_1view=…
rot_deg_multiview=… ratio=… shape_mm_estimated_cameras=… shape_mm_photometric=… rot_deg_photometric=…
ratio_photometric=… shape_mm_estimated_photometric=…`` (ratio = multi-view / best single view, without
and with the photometric refinement; target <= 0.5). Before it, the real check: one person's photos
fitted by ``--same-person`` and as a multi-view capture with estimated cameras (:func:`real_check`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def monocular(fit_model, model, lmks, iris, seen, times, cam, blendshapes, names):
    """One camera's frames tracked as a monocular video (true FOV): (neutral shape, world rotations)."""
    from flame_tracker.camera import to_opencv
    from flame_tracker.video.track import TrackOptions, track_landmarks

    fov = float(np.degrees(2 * np.arctan(0.5 * max(cam.width, cam.height) / cam.K[0, 0])))
    opts = TrackOptions(image_fov=fov, n_keyframes=min(6, int(seen.sum())), flow=False)
    fit = track_landmarks(fit_model, np.nan_to_num(lmks), seen, times, iris_px=np.nan_to_num(iris), options=opts,
                          image_size=(cam.width, cam.height), blendshapes=blendshapes, blendshape_names=names)
    ident = fit.identity
    _, R, _ = to_opencv(torch.as_tensor(fit.raw["pose6"]), torch.full((len(times),), float(ident.fov),
                                                                      dtype=torch.float64), ident.camera_crop)
    R_world = np.einsum("ij,tjk->tik", cam.R.T, R.numpy())
    return ident.shape, R_world, fit.expr


def real_check(tracker) -> dict[str, float]:
    """The four annotated photos of one person (``images/gt68``, taken at different times) as a
    one-timestep capture with the cameras estimated from the face, against ``--same-person`` on the
    same photos: the two identities' distance (face region, mm) beside the distance to other people
    (the other shared photos fitted alone)."""
    import itertools
    import shutil
    import tempfile
    from pathlib import Path

    from flame_tracker.evaluation.metrics import face_region_mask, mesh_distance_mm
    from flame_tracker.evaluation.runs import neutral_vertices
    from flame_tracker.multiview.pipeline import track_multiview
    from flame_tracker.paths import data_dir

    root = data_dir() / "images"
    photos = sorted((root / "gt68").glob("*.png"))
    others = sorted(root.glob("ffhq_*.png")) + [root / "woman.jpg", root / "300w_image_0010.png"]
    model, mask = tracker.model, face_region_mask(tracker.model)

    def dist(a, b) -> float:
        return mesh_distance_mm(neutral_vertices(model, np.ravel(a)), neutral_vertices(model, np.ravel(b)), mask)

    same = np.ravel(tracker.fit_same_person([str(p) for p in photos])[0].shape)
    other = [np.ravel(tracker.fit_image(str(p)).shape) for p in others]
    with tempfile.TemporaryDirectory() as tmp:
        cap = Path(tmp) / "capture"
        for i, p in enumerate(photos):
            (cap / f"view_{i}").mkdir(parents=True)
            shutil.copy(p, cap / f"view_{i}" / f"000000{p.suffix}")
        track_multiview(cap, "estimate", Path(tmp) / "out", overlay=False, meshes=False)
        mv = np.load(Path(tmp) / "out" / "tracking.npz")["shape"][0]
    return {"same_vs_multiview": dist(same, mv), "same_vs_others": float(np.mean([dist(same, o) for o in other])),
            "multiview_vs_others": float(np.mean([dist(mv, o) for o in other])),
            "others_pairwise": float(np.mean([dist(a, b) for a, b in itertools.combinations(other, 2)]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--cameras", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fov", type=float, default=30.0, help="the rig's field of view, for the estimated cameras")
    ap.add_argument("--points", choices=["68", "dense"], default="68",
                    help="the detector points the multi-view fit uses (68 iBUG, or MediaPipe's 468-point mesh)")
    args = ap.parse_args()

    from scipy.spatial.transform import Rotation

    from flame_tracker.evaluation.metrics import face_region_mask, mesh_distance_mm, rotation_error_deg
    from flame_tracker.evaluation.multiview import synthetic_capture
    from flame_tracker.evaluation.runs import neutral_vertices
    from flame_tracker.model.embedding import ViewPoints
    from flame_tracker.multiview.estimate import fit_with_estimated_cameras, unplaced_rig
    from flame_tracker.multiview.fit import MultiviewOptions, PointSet, fit_multiview
    from flame_tracker.multiview.photometric import refine_multiview
    from flame_tracker.multiview.pipeline import detect_views
    from flame_tracker.tracker import Tracker

    rows = []
    with Tracker() as tracker, Tracker(image_fov=args.fov) as est_tracker:
        model, fm = tracker.model, tracker.fit_model
        emb = tracker._embedding
        if args.points == "dense":
            from flame_tracker.model.embedding import DENSE, with_landmarks

            mv_model, views = with_landmarks(model, emb, DENSE), ViewPoints(model, emb, DENSE)
            pset = PointSet.dense(emb, MultiviewOptions())
        else:
            mv_model, views, pset = fm, ViewPoints(model, emb), None
        mask = face_region_mask(model)
        print(f"{'subject':>7} {'views seen':>10} {'mean face':>9} {'best 1 view':>11} {'all views indep.':>16} "
              f"{'multi-view':>10} | {'rot 1 view':>10} {'rot multi':>9} | {'expr 1v':>7} {'expr mv':>7} "
              f"{'fit s':>6} | {'est. cams':>9} {'est s':>6} | {'+photo':>8} {'rot ph':>8} {'expr ph':>8} "
              f"{'ph s':>6} {'est.+photo':>10}")
        for k in range(args.subjects):
            seed = args.seed + k
            cap = synthetic_capture(model, args.cameras, args.steps, seed=seed)
            T, C = args.steps, args.cameras
            det = detect_views(tracker, ((t, t / 30.0, cap.images[t]) for t in range(T)), T, C)
            truth = cap.neutral
            t0 = time.perf_counter()
            pts = det.dense if args.points == "dense" else det.lmks
            fit = fit_multiview(mv_model, cap.rig, pts, det.seen, iris=det.iris, blendshapes=det.blendshapes,
                                blendshape_names=det.names, options=MultiviewOptions(smooth=False), views=views,
                                points=pset)
            fit_s = time.perf_counter() - t0

            def errors(f, cap=cap, truth=truth) -> tuple[float, float, float]:
                """A multi-view fit against the truth: identity (mm), rotation (degrees), expression."""
                rot = np.mean([rotation_error_deg(Rotation.from_rotvec(f.rotvec[t]).as_matrix(), cap.rotation[t])
                               for t in range(len(f.valid)) if f.valid[t]])
                return (mesh_distance_mm(neutral_vertices(model, f.shape), truth, mask), float(rot),
                        float(np.abs(f.expr - cap.expr)[f.valid].mean()))

            mv_shape, mv_rot, mv_expr = errors(fit)
            # refined against the pictures (flame-tracker multiview --photometric)
            t0 = time.perf_counter()
            ph = refine_multiview(model, mv_model, fit, cap.rig, lambda steps: [cap.images[t] for t in steps],
                                  det.lmks).fit
            ph_s = time.perf_counter() - t0
            ph_shape, ph_rot, ph_expr = errors(ph)
            # the same views with the cameras estimated from the face (intrinsics from the rig's field of
            # view; the extrinsics not given)
            t0 = time.perf_counter()
            rig0 = unplaced_rig([(c.name, c.width, c.height) for c in cap.rig.cameras], args.fov)
            est, est_fit = fit_with_estimated_cameras(
                est_tracker, rig0, det, lambda rig, seen: fit_multiview(
                    mv_model, rig, pts, seen, iris=det.iris, blendshapes=det.blendshapes,
                    blendshape_names=det.names, options=MultiviewOptions(smooth=False), views=views, points=pset),
                rounds=MultiviewOptions().camera_rounds)
            est_s = time.perf_counter() - t0
            est_shape = errors(est_fit)[0]
            est_ph = refine_multiview(model, mv_model, est_fit, est.rig, lambda steps: [cap.images[t] for t in steps],
                                      det.lmks).fit
            est_ph_shape = errors(est_ph)[0]
            singles = []
            for c, cam in enumerate(cap.rig.cameras):
                if det.seen[:, c].sum() < 2:
                    continue
                shape, R, expr = monocular(fm, model, det.lmks[:, c], det.iris[:, c], det.seen[:, c], det.times,
                                           cam, det.blendshapes[:, c], det.names)
                ok = det.seen[:, c]
                singles.append((mesh_distance_mm(neutral_vertices(model, shape), truth, mask),
                                np.mean([rotation_error_deg(R[t], cap.rotation[t]) for t in np.flatnonzero(ok)]),
                                float(np.abs(expr - cap.expr)[ok].mean())))
            singles = np.array(singles)
            best = singles[np.argmin(singles[:, 0])]
            row = dict(mean_face=mesh_distance_mm(neutral_vertices(model, np.zeros(model.n_shape)), truth, mask),
                       shape_1view=best[0], shape_indep=singles[:, 0].mean(), shape_mv=mv_shape,
                       rot_1view=best[1], rot_mv=mv_rot, expr_1view=best[2], expr_mv=mv_expr, fit_s=fit_s,
                       shape_est=est_shape, est_s=est_s, shape_ph=ph_shape, rot_ph=ph_rot, expr_ph=ph_expr,
                       ph_s=ph_s, shape_est_ph=est_ph_shape)
            rows.append(row)
            print(f"{seed:>7} {int(det.seen.sum()):>5}/{T * C:<4} {row['mean_face']:>9.2f} {row['shape_1view']:>11.2f} "
                  f"{row['shape_indep']:>16.2f} {row['shape_mv']:>10.2f} | {row['rot_1view']:>10.2f} "
                  f"{row['rot_mv']:>9.2f} | {row['expr_1view']:>7.3f} {row['expr_mv']:>7.3f} {fit_s:>6.2f} | "
                  f"{est_shape:>9.2f} {est_s:>6.1f} | {ph_shape:>8.2f} {ph_rot:>8.2f} {ph_expr:>8.3f} {ph_s:>6.1f} "
                  f"{est_ph_shape:>10.2f}", flush=True)
        real = real_check(tracker)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print(f"{'mean':>7} {'':>10} {mean['mean_face']:>9.2f} {mean['shape_1view']:>11.2f} {mean['shape_indep']:>16.2f} "
          f"{mean['shape_mv']:>10.2f} | {mean['rot_1view']:>10.2f} {mean['rot_mv']:>9.2f} | "
          f"{mean['expr_1view']:>7.3f} {mean['expr_mv']:>7.3f} {mean['fit_s']:>6.2f} | {mean['shape_est']:>9.2f} "
          f"{mean['est_s']:>6.1f} | {mean['shape_ph']:>8.2f} {mean['rot_ph']:>8.2f} {mean['expr_ph']:>8.3f} "
          f"{mean['ph_s']:>6.1f} {mean['shape_est_ph']:>10.2f}")
    print("\nReal photos: the four gt68 photos of one person (taken at different times), identity from "
          "--same-person and from a one-timestep multi-view fit with the cameras estimated from the face (mm, "
          f"face region): {real['same_vs_multiview']:.2f} apart; to the other people's single-photo identities: "
          f"{real['same_vs_others']:.2f} (same-person) / {real['multiview_vs_others']:.2f} (multi-view); other "
          f"people among themselves: {real['others_pairwise']:.2f}")
    print(f"shape_mm_1view={mean['shape_1view']:.3f} shape_mm_indep={mean['shape_indep']:.3f} "
          f"shape_mm_multiview={mean['shape_mv']:.3f} rot_deg_1view={mean['rot_1view']:.3f} "
          f"rot_deg_multiview={mean['rot_mv']:.3f} ratio={mean['shape_mv'] / mean['shape_1view']:.3f} "
          f"shape_mm_estimated_cameras={mean['shape_est']:.3f} shape_mm_photometric={mean['shape_ph']:.3f} "
          f"rot_deg_photometric={mean['rot_ph']:.3f} ratio_photometric={mean['shape_ph'] / mean['shape_1view']:.3f} "
          f"shape_mm_estimated_photometric={mean['shape_est_ph']:.3f}")


if __name__ == "__main__":
    main()
