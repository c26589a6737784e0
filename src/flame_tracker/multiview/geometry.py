"""Triangulation and similarity alignment (vectorised over points)."""

from __future__ import annotations

import numpy as np


def triangulate(px: np.ndarray, P: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Linear (DLT) triangulation: ``px [C, N, 2]`` pixels of ``N`` points in ``C`` views with
    projection matrices ``P [C, 3, 4]``; ``weight [C, N]`` (0 = not seen; NaN points count as 0).
    Returns ``[N, 3]``, NaN where fewer than two views see a point."""
    C, N = px.shape[:2]
    w = np.ones((C, N)) if weight is None else np.asarray(weight, np.float64).copy()
    bad = ~np.isfinite(px).all(-1)
    w[bad] = 0.0
    x = np.where(bad[..., None], 0.0, px)
    # rows u P3 - P1, v P3 - P2 per view, for every point: A [N, 2C, 4]
    rows_u = x[..., 0:1] * P[:, None, 2] - P[:, None, 0]
    rows_v = x[..., 1:2] * P[:, None, 2] - P[:, None, 1]
    A = np.concatenate([rows_u * w[..., None], rows_v * w[..., None]], 0).transpose(1, 0, 2)
    # scale rows to unit length so views at other distances weigh alike
    norm = np.linalg.norm(A, axis=-1, keepdims=True)
    A = np.where(norm > 0, A / np.where(norm > 0, norm, 1), 0.0)
    _, _, vt = np.linalg.svd(A)
    X = vt[:, -1]
    out = X[:, :3] / X[:, 3:]
    out[(w > 0).sum(0) < 2] = np.nan
    return out


def similarity_transform(src: np.ndarray, dst: np.ndarray, *, scale: bool = True
                         ) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` minimising ``sum |s R src + t - dst|^2`` over rows (Umeyama's method; ``s = 1``
    unless ``scale``)."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, sig, vt = np.linalg.svd(b.T @ a)
    corr = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rot = u @ corr @ vt
    s = float((sig * np.diag(corr)).sum() / (a * a).sum()) if scale else 1.0
    return s, rot, md - s * rot @ ms


__all__ = ["triangulate", "similarity_transform"]
