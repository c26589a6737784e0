"""Tracking through frames without landmarks (profiles, occlusions, motion blur) with the fitted head.

MediaPipe finds no face past about 75° of yaw, behind a hand, or in heavy blur. Those frames used to
be interpolated between their tracked neighbours (:mod:`.temporal`), so a half-second turn to full
profile came out as a head turned 70° while the person looked 90° away. Here the visible, textured
surface of the fitted head is followed into the gap instead:

1. On the last frame with landmarks before the gap (the *anchor*), corners (``goodFeaturesToTrack``)
   are picked on the visible skin of the fitted head (rasterised; eyeballs left out) and sent back
   onto the mesh: each is a point of the head model (triangle + barycentric coordinates).
2. They are followed frame by frame with pyramidal Lucas-Kanade flow, each point starting where the
   head's motion over the last two frames puts it (then on the finest level alone; otherwise 3 pyramid levels).
3. Each gap frame's head pose is solved from those 2-D–3-D pairs with the known identity and camera
   (robust Gauss-Newton from the previous frame's pose; the expression is the anchor's, and moving
   points, the mouth while talking, get no weight and are dropped). When too many points are lost
   (they turn out of view) new ones are picked on the surface now visible, at the solved pose.
4. The same runs backward from the first frame with landmarks after the gap; where both reach a
   frame, the two poses are blended by the frame's place in the gap, so that the track meets both
   ends without a jump. Expression, jaw and eyes are interpolated between the two ends.

Each direction starts from several frames with landmarks (:attr:`FlowOptions.anchors`; the gap's
poses are their mean); the starts of a direction are followed side by side in one thread, each with
its own points and pose, sharing one Lucas-Kanade call and one pose solve per frame
(:func:`track_starts`); the two directions run in two threads.

A frame where neither direction holds (fewer than ``min_inliers`` inliers, or too small an inlier
fraction) keeps the previous behaviour: bridged by the smoother (short gaps) or dropped.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, NamedTuple

import cv2
import numpy as np
import torch
from scipy.spatial import cKDTree

from flame_tracker.rendering.raster import barycentric_2d

#: Per-frame provenance codes of a tracked video (``source`` in the outputs).
SOURCES = ("landmarks", "flow", "bridged", "dropped")


@dataclass(frozen=True)
class FlowOptions:
    """Settings of the flow tracking through gaps."""

    max_points: int = 300  # corners picked on the head
    min_inliers: int = 20  # fewer pose inliers: the frame is not flow-tracked
    min_inlier_fraction: float = 0.35  # of the points followed into the frame
    inlier_px: float = 2.0  # a point within this of its projection carries the pose (working pixels)
    reseed_fraction: float = 0.45  # pick new points when fewer than this fraction is left
    # frames are scaled so the face is about this large (pixels): flow's cost is per window pixel and
    # per point, and 240 with an 11-pixel window followed 4 synthetic turns as well as 320 with 15 did
    # (4.3° against 4.5° mean with the other changes of that measurement) at half the cost
    work_face_px: float = 240.0
    max_gap_s: float = 4.0  # longer gaps are not flow-tracked (their frames are held in memory, grey)
    # a gap between frames with landmarks at most this far apart (s) is left to the smoother's
    # bridging: on the shared talking clips (gaps cut in at 35 places in all) bridging was closer to the
    # frames' own landmark fits for 1-4 missing frames at 25 fps (0.78° against 1.13° for two, 1.18°
    # against 1.46° for four; equal for six), and the flow's fixed cost per gap (its starts' heads and
    # lead-in frames) was 26-62 ms per frame of such a gap. A gap at the clip's start or end, which
    # the smoother cannot bridge, is followed whatever its length.
    min_gap_s: float = 0.2
    # landmarks found again for at most this long (s, frames times their interval; 0: off) between
    # two gaps are followed through as part of one gap and checked against the flow: past a profile
    # MediaPipe sometimes draws a face for a frame or two that is not there (a synthetic turn: one
    # such frame fitted 64° from the truth, and the flow started from it: 35° mean error over the
    # turn's frames without landmarks, 15° with the frame rejected)
    probe_s: float = 0.1
    probe_deg: float = 25.0  # such landmarks whose fit is turned further than this from the flow's
    # pose are rejected (the frame takes the flow's); the flow drifts a few degrees over a profile
    lk_window: int = 11
    lk_levels: int = 3
    # from the third frame of a track on, each point starts where the head's motion over the last
    # two frames (constant velocity) puts it, and Lucas-Kanade runs on this many pyramid levels above
    # the finest (-1: no prediction, lk_levels always); a frame whose pose does not hold is tried
    # again without. 0 costs ~20 % less CPU time than lk_levels alone, as accurate (14 synthetic turns:
    # 5.00 against 5.25° mean; gaps cut into three real clips: 2.14° from their landmark fits either way)
    lk_levels_predicted: int = 0
    pose_iters: int = 5  # robust Gauss-Newton steps per frame, from the previous frame's pose
    # start this many frames with landmarks before the gap (if there are): the frames at the gap's
    # edge are where the detector is least reliable (measured on the synthetic turn: 7.3° from the
    # edge frame, 3.5° from 6 frames back; aligning to the mean offset of all 7 fits: 4.2°)
    anchor_back: int = 6
    # several starts (anchor_back, anchor_back + anchor_step, ...), the gap's poses the mean over them:
    # where the flow lands depends on the one start's fit (pose, expression) more than its rotation
    # error says (4 synthetic turns, one start 3 / 6 / 9 / 12 frames back: 8.7 / 5.3 / 4.5 / 4.3°
    # mean gap error); three starts 4.45°, five 4.35°. Two (6 and 9 back) against three: gaps cut
    # into the shared talking clips at three sets of places 1.56 / 1.28 / 1.60° against 1.65 / 1.32 /
    # 1.72° from the clips' own fits (the same frames followed), 14 synthetic turns 3.87° against
    # 3.75° (seed 22 out), at about three quarters of the time (docs/profiles.md, 2026-12-06)
    anchors: int = 2
    anchor_step: int = 3


@dataclass
class GapTrack:
    """One direction of the flow through a gap: poses ``[n, 6]`` (NaN where lost) and the inlier
    count of each frame."""

    pose6: np.ndarray
    inliers: np.ndarray


@functools.lru_cache(maxsize=2)
def _topology(model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What every anchor of a model shares: ``(faces [F, 3], the triangles around each vertex [V, k]
    padded with -1, the vertices that may be followed [V] bool)``."""
    from flame_tracker.evaluation.metrics import eyeball_mask

    faces = model.faces.cpu().numpy()
    n_vert = int(faces.max()) + 1
    order = np.argsort(faces.ravel(), kind="stable")
    owner = np.repeat(np.arange(len(faces)), 3)[order]
    vid = faces.ravel()[order]
    counts = np.bincount(vid, minlength=n_vert)
    slot = np.arange(len(vid)) - np.repeat(np.cumsum(counts) - counts, counts)
    vertex_faces = np.full((n_vert, max(int(counts.max()), 1)), -1)
    vertex_faces[vid, slot] = owner
    eyes = eyeball_mask(model)
    return faces, vertex_faces, ~eyes if eyes is not None else np.ones(n_vert, bool)


