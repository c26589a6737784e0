"""The output folder of a video run: manifest, resumable checkpoints and final files.

Layout of ``DIR``::

    manifest.json            what was run (video fingerprint + settings) and whether it finished
    work/<stage>/NNNNNN.npz  checkpoints: per-frame records of a stage, a few frames per file
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
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from flame_tracker.errors import FlameTrackerError
from flame_tracker.io.results import load_npz, save_json, save_npz

MANIFEST = "manifest.json"


class OutputMismatchError(FlameTrackerError, RuntimeError):
    """The output folder holds a run of a different video or with different settings."""


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

    def _parts(self) -> list[dict[str, np.ndarray]]:
        """The stored files' records, in file order; an unreadable file is deleted (its frames are
        redone, not trusted), one replaced meanwhile (another writer of the stage) passed over."""
        parts = []
        for f in self.files():
            try:
                part = load_npz(f)
            except FileNotFoundError:
                continue
            except ValueError:
                part = {}
            if "frame" not in part:
                f.unlink(missing_ok=True)
                continue
            parts.append(part)
        return parts

    def done(self) -> set[int]:
        """Frame indices already on disk (or buffered)."""
        if self._done is None:
            self._done = {int(f) for part in self._parts() for f in part["frame"]}
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

    def load(self) -> dict[str, np.ndarray]:
        """All records on disk, stacked over frames and sorted by ``frame`` (duplicates dropped, and
        listed in :attr:`duplicates`)."""
        self.flush()
        parts = self._parts()
        self.duplicates = set()
        if not parts:
            return {}
        keys = set(parts[0])
        out = {k: np.concatenate([p[k] for p in parts if k in p]) for k in keys}
        frames, first, count = np.unique(out["frame"], return_index=True, return_counts=True)
        self.duplicates = set(frames[count > 1].tolist())
        return {k: v[first] for k, v in out.items()}

    def load_rows(self, frames: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The stored records laid out along the sequence ``frames [T]`` (source frame indices):
        ``(stored [T] bool, {key: [T, ...]})``, NaN where a frame has no record; the dict is empty
        when nothing is stored. Records of frames outside ``frames`` are ignored."""
        rec = self.load()
        stored = np.zeros(len(frames), bool)
        if not rec:
            return stored, {}
        row_of = {int(f): i for i, f in enumerate(frames)}
        rows = np.array([row_of.get(int(f), -1) for f in rec["frame"]], dtype=np.int64)
        keep = rows >= 0
        rows = rows[keep]
        stored[rows] = True
        out = {}
        for k, v in rec.items():
            if k != "frame":
                out[k] = np.full((len(frames), *v.shape[1:]), np.nan)
                out[k][rows] = v[keep]
        return stored, out


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"name: old -> new"`` for every setting (nested keys dotted) that differs between two
    manifests' settings; a setting one of them lacks shows as ``(default)``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(default)"), new.get(key, "(default)")
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) or isinstance(b, Mapping):  # (a table one side lacks: its keys)
            out += settings_diff(a if isinstance(a, Mapping) else {}, b if isinstance(b, Mapping) else {},
                                 name + ".")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


class RunFolder:
    """An output folder with a manifest tying it to one video and one set of settings."""

    def __init__(self, out_dir: str | Path, video: str | Path, settings: Mapping[str, Any],
                 force: bool = False) -> None:
        self.root = Path(out_dir)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"output path {self.root} exists and is not a folder")
        self.fingerprint = video_fingerprint(video)
        self.settings = json.loads(json.dumps(dict(settings), default=str))
        manifest = self.root / MANIFEST
        old = json.loads(manifest.read_text()) if manifest.is_file() else None
        if force:
            self.clear()
            old = None
        elif old is not None and (old.get("video") != self.fingerprint
                                  or old.get("settings") != self.settings):
            if old.get("video") != self.fingerprint:
                what = f"another video ({old.get('video', {}).get('path')}, or the same file changed)"
            else:
                changed = settings_diff(old.get("settings") or {}, self.settings)
                what = (f"a run of {old.get('video', {}).get('path')} with other settings ("
                        + "; ".join(changed[:6]) + ("; ..." if len(changed) > 6 else "") + ")")
            raise OutputMismatchError(
                f"{self.root} holds {what}; choose another --out folder or pass --force to overwrite it")
        self.complete = bool(old and old.get("complete"))
        if old is None:
            self._write_manifest(complete=False)

    def clear(self) -> None:
        """Remove everything this package writes in the folder (never foreign files)."""
        for name in ("work", "frames", "meshes"):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in (MANIFEST, "tracking.npz", "overlay.mp4", "summary.json", "texture.png"):
            (self.root / name).unlink(missing_ok=True)

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
