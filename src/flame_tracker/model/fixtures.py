"""Synthetic FLAME-format model files for tests and benchmarks (no FLAME licence needed).

:func:`write_flame_model` writes a ``.pkl`` with the keys, dtypes and pickling of the official
files (protocol 2; arrays wrapped in ``chumpy.ch.Ch`` objects referenced by name, exactly as
chumpy pickles them, but written without chumpy; ``J_regressor`` a ``scipy.sparse.csc.csc_matrix``)
plus the landmark embedding files FLAME users have. Two sizes:

* ``"flame"``: FLAME's topology counts (5,023 vertices, 9,976 triangles) with the iris and ear
  vertex ids of docs/reference.md §4.3-4.4 placed on the eyeballs and ears (including the reference's
  left-ear bug: vertex 641 sits on the right ear), so FLAME-specific code paths run;
* ``"tiny"``: a few hundred vertices for fast unit tests (no iris/ear ids).

The geometry is a head-sized ellipsoid (metres, FLAME axes) bent so that its 68 landmarks lie at a
typical face's landmark positions, with two eyeballs; bases are smooth random fields. It looks
nothing like a real head in detail, but has the right sizes, symmetry and landmark layout.

Example::

    from flame_tracker.model.fixtures import write_flame_model
    pkl = write_flame_model(tmp_path, size="flame")
    model = load_model(pkl)            # finds landmark_embedding.npy next to it
    model = synthetic_flame("flame")   # the same in one call (memoised per process)
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.spatial import cKDTree

from flame_tracker.errors import InputError

from .flame import L_EAR_INDICES_REFERENCE, L_EYE_INDICES, R_EAR_INDICES, R_EYE_INDICES

#: A typical face's 68 iBUG landmarks in millimetres (FLAME axes), from the ICT-FaceKit (MIT)
#: neutral face, rounded: only used to lay out the synthetic face.
CANONICAL_68_MM = np.array([
    [-74, 37, 37], [-73, 15, 39], [-69, -5, 45], [-66, -24, 52], [-57, -45, 61], [-43, -62, 73],
    [-31, -69, 88], [-15, -73, 103], [0, -76, 104], [15, -73, 103], [31, -69, 88], [43, -62, 73],
    [57, -45, 61], [66, -24, 52], [69, -5, 45], [73, 15, 39], [74, 37, 37], [-58, 52, 79],
    [-49, 60, 90], [-38, 63, 98], [-24, 62, 105], [-12, 59, 107], [12, 59, 107], [24, 62, 105],
    [38, 63, 98], [49, 60, 90], [58, 52, 79], [0, 37, 107], [0, 26, 115], [0, 16, 123], [0, 4, 131],
    [-13, -11, 109], [-6, -11, 114], [0, -12, 116], [6, -11, 114], [13, -11, 109], [-45, 34, 86],
    [-39, 39, 94], [-28, 39, 95], [-18, 33, 92], [-27, 31, 94], [-39, 31, 92], [18, 33, 92],
    [28, 39, 95], [39, 39, 94], [45, 34, 86], [39, 31, 92], [27, 31, 94], [-25, -35, 102],
    [-17, -28, 112], [-7, -24, 117], [0, -25, 118], [7, -24, 117], [17, -28, 112], [25, -35, 102],
    [18, -41, 109], [10, -43, 114], [0, -44, 115], [-10, -43, 114], [-18, -41, 109], [-22, -35, 101],
    [-10, -33, 111], [0, -33, 113], [10, -33, 111], [22, -35, 101], [11, -34, 110], [0, -34, 113],
    [-11, -34, 110],
], dtype=np.float64)

# Grid sizes giving exactly FLAME's 5,023 vertices and 9,976 triangles: a head surface of
# `rows x cols` (wrapped around) closed by a top pole, and two eyeballs of `a x b` + a front pole.
_SIZES = {"flame": (106, 46, 8, 9), "tiny": (10, 12, 3, 6)}
_CENTRE = np.array([0.0, 0.0, 0.02])
_AXES = np.array([0.082, 0.125, 0.105])
_EYE_CENTRES = np.array([[0.032, 0.036, 0.080], [-0.032, 0.036, 0.080]])  # left (+x), right
_EYE_R = 0.0125


# ---------------------------------------------------------------------- geometry
def _wrapped_grid(rows: int, cols: int, offset: int) -> np.ndarray:
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(cols), indexing="ij")
    a = offset + r * cols + c
    b = offset + r * cols + (c + 1) % cols
    cc, d = a + cols, b + cols
    return np.concatenate([np.stack([a, cc, b], -1), np.stack([b, cc, d], -1)]).reshape(-1, 3)


def _fan(pole: int, ring: np.ndarray, flip: bool) -> np.ndarray:
    nxt = np.roll(ring, -1)
    tri = np.stack([np.full_like(ring, pole), nxt, ring] if not flip else [np.full_like(ring, pole), ring, nxt], -1)
    return tri


def _geometry(size: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices, faces and a part label per vertex (0 head, 3 left eye, 4 right eye)."""
    rows, cols, a, b = _SIZES[size]
    # Head: latitude from near the crown (pole added separately) to the neck.
    theta = np.linspace(0.12, 0.83 * np.pi, rows)
    phi = np.linspace(0, 2 * np.pi, cols, endpoint=False) + np.pi / 2  # column 0 faces +z
    t, p = np.meshgrid(theta, phi, indexing="ij")
    unit = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    head = _CENTRE + unit * _AXES
    # Bend the ellipsoid radially so it passes through the canonical landmarks (Shepard blend that
    # fades out away from them).
    lmk = CANONICAL_68_MM / 1000.0
    dirs = (head - _CENTRE) / np.linalg.norm(head - _CENTRE, axis=1, keepdims=True)
    ldir = (lmk - _CENTRE) / np.linalg.norm(lmk - _CENTRE, axis=1, keepdims=True)
    on_ell = 1.0 / np.linalg.norm(ldir / _AXES, axis=1)  # ellipsoid radius along each landmark ray
    delta = np.linalg.norm(lmk - _CENTRE, axis=1) - on_ell
    k = np.exp(-(np.linalg.norm(dirs[:, None] - ldir[None], axis=2) ** 2) / (2 * 0.08**2))
    head = head + dirs * ((k @ delta) / (k.sum(1) + 0.05))[:, None]
    top = _CENTRE + np.array([0.0, _AXES[1], 0.0])
    verts = [head, top[None]]
    faces = [_wrapped_grid(rows, cols, 0), _fan(rows * cols, np.arange(cols), flip=True)]
    label = [np.zeros(rows * cols + 1, int)]
    n = rows * cols + 1
    for j, centre in ((3, _EYE_CENTRES[0]), (4, _EYE_CENTRES[1])):
        et = np.linspace(0.95 * np.pi, 0.18 * np.pi, a)  # from the back towards the cornea
        ep = np.linspace(0, 2 * np.pi, b, endpoint=False)
        tt, pp = np.meshgrid(et, ep, indexing="ij")
        sph = np.stack([np.sin(tt) * np.cos(pp), np.sin(tt) * np.sin(pp), np.cos(tt)], -1).reshape(-1, 3)
        verts += [centre + _EYE_R * sph, (centre + [0, 0, _EYE_R])[None]]
        faces += [_wrapped_grid(a, b, n), _fan(n + a * b, n + (a - 1) * b + np.arange(b), flip=False)]
        label.append(np.full(a * b + 1, j))
        n += a * b + 1
    v, f, lab = np.concatenate(verts), np.concatenate(faces), np.concatenate(label)
    for part in np.unique(lab):  # orient each closed-ish part outwards (positive signed volume)
        sel = lab[f[:, 0]] == part
        t = v[f[sel]] - v[lab == part].mean(0)
        if np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() < 0:
            f[sel] = f[sel][:, [0, 2, 1]]
    return v, f, lab


