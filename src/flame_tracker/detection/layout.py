"""MediaPipe 478-point mesh → iBUG/dlib 68-point layout, iris points and their index tables.

Each dlib point is one MediaPipe point or a weighted mean of two, stored as index pairs (a single
index is repeated) and the weight of the second index, so the conversion is one gather and one
weighted sum for any batch of frames. Two tables:

* ``"reference"``: the reference tracker's ``utils/mp2dlib.py`` exactly (docs/reference.md §6.2;
  every weight 0.5).
* ``"improved"`` (default): the reference with principled corrections. The first two were measured
  on the hand-annotated 300-W image (``benchmarks/detection.py``; NME 0.0558 → 0.0510, and 0.0588
  → 0.0546 on its mirror image), the rest on the five hand-annotated photos of ``images/`` (two
  people; ``evaluation.runs.annotated_photos``), each better on every one of the five:
  - jaw point 13 = mean(361, 288), the mirror image of point 3 = mean(132, 58); the reference
    uses 361 alone, which breaks the left/right symmetry of the contour;
  - brows 17–26: 300-W annotates five points spread evenly along the brow's upper edge from its
    outer end to its inner end, the head of the brow above the nose. The points are placed at 0,
    1/4, 1/2, 3/4 and 1 of MediaPipe's upper brow contour (70, 63, 105, 66, 107) continued to its
    inner end (55; mirrored: 300, 293, 334, 296, 336, 285), by arc length: the weights follow
    from where those points lie along it (0, 0.13, 0.31, 0.56, 0.84, 1; the same within 0.03 on
    every photo). The reference averages upper and lower edge points and puts the outer ends on
    156/383, below the brow; the first version here used the upper contour one to one, whose
    points crowd the outer end. Brow NME 7.6 % → 3.5 % of the outer inter-ocular distance;
  - nose bridge 27–29: 300-W puts 27 at the root of the nose (MediaPipe's 168, where the reference
    averages 168 and 6, lower) and 28, 29 evenly between it and the tip (30 = 4): at 1/3 and 2/3
    of the midline 168, 6, 197, 195, 5, 4 by arc length. Nose NME 3.2 % → 1.9 %;
  - lower-lip points 55 and 59 are 405 and 181: 300-W's annotators put them about halfway along
    the lower lip from the corner to its centre (0.43-0.54 of the arc on the annotated photos),
    where MediaPipe's 405 and 181 lie (0.51-0.56); the reference's 321 and 91 lie a third of the
    way (0.30-0.35). Their error falls from 7.2 % to 2.5 %.
"""

from __future__ import annotations

import numpy as np

from flame_tracker.errors import InputError

# dlib index -> (mp_a, mp_b); the reference's point is (p[a] + p[b]) / 2. Checked against docs/reference.md §6.2.
MP_TO_DLIB68_REFERENCE = np.array(
    [
        # jaw contour 0..16
        (127, 127), (234, 234), (93, 93), (132, 58), (58, 172), (136, 136), (150, 150), (176, 176),
        (152, 152), (400, 400), (379, 379), (365, 365), (397, 288), (361, 361), (323, 323),
        (454, 454), (356, 356),
        # right brow 17..21, left brow 22..26
        (156, 156), (70, 63), (105, 105), (66, 66), (107, 55),
        (336, 285), (296, 296), (334, 334), (293, 300), (383, 383),
        # nose 27..35
        (168, 6), (197, 195), (5, 5), (4, 4), (98, 98), (97, 97), (2, 2), (326, 326), (327, 327),
        # right eye 36..41, left eye 42..47
        (33, 33), (160, 160), (158, 158), (133, 133), (153, 153), (144, 144),
        (362, 362), (385, 385), (387, 387), (263, 263), (373, 373), (380, 380),
        # outer lips 48..59
        (61, 61), (39, 39), (37, 37), (0, 0), (267, 267), (269, 269), (291, 291), (321, 321),
        (314, 314), (17, 17), (84, 84), (91, 91),
        # inner lips 60..67
        (78, 78), (82, 82), (13, 13), (312, 312), (308, 308), (317, 317), (14, 14), (87, 87),
    ],
    dtype=np.int64,
)

MP_TO_DLIB68_REFERENCE.flags.writeable = False

MP_TO_DLIB68 = MP_TO_DLIB68_REFERENCE.copy()
#: weight of the second index of each pair: the point is (1 - w) * p[a] + w * p[b]
MP_TO_DLIB68_WEIGHTS = np.full(68, 0.5)
MP_TO_DLIB68[13] = (361, 288)
# brows at 0, 1/4, 1/2, 3/4, 1 of the upper edge from the outer to the inner end (the left brow,
# 26..22, mirrors the right, 17..21)
_BROW = {17: (70, 70, 0.5), 18: (63, 105, 0.65), 19: (105, 66, 0.76), 20: (66, 107, 0.67), 21: (55, 55, 0.5),
         26: (300, 300, 0.5), 25: (293, 334, 0.65), 24: (334, 296, 0.76), 23: (296, 336, 0.67),
         22: (285, 285, 0.5)}
