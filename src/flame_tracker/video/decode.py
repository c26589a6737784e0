"""Streaming video decoding with PyAV.

Frames are decoded one at a time (memory stays flat in the video's length; the reference tracker
decodes every frame into RAM first). Frame rate, display rotation and per-frame timestamps come
from the container, so variable-frame-rate phone videos keep their real timing. A stream that breaks
mid-file (truncated download, damaged packets) ends the iteration cleanly: what was decoded is kept
and :attr:`VideoReader.broken` says where it broke.
"""

from __future__ import annotations

import math
import queue
import threading
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Container, Generator, Iterable, Iterator, TypeVar

import av
import numpy as np

from flame_tracker.errors import FlameTrackerError, InputError
from flame_tracker.video.encode import ffmpeg_path


class VideoError(FlameTrackerError, RuntimeError):
    """A video file cannot be used (not a video, no video stream, unreadable)."""


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video stream.

    ``width``/``height`` are the *displayed* size (after the rotation metadata is applied).
    ``n_frames`` is the container's frame count, or an estimate from duration × fps (0 if unknown).
    """

    path: Path
    width: int
    height: int
    fps: float
    n_frames: int
    duration_s: float
    rotation: int  # degrees counter-clockwise applied to decoded frames for display
    codec: str


@dataclass
class Frame:
    """One decoded frame: ``index`` counts source frames from 0, ``time_s`` is its presentation
    time in seconds (from the container), ``image`` is RGB uint8 H×W×3, upright; ``position``
    counts the selected frames (time range, ``every``, ``fps``) from 0."""

    index: int
    time_s: float
    image: np.ndarray
    position: int = -1


def _open(path: str | Path) -> av.container.InputContainer:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video file {path} does not exist; check the path")
    if path.is_dir():
        raise VideoError(f"{path} is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path} is empty (0 bytes): the file was not written to the end; copy or export it again")
    try:
        container = av.open(ffmpeg_path(path))
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoError(
            f"{path} could not be opened as a video ({exc}); it is not a video file, or it is "
            "truncated/damaged (an MP4 cut short loses its index). Re-export or re-download it."
        ) from exc
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path} has no video stream (audio only or not a video file)")
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg reads a photo as a one-frame video
        still = _frames_at_most(container, 1)
        container.close()
        if still:
            raise VideoError(f"{path} is a still image, not a video: fit it with `flame-tracker image {path}`")
        container = av.open(ffmpeg_path(path))  # afresh: the check opened the decoder (its threading is set later)
    return container


def _frames_at_most(container: av.container.InputContainer, n: int) -> bool:
    """Whether the container's video stream decodes to at most ``n`` frames (reads ``n + 1`` at most)."""
    count = 0
    try:
        for _ in container.decode(video=0):
            count += 1
            if count > n:
                return False
    except av.FFmpegError:
        pass
    return True


#: Frame rates above this are not taken from a container (see :func:`_rate`).
MAX_FPS = 480.0


def _rate(stream: av.video.stream.VideoStream) -> float:
    """The container's frame rate; 0 when it has none, or only its time base's tick (a Matroska
    file of a variable-frame-rate video says 1000 frames/s: its millisecond clock)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    tick = float(1 / stream.time_base) if stream.time_base else 0.0
    if not rate or float(rate) > MAX_FPS or (tick and abs(float(rate) - tick) < 1e-6 * tick):
        return 0.0
    return float(rate)


def _rate_from_packets(path: str | Path, n: int = 128) -> float:
    """Frames per second from the median step between the first ``n`` packets' timestamps
    (0 when they do not tell): for a container without a frame rate of its own."""
    try:
        container = av.open(ffmpeg_path(path))
    except (av.FFmpegError, UnicodeDecodeError):
        return 0.0
    try:
        stream = container.streams.video[0]
        pts = []
        for packet in container.demux(stream):
            if packet.pts is not None and packet.size:
                pts.append(int(packet.pts))
            if len(pts) >= n:
                break
        steps = np.diff(np.unique(np.asarray(pts, np.int64)))
        if not len(steps) or not stream.time_base:
            return 0.0
        return float(1.0 / (float(np.median(steps)) * float(stream.time_base)))
    except (av.FFmpegError, IndexError):
        return 0.0
    finally:
        container.close()


def probe(path: str | Path) -> VideoInfo:
    """Read the stream's metadata without decoding the whole video (one frame is decoded to learn
    the rotation, which lives in per-frame side data)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = _rate(stream)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        n_frames = int(stream.frames or 0)
        if n_frames <= 0 or fps <= 0:  # (Matroska counts no frames; some containers state no rate)
            table = _packet_table(Path(path))
            if table is not None:
                n_frames = n_frames if n_frames > 0 else len(table[0])
                span = float((table[0][-1] - table[0][0]) * table[3])
                if fps <= 0 and len(table[0]) > 1 and span > 0:
                    fps = (len(table[0]) - 1) / span
            if fps <= 0:
                fps = _rate_from_packets(path)
        if n_frames <= 0 and duration > 0 and fps > 0:
            n_frames = int(round(duration * fps))
        rotation = 0
        width, height = stream.codec_context.width, stream.codec_context.height
        try:
            first = next(container.decode(stream))
            rotation = _rotation_of(first)
            width, height = first.width, first.height
        except (StopIteration, av.FFmpegError):
            pass
        if rotation % 180:
            width, height = height, width
        return VideoInfo(Path(path), width, height, fps, n_frames, duration, rotation,
                         stream.codec_context.name)
    finally:
        container.close()


