"""What a batch processes: videos and photos from files, folders, globs or a manifest, as items
with their own options and output folder."""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flame_tracker.errors import FlameTrackerError
from flame_tracker.io.suffixes import IMAGE_SUFFIXES, VIDEO_SUFFIXES

#: Per-item options a manifest may set (CSV columns / JSON keys besides ``path`` and ``name``).
ITEM_OPTIONS = {"start": float, "end": float, "fps": float, "every": int, "max_frames": int, "model": str,
                "face": str}


class BatchInputError(FlameTrackerError, ValueError):
    """An input that cannot be turned into batch items (the message names it and what to do)."""


@dataclass(frozen=True)
class Item:
    """One video (``kind="video"``) or one photo (``"image"``) and where its results go."""

    path: str
    kind: str
    name: str  # output folder name under the batch's --out
    options: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "video" if suffix in VIDEO_SUFFIXES else "image" if suffix in IMAGE_SUFFIXES else None


def _parse_options(row: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("path", "name") or value in (None, ""):
            continue
        if key not in ITEM_OPTIONS:
            raise BatchInputError(f"{where}: unknown option {key!r}; known: path, name, {', '.join(ITEM_OPTIONS)}")
        try:
            out[key] = ITEM_OPTIONS[key](value)
        except (TypeError, ValueError) as exc:
            raise BatchInputError(f"{where}: option {key}={value!r} is not a {ITEM_OPTIONS[key].__name__}") from exc
        if key == "face":  # one spelling per choice (it is part of a run folder's settings)
            from flame_tracker.detection.search import FaceChoice

            try:
                out[key] = str(FaceChoice.parse(out[key]))
            except ValueError as exc:
                raise BatchInputError(f"{where}: {exc}") from exc
    return out


def read_manifest(path: Path) -> list[tuple[Path, str | None, dict[str, Any]]]:
    """``(input, name or None, options)`` rows of a CSV (header with ``path``) or JSON-lines
    manifest; relative paths are relative to the manifest's folder."""
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text()
    except OSError as exc:
        raise BatchInputError(f"{path}: cannot read the manifest ({exc})") from exc
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise BatchInputError(f"{path}:{i}: not a JSON object per line ({exc})") from exc
            if not isinstance(obj, dict):
                raise BatchInputError(f"{path}:{i}: expected a JSON object with a 'path'")
            rows.append({**obj, "_line": i})
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise BatchInputError(f"{path}: a CSV manifest needs a header with a 'path' column")
        rows = [{**r, "_line": i} for i, r in enumerate(reader, 2)]
    out = []
    for r in rows:
        where = f"{path}:{r.pop('_line')}"
        if not r.get("path"):
            raise BatchInputError(f"{where}: no 'path'")
        p = Path(str(r["path"])).expanduser()
        if not p.is_absolute():
            p = path.parent / p
        name = str(r["name"]) if r.get("name") else None
        out.append((p, name, _parse_options(r, where)))
    return out


def holds_other_input(folder: Path, path: Path, kind: str) -> bool:
    """Whether an item's output ``folder`` holds the results of an input other than ``path`` (a
    video run of another file, another photo's fit; photo results of unknown source for a video).
    A folder that does not exist, or holds nothing of ours, is free."""
    from flame_tracker.io.results import result_source
    from flame_tracker.video.store import MANIFEST, PHOTO_CONFIG

    photo = folder / f"{folder.name}.json"
    if (folder / MANIFEST).is_file():
        try:
            held = json.loads((folder / MANIFEST).read_text()).get("video", {}).get("path")
            return held is None or Path(str(held)).resolve() != path.resolve()
        except (OSError, ValueError, AttributeError):  # unreadable: not ours to reuse
            return True
    if photo.is_file():  # (unreadable, or naming no photo: not ours to reuse)
        return result_source(photo) != path.resolve()
    return kind == "video" and (folder / PHOTO_CONFIG).is_file()


def collect_items(inputs: list[str | Path], out_dir: str | Path | None = None) -> list[Item]:
    """Items for ``inputs``: video/image files, folders (their videos and images, sorted), globs and
    manifests (``.csv``, ``.jsonl``). Output names are the file stems, made unique (``_1``, ``_2``);
    with ``out_dir``, a name whose folder there holds another input's results is passed over, so that
    an input finds its folder of an earlier batch again whatever else that batch held (a manifest's
    own ``name`` is kept as given). Raises :class:`BatchInputError` for an input that matches nothing."""
    found: list[tuple[Path, str | None, dict[str, Any]]] = []
    for raw in inputs:
        text = str(raw)
        p = Path(text).expanduser()
        if p.suffix.lower() in (".csv", ".jsonl", ".ndjson", ".json") and p.is_file():
            found.extend(read_manifest(p))
        elif p.is_dir():
            files = sorted(q for q in p.iterdir() if q.is_file() and _kind(q))
            if not files:
                raise BatchInputError(f"{p}: no video or image files in this folder")
            found.extend((q, None, {}) for q in files)
        elif p.is_file():
            found.append((p, None, {}))
        elif any(ch in text for ch in "*?["):
            files = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file() and _kind(Path(m)))
            if not files:
                raise BatchInputError(f"{text}: the pattern matches no video or image file")
            found.extend((q, None, {}) for q in files)
        else:
            raise BatchInputError(f"{text}: no such file, folder or pattern")
    items, used = [], set()
    for path, name, opts in found:
        kind = _kind(path)
        if kind is None:
            # other suffixes (.mts, .ts, ...) are tried as videos: the item fails with a clear message if not
            kind = "video"
        if name is not None and (name in ("", ".", "..") or "/" in name or "\\" in name):
            raise BatchInputError(f"{path}: name {name!r} must be a plain folder name (no '/', not '.' or '..')")
        base = name or path.stem
        unique, n = base, 0
        # clip, clip_1, clip_2 ... never a name already taken, here or (for a name of ours) in out_dir
        while unique in used or (name is None and out_dir is not None
                                 and holds_other_input(Path(out_dir) / unique, path, kind)):
            n += 1
            unique = f"{base}_{n}"
        used.add(unique)
        items.append(Item(str(path), kind, unique, opts))
    return items


