"""MediaPipe Face Landmarker (Tasks API) wrapped for fitting: one call per frame, results in
original image pixels, an explicit not-found result.

Usage::

    with FaceLandmarker() as lm:                       # IMAGE mode, model found via assets
        det = lm.detect(load_image("photo.jpg"))      # FaceDetection or None
    with FaceLandmarker(mode="video") as lm:
        for t_ms, frame in frames:
            det = lm.detect(frame, timestamp_ms=t_ms)  # tracks between frames
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from flame_tracker.assets import face_landmarker_path
from flame_tracker.detection.layout import IRIS_INDICES, mediapipe_to_dlib68, table68
from flame_tracker.errors import InputError, NoFaceError, StepError
from flame_tracker.io.images import ImageTransform, crop_resize, load_image, resize_max_side

Mode = Literal["image", "video"]
Select = Literal["largest", "first", "center"]


# MediaPipe's 52 blendshape names in output order (index 0 "_neutral"); ARKit names otherwise.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to the process's stderr (file descriptor 2) to /dev/null for
    the duration: MediaPipe's C++ logs (``W0000 ...``, ``INFO: Created TensorFlow Lite ...``)
    bypass Python and no environment variable turns them off before its logging is initialised.
    Python exceptions raised inside are reported after the descriptor is restored. The descriptor is
    the process's: other threads' native messages (e.g. FFmpeg's) in that short window are lost too.
    Threads (the video pipeline detects in several) share one redirection: the first to enter makes
    it, the last to leave restores the descriptor."""
    global _silenced, _saved_fd
    with _silence_lock:
        if _silenced == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError, AttributeError):  # no real descriptor 2 (embedded, pythonw)
                saved = None
            if saved is not None:
                try:
                    null = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(null, 2)
                    os.close(null)
                except OSError:  # cannot silence: leave stderr as it is
                    os.close(saved)
                    saved = None
            _saved_fd = saved
        _silenced += 1
    try:
        yield
    finally:
        with _silence_lock:
            _silenced = max(_silenced - 1, 0)  # (restore_stderr may have ended every block already)
            if _silenced == 0:
                _give_back_stderr()


def restore_stderr() -> None:
    """Give the process its stderr back now, whatever :func:`native_stderr_silenced` blocks are
    still open (a command about to report an interruption and exit: a thread stopped inside one
    would otherwise take the message with it)."""
    global _silenced
    with _silence_lock:
        _give_back_stderr()
        _silenced = 0


def _give_back_stderr() -> None:
    """Descriptor 2 back to the real stderr, if it is silenced (with ``_silence_lock`` held)."""
    global _saved_fd
    if _saved_fd is not None:
        os.dup2(_saved_fd, 2)
        os.close(_saved_fd)
        _saved_fd = None


_silence_lock = threading.Lock()
_silenced = 0  # threads inside native_stderr_silenced
_saved_fd: int | None = None  # the real stderr while silenced