def _flame_ids(v: np.ndarray, label: np.ndarray) -> dict[int, np.ndarray]:
    """Target positions for the FLAME iris / ear vertex ids (docs/reference.md §4.3-4.4)."""
    targets: dict[int, np.ndarray] = {}
    for ids, centre in ((R_EYE_INDICES, _EYE_CENTRES[1]), (L_EYE_INDICES, _EYE_CENTRES[0])):
        pupil = centre + [0, 0, _EYE_R]
        ring = [(1, 0), (0, 1), (-1, 0), (0, -1)]  # image-right, up, image-left, down
        targets[ids[0]] = pupil
        for i, (dx, dy) in zip(ids[1:], ring):
            targets[i] = pupil + 0.0047 * np.array([dx, dy, -0.2])
    ang = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    oval = np.stack([np.zeros(20), 0.02 + 0.028 * np.cos(ang), -0.005 + 0.014 * np.sin(ang)], -1)
    for ids, side in ((L_EAR_INDICES_REFERENCE, 1.0), (R_EAR_INDICES, -1.0)):
        for i, o in zip(ids, oval):
            targets[i] = o + [side * 0.09, 0, 0]
    # The reference's bug: its "left" ear point 9 (vertex 641) is a right-ear vertex.
    targets[641] = targets[R_EAR_INDICES[9]] + [0.0, 0.004, 0.0]
    return targets