#: A photo costs about as much as this many video frames (detection, two fitting rounds, files).
PHOTO_FRAMES = 12


def estimated_frames(item: Item) -> float:
    """Rough cost of an item in video frames (the frames its video's reader will select, as far as
    the container tells: :meth:`~flame_tracker.video.decode.VideoReader.expected_frames`)."""
    if item.kind == "image":
        return PHOTO_FRAMES
    from flame_tracker.video.decode import VideoReader

    o = item.options
    try:
        reader = VideoReader(item.path, start_s=o.get("start", 0.0), end_s=o.get("end"), every=o.get("every", 1),
                             fps=o.get("fps"), max_frames=o.get("max_frames"))
    except Exception:  # noqa: BLE001  (a broken file or bad option fails fast in its task)
        return 0.0
    return float(reader.expected_frames())


def group_images(items: list[Item], size: int, frames: dict[str, float] | None = None) -> list[list[Item]]:
    """Tasks: one per video, photos in groups of ``size`` (one model load per group), the longest
    first: a long video started last would keep one worker busy after the others are done.
    ``frames``: each item's :func:`estimated_frames` by name, when already known."""
    tasks = [[it] for it in items if it.kind == "video"]
    photos = [it for it in items if it.kind == "image"]
    tasks += [photos[i:i + size] for i in range(0, len(photos), size)]
    cost = [sum(frames[it.name] if frames is not None else estimated_frames(it) for it in t) for t in tasks]
    order = sorted(range(len(tasks)), key=lambda i: -cost[i])  # stable: equal costs keep their order
    return [tasks[i] for i in order]


__all__ = ["BatchInputError", "IMAGE_SUFFIXES", "ITEM_OPTIONS", "Item", "PHOTO_FRAMES", "VIDEO_SUFFIXES",
           "collect_items", "estimated_frames", "group_images", "holds_other_input", "read_manifest"]
