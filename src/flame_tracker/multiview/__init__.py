"""Calibrated multi-view capture: one head seen by several synchronised, calibrated cameras.

* :mod:`.cameras`: the calibration (OpenCV ``K``, world-to-camera ``R``, ``t``; or a NeRF/VHAP
  ``transforms.json``), units, checks.
* :mod:`.capture`: the frames, one folder or one video per camera, in step.
* :mod:`.geometry`: triangulation and similarity alignment.
* :mod:`.fit`: one head per timestep and one identity for the capture, from every view's landmarks.
* :mod:`.pipeline`: detection, fit, outputs (``flame-tracker multiview``).
"""

from flame_tracker.multiview.cameras import Camera, MultiviewError, Rig, load_cameras

__all__ = ["Camera", "MultiviewError", "Rig", "load_cameras"]