# nose root, then 1/3 and 2/3 of the midline to the tip
_NOSE = {27: (168, 168, 0.5), 28: (6, 197, 0.61), 29: (195, 5, 0.40)}
for _k, (_a, _b, _w) in (_BROW | _NOSE).items():
    MP_TO_DLIB68[_k] = (_a, _b)
    MP_TO_DLIB68_WEIGHTS[_k] = _w
MP_TO_DLIB68[55] = (405, 405)
MP_TO_DLIB68[59] = (181, 181)
MP_TO_DLIB68.flags.writeable = False
MP_TO_DLIB68_WEIGHTS.flags.writeable = False
_REFERENCE_WEIGHTS = np.full(68, 0.5)
_REFERENCE_WEIGHTS.flags.writeable = False

TABLES68: dict[str, np.ndarray] = {"improved": MP_TO_DLIB68, "reference": MP_TO_DLIB68_REFERENCE}
WEIGHTS68: dict[str, np.ndarray] = {"improved": MP_TO_DLIB68_WEIGHTS, "reference": _REFERENCE_WEIGHTS}

# MediaPipe's face outline (its FACEMESH_FACE_OVAL ring, from the forehead centre clockwise in the
# image): points that lie on the silhouette and slide over the cheek as the head turns.
FACE_OVAL = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
                      152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109],
                     dtype=np.int64)

# MediaPipe iris points: 468..472 subject's right eye (centre + 4), 473..477 left eye (centre + 4).
IRIS_INDICES = np.arange(468, 478, dtype=np.int64)

# Groups of the 68-point layout (dlib order; "right" = the subject's right = image left).
GROUPS68: dict[str, slice] = {
    "jaw": slice(0, 17),
    "right_brow": slice(17, 22),
    "left_brow": slice(22, 27),
    "nose": slice(27, 36),
    "right_eye": slice(36, 42),
    "left_eye": slice(42, 48),
    "outer_lips": slice(48, 60),
    "inner_lips": slice(60, 68),
}


def table68(name: str) -> np.ndarray:
    """The ``[68, 2]`` index-pair table called ``name`` (``"improved"`` or ``"reference"``); the
    weights of the pairs' second points are ``WEIGHTS68[name]``."""
    try:
        return TABLES68[name]
    except KeyError:
        raise InputError(f"unknown 68-point table {name!r}; use one of {sorted(TABLES68)}") from None


def table68_id(name: str = "improved") -> str:
    """A short hash of the 68-point table ``name`` (indices and weights): a detector embedding records
    the table its 68 points were derived with, so that one made with another table is not used."""
    import hashlib

    t = table68(name)
    return hashlib.sha1(t.astype(np.int64).tobytes() + WEIGHTS68[name].astype(np.float64).tobytes()).hexdigest()[:12]


def mediapipe_to_dlib68(points: np.ndarray, table: str = "improved") -> np.ndarray:
    """Convert ``[..., 478, D]`` MediaPipe points to ``[..., 68, D]`` dlib-layout points."""
    p = np.asarray(points)
    if p.shape[-2] < 468:
        raise InputError(f"expected MediaPipe points [..., 468 or 478, D], got shape {p.shape}")
    t = table68(table)
    w = WEIGHTS68[table][:, None]
    return (1.0 - w) * p[..., t[:, 0], :] + w * p[..., t[:, 1], :]


def iris_points(points: np.ndarray) -> np.ndarray:
    """The 10 iris points ``[..., 10, D]`` (right eye centre + 4, left eye centre + 4)."""
    p = np.asarray(points)
    if p.shape[-2] != 478:
        raise InputError(f"iris points need the 478-point mesh with iris, got shape {p.shape}")
    return p[..., IRIS_INDICES, :]


def interocular_nme(pred68: np.ndarray, gt68: np.ndarray) -> np.ndarray:
    """Mean point error normalised by the outer-eye-corner distance (points 36, 45), per face.

    Accepts ``[..., 68, 2]`` arrays and returns ``[...]``.
    """
    pred, gt = np.asarray(pred68, dtype=np.float64), np.asarray(gt68, dtype=np.float64)
    iod = np.linalg.norm(gt[..., 36, :] - gt[..., 45, :], axis=-1)
    return np.linalg.norm(pred - gt, axis=-1).mean(axis=-1) / iod


def eye_chin(lmks68: np.ndarray) -> float:
    """Eye-line-to-chin height of a face from its 68 points ``[68, 2]``, pixels (chin, point 8, to the
    middle of the outer eye corners, 36 and 45): the face size the detection search is stated in."""
    l68 = np.asarray(lmks68, dtype=np.float64)
    return float(np.linalg.norm(l68[8] - (l68[36] + l68[45]) / 2.0))


def read_pts(path: str) -> np.ndarray:
    """Read an iBUG ``.pts`` file (1-based pixel coordinates) as ``[N, 2]`` 0-based pixel-corner
    coordinates (the project convention, x right, y down): the centre of pixel 1 is 0.5.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        body = text[text.index("{") + 1 : text.index("}")]
        pts = np.array(body.split(), dtype=np.float64).reshape(-1, 2)
    except ValueError as exc:
        raise InputError(f"{path} is not an iBUG .pts file ('{{ x y ... }}' block): {exc}") from exc
    return pts - 0.5