@dataclass(frozen=True)
class FaceDetection:
    """One detected face. All x, y are pixels of the ORIGINAL image (x right, y down, origin at
    the top-left pixel's corner).

    - ``points478``: ``[478, 3]`` float32 MediaPipe mesh (468 face + 10 iris); z is MediaPipe's
      relative depth in the same pixel scale as x (smaller = nearer the camera).
    - ``lmks68``: ``[68, 2]`` dlib/iBUG layout (``flame_tracker.detection.layout`` table).
    - ``iris``: ``[10, 2]``: subject's right eye centre + 4, then left eye centre + 4.
    - ``blendshapes``: ``[52]`` ARKit-style scores (index 0 ``_neutral``), names in
      ``blendshape_names``; empty when disabled.
    - ``transform``: ``[4, 4]`` MediaPipe facial transformation matrix (canonical face model in cm →
      MediaPipe's virtual camera); NaN-filled when disabled.
    - ``confidence``: a lower bound: the presence threshold this face passed (the Tasks API does
      not expose the raw score).
    - ``image_size``: ``(W, H)`` of the original image.
    """

    points478: np.ndarray
    lmks68: np.ndarray
    iris: np.ndarray
    blendshapes: np.ndarray
    blendshape_names: tuple[str, ...]
    transform: np.ndarray
    confidence: float
    image_size: tuple[int, int]
    detect_transform: ImageTransform = field(repr=False, default=ImageTransform())

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the 478 points in original pixels."""
        lo, hi = self.points478[:, :2].min(0), self.points478[:, :2].max(0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    @property
    def area(self) -> float:
        """Area of :attr:`bbox` in square pixels."""
        x0, y0, x1, y1 = self.bbox
        return (x1 - x0) * (y1 - y0)


#: Landmarkers not closed yet: closed at interpreter exit, while MediaPipe's modules still work (its
#: own destructor, run during the interpreter's teardown, fails with a traceback on stderr when a
#: landmarker was never closed, e.g. a ``Tracker`` used without ``with``).
_OPEN: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_landmarkers() -> None:
    for lm in list(_OPEN):
        try:
            lm.close()
        except Exception:  # noqa: BLE001  (exiting: nothing left to report to)
            pass


class FaceLandmarker:
    """MediaPipe Face Landmarker in IMAGE or VIDEO mode (a context manager; call ``close()``).

    Args:
        model_path: the ``face_landmarker.task`` bundle; ``None`` resolves it with
            :func:`flame_tracker.assets.face_landmarker_path`.
        mode: ``"image"`` (independent photos) or ``"video"`` (needs increasing timestamps,
            tracks the face between frames, much faster per frame).
        max_faces: faces MediaPipe may return; default 4 in image mode (so the largest can be
            chosen) and 1 in video mode (more would re-run the face detector on every frame).
        select: which face :meth:`detect` returns: ``"largest"`` (bounding box area), ``"first"``
            (MediaPipe's order) or ``"center"`` (closest to the image centre).
        max_side: frames whose longer side exceeds this are downscaled for detection; the
            landmarks are mapped back to original pixels (MediaPipe works on 128–256 px crops).
        table: 68-point table, ``"improved"`` (default) or ``"reference"`` (docs/reference.md §6.2
            exactly); see :mod:`flame_tracker.detection.layout`.
        blendshapes, transformation_matrix: compute these outputs (on by default).
        verbose: let MediaPipe's native log lines through (they are silenced otherwise).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        mode: Mode = "image",
        max_faces: int | None = None,
        select: Select = "largest",
        max_side: int = 1920,
        table: str = "improved",
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        blendshapes: bool = True,
        transformation_matrix: bool = True,
        verbose: bool = False,
    ) -> None:
        if mode not in ("image", "video"):
            raise InputError(f"mode must be 'image' or 'video', not {mode!r}")
        if select not in ("largest", "first", "center"):
            raise InputError(f"select must be 'largest', 'first' or 'center', not {select!r}")
        if max_side < 64:
            raise InputError(f"max_side={max_side} is too small for face detection (use >= 64)")
        # Imported here: mediapipe takes ~1 s to import and most of the package does not need it.
        from mediapipe.tasks.python import BaseOptions, vision

        table68(table)  # validate early
        self.table = table
        self.model_path = face_landmarker_path(model_path)
        self.mode: Mode = mode
        self.select: Select = select
        self.max_side = int(max_side)
        self.max_faces = int(max_faces) if max_faces is not None else (4 if mode == "image" else 1)
        self.min_presence_confidence = float(min_presence_confidence)
        self._last_ts: int | None = None
        self.verbose = bool(verbose)
        self._warm = False  # the first inference has run (MediaPipe logs its set-up then)
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=vision.RunningMode.VIDEO if mode == "video" else vision.RunningMode.IMAGE,
            num_faces=self.max_faces,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
            output_face_blendshapes=blendshapes,
            output_facial_transformation_matrixes=transformation_matrix,
        )
        try:
            with contextlib.nullcontext() if verbose else native_stderr_silenced():
                self._landmarker = vision.FaceLandmarker.create_from_options(options)
            _OPEN.add(self)
        except OSError as exc:  # MediaPipe's native library did not load (a system library missing)
            raise StepError(
                f"Cannot load MediaPipe's native library: {exc}. It needs the system's EGL and OpenGL ES "
                "libraries (libEGL.so.1, libGLESv2.so.2), even on the CPU: on Debian/Ubuntu "
                "`apt install libegl1 libgles2`."
            ) from exc
        except (RuntimeError, ValueError) as exc:
            raise StepError(
                f"Cannot load the MediaPipe Face Landmarker from {self.model_path}: {exc}. "
                "Re-download it with `flame-tracker assets download --force`."
            ) from exc

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Release MediaPipe's graph (idempotent)."""
        lm, self._landmarker = getattr(self, "_landmarker", None), None
        if lm is not None:
            lm.close()

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: MediaPipe's C library may already be gone
            pass

    # -- detection ------------------------------------------------------------------------------
    def detect_all(
        self, image: np.ndarray | str | os.PathLike[str], timestamp_ms: float | None = None
    ) -> list[FaceDetection]:
        """All faces (up to ``max_faces``) in MediaPipe's order; an empty list when none."""
        rgb = load_image(image)  # arrays: only dtype/channel conversion, no copy for RGB uint8
        small, tf = resize_max_side(rgb, self.max_side)
        return self._infer(small, tf, timestamp_ms)

    def detect_region(
        self,
        image: np.ndarray,
        centre: tuple[float, float],
        side: float,
        timestamp_ms: float | None = None,
        out_side: int = 512,
    ) -> list[FaceDetection]:
        """The faces in the square of ``side`` pixels around ``centre`` (it may leave the picture:
        the outside is black), seen at no more than ``out_side`` pixels: MediaPipe then gets a
        face that fills a good part of its input, however small or large it is in the frame.
        Points are in ``image``'s pixels."""
        rgb = load_image(image)
        side = max(float(side), 8.0)
        box = (centre[0] - side / 2, centre[1] - side / 2, side, side)
        if side <= 1.5 * out_side:
            n = int(min(round(side), out_side))
            crop, tf = crop_resize(rgb, box, (n, n))
        else:  # a large shrink: crop at full resolution, then average pixels (no aliasing)
            crop, tf = crop_resize(rgb, box, (round(side), round(side)))
            crop, shrink = resize_max_side(crop, out_side)
            tf = ImageTransform((tf.scale[0] * shrink.scale[0], tf.scale[1] * shrink.scale[1]), tf.offset,
                                shrink.size, tf.original_size)
        return self._infer(crop, tf, timestamp_ms)

    def _infer(self, small: np.ndarray, tf: ImageTransform, timestamp_ms: float | None) -> list[FaceDetection]:
        """Run MediaPipe on ``small``; the points go back to original pixels through ``tf``."""
        import mediapipe as mp

        if self._landmarker is None:
            raise StepError("this FaceLandmarker is closed")
        w, h = tf.original_size
        mp_image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(small))
        with self._quiet():  # MediaPipe logs its graph set-up on the first call
            if self.mode == "video":
                result = self._landmarker.detect_for_video(mp_image, self._next_timestamp(timestamp_ms))
            else:
                result = self._landmarker.detect(mp_image)
        sw, sh = tf.size
        out = []
        for i, lms in enumerate(result.face_landmarks):
            # The Tasks API hands back Python objects; one comprehension per face is unavoidable.
            norm = np.array([(p.x, p.y, p.z) for p in lms], dtype=np.float64)
            pts = tf.to_original(norm * (sw, sh, sw)).astype(np.float32)
            bs = result.face_blendshapes[i] if i < len(result.face_blendshapes) else []
            mats = result.facial_transformation_matrixes
            out.append(
                FaceDetection(
                    points478=pts,
                    lmks68=mediapipe_to_dlib68(pts[:, :2], self.table),
                    iris=pts[IRIS_INDICES, :2] if len(pts) == 478 else np.full((10, 2), np.nan, np.float32),
                    blendshapes=np.array([c.score for c in bs], dtype=np.float32),
                    blendshape_names=tuple(c.category_name for c in bs),
                    transform=(
                        np.asarray(mats[i], dtype=np.float32).reshape(4, 4)
                        if i < len(mats)
                        else np.full((4, 4), np.nan, np.float32)
                    ),
                    confidence=self.min_presence_confidence,
                    image_size=(w, h),
                    detect_transform=tf,
                )
            )
        return out

    def _quiet(self) -> contextlib.AbstractContextManager[None]:
        """Silences MediaPipe's native set-up log lines during the first inference (unless verbose)."""
        if self._warm or self.verbose:
            return contextlib.nullcontext()
        self._warm = True
        return native_stderr_silenced()

    def detect(
        self, image: np.ndarray | str | os.PathLike[str], timestamp_ms: int | None = None
    ) -> FaceDetection | None:
        """The selected face (see ``select``), or ``None`` when no face is found.

        In video mode pass the frame's time in milliseconds (strictly increasing); when omitted,
        frames are assumed 1/30 s apart.
        """
        faces = self.detect_all(image, timestamp_ms)
        if not faces:
            return None
        if self.select == "first" or len(faces) == 1:
            return faces[0]
        if self.select == "largest":
            return max(faces, key=lambda f: f.area)
        w, h = faces[0].image_size
        centre = np.array([w / 2, h / 2])
        return min(faces, key=lambda f: float(np.linalg.norm(f.points478[:, :2].mean(0) - centre)))

    def detect_or_raise(
        self, image: np.ndarray | str | os.PathLike[str], timestamp_ms: int | None = None
    ) -> FaceDetection:
        """Like :meth:`detect` but raise :class:`NoFaceError` when no face is found."""
        det = self.detect(image, timestamp_ms)
        if det is None:
            name = str(image) if isinstance(image, (str, os.PathLike)) else "the image"
            raise NoFaceError(f"No face found in {name}.")
        return det

    def _next_timestamp(self, timestamp_ms: float | None) -> int:
        if timestamp_ms is None:
            ts = 0 if self._last_ts is None else self._last_ts + 33
        else:
            ts = int(round(timestamp_ms))
            if self._last_ts is not None and ts <= self._last_ts:
                raise InputError(
                    f"video timestamps must increase: got {ts} ms after {self._last_ts} ms "
                    "(use a new FaceLandmarker for a new video)"
                )
        self._last_ts = ts
        return ts


def detect_image(
    image: np.ndarray | str | os.PathLike[str], model_path: str | os.PathLike[str] | None = None
) -> FaceDetection | None:
    """One-shot convenience: detect the largest face in one image (loads and closes the model)."""
    with FaceLandmarker(model_path) as lm:
        return lm.detect(image)
