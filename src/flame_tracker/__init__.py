"""flame-tracker: fast, CPU-first fitting of parametric 3D head models (FLAME, ICT-FaceKit) to
face images and monocular videos.

The main entry points are importable from here (loaded on first use, so that ``import flame_tracker``
stays light): :class:`Tracker` and :class:`Result` (photos), :func:`load_model` (head models),
:func:`track_video` (videos) and :func:`load_image`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY = {
    "Tracker": "flame_tracker.tracker",
    "Result": "flame_tracker.tracker",
    "load_model": "flame_tracker.model",
    "track_video": "flame_tracker.video.pipeline",
    "load_image": "flame_tracker.io.images",
}

__all__ = ["Result", "Tracker", "__version__", "load_image", "load_model", "track_video"]

if TYPE_CHECKING:
    from flame_tracker.io.images import load_image
    from flame_tracker.model import load_model
    from flame_tracker.tracker import Result, Tracker
    from flame_tracker.video.pipeline import track_video


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flame_tracker' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
