"""What the fitting code needs from a head model: :class:`FittableModel`. ``HeadModel`` implements
it; a new model type plugs into stage 1/2, photometric refinement, video and multi-view tracking by
implementing these members (the landmark path and sub-mesh skinning included), nothing private."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .head import HeadOutput, LandmarkPath


@runtime_checkable
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


__all__ = ["FittableModel"]
