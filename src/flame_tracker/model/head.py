"""`HeadModel`: one torch module for FLAME-format models and the open ICT-FaceKit model."""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from scipy import sparse

from flame_tracker.errors import InputError

from .data import JOINT_NAMES, ModelData
from .lbs import axis_angle_to_matrix, chain_plan, depth_levels, interpolate, joint_transforms, skin

POSE_SLOTS = (("head_pose", 0, 1), ("neck_pose", 1, 1), ("jaw_pose", 2, 1), ("eye_pose", 3, 2))
_POSE_SLOTS = POSE_SLOTS  # (the earlier private name)
# sizes of the pose parameters, in joint order (_POSE_SLOTS)
_POSE_SIZES = {"head_pose": 3, "neck_pose": 3, "jaw_pose": 3, "eye_pose": 6}


def _virtual_vertices(
    corners: np.ndarray, bary: np.ndarray, weights: np.ndarray, singles: tuple[np.ndarray | None, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows the landmark path evaluates, as combinations of mesh vertices.

    corners [68,3] / bary [68,3]: the landmark triangles; singles: extra vertex-index arrays (iris,
    ears). Returns coef [P,V] (row p = mix of mesh vertices), local [68+n,3] row ids per output point
    and the landmark mixing weights [68,3] over those rows. A row mixes at most 3 vertices, so
    coef is returned sparse: vertex ids [P,3] and weights [P,3] (zero-padded).
    """
    rows: dict[tuple, int] = {}

    def row(ids: tuple[int, ...], w: tuple[float, ...]) -> int:
        return rows.setdefault((ids, w), len(rows))

    local, mix = [], []
    for c, b in zip(corners.tolist(), bary.tolist()):
        if np.all(weights[c] == weights[c[0]]):  # one skinning transform for the whole triangle
            r = row(tuple(c), tuple(b))
            local.append([r, r, r])
            mix.append([1.0, 0.0, 0.0])
        else:
            local.append([row((v,), (1.0,)) for v in c])
            mix.append(b)
    for arr in singles:
        for v in ([] if arr is None else arr.tolist()):
            r = row((v,), (1.0,))
            local.append([r, r, r])
    ids = np.zeros((len(rows), 3), dtype=np.int64)
    coef = np.zeros((len(rows), 3))
    for (vs, w), r in rows.items():
        ids[r, : len(vs)] = vs
        coef[r, : len(w)] = w
    return (ids, coef), np.asarray(local, dtype=np.int64), np.asarray(mix)


class HeadOutput(NamedTuple):
    """Result of a forward pass (batch N). ``vertices`` is None on the landmark-only path."""

    vertices: torch.Tensor | None  # [N,V,3]
    landmarks: torch.Tensor  # [N,L,3]: the 68 iBUG points (or the model's other landmark set, n_lmk)
    iris: torch.Tensor | None  # [N,10,3] MediaPipe order: right eye centre+4, left eye centre+4
    ears: torch.Tensor | None  # [N,40,3] 20 left-ear then 20 right-ear (i-Bug ear order)


class LandmarkPath(NamedTuple):
    """The landmark function's fixed structure (:meth:`HeadModel.landmark_path`), what a solver
    needs to linearise it: the ``P`` landmark-path rows (vertices, or barycentric mixes of vertices
    sharing a skinning row) and the ``J`` joints, stacked like the full model's basis."""

    template: torch.Tensor  # [3P + 3J] rest positions of the rows (x, y, z of row 0, ...) then the joints
    dirs: torch.Tensor  # [3P + 3J, K] their basis (shape S, expression E, pose correctives)
    weights: torch.Tensor  # [P, J] skinning weights of the rows
    mix_t: torch.Tensor  # [P, L + 10 + 40]: rows -> landmarks, iris, ear points
    n_rows: int  # P
    n_iris: int  # 10 or 0


class HeadModel(torch.nn.Module):
    """Parametric head: template + shape/expression bases + 5-joint skeleton + landmarks.

    Parameters of :meth:`forward` / :meth:`landmarks` (all optional, zeros when omitted, batch N,
    an unbatched ``[D]`` tensor is broadcast): ``shape [N,S]``, ``expr [N,E]``, ``head_pose``,
    ``neck_pose``, ``jaw_pose [N,3]`` and ``eye_pose [N,6]`` (axis-angle; FLAME joints 3 and 4, i.e.
    the subject's left eye then right eye).

    Attributes: ``name``, ``n_shape``, ``n_expr``, ``expr_names`` (list or None), ``expr_bounds``
    (``(lo, hi)`` or None), ``has_jaw_joint`` (False for ICT: the jaw is in the blendshapes and
    ``jaw_pose`` has no effect), ``has_pose_correctives``, ``info`` (provenance dict).
    """

    # buffers (registered in __init__), declared for type checkers
    v_template: torch.Tensor
    faces: torch.Tensor
    J_regressor: torch.Tensor
    lbs_weights: torch.Tensor
    lmk_faces_idx: torch.Tensor
    lmk_bary: torch.Tensor
    iris_idx: torch.Tensor | None
    ear_idx: torch.Tensor | None

    def __init__(self, data: ModelData, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        data.validate(data.name)
        self.name = data.name
        self.n_shape = int(data.shapedirs.shape[2])
        self.n_expr = int(data.exprdirs.shape[2])
        # every parameter's width, in the order of the basis product (shape, expr) and the joints
        self._param_sizes = {"shape": self.n_shape, "expr": self.n_expr, **_POSE_SIZES}
        self.expr_names = None if data.expr_names is None else list(data.expr_names)
        self.expr_bounds = None if data.expr_bounds is None else tuple(data.expr_bounds)
        self.has_jaw_joint = bool(data.has_jaw_joint)
        self.has_pose_correctives = data.posedirs is not None
        self.info = dict(data.info)
        self.n_verts = V = int(data.v_template.shape[0])
        self.n_joints = J = len(JOINT_NAMES)
        self._parents = [int(p) for p in data.parents]
        self._levels = depth_levels(self._parents)

        def buf(name: str, arr: np.ndarray | None, persistent: bool = False) -> None:
            if arr is None:
                self.register_buffer(name, None, persistent=False)
                return
            t = torch.as_tensor(np.ascontiguousarray(arr))
            t = t.to(dtype) if t.is_floating_point() else t.long()
            self.register_buffer(name, t, persistent=persistent)

        f64 = np.float64
        # The bases as given ([V,3,k] each, float64 rows on demand): concatenated once, straight into
        # the model's dtype. Each float64 intermediate of the whole basis would be ~55 MB for ICT, and
        # fresh memory is what a cold start pays for (0.6 s of a 0.7 s load on a VM here).
        parts = [data.shapedirs, data.exprdirs] + ([data.posedirs] if data.posedirs is not None else [])
        K = sum(int(p.shape[2]) for p in parts)
        Jreg = data.J_regressor.astype(f64)
        j_template = Jreg @ data.v_template.astype(f64)  # [J,3]
        # Joints move with shape and expression. J_regressor is sparse (FLAME: a few vertices per
        # joint): only the basis rows of the vertices it uses are read (a float64 copy of the whole
        # basis was most of a model's load time), and a sparse product avoids a multi-threaded BLAS
        # call that stalls on busy CPUs.
        used = np.flatnonzero(np.abs(Jreg).sum(0))
        j_sparse = sparse.csr_matrix(Jreg[:, used])
        j_dirs = np.concatenate([np.asarray(j_sparse @ p[used].reshape(len(used), -1).astype(f64)).reshape(J, 3, -1)
                                 if len(used) else np.zeros((J, 3, p.shape[2])) for p in parts[:2]], 2)
        # Pose correctives become extra basis columns (FLAME's [V,3,9(J-1)] -> [3V, 9(J-1)]; feature
        # (R_j - I) of joints 1.. flattened) with zero rows for the joints: one GEMM per call.
        if data.posedirs is not None:
            j_dirs = np.concatenate([j_dirs, np.zeros((J, 3, data.posedirs.shape[2]))], 2)
        np_dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(dtype, f64)  # else: cast by buf
        all_dirs = np.empty((3 * V + 3 * J, K), dtype=np_dtype)
        col = 0
        for p in parts:
            all_dirs[: 3 * V, col : col + p.shape[2]] = p.reshape(3 * V, -1)
            col += p.shape[2]
        all_dirs[3 * V :] = j_dirs.reshape(3 * J, K)

        def dirs_rows(ids: np.ndarray) -> np.ndarray:
            """Basis rows ``[..., 3, K]`` (float64) of vertices ``ids``."""
            return np.concatenate([p[ids].astype(f64) for p in parts], -1)

        faces = data.faces.astype(np.int64)

        buf("v_template", data.v_template.astype(f64), True)
        buf("faces", faces, True)
        buf("J_regressor", Jreg)
        buf("lbs_weights", data.weights.astype(f64))
        buf("_template", np.concatenate([data.v_template.reshape(-1), j_template.reshape(-1)]))
        buf("_dirs", all_dirs)
        buf("iris_idx", data.iris_idx)
        buf("ear_idx", data.ear_idx)
        # Optional dynamic jaw contour (DECA's 79 x 17 table, indexed by yaw in degrees).
        buf("dyn_lmk_faces_idx", data.dyn_lmk_faces_idx)
        buf("dyn_lmk_bary", None if data.dyn_lmk_bary is None else data.dyn_lmk_bary.astype(f64))
        # Optional dense MediaPipe embedding (FLAME's mediapipe_landmark_embedding.npz).
        buf("mp_lmk_faces_idx", data.mp_lmk_faces_idx)
        buf("mp_lmk_bary", None if data.mp_lmk_bary is None else data.mp_lmk_bary.astype(f64))
        buf("mp_lmk_indices", data.mp_lmk_indices)

        # Fixed structures of the landmark path, built once: the kinematic chain's plan, then the
        # rows, bases and mixing matrix of the 68 landmarks (+ iris, ears).
        self._chain_plan = chain_plan(self._parents)
        buf("_zero", np.zeros((1, 1)))  # expanded (a view, no allocation) for omitted parameters
        self._n_iris = 0 if data.iris_idx is None else 10
        self._n_ear = 0 if data.ear_idx is None else 40
        self._build_landmark_path(faces, data.lmk_faces_idx, data.lmk_bary, data.weights.astype(f64),
                                  data.v_template.astype(f64), dirs_rows, j_dirs, j_template)

    def _build_landmark_path(self, faces: np.ndarray, lmk_faces_idx: np.ndarray, lmk_bary: np.ndarray,
                             weights: np.ndarray, template: np.ndarray, dirs_rows, j_dirs: np.ndarray,
                             j_template: np.ndarray) -> None:
        """(Re)build the landmark-only path's buffers for the landmarks ``(lmk_faces_idx,
        lmk_bary)`` (+ the model's iris and ear vertices). ``dirs_rows(ids)``: the basis rows
        ``[..., 3, K]`` of vertices ``ids`` (float64), so the full basis need not be materialised."""
        dtype, dev = self._template.dtype, self._template.device

        def buf(name: str, arr: np.ndarray) -> None:
            t = torch.as_tensor(np.ascontiguousarray(arr))
            self.register_buffer(name, (t.to(dtype) if t.is_floating_point() else t.long()).to(dev),
                                 persistent=False)

        J = self.n_joints
        self.n_lmk = L = len(lmk_faces_idx)
        buf("lmk_faces_idx", np.asarray(lmk_faces_idx, dtype=np.int64))
        buf("lmk_bary", np.asarray(lmk_bary, dtype=np.float64))
        buf("_lmk_vidx", faces[lmk_faces_idx])
        iris = None if self.iris_idx is None else self.iris_idx.cpu().numpy()
        ears = None if self.ear_idx is None else self.ear_idx.cpu().numpy()
        # Everything before skinning is linear in the vertices, and a landmark whose triangle
        # corners share one skinning-weight row is skinned by that one transform, so it is evaluated
        # as a single "virtual vertex" (the barycentric mix of the corners' rows): exact, and
        # usually 2-3x fewer rows. Other landmarks keep their corner vertices.
        coef, lmk_local, lmk_w = _virtual_vertices(faces[lmk_faces_idx], lmk_bary, weights, (iris, ears))
        ids, w = coef
        self.n_sub = P = ids.shape[0]
        rows = dirs_rows(ids)  # [P, 3 corners, 3, K]
        K = rows.shape[-1]
        sub_template = np.einsum("pc,pcd->pd", w, template[ids])  # [P,3]
        sub_dirs = np.einsum("pc,pcdk->pdk", w, rows).reshape(3 * P, K)  # [3P,K]
        sub_weights = weights[ids[:, 0]]  # a mixed row's corners share one weight row
        buf("_sub_template", np.concatenate([sub_template.reshape(-1), j_template.reshape(-1)]))
        buf("_sub_dirs", np.concatenate([sub_dirs, j_dirs.reshape(3 * J, K)]))
        buf("_sub_weights", sub_weights)
        assert P <= self.n_verts
        # One [L+10+40, P] matrix does the barycentric mix and the iris/ear picks in one matmul.
        mix_rows = np.zeros((lmk_local.shape[0], P))
        np.add.at(mix_rows, (np.arange(L)[:, None].repeat(3, 1), lmk_local[:L]), lmk_w)
        mix_rows[np.arange(L, len(lmk_local)), lmk_local[L:, 0]] = 1.0
        # The landmark path's basis rows coordinate-major (x of all P rows, then y, then z), so
        # skinning (one baddbmm) and the mix above run on [N,3,P] tensors without transposes.
        # The pose-corrective features here are R itself (not R - I, one op fewer): the template
        # absorbs the basis times the identity's features.
        xyz_major = np.arange(3 * P).reshape(P, 3).T.reshape(-1)
        lmk_dirs = np.concatenate([sub_dirs[xyz_major], j_dirs.reshape(3 * J, K)])
        lmk_template = np.concatenate([sub_template.T.reshape(-1), j_template.reshape(-1)])
        if self.has_pose_correctives:
            lmk_template -= lmk_dirs[:, self.n_shape + self.n_expr :] @ np.tile(np.eye(3).reshape(9), J - 1)
        buf("_lmk_dirs_t", lmk_dirs.T)  # [K, 3P+3J]: addmm's preferred layout
        buf("_lmk_template", lmk_template)
        buf("_lmk_weights_t", sub_weights.T[:, None])  # [J,1,P]
        buf("_lmk_mix_t", mix_rows.T)  # [P, L+10+40]

    def with_landmarks(self, lmk_faces_idx: np.ndarray, lmk_bary: np.ndarray) -> "HeadModel":
        """A copy of this model whose landmarks are ``(lmk_faces_idx [L], lmk_bary [L, 3])``: the 68
        iBUG points in another convention, or any other point set (``L`` points; MediaPipe's dense mesh).

        The mesh, bases and skinning are shared with this model (no second copy); only the
        landmark path is rebuilt. The dynamic jaw contour (the model's own convention) is dropped.
        """
        new = copy.copy(self)
        new._buffers = dict(self._buffers)
        new._parameters = dict(self._parameters)
        new._modules = dict(self._modules)
        new.info = dict(self.info)
        V, J = self.n_verts, self.n_joints
        np64 = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
        dirs = self._dirs[: 3 * V].view(V, 3, -1)
        rows = lambda ids: np64(dirs[torch.as_tensor(ids, device=dirs.device)])  # noqa: E731
        new._build_landmark_path(np64(self.faces).astype(np.int64), np.asarray(lmk_faces_idx, dtype=np.int64),
                                 np.asarray(lmk_bary, dtype=np.float64), np64(self.lbs_weights),
                                 np64(self.v_template), rows, np64(self._dirs[3 * V :]).reshape(J, 3, -1),
                                 np64(self._template[3 * V :]).reshape(J, 3))
        new.register_buffer("dyn_lmk_faces_idx", None, persistent=False)
        new.register_buffer("dyn_lmk_bary", None, persistent=False)
        return new

    # ------------------------------------------------------------------ bases (views)
    @property
    def shapedirs(self) -> torch.Tensor:
        """Shape basis [V,3,S] (a view)."""
        return self._dirs[: 3 * self.n_verts, : self.n_shape].unflatten(0, (self.n_verts, 3))

    @property
    def exprdirs(self) -> torch.Tensor:
        """Expression basis [V,3,E] (a view)."""
        k = self.n_shape + self.n_expr
        return self._dirs[: 3 * self.n_verts, self.n_shape : k].unflatten(0, (self.n_verts, 3))

    @property
    def posedirs(self) -> torch.Tensor | None:
        """Pose correctives [V,3,9(J-1)] (FLAME layout, a view) or None."""
        if not self.has_pose_correctives:
            return None
        k = self.n_shape + self.n_expr
        return self._dirs[: 3 * self.n_verts, k:].unflatten(0, (self.n_verts, 3))

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's buffers."""
        return self.v_template.dtype

    @property
    def device(self) -> torch.device:
        """Device of the model's buffers."""
        return self.v_template.device

    # ------------------------------------------------------------------ parameters
    def _parts(self, params: dict[str, torch.Tensor | None]) -> tuple[int, list[torch.Tensor]]:
        """Validate parameters; return the batch size N and, in ``_param_sizes`` order, each one as
        ``[N,D]`` in the model's dtype (an omitted one as an expanded zero view, no allocation)."""
        N = 1
        given: dict[str, torch.Tensor] = {}
        for key, val in params.items():
            if val is None:
                continue
            if not torch.is_tensor(val):
                val = torch.as_tensor(val, dtype=self.dtype, device=self.device)
            if val.dim() == 1:
                val = val[None]
            size = self._param_sizes[key]
            if val.dim() != 2 or val.shape[1] != size:
                raise InputError(
                    f"{key} must have shape [N,{size}] for model {self.name!r}, got {tuple(val.shape)}"
                )
            if val.shape[0] != 1:
                if N != 1 and val.shape[0] != N:
                    raise InputError(f"inconsistent batch sizes: {key} has {val.shape[0]}, others {N}")
                N = val.shape[0]
            given[key] = val
        dtype = self.dtype
        parts = []
        for key, size in self._param_sizes.items():
            v = given.get(key)
            if v is None:
                parts.append(self._zero.expand(N, size))
                continue
            if v.shape[0] != N:
                v = v.expand(N, -1)
            # parameters may come from anywhere (numpy-side CPU tensors with a CUDA model): the model's
            # device and dtype decide
            parts.append(v.to(self.device, dtype))
        return N, parts

    def _inputs(self, params: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate parameters; return betas [N,S+E] and joint rotations [N,J,3]."""
        N, parts = self._parts(params)
        return torch.cat(parts[:2], 1), torch.cat(parts[2:], 1).view(N, self.n_joints, 3)

    # ------------------------------------------------------------------ what fitting code needs
    def blend_inputs(self, params: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated parameters (the keywords of :meth:`forward`) as the blend-shape coefficients
        ``[N, S+E]`` and the joint rotations ``[N, J, 3]`` (axis-angle, joint order)."""
        return self._inputs(params)

    @property
    def joint_parents(self) -> list[int]:
        """Parent of each joint (``-1`` for the root)."""
        return self._parents

    @property
    def joint_levels(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The kinematic tree depth by depth: ``(joint ids, their parents' ids)`` per depth below the root."""
        return self._levels

    @property
    def joint_chain(self):
        """The same tree as contiguous slices per depth (``model.lbs.chain_plan``), or None."""
        return self._chain_plan

    @property
    def n_basis_rows(self) -> int:
        """Rows of the stacked rest positions / basis: ``3V`` vertex coordinates, then ``3J`` joint ones."""
        return int(self._template.numel())

    def basis_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rest positions ``[R]`` and basis ``[R, K]`` of the stacked rows ``rows`` (vertex ``v``'s
        coordinate ``c`` is row ``3v + c``; joint ``j``'s is ``3V + 3j + c``): what skinning a
        sub-mesh needs (``model.lbs.skin`` with these, ``lbs_weights`` rows and the joint tree)."""
        return self._template.index_select(0, rows), self._dirs.index_select(0, rows)

    def landmark_path(self) -> LandmarkPath:
        """The landmark function's fixed structure (see :class:`LandmarkPath`)."""
        return LandmarkPath(self._sub_template, self._sub_dirs, self._sub_weights, self._lmk_mix_t, self.n_sub,
                            self._n_iris)

    @property
    def landmark_triangles(self) -> torch.Tensor:
        """``[L, 3]`` vertex ids of each landmark's triangle (its barycentrics: ``lmk_bary``)."""
        return self._lmk_vidx

    def rest_joints(self, shape: torch.Tensor | None = None, expr: torch.Tensor | None = None) -> torch.Tensor:
        """Joint locations of the unposed head ``[N,J,3]`` for ``shape``/``expr`` (linear in both:
        ``J_regressor (template + dirs · coeffs)``, no vertices are built, so any N is cheap)."""
        N, parts = self._parts({"shape": shape, "expr": expr})
        k = self.n_shape + self.n_expr
        coeffs = torch.cat(parts[:2], 1)  # [N, S+E]
        v3 = 3 * self.n_verts
        joints = self._template[v3:] + coeffs @ self._dirs[v3:, :k].T
        return joints.view(N, self.n_joints, 3)

    def eye_rest_rotvec(self) -> np.ndarray:
        """``[6]`` (``eye_pose``'s layout: left eye, then right) the rotation, axis-angle, that turns
        the model's forward direction (+z) onto each eye's pupil direction at rest (the mean head,
        ``eye_pose`` = 0): the shortest one, so it has no roll. Zero where the model says nothing
        (no iris points). ``eye_pose`` is relative to this rest gaze: ICT's eyes at rest converge
        (each pupil turned ~7° towards the nose), FLAME's look ahead; a gaze relative to straight ahead is
        ``R(eye_pose) @ R(eye_rest)`` (the ARKit export writes that)."""
        out = np.zeros(6)
        if self.iris_idx is None:
            return out
        with torch.no_grad():
            verts = self().vertices[0].double().cpu().numpy()
        joints = self.rest_joints().double().cpu().numpy().reshape(-1, 3)
        weights = self.lbs_weights.detach().cpu().numpy()
        iris = self.iris_idx.cpu().numpy()
        for centre in (iris[0], iris[5]):  # MediaPipe order: the subject's right eye's centre, the left's
            joint = int(np.argmax(weights[centre]))
            if joint not in (3, 4):  # (not skinned to an eye joint)
                continue
            d = verts[centre] - joints[joint]
            d = d / np.linalg.norm(d)
            axis = np.cross([0.0, 0.0, 1.0], d)
            s, c = np.linalg.norm(axis), d[2]
            slot = 3 * (joint - 3)
            out[slot:slot + 3] = 0.0 if s < 1e-12 else axis / s * np.arctan2(s, c)
        return out

    def root_translation(self, shape: np.ndarray, expr: np.ndarray, R: np.ndarray, u: np.ndarray) -> np.ndarray:
        """FLAME's global ``transl`` ``[T, 3]`` for the rigid motions ``x -> R x + u`` of the head
        (``R [T, 3, 3]``, ``u [T, 3]``; ``shape [S]`` or ``[1, S]``, ``expr [T, E]``): FLAME rotates
        about the root joint, ``x -> R (x - J0) + J0 + transl``, and J0 moves with shape and
        expression, so ``transl = u + R J0 - J0``."""
        with torch.no_grad():
            j0 = self.rest_joints(torch.as_tensor(np.asarray(shape).reshape(1, -1), dtype=self.dtype),
                                  torch.as_tensor(np.asarray(expr), dtype=self.dtype))[:, 0].double().cpu().numpy()
        return np.asarray(u, np.float64) + np.einsum("tij,tj->ti", np.asarray(R, np.float64), j0) - j0

    # ------------------------------------------------------------------ evaluation
    def forward(
        self,
        shape: torch.Tensor | None = None,
        expr: torch.Tensor | None = None,
        head_pose: torch.Tensor | None = None,
        neck_pose: torch.Tensor | None = None,
        jaw_pose: torch.Tensor | None = None,
        eye_pose: torch.Tensor | None = None,
    ) -> HeadOutput:
        """Full mesh and landmarks."""
        betas, rotvecs = self._inputs(dict(shape=shape, expr=expr, head_pose=head_pose,
                                           neck_pose=neck_pose, jaw_pose=jaw_pose, eye_pose=eye_pose))
        verts = skin(betas, rotvecs, self._template, self._dirs, self.n_verts, self.lbs_weights,
                     self._levels, self._parents, self.has_pose_correctives)
        lmk = interpolate(verts, self._lmk_vidx, self.lmk_bary)
        iris = None if self.iris_idx is None else verts.index_select(1, self.iris_idx)
        ears = None if self.ear_idx is None else verts.index_select(1, self.ear_idx)
        return HeadOutput(verts, lmk, iris, ears)

    def landmarks(
        self,
        shape: torch.Tensor | None = None,
        expr: torch.Tensor | None = None,
        head_pose: torch.Tensor | None = None,
        neck_pose: torch.Tensor | None = None,
        jaw_pose: torch.Tensor | None = None,
        eye_pose: torch.Tensor | None = None,
    ) -> HeadOutput:
        """Landmark-only fast path: evaluates only the ~``n_sub`` vertices landmarks use."""
        N, parts = self._parts(dict(shape=shape, expr=expr, head_pose=head_pose, neck_pose=neck_pose,
                                    jaw_pose=jaw_pose, eye_pose=eye_pose))
        # Same maths as `skin` + `interpolate`, in as few torch ops as possible: at this size the
        # cost is per-op overhead, not arithmetic.
        P, J = self.n_sub, self.n_joints
        rot = axis_angle_to_matrix(torch.cat(parts[2:], 1).view(N, J, 3))  # [N,J,3,3]
        feats = parts[:2] + ([rot[:, 1:].reshape(N, -1)] if self.has_pose_correctives else [])
        shaped = torch.addmm(self._lmk_template, torch.cat(feats, 1), self._lmk_dirs_t)
        v, joints = shaped.split_with_sizes([3 * P, 3 * J], 1)  # (the C method: no Python wrapper)
        A = joint_transforms(rot, joints.view(N, J, 3), self._levels, self._parents)  # [N,J,3,4]
        # every joint's transform applied to every row (rows coordinate-major), then the rows'
        # skinning-weight blend, then the barycentric mix and iris/ear picks as one product
        rot_part, trans = A.reshape(N, J * 3, 4).split_with_sizes([3, 1], -1)
        per_joint = torch.baddbmm(trans, rot_part, v.view(N, 3, P)).view(N, J, 3, P)
        sub = (per_joint * self._lmk_weights_t).sum(1)  # [N,3,P]
        pts = torch.mm(sub.view(N * 3, P), self._lmk_mix_t).view(N, 3, -1).transpose(1, 2).contiguous()
        lmk, iris, ears = pts.split_with_sizes([self.n_lmk, self._n_iris, self._n_ear], 1)  # [N,L+10+40,3]
        return HeadOutput(None, lmk, iris if self._n_iris else None, ears if self._n_ear else None)

    @staticmethod
    def head_yaw(head_pose: torch.Tensor, neck_pose: torch.Tensor | None = None) -> torch.Tensor:
        """Yaw (radians, about +y) of ``R(head_pose) @ R(neck_pose)``, as DECA's FLAME computes it."""
        R = axis_angle_to_matrix(head_pose)
        if neck_pose is not None:
            R = R @ axis_angle_to_matrix(neck_pose)
        return torch.atan2(-R[..., 2, 0], torch.hypot(R[..., 0, 0], R[..., 1, 0]))

    def dynamic_contour(self, vertices: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        """The 17 jaw-contour landmarks for a head turned by ``yaw [N]`` radians -> ``[N,17,3]``.

        FLAME's optional dynamic contour (DECA's lookup: whole degrees, clamped to +-39; entry k is
        yaw k for k <= 39 and -(k - 39) above). ``yaw`` is the head's rotation about +y relative to
        the camera (:meth:`head_yaw` for a posed head; minus the camera's yaw for a camera orbiting
        a head at rest). Replace ``landmarks[:, :17]`` with it. Needs the full mesh (not available
        on the landmark path).
        """
        if self.dyn_lmk_faces_idx is None:
            raise InputError(f"model {self.name!r} has no dynamic contour embedding "
                             "(dynamic_lmk_* in landmark_embedding.npy or flame_dynamic_embedding.npy)")
        deg = torch.round(torch.clamp(torch.rad2deg(yaw.detach()), -40, 39)).long()
        idx = torch.where(deg < 0, torch.where(deg < -39, 78, 39 - deg), deg)
        faces = self.faces[self.dyn_lmk_faces_idx[idx]]  # [N,17,3]
        bary = self.dyn_lmk_bary[idx]
        picked = torch.gather(vertices, 1, faces.reshape(len(idx), -1, 1).expand(-1, -1, 3))
        return (picked.view(len(idx), 17, 3, 3) * bary[..., None]).sum(-2)

    def mediapipe_points(self, vertices: torch.Tensor) -> torch.Tensor:
        """Points of the dense MediaPipe embedding on ``vertices [N,V,3]`` -> ``[N,K,3]``.

        ``mp_lmk_indices [K]`` says which of MediaPipe's 478 points each one is.
        """
        if self.mp_lmk_faces_idx is None:
            raise InputError(f"model {self.name!r} has no MediaPipe landmark embedding "
                             "(mediapipe_landmark_embedding.npz next to the FLAME .pkl)")
        return interpolate(vertices, self.faces[self.mp_lmk_faces_idx], self.mp_lmk_bary)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, verts={self.n_verts}, faces={self.faces.shape[0]}, "
                f"n_shape={self.n_shape}, n_expr={self.n_expr}, landmark_verts={self.n_sub}")