def _relabel_for_flame_ids(v: np.ndarray, faces: np.ndarray, label: np.ndarray):
    """Permute vertex ids so FLAME's iris/ear ids sit at their target positions."""
    targets = _flame_ids(v, label)
    V = v.shape[0]
    new_of_old = np.full(V, -1)
    taken = np.zeros(V, bool)
    for new_id, pos in targets.items():
        part = 3 if new_id in L_EYE_INDICES else 4 if new_id in R_EYE_INDICES else 0
        d = np.linalg.norm(v - pos, axis=1) + 1e9 * (taken | (label != part))
        old = int(np.argmin(d))
        new_of_old[old] = new_id
        taken[old] = True
    free_new = np.setdiff1d(np.arange(V), list(targets))
    new_of_old[~taken] = free_new
    old_of_new = np.argsort(new_of_old)
    return v[old_of_new], new_of_old[faces], label[old_of_new]


# ---------------------------------------------------------------------- model arrays
def _smooth_field(rng: np.random.Generator, pts: np.ndarray, k: int, scale: np.ndarray) -> np.ndarray:
    """k smooth random displacement fields [V,3,k] with per-component amplitude ``scale``."""
    n_feat = 24
    omega = rng.normal(size=(3, n_feat)) * 25.0  # wavelengths of a few centimetres
    phase = rng.uniform(0, 2 * np.pi, n_feat)
    feats = np.sin(pts @ omega + phase) / np.sqrt(n_feat)  # [V,F]
    w = rng.normal(size=(n_feat, 3, k)) * scale
    return np.einsum("vf,fck->vck", feats, w)


