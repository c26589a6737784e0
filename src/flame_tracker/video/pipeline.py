"""``track_video``: decode → landmarks → identity → per-frame fits → smoothing → output files.

Every stage checkpoints to the output folder (:mod:`.store`), so a run that is killed resumes where
it stopped, and a second run on a finished folder does nothing unless ``force``. Frames stream
through: memory does not grow with the video's length beyond a few numbers per frame.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from flame_tracker.camera import Crop, intrinsics_pixels, pose6_to_cam
from flame_tracker.detection.landmarker import BLENDSHAPE_NAMES
from flame_tracker.detection.search import MIN_FACE_PX, face_centre, face_size
from flame_tracker.errors import InputError
from flame_tracker.io.results import StackedNpzWriter, load_npz, save_json, save_npz
from flame_tracker.progress import progress_bar
from flame_tracker.threads import available_cpus, cpu_threads
from flame_tracker.tracker import Result
from flame_tracker.video import blocks as detect_blocks
from flame_tracker.video.decode import AllBut, VideoReader, missing_stretches, prefetch, probe
from flame_tracker.video.flow import FlowOptions
from flame_tracker.video.store import CheckpointStage, FrameArrays, RunFolder
from flame_tracker.video.track import (
    Identity,
    NoFaceError,
    SequenceFit,
    TrackOptions,
    project_fit,
    track_landmarks,
)

N_BLENDSHAPES = 52
#: Frames before a block that MediaPipe's restarted tracking sees first (not stored): its first
#: frames after a restart come out of a fresh state, which jumped the landmarks at every block
#: (talking_wojtek: 0.94 % of the eye distance against 0.19 % between other frames; 0.38 % with 5)
DETECT_WARMUP = 5


@dataclass(frozen=True)
class VideoOptions:
    """Which frames to track (part of the manifest) and which optional outputs to write."""

    start_s: float = 0.0
    end_s: float | None = None
    every: int = 1
    fps: float | None = None
    max_frames: int | None = None
    detect_max_side: int = 1280  # the whole-frame detection pass sees frames downscaled to this
    face: str = "largest"  # which face to follow (detection.search.FaceChoice)
    roi: bool = True  # follow small faces / one of several with a crop around the face, search tiles
    # threads detecting blocks of frames at once (None: the cores this process may use, at most
    # DETECT_THREADS); the landmarks do not depend on it (not part of the run's settings)
    detect_threads: int | None = None
    overlay: bool = False
    side_by_side: bool = False
    meshes: Literal["ply", "obj"] | None = None  # export the mesh of every tracked frame
    # canonical texture (texture.png) fitted on the identity keyframes, then every tracked frame
    # refined photometrically against it (per-frame SH light saved as ``light``)
    photometric: bool = False
    photometric_chunk: int = 8  # frames per batched photometric fit / checkpoint

    def frame_settings(self) -> dict[str, Any]:
        """The settings that change which frames are tracked (the rest only adds outputs)."""
        out = {k: getattr(self, k) for k in ("start_s", "end_s", "every", "fps", "max_frames", "detect_max_side")}
        # newer settings only when not their default: folders of earlier versions still match
        out.update({k: getattr(self, k) for k, default in (("face", "largest"), ("roi", True))
                    if getattr(self, k) != default})
        return out


@dataclass
class VideoSummary:
    """What a run did: counts, accuracy, smoothness and where the time went."""

    out_dir: Path
    n_frames: int = 0
    n_tracked: int = 0  # frames with a face
    n_flow: int = 0  # frames without landmarks whose head was followed by optical flow
    n_bridged: int = 0  # frames without a face filled in by the smoother
    n_dropped: int = 0  # frames without any result
    mean_reproj_px: float = float("nan")
    jitter_raw: dict[str, float] = field(default_factory=dict)
    jitter: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    frames_done: dict[str, int] = field(default_factory=dict)  # work done by *this* run per stage
    broken: str | None = None
    damaged: str | None = None  # damage decoding went on past (packets the decoder rejected)
    skipped: bool = False  # the folder was already complete
    faces_seen: int = 0  # most faces seen at once in a frame (several people: the chosen one is followed)
    face: str = "largest"  # which face was chosen to follow (VideoOptions.face, --face)
    cuts: list[int] = field(default_factory=list)  # frames that start a new shot (fits start afresh)
    # frames whose landmarks, found again for a moment inside a gap, the optical flow rejected
    rejected: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        return d

    def text(self) -> str:
        """Human-readable end-of-run summary."""
        if self.skipped:
            return f"{self.out_dir}: already complete, nothing to do (use --force to redo; force=True in Python)"
        lines = [f"frames: {self.n_frames} | tracked {self.n_tracked} | optical flow {self.n_flow}"
                 f" | bridged {self.n_bridged} | dropped {self.n_dropped}",
                 f"mean reprojection error: {self.mean_reproj_px:.2f} px (68 landmarks)"]
        if self.jitter and np.isfinite(self.jitter.get("pose_acc_deg", np.nan)):  # needs 3+ tracked frames
            lines.append("jitter (RMS acceleration) raw -> smoothed: pose "
                         f"{self.jitter_raw.get('pose_acc_deg', np.nan):.3f} -> "
                         f"{self.jitter.get('pose_acc_deg', np.nan):.3f} deg/frame^2, landmarks "
                         f"{self.jitter_raw.get('lmk_acc_px', np.nan):.2f} -> "
                         f"{self.jitter.get('lmk_acc_px', np.nan):.2f} px/frame^2")
        lines.append("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        if self.faces_seen > 1:
            lines.append(f"{self.faces_seen} faces seen at once: one person was followed, "
                         + ("the largest (choose another with --face)" if self.face == "largest" else
                            f"the one --face {self.face} picked among the faces in the picture when it first "
                            "found one (a person who enters later is not switched to: --start where both are "
                            "in view, or --face \"near X,Y\")"))

        def shown(frames: list[int]) -> str:  # the first 8 frame numbers
            return ", ".join(str(c) for c in frames[:8]) + (", ..." if len(frames) > 8 else "")

        if self.cuts:
            lines.append(f"{len(self.cuts)} shot cut(s), at frame(s) {shown(self.cuts)}: the fits start afresh "
                         "there, nothing is smoothed across (one identity for the whole video)")
        if self.rejected:
            lines.append(f"{len(self.rejected)} frame(s) with landmarks inside a gap disagreed with the head "
                         f"followed by optical flow and took its pose instead: {shown(self.rejected)}")
        if self.damaged:
            lines.append(f"WARNING: {self.damaged}; decoding went on after it")
        if self.broken:
            lines.append(f"WARNING: {self.broken}; the frames before it were tracked")
        return "\n".join(lines)


def _changed(opts, default) -> dict[str, Any]:
    """The fields of the dataclass ``opts`` that differ from ``default``'s."""
    a, b = dataclasses.asdict(opts), dataclasses.asdict(default)
    return {k: v for k, v in a.items() if v != b[k]}


def _track_settings(topts: TrackOptions) -> dict[str, Any]:
    """The track options a run folder records; newer ones only when not their default, so that
    folders of earlier versions still match (and resume)."""
    out = dataclasses.asdict(topts)
    if out.get("flow") is True:
        del out["flow"]
    if out.get("landmarks") == "68":
        del out["landmarks"]
    if out.get("pose_follow_deg_s2") == TrackOptions.pose_follow_deg_s2:
        del out["pose_follow_deg_s2"]
    return out


# --------------------------------------------------------------------------- stage 1: landmarks

