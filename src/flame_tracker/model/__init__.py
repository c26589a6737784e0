"""Head-model layer: FLAME-format models and the open ICT-FaceKit model behind one `HeadModel`.

See ``docs/architecture.md`` for the contract: units are metres, axes +x subject's left, +y up,
+z out of the face; ``model(**params)`` returns a :class:`HeadOutput`; ``model.landmarks(**params)``
is the landmark-only fast path; :class:`FittableModel` is what the fitting code uses of a model.
"""

from .data import JOINT_NAMES, ModelData, ModelFormatError
from .head import HeadModel, HeadOutput, LandmarkPath
from .lbs import axis_angle_to_matrix
from .loader import clear_cache, load_model, load_model_data
from .protocol import FittableModel, missing_members

__all__ = [
    "FittableModel",
    "missing_members",
    "HeadModel",
    "LandmarkPath",
    "HeadOutput",
    "JOINT_NAMES",
    "ModelData",
    "ModelFormatError",
    "axis_angle_to_matrix",
    "clear_cache",
    "load_model",
    "load_model_data",
]
