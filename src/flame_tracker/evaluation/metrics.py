"""Accuracy metrics against ground truth: mesh distances, rotation error, landmark NME.

All functions take numpy arrays (metres, pixels) and are vectorised over vertices.
"""

from __future__ import annotations

import numpy as np

# 68-point regions (iBUG order) for per-region NME.
REGIONS68: dict[str, slice] = {
    "jaw": slice(0, 17), "brows": slice(17, 27), "nose": slice(27, 36), "eyes": slice(36, 48),
    "mouth": slice(48, 68),
}


def eyeball_mask(model) -> np.ndarray:
    """Boolean ``[V]``: vertices skinned mostly by the eye joints (3, 4), i.e. the eyeballs."""
    return model.lbs_weights.detach().cpu().numpy()[:, 3:5].sum(1) > 0.5


def face_region_mask(model) -> np.ndarray:
    """Boolean ``[V]`` face-region vertices of a head model: forehead to chin, ear to ear, front.

    The NoW protocol's idea (compare the face, not the scalp, neck or eyeballs), defined from the
    model's own template and 68 landmarks so it works for any mesh: vertices between the chin and
    4 cm above the brows, horizontally within the jawline's ends (points 0 and 16), in front of the
    jawline ends' depth, and not on the eyeballs.
    """
    import torch

    with torch.no_grad():
        out = model()
    v = out.vertices[0].double().cpu().numpy()
    lmk = out.landmarks[0].double().cpu().numpy()
    eyes = eyeball_mask(model)
    x_max = np.abs(lmk[[0, 16], 0]).max()
    y_lo, y_hi = lmk[8, 1] - 0.005, lmk[17:27, 1].max() + 0.04
    z_lo = lmk[[0, 16], 2].mean()
    return (np.abs(v[:, 0]) <= x_max) & (v[:, 1] >= y_lo) & (v[:, 1] <= y_hi) & (v[:, 2] >= z_lo) & ~eyes


def align(src: np.ndarray, dst: np.ndarray, *, scale: bool = False) -> np.ndarray:
    """``src [P, 3]`` moved onto ``dst [P, 3]`` by the least-squares rotation + translation
    (+ uniform scale when ``scale``; Umeyama's method)."""
    from flame_tracker.multiview.geometry import similarity_transform

    s, rot, t = similarity_transform(src, dst, scale=scale)
    return s * src @ rot.T + t


def mesh_distance_mm(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
                     similarity: bool = False) -> float:
    """Mean per-vertex distance (mm) after aligning ``pred`` to ``truth`` (same topology) over ``mask``:
    rigidly, or by a similarity (``similarity=True``)."""
    p, t = (pred, truth) if mask is None else (pred[mask], truth[mask])
    return float(np.linalg.norm(align(p, t, scale=similarity) - t, axis=1).mean() * 1000.0)


def rotation_error_deg(r_pred: np.ndarray, r_true: np.ndarray) -> float:
    """Geodesic angle (degrees) between two rotation matrices."""
    c = (np.trace(r_pred.T @ r_true) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def nme(pred: np.ndarray, truth: np.ndarray, norm: float) -> np.ndarray:
    """Per-point distance ``[P]`` divided by ``norm`` (e.g. the inter-ocular distance)."""
    return np.linalg.norm(pred - truth, axis=-1) / norm


def nme_by_region(pred68: np.ndarray, truth68: np.ndarray, norm: float) -> dict[str, float]:
    """Mean NME overall (``"all"``) and per 68-point region."""
    e = nme(pred68, truth68, norm)
    out = {"all": float(np.nanmean(e))}
    out.update({k: float(np.nanmean(e[s])) for k, s in REGIONS68.items()})
    return out


def outer_interocular(lmks68: np.ndarray) -> float:
    """Distance between the outer eye corners (points 36 and 45), the 300-W normaliser."""
    return float(np.linalg.norm(lmks68[36] - lmks68[45]))


def identity_ratio(neutrals: list[np.ndarray], person: list[str], mask: np.ndarray) -> tuple[float, float, float]:
    """(ratio, same, different): mean rigid-aligned face distance (mm) between fits of the same
    person, between different people, and their ratio (lower is better; 1 = no identity at all)."""
    same: list[float] = []
    diff: list[float] = []
    for i in range(len(neutrals)):
        for j in range(i + 1, len(neutrals)):
            d = mesh_distance_mm(neutrals[i], neutrals[j], mask)
            (same if person[i] == person[j] else diff).append(d)
    s, d = float(np.mean(same)), float(np.mean(diff))
    return s / d, s, d


__all__ = ["REGIONS68", "eyeball_mask", "face_region_mask", "align", "mesh_distance_mm", "rotation_error_deg", "nme",
           "nme_by_region", "outer_interocular", "identity_ratio"]