class HeadSurface:
    """The fitted head of one anchor frame: its vertices in model space (the points followed), their
    normals, and which may be followed (eyeballs move on their own: left out)."""

    def __init__(self, model, vertices: np.ndarray, normals: np.ndarray) -> None:
        """The head ``vertices [V, 3]`` (model space, float64) with their ``normals``, on ``model``'s mesh."""
        self.vertices, self.normals = vertices, normals
        # a corner found near a vertex is sent onto one of the triangles around it
        self.faces, self.vertex_faces, allowed = _topology(model)
        self.followed = np.flatnonzero(allowed)  # the vertices points may be placed near
        self._v, self._n = self.vertices[self.followed], self.normals[self.followed]
        self.size = float(np.ptp(self._v, 0).max())  # head size, model units

    @classmethod
    def fitted(cls, model, shape: np.ndarray, params: list[dict[str, np.ndarray]]) -> list[HeadSurface]:
        """The heads of ``model`` with identity ``shape`` and each of ``params`` (expression, jaw,
        eyes), in one batched evaluation (the model's bases are read once for all)."""
        from flame_tracker.rendering.differentiable import vertex_normals

        dt = model.dtype
        with torch.no_grad():
            out = model(shape=torch.as_tensor(shape, dtype=dt)[None].expand(len(params), -1),
                        **{k: torch.as_tensor(np.stack([p[k] for p in params]), dtype=dt) for k in params[0]})
            verts = out.vertices.double().cpu()
            normals = vertex_normals(verts, model.faces.cpu()).numpy()
        return [cls(model, v, nrm) for v, nrm in zip(verts.numpy(), normals)]

    def visible_points(self, gray: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, n: int,
                       avoid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``n`` textured, visible vertices of the head in ``gray`` (camera ``K, R, t``,
        OpenCV): ``(model-space points [m, 3], their pixels [m, 2])``; ``avoid [k, 2]``: pixels
        already followed. Visible: facing the camera and in front in a coarse depth buffer (a
        vectorised splat, no rasterisation); textured: the Shi-Tomasi corner score at the pixel;
        spread: at most one per cell of a grid about a fortieth of the face wide."""
        h, w = gray.shape
        none = (np.zeros((0, 3)), np.zeros((0, 2)))
        cam = self._v @ R.T + t
        z = cam[:, 2]
        if (z <= 1e-6).any() or n <= 0:
            return none
        # pixels as two 1-D arrays: reductions along the first axis of an [n, 2] array are strided
        x, y = cam[:, 0] / z * K[0, 0] + K[0, 2], cam[:, 1] / z * K[1, 1] + K[1, 2]
        # facing the camera, not grazing the silhouette: cos(normal, line of sight) < -0.3
        facing = np.einsum("ij,ij->i", self._n @ R.T, cam) < -0.3 * np.sqrt(np.einsum("ij,ij->i", cam, cam))
        cand = np.flatnonzero(facing & (x >= 2) & (y >= 2) & (x < w - 3) & (y < h - 3))
        if not len(cand):  # (indices into the followed vertices from here on)
            return none
        xc, yc, zc = x[cand], y[cand], z[cand]
        x0, y0 = xc.min(), yc.min()
        cell = max(2.0, max(xc.max() - x0, yc.max() - y0) / 40.0)  # a fortieth of the face
        # coarse depth buffer: a vertex hidden behind another part of the head (the nose seen from
        # the side) lies deeper than the nearest vertex of its cell
        ix, iy = ((xc - x0) / cell).astype(int), ((yc - y0) / cell).astype(int)
        key = iy * (int(ix.max()) + 1) + ix
        zmin = np.full(int(key.max()) + 1, np.inf)
        np.minimum.at(zmin, key, zc)
        front = zc <= zmin[key] + 0.03 * self.size
        vis, xv, yv = self.followed[cand[front]], xc[front], yc[front]  # visible: model's numbering, pixels
        if not len(vis):
            return none
        # corners of the image over the visible head, each sent onto the triangle under it (found
        # among the triangles around the nearest visible vertex; barycentric, perspective-correct)
        # everything in the head's box only (the corner detector's cost is per pixel)
        bx0, by0 = max(int(np.floor(xv.min())) - 6, 0), max(int(np.floor(yv.min())) - 6, 0)
        bx1, by1 = min(int(np.ceil(xv.max())) + 7, w), min(int(np.ceil(yv.max())) + 7, h)
        mask = np.zeros((by1 - by0, bx1 - bx0), np.uint8)
        mask[yv.astype(int) - by0, xv.astype(int) - bx0] = 255
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8))
        mask = cv2.erode(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8)), np.ones((3, 3), np.uint8))
        if avoid is not None and len(avoid):
            _clear_discs(mask, np.asarray(avoid).reshape(-1, 2).astype(int) - (bx0, by0), int(cell))
        corners = cv2.goodFeaturesToTrack(np.ascontiguousarray(gray[by0:by1, bx0:bx1]), maxCorners=n,
                                          qualityLevel=0.005, minDistance=cell, mask=mask, blockSize=5)
        if corners is None:
            return none
        c = corners.reshape(-1, 2).astype(np.float64) + (bx0, by0)
        # (a sliding-midpoint tree with 64-point leaves: built ~3x faster than a balanced one and ~1.6x
        # faster than with 16-point leaves, the same nearest vertices; built once per seeding, for
        # ~300 queries)
        near = vis[cKDTree(np.column_stack([xv, yv]), leafsize=64, balanced_tree=False,
                           compact_nodes=False).query(c)[1]]
        tris = self.vertex_faces[near]  # [m, k] padded with -1 ...
        tris = tris[:, : int((tris >= 0).sum(1).max())]  # ... to the most any vertex has (32): cut here
        tri_v = self.faces[np.maximum(tris, 0)]  # [m, k, 3]
        tri_cam = self.vertices[tri_v] @ R.T + t  # [m, k, 3, 3]
        f, c0 = K[[0, 1], [0, 1]], K[:2, 2]
        bary = barycentric_2d(c[:, None], tri_cam[..., :2] / tri_cam[..., 2:] * f + c0)  # [m, k, 3]
        worst = np.where(tris >= 0, bary.min(-1), -np.inf)
        pick = worst.argmax(1)
        rows = np.arange(len(c))
        ok = worst[rows, pick] > -0.05  # inside a triangle around the vertex (allowing for rounding)
        bary = np.clip(bary[rows, pick][ok], 0, 1)
        tv = tri_v[rows, pick][ok]
        wts = bary / tri_cam[rows, pick][ok][..., 2]  # perspective-correct: screen barycentrics -> surface ones
        wts /= wts.sum(1, keepdims=True)
        return np.einsum("mi,mij->mj", wts, self.vertices[tv]), c[ok]


@functools.lru_cache(maxsize=32)
def _disc_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dy, dx)`` of the pixels ``cv2.circle`` fills around a centre at ``radius``."""
    r = max(radius, 0)
    dy, dx = np.nonzero(cv2.circle(np.zeros((2 * r + 1, 2 * r + 1), np.uint8), (r, r), r, 1, -1))
    return dy - r, dx - r


def _clear_discs(mask: np.ndarray, centres: np.ndarray, radius: int) -> None:
    """Set to 0, in place, the pixels of ``mask`` that ``cv2.circle`` fills at ``radius`` around the
    integer pixels ``centres [m, 2]`` (x, y; any may lie outside): every disc stamped by one indexed
    assignment instead of ``m`` calls (0.19 against 0.26 ms for 150 discs of radius 7; a dilation by
    the disc, 0.42 ms)."""
    dy, dx = _disc_offsets(radius)
    ys, xs = (centres[:, 1, None] + dy).ravel(), (centres[:, 0, None] + dx).ravel()
    inside = (ys >= 0) & (ys < mask.shape[0]) & (xs >= 0) & (xs < mask.shape[1])
    mask[ys[inside], xs[inside]] = 0


def _solve(objs: list[np.ndarray], imgs: list[np.ndarray], K: np.ndarray, rvecs: list[np.ndarray],
           tvecs: list[np.ndarray], opts: FlowOptions) -> list[tuple[bool, np.ndarray, np.ndarray, np.ndarray]]:
    """Head poses from sets of 2-D–3-D pairs (``objs[i] [n_i, 3]``, ``imgs[i] [n_i, 2]``), each by
    robust Gauss-Newton (Cauchy weights, iteratively reweighted) from its previous frame's pose
    ``rvecs[i], tvecs[i]``: per set ``(ok, rvec, tvec, inlier mask)``.

    The previous pose is a few pixels off at most, so a robust local solve finds the pose that
    RANSAC finds (points on the moving mouth, or dragged by an occluder's edge, get no weight) at a
    fraction of its cost; on four synthetic turns it was also more accurate (4.5° against 4.7°).
    The sets (the starts of one direction, :func:`track_starts`) are solved together, padded to
    one array: at a few hundred points numpy's cost per call, not the arithmetic, is most of a
    solve's time."""
    out: list[tuple[bool, np.ndarray, np.ndarray, np.ndarray]] = [
        (False, rvecs[i], tvecs[i], np.zeros(len(o), bool)) for i, o in enumerate(objs)]
    todo = [i for i, o in enumerate(objs) if len(o) >= max(opts.min_inliers, 6)]
    if not todo:
        return out
    B, n = len(todo), max(len(objs[i]) for i in todo)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # padding: copies of the set's first point, weightless (and left out of the inliers); a point
    # of its own head, so as far in front of the camera as the set's points are
    objT, ix, iy, real = np.empty((B, 3, n)), np.empty((B, n)), np.empty((B, n)), np.zeros((B, n))
    for b, i in enumerate(todo):
        m = len(objs[i])
        objT[b, :, :m], objT[b, :, m:] = objs[i].T, objs[i][0, :, None]
        ix[b, :m], iy[b, :m] = imgs[i][:, 0] - cx, imgs[i][:, 1] - cy
        ix[b, m:], iy[b, m:] = ix[b, 0], iy[b, 0]
        real[b, :m] = 1.0
    # The rotation is updated by a left-multiplied small rotation (R <- exp(w) R), whose Jacobian
    # is closed-form in the camera-space points: no Rodrigues derivative, no cv2.projectPoints (which
    # also differentiates intrinsics and distortion). Per point as rows: the Jacobian [6, 2n] holds
    # the x residuals' derivatives, then the y ones'.
    R = np.stack([cv2.Rodrigues(rvecs[i])[0] for i in todo])
    t = np.stack([tvecs[i].ravel().astype(np.float64) for i in todo])
    J, r = np.zeros((B, 6, 2 * n)), np.empty((B, 2 * n))
    running, failed = np.ones(B, bool), np.zeros(B, bool)
    for it in range(opts.pose_iters):
        P = R @ objT  # rotated points; camera space: P + t
        Px, Py, Pz = P[:, 0], P[:, 1], P[:, 2]
        iz = 1.0 / (Pz + t[:, 2:3])
        u, v = (Px + t[:, 0:1]) * iz, (Py + t[:, 1:2]) * iz
        ax, ay = fx * iz, fy * iz
        np.subtract(fx * u, ix, out=r[:, :n])
        np.subtract(fy * v, iy, out=r[:, n:])
        J[:, 0, :n], J[:, 1, :n], J[:, 2, :n] = -ax * u * Py, ax * (Pz + u * Px), -ax * Py
        J[:, 3, :n], J[:, 5, :n] = ax, -ax * u
        J[:, 0, n:], J[:, 1, n:], J[:, 2, n:] = -ay * (Pz + v * Py), ay * v * Px, ay * Px
        J[:, 4, n:], J[:, 5, n:] = ay, -ay * v
        scale = opts.inlier_px * (2.0 if it < 2 else 1.0)  # wider first: the previous pose is off
        w = real / (1.0 + (r[:, :n] ** 2 + r[:, n:] ** 2) / scale**2)
        Jw = J * np.concatenate([w, w], 1)[:, None]
        step = np.linalg.solve(Jw @ J.transpose(0, 2, 1) + 1e-9 * np.eye(6), -(Jw @ r[:, :, None]))[..., 0]
        bad = running & ~np.isfinite(step).all(1)
        failed |= bad
        running &= ~bad
        for b in np.flatnonzero(running).tolist():
            R[b] = cv2.Rodrigues(step[b, :3])[0] @ R[b]
            t[b] += step[b, 3:]
            if it >= 2 and np.abs(step[b]).max() < 1e-6:  # converged (a micro-radian, a micrometre)
                running[b] = False
        if not running.any():
            break
    C = R @ objT + t[:, :, None]
    dist = np.hypot(fx * C[:, 0] / C[:, 2] - ix, fy * C[:, 1] / C[:, 2] - iy)
    for b, i in enumerate(todo):
        if failed[b]:
            continue
        mask = dist[b, :len(objs[i])] < opts.inlier_px
        if mask.sum() < opts.min_inliers or mask.mean() < opts.min_inlier_fraction:
            out[i] = (False, rvecs[i], tvecs[i], mask)
        else:
            out[i] = (True, cv2.Rodrigues(R[b])[0], t[b].reshape(3, 1).copy(), mask)
    return out


def track_direction(surface: HeadSurface, grays: list[np.ndarray], K: np.ndarray, R0: np.ndarray,
                    t0: np.ndarray, opts: FlowOptions) -> GapTrack:
    """Follow the head from ``grays[0]`` (the anchor, camera ``R0, t0``) through ``grays[1:]``;
    returns the OpenCV ``[R|t]`` of each following frame as ``rvec, tvec`` rows ``[n, 6]`` (NaN
    from the first lost frame on). One start of :func:`track_starts`."""
    return track_starts([surface], [(R0, t0)], [0], grays, K, opts)[0]


@dataclass
class _Follow:
    """One start's state in :func:`track_starts`: its points (model space and pixels), the current
    pose (``rvec, tvec``), the frame before's ``(R, t)`` and how many points it last picked."""

    obj: np.ndarray
    pts: np.ndarray
    rvec: np.ndarray
    tvec: np.ndarray
    before: tuple[np.ndarray, np.ndarray] | None
    n_seed: int


class _Try(NamedTuple):
    """One Lucas-Kanade try of a start in a frame: where its points start (None: where they are),
    OpenCV's flags and the pyramid levels."""

    init: np.ndarray | None
    flags: int
    levels: int


def track_starts(surfaces: list[HeadSurface], poses0: list[tuple[np.ndarray, np.ndarray]], begins: list[int],
                 grays: list[np.ndarray], K: np.ndarray, opts: FlowOptions) -> list[GapTrack]:
    """Several starts of one direction, followed side by side through the same frames: start ``j``
    (the head fitted there, ``surfaces[j]``, and its OpenCV camera ``poses0[j] = (R, t)``) begins on
    ``grays[begins[j]]``. Each keeps its own points and pose: its track is the one
    :func:`track_direction` gives it alone on the same surface (to rounding: the padded solve sums
    in another order). What they share is the work per frame: one Lucas-Kanade call for every start
    at the same kind of try (its image derivatives computed once) and one padded pose solve. Returns
    each start's :class:`GapTrack` over the frames after its own (NaN from where it lost the track)."""
    n = len(grays) - 1
    outs = [np.full((n - b0, 6), np.nan) for b0 in begins]
    counts = [np.zeros(n - b0, int) for b0 in begins]
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
    win = (opts.lk_window, opts.lk_window)
    f, c = K[[0, 1], [0, 1]], K[:2, 2]
    live: dict[int, _Follow] = {}  # the starts following now (not one with too few points to begin, or lost)

    def project(obj: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
        cam = obj @ R.T + t
        return cam[:, :2] / cam[:, 2:] * f + c

    for k in range(n):
        for j in [j for j, b0 in enumerate(begins) if b0 == k]:
            R0, t0 = poses0[j]
            obj, pts = surfaces[j].visible_points(grays[k], K, R0, t0, opts.max_points)
            if len(obj) >= opts.min_inliers:
                live[j] = _Follow(obj, pts.astype(np.float32), cv2.Rodrigues(R0)[0], t0.reshape(3, 1).copy(),
                                  None, len(obj))
        if not live:
            if all(b0 <= k for b0 in begins):
                break
            continue
        prev, cur = grays[k], grays[k + 1]
        pose_k = {j: (cv2.Rodrigues(s.rvec)[0], s.tvec.ravel().copy()) for j, s in live.items()}
        # each start's tries: where the head's motion from the frame before to this one, once more,
        # moves each point (Lucas-Kanade on few levels), then the full pyramid from where they are
        tries: dict[int, list[_Try]] = {}
        for j, s in live.items():
            tries[j] = [_Try(None, 0, opts.lk_levels)]
            if opts.lk_levels_predicted >= 0 and s.before is not None:
                (Rk, tk), (Rp, tp) = pose_k[j], s.before
                moved = project(s.obj, Rk @ Rp.T @ Rk, 2 * tk - tp) - project(s.obj, Rk, tk)
                init = (s.pts + moved).astype(np.float32)
                tries[j].insert(0, _Try(init, cv2.OPTFLOW_USE_INITIAL_FLOW, opts.lk_levels_predicted))
        result: dict[int, tuple[bool, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        todo = sorted(live)
        while todo:
            found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            kinds: dict[tuple[int, int], list[int]] = {}
            for j in todo:
                kinds.setdefault((tries[j][0].flags, tries[j][0].levels), []).append(j)
            for (flags, levels), js in kinds.items():
                # (no forward-backward check: it doubled the cost, and the robust pose solve drops
                # what it would have; 4 synthetic turns: 6.9° with it, 4.7° without, with RANSAC then)
                init = np.concatenate([tries[j][0].init for j in js]) if flags else None
                nxt, st, _ = cv2.calcOpticalFlowPyrLK(prev, cur, np.concatenate([live[j].pts for j in js]), init,
                                                      winSize=win, maxLevel=levels, criteria=criteria, flags=flags)
                ends = np.cumsum([len(live[j].pts) for j in js])
                for j, part, held in zip(js, np.split(nxt, ends[:-1]), np.split(st.ravel() == 1, ends[:-1])):
                    found[j] = (part, held)
            solved = _solve([live[j].obj[found[j][1]].astype(np.float64) for j in todo],
                            [found[j][0][found[j][1]].astype(np.float64) for j in todo], K,
                            [live[j].rvec for j in todo], [live[j].tvec for j in todo], opts)
            again = []
            for j, (ok, rv, tv, mask) in zip(todo, solved):
                tries[j].pop(0)
                if ok or not tries[j]:
                    result[j] = (ok, found[j][1], found[j][0], rv, tv, mask)
                else:
                    again.append(j)
            todo = again
        for j, (ok, good, nxt, rv, tv, mask) in result.items():
            s = live[j]
            if not ok:
                del live[j]
                continue
            s.before, s.rvec, s.tvec = pose_k[j], rv, tv
            outs[j][k - begins[j]] = np.concatenate([rv.ravel(), tv.ravel()])
            counts[j][k - begins[j]] = int(mask.sum())
            obj, pts = s.obj[good][mask], nxt[good][mask]
            if len(obj) < opts.reseed_fraction * s.n_seed:  # the surface turns: pick points newly in view
                new_obj, new_pts = surfaces[j].visible_points(cur, K, cv2.Rodrigues(rv)[0], tv.ravel(),
                                                              opts.max_points - len(obj), pts)
                if len(new_obj):
                    obj = np.concatenate([obj, new_obj])
                    pts = np.concatenate([pts, new_pts.astype(np.float32)])
                s.n_seed = max(len(obj), opts.min_inliers)
            s.obj, s.pts = obj, pts
    return [GapTrack(o, cnt) for o, cnt in zip(outs, counts)]


def _blend(fwd: np.ndarray, bwd: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Poses ``pose6 [n, 6]`` from two directions (NaN where lost), blended with weight ``w`` of the
    backward one (rotation: spherical interpolation; camera centre: linear)."""
    from scipy.spatial.transform import Rotation

    from flame_tracker.camera import slerp

    out = np.where(np.isfinite(fwd), fwd, bwd)
    both = np.isfinite(fwd).all(1) & np.isfinite(bwd).all(1)
    if both.any():
        f, b, wb = Rotation.from_rotvec(fwd[both, :3]), Rotation.from_rotvec(bwd[both, :3]), w[both]
        out[both, :3] = slerp(f, b, wb).as_rotvec()
        out[both, 3:] = (1 - wb[:, None]) * fwd[both, 3:] + wb[:, None] * bwd[both, 3:]
    return out


def _pull(track: np.ndarray, at_end: np.ndarray, target: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``track`` ``pose6 [n, 6]`` corrected by the fraction ``w [n]`` of what takes its pose
    ``at_end`` onto ``target`` (both ``[6]``): drift spread over the track, none at ``w = 0``, exact
    at ``w = 1``. A turn of the head turns the camera's rotation and its centre (model space) alike,
    so the partial correction turns both; what is left of the centre's offset is added linearly."""
    from scipy.spatial.transform import Rotation

    fix = Rotation.from_rotvec(target[:3]) * Rotation.from_rotvec(at_end[:3]).inv()
    out = track.copy()
    ok = np.isfinite(track).all(1)
    part = Rotation.from_rotvec(w[ok, None] * fix.as_rotvec())
    out[ok, :3] = (part * Rotation.from_rotvec(track[ok, :3])).as_rotvec()
    out[ok, 3:] = part.apply(track[ok, 3:]) + w[ok, None] * (target[3:] - fix.apply(at_end[3:]))
    return out


def _anchored(fwd: np.ndarray, bwd: np.ndarray, ends: dict[str, np.ndarray], fits: np.ndarray, gap: _Gap,
              times: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fwd, bwd, weight of bwd)`` for :func:`_blend`, so that the gap's poses meet the fits
    ``fits [T, 6]`` at both ends without a jump. ``w``: each gap frame's place between the two ends.

    A track that reaches the far end while the other does not hold over the whole gap (a face covered
    from brows to chin, whose hair alone carried one direction: it jumped by 28° onto the far end's
    landmarks in a trial) has its drift there (``ends``: its pose in that frame) spread back over the
    gap. Where both hold on only part of the gap, the backward one's weight grows from 0 to 1 over
    the frames both hold (a fixed place in the gap jumped where one of them started or stopped)."""
    fwd_ok, bwd_ok = np.isfinite(fwd).all(1), np.isfinite(bwd).all(1)
    if not len(fwd_ok):
        return fwd, bwd, w
    if not (fwd_ok.all() and bwd_ok.all()):  # (both over the whole gap: as they are)
        if gap.b is not None and fwd_ok[-1] and np.isfinite(fits[gap.b]).all():
            at_end = ends["fwd"] if np.isfinite(ends["fwd"]).all() else fwd[-1]
            fwd = _pull(fwd, at_end, fits[gap.b], w)
        if gap.a is not None and bwd_ok[0] and np.isfinite(fits[gap.a]).all():
            at_end = ends["bwd"] if np.isfinite(ends["bwd"]).all() else bwd[0]
            bwd = _pull(bwd, at_end, fits[gap.a], 1 - w)
    if fwd_ok.any() and bwd_ok.any():
        rows = np.arange(gap.g0, gap.g1)
        first, last = int(np.argmax(bwd_ok)), len(fwd_ok) - 1 - int(np.argmax(fwd_ok[::-1]))
        # (both tracks: both ends have landmarks, so the frames before and after the gap exist)
        t0, t1 = times[rows[first] - 1], times[rows[last] + 1]
        return fwd, bwd, np.clip((times[rows] - t0) / max(t1 - t0, 1e-9), 0, 1)
    return fwd, bwd, w


def _mean_pose(poses: list[np.ndarray]) -> np.ndarray:
    """Per frame (in tracking order), the mean of several ``pose6 [n, 6]`` (NaN from where each lost
    the track): rotation by the mean quaternion (scipy's ``Rotation.mean``), translation linearly.
    Once a start has dropped out, the mean moves on by the mean frame-to-frame motion of those left,
    so that it does not jump by the spread between the starts."""
    from scipy.spatial.transform import Rotation

    if len(poses) == 1:
        return poses[0]
    P = np.stack(poses)  # [k, n, 6]
    ok = np.isfinite(P).all(2)
    out = np.full(P.shape[1:], np.nan)
    following = False  # a start dropped out: follow the others' motion from the last mean
    for i in range(P.shape[1]):
        held = np.flatnonzero(ok[:, i])
        if not len(held):
            break
        if i > 0 and len(held) < int(ok[:, i - 1].sum()):
            following = True
        if not following:
            out[i, :3] = Rotation.from_rotvec(P[held, i, :3]).mean().as_rotvec()
            out[i, 3:] = P[held, i, 3:].mean(0)
            continue
        step = Rotation.from_rotvec(P[held, i - 1, :3]).inv() * Rotation.from_rotvec(P[held, i, :3])
        out[i, :3] = (Rotation.from_rotvec(out[i - 1, :3]) * step.mean()).as_rotvec()
        out[i, 3:] = out[i - 1, 3:] + (P[held, i, 3:] - P[held, i - 1, 3:]).mean(0)
    return out


def gaps(valid: np.ndarray) -> list[tuple[int, int]]:
    """Runs ``[start, stop)`` of frames without landmarks."""
    v = np.asarray(valid, bool)
    d = np.diff(np.concatenate([[0], (~v).astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), stops.tolist()))


#: ``(rows, scale) -> {row: grey uint8 frame resized by scale}``; called with increasing first rows.
FrameSource = Callable[[np.ndarray, float], dict[int, np.ndarray]]


def grey(image: np.ndarray, scale: float) -> np.ndarray:
    """An RGB frame as the grey image flow works on, resized by ``scale`` (pixel averaging)."""
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    return cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else g


def frames_in_memory(images) -> FrameSource:
    """A :data:`FrameSource` over a list of RGB frames (tests, benchmarks)."""
    return lambda rows, scale: {int(r): grey(images[int(r)], scale) for r in rows}


@dataclass(frozen=True)
class _Gap:
    """A run ``[g0, g1)`` of frames without landmarks and where flow starts on either side: ``a`` /
    ``b`` the frames with landmarks just before / after it (None at the video's ends) and
    ``a_start`` / ``b_start`` the furthest anchors, up to ``anchor_back + (anchors - 1) * anchor_step``
    frames further into those runs. ``probes``: frames with landmarks inside the run (short
    re-detections, :attr:`FlowOptions.probe_s`), followed through and checked against the flow."""

    g0: int
    g1: int
    a: int | None
    a_start: int | None
    b: int | None
    b_start: int | None
    probes: tuple[int, ...] = ()

    @property
    def rows(self) -> np.ndarray:
        """Every frame the flow reads: anchor to anchor."""
        lo = self.g0 if self.a_start is None else self.a_start
        hi = self.g1 - 1 if self.b_start is None else self.b_start
        return np.arange(lo, hi + 1)


def _flow_gaps(valid: np.ndarray, times: np.ndarray, opts: FlowOptions,
               cuts: np.ndarray | None = None) -> list[_Gap]:
    """The gaps flow tracks: with landmarks on at least one side, no longer than ``max_gap_s`` (and,
    between two frames with landmarks, longer than ``min_gap_s``: shorter ones are bridged), not
    ending on a shot cut (``cuts [T]``, :func:`~flame_tracker.video.track.shot_cuts`: the two sides
    are other shots, and where in the gap the cut lies is unknown). Two gaps with only a short run
    of landmark frames between them (``probe_s``, no cut in it) are one gap with those frames as
    its ``probes``."""
    t_len = len(valid)
    cut = np.zeros(t_len + 1, bool) if cuts is None else np.r_[np.asarray(cuts, bool), False]
    runs: list[tuple[int, int, tuple[int, ...]]] = []
    for g0, g1 in gaps(valid):
        if runs:
            p0, p1, probes = runs[-1]
            # (only where the one gap is followed: the two gaps are otherwise left as they were)
            if (times[g0] - times[p1] <= opts.probe_s + 1e-9 and not cut[p1:g0 + 1].any()
                    and times[min(g1, t_len - 1)] - times[max(p0 - 1, 0)] <= opts.max_gap_s
                    and not (p0 == 0 and g1 == t_len) and not (g1 < t_len and cut[g1])):
                runs[-1] = (p0, g1, probes + tuple(range(p1, g0)))
                continue
        runs.append((g0, g1, ()))
    out = []
    back = opts.anchor_back + (opts.anchors - 1) * opts.anchor_step
    for g0, g1, probes in runs:
        if (g0 == 0 and g1 == t_len) or (g1 < t_len and cut[g1]):
            continue
        if times[min(g1, t_len - 1)] - times[max(g0 - 1, 0)] > opts.max_gap_s:
            continue
        if g0 > 0 and g1 < t_len and times[g1] - times[g0 - 1] <= opts.min_gap_s + 1e-9:
            continue  # (short, with landmarks on both sides: bridged)
        a = a_start = b = b_start = None
        if g0 > 0:
            a = a_start = g0 - 1
            while a_start > 0 and valid[a_start - 1] and a - a_start < back:
                a_start -= 1
        if g1 < t_len:
            b = b_start = g1
            while b_start < t_len - 1 and valid[b_start + 1] and b_start - b < back:
                b_start += 1
        out.append(_Gap(g0, g1, a, a_start, b, b_start, probes))
    return out


def needed_rows(valid: np.ndarray, times: np.ndarray, opts: FlowOptions | None = None,
                cuts: np.ndarray | None = None) -> np.ndarray:
    """Every row :func:`flow_through_gaps` will ask its frame source for (decode them in one pass)."""
    rows = [g.rows for g in _flow_gaps(valid, times, opts or FlowOptions(), cuts)]
    return np.unique(np.concatenate(rows)) if rows else np.zeros(0, int)


def flow_through_gaps(model, identity, raw: dict[str, np.ndarray], valid: np.ndarray, times: np.ndarray,
                      frames: FrameSource, opts: FlowOptions | None = None, copy: bool = True,
                      cuts: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Fill the gaps of ``raw`` (per-frame fits, NaN where ``valid`` is False) with flow-tracked
    poses; returns ``(raw', flow [T] bool, inliers [T])``: ``raw'`` has the flow frames' pose (and
    the expression, jaw and eyes interpolated between the gap's ends); ``copy=False``: ``raw``
    itself, filled in place. ``cuts``: shot cuts (no gap ending on one is followed)."""

    opts = opts or FlowOptions()
    if copy:
        raw = {k: v.copy() for k, v in raw.items()}
    t_len = len(valid)
    flow = np.zeros(t_len, bool)
    inliers = np.zeros(t_len, int)
    crop = identity.camera_crop
    # one working scale for every gap: the face about work_face_px large
    s = min(1.0, opts.work_face_px / max(identity.crop[2] / 1.6, 1.0))
    S = np.diag([s, s, 1.0])
    from concurrent.futures import ThreadPoolExecutor

    from flame_tracker.threads import available_cpus

    workers = min(available_cpus(), 2)  # the two directions
    with ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        _fill_gaps(model, identity, raw, valid, times, frames, opts, flow, inliers, crop, s, S, pool, cuts)
    return raw, flow, inliers


def _fill_gaps(model, identity, raw: dict[str, np.ndarray], valid: np.ndarray, times: np.ndarray, frames: FrameSource,
               opts: FlowOptions, flow: np.ndarray, inliers: np.ndarray, crop, s: float, S: np.ndarray, pool,
               cuts: np.ndarray | None = None) -> None:
    """:func:`flow_through_gaps`' work, gap by gap (``pool``: threads for the tracks, or None)."""
    from flame_tracker.camera import opencv_to_pose6, to_opencv
    from flame_tracker.threads import opencv_single_thread
    from flame_tracker.video.track import rotation_error_deg

    for gap in _flow_gaps(valid, times, opts, cuts):
        grays = frames(gap.rows, s)
        if any(int(r) not in grays for r in gap.rows):
            continue
        gap_rows = np.arange(gap.g0, gap.g1)
        n = len(gap_rows)
        none = (np.full((n, 6), np.nan), np.zeros(n, int))
        dirs = {"fwd": none, "bwd": none}
        # forward from the anchors before the gap, backward from the ones after it: each direction's
        # starts (furthest first) followed side by side (track_starts); the two directions run in
        # two threads (OpenCV and numpy release Python's lock), put together in order
        jobs: list[tuple[str, int, list[int]]] = []
        for key, end, s0 in (("fwd", gap.a, gap.a_start), ("bwd", gap.b, gap.b_start)):
            if end is None or s0 is None:
                continue
            sign = 1 if key == "fwd" else -1
            backs = [opts.anchor_back + opts.anchor_step * i for i in range(opts.anchors)]
            starts = [end - sign * k for k in backs if sign * (end - sign * k) >= sign * s0] or [s0]
            jobs.append((key, end, starts[::-1]))

        def run(job: tuple[str, int, list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
            key, end, starts = job
            # from the furthest start through the others to the gap, through it and on into the frame
            # with landmarks at its far end (where the track's drift shows, if it is the only one there)
            far = gap.b if key == "fwd" else gap.a
            order = [int(r) for r in (gap_rows if key == "fwd" else gap_rows[::-1])] + ([] if far is None else [far])
            sign = 1 if key == "fwd" else -1
            seq = list(range(starts[0], end + sign, sign)) + order
            cams = [[x.numpy() for x in to_opencv(torch.as_tensor(raw["pose6"][st]), identity.fov, crop)]
                    for st in starts]
            K, poses0 = cams[0][0], [(R0, t0) for _, R0, t0 in cams]  # (K: the same for every frame)
            surfaces = HeadSurface.fitted(model, identity.shape,
                                          [{k: raw[k][st] for k in ("expr", "jaw_pose", "eye_pose")} for st in starts])
            tracks = track_starts(surfaces, poses0, [abs(st - starts[0]) for st in starts],
                                  [grays[r] for r in seq], S @ K, opts)
            out = []
            for st, tr in zip(starts, tracks):
                lead = abs(end - st)  # its frames with landmarks before the gap
                found, cnt = tr.pose6[lead:], tr.inliers[lead:]
                pose = np.full((len(order), 6), np.nan)
                ok = np.isfinite(found).all(1)
                if ok.any():
                    R = torch.as_tensor(np.stack([cv2.Rodrigues(v[:3])[0] for v in found[ok]]))
                    pose[ok] = opencv_to_pose6(R, torch.as_tensor(found[ok, 3:])).numpy()
                out.append((pose, cnt))
            return out[::-1]  # nearest start first

        if pool is not None and len(jobs) > 1:
            # OpenCV's own threads (Lucas-Kanade splits its points among them) on top of the two
            # directions' threads would oversubscribe the cores: one each while they run side by side
            with opencv_single_thread():
                per_job = list(pool.map(run, jobs))
        else:
            per_job = [run(j) for j in jobs]
        runs_of = {j[0]: rs for j, rs in zip(jobs, per_job)}
        ends = {"fwd": np.full(6, np.nan), "bwd": np.full(6, np.nan)}  # each track's pose at the far end
        for key in ("fwd", "bwd"):
            runs = runs_of.get(key, [])
            if not runs:
                continue
            pose, cnt = _mean_pose([r[0] for r in runs]), np.max([r[1][:n] for r in runs], 0)
            ends[key] = pose[n] if len(pose) > n else ends[key]
            dirs[key] = (pose[:n], cnt) if key == "fwd" else (pose[:n][::-1], cnt[::-1])
        fwd, bwd = dirs["fwd"], dirs["bwd"]
        ta = times[gap.a] if gap.a is not None else times[gap.g0]
        tb = times[gap.b] if gap.b is not None else times[gap.g1 - 1]
        w = np.clip((times[gap_rows] - ta) / max(tb - ta, 1e-9), 0, 1)
        pose = _blend(*_anchored(fwd[0], bwd[0], ends, raw["pose6"], gap, times, w))
        got = np.isfinite(pose).all(1)
        inliers[gap_rows] = np.maximum(fwd[1], bwd[1])
        if gap.probes:  # landmarks found again inside the gap: kept where they agree with the flow
            probe = np.flatnonzero(np.isin(gap_rows, gap.probes))
            fitted = raw["pose6"][gap_rows[probe], :3]
            checked = got[probe] & np.isfinite(fitted).all(1)
            turn = rotation_error_deg(np.nan_to_num(fitted), np.nan_to_num(pose[probe, :3]))
            kept = probe[~(checked & (turn > opts.probe_deg))]
            got[kept] = False
            inliers[gap_rows[kept]] = 0
        raw["pose6"][gap_rows[got]] = pose[got]
        flow[gap_rows[got]] = True
        # expression, jaw and eyes: from the ends (interpolated between two, held from one)
        for k in ("expr", "jaw_pose", "eye_pose"):
            if gap.a is not None and gap.b is not None:
                vals = (1 - w)[:, None] * raw[k][gap.a] + w[:, None] * raw[k][gap.b]
            else:
                one = gap.a if gap.a is not None else gap.b
                vals = np.broadcast_to(raw[k][one], (n, raw[k].shape[1]))
            raw[k][gap_rows[got]] = vals[got]
        raw["err_ndc"][gap_rows[got]] = np.nan


__all__ = ["SOURCES", "FlowOptions", "FrameSource", "GapTrack", "HeadSurface", "flow_through_gaps", "frames_in_memory",
           "gaps", "grey", "needed_rows", "track_direction", "track_starts"]