def _rotation_of(frame: av.VideoFrame) -> int:
    try:
        rot = frame.rotation
    except (AttributeError, av.FFmpegError):
        return 0
    return int(round((rot or 0) / 90.0)) * 90 % 360


@dataclass
class BrokenStream:
    """Where decoding stopped early: the last good source frame and why."""

    after_index: int
    after_time_s: float
    reason: str

    def __str__(self) -> str:
        return (f"video stream broke after frame {self.after_index} "
                f"(t={self.after_time_s:.2f}s): {self.reason}")


#: A reader starts at the keyframe before the first frame it yields, instead of decoding every frame
#: from the start, when that saves at least this many decoded frames (a 1080p frame costs ~2-4 ms).
SEEK_MIN_FRAMES = 48
#: Containers (FFmpeg's demuxer names) a reader jumps to keyframes in.
SEEKABLE_FORMATS = frozenset({"mov", "mp4", "matroska", "webm"})


class _Damaged(FlameTrackerError):
    """The decoder rejected a packet of a video with a packet table, and reached keyframe ``resume``
    after it: the reader goes on from there with a fresh decoder (never raised to callers)."""

    def __init__(self, resume: int) -> None:
        super().__init__(f"damaged before keyframe {resume}")
        self.resume = resume


class _SeekMissed(FlameTrackerError):
    """The decoder did not start where the packets said the keyframe is (the reader catches it and
    decodes from the start; never raised to callers)."""


@dataclass(frozen=True)
class _SeekPlan:
    """The stretches of a video a reader decodes: ``segments`` of ``(keyframe, the frame selection's
    state there, the last frame to decode or None: on to the end)``, as frame numbers into ``pts``
    (every frame's timestamp in presentation order)."""

    pts: np.ndarray
    segments: list[tuple[int, tuple[int, float, int, float], int | None]]


_TABLES: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray, int, Fraction] | None] = {}
_TABLES_LOCK = threading.Lock()