def flame_model_arrays(size: str = "flame", n_shape: int = 300, n_expr: int = 100,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of a synthetic FLAME model (keys as in the official ``.pkl``)."""
    if size not in _SIZES:
        raise InputError(f"size must be one of {sorted(_SIZES)}, got {size!r}")
    rng = np.random.default_rng(seed)
    v, faces, label = _geometry(size)
    if size == "flame":
        v, faces, label = _relabel_for_flame_ids(v, faces, label)
    V = v.shape[0]
    head = label == 0
    mouth_y = -0.02
    # Skinning weights: jaw = lower front face, global = neck base, neck = rest of the head.
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    w = np.zeros((V, 5))
    w[:, 2] = sig((mouth_y - v[:, 1]) / 0.008) * sig((v[:, 2] - 0.04) / 0.008)
    w[:, 0] = sig((-0.085 - v[:, 1]) / 0.008)
    w[:, 1] = np.clip(1 - w[:, 0] - w[:, 2], 0, None)
    w[w < 0.02] = 0.0  # local support (upper face rigid, like FLAME): the jaw moves only its vertices
    w[~head] = 0.0
    w[label == 3, 3] = 1.0
    w[label == 4, 4] = 1.0
    w /= w.sum(1, keepdims=True)

    # Joint regressor: sparse averages of a few vertices (like FLAME's).
    def near(p: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
        d = np.linalg.norm(v - p, axis=1) + 1e9 * ~mask
        return np.argsort(d)[:k]

    groups = [
        near(np.array([0, -0.11, 0.02]), head, 12),  # global: neck base
        near(np.array([0, -0.07, 0.02]), head, 12),  # neck
        near(np.array([0, -0.01, 0.0]), head, 12),  # jaw hinge level
        np.flatnonzero(label == 3),
        np.flatnonzero(label == 4),
    ]
    rows = np.concatenate([np.full(g.size, j) for j, g in enumerate(groups)])
    cols = np.concatenate(groups)
    vals = np.concatenate([np.full(g.size, 1.0 / g.size) for g in groups])
    J_regressor = sp.csc_matrix((vals, (rows, cols)), shape=(5, V))

    amp_s = 0.006 / np.sqrt(1 + np.arange(n_shape))
    amp_e = 0.004 / np.sqrt(1 + np.arange(n_expr))
    shapedirs = _smooth_field(rng, v, n_shape, amp_s)
    exprdirs = _smooth_field(rng, v, n_expr, amp_e) * (v[:, 2:3, None] > 0.0)  # face front only
    shapedirs[~head] = 0.0  # eyeballs stay rigid spheres
    exprdirs[~head] = 0.0
    posedirs = _smooth_field(rng, v, 36, np.full(36, 0.002))
    for j in range(1, 5):  # each joint's correctives only where that joint has weight
        posedirs[w[:, j] == 0, :, 9 * (j - 1) : 9 * j] = 0.0
    J = J_regressor @ v
    kintree = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.uint32)
    return {
        "v_template": v,
        "f": faces.astype(np.uint32),
        "shapedirs": np.concatenate([shapedirs, exprdirs], 2),
        "posedirs": posedirs,
        "J_regressor": J_regressor,
        "weights": w,
        "kintree_table": kintree,
        "J": J,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def landmark_faces(v: np.ndarray, faces: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest triangle (by centroid) to each point, with barycentrics of the closest point."""
    tri = v[faces]
    cent = tri.mean(1)
    fidx = cKDTree(cent).query(points)[1]
    a, b, c = (tri[fidx, i] for i in range(3))
    e0, e1, p = b - a, c - a, points - a
    d00, d01, d11 = (e0 * e0).sum(1), (e0 * e1).sum(1), (e1 * e1).sum(1)
    d20, d21 = (p * e0).sum(1), (p * e1).sum(1)
    den = d00 * d11 - d01 * d01
    bv = (d11 * d20 - d01 * d21) / den
    bw = (d00 * d21 - d01 * d20) / den
    bary = np.clip(np.stack([1 - bv - bw, bv, bw], 1), 0, None)
    return fidx.astype(np.int64), bary / bary.sum(1, keepdims=True)


# ---------------------------------------------------------------------- chumpy-style pickling
class _Ch:
    """Written as ``chumpy.ch.Ch`` with chumpy's own pickled state (``x`` holds the array)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __reduce_ex__(self, protocol: int):
        state = {"x": self.x, "_dirty_vars": set(), "_itr": None, "_depends_on_deps": {},
                 "_make_dense": False, "_make_sparse": False}
        return copyreg.__newobj__, (type(self),), state


_NP_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
# Names as they appear in the official (Python 2 era) files.
_LEGACY_NAMES = {
    id(_Ch): ("chumpy.ch", "Ch"),
    id(_NP_RECONSTRUCT): ("numpy.core.multiarray", "_reconstruct"),
    id(sp.csc_matrix): ("scipy.sparse.csc", "csc_matrix"),
}


class _LegacyPickler(pickle._Pickler):  # the pure-Python pickler lets us name globals ourselves
    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        # Python 2 ``str`` opcodes, as in the official files (and no latin-1 round trip).
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None):  # noqa: ANN001
        legacy = _LEGACY_NAMES.get(id(obj))
        if legacy is None:
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + f"{legacy[0]}\n{legacy[1]}\n".encode())
        self.memoize(obj)


def dump_legacy_pickle(obj: object, path: str | Path) -> None:
    """Pickle ``obj`` like the official FLAME files (protocol 2, legacy global names)."""
    with open(path, "wb") as f:
        _LegacyPickler(f, protocol=2).dump(obj)


def write_flame_model(
    folder: str | Path,
    size: str = "flame",
    *,
    n_shape: int = 300,
    n_expr: int = 100,
    seed: int = 0,
    style: str = "2020",
    embedding: str = "deca",
    mediapipe: bool = True,
    filename: str | None = None,
) -> Path:
    """Write a synthetic FLAME model and landmark files into ``folder``; return the ``.pkl`` path.

    n_shape: 300 gives FLAME's layout (``shapedirs`` = 300 identity + ``n_expr`` expression
    components); another value stores the expressions under ``expressiondirs``.
    style: ``"2020"`` (arrays as ``chumpy.ch.Ch``, like ``generic_model.pkl``) or ``"2023_open"``
    (plain numpy arrays). embedding: ``"deca"`` (``landmark_embedding.npy``), ``"static_dynamic"``
    (``flame_static_embedding.pkl`` + ``flame_dynamic_embedding.npy``) or ``"none"``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = flame_model_arrays(size, n_shape=n_shape, n_expr=n_expr, seed=seed)
    wrap = _Ch if style == "2020" else (lambda x: x)
    if style not in ("2020", "2023_open"):
        raise InputError(f"style must be '2020' or '2023_open', got {style!r}")
    if n_shape != 300:  # FLAME's layout splits shapedirs at 300; otherwise store expressions apart
        arrays["expressiondirs"] = arrays["shapedirs"][:, :, n_shape:]
        arrays["shapedirs"] = arrays["shapedirs"][:, :, :n_shape]
    obj = {k: (wrap(val) if k in ("v_template", "shapedirs", "expressiondirs", "posedirs", "weights", "J")
               else val) for k, val in arrays.items()}
    name = filename or ("generic_model.pkl" if style == "2020" else "flame2023_Open.pkl")
    path = folder / name
    dump_legacy_pickle(obj, path)

    v, faces = arrays["v_template"], arrays["f"].astype(np.int64)
    fidx, bary = landmark_faces(v, faces, CANONICAL_68_MM / 1000.0)
    # Dynamic contour table in DECA's layout: entry k is the jaw contour seen at yaw k degrees
    # (k <= 39) or -(k - 39) degrees; here the frontal contour turned about the vertical axis.
    yaw = np.deg2rad(np.r_[np.arange(40), -np.arange(1, 40)])
    c, s_ = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    contour = CANONICAL_68_MM[:17] / 1000.0 - _CENTRE
    turned = np.stack([c * contour[:, 0] + s_ * contour[:, 2], np.broadcast_to(contour[:, 1], (79, 17)),
                       -s_ * contour[:, 0] + c * contour[:, 2]], -1) + _CENTRE
    dyn_f, dyn_b = landmark_faces(v, faces, turned.reshape(-1, 3))
    dyn_f, dyn_b = dyn_f.reshape(79, 17), dyn_b.reshape(79, 17, 3)
    if embedding == "deca":
        np.save(folder / "landmark_embedding.npy", {
            "static_lmk_faces_idx": fidx[17:], "static_lmk_bary_coords": bary[17:],
            "dynamic_lmk_faces_idx": dyn_f, "dynamic_lmk_bary_coords": dyn_b,
            "full_lmk_faces_idx": fidx[None], "full_lmk_bary_coords": bary[None],
        }, allow_pickle=True)
    elif embedding == "static_dynamic":
        dump_legacy_pickle({"lmk_face_idx": fidx[17:].astype(np.uint32), "lmk_b_coords": bary[17:]},
                           folder / "flame_static_embedding.pkl")
        np.save(folder / "flame_dynamic_embedding.npy", {"lmk_face_idx": dyn_f, "lmk_b_coords": dyn_b},
                allow_pickle=True)
    elif embedding != "none":
        raise InputError(f"embedding must be 'deca', 'static_dynamic' or 'none', got {embedding!r}")
    if mediapipe:
        rng = np.random.default_rng(seed + 1)
        front = np.flatnonzero(v[faces].mean(1)[:, 2] > 0.08)
        pick = rng.choice(front, size=min(105, front.size), replace=False)
        np.savez(folder / "mediapipe_landmark_embedding.npz", lmk_face_idx=pick,
                 lmk_b_coords=np.full((pick.size, 3), 1 / 3),
                 landmark_indices=np.sort(rng.choice(468, size=pick.size, replace=False)))
    return path


