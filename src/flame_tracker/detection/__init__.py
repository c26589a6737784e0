"""Face landmark detection: MediaPipe Face Landmarker, the 68-point layout, iris points and
external landmark files (``flame_tracker.io.landmarks_file``)."""

from flame_tracker.detection.landmarker import (
    BLENDSHAPE_NAMES,
    FaceDetection,
    FaceLandmarker,
    NoFaceError,
    detect_image,
)
from flame_tracker.detection.layout import (
    GROUPS68,
    IRIS_INDICES,
    MP_TO_DLIB68,
    MP_TO_DLIB68_REFERENCE,
    WEIGHTS68,
    interocular_nme,
    iris_points,
    mediapipe_to_dlib68,
    read_pts,
    table68,
)

__all__ = [
    "BLENDSHAPE_NAMES",
    "FaceDetection",
    "FaceLandmarker",
    "NoFaceError",
    "detect_image",
    "GROUPS68",
    "IRIS_INDICES",
    "MP_TO_DLIB68",
    "MP_TO_DLIB68_REFERENCE",
    "WEIGHTS68",
    "table68",
    "interocular_nme",
    "iris_points",
    "mediapipe_to_dlib68",
    "read_pts",
]