def _detect_stage(run: RunFolder, reader: VideoReader, landmarker_path: str | Path | None,
                  progress: bool, summary: VideoSummary, vopts: VideoOptions, verbose: bool = False,
                  dense: bool = False, part: tuple[int, int] | None = None) -> None:
    """Decode and detect every selected frame not yet checkpointed (``dense``: MediaPipe's 478 mesh
    points are stored too, ~3.8 KB per frame). ``part = (i, k)``: only the ``i``-th of ``k``
    contiguous runs of blocks (another process detects the others; the stage is finished by a call
    without ``part``, which detects what is still missing).

    MediaPipe's video mode tracks from frame to frame, so its landmarks depend on where it started.
    It starts afresh at every block of :func:`.blocks.detect_block` selected frames, after seeing the
    :data:`DETECT_WARMUP` frames before the block: each block depends on the video alone, so blocks
    are detected in parallel (one landmarker and one decoder per thread, ``vopts.detect_threads``;
    MediaPipe runs without Python's lock) and a run killed anywhere resumes with the same landmarks
    (a partly detected block is detected again). A block whose first face is not the one the
    previous block ended on (another person, chosen afresh by ``vopts.face``) is detected again,
    following on from that face.
    """
    from flame_tracker.detection.search import FaceChoice

    done_marker = run.root / "work" / "landmarks_done.json"
    if done_marker.is_file():
        info = json.loads(done_marker.read_text())
        summary.broken = info.get("broken")
        summary.damaged = info.get("damaged")
        summary.faces_seen = int(info.get("faces_seen", 1))
        summary.frames_done["landmarks"] = 0
        return
    est = reader.expected_frames()
    size = _block_size(run, est)
    stage = run.stage("landmarks", chunk=size)
    end_path = run.root / "work" / "landmarks_end.json"
    end = int(json.loads(end_path.read_text())["frames"]) if end_path.is_file() else None
    complete = _complete_blocks(stage, size, end)
    choice = FaceChoice.parse(vopts.face)
    if choice.rule == "near" and reader.scale != 1.0:  # the user's pixels -> the decoded frame's
        choice = FaceChoice("near", point=(choice.point[0] * reader.scale, choice.point[1] * reader.scale))
    # the blocks still to detect (as far as the container's frame count tells), in contiguous runs
    # of about equal length, one per thread; the last run is open-ended (the count may be short)
    # (where a reader found the selection's end, that counts: the container's frame count may be off)
    blocks = range(max(1, -(-(end or est) // size)))
    if part is not None:  # this part's run of blocks (the last part open-ended)
        i, k = part
        blocks = range(round(i * len(blocks) / k), round((i + 1) * len(blocks) / k) if i + 1 < k else len(blocks))
    todo = [b for b in blocks if b not in complete]
    if part is not None and not todo:
        return
    n_threads = max(1, min(vopts.detect_threads or min(available_cpus(), detect_blocks.DETECT_THREADS), len(todo)))
    cuts = [todo[round(i * len(todo) / n_threads)] for i in range(n_threads)] if todo else [0]
    open_end = part is None or part[0] + 1 == part[1]  # (the video's last run reads on to its end)
    ranges = [(lo, cuts[i + 1] if i + 1 < len(cuts) else None if open_end else blocks.stop)
              for i, lo in enumerate(cuts)]
    bar = progress_bar(total=est or None, initial=len(complete) * size, desc="landmarks", unit="frame",
                       disable=not progress, dynamic_ncols=True)
    job = _DetectJob(run, reader, landmarker_path, choice, vopts, verbose, dense, complete, bar, size)
    t0 = time.perf_counter()
    try:
        if todo or end is None:  # (without a known end, the last range reads on to find it)
            job.run(ranges)
            if job.broken is not None:
                job.after_break(stage, end_path)
        if part is None:
            job.follow_one_person()
    finally:
        bar.close()
        summary.timings["decode_s"] = job.t_decode / max(len(ranges), 1)  # waits, per thread
        summary.timings["detect_s"] = time.perf_counter() - t0
        summary.frames_done["landmarks"] = job.n_detected
        summary.faces_seen = max(summary.faces_seen, job.faces_seen)
    summary.broken = str(job.broken) if job.broken else None
    # (the stretches from the packets: the same for any number of threads)
    summary.damaged = job.damage_text(missing_stretches(reader.path, reader.start_s, reader.end_s))
    faces = run.root / "work" / "landmarks_faces"  # what each part's followers saw
    if part is not None:  # (the call without a part finishes the stage)
        save_json(faces / f"part_{part[0]}_of_{part[1]}.json", {"faces_seen": job.faces_seen})
        return
    for f in sorted(faces.glob("part_*.json")) if faces.is_dir() else []:
        summary.faces_seen = max(summary.faces_seen, int(json.loads(f.read_text()).get("faces_seen", 0)))
    save_json(done_marker, {"broken": summary.broken, "damaged": summary.damaged, "n_decoded": job.n_decoded,
                            "faces_seen": summary.faces_seen})


def _block_size(run: RunFolder, est: int) -> int:
    """Frames per detection block of this run (:func:`.blocks.detect_block` of the estimated frame count),
    fixed when the run starts (``work/landmarks_block.json``), so that a resume cuts the video as
    the first run did whatever it estimates now; a folder with landmarks but no stored size was
    detected by a version that always used :data:`.blocks.DETECT_BLOCK`."""
    path = run.root / "work" / "landmarks_block.json"
    if not path.is_file():
        size = detect_blocks.DETECT_BLOCK if run.stage("landmarks").files() else detect_blocks.detect_block(est)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"size": size}))
        try:  # created only if absent: processes detecting parts at once agree on the first one's
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return int(json.loads(path.read_text())["size"])


