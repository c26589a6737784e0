"""The open ICT-FaceKit head model (MIT, USC ICT) as a :class:`ModelData`.

Two sources are accepted:

* the repacked ``ict_facekit_light.npz`` of the data folder (format in ``shared/README.md``);
* the original release's ``FaceXModel/`` folder of OBJ files (``generic_neutral_mesh.obj``,
  ``identity000.obj``..., one OBJ per expression named after it), from which the same "light"
  subset is taken: face, head and neck, and the two eyeballs.

Conversions and choices (documented because ICT has no skeleton):

* centimetres -> metres; ICT's axes already match FLAME's (+x subject's left, +y up, +z out),
  which :func:`_check_axes` verifies on the landmarks instead of assuming.
* identity PCA -> shape basis (weights ~ N(0,1)); expression blendshapes -> expression basis with
  ``expr_bounds=(0, 1)``; ``has_jaw_joint=False`` because the jaw moves through ``jawOpen`` etc.
* skeleton with FLAME's 5 joints so poses mean the same thing: the eyeballs are rigidly skinned to
  the eye joints, placed at the centre of the sphere fitted to each eyeball (so ``eye_pose`` turns
  the eyes about their centres and the iris points follow the gaze); all other vertices follow the
  neck joint. Global and neck joints share one pivot: the centroid of the neck cross-section
  2-4 cm below the chin landmark (roughly the top of the cervical spine, where a head nods). The jaw
  joint carries no vertices, so ``jaw_pose`` has no effect on this model.
* joint positions are linear in the vertices (a ``J_regressor`` like FLAME's), so they follow the
  identity: min-norm vertex weights that reproduce the pivot/sphere centre on the template.
* iris: per eye the front-most iris vertex (pupil centre), then the iris vertices nearest to the
  5.85 mm human iris radius (MediaPipe's iris model) towards image-right (+x), up, image-left and
  down, like FLAME's ring (docs/reference.md §4.3). ICT marks no limbus, hence the fixed radius.
* ears: ICT defines no ear landmarks; ``ear_idx`` is None.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .data import JOINT_NAMES, ModelData, ModelFormatError, vertex_landmarks

CM = 0.01
IRIS_RADIUS_M = 0.00585

#: Vertex ranges of the ICT-FaceKit full mesh (26,719 vertices) kept in the light model, as listed
#: in the ICT-FaceKit README: face + head and neck, then the left and right eyeballs. Each eyeball
#: is 770 sclera vertices followed by 800 iris vertices.
ICT_FULL_VERTS = 26719
ICT_KEEP = ((0, 11248), (21451, 24591))
ICT_REGIONS = {
    "face": (0, 9409), "narrow_face": (0, 6706), "head_and_neck": (9409, 11248),
    "sclera_left": (11248, 12018), "iris_left": (12018, 12818),
    "sclera_right": (12818, 13588), "iris_right": (13588, 14388),
}
#: iBUG-68 landmark vertices of ICT-FaceKit (all in the face region, same ids in full and light).
ICT_LANDMARKS_68 = np.array([
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088,
    3443, 268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140,
    2075, 1147, 4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732,
    5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216,
    6207, 6470, 5517, 5966,
])


def _min_norm_weights(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Weights w (closest to uniform) with sum(w) = 1 and w @ points = target.

    A joint regressor row that reproduces ``target`` exactly on the template and moves with the
    points when the identity changes (sum 1 makes it translation-equivariant).
    """
    n = points.shape[0]
    u = np.full(n, 1.0 / n)
    A = np.vstack([points.T, np.ones(n)])  # [4,n]
    b = np.append(target, 1.0)
    return u + A.T @ np.linalg.solve(A @ A.T, b - A @ u)


def _sphere_centre(points: np.ndarray) -> np.ndarray:
    """Least-squares sphere centre (algebraic fit)."""
    A = np.c_[2 * points, np.ones(len(points))]
    sol = np.linalg.lstsq(A, (points**2).sum(1), rcond=None)[0]
    return sol[:3]


def _check_axes(v: np.ndarray, lmk: np.ndarray, source: str) -> None:
    """Fail loudly if the mesh is not in FLAME axes (so a mirrored/rotated source is not used)."""
    p = v[lmk]
    ok = p[36, 0] < p[45, 0] and p[27, 1] > p[8, 1] and p[30, 2] > p[36, 2]
    if not ok:
        raise ModelFormatError(
            f"{source}: landmarks are not in the expected axes (+x subject's left, +y up, +z out of "
            "the face); is this an ICT-FaceKit model?"
        )


