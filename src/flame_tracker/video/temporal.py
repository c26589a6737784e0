"""Temporal structure of a tracked sequence: valid segments, whole-sequence smoothing, jitter.

The smoother is a Whittaker–Henderson / penalised least-squares smoother over the *entire*
sequence at once (equivalently, the RTS smoother of an integrated-random-walk motion model):

    minimise  sum_t w_t ||y_t - x_t||^2  +  lam * sum_t ||D2 y_t||^2

with ``D2`` the second divided difference on the frames' real timestamps, so variable frame rate and
dropped frames are handled: frames without a face get ``w_t = 0`` and are *bridged* by the motion
prior at their true temporal distance, never treated as if the frames around them were adjacent.
Gaps longer than ``max_gap_s`` split the sequence into independent segments. The normal matrix is
pentadiagonal, so one banded Cholesky solve handles all parameters of all frames in O(T).

Smoothing strength is set by a cutoff frequency in Hz (the -6 dB point of the smoother's
frequency response), so the same setting means the same thing at 25 or 60 fps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.linalg import solveh_banded

from flame_tracker.errors import InputError
from flame_tracker.video.store import DISK_FRAMES, unmap_pages


def segments(valid: np.ndarray, times: np.ndarray | None = None,
             max_gap_s: float = float("inf"), cuts: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Half-open index ranges ``[a, b)`` that start and end on a valid frame and contain no run of
    invalid frames spanning more than ``max_gap_s`` seconds (``times`` in seconds; without it a
    gap is measured in frames) and no shot cut (``cuts [T]``: True at the first frame of a new shot,
    :func:`~flame_tracker.video.track.shot_cuts`). Frames outside every segment cannot be tracked or
    bridged."""
    valid = np.asarray(valid, bool)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return []
    t = np.arange(valid.size, dtype=float) if times is None else np.asarray(times, float)
    # split where the time between consecutive valid frames exceeds the allowed gap, and at cuts
    dt = np.diff(t[idx])
    typical = np.median(np.diff(t)) if t.size > 1 else 1.0
    split = dt > max_gap_s + typical + 1e-9
    if cuts is not None:
        split |= np.asarray(cuts, bool)[idx[1:]]
    breaks = np.flatnonzero(split)
    starts = np.concatenate([[idx[0]], idx[breaks + 1]])
    ends = np.concatenate([idx[breaks], [idx[-1]]]) + 1
    return list(zip(starts.tolist(), ends.tolist()))


def cutoff_to_lambda(cutoff_hz: float | np.ndarray, fps: float) -> np.ndarray:
    """Penalty weight of the second-difference smoother whose gain is 1/2 at ``cutoff_hz``.

    The smoother's transfer function is ``1 / (1 + lam * (2 - 2 cos w)^2)`` (w in rad/frame).
    ``cutoff_hz`` of ``inf`` (or <= 0) disables smoothing for that parameter.
    """
    c = np.asarray(cutoff_hz, dtype=float)
    w = 2.0 * np.pi * np.minimum(c, 0.5 * fps) / fps
    with np.errstate(divide="ignore"):
        lam = 1.0 / (2.0 - 2.0 * np.cos(w)) ** 2
    return np.where(np.isfinite(c) & (c > 0), lam, 0.0)


def _second_difference(h: np.ndarray) -> sparse.csr_matrix:
    """Second divided difference for grid spacings ``h`` (in nominal frames), scaled so a uniform
    grid gives ``y[i-1] - 2 y[i] + y[i+1]``."""
    n = h.size + 1
    h0, h1 = h[:-1], h[1:]
    c = 2.0 / (h0 + h1)
    rows = np.repeat(np.arange(n - 2), 3)
    cols = (np.arange(n - 2)[:, None] + np.arange(3)[None, :]).ravel()
    vals = np.stack([c / h0, -c * (1.0 / h0 + 1.0 / h1), c / h1], axis=1).ravel()
    return sparse.csr_matrix((vals, (rows, cols)), shape=(n - 2, n))


