"""``flame-tracker multiview``: detect the face in every view, fit one head per timestep and one
identity for the capture, write the results.

Output folder::

    cameras.json            the calibration as read, or as estimated (OpenCV world-to-camera, metres)
    detections.npz          every view's landmarks (kept: a rerun with the same capture skips detection)
    frames/{t:06d}.npz      per timestep (keys below)
    tracking.npz            the same keys stacked over timesteps
    meshes/{t:06d}.obj      the fitted head in world coordinates
    overlay/{t:06d}.png     every view with the fitted mesh and landmarks
    summary.json            settings, calibration convention, warnings, per-view errors, timings
    manifest.json           {"complete": true} once everything is written

Per-timestep keys: the reference's parameter keys ``shape [1, S]``, ``exp``, ``head_pose`` (the
head's rotation in the world, axis-angle about FLAME's root joint), ``transl`` (FLAME's
translation: ``x_world = R (x - J0) + J0 + transl``), ``jaw_pose``, ``neck_pose``, ``eye_pose``;
``model_to_world [1, 4, 4]`` (the same, about the model's origin); per camera (``camera_names
[C]``): ``K_px [C, 3, 3]``, ``w2c_opencv [C, 4, 4]`` (model to that camera), ``lmks_68_px [C, 68, 2]``
(detected; NaN where unseen), ``fit_lmks_68_px`` (the model's own 68), ``fit_lmks_68_detector_px``
(the points fitted to the detections), ``seen [C]``, ``reproj_px [C]``; ``time_s``, ``frame``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flame_tracker.defaults import IMAGE_FOV
from flame_tracker.multiview.cameras import MultiviewError, Rig, load_cameras
from flame_tracker.multiview.capture import Capture, open_capture
from flame_tracker.multiview.estimate import capture_cameras, fit_with_estimated_cameras
from flame_tracker.multiview.fit import MultiviewFit, MultiviewOptions, fit_multiview


@dataclass
class Detections:
    """Every view's detection at every timestep."""

    lmks: np.ndarray  # [T, C, 68, 2] pixels (NaN: no face)
    iris: np.ndarray  # [T, C, 10, 2]
    seen: np.ndarray  # [T, C]
    blendshapes: np.ndarray  # [T, C, 52]
    names: tuple[str, ...]
    times: np.ndarray  # [T]
    dense: np.ndarray  # [T, C, 468, 2] MediaPipe's mesh points (NaN: no face)

    def save(self, path: Path, key: str) -> None:
        from flame_tracker.io.results import save_npz

        save_npz(path, {**{k: v for k, v in asdict(self).items() if k != "names"},
                        "names": np.asarray(self.names, dtype=np.str_), "key": np.str_(key)})

    @classmethod
    def load(cls, path: Path, key: str) -> Detections | None:
        """The saved detections when they are of this capture (``key``), else None."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key:
                    return None
                return cls(z["lmks"], z["iris"], z["seen"], z["blendshapes"], tuple(str(n) for n in z["names"]),
                           z["times"], z["dense"])
        except (OSError, ValueError, KeyError):
            return None


def detect_capture(tracker, capture: Capture, *, progress: bool = False) -> Detections:
    """Detect the face in every view of every timestep of ``capture``."""
    return detect_views(tracker, capture.frames(), capture.n_frames, len(capture.rig), progress=progress)


def detect_views(tracker, frames, T: int, C: int, *, progress: bool = False) -> Detections:
    """Detect the face (the largest; small ones searched for too) in ``frames``: ``(t, time_s,
    [image of each of the C views])`` for ``T`` timesteps."""
    from flame_tracker.detection.landmarker import BLENDSHAPE_NAMES

    lmks, iris = np.full((T, C, 68, 2), np.nan), np.full((T, C, 10, 2), np.nan)
    seen, scores, times = np.zeros((T, C), bool), np.zeros((T, C, 52), np.float32), np.zeros(T)
    dense = np.full((T, C, 468, 2), np.nan, np.float32)
    bar = None
    if progress:
        from flame_tracker.progress import progress_bar

        bar = progress_bar(total=T * C, desc="detect", unit="view")
    for t, time_s, images in frames:
        times[t] = time_s
        for c, image in enumerate(images):
            found = tracker.finder.find(image) if image is not None else []
            det = tracker.face.pick(found) if found else None
            if det is not None:
                lmks[t, c], iris[t, c], seen[t, c] = det.lmks68, det.iris, True
                dense[t, c] = det.points478[:468, :2]
                if len(det.blendshapes) == 52:
                    scores[t, c] = det.blendshapes
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return Detections(lmks, iris, seen, scores, tuple(BLENDSHAPE_NAMES), times, dense)


def timestep_arrays(model, fit_model, fit: MultiviewFit, rig: Rig, det: Detections
                    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The per-timestep keys (module docstring) stacked over timesteps ``[T, ...]``, and the
    posed meshes in the world ``vertices [T, V, 3]``."""
    T, C = det.seen.shape
    M = fit.model_to_world()
    dt = model.dtype
    params = dict(shape=torch.as_tensor(fit.shape, dtype=dt)[None].expand(T, -1),
                  expr=torch.as_tensor(fit.expr, dtype=dt), eye_pose=torch.as_tensor(fit.eye_pose, dtype=dt),
                  jaw_pose=torch.as_tensor(fit.jaw_pose, dtype=dt))
    with torch.no_grad():
        out = model(**params)
        own = out.landmarks.double().cpu().numpy()
        matched = fit_model.landmarks(**params).landmarks.double().cpu().numpy()
    verts = np.einsum("tij,tvj->tvi", M[:, :3, :3], out.vertices.double().cpu().numpy()) + M[:, None, :3, 3]
    to_world = lambda p: np.einsum("tij,tkj->tki", M[:, :3, :3], p) + M[:, None, :3, 3]  # noqa: E731
    own_w, matched_w = to_world(own), to_world(matched)
    fit_px = np.stack([np.stack([cam.project(own_w[t]) for cam in rig.cameras]) for t in range(T)])
    fit_det_px = np.stack([np.stack([cam.project(matched_w[t]) for cam in rig.cameras]) for t in range(T)])
    reproj = np.where(det.seen, np.linalg.norm(fit_det_px - np.nan_to_num(det.lmks), axis=-1).mean(-1), np.nan)
    w2c = np.stack([c.w2c() for c in rig.cameras])
    from scipy.spatial.transform import Rotation

    from flame_tracker.model.embedding import fingerprint

    R = M[:, :3, :3]
    arrays = {
        "shape": fit.shape[None].astype(np.float32),
        "exp": fit.expr.astype(np.float32),
        "head_pose": Rotation.from_matrix(R).as_rotvec().astype(np.float32),
        "transl": model.root_translation(fit.shape, fit.expr, R, M[:, :3, 3]).astype(np.float32),
        "jaw_pose": fit.jaw_pose.astype(np.float32),
        "neck_pose": np.zeros((T, 3), np.float32),
        "eye_pose": fit.eye_pose.astype(np.float32),
        "model_to_world": M.astype(np.float32),
        "camera_names": np.asarray(rig.names, dtype=np.str_),
        "K_px": np.broadcast_to(np.stack([c.K for c in rig.cameras]), (T, C, 3, 3)).astype(np.float32),
        "w2c_opencv": np.einsum("cij,tjk->tcik", w2c, M).astype(np.float32),
        "lmks_68_px": det.lmks.astype(np.float32),
        "lmks_eyes_px": det.iris.astype(np.float32),
        "fit_lmks_68_px": fit_px.astype(np.float32),
        "fit_lmks_68_detector_px": fit_det_px.astype(np.float32),
        "seen": det.seen,
        "reproj_px": reproj.astype(np.float32),
        "valid": fit.valid,
        "time_s": det.times.astype(np.float64),
        "frame": np.arange(T, dtype=np.int64),
        "expr_names": np.asarray(getattr(model, "expr_names", None) or [], dtype=np.str_),
        "model_name": np.str_(str(getattr(model, "name", ""))),
        "model_fingerprint": np.str_(fingerprint(model)),
    }
    return arrays, verts


