"""The frames of a multi-view capture, in step: one folder of images or one video per camera.

Layouts (camera names as in the calibration):

* ``CAPTURE/<camera>/000000.png ...``: images in name order, frame ``i`` of every folder is one
  timestep (times from ``fps``);
* ``CAPTURE/<camera>.mp4`` (any video suffix): frame ``i`` of every video is one timestep (the
  synchronisation by frame index of hardware-triggered rigs; times from the first camera's stream).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flame_tracker.multiview.cameras import MultiviewError, Rig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"}


@dataclass
class Capture:
    """Where each camera's frames are and how many timesteps the capture has."""

    root: Path
    rig: Rig
    kind: str  # "folders" | "videos"
    sources: list[Path]  # per camera: its folder or video
    images: list[list[Path]] | None  # folders: per camera, its images in order
    n_frames: int  # timesteps (after every / max_frames)
    every: int = 1
    fps: float = 30.0

    def frames(self) -> Iterator[tuple[int, float, list[np.ndarray]]]:
        """``(t, time_s, [image of each camera])`` for every timestep, RGB uint8."""
        from flame_tracker.io.images import load_image

        if self.kind == "folders":
            for t in range(self.n_frames):
                k = t * self.every
                yield t, k / self.fps, [load_image(files[k]) for files in self.images]
            return
        from flame_tracker.video.decode import VideoReader

        readers = [iter(VideoReader(p, every=self.every, max_frames=self.n_frames)) for p in self.sources]
        for t in range(self.n_frames):
            got = [next(r, None) for r in readers]
            missing = [self.rig.cameras[c].name for c, g in enumerate(got) if g is None]
            if missing:
                raise MultiviewError(f"{', '.join(missing)}: the video ended at frame {t * self.every} while the "
                                     f"capture has {self.n_frames * self.every}; give videos of one length")
            yield t, got[0].time_s, [g.image for g in got]


def _frame_count(path: Path) -> int:
    from flame_tracker.video.decode import probe

    return int(probe(path).n_frames)


def open_capture(root: str | Path, rig: Rig, *, every: int = 1, max_frames: int | None = None,
                 fps: float = 30.0) -> Capture:
    """Find every camera's frames under ``root`` and check them against the calibration (names,
    counts, image sizes); :class:`MultiviewError` says what does not match."""
    root = Path(root)
    if not root.is_dir():
        raise MultiviewError(f"{root}: no such folder (give the capture folder: one sub-folder or video per camera)")
    if every < 1:
        raise MultiviewError(f"--every must be >= 1, got {every}")
    folders = [root / c.name for c in rig.cameras]
    videos = [next((p for p in sorted(root.glob(f"{c.name}.*")) if p.suffix.lower() in VIDEO_SUFFIXES), None)
              for c in rig.cameras]
    if all(f.is_dir() for f in folders):
        images = [sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for f in folders]
        counts = [len(x) for x in images]
        kind, sources = "folders", folders
    elif all(v is not None for v in videos):
        images, kind, sources = None, "videos", videos
        counts = [_frame_count(v) for v in videos]
    else:
        missing = [c.name for c, f, v in zip(rig.cameras, folders, videos) if not f.is_dir() and v is None]
        raise MultiviewError(f"{root}: no frames for camera(s) {', '.join(missing)}: expected {root}/<camera>/ "
                             f"(images) or {root}/<camera>.mp4 for every camera of the calibration "
                             f"({', '.join(rig.names)})")
    if min(counts) == 0:
        empty = [c.name for c, n in zip(rig.cameras, counts) if n == 0]
        raise MultiviewError(f"camera(s) {', '.join(empty)} have no frames")
    if len(set(counts)) > 1:
        detail = ", ".join(f"{c.name} {n}" for c, n in zip(rig.cameras, counts))
        raise MultiviewError(f"the cameras have different frame counts ({detail}); synchronised cameras give one "
                             "frame per camera per timestep: trim them to the same frames")
    n = (counts[0] + every - 1) // every
    if max_frames is not None:
        n = min(n, max_frames)
    cap = Capture(root, rig, kind, sources, images, n, every, fps)
    # the frames must be the calibration's size (a resized picture needs a scaled K)
    for cam, src, files in zip(rig.cameras, sources, images or [None] * len(sources)):
        if files is not None:
            from PIL import Image

            with Image.open(files[0]) as im:
                size = im.size
        else:
            from flame_tracker.video.decode import probe

            info = probe(src)
            size = (info.width, info.height)
        if tuple(size) != (cam.width, cam.height):
            raise MultiviewError(f"{cam.name}: frames are {size[0]}x{size[1]} pixels but the calibration says "
                                 f"{cam.width}x{cam.height}; give the frames the cameras were calibrated at (or "
                                 "scale K and the size)")
    return cap


__all__ = ["Capture", "open_capture", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES"]
