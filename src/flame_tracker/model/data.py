"""Plain-array description of a head model, shared by every loader and the npz cache.

A loader (FLAME ``.pkl``, ICT ``.npz``, ICT ``FaceXModel/`` folder) produces a :class:`ModelData`
in metres and the FLAME frame (+x subject's left, +y up, +z out of the face); :class:`HeadModel`
turns it into torch buffers. Keeping this step numpy-only makes the cache a plain ``np.savez``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from flame_tracker.errors import FlameTrackerError, InputError

#: Bump when the cached layout or a conversion changes, so stale caches are rebuilt.
CACHE_VERSION = 3

#: Joint order of every model's skeleton (FLAME's): eye_pose[:3] is joint 3, eye_pose[3:] joint 4.
JOINT_NAMES = ("global", "neck", "jaw", "left_eye", "right_eye")


class ModelFormatError(FlameTrackerError, ValueError):
    """A model or landmark file is unreadable or does not hold what a head model needs."""


@dataclass
class ModelData:
    """Arrays that define a head model (all numpy; metres; FLAME axes).

    ``lmk_faces_idx``/``lmk_bary`` define the 68 iBUG landmarks as points on triangles, so every
    model shares one landmark code path (a landmark on a vertex is a triangle with barycentrics
    ``(1, 0, 0)``). ``iris_idx`` holds 10 vertex indices in MediaPipe order (subject's right eye
    centre + 4, then left eye); ``ear_idx`` 20 left-ear then 20 right-ear vertices (i-Bug order).
    """

    name: str
    v_template: np.ndarray  # [V,3]
    faces: np.ndarray  # [F,3] int
    shapedirs: np.ndarray  # [V,3,S]
    exprdirs: np.ndarray  # [V,3,E]
    J_regressor: np.ndarray  # [J,V] dense
    parents: np.ndarray  # [J] int, -1 for the root
    weights: np.ndarray  # [V,J] skinning weights
    lmk_faces_idx: np.ndarray  # [68] int
    lmk_bary: np.ndarray  # [68,3]
    posedirs: np.ndarray | None = None  # [V,3,9*(J-1)] pose correctives
    iris_idx: np.ndarray | None = None  # [10] int
    ear_idx: np.ndarray | None = None  # [40] int
    expr_names: list[str] | None = None
    expr_bounds: tuple[float, float] | None = None
    has_jaw_joint: bool = True
    dyn_lmk_faces_idx: np.ndarray | None = None  # [79,17] int, FLAME dynamic jaw contour
    dyn_lmk_bary: np.ndarray | None = None  # [79,17,3]
    mp_lmk_faces_idx: np.ndarray | None = None  # [K] int, dense MediaPipe embedding
    mp_lmk_bary: np.ndarray | None = None  # [K,3]
    mp_lmk_indices: np.ndarray | None = None  # [K] int, which of MediaPipe's 478 points
    info: dict = field(default_factory=dict)  # provenance, licence, notes (JSON-serialisable)

    # ------------------------------------------------------------------ checks
    def validate(self, source: str | Path = "<model>") -> "ModelData":
        """Check shapes and index ranges; raise :class:`ModelFormatError` naming ``source``."""

        def fail(msg: str) -> None:
            raise ModelFormatError(f"{source}: {msg}")

        V = self.v_template.shape[0] if self.v_template.ndim == 2 else -1
        if self.v_template.ndim != 2 or self.v_template.shape[1] != 3:
            fail(f"v_template must be [V,3], got {self.v_template.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            fail(f"faces must be [F,3], got {self.faces.shape}")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= V):
            fail(f"faces index vertices outside 0..{V - 1}")
        for key in ("shapedirs", "exprdirs", "posedirs"):
            arr = getattr(self, key)
            if arr is not None and (arr.ndim != 3 or arr.shape[:2] != (V, 3)):
                fail(f"{key} must be [{V},3,K], got {arr.shape}")
        J = self.parents.shape[0]
        if J != len(JOINT_NAMES):
            fail(f"expected {len(JOINT_NAMES)} joints {JOINT_NAMES}, got {J}")
        if self.J_regressor.shape != (J, V):
            fail(f"J_regressor must be [{J},{V}], got {self.J_regressor.shape}")
        if self.weights.shape != (V, J):
            fail(f"weights must be [{V},{J}], got {self.weights.shape}")
        if self.posedirs is not None and self.posedirs.shape[2] != 9 * (J - 1):
            fail(f"posedirs must have {9 * (J - 1)} pose components, got {self.posedirs.shape[2]}")
        if self.parents[0] != -1 or np.any(self.parents[1:] >= np.arange(1, J)):
            fail(f"kinematic tree must be topologically ordered with root 0, got {self.parents}")
        F = self.faces.shape[0]
        if self.lmk_faces_idx.shape != (68,) or self.lmk_bary.shape != (68, 3):
            fail(
                f"68-point landmark embedding must be faces [68] + barycentrics [68,3], got "
                f"{self.lmk_faces_idx.shape} and {self.lmk_bary.shape}"
            )
        for key, n in (("iris_idx", 10), ("ear_idx", 40)):
            arr = getattr(self, key)
            if arr is not None and (arr.shape != (n,) or arr.min() < 0 or arr.max() >= V):
                fail(f"{key} must be {n} vertex indices in 0..{V - 1}")
        for key in ("lmk_faces_idx", "dyn_lmk_faces_idx", "mp_lmk_faces_idx"):
            arr = getattr(self, key)
            if arr is not None and arr.size and (arr.min() < 0 or arr.max() >= F):
                fail(f"{key} indexes triangles outside 0..{F - 1} (does the embedding match this mesh?)")
        if self.expr_names is not None and len(self.expr_names) != self.exprdirs.shape[2]:
            fail(f"{len(self.expr_names)} expression names for {self.exprdirs.shape[2]} components")
        return self

    # ------------------------------------------------------------------ slicing
    def truncated(self, n_shape: int | None, n_expr: int | None) -> "ModelData":
        """Return a copy keeping the first ``n_shape``/``n_expr`` components (None: all)."""
        S, E = self.shapedirs.shape[2], self.exprdirs.shape[2]
        for label, n, avail in (("n_shape", n_shape, S), ("n_expr", n_expr, E)):
            if n is not None and not 0 <= n <= avail:
                raise InputError(f"{label}={n} but the model {self.name!r} has {avail} components")
        out = ModelData(**{f.name: getattr(self, f.name) for f in fields(self)})
        out.shapedirs = self.shapedirs[:, :, : S if n_shape is None else n_shape]
        out.exprdirs = self.exprdirs[:, :, : E if n_expr is None else n_expr]
        if self.expr_names is not None:
            out.expr_names = list(self.expr_names[: out.exprdirs.shape[2]])
        return out

    # ------------------------------------------------------------------ npz cache
    def save_npz(self, path: str | Path) -> None:
        """Write an uncompressed npz (fast to load) at ``path`` (atomically)."""
        arrays: dict[str, np.ndarray] = {}
        meta = {"cache_version": CACHE_VERSION, "flame_tracker_model": True}
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, np.ndarray):
                arrays[f.name] = val
            elif val is not None:
                meta[f.name] = val
        arrays["meta"] = np.array(json.dumps(meta))
        path = Path(path)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # unique: concurrent writers
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load_npz(cls, path: str | Path) -> "ModelData":
        """Read a file written by :meth:`save_npz`."""
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise ModelFormatError(f"{path}: not a flame-tracker model npz (no 'meta' entry)")
            meta = json.loads(str(z["meta"]))
            kwargs = {k: z[k] for k in z.files if k != "meta"}
        if meta.pop("cache_version", None) != CACHE_VERSION:
            raise ModelFormatError(f"{path}: cache from another flame-tracker version; delete it")
        meta.pop("flame_tracker_model", None)
        if "expr_bounds" in meta:
            meta["expr_bounds"] = tuple(meta["expr_bounds"])
        return cls(**kwargs, **meta).validate(path)

    @staticmethod
    def is_model_npz(path: str | Path) -> bool:
        """True when ``path`` is an npz written by :meth:`save_npz`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return "meta" in z.files and "v_template" in z.files
        except Exception:
            return False


def vertex_landmarks(faces: np.ndarray, vertex_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Express landmarks given as vertex indices as (triangle index, barycentrics).

    Each vertex is mapped to one triangle that contains it, with weight 1 on that corner, so
    vertex-defined landmarks share the barycentric code path exactly.
    """
    vertex_idx = np.asarray(vertex_idx, dtype=np.int64)
    F = faces.shape[0]
    # First triangle (and corner) holding each vertex: argmax over a boolean [K, F, 3] is too big
    # for large meshes, so index a flat corner table instead.
    flat = faces.reshape(-1)
    first = np.full(int(flat.max()) + 1, -1, dtype=np.int64)
    order = np.arange(flat.size)[::-1]
    first[flat[order]] = order  # later writes win -> smallest corner id per vertex
    corner = first[vertex_idx]
    if np.any(corner < 0):
        missing = vertex_idx[corner < 0]
        raise ModelFormatError(f"landmark vertices {missing.tolist()} belong to no triangle")
    face_idx, slot = corner // 3, corner % 3
    bary = np.zeros((vertex_idx.size, 3))
    bary[np.arange(vertex_idx.size), slot] = 1.0
    assert face_idx.max() < F
    return face_idx, bary