def _complete_blocks(stage: CheckpointStage, size: int, end: int | None = None) -> set[int]:
    """The blocks (numbers, ``size`` frames each; the last one shorter when the selection is known
    to hold ``end`` frames) whose records are all stored; records of other blocks are deleted (one
    read of the stored files, one rewrite when something goes)."""
    read = stage.files()  # (another process may be storing blocks of its part meanwhile: only these go)
    # (unreadable files are deleted: their frames are detected again); where each record lies first,
    # every key only when records must go (a long video's detections are not all loaded at each resume)
    rec = stage.load(keys=("position",), files=read)
    if not rec:
        return set()
    legacy = "position" not in rec
    if legacy:  # stored by an earlier version: a prefix of the selection, in order
        rec["position"] = np.arange(len(rec["frame"]), dtype=np.int64)
    block = np.asarray(rec["position"]) // size
    blocks, counts = np.unique(block, return_counts=True)
    last = None if not end else (end - 1) // size
    full = {int(b) for b, c in zip(blocks, counts) if c == size or (b == last and c == end - b * size)}
    # a frame stored twice (two versions of a block: should not happen, but a block is only kept
    # when its version is certain): its block is detected again
    full -= {int(b) for f, b in zip(rec["frame"], block) if int(f) in stage.duplicates}
    keep = np.isin(block, list(full))
    if legacy or stage.duplicates or not keep.all():
        # every key of the same files' records (another part's run may have changed a file meanwhile:
        # what to keep is worked out again on what is read now)
        rec = stage.load(files=[f for f in read if f.exists()])
        if legacy or "position" not in rec:
            rec["position"] = np.arange(len(rec.get("frame", ())), dtype=np.int64)
        keep = np.isin(np.asarray(rec["position"]) // size, list(full))  # (blocks with duplicates are not full)
        stage.replace({k: v[keep] for k, v in rec.items()}, old=read)
    return full


class _DetectJob:
    """The landmark stage's threads (see :func:`_detect_stage`)."""

    def __init__(self, run: RunFolder, reader: VideoReader, landmarker_path: str | Path | None, choice: Any,
                 vopts: VideoOptions, verbose: bool, dense: bool, complete: set[int], bar: Any,
                 size: int) -> None:

        self.run_folder, self.reader, self.landmarker_path = run, reader, landmarker_path
        self.choice, self.vopts, self.verbose, self.dense = choice, vopts, verbose, dense
        self.complete = set(complete)
        self.bar = bar
        self.size = size  # frames per block
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t_decode = 0.0
        self.n_detected = self.n_decoded = self.faces_seen = 0
        self.broken: Any = None
        self.damaged: dict[int, str] = {}  # the readers' damage passed over (VideoReader.damaged)

    def damage_text(self, lost: list[tuple[int, float, float]]) -> str | None:
        """The damage the readers decoded past and the stretches the container lost
        (:func:`.decode.missing_stretches`), in one line (None: none)."""
        parts = []
        if self.damaged:
            first = min(self.damaged)
            parts.append(f"{len(self.damaged)} place(s) could not be decoded, the first at frame {first} "
                         f"({self.damaged[first]})")
        if lost:
            i, t, dt = lost[0]
            parts.append(f"{len(lost)} stretch(es) without frames, the first {dt:.2f} s long after frame {i} "
                         f"(t={t:.2f}s): the container lost them")
        return "the video is damaged: " + "; ".join(parts) if parts else None

    def run(self, ranges: list[tuple[int, int | None]]) -> None:
        """Detect the blocks ``[lo, hi)`` of each range (``hi`` None: to the end), one thread each."""

        errors: list[BaseException] = []

        def work(lo: int, hi: int | None) -> None:
            try:
                self._detect_range(lo, hi)
            except BaseException as exc:  # noqa: BLE001  (raised in the calling thread below)
                errors.append(exc)
                self.stop.set()

        if len(ranges) == 1:  # no thread of its own: Ctrl-C reaches the detection directly
            self._detect_range(*ranges[0])
            return
        threads = [threading.Thread(target=work, args=r, daemon=True) for r in ranges]
        try:
            for t in threads:  # (inside the try: a Ctrl-C while starting them also waits for them)
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except BaseException:  # Ctrl-C: the threads stop after their frame, their blocks are flushed
            # (waited for: one still setting up MediaPipe has the process's stderr silenced, and
            # would take the interrupted run's message with it)
            self.stop.set()
            for t in threads:
                if t.is_alive():
                    t.join()
            raise
        if errors:
            raise errors[0]

    def _follower(self) -> Any:
        """A landmarker following faces the way this stage was asked to (one per thread and pass)."""
        from flame_tracker.detection.search import FaceFollower

        return FaceFollower(self.landmarker_path, choice=self.choice, roi=self.vopts.roi,
                            max_side=self.vopts.detect_max_side, verbose=self.verbose)

    @staticmethod
    def _start_block(follower: Any, recent: deque, at: int, time_s: float, seed: tuple | None = None) -> None:
        """Restart ``follower`` for the block starting at position ``at`` (afresh, or following on from
        ``seed``, :meth:`FaceFollower.reset`'s arguments) and show it the warm-up frames before it
        (``recent``: ``(position, image, time)`` of the latest frames)."""
        warm = [r for r in recent if DETECT_WARMUP and r[0] >= at - DETECT_WARMUP]
        follower.reset(*(seed or (None, warm[0][2] if warm else time_s)))
        for _, image, warm_time in warm:
            follower(image, warm_time)

    def _detect_range(self, lo: int, hi: int | None) -> None:
        size = self.size
        complete = self.complete
        start, stop = lo * size, None if hi is None else hi * size

        def wanted(p: int) -> bool:  # frames to detect, and the warm-up frames before their blocks
            if p < start - DETECT_WARMUP or (stop is not None and p >= stop):
                return False
            if p >= start and p // size not in complete:
                return True
            nxt = p // size + 1
            return (p + DETECT_WARMUP) // size == nxt and nxt not in complete and nxt * size >= start and (
                stop is None or nxt * size < stop)

        reader = self.reader.reopen(max_side=self.reader.max_side, keep=wanted, stop_at=stop)
        stage = self.run_folder.stage("landmarks", chunk=size)  # this thread's buffer: one file per block
        recent: deque[tuple[int, np.ndarray, float]] = deque(maxlen=max(DETECT_WARMUP, 1))
        follower = self._follower()
        block = None
        t_wait = 0.0
        scorer: Any = None  # (created at the first face to rate)
        votes: list[tuple[int, float]] = []  # the block's upright scores (UPRIGHT_EVERY)
        next_vote = 0
        try:
            with closing(prefetch(reader)) as frames:  # decoded ahead in a thread of its own
                while not self.stop.is_set():
                    t1 = time.perf_counter()
                    frame = next(frames, None)
                    t_wait += time.perf_counter() - t1
                    if frame is None:
                        if stop is None and reader.n_selected is not None:  # where the selection
                            # ends (stored before the last block: its short block is then complete)
                            save_json(self.run_folder.root / "work" / "landmarks_end.json",
                                      {"frames": reader.n_selected})
                        if block is not None:
                            self._save_votes(block, votes)
                        break
                    p = frame.position
                    if p < start or p // size in complete:  # a warm-up frame for the next block
                        recent.append((p, frame.image, frame.time_s))
                        continue
                    if p // size != block:  # a block starts: afresh, warmed up
                        if block is not None:
                            self._save_votes(block, votes)
                        block, votes, next_vote = p // size, [], p
                        self._start_block(follower, recent, block * size, frame.time_s)
                    det = follower(frame.image, frame.time_s)
                    if det is not None and p >= next_vote and len(votes) < UPRIGHT_VOTES:
                        from flame_tracker.detection.orientation import UprightScorer

                        scorer = scorer or UprightScorer(self.landmarker_path, verbose=self.verbose)
                        votes.append((int(frame.index), scorer(frame.image, det.lmks68)))
                        next_vote = p + UPRIGHT_EVERY
                    recent.append((p, frame.image, frame.time_s))
                    stage.add(frame.index, self._record(frame, det))
                    with self.lock:
                        self.n_detected += 1
                        if self.bar is not None:
                            self.bar.update(1)
        finally:
            stage.flush()
            follower.close()
            if scorer is not None:
                scorer.close()
            with self.lock:
                self.t_decode += t_wait
                for after, what in reader.damaged.items():
                    self.damaged.setdefault(after, what)
                self.faces_seen = max(self.faces_seen, follower.faces_seen)
                if reader.broken is not None and (self.broken is None
                                                  or reader.broken.after_index < self.broken.after_index):
                    self.broken = reader.broken  # the first break in the video
                if stop is None or reader.broken:  # the thread that read to the end (or the break)
                    self.n_decoded = max(self.n_decoded, reader.n_decoded)

    def _save_votes(self, block: int, votes: list[tuple[int, float]]) -> None:
        """A detected block's upright scores (frame, score), for :func:`_stored_upside_down`."""
        save_json(self.run_folder.root / "work" / UPRIGHT_FOLDER / f"{block:06d}.json",
                  {"frames": [f for f, _ in votes], "upright": [v for _, v in votes]})

    def after_break(self, stage: CheckpointStage, end_path: Path) -> None:
        """A damaged stream: nothing after its first break is kept, as when one reader decodes the
        video from its start and stops there. (A thread whose blocks lie further on starts decoding at
        a keyframe past the damage, and would otherwise keep frames that one thread never reaches, so
        the landmarks would depend on the number of threads.)"""
        last = int(self.broken.after_index)
        read = stage.files()
        rec = stage.load(keys=("frame",), files=read)
        if rec and (np.asarray(rec["frame"]) > last).any():
            rec = stage.load(files=read)
            keep = np.asarray(rec["frame"]) <= last
            stage.replace({k: v[keep] for k, v in rec.items()}, old=read)
        end_path.unlink(missing_ok=True)  # (the selection's end lies beyond the break)
        self.n_decoded = last + 1

    def _record(self, frame: Any, det: Any) -> dict[str, Any]:
        """One frame's checkpoint record (original pixels; NaN / zeros without a face)."""
        scale = self.reader.scale
        h, w = frame.image.shape[:2]
        rec = {"time_s": np.float64(frame.time_s), "valid": det is not None, "position": np.int64(frame.position),
               "image_size": np.array([w, h], np.int32),
               "lmks68": np.full((68, 2), np.nan, np.float32),
               "iris": np.full((10, 2), np.nan, np.float32),
               "blendshapes": np.zeros(N_BLENDSHAPES, np.float32)}
        if self.dense:
            rec["dense"] = np.full((478, 2), np.nan, np.float32)
        if det is not None:
            rec["lmks68"] = det.lmks68 / scale
            rec["iris"] = det.iris / scale
            if self.dense and len(det.points478) == 478:
                rec["dense"] = det.points478[:, :2] / scale
            if det.blendshapes.size == N_BLENDSHAPES:
                rec["blendshapes"] = det.blendshapes
        return rec

    def follow_one_person(self) -> None:
        """Blocks start afresh, so a block may begin on another face than the one the previous block
        ended on (``--face`` chooses again, e.g. ``left`` after two people crossed). From the first such
        block on, one pass in order (one reader) detects each such block again, following on from the
        face where its warm-up starts; a block is judged against the previous block as it stands
        after this pass, so the outcome is that of detecting the blocks one after another."""
        stage = self.run_folder.stage("landmarks", chunk=self.size)
        # (a long video's in memory-mapped files: this runs at the end of every detection)
        arrays = FrameArrays(self.run_folder.root / "work" / "arrays" / "follow")
        try:
            rec = stage.load_into(arrays, keys=("position", "lmks68", "image_size", "time_s"))
            if rec:
                self._follow(stage, rec, arrays)
        finally:
            arrays.close()

    def _follow(self, stage: CheckpointStage, rec: dict[str, np.ndarray], arrays: FrameArrays) -> None:
        """:meth:`follow_one_person` on the stored records ``rec`` (sorted by frame)."""
        size, warm_n = self.size, DETECT_WARMUP
        order = np.argsort(rec["position"])
        pos = np.asarray(rec["position"])[order]
        if not len(pos) or (np.diff(pos) <= 0).any():  # (each selected frame once)
            return
        # by position; a position without a record is a frame the decoder lost (damage): no face there
        n = int(pos[-1]) + 1
        lm = arrays.full("follow_lmks68", (n, 68, 2), np.nan)  # updated as blocks are detected again
        for s in range(0, len(pos), WRITE_BLOCK):
            lm[pos[s:s + WRITE_BLOCK]] = rec["lmks68"][order[s:s + WRITE_BLOCK]]
            arrays.release()
        last = np.searchsorted(pos, np.arange(n), side="right") - 1  # the record at or before each position
        sizes, times = np.asarray(rec["image_size"])[order][last], np.asarray(rec["time_s"])[order][last]
        n_blocks = -(-n // size)
        first = next((k for k in range(1, n_blocks) if _switched(lm, k * size, size)), None)
        if first is None:
            return
        start = first * size
        reader = self.reader.reopen(max_side=self.reader.max_side, keep=lambda p: p >= start - warm_n)
        follower = self._follower()
        recent: deque[tuple[int, np.ndarray, float]] = deque(maxlen=max(warm_n, 1))
        redo = False
        try:
            with closing(prefetch(reader)) as frames:
                for frame in frames:
                    p = frame.position
                    if p >= start and p % size == 0:  # a block starts: detect it again or keep it
                        stage.flush()
                        redo = p == start or _switched(lm, p, size)
                        if redo:
                            self._start_block(follower, recent, p, frame.time_s, _seed_at(
                                lm, sizes, times, p, self.reader.scale))
                    if p >= start and redo:
                        det = follower(frame.image, frame.time_s)
                        stage.add(frame.index, self._record(frame, det))  # (its block's file is rewritten)
                        lm[p] = np.nan if det is None else det.lmks68 / self.reader.scale
                        with self.lock:
                            self.n_detected += 1
                    recent.append((p, frame.image, frame.time_s))
            stage.flush()  # the last (short) block
        finally:
            # a block cut short (Ctrl-C, an error) is not written: its file would mix the two
            # versions of the block; a resume judges it again
            stage.discard()
            follower.close()
            with self.lock:
                self.faces_seen = max(self.faces_seen, follower.faces_seen)


def _switched(lm: np.ndarray, at: int, size: int) -> bool:
    """The face at the block start ``at`` is another than where the previous block ended: the first
    face found in the block's first frames against the last one in the frames before (a few frames
    each way, as a face may be missed at the boundary); ``lm [T, 68, 2]`` by position, NaN without a
    face; ``size``: frames per block."""
    span = min(2 * max(DETECT_WARMUP, 1), size)  # (within the two blocks)
    before = [p for p in range(max(at - span, 0), at) if np.isfinite(lm[p]).all()]
    after = [p for p in range(at, min(at + span, len(lm))) if np.isfinite(lm[p]).all()]
    if not (before and after):
        return False
    a, b = lm[before[-1]], lm[after[0]]
    # more than half a face between the two faces' centres
    return bool(np.linalg.norm(face_centre(b) - face_centre(a)) > 0.5 * face_size(a))


def _seed_at(lm: np.ndarray, image_size: np.ndarray, times: np.ndarray, at: int, scale: float) -> tuple:
    """``FaceFollower.reset`` arguments to detect the block starting at ``at`` again: the face where its
    warm-up starts (or the nearest one before the block), in the decoded frame's pixels."""
    warm_start = max(at - DETECT_WARMUP, 0)
    earlier = range(warm_start - 1, max(at - 4 * max(DETECT_WARMUP, 1), 0) - 1, -1)
    for p in [*range(warm_start, at), *earlier]:
        if np.isfinite(lm[p]).all():
            return lm[p] * scale, float(times[p]), tuple(int(v) for v in image_size[p])
    return None, float(times[max(at - DETECT_WARMUP, 0)]), None


# --------------------------------------------------------------------- frames without landmarks

class _ForwardFrames:
    """The video's frames at given rows, decoded in one forward pass (:data:`video.flow.FrameSource`):
    each request starts at or after the previous one's first row; frames before it are dropped."""

    def __init__(self, reader: VideoReader, frame_index: np.ndarray, rows: np.ndarray) -> None:
        self.row_of = {int(frame_index[r]): int(r) for r in rows}
        self._it = iter(reader.reopen(skip=AllBut(self.row_of)))
        self._cache: dict[int, np.ndarray] = {}
        self._scale: float | None = None
        self._done = False

    def __call__(self, rows: np.ndarray, scale: float) -> dict[int, np.ndarray]:
        from flame_tracker.video.flow import grey

        if self._scale is None:
            self._scale = scale
        for r in [r for r in self._cache if r < rows[0]]:
            del self._cache[r]
        last = int(rows[-1])
        while not self._done and (not self._cache or max(self._cache) < last):
            fr = next(self._it, None)
            if fr is None:
                self._done = True
                break
            row = self.row_of.get(fr.index)
            if row is not None:
                self._cache[row] = grey(fr.image, self._scale)
        return {int(r): self._cache[int(r)] for r in rows if int(r) in self._cache}


def _flow_filler(model, reader: VideoReader, lm: DetectedFrames, opts=None):
    """The gap filler of :func:`track_landmarks`: the head followed by optical flow through the
    frames without landmarks (:mod:`flame_tracker.video.flow`), frames decoded again as needed."""
    from flame_tracker.video.flow import flow_through_gaps, needed_rows

    def fill(identity: Identity, raw: dict[str, np.ndarray], valid: np.ndarray, cuts: np.ndarray):
        rows = needed_rows(valid, lm.time_s, opts, cuts)
        source = _ForwardFrames(reader, lm.frame, rows)
        # (raw is the tracker's own scratch: filled in place, no copy of a long video's fits)
        return flow_through_gaps(model, identity, raw, valid, lm.time_s, source, opts, copy=False, cuts=cuts)

    return fill


# ------------------------------------------------------------------------------------ outputs

# keys of a per-frame npz that are the same for the whole video (not stacked over frames)
FIXED_KEYS = ("shape", "crop", "blendshape_names", "expr_names", "model_name", "model_fingerprint")
#: Frames per block when writing the outputs (memory stays flat over long videos).
WRITE_BLOCK = 1024
OVERLAY_BATCH = 32  # frames whose meshes the overlay computes in one pass
#: Frames per piece of ``overlay.mp4`` (``work/overlay/NNNNN.mp4``, joined at the end): the most a killed
#: run draws again (a minute or more of drawing; an hour's overlay takes an hour or more)
OVERLAY_PIECE = 1500
OVERLAY_RECORD = "overlay.json"  # under work/: how overlay.mp4 was drawn (side by side or not)
# keys tracking.npz adds about the whole video (with the ``all_*`` arrays over every decoded frame)
VIDEO_KEYS = ("keyframes", "video_fps", "video_size", "video_path")


def frame_result(fit: SequenceFit, rows: np.ndarray, lm: DetectedFrames, model_name: str,
                 expr_names: tuple[str, ...], own_lmks_px: np.ndarray | None = None,
                 model_fingerprint: str = "") -> Result:
    """The tracked frames ``rows`` as one batched :class:`~flame_tracker.tracker.Result` (without
    meshes: they are exported separately), so video frames and photos share one npz format."""
    ident = fit.identity
    rows = np.atleast_1d(np.asarray(rows))
    w, h = (int(v) for v in lm.image_size[rows[0]])  # one size for the whole video
    f32 = np.float32
    n = len(rows)
    return Result(
        model_name=model_name, image_size=(w, h), crop=ident.crop,
        shape=ident.shape[None].astype(f32), exp=fit.expr[rows].astype(f32),
        head_pose=np.zeros((n, 3), f32), jaw_pose=fit.jaw_pose[rows].astype(f32),
        neck_pose=np.zeros((n, 3), f32), eye_pose=fit.eye_pose[rows].astype(f32),
        pose6=fit.pose6[rows].astype(np.float64), fov=np.full(n, ident.fov, f32),
        lmks68_px=lm.lmks68[rows].astype(f32), iris_px=lm.iris[rows].astype(f32),
        fit_lmks68_px=(fit.lmks_fit_px[rows] if own_lmks_px is None else own_lmks_px).astype(f32),
        fit_target68_px=None if own_lmks_px is None else fit.lmks_fit_px[rows].astype(f32),
        fit_iris_px=fit.iris_fit_px[rows].astype(f32),
        vertices=np.zeros((0, 3), f32), faces=np.zeros((0, 3), np.int64),
        objective=fit.raw["err_ndc"][rows], stage1_objective=np.full(n, np.nan),
        blendshape_scores=lm.blendshapes[rows].astype(f32), blendshape_names=BLENDSHAPE_NAMES,
        expr_names=expr_names, principal_point=ident.pp, model_fingerprint=model_fingerprint)


def frame_arrays(fit: SequenceFit, rows: np.ndarray, lm: DetectedFrames, model_name: str,
                 expr_names: tuple[str, ...], extra: dict[str, np.ndarray] | None = None,
                 own_lmks_px: np.ndarray | None = None, model_fingerprint: str = "") -> dict[str, np.ndarray]:
    """The per-frame npz keys of ``rows``, stacked over frames (vectorised): the single-image keys
    (reference keys plus original-pixel extras, see :meth:`Result.arrays`) and each frame's place in
    the video. Row ``i`` of every key not in :data:`FIXED_KEYS` is frame ``rows[i]``. ``extra``:
    more per-frame arrays over the whole sequence (e.g. ``light [T, 9, 3]``), taken at ``rows``.
    ``own_lmks_px [len(rows), 68, 2]``: the model's own 68 points at ``rows`` when the fit matched
    the detector's (``fit.lmks_fit_px``), as single images write them."""
    rows = np.atleast_1d(np.asarray(rows))
    arrays = frame_result(fit, rows, lm, model_name, expr_names, own_lmks_px, model_fingerprint).arrays()
    arrays.update(frame=lm.frame[rows].astype(np.int64),
                  time_s=lm.time_s[rows].astype(np.float64),
                  valid=fit.valid[rows].copy(),
                  source=fit.source[rows],  # landmarks | flow | bridged (video.flow.SOURCES)
                  # how many surface points carried a flow frame's pose (its confidence; 0 otherwise)
                  flow_inliers=(np.zeros(len(rows), np.int32) if fit.flow_inliers is None else
                                np.where(fit.source[rows] == "flow", fit.flow_inliers[rows], 0).astype(np.int32)))
    arrays.update({k: np.asarray(v)[rows].astype(np.float32) for k, v in (extra or {}).items()})
    return arrays


def _write_outputs(run: RunFolder, fit: SequenceFit, lm: DetectedFrames,
                   reader: VideoReader, model: torch.nn.Module, vopts: VideoOptions,
                   summary: VideoSummary, progress: bool, light: np.ndarray | None = None,
                   fit_model: torch.nn.Module | None = None, arrays: FrameArrays | None = None) -> None:
    """The per-frame files, ``tracking.npz`` and the optional meshes and overlay, block by block
    (``arrays``: where the per-frame arrays live; a long video's pages are handed back per block)."""
    arrays = arrays or FrameArrays()
    rows = np.flatnonzero(fit.covered)
    t0 = time.perf_counter()
    names = tuple(getattr(model, "expr_names", None) or ())
    model_name = str(getattr(model, "name", ""))
    from flame_tracker.model.embedding import fingerprint

    model_fp = fingerprint(model)
    extra = {} if light is None else {"light": light}
    from concurrent.futures import ThreadPoolExecutor

    # Block by block (memory: one block of frames, whatever the video's length): the per-frame
    # files, and the rows of the consolidated file, which is assembled from parts on disk.
    # (a bar for long videos only: ~1.5 ms per frame, minutes for an hour)
    bar = progress_bar(total=len(rows), desc="writing", unit="frame",
                       disable=not progress or len(rows) < 2 * WRITE_BLOCK, dynamic_ncols=True)
    with bar, ThreadPoolExecutor(2) as pool, \
            StackedNpzWriter(run.root / "tracking.npz", len(rows), FIXED_KEYS) as out:
        for start in range(0, len(rows), WRITE_BLOCK):
            blk = rows[start:start + WRITE_BLOCK]
            own = None  # the model's own 68 points when the fit used the detector's (fit.lmks_fit_px)
            if fit_model is not None and fit_model is not model:
                own = project_fit(model, fit.identity, {"pose6": fit.pose6, "expr": fit.expr,
                                                        "jaw_pose": fit.jaw_pose, "eye_pose": fit.eye_pose}, blk)[0]
            stacked = frame_arrays(fit, blk, lm, model_name, names, extra, own, model_fp)

            def write_frame(i: int, r: int, stacked: dict[str, np.ndarray] = stacked) -> None:
                path = run.frame_path(int(lm.frame[r]))  # tiny files: uncompressed, two at a time
                if not path.exists():
                    save_npz(path, {k: v if k in FIXED_KEYS else v[i:i + 1] for k, v in stacked.items()},
                             compress=False)

            # file writes and zip headers release the GIL in part
            list(pool.map(write_frame, range(len(blk)), blk))
            stacked.update(reproj_px=fit.reproj_px[blk],
                           raw_cam=pose6_to_cam(torch.as_tensor(fit.raw["pose6"][blk])).numpy(),
                           raw_exp=fit.raw["expr"][blk])
            out.add(start, stacked)
            bar.update(len(blk))
            arrays.release()
        # the whole-video metadata
        out.add_whole({
            "keyframes": lm.frame[fit.identity.keyframes],
            "all_frames": lm.frame, "all_times_s": lm.time_s, "all_valid": fit.valid,
            "all_covered": fit.covered,
            "video_fps": np.float64(reader.info.fps),
            "video_size": np.array([reader.info.width, reader.info.height]),
            "video_path": np.str_(str(reader.path)),
        })
    summary.timings["write_s"] = time.perf_counter() - t0

    if vopts.meshes:
        _write_meshes(run, fit, lm, rows, model, vopts.meshes, summary)
    if vopts.overlay and not _overlay_done(run, vopts):
        _write_overlay(run, fit, lm, reader, model, vopts, summary, progress, light, arrays)


def _vertices(model: torch.nn.Module, fit: SequenceFit, rows: np.ndarray) -> torch.Tensor:
    """The fitted meshes of ``rows`` ``[n, V, 3]``, on the CPU (where the writers and the overlay work)."""
    dt = model.v_template.dtype
    with torch.no_grad():
        return model(shape=torch.as_tensor(fit.identity.shape, dtype=dt)[None],
                     expr=torch.as_tensor(fit.expr[rows], dtype=dt),
                     jaw_pose=torch.as_tensor(fit.jaw_pose[rows], dtype=dt),
                     eye_pose=torch.as_tensor(fit.eye_pose[rows], dtype=dt)).vertices.cpu()


def _write_meshes(run: RunFolder, fit: SequenceFit, lm: DetectedFrames, rows: np.ndarray,
                  model: torch.nn.Module, fmt: str, summary: VideoSummary) -> None:
    from flame_tracker.io.mesh import save_obj, save_ply

    if fmt not in ("ply", "obj"):
        raise InputError(f"mesh format must be 'ply' or 'obj', not {fmt!r}")
    save = save_ply if fmt == "ply" else save_obj
    faces = model.faces.cpu().numpy()
    t0 = time.perf_counter()
    for start in range(0, len(rows), 32):  # batched forward, bounded memory
        chunk = rows[start:start + 32]
        verts = _vertices(model, fit, chunk).numpy()
        for r, v in zip(chunk, verts):
            path = run.root / "meshes" / f"{int(lm.frame[r]):06d}.{fmt}"
            if not path.exists():
                save(path, v, faces)
    summary.timings["meshes_s"] = time.perf_counter() - t0


def _textured(image: np.ndarray, vertices: torch.Tensor, pose6: torch.Tensor, fov: float, crop: Crop,
              faces: torch.Tensor, albedo: torch.Tensor, light: np.ndarray, opacity: float = 0.85,
              region: np.ndarray | None = None) -> np.ndarray:
    """``image`` with the SH-lit textured head (canonical albedo, the frame's light) blended in,
    only inside ``region`` (``[H, W]`` bool) when given.

    Rendered in the fitting square at ≤ 512 px and warped into the frame (the square may leave it).
    """
    import cv2

    from flame_tracker.fitting.photometric import render_head

    side = float(crop.size)
    res = int(min(512, max(64, round(side))))
    dt = vertices.dtype
    with torch.no_grad(), cpu_threads(1, vertices.device):  # small per-frame work, as render_overlay
        pp = crop.pp_ndc(vertices)[None]  # zero for a crop-centred camera
        r = render_head(vertices, faces, pose6, torch.full((1,), float(fov), dtype=dt), res,
                        light=torch.as_tensor(light, dtype=dt)[None], albedo=albedo.to(dt), pp=pp)
    rgb = (r["image"][0].clamp(0, 1) * 255).cpu().numpy().astype(np.float32)
    cov = r["alpha"][0].cpu().numpy().astype(np.float32)
    sc = side / res  # render pixel index u -> frame index x: x + 0.5 = (u + 0.5) * sc + x0
    m = np.array([[sc, 0, float(crop.x0) + 0.5 * sc - 0.5], [0, sc, float(crop.y0) + 0.5 * sc - 0.5]])
    h, w = image.shape[:2]
    rgb = cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    cov = cv2.warpAffine(cov, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)[..., None]
    if region is not None:
        keep = region[..., None].astype(np.float32)
        rgb, cov = rgb * keep, cov * keep
    out = image.astype(np.float32) * (1 - opacity * cov) + opacity * rgb  # rgb is black off the head
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _write_overlay(run: RunFolder, fit: SequenceFit, lm: DetectedFrames,
                   reader: VideoReader, model: torch.nn.Module, vopts: VideoOptions,
                   summary: VideoSummary, progress: bool, light: np.ndarray | None = None,
                   arrays: FrameArrays | None = None) -> None:
    """``overlay.mp4``: the grey mesh and landmarks over every frame; with ``light`` (photometric
    run) the textured, SH-lit face (canonical texture, inside the fitted face oval) instead of the
    grey mesh."""
    from flame_tracker.camera import project_pixels, world_to_view
    from flame_tracker.rendering.mask import face_mask
    from flame_tracker.rendering.overlay import render_overlay
    from flame_tracker.video.encode import VideoWriter, join_videos, side_by_side

    t0 = time.perf_counter()
    row_of = {int(f): i for i, f in enumerate(lm.frame)}
    crop = fit.identity.camera_crop
    focal = float(intrinsics_pixels(torch.tensor(fit.identity.fov, dtype=torch.float64),
                                    crop)[0, 0])
    faces = model.faces.cpu()  # the overlay is drawn on the CPU whatever the model's device
    albedo = None
    if light is not None:
        from flame_tracker.video.photometric import load_canonical

        albedo = load_canonical(run)
    fps = reader.info.fps / reader.every if not reader.fps else min(reader.fps, reader.info.fps)
    # drawn in pieces of OVERLAY_PIECE frames, each its own file once finished: a killed run keeps
    # the pieces it finished and draws from the first one missing
    pieces = run.root / "work" / "overlay"
    start = _finished_pieces(pieces, {"piece": OVERLAY_PIECE, "side_by_side": bool(vopts.side_by_side),
                                      "textured": light is not None}) * OVERLAY_PIECE
    bar = progress_bar(total=len(lm.frame), initial=min(start, len(lm.frame)), desc="overlay", unit="frame",
                       disable=not progress, dynamic_ncols=True)
    covered = np.flatnonzero(fit.covered)
    block: dict[int, torch.Tensor] = {}  # the meshes of the next covered rows, one batched pass each
    n_done = 0
    writer, piece = None, -1
    try:
        sources = fit.source
        for frame in reader.reopen(keep=(lambda p: p >= start) if start else None):
            if frame.position // OVERLAY_PIECE != piece:
                if writer is not None:
                    writer.close()
                piece = frame.position // OVERLAY_PIECE
                writer = VideoWriter(pieces / f"{piece:05d}.mp4", fps=fps)
            r = row_of.get(frame.index)
            img = frame.image
            out = img
            if r is not None and fit.covered[r]:
                dt = model.v_template.dtype
                if r not in block:  # (a batch reads the model's bases once: ~20x less per frame)
                    rows = covered[np.searchsorted(covered, r):][:OVERLAY_BATCH]
                    block = dict(zip(rows.tolist(), _vertices(model, fit, rows)[:, None]))
                verts = block.pop(r)
                pose6 = torch.as_tensor(fit.pose6[r:r + 1], dtype=dt)
                depth = world_to_view(verts, pose6)[0, :, 2:3]
                px = project_pixels(verts, pose6, fit.identity.fov, crop)[0]
                vpx = torch.cat([px.to(depth.dtype), depth], dim=1)
                textured = albedo is not None and np.isfinite(light[r]).all()
                # the texture is estimated on the face only: show it inside the fitted face oval
                base = _textured(img, verts, pose6, fit.identity.fov, crop, faces, albedo, light[r],
                                 region=face_mask(fit.lmks_fit_px[r], *img.shape[:2], shrink=0.0)
                                 ) if textured else img
                iris = np.asarray(fit.iris_fit_px[r])  # the fitted irises, as photo overlays draw them
                out = render_overlay(base, vpx, faces, alpha=0.0 if textured else 0.6,
                                     lmks_detected=lm.lmks68[r] if fit.valid[r] else None,
                                     lmks_fitted=fit.lmks_fit_px[r], iris=iris if np.isfinite(iris).all() else None,
                                     focal=focal)
                if sources[r] != "landmarks":  # say where a frame without landmarks got its head from
                    _label(out, "optical flow" if sources[r] == "flow" else "interpolated",
                           (60, 200, 255) if sources[r] == "flow" else (255, 160, 60))
            elif r is not None:  # a frame of the run without a result: said, not just left bare
                out = img.copy()
                _label(out, "no face", (200, 200, 200))
            if vopts.side_by_side:
                out = side_by_side(img, out)
            writer.write(out, time_s=frame.time_s - (reader.start_s or 0.0))
            bar.update(1)
            n_done += 1
            if arrays is not None and n_done % WRITE_BLOCK == 0:
                arrays.release()
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    done = sorted(pieces.glob("[0-9]*.mp4"))
    if done:
        join_videos(done, run.root / "overlay.mp4")
        save_json(run.root / "work" / OVERLAY_RECORD, {"side_by_side": bool(vopts.side_by_side)})
    shutil.rmtree(pieces, ignore_errors=True)
    summary.timings["overlay_s"] = time.perf_counter() - t0


def _overlay_done(run: RunFolder, vopts: VideoOptions) -> bool:
    """``overlay.mp4`` is there, drawn as ``vopts`` ask (side by side or not; a run whose overlay an
    earlier version drew, which recorded nothing, counts as drawn so)."""
    if not (run.root / "overlay.mp4").exists():
        return False
    record = run.root / "work" / OVERLAY_RECORD
    return not record.is_file() or json.loads(record.read_text()).get("side_by_side") == bool(vopts.side_by_side)


def _finished_pieces(folder: Path, settings: dict[str, Any]) -> int:
    """How many pieces of the overlay ``folder`` holds, finished and in order from the first, drawn
    with ``settings`` (the folder is emptied when they were drawn otherwise: another side-by-side or
    texture setting, another piece length)."""
    record = folder / "settings.json"
    if folder.is_dir() and (not record.is_file() or json.loads(record.read_text()) != settings):
        shutil.rmtree(folder)
    save_json(record, settings)
    n = 0
    while (folder / f"{n:05d}.mp4").is_file():
        n += 1
    return n


def _label(image: np.ndarray, text: str, color: tuple[int, int, int]) -> None:
    """A small caption in the top-right corner of an overlay frame (in place; the legend of the
    landmark colours is in the top-left one)."""
    import cv2

    scale = max(0.5, image.shape[0] / 720)
    (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, int(4 * scale))
    org = (max(image.shape[1] - tw - int(12 * scale), 0), int(30 * scale))
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, (0, 0, 0), int(4 * scale), cv2.LINE_AA)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, color, int(2 * scale), cv2.LINE_AA)


