"""FLAME ``.pkl`` models and landmark embeddings, loaded without chumpy and without running code.

The official FLAME files (2020 ``generic_model.pkl``, 2023, 2023 Open ``flame2023_Open.pkl``) were
pickled with chumpy, which is broken on modern numpy. :class:`RestrictedUnpickler` maps chumpy's
classes to a stand-in that keeps only the wrapped array, maps scipy's sparse classes to plain
arrays, allows numpy's array reconstruction, and refuses every other global: a model file cannot
import or call anything else (``pickle.load`` on an untrusted file can run arbitrary code).

FLAME conventions kept here: ``shapedirs`` holds 300 identity then expression components
(a separate ``expressiondirs``/``exprdirs`` key is accepted too), 5 joints (global, neck, jaw, left
eye, right eye) from the sparse ``J_regressor``, ``kintree_table`` row 0 = parents.

Landmarks (docs/reference.md §4.2-4.4):

* 68 iBUG points from DECA's ``landmark_embedding.npy`` (``full_lmk_*``; ``dynamic_lmk_*`` kept as
  the optional dynamic jaw contour), or ``flame_static_embedding.pkl`` (51 points) +
  ``flame_dynamic_embedding.npy`` (17-point contour per yaw; the frontal one completes the 68);
  ``mediapipe_landmark_embedding.npz`` adds the dense MediaPipe embedding.
* 10 iris vertices and 2x20 ear vertices by index. The reference's ``L_EAR_INDICES[9] = 641`` is
  a *right*-ear vertex (x = -0.086 on the template, W2); it is replaced by the template vertex
  nearest to the mirror image (x -> -x) of the matching right-ear point ``R_EAR_INDICES[9] = 1859``,
  computed from the loaded template so it holds for FLAME 2020 and 2023 alike.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from .data import JOINT_NAMES, ModelData, ModelFormatError

FLAME_N_VERTS = 5023
FLAME_SHAPE_COMPONENTS = 300  # shapedirs[:, :, :300] identity, the rest expression
DEFAULT_N_SHAPE, DEFAULT_N_EXPR = 300, 100

R_EYE_INDICES = [4597, 4543, 4511, 4479, 4575]  # subject's right eye: centre, right, up, left, down
L_EYE_INDICES = [4051, 3997, 3965, 3933, 4020]
L_EAR_INDICES_REFERENCE = [342, 341, 166, 514, 476, 185, 369, 29, 204, 641, 179, 178, 71, 68, 138,
                           141, 91, 40, 96, 184]
R_EAR_INDICES = [1263, 844, 845, 2655, 870, 872, 1207, 523, 901, 1859, 860, 621, 618, 890, 981, 556,
                 554, 676, 1209, 868]
EAR_BUG_SLOT = 9  # L_EAR_INDICES_REFERENCE[9] = 641 lies on the right ear

EMBEDDING_FILES = ("landmark_embedding.npy", "flame_static_embedding.pkl",
                   "flame_dynamic_embedding.npy", "mediapipe_landmark_embedding.npz")


# ---------------------------------------------------------------------- restricted unpickling
class _ChumpyStandIn:
    """Receives a chumpy object's pickled state; only plain ``Ch(x)`` wrappers are accepted."""

    qualname = "chumpy"

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _SparseStandIn:
    """Receives a scipy sparse matrix's pickled state (``data, indices, indptr, shape``)."""

    fmt = "csc"

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _stand_in(base: type, label: str, **attrs: Any) -> type:
    return type(f"{base.__name__}[{label}]", (base,), {"qualname": label, **attrs})


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 pickles) limited to the stand-in classes."""
    if not (isinstance(cls, type) and issubclass(cls, (_ChumpyStandIn, _SparseStandIn))) or base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")
    return object.__new__(cls)


_NP_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_NP_SCALAR = np.float64(0).__reduce__()[0]
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy._core.multiarray", "scalar"): _NP_SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("__builtin__", "set"): set, ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "object"): object, ("builtins", "object"): object,
    ("_codecs", "encode"): lambda s, enc="utf-8": s.encode(enc),  # bytes in py3 protocol-2 pickles
}
# protocol 5 (``pickle.HIGHEST_PROTOCOL``) stores an array as its bytes + dtype + shape; np.frombuffer
# refuses object dtypes, so this builds plain arrays only
_NP_FROMBUFFER = np.arange(2.0).__reduce_ex__(5)[0]
for _mod in ("numpy.core.numeric", "numpy._core.numeric"):
    _SAFE_GLOBALS[(_mod, "_frombuffer")] = _NP_FROMBUFFER
for _fmt in ("csc", "csr", "coo"):
    for _mod in (f"scipy.sparse.{_fmt}", f"scipy.sparse._{_fmt}"):
        for _kind in ("matrix", "array"):  # scipy's sparse arrays pickle the same state
            _SAFE_GLOBALS[(_mod, f"{_fmt}_{_kind}")] = _stand_in(_SparseStandIn, f"{_fmt}_{_kind}", fmt=_fmt)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for model files: numpy arrays, chumpy ``Ch`` and scipy sparse; nothing else."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")  # py2 pickles store array bytes as str
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return _stand_in(_ChumpyStandIn, f"{module}.{name}")
        raise pickle.UnpicklingError(
            f"{self.source}: refusing to load global '{module}.{name}': model files may only hold "
            "numpy arrays, chumpy arrays and scipy sparse matrices (this file could run code)"
        )


def _plain(obj: Any, key: str, source: str) -> Any:
    """Replace stand-ins by numpy arrays."""
    if isinstance(obj, _ChumpyStandIn):
        state = obj.state if isinstance(obj.state, dict) else {}
        if "x" not in state:
            raise ModelFormatError(
                f"{source}: '{key}' is a chumpy expression ({type(obj).qualname}), not a stored "
                "array; re-export the model with plain arrays"
            )
        return np.asarray(_plain(state["x"], key, source))  # a Ch may wrap another Ch
    if isinstance(obj, _SparseStandIn):
        import scipy.sparse as sp

        s = obj.state if isinstance(obj.state, dict) else {}
        shape = s.get("_shape", s.get("shape"))
        try:
            if obj.fmt == "coo":
                m = sp.coo_matrix((s["data"], (s["row"], s["col"])), shape=shape)
            else:
                cls = sp.csc_matrix if obj.fmt == "csc" else sp.csr_matrix
                m = cls((s["data"], s["indices"], s["indptr"]), shape=shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFormatError(f"{source}: '{key}' is a damaged sparse matrix ({exc})") from exc
        return m.toarray()
    return obj


def load_pickle(path: str | Path) -> Any:
    """Safely unpickle a FLAME-style file (see :class:`RestrictedUnpickler`)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, str(path)).load()
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        if str(exc).startswith(str(path)):
            raise ModelFormatError(str(exc)) from None
        if zipfile.is_zipfile(path):  # (FLAME's download is a zip; an .npz is one too)
            raise ModelFormatError(f"{path}: a zip archive, not a pickle: unpack it (FLAME's download holds "
                                   "the .pkl); an .npz model must end in .npz") from exc
        raise ModelFormatError(f"{path}: not a valid pickle ({exc}); is the file truncated?") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, UnicodeError) as exc:
        raise ModelFormatError(f"{path}: truncated or damaged pickle ({type(exc).__name__}: {exc})") from exc