def _packet_table(path: Path) -> tuple[np.ndarray, np.ndarray, int, Fraction] | None:
    """:func:`_read_packet_table`, once per file and version of it in this process (demuxing reads
    the whole file: a detection thread, the flow and the photometric pass each open a reader)."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    with _TABLES_LOCK:  # (the detection threads open their readers at once: one of them reads)
        if key not in _TABLES:
            if len(_TABLES) >= 16:
                _TABLES.clear()
            _TABLES[key] = _read_packet_table(path)
        return _TABLES[key]


def _read_packet_table(path: Path) -> tuple[np.ndarray, np.ndarray, int, Fraction] | None:
    """Every frame's timestamp in presentation order and which frames are keyframes, from the
    container's packets (no decoding), with the stream's start and time base; None when the packets
    cannot stand for the frames: a container not in :data:`SEEKABLE_FORMATS`, a packet without a
    timestamp, two with the same one, a count that differs from the container's, or a damaged file
    (the reader then decodes from the start, as before)."""
    try:
        container = av.open(ffmpeg_path(path))
    except (av.FFmpegError, UnicodeDecodeError):
        return None
    try:
        # only containers whose index marks real keyframes (MP4/MOV, Matroska/WebM): elsewhere (e.g.
        # MPEG-TS) a flagged packet may be a recovery point that does not decode cleanly on its own
        if not set(container.format.name.split(",")) & SEEKABLE_FORMATS:
            return None
        stream = container.streams.video[0]
        pts, key = [], []
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's empty packet at the end
                continue
            # (a packet the container marks to discard, e.g. outside an MP4 edit list, is not decoded
            # into a frame: the packets would not number the frames as decoding does)
            if packet.pts is None or packet.is_discard:
                return None
            pts.append(int(packet.pts))
            key.append(bool(packet.is_keyframe))
        # A stream that does not open on a keyframe shown first (a clip cut mid-GOP without
        # re-encoding, an open GOP's leading pictures) loses frames at its start when decoded: the
        # packets would number the frames differently from decoding from the start.
        if not pts or not key[0] or min(pts) != pts[0]:
            return None
        order = np.argsort(np.asarray(pts, np.int64), kind="stable")
        p, k = np.asarray(pts, np.int64)[order], np.asarray(key, bool)[order]
        if (np.diff(p) <= 0).any() or (stream.frames and int(stream.frames) != len(p)):
            return None
        return p, k, int(stream.start_time or 0), stream.time_base or Fraction(1, 1)
    except (av.FFmpegError, IndexError):
        return None
    finally:
        container.close()


def _table_times(pts: np.ndarray, start_pts: int, tb: Fraction) -> np.ndarray:
    """Seconds of the packet table's timestamps, each equal to a decoded frame's
    ``float((pts - start) * time_base)``."""
    ticks = (pts - start_pts) * tb.numerator
    if np.abs(ticks).max() < 2**53:  # exact integers: one correctly rounded division, as float(Fraction)
        return ticks.astype(np.float64) / tb.denominator
    return np.array([float((int(p) - start_pts) * tb) for p in pts])


def missing_stretches(path: str | Path, start_s: float = 0.0, end_s: float | None = None
                      ) -> list[tuple[int, float, float]]:
    """Where a steady-rate video's timestamps jump by more than 3 frames between two packets (the
    container lost frames: damage) within ``[start_s, end_s)``: ``(frame before it, its time, seconds
    without frames)`` each. Empty for a variable-rate video (its steps vary by themselves) or one
    whose packets are not listed (:func:`_packet_table`)."""
    table = _packet_table(Path(path))
    if table is None or len(table[0]) < 8:
        return []
    pts, _, start, tb = table
    steps = np.diff(pts)
    step = float(np.median(steps))
    if step <= 0 or np.mean(np.abs(steps - step) <= max(1.0, 0.02 * step)) < 0.9:
        return []
    times = _table_times(pts, start, tb)
    out = []
    for i in np.flatnonzero(steps > 3 * step):
        t = float(times[i])
        if t >= start_s - 1e-6 and (end_s is None or t < end_s):
            out.append((int(i), t, float(times[i + 1] - times[i])))
    return out


class _Selection:
    """Which source frames a :class:`VideoReader` yields (its time range, ``every``, ``fps``,
    ``max_frames``, ``stop_at``, ``skip`` and ``keep``), decided frame by frame from the frame's
    timestamp: the same rules for a decoded frame and for one known from its packet only."""

    def __init__(self, reader: VideoReader) -> None:
        self.r = reader
        self.k = 0  # frames in the time range so far
        self.next_t = -math.inf  # the next time the fps subsampling takes a frame
        self.last_t = -math.inf  # the time of the last frame it took
        self.kept = 0  # selected frames so far
        self.stop = False  # no frame after the last one stepped
        self.n_selected: int | None = None  # the selection's length, where it is known to end

    def state(self) -> tuple[int, float, int, float]:
        return self.k, self.next_t, self.kept, self.last_t

    def restore(self, state: tuple[int, float, int, float]) -> None:
        self.k, self.next_t, self.kept, self.last_t = state

    def step(self, index: int, t: float) -> int:
        """The position (among the selected frames) of source frame ``index`` at ``t`` if the reader
        yields it, else -1; sets :attr:`stop` when the iteration ends with this frame."""
        r = self.r
        if t < r.start_s - 1e-6:
            return -1
        if r.end_s is not None and t >= r.end_s - 1e-6:
            self.stop, self.n_selected = True, self.kept
            return -1
        self.k += 1
        if (self.k - 1) % r.every:
            return -1
        if r.fps is not None:
            # a little slack so timestamp rounding never drops a frame of e.g. 30->15 fps
            if t < self.next_t - 0.1 / r.fps:
                return -1
            step = 1.0 / r.fps
            # never two frames under half a step apart (a late frame of a variable-rate video kept for
            # one slot, the next on time for the following slot: 20 ms apart at 10 fps); a steady source
            # never meets this, so it keeps exactly fps frames a second
            if t < self.last_t + 0.5 * step - 1e-9:
                return -1
            self.next_t = t + step if self.next_t == -math.inf or self.next_t + step <= t else self.next_t + step
            self.last_t = t
        self.kept += 1
        if r.stop_at is not None and self.kept > r.stop_at:
            self.stop = True
            return -1
        last = r.max_frames is not None and self.kept >= r.max_frames
        if last:
            self.stop, self.n_selected = True, self.kept
        if index in r.skip or (r.keep is not None and not r.keep(self.kept - 1)):
            return -1
        return self.kept - 1


class AllBut:
    """A :class:`VideoReader` ``skip`` that holds every source frame but ``wanted`` (frame indices):
    a reader of those frames only, which jumps over the long stretches between them."""

    def __init__(self, wanted: Iterable[int]) -> None:
        self.wanted = frozenset(int(i) for i in wanted)

    def __contains__(self, index: object) -> bool:
        return index not in self.wanted


class VideoReader:
    """Iterate over the frames of a video, lazily.

    Args:
        path: video file.
        start_s, end_s: time range in seconds (``end_s`` exclusive; ``None`` = to the end).
        every: keep every ``every``-th frame of the range.
        fps: if given, subsample to at most this rate using the container's timestamps
            (works for variable frame rate); combined with ``every`` it applies first.
        max_frames: stop after this many kept frames.
        max_side: downscale frames (in the decoder, cheaply) so the longer side is at most this;
            :attr:`scale` gives the factor back to original pixels.
        skip: source frame indices to pass over without converting or yielding them (frames a
            resumed run already has); they still count for ``every``/``fps``/``max_frames``.
        keep: ``position -> bool``: selected frames to yield (the others are passed over as with
            ``skip``); ``None``: all.
        stop_at: stop before this position (a reader for part of the selection).
        info: the file's :func:`probe` when already known (a reopened reader).

    After iterating, :attr:`broken` is ``None`` when the stream ended normally, or a
    :class:`BrokenStream` saying where it broke; :attr:`n_decoded` counts decoded source frames.
    """

    def __init__(self, path: str | Path, *, start_s: float = 0.0, end_s: float | None = None,
                 every: int = 1, fps: float | None = None, max_frames: int | None = None,
                 max_side: int | None = None, skip: Container[int] = (),
                 keep: Callable[[int], bool] | None = None, stop_at: int | None = None,
                 info: VideoInfo | None = None) -> None:
        if every < 1:
            raise InputError(f"every must be >= 1, got {every}")
        if fps is not None and fps <= 0:
            raise InputError(f"fps must be > 0, got {fps}")
        if end_s is not None and end_s <= start_s:
            raise InputError(f"empty time range: start {start_s}s >= end {end_s}s")
        self.info = info if info is not None else probe(path)  # (probing decodes a frame)
        if self.info.duration_s > 0 and start_s >= self.info.duration_s:
            raise InputError(f"start {start_s:g}s is past the end of {path} ({self.info.duration_s:.2f}s long)")
        self.path = Path(path)
        self.start_s, self.end_s, self.every, self.fps = start_s, end_s, every, fps
        self.max_frames = max_frames
        self.max_side = max_side
        self.skip = skip
        self.keep, self.stop_at = keep, stop_at
        longest = max(self.info.width, self.info.height)
        self.scale = 1.0 if not max_side or longest <= max_side else max_side / longest
        self.broken: BrokenStream | None = None
        self.n_decoded = 0
        # the runs of source frames the last iteration decoded, [first, last] each (several, each
        # from a keyframe, when it jumped over frames it did not need: see _seek_plan)
        self.decoded: list[list[int]] = []
        # frames the selection holds, once an iteration has seen its end (None: not seen, or broken)
        self.n_selected: int | None = None
        # damage the last iteration decoded past: where (the rejected packet's frame where the packets
        # are listed, else the last frame decoded before it) -> what it was
        self.damaged: dict[int, str] = {}

    def expected_frames(self) -> int:
        """The number of frames this reader will select, as far as the container tells (0: unknown)."""
        info = self.info
        est = info.n_frames
        if info.fps and info.duration_s and (self.start_s or self.end_s is not None):  # the time range only
            end = info.duration_s if self.end_s is None else min(self.end_s, info.duration_s)
            est = min(est, math.ceil(max(end - self.start_s, 0.0) * info.fps))
        if self.fps and info.fps:
            est = int(est * min(1.0, self.fps / info.fps))
        est = -(-est // self.every)
        if self.max_frames:
            est = min(est, self.max_frames)
        return est

    def reopen(self, **kw) -> "VideoReader":
        """A fresh reader over the same frame selection (time range, ``every``, ``fps``,
        ``max_frames``) at full resolution; ``kw`` (e.g. ``skip``, ``max_side``) are passed on."""
        return VideoReader(self.path, start_s=self.start_s, end_s=self.end_s, every=self.every, fps=self.fps,
                           max_frames=self.max_frames, info=self.info, **kw)

    def __iter__(self) -> Iterator[Frame]:
        plan = self._seek_plan() if self.start_s > 0 or self.keep is not None or self.skip else None
        done, done_t = -1, 0.0  # the last frame yielded
        fresh = True  # (after damage, the counts and notes go on)
        while True:
            try:
                if plan is not None:
                    with closing(self._decode(plan, after=done, fresh=fresh)) as frames:  # (closed at once
                        try:  # when the caller stops early)
                            for frame in frames:
                                done, done_t = frame.index, frame.time_s
                                yield frame
                            return
                        except _SeekMissed:  # the decoder did not land where the packets said: decode from
                            if not fresh:  # the start (yielding only what comes after the frames already
                                # yielded), except after damage, which that would meet again
                                self.broken = BrokenStream(done, done_t, "could not go on after a damaged packet")
                                return
                with closing(self._decode(None, after=done, fresh=fresh)) as frames:
                    for frame in frames:
                        done, done_t = frame.index, frame.time_s
                        yield frame
                return
            except _Damaged as damage:
                # A packet the decoder rejected may leave it in a state a later keyframe does not
                # reset (e.g. garbage read as stream parameters): the frames from the next keyframe on
                # would differ from those of a reader that jumped there (a later detection thread). So
                # the reader decodes on to that keyframe, then goes on from it with a fresh decoder.
                self.decoded = [r for r in self.decoded if r[1] >= r[0]]  # (a stretch that gave nothing)
                plan, fresh = self._seek_plan(resume_at=damage.resume), False
                if plan is None:  # nothing wanted from there on
                    return

    def _decode(self, plan: _SeekPlan | None, after: int = -1, fresh: bool = True) -> Generator[Frame, None, None]:
        """Decode and select (frames up to ``after`` are passed over); with ``plan``, only its
        segments, each from its keyframe on (the frames between them are known, from the packets,
        to hold nothing this reader yields). Raises :class:`_SeekMissed` when the decoder does not
        start a segment at its keyframe, :class:`_Damaged` at the first keyframe after a packet the
        decoder rejected, in a video with a packet table (elsewhere decoding goes on). ``fresh``: a
        new iteration (counts and notes reset)."""
        container = _open(self.path)
        if fresh:
            self.broken, self.n_decoded, self.n_selected = None, 0, None
            self.decoded = []
            self.damaged = {}
        self._resume_at: int | None = None  # after damage: the keyframe to go on from afresh
        self._floor = 0  # the frame the current stretch of decoding started at
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threading: decode runs beside the fitting
        tb = stream.time_base or Fraction(1, 1)
        start_pts = stream.start_time or 0
        sel = _Selection(self)
        rot_k = 0
        last_index, last_time = -1, 0.0
        size: tuple[int, int] | None = None
        # source frame numbers from the timestamps wherever the packets list them (a damaged stream
        # that loses frames still numbers the others right); else frames are counted
        table = _packet_table(self.path) if plan is None else None
        listed = plan.pts if plan is not None else None if table is None else table[0]
        index_of = None if listed is None else {int(p): i for i, p in enumerate(listed)}
        segments = [(0, sel.state(), None)] if plan is None else plan.segments
        # AVI holds no presentation times (its frames' pts are in decode order: B-frames come out
        # shuffled in time) and its frame rate is constant by design
        nominal = "avi" in container.format.name.split(",") and self.info.fps > 0
        try:
            for first, state, end in segments:
                if plan is not None:
                    sel.restore(state)
                    last_index = first - 1
                    try:
                        container.seek(int(plan.pts[first]), stream=stream, backward=True, any_frame=False)
                    except av.FFmpegError as exc:
                        raise _SeekMissed from exc
                run = [first, first - 1]
                self.decoded.append(run)
                self._floor = first  # (damage at a segment's first packet: resume after its keyframe)
                for frame in self._frames(container, stream, lambda: last_index, index_of):
                    if index_of is not None:
                        # the source frame's number from its timestamp (decoding starts mid-video)
                        index = index_of.get(frame.pts, -1) if frame.pts is not None else -1
                        if plan is not None and last_index < first and (index < 0 or index > first):
                            if fresh:
                                raise _SeekMissed  # not at the segment's keyframe
                            # going on after damage from a keyframe that does not decode: more damage
                            self.damaged.setdefault(first, f"keyframe {first} did not decode")
                            nxt = self._keyframe_after(first)
                            if nxt is None:
                                self.n_selected = None
                                return
                            raise _Damaged(nxt)
                        if index < 0:  # a frame the packets did not list: counted as the next one
                            index = last_index + 1
                        elif index <= last_index:  # before the keyframe (an open GOP's leading frames)
                            if last_index >= first:  # or out of order (damage): a tracker needs increasing times
                                self.damaged.setdefault(last_index, f"frame {index} decoded out of order")
                            continue
                        if self._resume_at is not None and index >= self._resume_at:
                            raise _Damaged(self._resume_at)  # the keyframe after damage: afresh from it
                        assert listed is not None  # (index_of is built from it)
                        for lost in range(max(last_index, first - 1) + 1, index):
                            # frames the decoder lost (damage): counted by the selection as the packets
                            # list them, so positions are those of a reader that jumped past them
                            sel.step(lost, float((int(listed[lost]) - start_pts) * tb))
                            if sel.stop:
                                self.n_selected = sel.n_selected
                                return
                        self.n_decoded = index + 1
                    else:
                        index = self.n_decoded
                    if frame.pts is not None and not nominal:
                        t = float((frame.pts - start_pts) * tb)
                    else:  # no timestamps (AVI's are decode order): the nominal rate
                        t = index / self.info.fps if self.info.fps else float(index)
                    if last_index >= 0 and t <= last_time:
                        # a frame shown before the one decoded last (damage), or at its time (a muxer
                        # that rounded times onto a coarser clock): it cannot be placed in time, and a
                        # tracker needs increasing times
                        self.damaged.setdefault(last_index, f"a frame out of order (t={t:.2f}s)" if t < last_time
                                                else f"two frames at one time (t={t:.2f}s), the second left out")
                        if index_of is None:  # (counted: the frames after it keep their source numbers)
                            self.n_decoded += 1
                        continue
                    if index_of is None:
                        self.n_decoded += 1
                    last_index, last_time = index, t
                    run[1] = index
                    pos = sel.step(index, t)
                    if pos >= 0 and index > after:
                        if size is None:
                            rot_k = _rotation_of(frame) // 90
                            size = (max(1, round(frame.width * self.scale)),
                                    max(1, round(frame.height * self.scale)))
                        img: np.ndarray
                        if self.scale != 1.0:
                            img = frame.to_ndarray(width=size[0], height=size[1], format="rgb24")
                        else:
                            img = frame.to_ndarray(format="rgb24")
                        if rot_k:
                            img = np.ascontiguousarray(np.rot90(img, rot_k))
                        yield Frame(index, t, img, pos)
                    if sel.stop:
                        self.n_selected = sel.n_selected
                        return
                    if end is not None and index >= end:  # the segment's last wanted frame
                        break
                else:  # the stream ended
                    if end is not None and run[1] < first:  # a segment before the last gave nothing
                        raise _SeekMissed
                    self._check_complete(last_index, last_time)
                    self.n_selected = None if self.broken else sel.kept
                    return
        except av.FFmpegError as exc:
            self.broken = BrokenStream(last_index, last_time, f"{type(exc).__name__}: {exc}")
        finally:
            container.close()

    def _keyframe_after(self, index: int) -> int | None:
        """The first keyframe after frame ``index`` (the packet table's; None: none)."""
        table = _packet_table(self.path)
        if table is None:
            return None
        later = np.flatnonzero(table[1][index + 1:])
        return index + 1 + int(later[0]) if len(later) else None

    def _frames(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                where: Callable[[], int], index_of: dict[int, int] | None) -> Iterator[av.VideoFrame]:
        """The stream's frames, decoded packet by packet. A packet the decoder rejects (damaged data;
        it used to end the reader: one bad packet lost the rest of the video) is noted in
        :attr:`damaged` and passed over: at its own frame where the packets are listed (``index_of``,
        :func:`_packet_table`), which then also note the first keyframe after it (``_resume_at``), to go
        on from there with a fresh decoder (:meth:`__iter__`); elsewhere at ``where()``, the last frame
        decoded. A demuxing error still ends the stream (raised)."""
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                # where: the rejected packet's own frame where the packets are listed (the last frame
                # output lags it: B-frames, frame threading), else the last frame decoded
                at = index_of.get(int(packet.pts), -1) if index_of is not None and packet.pts is not None else -1
                at = at if at >= 0 else where()
                self.damaged.setdefault(at, f"{type(exc).__name__}: {exc}")
                if index_of is not None and self._resume_at is None:
                    # (strictly after the packet, the last frame output and the keyframe this decoder
                    # started at; none: decoding goes on to the end as it is)
                    self._resume_at = self._keyframe_after(max(at, where(), self._floor))
                continue
            yield from frames

    def _seek_plan(self, resume_at: int | None = None) -> _SeekPlan | None:
        """The stretches of the video to decode when long runs of frames hold nothing this reader
        yields (the part before a later detection thread's blocks, a resumed run's finished frames,
        ``start_s``, the frames between the flow's gaps): each segment starts at the keyframe before
        its first wanted frame, found from the packets alone (no decoding: ~5 µs a frame), where
        that skips at least :data:`SEEK_MIN_FRAMES` decoded frames. None: decode everything from
        the start (nothing to skip, or a video that cannot be indexed). ``resume_at``: the frames
        from that keyframe on only, always jumped to (None: none of them is wanted)."""
        table = _packet_table(self.path)
        if table is None:
            return None
        pts, key, start_pts, tb = table
        sel = _Selection(self)
        segments: list[tuple[int, tuple[int, float, int, float], int | None]] = []
        kf, kf_state = 0, sel.state()  # the last keyframe so far, and the selection before it
        cur_end = -1  # the last wanted frame so far
        times = _table_times(pts, start_pts, tb)
        resume = resume_at or 0
        for i, t in enumerate(times.tolist()):
            if key[i]:
                kf, kf_state = i, sel.state()
            if sel.step(i, t) >= 0 and i >= resume:
                if not segments or kf - cur_end >= SEEK_MIN_FRAMES:
                    if segments:  # the previous segment ends at its last wanted frame
                        segments[-1] = (*segments[-1][:2], cur_end)
                    segments.append((kf, kf_state, None))
                cur_end = i
            if sel.stop:
                break
        if resume_at is not None:
            return _SeekPlan(pts, segments) if segments else None
        if not segments or (len(segments) == 1 and segments[0][0] < SEEK_MIN_FRAMES):
            return None
        if segments[0][0] < SEEK_MIN_FRAMES:  # the first from the start: decoded as it is
            segments[0] = (0, _Selection(self).state(), segments[0][2])
        return _SeekPlan(pts, segments)

    def _check_complete(self, last_index: int, last_time: float) -> None:
        """A stream that ends well before the duration the container announced was cut short."""
        info = self.info
        if info.duration_s <= 0 or info.fps <= 0:
            return
        missing_s = info.duration_s - (last_time + 1.0 / info.fps)
        if missing_s > max(2.0 / info.fps, 0.05 * info.duration_s):
            self.broken = BrokenStream(
                last_index, last_time,
                f"stream ended {missing_s:.2f}s before the container's duration "
                f"({info.duration_s:.2f}s): the file is truncated or damaged")


_T = TypeVar("_T")
_END = object()


def prefetch(items: Iterable[_T], depth: int = 4) -> Iterator[_T]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    Decoding (FFmpeg) and detection (MediaPipe) both run in C++ with the GIL released, so reading the
    next frame while the current one is detected overlaps the two; the bounded queue keeps memory
    flat. An exception raised by ``items`` is re-raised here; leaving the loop early stops the thread.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a generator stopped early releases its file now, in this thread
                close()

    thread = threading.Thread(target=work, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()  # the producer's generator has finished: its state (e.g. ``broken``) is final
