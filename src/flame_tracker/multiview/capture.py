"""The frames of a multi-view capture, in step: one folder of images or one video per camera.

Layouts (camera names as in the calibration):

* ``CAPTURE/<camera>/000000.png ...``: images in name order, frame ``i`` of every folder is one
  timestep (times from ``fps``);
* ``CAPTURE/<camera>.mp4`` (any video suffix): frame ``i`` of every video is one timestep (the
  synchronisation by frame index of hardware-triggered rigs; times from the first camera's stream),
  or with ``sync="timestamps"`` the first camera's frames are the timesteps and every other camera
  gives its frame nearest in time (none when the nearest is more than half a frame away): cameras at
  other frame rates, timing jitter. Each stream's times start at its own first frame, so streams
  that started at different moments must be trimmed to a common start first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flame_tracker.io.suffixes import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from flame_tracker.multiview.cameras import MultiviewError, Rig


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
    sync: str = "index"  # videos: "index" or "timestamps"

    def folder_images(self, t: int) -> list[np.ndarray | None]:
        """Image folders: every camera's picture of timestep ``t`` (read directly, RGB uint8)."""
        from flame_tracker.io.images import load_image

        assert self.images is not None  # image folders, found by open_capture
        return [load_image(files[t * self.every]) for files in self.images]

    def frames(self) -> Iterator[tuple[int, float, list[np.ndarray | None]]]:
        """``(t, time_s, [image of each camera])`` for every timestep, RGB uint8 (None: that camera
        has no frame at that time, with ``sync="timestamps"``)."""
        if self.kind == "folders":
            for t in range(self.n_frames):
                yield t, t * self.every / self.fps, self.folder_images(t)
            return
        from flame_tracker.video.decode import VideoReader

        if self.sync == "timestamps":
            yield from self._frames_by_time()
            return
        readers = [iter(VideoReader(p, every=self.every, max_frames=self.n_frames)) for p in self.sources]
        for t in range(self.n_frames):
            got = [next(r, None) for r in readers]
            frames = [g for g in got if g is not None]
            if len(frames) < len(got):
                missing = [self.rig.cameras[c].name for c, g in enumerate(got) if g is None]
                raise MultiviewError(f"{', '.join(missing)}: the video ended at frame {t * self.every} while the "
                                     f"capture has {self.n_frames * self.every}; give videos of one length")
            yield t, frames[0].time_s, [g.image for g in frames]


    def _frames_by_time(self) -> Iterator[tuple[int, float, list[np.ndarray | None]]]:
        from flame_tracker.video.decode import VideoReader, probe

        ref = VideoReader(self.sources[0], every=self.every, max_frames=self.n_frames)
        others = [iter(VideoReader(p)) for p in self.sources[1:]]
        rates = [probe(p).fps for p in self.sources[1:]]
        if not all(r > 0 for r in rates):
            raise MultiviewError("--sync timestamps needs each video's frame rate; a video without one cannot be "
                                 "paired by time")
        tol = [0.5 / r for r in rates]
        ahead: list = [next(it, None) for it in others]  # each camera's next frame after the reference time
        behind: list = [None] * len(others)  # and its last frame at or before it (may pair again)
        for t, frame in enumerate(ref):
            row: list[np.ndarray | None] = [frame.image]
            for k, it in enumerate(others):
                while ahead[k] is not None and ahead[k].time_s <= frame.time_s:
                    behind[k], ahead[k] = ahead[k], next(it, None)
                cands = [f for f in (behind[k], ahead[k]) if f is not None]
                near = min(cands, key=lambda f: abs(f.time_s - frame.time_s)) if cands else None
                row.append(near.image if near is not None and abs(near.time_s - frame.time_s) <= tol[k] else None)
            yield t, frame.time_s, row


def _frame_count(path: Path) -> int:
    from flame_tracker.video.decode import probe

    return int(probe(path).n_frames)


def open_capture(root: str | Path, rig: Rig, *, every: int = 1, max_frames: int | None = None,
                 fps: float = 30.0, sync: str = "index") -> Capture:
    """Find every camera's frames under ``root`` and check them against the calibration (names,
    counts, image sizes); ``sync``: ``"index"`` or (videos) ``"timestamps"``. :class:`MultiviewError`
    says what does not match."""
    if sync not in ("index", "timestamps"):
        raise MultiviewError(f"unknown synchronisation {sync!r}; use index or timestamps")
    root = Path(root)
    if not root.is_dir():
        raise MultiviewError(f"{root}: no such folder (give the capture folder: one sub-folder or video per camera)")
    if every < 1:
        raise MultiviewError(f"--every must be >= 1, got {every}")
    folders = [root / c.name for c in rig.cameras]
    videos = [next((p for p in sorted(root.glob(f"{c.name}.*")) if p.suffix.lower() in VIDEO_SUFFIXES), None)
              for c in rig.cameras]
    found_videos = [v for v in videos if v is not None]
    images: list[list[Path]] | None
    if all(f.is_dir() for f in folders):
        images = [sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for f in folders]
        counts = [len(x) for x in images]
        kind, sources = "folders", folders
    elif len(found_videos) == len(videos):
        images, kind, sources = None, "videos", found_videos
        counts = [_frame_count(v) for v in found_videos]
    else:
        missing = [c.name for c, f, v in zip(rig.cameras, folders, videos) if not f.is_dir() and v is None]
        raise MultiviewError(f"{root}: no frames for camera(s) {', '.join(missing)}: expected {root}/<camera>/ "
                             f"(images) or {root}/<camera>.mp4 for every camera of the calibration "
                             f"({', '.join(rig.names)})")
    if min(counts) == 0:
        empty = [c.name for c, n in zip(rig.cameras, counts) if n == 0]
        raise MultiviewError(f"camera(s) {', '.join(empty)} have no frames")
    if sync == "timestamps" and kind != "videos":
        raise MultiviewError("--sync timestamps needs one video per camera (image folders have no timestamps)")
    if len(set(counts)) > 1 and sync == "index":
        detail = ", ".join(f"{c.name} {n}" for c, n in zip(rig.cameras, counts))
        raise MultiviewError(f"the cameras have different frame counts ({detail}); synchronised cameras give one "
                             "frame per camera per timestep: trim them to the same frames, or pair frames by "
                             "time with --sync timestamps (videos)")
    n = (counts[0] + every - 1) // every
    if max_frames is not None:
        n = min(n, max_frames)
    cap = Capture(root, rig, kind, sources, images, n, every, fps, sync)
    # the frames must be the calibration's size (a resized picture needs a scaled K)
    for c, (cam, src) in enumerate(zip(rig.cameras, sources)):
        files = images[c] if images is not None else None
        if files is not None:
            from flame_tracker.io.images import picture_size

            size = picture_size(files[0])  # upright, as the frames are read
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