def load_npy_object(path: str | Path) -> Any:
    """Read an ``.npy`` that holds a pickled object (e.g. a dict) through the restricted unpickler."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            _, _, dtype = read_header(f)
        except ValueError as exc:
            raise ModelFormatError(f"{path}: not an .npy file ({exc})") from exc
        if not dtype.hasobject:
            f.seek(0)
            return np.load(f, allow_pickle=False)
        try:
            arr = RestrictedUnpickler(f, str(path)).load()
        except pickle.UnpicklingError as exc:
            if str(exc).startswith(str(path)):  # refused a global: the message names the file
                raise ModelFormatError(str(exc)) from None
            raise ModelFormatError(f"{path}: truncated or damaged .npy pickle ({exc})") from exc
        except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, UnicodeError) as exc:
            raise ModelFormatError(f"{path}: truncated or damaged .npy pickle ({type(exc).__name__}: {exc})") from exc
    return arr.item() if isinstance(arr, np.ndarray) and arr.dtype == object and arr.ndim == 0 else arr


def _as_dict(obj: Any, source: Path) -> dict:
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{source}: expected a dict of arrays, found {type(obj).__name__}")
    return {k: _plain(v, k, str(source)) for k, v in obj.items()}


# ---------------------------------------------------------------------- landmark embeddings
def _pick(d: dict, source: Path, *names: str) -> np.ndarray:
    for n in names:
        if n in d:
            return np.asarray(d[n])
    raise ModelFormatError(f"{source}: missing key {names[0]!r} (has {sorted(d)})")


def read_embeddings(files: list[Path]) -> dict[str, np.ndarray]:
    """Landmark arrays from the embedding files users have (see module docstring)."""
    out: dict[str, np.ndarray] = {}
    static51 = None
    for f in files:
        name = f.name
        if name.endswith(".npz"):
            try:
                with np.load(f, allow_pickle=False) as z:
                    d = dict(z)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ModelFormatError(f"{f}: not a readable landmark embedding ({type(exc).__name__}: {exc}); "
                                       "replace it, or move it away to fit without it") from exc
            out["mp_lmk_faces_idx"] = _pick(d, f, "lmk_face_idx").astype(np.int64).reshape(-1)
            out["mp_lmk_bary"] = _pick(d, f, "lmk_b_coords").reshape(-1, 3)
            out["mp_lmk_indices"] = _pick(d, f, "landmark_indices").astype(np.int64).reshape(-1)
            continue
        d = _as_dict(load_pickle(f) if name.endswith(".pkl") else load_npy_object(f), f)
        if "full_lmk_faces_idx" in d:  # DECA landmark_embedding.npy
            out["lmk_faces_idx"] = _pick(d, f, "full_lmk_faces_idx").astype(np.int64).reshape(-1)
            out["lmk_bary"] = _pick(d, f, "full_lmk_bary_coords").reshape(-1, 3)
            if "dynamic_lmk_faces_idx" in d:
                out["dyn_lmk_faces_idx"] = d["dynamic_lmk_faces_idx"].astype(np.int64)
                out["dyn_lmk_bary"] = _pick(d, f, "dynamic_lmk_bary_coords")
        elif "dynamic_lmk_faces_idx" in d or (
            "lmk_face_idx" in d and np.asarray(d["lmk_face_idx"]).ndim == 2
        ):  # flame_dynamic_embedding.npy
            out["dyn_lmk_faces_idx"] = _pick(d, f, "lmk_face_idx", "dynamic_lmk_faces_idx").astype(np.int64)
            out["dyn_lmk_bary"] = _pick(d, f, "lmk_b_coords", "dynamic_lmk_bary_coords")
        else:  # flame_static_embedding.pkl: 51 points without the jaw contour
            static51 = (_pick(d, f, "lmk_face_idx").astype(np.int64).reshape(-1),
                        _pick(d, f, "lmk_b_coords").reshape(-1, 3))
    if "lmk_faces_idx" not in out and static51 is not None:
        if "dyn_lmk_faces_idx" not in out:
            static = next(f for f in files if f.name.endswith(".pkl"))
            raise ModelFormatError(
                f"{static}: flame_static_embedding.pkl has only the 51 inner points; the 17 jaw-contour "
                f"points come from flame_dynamic_embedding.npy (put it in {static.parent})"
            )
        # Dynamic table entry 0 is the frontal (0 degree) contour: static 68 = contour + inner 51.
        out["lmk_faces_idx"] = np.concatenate([out["dyn_lmk_faces_idx"][0], static51[0]])
        out["lmk_bary"] = np.concatenate([out["dyn_lmk_bary"][0], static51[1]])
    return out


def find_embedding_files(model_path: Path, landmark_embedding: str | Path | None) -> list[Path]:
    """Embedding files: the explicit file/folder, else the files next to the model."""
    if landmark_embedding is not None:
        p = Path(landmark_embedding)
        if p.is_file():
            siblings = [p.parent / n for n in EMBEDDING_FILES if n != p.name]
            # a lone static .pkl needs its dynamic companion from the same folder
            return [p] + [s for s in siblings if s.is_file() and p.name == "flame_static_embedding.pkl"
                          and s.name == "flame_dynamic_embedding.npy"]
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: landmark embedding not found")
        folder = p
    else:
        folder = model_path.parent
    return [folder / n for n in EMBEDDING_FILES if (folder / n).is_file()]


# ---------------------------------------------------------------------- FLAME model
def fixed_ear_indices(v_template: np.ndarray) -> np.ndarray:
    """The reference's 2x20 ear vertices with the left-ear 641 bug fixed (see module docstring)."""
    left = np.array(L_EAR_INDICES_REFERENCE)
    mirrored = v_template[R_EAR_INDICES[EAR_BUG_SLOT]] * np.array([-1.0, 1.0, 1.0])
    dist = np.linalg.norm(v_template - mirrored, axis=1)
    dist[np.concatenate([left, R_EAR_INDICES])] = np.inf  # a new vertex, not a duplicate point
    left[EAR_BUG_SLOT] = int(np.argmin(dist))
    return np.concatenate([left, R_EAR_INDICES]).astype(np.int64)