# ---------------------------------------------------------------------------------- main entry

@dataclass
class DetectedFrames:
    """What the landmark stage stored for every selected frame (in frame order): the typed track the
    later stages (identity, per-frame fits, flow, photometric, outputs) read."""

    frame: np.ndarray  # [T] source frame index
    time_s: np.ndarray  # [T] seconds
    valid: np.ndarray  # [T] bool: a face was detected
    lmks68: np.ndarray  # [T, 68, 2] original pixels (NaN where not valid)
    iris: np.ndarray  # [T, 10, 2]
    blendshapes: np.ndarray  # [T, 52] MediaPipe's scores (zeros where not valid)
    image_size: np.ndarray | None = None  # [T, 2] (W, H) of each frame
    dense: np.ndarray | None = None  # [T, 478, 2] MediaPipe's mesh points (runs with dense landmarks only)

    def __len__(self) -> int:
        return len(self.frame)

    @classmethod
    def from_records(cls, d: dict[str, np.ndarray]) -> DetectedFrames:
        size, dense = d.get("image_size"), d.get("dense")
        return cls(np.asarray(d["frame"]), np.asarray(d["time_s"]), np.asarray(d["valid"]).astype(bool),
                   np.asarray(d["lmks68"]), np.asarray(d["iris"]), np.asarray(d["blendshapes"]),
                   None if size is None else np.asarray(size), None if dense is None else np.asarray(dense))

    @property
    def size(self) -> tuple[int, int] | None:
        """``(W, H)`` of the video's frames (one size for the whole video)."""
        if self.image_size is None or not len(self.image_size):
            return None
        w, h = (int(v) for v in self.image_size[0])
        return (w, h) if w > 0 and h > 0 else None


