"""One base for the package's errors; one no-face error for images and videos."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import flame_tracker
from flame_tracker.errors import FlameTrackerError, NoFaceError


def test_every_error_class_of_the_package_derives_from_one_base() -> None:
    found = {}
    for mod in pkgutil.walk_packages(flame_tracker.__path__, "flame_tracker."):
        if mod.name.startswith("flame_tracker.cli"):
            continue
        module = importlib.import_module(mod.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    assert len(found) >= 10, sorted(found)
    outside = [n for n, c in found.items() if not issubclass(c, FlameTrackerError)]
    assert outside == [], outside
    # the built-in bases callers relied on are kept
    from flame_tracker.export import ExportError
    from flame_tracker.video.decode import VideoError

    assert issubclass(ExportError, ValueError) and issubclass(VideoError, RuntimeError)


def test_images_and_videos_share_one_no_face_error() -> None:
    from flame_tracker.detection import NoFaceError as from_detection
    from flame_tracker.video.track import NoFacesError

    assert from_detection is NoFaceError and NoFacesError is NoFaceError and issubclass(NoFaceError, RuntimeError)


def test_bad_arguments_raise_the_package_input_error() -> None:
    """Checks deep in the code raise errors.InputError: the package's base and still a ValueError,
    with the message naming what is wrong."""
    import numpy as np
    import pytest

    from flame_tracker.errors import InputError
    from flame_tracker.fitting.stage1 import fit_camera
    from flame_tracker.tracker import Tracker

    assert issubclass(InputError, FlameTrackerError) and issubclass(InputError, ValueError)
    with pytest.raises(InputError, match=r"targets_ndc must be \[N, 68, 2\]"):
        fit_camera(np.zeros((68, 3)), np.zeros((51, 2)))
    with pytest.raises(InputError, match="unknown setting.*roundz"):
        Tracker(roundz=3)
