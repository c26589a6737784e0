"""Wide-shot test footage with known landmarks: real faces pasted, at a chosen size and place, into
large canvases (1080p, 4K) and moving through synthetic videos; used by ``benchmarks/detection.py``
and the detection tests.

A face is a photo and its reference landmarks (MediaPipe's on the photo itself, where the face fills
the picture); pasted with scale ``s`` at offset ``o``, the reference becomes ``s * points + o``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from flame_tracker.detection.layout import eye_chin


@dataclass(frozen=True)
class FaceSample:
    """A face photo (RGB uint8), its reference 68 points and its eye-to-chin height (pixels)."""

    name: str
    image: np.ndarray
    lmks68: np.ndarray

    @property
    def eye_chin(self) -> float:
        return eye_chin(self.lmks68)

    @property
    def centre(self) -> np.ndarray:
        return (self.lmks68.min(0) + self.lmks68.max(0)) / 2.0


def textured_canvas(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A background with structure at several scales (not a flat colour, which makes detection easy)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width, 3), np.float32)
    for cells in (4, 16, 64):
        noise = rng.uniform(0, 255, (cells * height // width + 1, cells, 3)).astype(np.float32)
        out += np.asarray(cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC), np.float32) / 3.0
    return np.clip(out, 0, 255).astype(np.uint8)


def paste_face(canvas: np.ndarray, face: FaceSample, centre: tuple[float, float], eye_chin_px: float,
               feather: float = 0.12) -> np.ndarray:
    """Paste ``face`` into ``canvas`` (in place) so that its eye-to-chin height is ``eye_chin_px``
    and its landmarks' centre lands on ``centre``; returns its 68 points in the canvas ``[68, 2]``.
    The photo is blended in with a soft elliptical edge (no hard square border to detect)."""
    s = eye_chin_px / face.eye_chin
    h, w = canvas.shape[:2]
    if s < 1:  # shrink with pixel averaging, then place with a sub-pixel shift
        fh0, fw0 = face.image.shape[:2]
        src = cv2.resize(face.image, (max(1, round(fw0 * s)), max(1, round(fh0 * s))), interpolation=cv2.INTER_AREA)
        scale = np.array([src.shape[1] / fw0, src.shape[0] / fh0])
        off = np.asarray(centre, np.float64) - scale * face.centre
        m = np.array([[1.0, 0.0, off[0]], [0.0, 1.0, off[1]]])  # pixel corners and centres shift alike
    else:
        src, scale = face.image, np.array([s, s])
        off = np.asarray(centre, np.float64) - scale * face.centre
        # pixel centres: i + 0.5 = s (j + 0.5) + off
        m = np.array([[s, 0.0, off[0] + 0.5 * s - 0.5], [0.0, s, off[1] + 0.5 * s - 0.5]])
    fh, fw = src.shape[:2]
    yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float32)
    r = np.sqrt(((xx - fw / 2) / (fw / 2)) ** 2 + ((yy - fh / 2) / (fh / 2)) ** 2)
    alpha = np.clip((1.0 - r) / feather, 0.0, 1.0)[..., None]
    # only the rectangle the photo lands on is warped and blended
    x0, y0 = max(0, int(np.floor(m[0, 2])) - 1), max(0, int(np.floor(m[1, 2])) - 1)
    x1 = min(w, int(np.ceil(m[0, 2] + m[0, 0] * fw)) + 2)
    y1 = min(h, int(np.ceil(m[1, 2] + m[1, 1] * fh)) + 2)
    if x1 > x0 and y1 > y0:
        mm = m.copy()
        mm[:, 2] -= (x0, y0)
        size = (x1 - x0, y1 - y0)
        layer = cv2.warpAffine(src, mm, size, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)).astype(np.float32)
        a = cv2.warpAffine(alpha, mm, size, flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
        sub = canvas[y0:y1, x0:x1]
        sub[:] = (sub * (1 - a) + layer * a).astype(np.uint8)
    return face.lmks68 * scale + off


def load_faces(image_paths: list[Path], landmarker) -> list[FaceSample]:
    """The shared photos as :class:`FaceSample` (reference points: ``landmarker`` on each photo);
    photos without a face are left out."""
    from flame_tracker.io.images import load_image

    out = []
    for p in image_paths:
        img = load_image(p)
        det = landmarker.detect(img)
        if det is not None:
            out.append(FaceSample(Path(p).stem, img, det.lmks68.astype(np.float64)))
    return out


def two_person_video(path: Path, left: FaceSample, right: FaceSample, *, size: tuple[int, int] = (960, 540),
                     n_frames: int = 48, fps: float = 24.0, eye_chin_px: float = 60.0) -> np.ndarray:
    """Write a video of two faces moving across each other (``left`` starts left, ``right`` right;
    they swap sides, passing one above the other). Returns the centres ``[T, 2, 2]`` (frame, face,
    xy) of (left, right) in every frame."""
    from flame_tracker.video.encode import VideoWriter

    w, h = size
    bg = textured_canvas(w, h, seed=3)
    centres = np.zeros((n_frames, 2, 2))
    with VideoWriter(path, fps=fps) as out:
        for t in range(n_frames):
            a = t / max(n_frames - 1, 1)
            xl = (0.2 + 0.6 * a) * w
            xr = (0.8 - 0.6 * a) * w
            yl, yr = 0.34 * h, 0.66 * h  # one above the other: they cross without covering each other
            frame = bg.copy()
            paste_face(frame, left, (xl, yl), eye_chin_px)
            paste_face(frame, right, (xr, yr), eye_chin_px)
            centres[t] = [[xl, yl], [xr, yr]]
            out.write(frame)
    return centres


__all__ = ["FaceSample", "load_faces", "paste_face", "textured_canvas", "two_person_video"]
