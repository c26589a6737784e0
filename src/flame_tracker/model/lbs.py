"""Linear blend skinning in plain torch, shared by the full-mesh and landmark-only paths.

Both paths call :func:`skin` with different arrays: the full mesh, or only the rows of the
vertices the landmarks need (with ``J_regressor @ basis`` precomputed), so the landmark path never
touches full-mesh tensors.

Small products (3x3 rotations, skinning of a few hundred vertices) are written as broadcast
multiply-sums and gathers use ``index_select``: on a busy CPU every op that starts the BLAS/OpenMP
thread pool can wait milliseconds for a descheduled worker, which dominated the landmark path
(measured: 40 ms -> ~1 ms per call at batch 1 on the shared 2-core machine). The basis product
stays one GEMM per call (shape, expression and pose correctives together).
"""

from __future__ import annotations

import torch


_CONSTS: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}


def _rodrigues_consts(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Cached constants of :func:`axis_angle_to_matrix`: the [3,9] map r -> flattened K(r), the
    flattened identity, Taylor coefficients of (a, b) in theta^2, and the half-angle factors."""
    key = (dtype, device)
    if key not in _CONSTS:
        skew = torch.zeros(3, 9, dtype=dtype)
        for axis, (pos, neg) in enumerate(((7, 5), (2, 6), (3, 1))):  # x: K21=x, K12=-x; ...
            skew[axis, pos], skew[axis, neg] = 1.0, -1.0
        taylor = torch.tensor([[1.0, 0.5], [-1 / 6, -1 / 24], [1 / 120, 1 / 720]], dtype=dtype)
        consts = (skew, torch.eye(3, dtype=dtype).reshape(9), taylor,
                  torch.tensor([1.0, 0.5], dtype=dtype), torch.tensor([1.0, 2.0], dtype=dtype),
                  torch.tensor([1.0, 0.5], dtype=dtype))
        _CONSTS[key] = tuple(c.to(device) for c in consts)
    return _CONSTS[key]


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: axis-angle ``[..., 3]`` -> rotation matrices ``[..., 3, 3]``.

    Smooth and differentiable at zero (Taylor series for small angles instead of the usual
    ``norm + eps`` trick, which biases the result and gives wrong gradients near the identity).
    Written as ``R = (1 - b t^2) I + a K + b r r^T`` (``K^2 = r r^T - t^2 I``) with
    ``a = sin t / t`` and ``b = (1 - cos t) / t^2 = sinc(t/2)^2 / 2``, both from one ``sin`` on a
    2-vector: the landmark path's cost is per-op overhead, so few torch ops matter.
    """
    skew, eye, taylor, half, power, scale = _rodrigues_consts(rotvec.dtype, rotvec.device)
    t2 = (rotvec * rotvec).sum(-1, keepdim=True)  # theta^2
    small = t2 < 1e-6
    x = torch.where(small, 1.0, t2).sqrt() * half  # (theta, theta/2), safe at 0
    ab_big = (x.sin() / x).pow(power) * scale
    ab_small = torch.addcmul(taylor[0], t2, torch.addcmul(taylor[1], t2, taylor[2]))
    a, b = torch.where(small, ab_small, ab_big).unbind(-1)
    a, b = a[..., None], b[..., None]
    rr = (rotvec[..., :, None] * rotvec[..., None, :]).flatten(-2)
    r = torch.addcmul(torch.addcmul(b * rr, a, rotvec @ skew), 1 - b * t2, eye)
    return r.unflatten(-1, (3, 3))


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for tiny matrices as a broadcast multiply-sum (no thread-pool start-up)."""
    return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)


def depth_levels(parents: list[int]) -> list[tuple[list[int], list[int]]]:
    """Group joints by tree depth: ``[(joints, their parents), ...]`` for depth 1, 2, ...

    Lets :func:`rigid_transforms` chain all joints of one depth in a single batched matmul.
    """
    depth = [0] * len(parents)
    for j in range(1, len(parents)):
        depth[j] = depth[parents[j]] + 1
    levels = []
    for d in range(1, max(depth, default=0) + 1):
        js = [j for j in range(len(parents)) if depth[j] == d]
        levels.append((js, [parents[j] for j in js]))
    return levels


def rigid_transforms(
    rot: torch.Tensor, joints: torch.Tensor, levels: list[tuple[list[int], list[int]]],
    parents: list[int],
) -> torch.Tensor:
    """World transforms of the joints, relative to their rest positions.

    rot: [N,J,3,3] local rotations; joints: [N,J,3] rest joint positions. Returns A [N,J,3,4] such
    that a rest-pose point p skinned rigidly to joint j moves to ``A[j,:,:3] @ p + A[j,:,3]``.
    """
    J = rot.shape[1]
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.cat([rot, rel[..., None]], -1)  # [N,J,3,4]
    world_r: list[torch.Tensor | None] = [None] * J
    world_t: list[torch.Tensor | None] = [None] * J
    world_r[0], world_t[0] = local[:, 0, :, :3], local[:, 0, :, 3]
    for js, ps in levels:
        pr = torch.stack([world_r[p] for p in ps], 1)  # [N,k,3,3]
        pt = torch.stack([world_t[p] for p in ps], 1)  # [N,k,3]
        lr, lt = local[:, js, :, :3], local[:, js, :, 3]
        r = _mm(pr, lr)
        t = (pr * lt[..., None, :]).sum(-1) + pt
        for i, j in enumerate(js):
            world_r[j], world_t[j] = r[:, i], t[:, i]
    R = torch.stack(world_r, 1)  # [N,J,3,3]
    T = torch.stack(world_t, 1)  # [N,J,3]
    # Remove the rest position so the transform applies to rest-pose (not joint-local) points.
    T = T - (R * joints[..., None, :]).sum(-1)
    return torch.cat([R, T[..., None]], -1)


def skin(
    betas: torch.Tensor,
    rotvecs: torch.Tensor,
    template: torch.Tensor,
    dirs: torch.Tensor,
    n_verts: int,
    weights: torch.Tensor,
    levels: list[tuple[list[int], list[int]]],
    parents: list[int],
    pose_correctives: bool,
) -> torch.Tensor:
    """Blend shapes + pose correctives + LBS for a set of P vertices.

    betas [N,K] (shape then expression); rotvecs [N,J,3]; template [3P+3J] (vertex rows then joint
    rows, flattened xyz); dirs [3P+3J, K (+9(J-1))]: the joint rows are ``J_regressor @ basis``
    (precomputed) and, with ``pose_correctives``, the last 9(J-1) columns are the pose correctives
    (zero on joint rows), so one GEMM evaluates everything linear. weights [P,J].
    Returns vertices [N,P,3].
    """
    N = betas.shape[0]
    J = weights.shape[1]
    rot = axis_angle_to_matrix(rotvecs)  # [N,J,3,3]
    if pose_correctives:
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        betas = torch.cat([betas, (rot[:, 1:] - eye).reshape(N, -1)], 1)
    shaped = torch.nn.functional.linear(betas, dirs, template)
    v = shaped[:, : 3 * n_verts].view(N, n_verts, 3)
    joints = shaped[:, 3 * n_verts :].view(N, J, 3)
    A = rigid_transforms(rot, joints, levels, parents).reshape(N, 1, J, 12)
    if N * n_verts <= 8192:  # few vertices: broadcast; a full mesh: one GEMM
        T = (weights[None, :, :, None] * A).sum(2)
    else:
        T = weights @ A[:, 0]
    T = T.view(N, n_verts, 3, 4)
    return (T[..., :3] * v[..., None, :]).sum(-1) + T[..., 3]


def interpolate(verts: torch.Tensor, vidx: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    """Barycentric points on a mesh: verts [N,V,3], vidx [L,3] vertex ids, bary [L,3] -> [N,L,3]."""
    picked = verts.index_select(1, vidx.reshape(-1)).view(verts.shape[0], *vidx.shape, 3)
    return (picked * bary[..., None]).sum(-2)


Index = slice | torch.Tensor


def _as_index(ids: list[int]) -> Index:
    """A run of consecutive ids (or one id repeated, which broadcasts) as a slice, else a tensor."""
    if len(set(ids)) == 1:
        return slice(ids[0], ids[0] + 1)
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return slice(ids[0], ids[0] + len(ids))
    return torch.tensor(ids)


def chain_plan(parents: list[int]) -> tuple[list[tuple[Index, Index]], Index | None]:
    """Precomputed indices for :func:`chain_transforms` (fixed per skeleton).

    Joints are stacked level by level (root first); returns, per depth level, (the joints of the
    level, their parents' positions in the stack so far) and the permutation from the stacked
    order back to joint order (None when it is the identity, as for FLAME). Slices where possible:
    they are views, not gathers.
    """
    order = [0]
    plan = []
    for js, ps in depth_levels(parents):
        plan.append((_as_index(js), _as_index([order.index(p) for p in ps])))
        order += js
    perm = [order.index(j) for j in range(len(parents))]
    return plan, None if perm == sorted(perm) else torch.tensor(perm)


def _pick(x: torch.Tensor, idx: Index) -> torch.Tensor:
    return x[:, idx] if isinstance(idx, slice) else x.index_select(1, idx)


def chain_transforms(
    eye_m_rot: torch.Tensor, rot: torch.Tensor, joints: torch.Tensor,
    plan: list[tuple[Index, Index]], perm: torch.Tensor | None, bottom: torch.Tensor,
) -> torch.Tensor:
    """Same result as :func:`rigid_transforms` in a few batched ops (landmark path).

    Uses ``A_j = A_parent(j) @ L_j`` with the rest-offset local transform
    ``L_j = [R_j | (I - R_j) j_j]``, so no per-joint Python work and no rest-position fix-up;
    ``eye_m_rot = I - rot`` is shared with the pose-corrective features; ``bottom`` is the
    homogeneous row ``[0,0,0,1]`` shaped [1,1,1,4]. Returns A [N,J,3,4].
    """
    N, J = rot.shape[:2]
    t = _mm(eye_m_rot, joints[..., None])  # [N,J,3,1]
    local = torch.cat([rot, t], -1)  # [N,J,3,4]
    local44 = torch.cat([local, bottom.expand(N, J, 1, 4)], -2)  # [N,J,4,4]
    world = local[:, :1]
    for js, pidx in plan:  # one product per tree depth (FLAME: 2)
        world = torch.cat([world, _mm(_pick(world, pidx), _pick(local44, js))], 1)
    return world if perm is None else world.index_select(1, perm)