def smooth_segment(x: np.ndarray, w: np.ndarray, lam: np.ndarray, h: np.ndarray | None = None,
                   scale: np.ndarray | None = None) -> np.ndarray:
    """Smooth one segment. ``x [n, D]`` (rows with ``w == 0`` are ignored), ``w [n]`` data weights,
    ``lam [D]`` penalty per column, ``h [n-1]`` spacings in nominal frames (default 1), ``scale
    [n]``: the penalty on the second difference centred on each frame is ``lam * scale`` (the
    first and last entries are unused; default 1: :func:`motion_scale`)."""
    n, d = x.shape
    x = np.where(w[:, None] > 0, x, 0.0)
    lam = np.broadcast_to(np.asarray(lam, float), (d,))
    if n < 3:  # a segment starts and ends on valid frames, so both rows are measurements
        return x.copy()
    h = np.ones(n - 1) if h is None else np.maximum(np.asarray(h, float), 1e-6)
    d2 = _second_difference(h)
    if scale is not None:
        d2 = sparse.diags(np.sqrt(np.asarray(scale, float)[1:-1])) @ d2
    p = (d2.T @ d2).tocsr()
    diags = [p.diagonal(k) for k in range(3)]
    out = np.empty_like(x)
    # columns sharing one penalty share one factorisation
    for value in np.unique(lam):
        cols = np.flatnonzero(lam == value)
        if value == 0.0:
            out[:, cols] = x[:, cols]
            continue
        ab = np.zeros((3, n))
        ab[2] = w + value * diags[0]
        ab[1, 1:] = value * diags[1]
        ab[0, 2:] = value * diags[2]
        out[:, cols] = solveh_banded(ab, w[:, None] * x[:, cols], check_finite=False)
    return out


#: Segments longer than this (frames, plus the padding) are smoothed in overlapping windows
#: (:func:`smooth_long_segment`): the length from which a video's arrays are files, so that a
#: shorter video's result is the one solve's, bit for bit.
SMOOTH_WINDOW = DISK_FRAMES


def _window_pad(lam: np.ndarray) -> int:
    """Frames of overlap on each side of a window: the smoother's impulse response decays over a few
    lam^(1/4) frames; 160 lam^(1/4) (at least 64) left the windows' result within ~1e-13 of the one
    solve's on random walks with 0.3-6 Hz cutoffs, one frame in 12 measured, and a stretch sampled
    10x as densely (40 lam^(1/4) left 1e-7 there: test)."""
    top = float(np.max(lam)) if np.size(lam) else 0.0
    return max(64, int(np.ceil(160.0 * top ** 0.25)))


def smooth_long_segment(x: np.ndarray, w: np.ndarray, lam: np.ndarray, h: np.ndarray | None,
                        out: np.ndarray, window: int | None = None, scale: np.ndarray | None = None) -> None:
    """:func:`smooth_segment` of one segment into ``out [n, D]``, in windows of ``window`` frames
    (default :data:`SMOOTH_WINDOW`), each solved with :func:`_window_pad` frames of its neighbours on
    either side and kept in its middle: the same result to ~1e-13 of the values' scale, with
    memory bounded by the window whatever the segment's length (a one-hour take is one segment).
    A segment up to one window (plus the padding) is solved at once, exactly."""
    n = len(x)
    window = SMOOTH_WINDOW if window is None else int(window)
    pad = _window_pad(np.asarray(lam, float))
    h = np.ones(max(n - 1, 0)) if h is None else np.asarray(h, float)
    if n <= window + 2 * pad:
        out[:] = smooth_segment(np.asarray(x, float), np.asarray(w, float), lam, h, scale)
        return
    # A window's padding must span `pad` nominal frames of time AND hold `pad` measured rows on each
    # side: the edge's effect decays with time, and only measured rows pin the curve down.
    seen = np.concatenate([[0], np.cumsum(np.asarray(w) > 0)])  # measured rows before each row
    clock = np.concatenate([[0.0], np.cumsum(h)])  # nominal time of each row
    for s in range(0, n, window):
        e = min(s + window, n)
        a = min(np.searchsorted(seen, seen[s] - pad, side="right"),
                np.searchsorted(clock, clock[s] - pad, side="right")) - 1
        b = max(np.searchsorted(seen, seen[e] + pad, side="left"),
                np.searchsorted(clock, clock[e - 1] + pad, side="left")) + 1
        a, b = max(0, int(a)), min(n, int(b))
        out[s:e] = smooth_segment(np.asarray(x[a:b], float), np.asarray(w[a:b], float), lam, h[a:b - 1],
                                  None if scale is None else scale[a:b])[s - a:e - a]
        unmap_pages(x, out)  # (files: the windows done leave the process's memory)


