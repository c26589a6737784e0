"""What the fitting code needs from a head model: :class:`FittableModel`. ``HeadModel`` implements
it; a new model type plugs into stage 1/2, photometric refinement, video and multi-view tracking by
implementing these members (the landmark path and sub-mesh skinning included), nothing private."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from .head import HeadOutput, LandmarkPath


class FittableModel(Protocol):
    """The public interface fitting uses (see :class:`~flame_tracker.model.HeadModel` for meanings)."""

    name: str
    n_shape: int
    n_expr: int
    n_verts: int
    n_joints: int
    n_lmk: int
    n_sub: int
    expr_names: list[str] | None
    expr_bounds: tuple[float, float] | None
    has_jaw_joint: bool
    has_pose_correctives: bool
    faces: torch.Tensor
    lbs_weights: torch.Tensor
    lmk_bary: torch.Tensor
    iris_idx: torch.Tensor | None
    ear_idx: torch.Tensor | None

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def __call__(self, **params: torch.Tensor | None) -> HeadOutput: ...

    def landmarks(self, **params: torch.Tensor | None) -> HeadOutput: ...

    def rest_joints(self, shape: torch.Tensor | None = None, expr: torch.Tensor | None = None) -> torch.Tensor: ...

    def blend_inputs(self, params: dict[str, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]: ...

    @property
    def joint_parents(self) -> list[int]: ...

    @property
    def joint_levels(self) -> list[tuple[torch.Tensor, torch.Tensor]]: ...

    @property
    def joint_chain(self): ...

    @property
    def n_basis_rows(self) -> int: ...

    def basis_rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def landmark_path(self) -> LandmarkPath: ...

    @property
    def landmark_triangles(self) -> torch.Tensor: ...


def missing_members(model: Any) -> list[str]:
    """The :class:`FittableModel` members ``model`` lacks (empty: it offers the interface).

    Not ``isinstance`` with a runtime-checkable protocol: from Python 3.12 that looks attributes up
    statically and misses what ``torch.nn.Module`` keeps in its buffers (``v_template``, ``faces``)."""
    names = [n for n in vars(FittableModel) if not n.startswith("_")] + list(FittableModel.__annotations__)
    return sorted(n for n in set(names) if not hasattr(model, n))


__all__ = ["FittableModel", "missing_members"]
