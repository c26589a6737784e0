from types import SimpleNamespace

import torch

from flame_tracker.camera import rotvec_to_matrix


class Toy(torch.nn.Module):
    def __init__(self, n_shape=10, n_expr=12, bounded=False, jaw=True, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        t = (torch.rand(78, 3, generator=g, dtype=torch.float64) * torch.tensor([0.12, 0.14, 0.04])
             - torch.tensor([0.06, 0.08, -0.05]))
        self.register_buffer("v_template", t)
        self.register_buffer("sd", torch.randn(78, 3, n_shape, generator=g, dtype=torch.float64) * 0.003)
        self.register_buffer("ed", torch.randn(78, 3, n_expr, generator=g, dtype=torch.float64) * 0.004)
        self.n_shape, self.n_expr = n_shape, n_expr
        self.expr_bounds = (0.0, 1.0) if bounded else None
        self.has_jaw_joint = self.has_jaw = jaw
    def landmarks(self, shape=None, expr=None, head_pose=None, neck_pose=None, jaw_pose=None, eye_pose=None):
        v = self.v_template + torch.einsum("vck,nk->nvc", self.sd, shape) + torch.einsum("vck,nk->nvc", self.ed, expr)
        if self.has_jaw and jaw_pose is not None:
            R = rotvec_to_matrix(jaw_pose)
            piv = torch.tensor([0.0, 0.0, -0.02], dtype=v.dtype)
            low = (v - piv) @ R.transpose(1, 2) + piv
            mask = torch.zeros(78, 1, dtype=v.dtype)
            mask[48:68] = 1
            mask[5:12] = 1
            v = v * (1 - mask) + low * mask
        if eye_pose is not None:
            iris = v[:, 68:].clone()
            for k, sl in ((0, slice(0, 5)), (1, slice(5, 10))):
                R = rotvec_to_matrix(eye_pose[:, 3 * k:3 * k + 3])
                c = iris[:, sl].mean(1, keepdim=True) - torch.tensor([0, 0, 0.012], dtype=v.dtype)
                iris_k = (iris[:, sl] - c) @ R.transpose(1, 2) + c
                iris = torch.cat([iris[:, :5], iris_k], 1) if k else torch.cat([iris_k, iris[:, 5:]], 1)
        else:
            iris = v[:, 68:]
        return SimpleNamespace(vertices=None, landmarks=v[:, :68], iris=iris, ears=None)
