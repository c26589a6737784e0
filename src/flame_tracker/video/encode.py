"""Streaming mp4 writer (PyAV/libx264) for overlay videos, written atomically, and the join of its
pieces into one file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np

from flame_tracker.errors import InputError
from flame_tracker.io.results import atomic_path, temporary_sibling

#: The muxer's options for every mp4 written here: the movie's clock at the frames' 1/90000 s. A file
#: whose first frame is not at 0 (a piece of an overlay, a range's first frame) records that start in
#: it, which at MP4's default of 1/1000 s moved every frame by under 1 ms (0.83 ms measured).
MP4_OPTIONS = {"movie_timescale": "90000"}


def ffmpeg_path(path: str | Path) -> str:
    """``path`` as FFmpeg must get a file: absolute, so that a name such as ``take:1.mp4`` is not
    read as a protocol (``take:``)."""
    return str(Path(path).absolute())


class VideoWriter:
    """Write RGB frames to an H.264 mp4 one at a time; the file appears at ``path`` on ``close``.

    Frame sizes are padded to even numbers (yuv420p needs them). ``fps`` may be fractional
    (e.g. 30000/1001); frames get presentation times from ``time_s`` when given, so a variable
    frame-rate source keeps its timing.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 23, preset: str = "veryfast"
                 ) -> None:
        if fps <= 0:
            raise InputError(f"fps must be > 0, got {fps}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temporary_sibling(self.path, ".mp4")  # renamed onto path by close()
        self._container = av.open(ffmpeg_path(self._tmp), mode="w", options=MP4_OPTIONS)
        self._rate = Fraction(fps).limit_denominator(1001)
        self._stream: av.video.stream.VideoStream | None = None
        self._crf, self._preset = crf, preset
        self._time_base = Fraction(1, 90000)
        self._last_pts = -1
        self.n_frames = 0

    def _open_stream(self, width: int, height: int) -> None:
        stream = self._container.add_stream("libx264", rate=self._rate)
        stream.width, stream.height = width + width % 2, height + height % 2
        stream.pix_fmt = "yuv420p"
        stream.time_base = self._time_base
        # the encoder's clock too: at its default 1/fps, frames kept at their source times (a
        # subsampled or variable-rate video) can fall two to a tick, which the muxer refuses
        stream.codec_context.time_base = self._time_base
        stream.options = {"crf": str(self._crf), "preset": self._preset}
        self._stream = stream

    def write(self, rgb: np.ndarray, time_s: float | None = None) -> None:
        """Append one RGB uint8 ``H×W×3`` frame (all frames must have the first frame's size)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(f"expected an RGB uint8 H×W×3 frame, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        if self._stream is None:
            self._open_stream(w, h)
        assert self._stream is not None
        if (h + h % 2, w + w % 2) != (self._stream.height, self._stream.width):
            raise InputError(f"frame size {w}x{h} differs from the video's "
                             f"{self._stream.width}x{self._stream.height}")
        if h % 2 or w % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        # OpenCV's RGB -> YUV 4:2:0 (BT.601, what the encoder takes) is ~20x faster than
        # libswscale's conversion from rgb24, which took a third of the overlay's time per frame
        yuv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        if time_s is None:
            pts = int(round(self.n_frames / self._rate / self._time_base))
        else:
            pts = int(round(time_s / self._time_base))
        pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the source did
        frame.pts, frame.time_base = pts, self._time_base
        self._last_pts = pts
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.n_frames += 1

    def close(self) -> Path:
        """Flush the encoder and move the file into place; an empty video is not written."""
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
        finally:
            self._container.close()
        if self.n_frames == 0:
            self._tmp.unlink(missing_ok=True)
            return self.path
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Close without keeping anything."""
        try:
            self._container.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def join_videos(parts: Sequence[str | Path], path: str | Path) -> Path:
    """Join the mp4 files ``parts``, consecutive pieces of one timeline written by :class:`VideoWriter`
    with the same frame size and settings, into ``path`` without encoding again (each piece starts
    with a keyframe; frames keep their times); written atomically. The parts are left in place.
    """
    if not parts:
        raise InputError(f"no video pieces to join into {path}")
    with atomic_path(path) as tmp, av.open(ffmpeg_path(tmp), mode="w", options=MP4_OPTIONS) as out:
        ost, size, last_dts = None, None, None
        for part in parts:
            with av.open(ffmpeg_path(part)) as src:
                stream = src.streams.video[0]
                if ost is None:
                    ost, size = out.add_stream_from_template(stream), (stream.width, stream.height)
                elif (stream.width, stream.height) != size:
                    raise InputError(f"{part}: {stream.width}x{stream.height} frames, not the "
                                     f"{size[0]}x{size[1]} of the pieces before it")
                for packet in src.demux(stream):
                    if packet.dts is None:  # (the demuxer's empty packet at the end)
                        continue
                    # a piece's first decoding times lie before its first frame's time by the
                    # encoder's reordering delay, which can reach back into the piece before
                    # (a slower piece after a faster one): the order is kept, and every frame's time
                    if last_dts is not None and packet.dts <= last_dts:
                        packet.dts = last_dts + 1
                    last_dts = packet.dts
                    packet.stream = ost
                    out.mux(packet)
    return Path(path)


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two RGB images of the same height next to each other."""
    if left.shape[0] != right.shape[0]:
        raise InputError(f"side-by-side needs equal heights, got {left.shape} and {right.shape}")
    return np.concatenate([left, right], axis=1)
