"""Linear blend skinning in plain torch, shared by the full-mesh and landmark-only paths.

Both paths call :func:`skin` with different arrays: the full mesh, or only the rows of the
vertices the landmarks need (with ``J_regressor @ basis`` precomputed), so the landmark path never
touches full-mesh tensors.

At landmark-path sizes the cost is per-op overhead, not arithmetic, so the small work is written
in as few torch ops as possible: Rodrigues without branches, the kinematic chain as one product per
tree depth (:func:`joint_transforms`), gathers with ``index_select``, and one basis GEMM per call
(shape, expression and pose correctives together).
"""

from __future__ import annotations

import functools
import math

import torch

from flame_tracker.camera.reference import small_matmul

_CONSTS: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}


def _consts(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Cached constants of :func:`axis_angle_to_matrix`: the [3,9] map r -> flattened K(r), the
    flattened identity and its negative, the t^2 Taylor slope of (a, 2b), the factors that turn t
    into sinc arguments and the exponents that turn the sincs into (a, 2b); then the homogeneous row
    [0, 0, 0, 1] shaped [1,1,1,4] of :func:`chain_transforms`."""
    key = (dtype, device)
    if key not in _CONSTS:
        skew = torch.zeros(3, 9, dtype=dtype)
        for axis, (pos, neg) in enumerate(((7, 5), (2, 6), (3, 1))):  # x: K21=x, K12=-x; ...
            skew[axis, pos], skew[axis, neg] = 1.0, -1.0
        eye = torch.eye(3, dtype=dtype).reshape(9)
        consts = (skew, eye, -eye, torch.tensor([-1 / 6, -1 / 12], dtype=dtype),
                  torch.tensor([1 / math.pi, 0.5 / math.pi], dtype=dtype), torch.tensor([1.0, 2.0], dtype=dtype),
                  torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dtype).view(1, 1, 1, 4))
        _CONSTS[key] = tuple(c.to(device) for c in consts)
    return _CONSTS[key]


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: axis-angle ``[..., 3]`` -> rotation matrices ``[..., 3, 3]``.

    Written as ``R = I + b (r r^T - t^2 I) + a K`` (``K^2 = r r^T - t^2 I``) with ``a = sin t / t``
    and ``b = (1 - cos t) / t^2 = sinc(t/2)^2 / 2``, both from one ``sinc`` on a 2-vector, in few
    torch ops: on the landmark path the cost is per-op overhead. Exact and smooth at zero: below
    ``t^2 = 1e-6`` the angle is clamped and (a, b) continue along their Taylor slope in ``t^2``
    (``(a, b)(t2c) + slope (t2 - t2c)``; the first omitted term is < 1e-14), instead of the usual
    ``norm + eps`` trick, which biases the result and gives wrong gradients near the identity.
    """
    skew, eye, neg_eye, slope, to_sinc, power, _ = _consts(rotvec.dtype, rotvec.device)
    rr = (rotvec[..., :, None] * rotvec[..., None, :]).flatten(-2)  # r r^T
    t2 = rr[..., ::4].sum(-1, keepdim=True)  # theta^2 = trace(r r^T)
    t2c = t2.clamp_min(1e-6)
    ab2 = torch.addcmul(torch.sinc(t2c.sqrt() * to_sinc).pow(power), t2 - t2c, slope)
    a, b2 = ab2.split_with_sizes([1, 1], -1)
    r = torch.addcmul(eye, b2, torch.addcmul(rr, t2, neg_eye), value=0.5)
    return torch.addcmul(r, a, rotvec @ skew).unflatten(-1, (3, 3))


def pose_features(rot: torch.Tensor) -> torch.Tensor:
    """FLAME's pose-corrective features: ``R_j - I`` of the joints after the root, flattened,
    ``rot [N,J,3,3] -> [N, 9(J-1)]`` (the columns that follow the blend shapes in the basis)."""
    eye = _consts(rot.dtype, rot.device)[1]
    return (rot[:, 1:].flatten(-2) - eye).flatten(1)


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
        r = small_matmul(pr, lr)
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
        betas = torch.cat([betas, pose_features(rot)], 1)
    shaped = torch.nn.functional.linear(betas, dirs, template)
    v = shaped[:, : 3 * n_verts].view(N, n_verts, 3)
    joints = shaped[:, 3 * n_verts :].view(N, J, 3)
    A = joint_transforms(rot, joints, levels, parents).reshape(N, 1, J, 12)
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


def chain_plan(parents: list[int]) -> list[tuple[slice, int]] | None:
    """Per tree depth, (its joints as a slice, their parent's position within the previous depth)
    for :func:`chain_transforms`; None when that fast chain does not apply (joints not numbered
    depth by depth, or a depth whose joints hang off more than one parent). FLAME's and ICT's
    skeletons qualify; others use :func:`rigid_transforms`."""
    plan = []
    prev = [0]
    for js, ps in depth_levels(parents):
        if js != list(range(prev[-1] + 1, prev[-1] + 1 + len(js))) or len(set(ps)) != 1:
            return None
        plan.append((slice(js[0], js[-1] + 1), prev.index(ps[0])))
        prev = js
    return plan


@functools.lru_cache(maxsize=None)
def _plan(parents: tuple[int, ...]) -> list[tuple[slice, int]] | None:
    """:func:`chain_plan`, once per skeleton."""
    return chain_plan(list(parents))


def joint_transforms(
    rot: torch.Tensor, joints: torch.Tensor, levels: list[tuple[list[int], list[int]]], parents: list[int],
) -> torch.Tensor:
    """World transforms A [N,J,3,4] of the joints relative to their rest positions: the few-op
    :func:`chain_transforms` where the skeleton allows it (:func:`chain_plan`), else the generic
    :func:`rigid_transforms`. rot [N,J,3,3] local rotations, joints [N,J,3] rest positions."""
    plan = _plan(tuple(parents))
    if plan is None:
        return rigid_transforms(rot, joints, levels, parents)
    return chain_transforms(rot, joints, plan)


def chain_transforms(rot: torch.Tensor, joints: torch.Tensor, plan: list[tuple[slice, int]]) -> torch.Tensor:
    """Same transforms as :func:`rigid_transforms` in a few batched ops (landmark path).

    Uses ``A_j = A_parent(j) @ L_j`` with the rest-offset local transform
    ``L_j = [R_j | j_j - R_j j_j]``, so no rest-position fix-up, and one product per tree depth
    (a depth's joints share one parent, see :func:`chain_plan`). rot [N,J,3,3], joints [N,J,3].
    Returns A [N,J,3,4].
    """
    N, J = rot.shape[:2]
    j = joints.reshape(N * J, 3, 1)
    t = torch.baddbmm(j, rot.reshape(N * J, 3, 3), j, alpha=-1).view(N, J, 3, 1)  # j - R j
    bottom = _consts(rot.dtype, rot.device)[-1].expand(N, J, 1, 4)
    local = torch.cat([torch.cat([rot, t], -1), bottom], -2)  # [N,J,4,4]
    level = local[:, :1, :3]  # the root's world transform is its local one
    world = [level]
    for js, parent in plan:  # FLAME: neck, then jaw and both eyes
        level = level[:, parent : parent + 1] @ local[:, js]
        world.append(level)
    return torch.cat(world, 1)