REQUIRED_KEYS = ("v_template", "f", "shapedirs", "J_regressor", "weights", "kintree_table")


def load_flame(path: str | Path, landmark_embedding: str | Path | None = None) -> ModelData:
    """Read a FLAME ``.pkl`` (2020 / 2023 / 2023 Open) and its landmark embedding."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FLAME model file not found")
    d = _as_dict(load_pickle(path), path)
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ModelFormatError(f"{path}: not a FLAME model, missing keys {missing} (has {sorted(d)})")
    try:
        v = np.asarray(d["v_template"], dtype=np.float64)
        faces = np.asarray(d["f"]).astype(np.int64)
        dirs = np.asarray(d["shapedirs"], dtype=np.float64)
        Jreg = np.asarray(d["J_regressor"], dtype=np.float64)
        weights = np.asarray(d["weights"], dtype=np.float64)
        kintree = np.asarray(d["kintree_table"]).astype(np.int64)
        posedirs = np.asarray(d["posedirs"], dtype=np.float64) if "posedirs" in d else None
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"{path}: a FLAME array has the wrong type ({exc})") from exc
    if dirs.ndim != 3 or v.ndim != 2 or dirs.shape[:2] != v.shape:
        raise ModelFormatError(f"{path}: shapedirs {dirs.shape} does not match v_template {v.shape}")
    extra = d.get("expressiondirs", d.get("exprdirs"))
    if extra is not None:
        shapedirs, exprdirs = dirs, np.asarray(extra, dtype=np.float64)
    elif dirs.shape[2] > FLAME_SHAPE_COMPONENTS:
        shapedirs, exprdirs = dirs[:, :, :FLAME_SHAPE_COMPONENTS], dirs[:, :, FLAME_SHAPE_COMPONENTS:]
    else:
        raise ModelFormatError(
            f"{path}: shapedirs has {dirs.shape[2]} components; FLAME stores 300 identity + "
            "expression components (or a separate 'expressiondirs')"
        )
    if kintree.ndim != 2 or kintree.shape[0] != 2 or kintree.shape[1] != len(JOINT_NAMES):
        raise ModelFormatError(f"{path}: kintree_table must be [2,{len(JOINT_NAMES)}], got {kintree.shape}")
    parents = kintree[0].copy()
    parents[0] = -1  # stored as -1 or 2**32-1
    if weights.shape != (v.shape[0], len(JOINT_NAMES)) or Jreg.shape != (len(JOINT_NAMES), v.shape[0]):
        raise ModelFormatError(
            f"{path}: weights {weights.shape} / J_regressor {Jreg.shape} do not fit "
            f"{v.shape[0]} vertices and {len(JOINT_NAMES)} joints"
        )
    extent = float(np.ptp(v, axis=0).max()) if len(v) else 0.0
    if not np.isfinite(v).all() or not 0.05 <= extent <= 2.0:
        # FLAME is in metres (a head ~0.25 m across): a file in millimetres fits, but its cameras and
        # every export (GaussianAvatars' camera at 1 m) would be off by the factor
        what = "holds NaN or infinite values" if not np.isfinite(v).all() else (
            f"is {extent:g} units across, where FLAME's head is ~0.25 m"
            + (" (millimetres or centimetres?)" if extent > 2.0 else ""))
        raise ModelFormatError(f"{path}: v_template {what}; give a FLAME model in metres (scale v_template, "
                               "shapedirs and posedirs)")
    if posedirs is not None and posedirs.ndim == 2:  # some exports store [V*3, P]
        posedirs = posedirs.reshape(v.shape[0], 3, -1)

    files = find_embedding_files(path, landmark_embedding)
    emb = read_embeddings(files)
    if "lmk_faces_idx" not in emb:
        raise ModelFormatError(
            f"{path}: no 68-point landmark embedding found (looked for landmark_embedding.npy, or "
            f"flame_static_embedding.pkl + flame_dynamic_embedding.npy, "
            f"in {files[0].parent if files else path.parent}): put DECA's landmark_embedding.npy, or FLAME's "
            f"flame_static_embedding.pkl and flame_dynamic_embedding.npy, next to {path.name} (in Python, "
            "load_model(..., landmark_embedding=<file>) also takes them from elsewhere)"
        )
    flame_topology = v.shape[0] == FLAME_N_VERTS
    name = path.stem
    data = ModelData(
        name=name, v_template=v, faces=faces, shapedirs=shapedirs, exprdirs=exprdirs,
        J_regressor=Jreg, parents=parents, weights=weights, posedirs=posedirs,
        iris_idx=np.array(R_EYE_INDICES + L_EYE_INDICES) if flame_topology else None,
        ear_idx=fixed_ear_indices(v) if flame_topology else None,
        has_jaw_joint=True,
        info={"source": str(path), "embeddings": [str(f) for f in files],
              "default_components": {"n_shape": min(DEFAULT_N_SHAPE, shapedirs.shape[2]),
                                     "n_expr": min(DEFAULT_N_EXPR, exprdirs.shape[2])}},
        **cast(dict[str, Any], emb),
    )
    return data.validate(path)
