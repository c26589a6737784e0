"""Fitting: stage 1 (rigid camera), stage 2 (expression / shape, :mod:`.stage2`) and synthetic
ground truth for tests and benchmarks. Submodules are imported lazily by their users; the stage-1
and synthetic API is re-exported here."""

from flame_tracker.fitting.stage1 import CameraFit, Stage1Loss, Stage1Problem, fit_camera, stage1_objective
from flame_tracker.fitting.synthetic import SyntheticBatch, make_synthetic

__all__ = ["CameraFit", "Stage1Loss", "Stage1Problem", "fit_camera", "stage1_objective", "SyntheticBatch",
           "make_synthetic"]