def _load_landmarks(run: RunFolder, arrays: FrameArrays | None = None) -> DetectedFrames | None:
    """The stored detections, in ``arrays`` (a long video's in memory-mapped files) or in memory."""
    stage = run.stage("landmarks")
    records = stage.load() if arrays is None else stage.load_into(arrays, prefix="landmarks_")
    return DetectedFrames.from_records(records) if records else None


def track_video(video: str | Path, out_dir: str | Path, *,
                model: torch.nn.Module | str | Path | None = None,
                options: TrackOptions | None = None, video_options: VideoOptions | None = None,
                flow_options: FlowOptions | None = None, photometric_options=None,
                force: bool = False, progress: bool = True,
                landmarker_path: str | Path | None = None, verbose: bool = False,
                detect_part: tuple[int, int] | None = None) -> VideoSummary:
    """Track a monocular video into ``out_dir`` (see :mod:`flame_tracker.video.store` for the
    files). Resumes an interrupted run; does nothing on a finished folder unless ``force``.
    ``detect_part = (i, k)``: only detect the landmarks of the ``i``-th of ``k`` equal runs of the
    video's detection blocks and return (so that several processes or machines detect one video,
    each its part, with the same ``out_dir``; a call without it then finds those blocks stored, as
    a resumed run does, and goes on; the landmarks are those of one process, as blocks start afresh).
    ``flow_options`` / ``photometric_options``: :class:`~flame_tracker.video.flow.FlowOptions` /
    :class:`~flame_tracker.fitting.photometric.PhotometricOptions` (defaults when None). Every
    setting is written to ``config.json`` (:class:`flame_tracker.config.Config`).

    Raises:
        FileNotFoundError: the video does not exist.
        VideoError: it is not a readable video.
        NoFaceError: no frame has a face.
        OutputMismatchError: ``out_dir`` holds a different run (pass ``force``).
        RunBusyError: another process is tracking into ``out_dir`` now (a whole run holds its folder
            alone; ``detect_part`` runs share it).
    """
    from flame_tracker.fitting.photometric import PhotometricOptions
    from flame_tracker.model import load_model

    topts = options or TrackOptions()
    vopts = video_options or VideoOptions()
    fopts = flow_options or FlowOptions()
    popts = photometric_options or PhotometricOptions()
    t_start = time.perf_counter()
    reader = VideoReader(video, start_s=vopts.start_s, end_s=vopts.end_s, every=vopts.every,
                         fps=vopts.fps, max_frames=vopts.max_frames,
                         # the ROI path crops small faces from the full-resolution frame; the
                         # whole-frame pass downscales by itself
                         max_side=None if vopts.roi else vopts.detect_max_side)
    if model is None or isinstance(model, (str, Path)):
        model = load_model(model)
    # Fit the detector's 68 points on this model (flame_tracker.model.embedding), as single images
    # do; the outputs' fit_lmks_68 are the model's own points (the mesh is the same model's).
    from flame_tracker.model.embedding import detector_model

    fit_model = detector_model(model)
    # the expression priors left to the model, resolved: the run records the values it used
    from flame_tracker.fitting.stage2 import with_model_priors

    topts = replace(topts, stage2=with_model_priors(topts.stage2, model))
    if detect_part is not None and (force or not 0 <= detect_part[0] < detect_part[1]):
        raise InputError(f"detect_part must be (i, k) with 0 <= i < k, without force (got {detect_part}, "
                         f"force={force}): the parts share one folder, which force would empty")
    # (a part's process shares the folder with the others by design; a whole run holds it alone)
    run = _open_run(video, out_dir, model, fit_model, topts, vopts, fopts, popts, force,
                    exclusive=detect_part is None)
    try:
        summary = VideoSummary(out_dir=run.root, face=str(vopts.face))
        if _finished(run, vopts):
            summary.skipped = True
            return summary

        _detect_stage(run, reader, landmarker_path, progress, summary, vopts, verbose,
                      dense=topts.landmarks == "dense", part=detect_part)
        if detect_part is not None:
            return summary
        # a long video's per-frame arrays are files in the work folder (memory stays flat); removed at the end
        arrays = FrameArrays(run.root / "work" / "arrays")
        try:
            lm = _landmarks_with_faces(run, video, summary, vopts, arrays, reader, landmarker_path, verbose)
            fit = _fit_stage(run, lm, reader, fit_model, topts, fopts, progress, summary, arrays)
            light = None
            if vopts.photometric:
                from flame_tracker.video.photometric import photometric_track

                refined = photometric_track(run, fit, lm, reader, fit_model, topts, chunk=vopts.photometric_chunk,
                                            progress=progress, timings=summary.timings,
                                            frames_done=summary.frames_done, **_changed(popts, PhotometricOptions()))
                if refined is not None:
                    fit, light = refined
            _write_outputs(run, fit, lm, reader, model, vopts, summary, progress, light, fit_model, arrays)
        finally:  # (the work arrays are rebuilt from the checkpoints by a resume)
            arrays.close()
        _summarise(summary, fit, lm.frame)
        summary.timings["total_s"] = time.perf_counter() - t_start
        save_json(run.root / "summary.json", summary.as_dict())
        run.mark_complete()
        return summary
    finally:
        run.release()