def _iris(v: np.ndarray, regions: dict[str, tuple[int, int]]) -> np.ndarray:
    out = []
    for side in ("right", "left"):  # MediaPipe order: subject's right eye first
        lo, hi = regions[f"iris_{side}"]
        iv = v[lo:hi]
        c = int(np.argmax(iv[:, 2]))
        front = iv[:, 2] > iv[c, 2] - 0.003  # the visible front layer of the iris disc
        cand = np.flatnonzero(front)
        ring = []
        for d in ((1, 0), (0, 1), (-1, 0), (0, -1)):  # image-right, up, image-left, down
            target = iv[c, :2] + IRIS_RADIUS_M * np.asarray(d, float)
            ring.append(cand[np.argmin(np.linalg.norm(iv[cand, :2] - target, axis=1))])
        out += [lo + c] + [lo + int(r) for r in ring]
    return np.asarray(out, dtype=np.int64)


def build_ict(
    neutral_cm: np.ndarray,
    faces: np.ndarray,
    identity_cm: np.ndarray,
    expression_cm: np.ndarray,
    expr_names: list[str],
    landmarks_68: np.ndarray,
    regions: dict[str, tuple[int, int]],
    source: str,
    info: dict | None = None,
) -> ModelData:
    """Convert ICT arrays (centimetres; deltas as [K,V,3]) into a :class:`ModelData` in metres."""
    v = neutral_cm.astype(np.float64) * CM
    V = v.shape[0]
    if identity_cm.shape[1:] != (V, 3) or expression_cm.shape[1:] != (V, 3):
        raise ModelFormatError(
            f"{source}: identity/expression deltas must be [K,{V},3], got {identity_cm.shape} and "
            f"{expression_cm.shape}"
        )
    lmk = np.asarray(landmarks_68, dtype=np.int64)
    if lmk.shape != (68,) or lmk.min() < 0 or lmk.max() >= V:
        raise ModelFormatError(f"{source}: landmarks_68 must be 68 vertex indices, got {lmk.shape}")
    _check_axes(v, lmk, source)
    shapedirs = np.moveaxis(identity_cm.astype(np.float64) * CM, 0, 2)
    exprdirs = np.moveaxis(expression_cm.astype(np.float64) * CM, 0, 2)

    J = len(JOINT_NAMES)
    Jreg = np.zeros((J, V))
    weights = np.zeros((V, J))
    weights[:, 1] = 1.0  # everything follows the neck (and so the global) joint ...
    for j, side in ((3, "left"), (4, "right")):  # ... except the eyeballs
        lo, hi = regions[f"sclera_{side}"][0], regions[f"iris_{side}"][1]
        weights[lo:hi] = 0.0
        weights[lo:hi, j] = 1.0
        Jreg[j, lo:hi] = _min_norm_weights(v[lo:hi], _sphere_centre(v[lo:hi]))
    chin_y = v[lmk[8], 1]
    hn_lo, hn_hi = regions["head_and_neck"]
    hn = np.arange(hn_lo, hn_hi)
    ring = hn[(v[hn, 1] < chin_y - 0.02) & (v[hn, 1] > chin_y - 0.04)]
    if ring.size < 4:
        raise ModelFormatError(f"{source}: no neck vertices below the chin to place the head pivot")
    pivot_w = np.full(ring.size, 1.0 / ring.size)
    pivot = pivot_w @ v[ring]
    pivot[0] = 0.0  # on the mid-sagittal plane
    for j in (0, 1, 2):
        Jreg[j, ring] = _min_norm_weights(v[ring], pivot)

    lmk_faces, lmk_bary = vertex_landmarks(faces, lmk)
    data = ModelData(
        name="ict_facekit_light",
        v_template=v,
        faces=faces.astype(np.int64),
        shapedirs=shapedirs,
        exprdirs=exprdirs,
        J_regressor=Jreg,
        parents=np.array([-1, 0, 1, 1, 1]),
        weights=weights,
        lmk_faces_idx=lmk_faces,
        lmk_bary=lmk_bary,
        posedirs=None,
        iris_idx=_iris(v, regions),
        ear_idx=None,
        expr_names=list(expr_names),
        expr_bounds=(0.0, 1.0),
        has_jaw_joint=False,
        info={"source": source, "units": "metres (converted from ICT centimetres)",
              "licence": "ICT-FaceKit: MIT, (c) 2020 USC Institute for Creative Technologies",
              "regions": {k: list(r) for k, r in regions.items()}, **(info or {})},
    )
    return data.validate(source)


