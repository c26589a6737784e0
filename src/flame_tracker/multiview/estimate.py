"""Cameras estimated from the face itself, for a capture without a calibration (``--cameras estimate``).

A phone array, a webcam pair or a few photos of a person from several sides rarely come with a
calibration. The head is a calibration object of known shape and size (the model's mean face, about
as large as an adult's), so every view that sees it says where that camera is relative to the head:

1. Every camera gets a pinhole camera over its picture: the assumed field of view over the longer
   side (``image_fov``, as single photos), the principal point at the centre.
2. Views are fitted as single photos (stage 1 and 2 with that camera): each one's model-to-camera
   transform ``M[t, c]``, at up to ``max_views`` timesteps per camera where another camera sees the
   face too.
3. The camera with the most fitted views is the reference ``r``. The others are placed outwards from
   it, each from the placed camera ``p`` it shares the most fitted timesteps with: its pose relative
   to that one, ``A = M[t, c] M[t, p]^-1``, is the same at every timestep (the cameras do not move),
   so it is averaged over those timesteps (rotations: the chordal mean; translations: the median).
   How much the timesteps disagree is reported (``spread_deg``): the single-photo fits' own error, a
   few degrees. A camera never seen together with a placed one stays unplaced and out of the fit.
4. The world is the head at the reference camera's first fitted timestep.
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
    # per placed camera: mean angle between its per-timestep relative rotations and their mean (None:
    # placed from one timestep, or the reference)
    spread_deg: dict[str, float | None]
    views_used: dict[str, int]  # per placed camera: timesteps it was placed from
    unplaced: list[str]  # cameras never seen at a timestep with a placed one: left out of the fit

    def seen(self, seen: np.ndarray) -> np.ndarray:
        """The detections' ``seen [T, C]`` without the cameras that could not be placed."""
        out = np.asarray(seen, bool).copy()
        for c, cam in enumerate(self.rig.cameras):
            if cam.name in self.unplaced:
                out[:, c] = False
        return out


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
        from flame_tracker.io.images import picture_size

        for f in folders:
            first = next(p for p in sorted(f.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES)
            sizes.append((f.name, *picture_size(first)))  # upright, as the frames are read
    elif videos:
        from flame_tracker.video.decode import probe

        for v in videos:
            info = probe(v)
            sizes.append((v.stem, info.width, info.height))
    names = [n for n, _, _ in sizes]
    twice = sorted(n for n in set(names) if names.count(n) > 1)
    if twice:
        raise MultiviewError(f"{root}: several videos named {', '.join(twice)} (other suffixes); each camera "
                             "needs its own name")
    if len(sizes) < 2:
        raise MultiviewError(f"{root}: found {len(sizes)} camera(s) (sub-folders of images or videos); estimating "
                             "cameras needs at least 2 views of the head")
    return unplaced_rig(sizes, image_fov)


def unplaced_rig(sizes: list[tuple[str, int, int]], image_fov: float) -> Rig:
    """Cameras ``(name, width, height)`` seeing ``image_fov`` degrees over their longer side, the
    principal point at the centre, not yet placed (identity poses)."""
    import torch

    from flame_tracker.camera import fov_to_focal

    cams = []
    for name, w, h in sizes:
        f = float(fov_to_focal(torch.tensor(image_fov, dtype=torch.float64), max(w, h)))
        K = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
        cams.append(Camera(name, K, np.eye(3), np.zeros(3), int(w), int(h)))
    return Rig(cams, f"estimated from the face in every view ({image_fov:g}° over each picture's longer side "
                     "assumed)")


def _mean_rotation(Rs: np.ndarray) -> np.ndarray:
    """The rotation nearest the mean of ``Rs [n, 3, 3]`` (chordal L2 mean)."""
    U, _, Vt = np.linalg.svd(Rs.sum(0))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def _timesteps_to_fit(seen: np.ndarray, max_views: int) -> np.ndarray:
    """Timesteps whose views are fitted: for every camera, up to ``max_views`` spread over the
    timesteps where it and at least one other camera see the face (a camera is placed only from
    timesteps it shares with a placed one); all of the chosen timesteps' views are fitted."""
    shared = seen & (seen.sum(1, keepdims=True) >= 2)
    chosen: set[int] = set()
    for c in range(seen.shape[1]):
        ts = np.flatnonzero(shared[:, c])
        if len(ts) > max_views:
            ts = ts[np.linspace(0, len(ts) - 1, max_views).round().astype(int)]
        chosen.update(int(t) for t in ts)
    return np.array(sorted(chosen), dtype=int)


def estimate_cameras(tracker, rig: Rig, det, *, max_views: int = 12) -> CameraEstimate:
    """Place the cameras of ``rig`` (from :func:`capture_cameras`) from the detections ``det``
    (:class:`~flame_tracker.multiview.pipeline.Detections`), fitting each view as a single photo with
    ``tracker``. Cameras are placed outwards from the reference, each from the placed camera it shares
    the most fitted timesteps with; a camera never seen together with a placed one is left unplaced
    (:attr:`CameraEstimate.unplaced`). Raises :class:`MultiviewError` when no two cameras see the face
    at the same timestep."""
    seen = det.seen.astype(bool)
    T, C = seen.shape
    steps = _timesteps_to_fit(seen, max_views)
    if not len(steps):
        raise MultiviewError("no two cameras see the face at the same timestep, so the cameras cannot be placed "
                             "from it: give a calibration (--cameras cameras.json)")
    M = np.full((T, C, 4, 4), np.nan)
    Ks: list[list[np.ndarray]] = [[] for _ in range(C)]
    for t in steps:
        for c in np.flatnonzero(seen[t]).tolist():
            cam = rig.cameras[c]
            res = tracker.fit_landmarks(det.lmks[t, c], det.iris[t, c], image_size=(cam.width, cam.height),
                                        blendshapes=det.blendshapes[t, c], blendshape_names=det.names)
            mats = res.camera_matrices()
            M[t, c] = mats["w2c_opencv"][0].astype(np.float64)
            Ks[c].append(mats["K_px"][0].astype(np.float64))
    fitted = np.isfinite(M[:, :, 0, 0])
    ref = int(np.argmax(fitted.sum(0)))
    t0 = int(np.flatnonzero(fitted[:, ref])[0])
    w2c: dict[int, np.ndarray] = {ref: M[t0, ref]}
    spread: dict[str, float | None] = {rig.cameras[ref].name: None}
    used = {rig.cameras[ref].name: int(fitted[:, ref].sum())}
    while True:  # place the camera sharing the most timesteps with a placed one, then the next
        best: tuple[int, int, int] | None = None
        for c in range(C):
            if c in w2c:
                continue
            for p in w2c:
                n = int((fitted[:, c] & fitted[:, p]).sum())
                if n and (best is None or n > best[0]):
                    best = (n, c, p)
        if best is None:
            break
        _, c, p = best
        ts = np.flatnonzero(fitted[:, c] & fitted[:, p])
        A = np.einsum("tij,tjk->tik", M[ts, c], np.linalg.inv(M[ts, p]))  # camera p -> camera c
        R = _mean_rotation(A[:, :3, :3])
        cos = (np.einsum("tij,ij->t", A[:, :3, :3], R) - 1) / 2
        A_mean = np.eye(4)
        A_mean[:3, :3], A_mean[:3, 3] = R, np.median(A[:, :3, 3], 0)
        w2c[c] = A_mean @ w2c[p]
        name = rig.cameras[c].name
        # (one shared timestep says nothing about the disagreement: None)
        spread[name] = float(np.degrees(np.arccos(np.clip(cos, -1, 1))).mean()) if len(ts) > 1 else None
        used[name] = len(ts)
    cams, unplaced = [], []
    for c, cam in enumerate(rig.cameras):
        if c not in w2c:
            unplaced.append(cam.name)
            cams.append(cam)
            continue
        K = np.median(np.stack(Ks[c]), 0) if Ks[c] else cam.K
        cams.append(Camera(cam.name, K, w2c[c][:3, :3], w2c[c][:3, 3], cam.width, cam.height))
    rig_est = Rig(cams, rig.convention + f"; the world is the head at timestep {t0} "
                  f"(camera {rig.cameras[ref].name} placed first)", "m")
    return CameraEstimate(rig_est, rig.cameras[ref].name, t0, spread, used, unplaced)


def refine_cameras(fit_model, rig: Rig, fit, det, reference: str, seen: np.ndarray | None = None) -> Rig:
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
        ts = np.flatnonzero((det.seen if seen is None else seen)[:, c] & fit.valid)
        if cam.name == reference or not len(ts):
            cams.append(cam)
            continue
        obj = world[ts, inner].reshape(-1, 3)
        img = det.lmks[ts, c, inner].reshape(-1, 2).astype(np.float64)
        ok, r, t = cv2.solvePnP(obj, img, cam.K, None, cv2.Rodrigues(cam.R)[0], cam.t.reshape(3, 1).copy(),
                                useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        new = Camera(cam.name, cam.K, cv2.Rodrigues(r)[0], t.ravel(), cam.width, cam.height) if ok else cam
        # kept only when it agrees better with the detections and the head stays in front of it
        if (not np.isfinite(new.R).all() or not np.isfinite(new.t).all()
                or ((obj @ new.R.T + new.t)[:, 2] <= 0).any()
                or np.linalg.norm(new.project(obj) - img, axis=1).mean()
                >= np.linalg.norm(cam.project(obj) - img, axis=1).mean()):
            new = cam
        cams.append(new)
    return Rig(cams, rig.convention, rig.unit, list(rig.notes))


def fit_with_estimated_cameras(tracker, rig: Rig, det, fit: Callable[[Rig, np.ndarray], Any], *,
                               rounds: int) -> tuple[CameraEstimate, Any]:
    """The cameras of ``rig`` (:func:`unplaced_rig`) estimated from ``det`` (:func:`estimate_cameras`),
    then ``rounds`` times placed again against the multi-view fit ``fit(rig, seen)``
    (:func:`refine_cameras`; ``seen [T, C]``: the views to fit, without cameras that could not be
    placed): ``(the estimate with the final rig, the final fit)``. The estimate's ``spread_deg``
    describes the first placement, from the single-photo fits."""
    est = estimate_cameras(tracker, rig, det)
    rig, seen = est.rig, est.seen(det.seen)
    result = fit(rig, seen)
    for _ in range(rounds):
        rig = refine_cameras(tracker.fit_model, rig, result, det, est.reference, seen)
        result = fit(rig, seen)
    return replace(est, rig=rig), result


__all__ = ["CameraEstimate", "capture_cameras", "estimate_cameras", "fit_with_estimated_cameras",
           "refine_cameras", "unplaced_rig"]