def _open_run(video: str | Path, out_dir: str | Path, model: Any, fit_model: Any, topts: TrackOptions,
              vopts: VideoOptions, fopts: FlowOptions, popts: Any, force: bool,
              exclusive: bool = False) -> RunFolder:
    """The run folder keyed on every setting that changes the result (a different run there is an
    error unless ``force``), with ``config.json``; ``exclusive``: held by this process alone
    (:class:`~flame_tracker.video.store.RunFolder`)."""
    from flame_tracker.config import Config
    from flame_tracker.fitting.photometric import PhotometricOptions
    from flame_tracker.model.embedding import fingerprint

    settings = {"model": getattr(model, "name", type(model).__name__),
                # the file's contents: FLAME 2017-2020 all ship as generic_model.pkl
                "model_fingerprint": fingerprint(model),
                "model_size": [model.n_shape, model.n_expr],
                "landmark_embedding": fit_model.info.get("landmark_embedding", "model"),
                "track": _track_settings(topts), "frames": vopts.frame_settings()}
    if vopts.photometric:  # changes every frame's result (absent otherwise: older folders match)
        settings["photometric"] = {"chunk": vopts.photometric_chunk, **_changed(popts, PhotometricOptions())}
    if topts.flow and fopts != FlowOptions():  # (only when set: older folders match)
        settings["flow_options"] = _changed(fopts, FlowOptions())
    run = RunFolder(out_dir, video, settings, force=force, exclusive=exclusive)
    try:
        Config(track=topts, video=vopts, flow=fopts, photometric=popts).save(
            run.root / "config.json", ("track", "video", "flow", "photometric"))
    except BaseException:
        run.release()
        raise
    return run