@functools.lru_cache(maxsize=8)
def _synthetic_data(size: str, n_shape: int, n_expr: int, seed: int):
    from .loader import load_model_data

    with tempfile.TemporaryDirectory() as tmp:
        return load_model_data(write_flame_model(tmp, size, n_shape=n_shape, n_expr=n_expr, seed=seed),
                               use_cache=False)


def synthetic_flame(size: str = "tiny", *, n_shape: int = 300, n_expr: int = 100, seed: int = 0,
                    dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A :class:`HeadModel` of a synthetic FLAME file (written, loaded through the real FLAME
    loader, memoised per process). For tests and benchmarks of code that needs a FLAME model."""
    from .head import HeadModel

    return HeadModel(_synthetic_data(size, n_shape, n_expr, seed), dtype=dtype).to(device)


def flame_topology_model(folder: str | Path, *, dtype: torch.dtype = torch.float32):
    """A :class:`HeadModel` on the real FLAME mesh of ``folder`` (``../shared/models/flame_topology``:
    ``flame_sample.ply`` + ``flame_static_embedding.pkl`` + ``flame_dynamic_embedding.npy``, MIT, no
    bases): the sample head as template, one all-zero shape and expression component (that folder
    has no bases), every vertex skinned to the root, eye joints at the eyeball centres, and FLAME's
    own 68 landmarks (the dynamic contour's frontal row + the 51 static points) and dynamic contour.
    For checking what is derived on FLAME's topology (landmark embeddings) against FLAME's files."""
    from ..io.mesh import load_ply
    from .data import JOINT_NAMES, ModelData
    from .flame import L_EYE_INDICES, R_EYE_INDICES, fixed_ear_indices, read_embeddings
    from .head import HeadModel

    folder = Path(folder)
    v, faces = load_ply(folder / "flame_sample.ply")
    v = v.astype(np.float64)
    emb = read_embeddings([folder / "flame_static_embedding.pkl", folder / "flame_dynamic_embedding.npy"])
    n_v, n_j = v.shape[0], len(JOINT_NAMES)
    reg = np.zeros((n_j, n_v))
    head = np.arange(0, FLAME_EYEBALLS[0])
    reg[:3, head] = 1.0 / head.size  # root, neck, jaw: the head's centroid (no posing here)
    for j, (lo, hi) in zip((3, 4), (FLAME_EYEBALLS, (FLAME_EYEBALLS[1], n_v))):
        reg[j, lo:hi] = 1.0 / (hi - lo)
    weights = np.zeros((n_v, n_j))
    weights[:, 0] = 1.0
    data = ModelData(
        name="flame_topology_sample", v_template=v, faces=faces.astype(np.int64),
        shapedirs=np.zeros((n_v, 3, 1)), exprdirs=np.zeros((n_v, 3, 1)), J_regressor=reg,
        parents=np.array([-1, 0, 1, 1, 1]), weights=weights, lmk_faces_idx=emb["lmk_faces_idx"],
        lmk_bary=emb["lmk_bary"], iris_idx=np.array(R_EYE_INDICES + L_EYE_INDICES),
        ear_idx=fixed_ear_indices(v), dyn_lmk_faces_idx=emb["dyn_lmk_faces_idx"],
        dyn_lmk_bary=emb["dyn_lmk_bary"], info={"source": str(folder), "licence": "MIT (RingNet)"},
    )
    return HeadModel(data, dtype=dtype)


#: FLAME's eyeball vertex ranges: 3931..4476 and 4477..5022 (546 each), after the head.
FLAME_EYEBALLS = (3931, 4477)
