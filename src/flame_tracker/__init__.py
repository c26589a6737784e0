"""flame-tracker: fast, CPU-first fitting of parametric 3D head models (FLAME, ICT-FaceKit) to
face images and monocular videos."""

__version__ = "0.1.0"