def _finished(run: RunFolder, vopts: VideoOptions) -> bool:
    """A complete run with every output these options ask for (nothing to do)."""
    return run.complete and (not vopts.overlay or _overlay_done(run, vopts)) and (
        not vopts.meshes or any((run.root / "meshes").glob(f"*.{vopts.meshes}"))) and (
        not vopts.photometric or (run.root / "texture.png").exists())


#: Faces rated upright or turned over (:class:`~flame_tracker.detection.orientation.UprightScorer`)
#: per detection block: the first, then each at least UPRIGHT_EVERY frames on (~5 ms each: 0.1-0.2 ms a
#: frame); at most UPRIGHT_VOTES a block
UPRIGHT_EVERY = 16
UPRIGHT_VOTES = 3
UPRIGHT_FOLDER = "landmarks_upright"  # under work/: one file of scores per block
#: Frames a run without any face looks at turned over (:func:`_stored_upside_down`).
TURN_PROBES = 5


def _stored_upside_down(video: str | Path, run: RunFolder, reader: VideoReader, lm: DetectedFrames,
                        landmarker_path: str | Path | None, verbose: bool) -> None:
    """:class:`InputError` when ``video`` looks stored upside down without a rotation flag. MediaPipe
    finds few faces in such a video, and often draws an upright face across the turned one: tracked,
    that gave a wrong head with no error (a trial). The faces the detection stage rated
    (:data:`UPRIGHT_FOLDER`) decide: more than half of them (two at least) look more upright turned
    over by :data:`~flame_tracker.detection.orientation.UPRIGHT_MARGIN`, and on average too. A run
    without any face looks at :data:`TURN_PROBES` of its frames turned over instead, and is refused
    the same way when at least 80 % of them hold a face. (A photo is turned back by itself,
    :meth:`~flame_tracker.tracker.Tracker.fit_image`; a video, whose every output is in its pictures'
    pixels, is left to the user to turn.)"""
    from flame_tracker.detection.orientation import UPRIGHT_MARGIN

    folder = run.root / "work" / UPRIGHT_FOLDER
    scores = [v for f in sorted(folder.glob("*.json")) for v in json.loads(f.read_text())["upright"]] \
        if folder.is_dir() else []
    if len(scores) >= 2:
        turned = sum(v < -UPRIGHT_MARGIN for v in scores)
        seen, what = len(scores), "faces the detector rated"
        # (a face MediaPipe drew across a turned one is sometimes rated upright: most, and on average)
        upside_down = 2 * turned > seen and float(np.mean(scores)) < -UPRIGHT_MARGIN
    elif len(lm) and not lm.valid.any():
        rows = np.unique(np.linspace(0, len(lm) - 1, min(TURN_PROBES, len(lm))).round().astype(int))
        from flame_tracker.detection.search import FaceFinder

        turned, seen, what = 0, len(rows), "frames looked at"
        with FaceFinder(landmarker_path, max_faces=1, verbose=verbose) as finder:
            for frame in reader.reopen(skip=AllBut(int(f) for f in lm.frame[rows])):
                turned += bool(finder.find(np.ascontiguousarray(frame.image[::-1, ::-1])))
        upside_down = seen >= 2 and turned >= 0.8 * seen
    else:
        return
    if upside_down:
        raise InputError(
            f"{video} seems to be stored upside down (the face looks upright turned over in {turned} of "
            f"{seen} {what}; MediaPipe found a face in {int(lm.valid.sum())} of its {len(lm)} frames). "
            "Turn its pictures (e.g. `ffmpeg -i IN -vf hflip,vflip OUT.mp4`) or give it a rotation flag "
            "of 180 degrees, which players and flame-tracker follow, and track that file")