def load_ict_npz(path: str | Path) -> ModelData:
    """Load the repacked ICT-FaceKit light npz (keys per ``shared/README.md``)."""
    path = Path(path)
    need = ("neutral", "faces", "identity_deltas", "expression_deltas", "expression_names",
            "landmarks_68", "regions")
    from flame_tracker.io.results import not_an_npz

    if path.is_file() and (why := not_an_npz(path)) is not None:
        raise ModelFormatError(f"{path}: {why}; give a FLAME .pkl, the ICT-FaceKit .npz or a FaceXModel/ folder")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelFormatError(f"{path}: not a readable npz file ({exc})") from exc
    with z:
        missing = [k for k in need if k not in z.files]
        if missing:
            raise ModelFormatError(f"{path}: missing ICT keys {missing} (has {z.files})")
        regions = {k: tuple(r) for k, r in json.loads(str(z["regions"])).items()}
        licence = str(z["license"]) if "license" in z.files else ""
        return build_ict(z["neutral"], z["faces"], z["identity_deltas"], z["expression_deltas"],
                         [str(n) for n in z["expression_names"]], z["landmarks_68"], regions,
                         str(path), info={"licence_text": licence} if licence else None)


# ---------------------------------------------------------------------- FaceXModel/ OBJ folder
def read_obj(path: Path, with_faces: bool = False) -> tuple[np.ndarray, list[list[int]] | None]:
    """Vertices [V,3] (and polygons, 0-based, when asked) of an OBJ file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot read OBJ ({exc})") from exc
    vlines = re.findall(r"^v\s+(\S+)\s+(\S+)\s+(\S+)", text, flags=re.M)
    if not vlines:
        raise ModelFormatError(f"{path}: no vertices ('v x y z' lines) in this OBJ file")
    verts = np.array(vlines, dtype=np.float64)
    polys = None
    if with_faces:
        polys = [[int(tok.split("/")[0]) - 1 for tok in m.split()]
                 for m in re.findall(r"^f\s+(.+)$", text, flags=re.M)]
    return verts, polys


def load_facex_folder(path: str | Path) -> ModelData:
    """Load the original ICT-FaceKit ``FaceXModel/`` folder (full 26,719-vertex OBJs)."""
    path = Path(path)
    neutral_file = path / "generic_neutral_mesh.obj"
    if not neutral_file.is_file():
        models = sorted(p.name for p in path.glob("*.pkl") if "embedding" not in p.name)
        hint = f"; for a FLAME model pass the .pkl itself ({path / models[0]})" if models else ""
        raise ModelFormatError(f"{path}: not an ICT-FaceKit FaceXModel folder (no generic_neutral_mesh.obj){hint}")
    neutral, polys = read_obj(neutral_file, with_faces=True)
    if neutral.shape[0] != ICT_FULL_VERTS:
        raise ModelFormatError(
            f"{neutral_file}: {neutral.shape[0]} vertices, expected ICT-FaceKit's {ICT_FULL_VERTS}"
        )
    keep = np.concatenate([np.arange(a, b) for a, b in ICT_KEEP])
    remap = np.full(ICT_FULL_VERTS, -1)
    remap[keep] = np.arange(keep.size)
    tris = []
    for poly in polys or []:
        idx = remap[poly]
        if np.all(idx >= 0):  # drop polygons touching removed parts (teeth, lashes, ...)
            tris += [(idx[0], idx[i], idx[i + 1]) for i in range(1, len(idx) - 1)]
    identity_files = sorted(path.glob("identity[0-9][0-9][0-9].obj"))
    expr_files = sorted(p for p in path.glob("*.obj")
                        if p.name != neutral_file.name and p not in identity_files)
    if not identity_files or not expr_files:
        raise ModelFormatError(f"{path}: needs identity###.obj and expression OBJ files")

    def deltas(files: list[Path]) -> np.ndarray:
        out = np.empty((len(files), keep.size, 3))
        for i, f in enumerate(files):
            v, _ = read_obj(f)
            if v.shape != neutral.shape:
                raise ModelFormatError(f"{f}: {v.shape[0]} vertices, the neutral mesh has {neutral.shape[0]}")
            out[i] = (v - neutral)[keep]
        return out

    return build_ict(neutral[keep], np.asarray(tris, dtype=np.int64), deltas(identity_files),
                     deltas(expr_files), [f.stem for f in expr_files], ICT_LANDMARKS_68,
                     ICT_REGIONS, str(path))
