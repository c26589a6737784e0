"""The output folder of a video run: manifest, resumable checkpoints and final files.

Layout of ``DIR``::

    manifest.json            what was run (video fingerprint + settings) and whether it finished
    work/<stage>/NNNNNN.npz  checkpoints: per-frame records of a stage, a few frames per file
    work/arrays/*.npy        a long video's per-frame arrays while it is processed (FrameArrays)
    frames/NNNNNN.npz        final per-frame results (reference keys), NNNNNN = source frame index
    tracking.npz             everything over the whole video (arrays over frames + metadata)
    overlay.mp4, meshes/     optional outputs
    texture.png              --photometric: the canonical texture (work/canonical.npz: its albedo;
                             work/photometric/: the per-frame photometric checkpoints)
    summary.json             frames tracked/dropped, errors, jitter, time per stage

Every file is written atomically (temporary file + rename), so a killed run leaves only complete
files; a restarted run reads the checkpoints and redoes only frames that are not on disk.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from flame_tracker.errors import FlameTrackerError
from flame_tracker.io.results import load_npz, save_json, save_npz

MANIFEST = "manifest.json"
PHOTO_CONFIG = "flame_tracker_config.json"  # what `flame-tracker image` writes beside photo results


class OutputMismatchError(FlameTrackerError, RuntimeError):
    """The output folder holds a run of a different video or with different settings."""


class RunBusyError(FlameTrackerError, RuntimeError):
    """Another process is tracking into the same output folder now."""


def hold_folder(folder: Path) -> int | None:
    """Take an exclusive lock on ``folder`` (made if missing) for this process: the open descriptor
    that holds it (the lock ends with :func:`os.close` of it, or with the process, however it ends:
    a killed run leaves no stale lock). :class:`RunBusyError` when another process holds it; ``None``
    where the system has no ``flock`` (Windows: no lock)."""
    try:
        import fcntl
    except ImportError:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunBusyError(f"another process is tracking into {folder} now (the same command started twice?): "
                           "wait for it to end, or choose another --out folder") from None
    except OSError:  # a file system without locks (some network shares): go on as before
        os.close(fd)
        return None
    return fd


def video_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identify a video file cheaply: resolved path, size, and a hash of its first and last MiB."""
    path = Path(path).resolve()
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        if size > 1 << 20:
            fh.seek(max(size - (1 << 20), 1 << 20))
            digest.update(fh.read(1 << 20))
    return {"path": str(path), "size": size, "sha256_head_tail": digest.hexdigest()}


#: Sequences of at least this many frames keep their per-frame arrays in memory-mapped files
#: (:class:`FrameArrays`): ~9 minutes at 30 fps, where in-memory arrays would pass ~50 MB.
DISK_FRAMES = 16384


def unmap_pages(*arrays: Any) -> None:
    """Unmap the pages of memory-mapped arrays (``np.memmap`` and their views; others are ignored)
    from this process: their contents stay in the file and the page cache (a shared mapping's
    written pages too) and the next access maps them again, so a pass over a long video's files
    does not leave them all in the process's resident memory."""
    for arr in arrays:
        while arr is not None and getattr(arr, "_mmap", None) is None:  # (a plain view: its base's map)
            arr = getattr(arr, "base", None)
        mm = getattr(arr, "_mmap", None)
        # (a copy-on-write map's written pages exist nowhere else: they are kept)
        if mm is not None and hasattr(mmap, "MADV_DONTNEED") and getattr(arr, "mode", None) != "c":
            mm.madvise(mmap.MADV_DONTNEED)


