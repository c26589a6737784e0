"""Cameras estimated from the face itself, for a capture without a calibration (``--cameras estimate``).

A phone array, a webcam pair or a few photos of a person from several sides rarely come with a
calibration. The head is a calibration object of known shape and size (the model's mean face, about
as large as an adult's), so every view that sees it says where that camera is relative to the head:

1. Every camera gets a pinhole camera over its picture: the assumed field of view over the longer
   side (``image_fov``, as single photos), the principal point at the centre.
2. Each view that sees the face is fitted as a single photo (stage 1 and 2 with that camera): its
   model-to-camera transform ``M[t, c]``.
3. The camera that sees the face most often is the reference ``r``. Every other camera's pose
   relative to it, ``A_c = M[t, c] M[t, r]^-1``, is the same at every timestep (the cameras do not
   move), so it is averaged over the timesteps both see (rotations: the chordal mean; translations:
   the median). How much the timesteps disagree is reported (``spread_deg``): the single-photo
   fits' own error, a few degrees.
4. The world is the head at the first timestep the reference camera sees it.
5. The multi-view fit (heads and one identity with these cameras) and a new placement of every camera
   but the reference against it (PnP of the fitted head's points, :func:`refine_cameras`) alternate
   (``MultiviewOptions.camera_rounds``, 2): the shared shape and the other views correct each
   camera's single-photo error. On the tests' synthetic rig this brought the worst camera's landmark
   error from 24 to 8 px; the identity did not gain (6 synthetic subjects: 3.04 mm with no round,
   3.22 mm with 2, within their scatter).

The multi-view fit then treats these as known cameras. Their errors (each view's monocular pose
error, about 5 degrees on synthetic renders) remain in them, so a calibration, where there is one,
is better.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from flame_tracker.multiview.cameras import Camera, MultiviewError, Rig


@dataclass
class CameraEstimate:
    """The estimated rig and how consistent its evidence was."""

    rig: Rig
    reference: str  # the camera the others were placed relative to
    world_timestep: int  # the world is the head at this timestep
    # per camera: mean angle between its per-timestep relative rotations and their mean (NaN: one timestep)
    spread_deg: dict[str, float]
    views_used: dict[str, int]  # per camera: timesteps it was placed from


def capture_cameras(root: str | Path, image_fov: float) -> Rig:
    """A provisional rig for the capture folder ``root`` (one sub-folder of images, or one video, per
    camera, in name order): each camera's picture size from its first frame, ``K`` from
    ``image_fov`` (degrees over the longer side) with the principal point at the centre, poses
    unknown (identity) until :func:`estimate_cameras`."""
    from flame_tracker.multiview.capture import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    root = Path(root)
    if not root.is_dir():
        raise MultiviewError(f"{root}: no such folder (give the capture folder: one sub-folder or video per camera)")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and any(
        f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()))
    videos = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    sizes: list[tuple[str, int, int]] = []
    if folders:
        from PIL import Image

        for f in folders:
            first = next(p for p in sorted(f.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
            with Image.open(first) as im:
                sizes.append((f.name, *im.size))
    elif videos:
        from flame_tracker.video.decode import probe

        for v in videos:
            info = probe(v)
            sizes.append((v.stem, info.width, info.height))
    if len(sizes) < 2:
        raise MultiviewError(f"{root}: found {len(sizes)} camera(s) (sub-folders of images or videos); estimating "
                             "cameras needs at least 2 views of the head")
    return unplaced_rig(sizes, image_fov)


def unplaced_rig(sizes: list[tuple[str, int, int]], image_fov: float) -> Rig:
    """Cameras ``(name, width, height)`` seeing ``image_fov`` degrees over their longer side, the
    principal point at the centre, not yet placed (identity poses)."""
    cams = []
    for name, w, h in sizes:
        f = 0.5 * max(w, h) / np.tan(np.radians(image_fov) / 2)
        K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
        cams.append(Camera(name, K, np.eye(3), np.zeros(3), int(w), int(h)))
    return Rig(cams, f"estimated from the face in every view ({image_fov:g}° over each picture's longer side "
                     "assumed)")


def _mean_rotation(Rs: np.ndarray) -> np.ndarray:
    """The rotation nearest the mean of ``Rs [n, 3, 3]`` (chordal L2 mean)."""
    U, _, Vt = np.linalg.svd(Rs.sum(0))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def estimate_cameras(tracker, rig: Rig, det, *, max_views: int = 12) -> CameraEstimate:
    """Place the cameras of ``rig`` (from :func:`capture_cameras`) from the detections ``det``
    (:class:`~flame_tracker.multiview.pipeline.Detections`), fitting each view as a single photo with
    ``tracker`` (at most ``max_views`` timesteps per camera, spread over the capture). Raises
    :class:`MultiviewError` when a camera never sees the face at a timestep the reference camera
    sees it."""
    seen = det.seen.astype(bool)
    T, C = seen.shape
    if not seen.any():
        raise MultiviewError("no camera saw a face, so the cameras cannot be estimated from it")
    ref = int(np.argmax(seen.sum(0)))
    M = np.full((T, C, 4, 4), np.nan)
    Ks: list[list[np.ndarray]] = [[] for _ in range(C)]
    for c in range(C):
        ts = np.flatnonzero(seen[:, c])
        both = ts[seen[ts, ref]] if c != ref else ts
        pick = both if len(both) else ts
        if len(pick) > max_views:
            pick = pick[np.linspace(0, len(pick) - 1, max_views).round().astype(int)]
        cam = rig.cameras[c]
        for t in pick:
            res = tracker.fit_landmarks(det.lmks[t, c], det.iris[t, c], image_size=(cam.width, cam.height),
                                        blendshapes=det.blendshapes[t, c], blendshape_names=det.names)
            mats = res.camera_matrices()
            M[t, c] = mats["w2c_opencv"][0].astype(np.float64)
            Ks[c].append(mats["K_px"][0].astype(np.float64))
    # the reference camera's own timesteps (all of them are fitted when it is the reference)
    t0 = int(np.flatnonzero(np.isfinite(M[:, ref, 0, 0]))[0])
    cams, spread, used = [], {}, {}
    for c, cam in enumerate(rig.cameras):
        K = np.median(np.stack(Ks[c]), 0) if Ks[c] else cam.K
        if c == ref:
            w2c = M[t0, ref]
            spread[cam.name], used[cam.name] = 0.0, int(np.isfinite(M[:, ref, 0, 0]).sum())
        else:
            ts = np.flatnonzero(np.isfinite(M[:, c, 0, 0]) & np.isfinite(M[:, ref, 0, 0]))
            if not len(ts):
                raise MultiviewError(f"camera {cam.name} never sees the face at a timestep camera "
                                     f"{rig.cameras[ref].name} sees it, so it cannot be placed relative to the "
                                     "others: give a calibration (--cameras cameras.json) or frames where both see it")
            A = np.einsum("tij,tjk->tik", M[ts, c], np.linalg.inv(M[ts, ref]))  # reference -> camera c
            R = _mean_rotation(A[:, :3, :3])
            t = np.median(A[:, :3, 3], 0)
            cos = (np.einsum("tij,ij->t", A[:, :3, :3], R) - 1) / 2
            # (one shared timestep says nothing about the disagreement: NaN)
            spread[cam.name] = float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean()) if len(ts) > 1 else np.nan
            used[cam.name] = len(ts)
            Ac = np.eye(4)
            Ac[:3, :3], Ac[:3, 3] = R, t
            w2c = Ac @ M[t0, ref]
        cams.append(Camera(cam.name, K, w2c[:3, :3], w2c[:3, 3], cam.width, cam.height))
    rig_est = Rig(cams, rig.convention + f"; the world is the head at timestep {t0} "
                  f"(camera {rig.cameras[ref].name} placed first)", "m")
    return CameraEstimate(rig_est, rig.cameras[ref].name, t0, spread, used)


def refine_cameras(fit_model, rig: Rig, fit, det, reference: str) -> Rig:
    """Every camera but ``reference`` placed again against the multi-view fit ``fit``
    (:class:`~flame_tracker.multiview.fit.MultiviewFit`): the fitted head's detector points in the
    world at every timestep the camera saw the face, against its detections (PnP, Levenberg-Marquardt
    from the current pose; the jawline, which the detector slides over the cheek, left out). With
    the fit, an alternation towards the bundle adjustment of heads and cameras: the shared shape and
    every other view correct each camera's single-photo error."""
    import cv2
    import torch

    T = len(fit.rotvec)
    dt = fit_model.dtype
    with torch.no_grad():
        pts = fit_model.landmarks(shape=torch.as_tensor(fit.shape, dtype=dt)[None].expand(T, -1),
                                  expr=torch.as_tensor(fit.expr, dtype=dt),
                                  jaw_pose=torch.as_tensor(fit.jaw_pose, dtype=dt),
                                  eye_pose=torch.as_tensor(fit.eye_pose, dtype=dt)).landmarks.double().cpu().numpy()
    M = fit.model_to_world()
    world = np.einsum("tij,tkj->tki", M[:, :3, :3], pts[:, :68]) + M[:, None, :3, 3]
    inner = slice(17, 68)
    cams = []
    for c, cam in enumerate(rig.cameras):
        ts = np.flatnonzero(det.seen[:, c] & fit.valid)
        if cam.name == reference or not len(ts):
            cams.append(cam)
            continue
        obj = world[ts, inner].reshape(-1, 3)
        img = det.lmks[ts, c, inner].reshape(-1, 2).astype(np.float64)
        ok, r, t = cv2.solvePnP(obj, img, cam.K, None, cv2.Rodrigues(cam.R)[0], cam.t.reshape(3, 1).copy(),
                                useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or not np.isfinite(r).all() or not np.isfinite(t).all():
            cams.append(cam)
            continue
        cams.append(Camera(cam.name, cam.K, cv2.Rodrigues(r)[0], t.ravel(), cam.width, cam.height))
    return Rig(cams, rig.convention, rig.unit, list(rig.notes))


def fit_with_estimated_cameras(tracker, rig: Rig, det, fit: Callable[[Rig], Any], *,
                               rounds: int) -> tuple[CameraEstimate, Any]:
    """The cameras of ``rig`` (:func:`unplaced_rig`) estimated from ``det`` (:func:`estimate_cameras`),
    then ``rounds`` times placed again against the multi-view fit ``fit(rig)`` (:func:`refine_cameras`):
    ``(the estimate with the final rig, the final fit)``. The estimate's ``spread_deg`` describes the
    first placement, from the single-photo fits."""
    est = estimate_cameras(tracker, rig, det)
    rig = est.rig
    result = fit(rig)
    for _ in range(rounds):
        rig = refine_cameras(tracker.fit_model, rig, result, det, est.reference)
        result = fit(rig)
    return replace(est, rig=rig), result


__all__ = ["CameraEstimate", "capture_cameras", "estimate_cameras", "fit_with_estimated_cameras",
           "refine_cameras", "unplaced_rig"]