#: Keys that are one value for the whole capture (not one row per timestep).
FIXED_KEYS = ("shape", "camera_names", "expr_names", "model_name", "model_fingerprint")


def overlay_grid(images: list[np.ndarray | None], model, verts_world: np.ndarray, rig: Rig, lmks: np.ndarray,
                 fit_px: np.ndarray, seen: np.ndarray, tile: int = 480) -> np.ndarray:
    """Every view of one timestep with the fitted mesh and landmarks (detected green, fitted red),
    tiled in a grid, each view ``tile`` pixels wide, its camera name on it."""
    import cv2

    from flame_tracker.rendering.overlay import render_overlay

    faces = model.faces.cpu().numpy()
    tiles = []
    for c, (img, cam) in enumerate(zip(images, rig.cameras)):
        if img is None:  # no frame of this camera at this time (--sync timestamps)
            img = np.zeros((cam.height, cam.width, 3), np.uint8)
        cam_pts = verts_world @ cam.R.T + cam.t
        vpx = np.concatenate([cam.project(verts_world), cam_pts[:, 2:]], 1)
        ov = render_overlay(img, vpx, faces, lmks_detected=lmks[c] if seen[c] else None, lmks_fitted=fit_px[c],
                            focal=float(cam.K[0, 0]), legend=c == int(np.argmax(seen)))
        s = tile / ov.shape[1]
        ov = cv2.resize(ov, (tile, int(round(ov.shape[0] * s))), interpolation=cv2.INTER_AREA)
        label = cam.name + ("" if seen[c] else " (no face)")
        cv2.putText(ov, label, (8, ov.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(ov)
    h = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, h - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = [tiles[i:i + cols] for i in range(0, len(tiles), cols)]
    rows[-1] = rows[-1] + [np.zeros_like(tiles[0])] * (cols - len(rows[-1]))
    return np.concatenate([np.concatenate(r, 1) for r in rows], 0)


def _refine_photometric(model, fit_model, fit: MultiviewFit, rig: Rig, capture: Capture, det: Detections,
                        opts: MultiviewOptions, progress: bool) -> tuple[MultiviewFit, dict]:
    """The landmark fit refined against the pictures (:mod:`flame_tracker.multiview.photometric`),
    smoothed again over time when the fit was; and what the refinement did (for the summary)."""
    from flame_tracker.multiview.fit import smooth as smooth_fit
    from flame_tracker.multiview.photometric import refine_multiview

    reading: dict[str, Any] = {"frames": None, "next": 0}

    def pictures(steps):
        """The pictures of ``steps`` (increasing): read on from the last call, from the start again
        when asked for an earlier timestep (the keyframes first, then the chunks in order); image
        folders are read directly."""
        if capture.kind == "folders":
            return [capture.folder_images(int(t)) for t in steps]
        if reading["frames"] is None or steps[0] < reading["next"]:
            if reading["frames"] is not None:
                reading["frames"].close()
            reading["frames"], reading["next"] = capture.frames(), 0
        want, got = {int(t) for t in steps}, {}
        for t, _, images in reading["frames"]:
            reading["next"] = t + 1
            if t in want:
                got[t] = images
                if len(got) == len(want):
                    break
        return [got.get(int(t), [None] * len(rig)) for t in steps]

    try:
        ref = refine_multiview(model, fit_model, fit, rig, pictures, det.lmks, keyframes=opts.photometric_keyframes,
                               progress=progress)
    finally:
        if reading["frames"] is not None:
            reading["frames"].close()
    info: dict[str, Any] = {"keyframes": [int(t) for t in ref.keyframes], "solves": ref.solves, "kept": True}
    first = ref.solves[0]
    if first["photo_end"] >= first["photo_start"]:
        # the views' colours could not be brought to agree: keep the landmark fit
        info["kept"] = False
        return replace(fit, notes=[*fit.notes, (
            f"the photometric refinement could not make the views' colours agree (disagreement "
            f"{first['photo_start']:.4f} -> {first['photo_end']:.4f}); kept the landmark fit. The cameras may be off "
            "(estimated cameras with a wrong --image-fov, an old calibration) or the frames not synchronised")]), info
    out = ref.fit
    if first["photo_end"] > 0.9 * first["photo_start"]:
        out = replace(out, notes=[*out.notes, (
            f"the photometric refinement barely made the views' colours agree (disagreement {first['photo_start']:.4f} "
            f"-> {first['photo_end']:.4f}): check the cameras (calibration, --image-fov) and the synchronisation")])
    if opts.smooth and len(out.valid) > 2:
        out = smooth_fit(out, det.times, model)
    return out, info


def track_multiview(capture_dir: str | Path, cameras: str | Path, out_dir: str | Path, *, model=None,
                    unit: str = "m", every: int = 1, max_frames: int | None = None, fps: float | None = None,
                    sync: str = "index",
                    options: MultiviewOptions | None = None, smooth: bool | None = None, overlay: bool = True,
                    meshes: bool = True, progress: bool = False, landmarker: str | None = None,
                    image_fov: float = IMAGE_FOV) -> dict:
    """Track a calibrated capture (see the module docstring); returns the summary. ``cameras``: the
    calibration file, or ``"estimate"`` to place the cameras from the face in every view
    (:mod:`flame_tracker.multiview.estimate`, each picture seen at ``image_fov`` degrees over its
    longer side). ``fps``: the rate of image folders (default 30); ``sync``: pair the videos'
    frames by ``"index"`` or ``"timestamps"``; ``smooth``: over time (None: for videos, and for
    image folders given their ``fps``). Raises
    :class:`~flame_tracker.multiview.cameras.MultiviewError` for bad input."""
    from flame_tracker.io.mesh import save_obj
    from flame_tracker.io.results import save_image, save_json, save_npz
    from flame_tracker.model.embedding import ViewPoints
    from flame_tracker.tracker import Tracker

    t_start = time.perf_counter()
    out = Path(out_dir)
    estimate = str(cameras) == "estimate"
    if estimate and unit != "m":
        raise MultiviewError(f"--unit {unit} applies to a calibration file; cameras estimated from the face are "
                             "in metres (the model's)")
    rig = capture_cameras(capture_dir, image_fov) if estimate else load_cameras(cameras, unit)
    capture = open_capture(capture_dir, rig, every=every, max_frames=max_frames, fps=fps or 30.0, sync=sync)
    opts = options or MultiviewOptions()
    # videos are sequences; image folders only when their rate is given
    auto = capture.kind == "videos" or fps is not None
    opts = replace(opts, smooth=auto if smooth is None else smooth)
    from flame_tracker.config import Config

    timings: dict[str, float] = {}
    camera_estimate = None
    manifest = out / "manifest.json"
    # (the photo FOV matters only where each view is fitted as a photo: estimating the cameras)
    photo: dict[str, Any] = {"image_fov": image_fov} if estimate else {}
    with Tracker(model, landmarker=landmarker, **photo) as tracker:  # (a bad model: nothing written yet)
        out.mkdir(parents=True, exist_ok=True)
        if manifest.exists():
            manifest.unlink()  # incomplete until this run finishes
        if not estimate:
            rig.save(out / "cameras.json")
        Config(multiview=opts).save(out / "config.json", ("multiview",))
        key = json.dumps({"capture": str(Path(capture_dir).resolve()), "cameras": rig.names, "every": every,
                          "n": capture.n_frames, "kind": capture.kind, "sync": sync})
        t0 = time.perf_counter()
        det = Detections.load(out / "detections.npz", key)
        if det is None:
            det = detect_capture(tracker, capture, progress=progress)
            det.save(out / "detections.npz", key)
        timings["detect_s"] = time.perf_counter() - t0
        never = [rig.cameras[c].name for c in range(len(rig)) if not det.seen[:, c].any()]
        notes = [f"camera(s) {', '.join(never)} never saw a face (check their frames); fitted without them"] \
            if never else []
        emb = getattr(tracker, "_embedding", None)
        views = ViewPoints(tracker.model, emb) if emb is not None else None
        t0 = time.perf_counter()

        def fit_all(rig: Rig, seen: np.ndarray | None = None) -> MultiviewFit:
            return fit_multiview(tracker.fit_model, rig, det.lmks, det.seen if seen is None else seen, iris=det.iris,
                                 times=det.times, blendshapes=det.blendshapes, blendshape_names=det.names,
                                 options=opts, views=views)

        if estimate:  # cameras placed from the face, then heads and cameras in turn
            est, fit = fit_with_estimated_cameras(tracker, rig, det, fit_all, rounds=opts.camera_rounds)
            rig = est.rig
            capture = replace(capture, rig=rig)
            rig.save(out / "cameras.json")
            camera_estimate = {"reference": est.reference, "world_timestep": est.world_timestep,
                               "spread_deg": est.spread_deg, "views_used": est.views_used,
                               "unplaced": est.unplaced}
            apart = [n for n in est.unplaced if n not in never]  # (the ones without a face are noted above)
            if apart:
                notes.append(f"camera(s) {', '.join(apart)} never saw the face together with a placed camera, so "
                             "they could not be placed; fitted without them")
        else:
            fit = fit_all(rig)
        timings["fit_s"] = time.perf_counter() - t0
        photometric = None
        if opts.photometric:
            t0 = time.perf_counter()
            fit, photometric = _refine_photometric(tracker.model, tracker.fit_model, fit, rig, capture, det, opts,
                                                   progress)
            timings["photometric_s"] = time.perf_counter() - t0
        notes += fit.notes
        for n in notes:
            import warnings

            warnings.warn(n, stacklevel=2)
        t0 = time.perf_counter()
        arrays, verts = timestep_arrays(tracker.model, tracker.fit_model, fit, rig, det)
        (out / "frames").mkdir(exist_ok=True)
        for t in range(capture.n_frames):
            save_npz(out / "frames" / f"{t:06d}.npz",
                     {k: (v if k in FIXED_KEYS else v[t:t + 1]) for k, v in arrays.items()}, compress=False)
        save_npz(out / "tracking.npz", arrays)
        faces = np.asarray(tracker.model.faces.detach().cpu())
        if meshes:
            for t in range(capture.n_frames):
                save_obj(out / "meshes" / f"{t:06d}.obj", verts[t], faces)
        if overlay:
            for t, _, images in capture.frames():
                save_image(out / "overlay" / f"{t:06d}.png",
                           overlay_grid(images, tracker.model, verts[t], rig, det.lmks[t],
                                        arrays["fit_lmks_68_px"][t], det.seen[t]))
        timings["write_s"] = time.perf_counter() - t0
    reproj = arrays["reproj_px"]
    summary = {
        "capture": str(capture_dir), "cameras": str(cameras), "calibration": rig.convention, "unit": unit,
        "kind": capture.kind, "n_timesteps": capture.n_frames, "n_cameras": len(rig), "every": every,
        "max_frames": max_frames, "fps": fps, "sync": sync,
        "model": str(getattr(tracker.model, "name", "")), "options": asdict(opts),
        "timesteps_with_face": int(fit.valid.sum()),
        "views_seen": {c.name: int(det.seen[:, i].sum()) for i, c in enumerate(rig.cameras)},
        "reproj_px_per_camera": {c.name: (float(np.nanmean(reproj[:, i])) if det.seen[:, i].any() else None)
                                 for i, c in enumerate(rig.cameras)},
        "head_scale_vs_model": fit.scale_ratio, "camera_estimate": camera_estimate, "photometric": photometric,
        "warnings": notes,
        "iterations": fit.iterations,
        "timings_s": {**{k: round(v, 3) for k, v in timings.items()},
                      "total_s": round(time.perf_counter() - t_start, 3)},
    }
    save_json(out / "summary.json", summary)
    save_json(manifest, {"complete": True, "kind": "multiview"})
    return summary


__all__ = ["Detections", "detect_capture", "detect_views", "timestep_arrays", "overlay_grid", "track_multiview",
           "FIXED_KEYS", "MultiviewError"]