class FrameArrays:
    """Allocates a sequence's per-frame arrays ``[T, ...]``: in memory, or, for ``T`` of at least
    ``min_frames`` (a long video), as ``.npy`` files in ``folder`` mapped into memory, so that the
    process's own memory does not grow with the video's length (the kernel pages the files in and
    out as the stages stream over them; :meth:`release` hands the pages a pass is done with back).
    Without ``folder`` every array is in memory."""

    def __init__(self, folder: Path | None = None, min_frames: int | None = None) -> None:
        self.folder = folder
        self.min_frames = DISK_FRAMES if min_frames is None else int(min_frames)
        self._mapped: list[np.memmap] = []

    def on_disk(self, n_frames: int) -> bool:
        """Whether arrays over ``n_frames`` frames are memory-mapped files."""
        return self.folder is not None and n_frames >= self.min_frames

    def full(self, name: str, shape: tuple[int, ...], fill: Any, dtype: Any = np.float64) -> np.ndarray:
        """An array of ``shape`` (frames first) filled with ``fill``; ``name`` names its file (a
        file of that name is replaced)."""
        if not self.on_disk(shape[0]):
            return np.full(shape, fill, dtype)
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.npy"
        path.unlink(missing_ok=True)  # (a new file: an array still mapping the old one keeps its data)
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        per = max(1, (1 << 22) // max(1, arr[:1].nbytes))  # filled 4 MB at a time
        for s in range(0, shape[0], per):
            arr[s:s + per] = fill
        self._mapped.append(arr)
        self.release()
        return arr

    def release(self) -> None:
        """Unmap the pages of every file-backed array from this process (their contents stay in the
        files and the page cache; the next access maps them again)."""
        unmap_pages(*self._mapped)

    def close(self) -> None:
        """Delete the files (arrays still referenced stay readable until dropped)."""
        self._mapped.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class CheckpointStage:
    """Per-frame records of one stage, buffered and flushed to ``work/<name>/`` in chunks.

    Records are dicts of arrays (one frame each). ``flush`` writes the buffered frames as one npz
    named after its first frame; ``load`` returns every stored record stacked and sorted by frame.
    """

    def __init__(self, root: Path, name: str, chunk: int = 32) -> None:
        self.dir = root / "work" / name
        self.chunk = chunk
        self._buffer: list[tuple[int, dict[str, np.ndarray]]] = []
        self._done: set[int] | None = None
        self.duplicates: set[int] = set()  # frames the last load found in more than one file

    def files(self) -> list[Path]:
        """The stored checkpoint files (not the hidden ones an atomic write is still filling, or that a
        kill left behind)."""
        return sorted(f for f in self.dir.glob("*.npz") if not f.name.startswith("."))

    def _iter_parts(self, files: list[Path] | None = None) -> Iterator[tuple[Path, dict[str, np.ndarray]]]:
        """The stored files (or those of ``files``) and their records, one file at a time, in file
        order; an unreadable file is deleted (its frames are redone, not trusted), one replaced
        meanwhile (another writer of the stage) passed over."""
        for f in self.files() if files is None else files:
            try:
                part = load_npz(f)
            except FileNotFoundError:
                continue
            except ValueError:
                part = {}
            if "frame" not in part:
                f.unlink(missing_ok=True)
                continue
            yield f, part

    def done(self) -> set[int]:
        """Frame indices already on disk (or buffered)."""
        if self._done is None:
            self._done = {int(f) for _, part in self._iter_parts() for f in part["frame"]}
        return self._done

    def add(self, frame: int, record: Mapping[str, Any]) -> None:
        """Buffer one frame's record; flush when a chunk is full."""
        self.done().add(int(frame))
        self._buffer.append((int(frame), {k: np.asarray(v) for k, v in record.items()}))
        if len(self._buffer) >= self.chunk:
            self.flush()

    def discard(self) -> None:
        """Drop the buffered frames without writing them."""
        self._buffer.clear()

    def flush(self) -> None:
        """Write the buffered frames (atomically) and clear the buffer."""
        if not self._buffer:
            return
        frames = np.array([f for f, _ in self._buffer], dtype=np.int64)
        keys = self._buffer[0][1].keys()
        arrays = {k: np.stack([r[k] for _, r in self._buffer]) for k in keys}
        save_npz(self.dir / f"{frames[0]:06d}_{frames[-1]:06d}.npz", {"frame": frames, **arrays})
        self._buffer.clear()

    def replace(self, records: Mapping[str, np.ndarray], old: list[Path] | None = None) -> None:
        """Store ``records`` (stacked, sorted by ``frame``) instead of everything stored before (or
        of the files ``old`` only: those the records were read from, when another process may be
        adding files meanwhile), one file per ``chunk`` records (the video's detection blocks); the
        new files are written before the old ones go, so a kill in between loses nothing."""
        self.flush()
        old = self.files() if old is None else old
        frames = np.asarray(records.get("frame", ()))
        written = set()
        for a in range(0, len(frames), self.chunk):
            part = {k: np.asarray(v)[a:a + self.chunk] for k, v in records.items()}
            first, last = part["frame"][0], part["frame"][-1]
            written.add(save_npz(self.dir / f"{first:06d}_{last:06d}.npz", part).name)
        for path in old:
            if path.name not in written:
                path.unlink(missing_ok=True)
        self._done = None

    def load(self, keys: tuple[str, ...] | None = None, files: list[Path] | None = None) -> dict[str, np.ndarray]:
        """All records on disk (or in ``files``), stacked over frames and sorted by ``frame``
        (duplicates dropped, and listed in :attr:`duplicates`); ``keys``: only these (and ``frame``)."""
        self.flush()
        wanted = None if keys is None else {"frame", *keys}
        parts = [{k: v for k, v in part.items() if wanted is None or k in wanted}
                 for _, part in self._iter_parts(files)]
        self.duplicates = set()
        if not parts:
            return {}
        out = {k: np.concatenate([p[k] for p in parts if k in p]) for k in parts[0]}
        frames, first, count = np.unique(out["frame"], return_index=True, return_counts=True)
        self.duplicates = set(frames[count > 1].tolist())
        return {k: v[first] for k, v in out.items()}

    def load_into(self, arrays: FrameArrays, prefix: str = "", keys: tuple[str, ...] | None = None
                  ) -> dict[str, np.ndarray]:
        """:meth:`load`, with the stacked arrays allocated by ``arrays`` (named ``prefix + key``) and
        filled one stored file at a time: a long video's records never stand in memory at once;
        ``keys``: only these (and ``frame``)."""
        self.flush()
        files, frames = [], []
        kinds: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}  # each key's dtype over all files, as load()'s
        for f, part in self._iter_parts():  # first pass: the frames of every readable file
            files.append(f)
            frames.append(part["frame"])
            for k, v in part.items():
                if keys is None or k == "frame" or k in keys:
                    kinds[k] = (np.result_type(kinds[k][0], v.dtype) if k in kinds else v.dtype, v.shape[1:])
        self.duplicates = set()
        if not files:
            return {}
        allf = np.concatenate(frames)
        uniq, first, count = np.unique(allf, return_index=True, return_counts=True)
        self.duplicates = set(uniq[count > 1].tolist())
        dest = np.full(len(allf), -1, np.int64)  # where each stored record goes (-1: a duplicate)
        dest[first] = np.arange(len(uniq))
        out: dict[str, np.ndarray] = {}
        offset = 0
        for i, (f, fr) in enumerate(zip(files, frames)):
            if i % 64 == 63:
                arrays.release()
            part = load_npz(f)
            d = dest[offset:offset + len(fr)]
            offset += len(fr)
            keep = d >= 0
            for k, v in part.items():
                if k not in kinds:
                    continue
                if k not in out:
                    out[k] = arrays.full(prefix + k, (len(uniq), *kinds[k][1]), 0, kinds[k][0])
                out[k][d[keep]] = v[keep]
        arrays.release()
        return out

    def load_rows(self, frames: np.ndarray, arrays: FrameArrays | None = None
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The stored records laid out along the sequence ``frames [T]`` (source frame indices):
        ``(stored [T] bool, {key: [T, ...]})``, NaN where a frame has no record; the dict is empty
        when nothing is stored. Records of frames outside ``frames`` are ignored. ``arrays``: where
        the ``[T, ...]`` arrays live (a long video's are files, filled one stored file at a time)."""
        self.flush()
        arrays = arrays or FrameArrays()
        stored = np.zeros(len(frames), bool)
        row_of = {int(f): i for i, f in enumerate(frames)}
        out: dict[str, np.ndarray] = {}
        seen: set[int] = set()
        for i, (_, part) in enumerate(self._iter_parts()):
            if i % 64 == 63:
                arrays.release()
            rows = np.array([row_of.get(int(f), -1) for f in part["frame"]], dtype=np.int64)
            # a frame stored twice: the first file's record (as load() keeps)
            new = np.array([r >= 0 and int(f) not in seen for f, r in zip(part["frame"], rows)], bool)
            seen.update(int(f) for f in part["frame"])
            stored[rows[new]] = True
            for k, v in part.items():
                if k == "frame":
                    continue
                if k not in out:
                    out[k] = arrays.full(f"stored_{self.dir.name}_{k}", (len(frames), *v.shape[1:]), np.nan)
                out[k][rows[new]] = v[new]
        arrays.release()
        return stored, out


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"name: old -> new"`` for every setting (nested keys dotted) that differs between two
    manifests' settings; a setting one of them lacks shows as ``(default)``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(default)"), new.get(key, "(default)")
        name = f"{prefix}{key}"
        if name == "photometric" and (key not in old or key not in new):  # (its table: there when on)
            out.append(f"photometric: {'on' if key in old else 'off'} -> {'on' if key in new else 'off'}")
        elif isinstance(a, Mapping) or isinstance(b, Mapping):  # (a table one side lacks: its keys)
            out += settings_diff(a if isinstance(a, Mapping) else {}, b if isinstance(b, Mapping) else {},
                                 name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


#: Settings a run records since a later version (see :class:`RunFolder`).
LATER_SETTINGS = ("model_fingerprint",)


class RunFolder:
    """An output folder with a manifest tying it to one video and one set of settings."""

    def __init__(self, out_dir: str | Path, video: str | Path, settings: Mapping[str, Any],
                 force: bool = False, exclusive: bool = False) -> None:
        """``exclusive``: this process alone may use the folder until :meth:`release` (another run into
        it, with or without ``force``, gets :class:`RunBusyError` at once instead of overwriting
        its files as it writes them)."""
        self.root = Path(out_dir)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"output path {self.root} exists and is not a folder")
        self._lock = hold_folder(self.root) if exclusive else None
        try:
            self._open(video, settings, force)
        except BaseException:
            self.release()
            raise

    def _open(self, video: str | Path, settings: Mapping[str, Any], force: bool) -> None:
        self.fingerprint = video_fingerprint(video)
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        manifest = self.root / MANIFEST
        if not manifest.is_file() and (self.root / PHOTO_CONFIG).is_file():
            raise OutputMismatchError(f"{self.root} holds photo results ({PHOTO_CONFIG}); choose another --out "
                                      "folder for the video (--force would not remove them)")
        old = json.loads(manifest.read_text()) if manifest.is_file() else None
        if old is not None and isinstance(old.get("settings"), dict):
            # settings recorded since a later version: a folder of an earlier one that lacks them is
            # compared without them (it resumes, and records them when it next writes its manifest)
            for key in LATER_SETTINGS:
                if key not in old["settings"] and key in self.settings:
                    old["settings"][key] = self.settings[key]
        if force:
            self.clear()
            old = None
        elif old is not None and (old.get("video") != self.fingerprint
                                  or old.get("settings") != self.settings):
            if old.get("video") != self.fingerprint:
                what = f"another video ({old.get('video', {}).get('path')}, or the same file changed)"
            else:
                changed = [("model: another file of the same name (its contents differ)"
                            if c.startswith("model_fingerprint:") else c)
                           for c in settings_diff(old.get("settings") or {}, self.settings)]
                what = (f"a run of {old.get('video', {}).get('path')} with other settings ("
                        + "; ".join(changed[:6]) + ("; ..." if len(changed) > 6 else "") + ")")
            raise OutputMismatchError(
                f"{self.root} holds {what}; choose another --out folder or pass --force to overwrite it "
                "(force=True in Python)")
        self.complete = bool(old and old.get("complete"))
        if old is None:
            self._write_manifest(complete=False)

    def release(self) -> None:
        """End this process's hold on the folder (``exclusive``); nothing when it has none."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def clear(self) -> None:
        """Remove everything this package writes in the folder (never foreign files)."""
        for name in ("work", "frames", "meshes"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in (MANIFEST, "tracking.npz", "overlay.mp4", "summary.json", "texture.png"):
            (self.root / name).unlink(missing_ok=True)
        from flame_tracker.export.run import MARKER, remove_export

        # exports of the old run in their default place (export-<format>/, ours by their marker): they
        # would go on showing the old run's frames beside the new one's (the user's files there stay)
        for folder in self.root.glob("export-*"):
            if (folder / MARKER).is_file():
                remove_export(folder)

    def _write_manifest(self, complete: bool) -> None:
        save_json(self.root / MANIFEST, {"video": self.fingerprint, "settings": self.settings,
                                         "complete": complete})

    def mark_complete(self) -> None:
        """Record that every output was written; a later run will do nothing unless forced."""
        self._write_manifest(complete=True)
        self.complete = True

    def stage(self, name: str, chunk: int = 32) -> CheckpointStage:
        """Checkpoints of one stage (``work/<name>/``)."""
        return CheckpointStage(self.root, name, chunk)

    def frame_path(self, frame: int) -> Path:
        """Path of the final per-frame npz."""
        return self.root / "frames" / f"{frame:06d}.npz"
