"""Photometric face mask from 68 landmarks: the convex face oval minus eyes and mouth interior.

The reference masks single images with a face-parsing network and videos with the whole rendered
head, which lets hair, neck and background leak into the albedo (docs/reference.md W11). The oval of the
jawline and brows, shrunk slightly, contains only skin, brows, nose and lips; the eye openings
(36..41, 42..47) and the inner mouth (60..67), dilated a little, are cut out because the model's
eyeballs and mouth cavity do not follow the photo there.
"""

from __future__ import annotations

import cv2
import numpy as np

from flame_tracker.errors import InputError

_OVAL = np.r_[0:27]  # jawline 0..16 and brows 17..26 -> their convex hull is the face oval
_EYES = (np.r_[36:42], np.r_[42:48])
_MOUTH_INNER = np.r_[60:68]


def face_mask(
    lmks68: np.ndarray,
    height: int,
    width: int,
    *,
    shrink: float = 0.03,
    hole_grow: float = 0.25,
    user_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean face masks from 68 iBUG landmarks in pixels.

    Args:
        lmks68: ``[68, 2]`` or ``[N, 68, 2]`` landmarks (x, y pixels of the target image).
        height, width: mask size.
        shrink: erode the oval by this fraction of the face size (keeps the silhouette's
            background/hair pixels out).
        hole_grow: grow each eye/mouth hole about its centre by this fraction.
        user_mask: optional ``[H, W]`` or ``[N, H, W]`` mask (bool or 0..255) that is ANDed in.

    Returns:
        ``[H, W]`` (or ``[N, H, W]``) bool mask.
    """
    pts = np.asarray(lmks68, dtype=np.float64)
    single = pts.ndim == 2
    pts = pts.reshape(-1, *pts.shape[-2:])
    if pts.shape[1:] != (68, 2):
        raise InputError(f"face_mask needs [N,68,2] or [68,2] landmarks in pixels, got {np.asarray(lmks68).shape}")
    masks = np.zeros((len(pts), height, width), np.uint8)
    # cv2 polygon fill works in fixed point: 4 fractional bits for sub-pixel accuracy.
    shift = 4
    for n, p in enumerate(pts):  # one cv2 call per polygon per frame; no loop over points
        if not np.isfinite(p).all():
            continue
        size = np.linalg.norm(p[_OVAL].max(0) - p[_OVAL].min(0))
        hull = cv2.convexHull(p[_OVAL].astype(np.float32))[:, 0].astype(np.float64)
        centre = hull.mean(0)
        # Move each hull vertex towards the centre by ``shrink * size`` (an approximate erosion).
        d = hull - centre
        hull = centre + d * np.clip(1 - shrink * size / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9),
                                    0, 1)
        cv2.fillConvexPoly(masks[n], np.round((hull - 0.5) * (1 << shift)).astype(np.int32), 1, cv2.LINE_8, shift)
        for idx in (*_EYES, _MOUTH_INNER):
            q = p[idx]
            c = q.mean(0)
            q = c + (q - c) * (1 + hole_grow)
            poly = cv2.convexHull(q.astype(np.float32))[:, 0]
            cv2.fillConvexPoly(masks[n], np.round((poly - 0.5) * (1 << shift)).astype(np.int32), 0, cv2.LINE_8, shift)
    out = masks.astype(bool)
    if user_mask is not None:
        um = np.asarray(user_mask)
        if um.shape[-2:] != (height, width):
            raise InputError(f"user mask has shape {um.shape}, expected [..., {height}, {width}] like the image")
        out &= um.astype(bool)
    return out[0] if single else out
