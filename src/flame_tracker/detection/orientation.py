"""Is a face upright or turned over? For a video stored upside down without a rotation flag.

MediaPipe's landmarker finds few faces in such a video, and where it does find one it often draws an
upright face across the turned one (68-point error 110-150 % of the eye distance against the truth on
three shared clips turned over; tracked, that gave a wrong head with no error). Its face detector
(BlazeFace, the ``face_detector.tflite`` inside the landmarker's bundle) tells the two apart: on a crop
around the face it rates the upright face 0.81-0.98 and the same crop turned over 0.44-0.73, on the
shared clips and a 120-pixel face in a 1080p wide shot, and the other way round on those clips turned
over (0.48-0.70 against 0.76-0.92). :class:`UprightScorer` gives that difference.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from typing import Any

import numpy as np

from flame_tracker.assets import face_landmarker_path
from flame_tracker.io.images import crop_resize

#: The crop the detector rates: this many times the 68 points' larger extent, square, at CROP_PX.
CROP_SCALE = 1.6
CROP_PX = 256
#: A face rated this much better turned over counts as turned: a face on its side (a video stored
#: sideways without a flag, which MediaPipe follows) rates about 0 both ways; upright faces rated
#: 0.2-0.5, turned ones -0.1 to -0.35 (one at +0.07) on the shared clips
UPRIGHT_MARGIN = 0.05


class UprightScorer:
    """``scorer(image, lmks68)``: the face detector's score of a crop around the face minus that of
    the crop turned over (positive: upright). A context manager; ``close()`` releases MediaPipe.

    Args:
        landmarker_path: the ``face_landmarker.task`` bundle whose face detector is used (default:
            found via assets).
        verbose: let MediaPipe's native log lines through.
    """

    def __init__(self, landmarker_path: str | os.PathLike[str] | None = None, verbose: bool = False) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        from flame_tracker.detection.landmarker import native_stderr_silenced

        with zipfile.ZipFile(face_landmarker_path(landmarker_path)) as bundle:
            model = bundle.read("face_detector.tflite")
        options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_buffer=model),
                                             min_detection_confidence=0.05)
        # MediaPipe logs its set-up when created and at the first inference: silenced then only
        # (stderr is the process's: a progress bar drawn meanwhile by another thread would go too)
        self._silenced = native_stderr_silenced
        self._warm = self._verbose = verbose
        with contextlib.nullcontext() if verbose else native_stderr_silenced():
            self._detector: Any = vision.FaceDetector.create_from_options(options)

    def _score(self, image: np.ndarray) -> float:
        import mediapipe as mp

        found = self._detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
        return max((d.categories[0].score or 0.0 for d in found.detections), default=0.0)

    def __call__(self, image: np.ndarray, lmks68: np.ndarray) -> float:
        """How much more upright than turned over the face at ``lmks68`` (pixels of ``image``, RGB
        uint8) looks, in ``[-1, 1]``."""
        lo, hi = np.nanmin(lmks68, axis=0), np.nanmax(lmks68, axis=0)
        side = CROP_SCALE * float(max(hi - lo))
        centre = (lo + hi) / 2
        crop, _ = crop_resize(image, (centre[0] - side / 2, centre[1] - side / 2, side, side), (CROP_PX, CROP_PX))
        with contextlib.nullcontext() if self._warm else self._silenced():
            self._warm = True
            return self._score(crop) - self._score(crop[::-1, ::-1])

    def close(self) -> None:
        """Release MediaPipe (idempotent)."""
        if self._detector is not None:
            with contextlib.nullcontext() if self._verbose else self._silenced():  # (it logs its end)
                self._detector.close()
            self._detector = None

    def __enter__(self) -> UprightScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CROP_PX", "CROP_SCALE", "UPRIGHT_MARGIN", "UprightScorer"]