def smooth_sequence(x: np.ndarray, valid: np.ndarray, *, times: np.ndarray | None = None,
                    fps: float | None = None, cutoff_hz: float | np.ndarray = 4.0,
                    max_gap_s: float = 0.5, weights: np.ndarray | None = None,
                    out: np.ndarray | None = None, scale: np.ndarray | None = None,
                    cuts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Smooth per-frame parameters over the whole sequence.

    Args:
        x: ``[T, D]`` per-frame values (anything for invalid frames, NaN allowed there).
        valid: ``[T]`` frames whose values are measurements.
        times: ``[T]`` timestamps in seconds (default: ``arange(T) / fps``).
        fps: nominal rate (default: from the median time step).
        cutoff_hz: scalar or ``[D]`` cutoff per column (``inf`` = no smoothing).
        max_gap_s: longer runs of invalid frames split the sequence (nothing is bridged there).
        weights: optional ``[T]`` confidence per frame (e.g. from the fit residual).
        out: ``[T, D]`` float array to write the result into (e.g. a memory-mapped file; it is
            returned); default: a new one. Segments longer than :data:`SMOOTH_WINDOW` frames are
            solved in overlapping windows (:func:`smooth_long_segment`), so memory stays bounded.
        scale: ``[T]`` factor of the penalty centred on each frame (:func:`motion_scale`; default 1).
        cuts: ``[T]`` True at the first frame of a new shot: nothing is smoothed or bridged across.

    Returns:
        ``(y [T, D], covered [T])``: smoothed values, and which frames lie in a segment (valid or
        bridged); ``y`` is NaN elsewhere.
    """
    if not isinstance(x, np.ndarray):
        x = np.asarray(x, dtype=float)
    if np.ndim(x) != 2:
        raise InputError(f"x must be [T, D], got shape {np.shape(x)}")
    t_len = x.shape[0]
    finite = np.ones(t_len, bool)
    for s in range(0, t_len, SMOOTH_WINDOW):  # (x may be a file: read a window at a time)
        finite[s:s + SMOOTH_WINDOW] = np.isfinite(np.asarray(x[s:s + SMOOTH_WINDOW], float)).all(axis=1)
        unmap_pages(x)
    valid = np.asarray(valid, bool) & finite
    if times is None:
        if fps is None:
            raise InputError("give times or fps")
        times = np.arange(t_len) / fps
    times = np.asarray(times, dtype=float)
    step = float(np.median(np.diff(times))) if t_len > 1 else 1.0 / (fps or 1.0)
    step = step if step > 0 else 1.0 / (fps or 1.0)
    fps_eff = 1.0 / step
    lam = cutoff_to_lambda(cutoff_hz, fps_eff)
    lam = np.broadcast_to(lam, (x.shape[1],))
    w_all = valid.astype(float) if weights is None else np.where(valid, weights, 0.0)
    y = np.full(x.shape, np.nan) if out is None else out
    covered = np.zeros(t_len, bool)
    for a, b in segments(valid, times, max_gap_s, cuts):
        h = np.diff(times[a:b]) / step
        smooth_long_segment(x[a:b], w_all[a:b], lam, h, y[a:b], scale=None if scale is None else scale[a:b])
        covered[a:b] = True
    if out is not None:
        y[np.flatnonzero(~covered)] = np.nan
    return y, covered


def motion_scale(rot_deg: np.ndarray, times: np.ndarray, covered: np.ndarray, accel_deg_s2: float) -> np.ndarray:
    """``[T]`` penalty factors that let the smoother follow fast head motion: ``1 / (1 + (a /
    accel_deg_s2)^2)`` with ``a`` the angular acceleration (degrees/s², from second divided
    differences of ``rot_deg [T, 3]``, a smoothed rotation vector in degrees, on the real
    timestamps), 1 where it cannot be measured (outside ``covered`` runs, at their ends). Noise
    smoothed away has a small acceleration and keeps the full penalty; a real turn keeps its speed
    instead of being cut short (a fixed low-pass lags it: ~20 px on a quick turn of a talking head)."""
    t_len = len(times)
    out = np.ones(t_len)
    if t_len < 3 or not np.isfinite(accel_deg_s2) or accel_deg_s2 <= 0:
        return out
    h = np.diff(np.asarray(times, float))
    ok = covered[:-2] & covered[1:-1] & covered[2:] & (h[:-1] > 0) & (h[1:] > 0)
    # the smoother's own second divided difference, in seconds (rows outside `ok` are not used)
    a = np.linalg.norm(_second_difference(np.where(h > 0, h, 1.0)) @ np.nan_to_num(np.asarray(rot_deg, float)), axis=1)
    out[1:-1] = np.where(ok, 1.0 / (1.0 + (a / accel_deg_s2) ** 2), 1.0)
    return out


@dataclass
class JitterMetrics:
    """Frame-to-frame acceleration statistics over triplets of consecutive valid frames.

    ``pose_acc_deg``: RMS of ||second difference|| of the head rotation (degrees/frame^2);
    ``trans_acc_mm``: the same for the translation (mm/frame^2);
    ``lmk_acc_px``: mean ||second difference|| of the 2-D landmarks (pixels/frame^2);
    ``n_triplets``: how many triplets were measured.
    """

    pose_acc_deg: float
    trans_acc_mm: float
    lmk_acc_px: float
    n_triplets: int

    def as_dict(self) -> dict[str, float]:
        return {"pose_acc_deg": self.pose_acc_deg, "trans_acc_mm": self.trans_acc_mm,
                "lmk_acc_px": self.lmk_acc_px, "n_triplets": self.n_triplets}


def jitter_metrics(rotvec: np.ndarray, trans: np.ndarray, valid: np.ndarray,
                   landmarks_px: np.ndarray | None = None, cuts: np.ndarray | None = None) -> JitterMetrics:
    """Acceleration jitter of a track. ``rotvec [T,3]`` (rad), ``trans [T,3]`` (m),
    ``landmarks_px [T,K,2]``; only triplets whose three frames are valid count, and none across a
    shot cut (``cuts [T]``: True at a new shot's first frame; the jump there is not jitter)."""
    valid = np.asarray(valid, bool)
    ok = valid[:-2] & valid[1:-1] & valid[2:] if valid.size >= 3 else np.zeros(0, bool)
    if cuts is not None and valid.size >= 3:
        c = np.asarray(cuts, bool)
        ok = ok & ~c[1:-1] & ~c[2:]
    n = int(ok.sum())
    if n == 0:
        return JitterMetrics(float("nan"), float("nan"), float("nan"), 0)

    def acc(a: np.ndarray, keep: np.ndarray = ok) -> np.ndarray:
        """Second differences of ``a`` over the triplets ``keep`` (one per triplet start)."""
        a = np.asarray(a, float)
        return (a[2:] - 2.0 * a[1:-1] + a[:-2])[keep]

    pose = np.degrees(np.linalg.norm(acc(rotvec), axis=-1))
    tr = 1e3 * np.linalg.norm(acc(trans), axis=-1)
    lmk = float("nan")
    if landmarks_px is not None:  # in blocks of frames: [T, K, 2] temporaries are ~5 KB per frame
        total, block = 0.0, 4096
        for s in range(0, len(ok), block):
            total += float(np.linalg.norm(acc(landmarks_px[s:s + block + 2], ok[s:s + block]), axis=-1).sum())
            unmap_pages(landmarks_px)
        lmk = total / (n * np.shape(landmarks_px)[1])
    return JitterMetrics(float(np.sqrt((pose ** 2).mean())), float(np.sqrt((tr ** 2).mean())),
                         lmk, n)