def _landmarks_with_faces(run: RunFolder, video: str | Path, summary: VideoSummary, vopts: VideoOptions,
                          arrays: FrameArrays | None, reader: VideoReader, landmarker_path: str | Path | None,
                          verbose: bool) -> DetectedFrames:
    """The detected landmark track; :class:`NoFaceError` (naming where it searched) without a face,
    :class:`InputError` for a video stored upside down (:func:`_stored_upside_down`)."""
    lm = _load_landmarks(run, arrays)
    if lm is not None:
        _stored_upside_down(video, run, reader, lm, landmarker_path, verbose)
    if (lm is None or not len(lm)) and not summary.broken:
        # (a range that holds no frame: after the last one, or between two of a sparse video)
        rng = f"from {vopts.start_s:g} s" + (f" to {vopts.end_s:g} s" if vopts.end_s is not None else "")
        raise NoFaceError(f"no frame of {video} lies in the selected range ({rng}); its frames end at about "
                          f"{probe(video).duration_s:.2f} s: choose another --start or --end")
    if lm is None or not lm.valid.any():
        n = 0 if lm is None else len(lm)
        raise NoFaceError(
            f"no face found in any of the {n} frames read from {video}"
            + (f" ({summary.broken})" if summary.broken else "")
            + ("; searched every frame's whole picture and, once a second, tiles down to faces of about "
               f"{MIN_FACE_PX:.0f} px from eyes to chin" if vopts.roi else
               "; searched the whole (downscaled) picture only: try without --no-roi to find small faces")
            + "; check that the video shows a face, or widen --start/--end")
    return lm


def _fit_stage(run: RunFolder, lm: DetectedFrames, reader: VideoReader, fit_model: Any, topts: TrackOptions,
               fopts: FlowOptions, progress: bool, summary: VideoSummary,
               arrays: FrameArrays | None = None) -> SequenceFit:
    """Identity and per-frame fits (checkpointed per chunk, resumed from the checkpoints), with the
    optical-flow gap filler when frames lack landmarks; the per-frame arrays are ``arrays``'."""
    ident_path = run.root / "work" / "identity.npz"
    identity = Identity.from_arrays(load_npz(ident_path)) if ident_path.is_file() else None
    fit_stage = run.stage("fits", chunk=topts.chunk)
    have, done_fits = fit_stage.load_rows(lm.frame, arrays)
    done = {"done": have, **done_fits} if done_fits else None
    n_todo = int(lm.valid.sum()) - (int(done["done"].sum()) if done else 0)
    bar = progress_bar(total=int(lm.valid.sum()), initial=int(lm.valid.sum()) - n_todo,
                       desc="fitting", unit="frame", disable=not progress, dynamic_ncols=True)
    fitted = [0]

    def on_chunk(rows: np.ndarray, fits: dict[str, np.ndarray]) -> None:
        for i, r in enumerate(rows):
            fit_stage.add(int(lm.frame[r]), {k: v[i] for k, v in fits.items()})
        fit_stage.flush()
        fitted[0] += len(rows)
        bar.update(len(rows))

    def on_identity(ident: Identity) -> None:
        save_npz(ident_path, ident.as_arrays())

    gap_filler = None
    if topts.flow and not lm.valid.all():
        gap_filler = _flow_filler(fit_model, reader, lm, fopts)
    try:
        # the detections as stored (float32; a float64 copy would be ~1.2 KB per frame, 130 MB an hour)
        fit = track_landmarks(fit_model, lm.lmks68, lm.valid, lm.time_s,
                              iris_px=lm.iris, options=topts,
                              identity=identity, done=done, on_chunk=on_chunk,
                              on_identity=on_identity, image_size=lm.size,
                              blendshapes=lm.blendshapes, blendshape_names=BLENDSHAPE_NAMES,
                              gap_filler=gap_filler, dense_px=lm.dense, arrays=arrays)
    finally:
        bar.close()
        fit_stage.flush()
        summary.frames_done["fits"] = fitted[0]
    summary.timings.update(fit.timings)
    return fit


def _summarise(summary: VideoSummary, fit: SequenceFit, frames: np.ndarray) -> None:
    """The run's counts and quality figures into ``summary`` (``frames``: the video frame numbers of
    the tracked sequence's rows)."""
    t_len = len(frames)
    summary.n_frames = t_len
    summary.n_tracked = int(fit.valid.sum())
    summary.n_flow = int((fit.source == "flow").sum())
    summary.n_bridged = int((fit.source == "bridged").sum())
    summary.n_dropped = t_len - int(fit.covered.sum())
    summary.cuts = [] if fit.cuts is None else [int(frames[c]) for c in fit.cuts]
    summary.rejected = [] if fit.rejected is None else [int(frames[r]) for r in fit.rejected]
    summary.mean_reproj_px = float(np.nanmean(fit.reproj_px))
    summary.jitter_raw = fit.jitter_raw.as_dict() if fit.jitter_raw else {}
    summary.jitter = fit.jitter.as_dict() if fit.jitter else {}
