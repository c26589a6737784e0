"""What the exporters read: a finished ``flame-tracker video`` run folder, or a folder of
``flame-tracker image`` results (one photo = one frame, brought to one shared camera)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flame_tracker.errors import FlameTrackerError


def is_video_metadata(key: str) -> bool:
    """Whether ``tracking.npz``'s ``key`` is one value for the whole video (not one row per frame)."""
    from flame_tracker.video.pipeline import FIXED_KEYS, VIDEO_KEYS

    return key in FIXED_KEYS or key in VIDEO_KEYS or key.startswith("all_")


class ExportError(FlameTrackerError, ValueError):
    """The run cannot be exported in the asked format (the message says why and what to do)."""


@dataclass
class TrackedRun:
    """The arrays of ``tracking.npz`` over the tracked frames (with landmarks or followed by optical
    flow; interpolated ones are left out), plus the video's metadata. For photo results
    (:func:`load_image_results`) the same arrays with one row per photo, ``images`` set."""

    folder: Path
    arrays: dict[str, np.ndarray]  # tracking.npz, frame arrays restricted to the tracked frames
    fps: float
    model_name: str
    images: tuple[Path, ...] = ()  # photo results: each frame's photo, as its result names it
    # photo results: [T, 3] scale s and shift (dx, dy) taking photo pixels to the shared camera's
    # (p' = s p + d); None when every photo already has that camera
    warps: np.ndarray | None = None
    photo_sizes: np.ndarray | None = None  # photo results: [T, 2] each photo's own width, height
    photo_folder: Path | None = None  # photo results: where the photos are now (by name), if moved
    # the model file's fingerprint (model.embedding.fingerprint; "" for runs of earlier versions)
    model_fingerprint: str = ""

    @property
    def frame_names(self) -> list[str]:
        """Each frame's name for the user's side files (mattes): the source frame index (6 digits)
        or the photo's file stem."""
        if self.images:
            return [p.stem for p in self.images]
        return [f"{int(f):06d}" for f in self.arrays["frame"]]

    @property
    def n_frames(self) -> int:
        return int(self.arrays["exp"].shape[0])

    @property
    def times(self) -> np.ndarray:
        """Seconds from the start of the tracked range, ``[T]``."""
        t = self.arrays["time_s"].astype(np.float64)
        return t - t[0]


def load_run(folder: str | Path) -> TrackedRun:
    """Read a finished video run, or a folder of photo results (:func:`load_image_results`);
    :class:`ExportError` for a folder that is neither."""
    folder = Path(folder)
    manifest, tracking = folder / "manifest.json", folder / "tracking.npz"
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such folder (give the --out folder of `flame-tracker video` or "
                          "`flame-tracker image`)")
    if not manifest.exists() and image_results(folder):
        return load_image_results(folder)
    try:
        complete = json.loads(manifest.read_text()).get("complete", False)
    except (OSError, ValueError):
        complete = False
    if not complete or not tracking.is_file():
        raise ExportError(f"{folder}: neither a finished `flame-tracker video` run (no complete manifest.json and "
                          "tracking.npz: run or resume the tracking first) nor a folder of `flame-tracker image` "
                          "results")
    with np.load(tracking, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    valid = arrays.get("valid")
    if valid is not None and "source" in arrays:  # frames followed by optical flow are tracked too
        valid = valid | (arrays["source"] == "flow")
    if valid is not None and not valid.all():
        arrays = {k: (v if is_video_metadata(k) else v[valid]) for k, v in arrays.items()}
    if arrays["exp"].shape[0] == 0:
        raise ExportError(f"{folder}: the run has no tracked frame")
    fps = float(arrays.get("video_fps", 0.0))
    if not np.isfinite(fps) or fps <= 0:  # a container without a frame rate: from the timestamps
        frames, times = arrays["frame"].astype(np.float64), arrays["time_s"].astype(np.float64)
        span = times[-1] - times[0]
        fps = (frames[-1] - frames[0]) / span if span > 0 else 30.0
    return TrackedRun(folder, arrays, fps, str(arrays.get("model_name", "")),
                      model_fingerprint=str(arrays.get("model_fingerprint", "")))


# ------------------------------------------------------------------ photo results

#: The nominal frame rate of a photo set: photo ``t`` is frame ``t`` (animations step one photo per frame).
PHOTO_FPS = 30.0


def image_results(folder: Path) -> list[Path]:
    """The ``flame-tracker image`` results in ``folder``: each ``<name>.npz`` with its ``<name>.json``."""
    return sorted(p for p in folder.glob("*.npz") if p.with_suffix(".json").is_file())


def load_image_results(folder: str | Path) -> TrackedRun:
    """The photo results in ``folder`` as one run, one frame per photo (in name order). Photos of
    other sizes or focal lengths are brought to one shared camera (:func:`shared_camera`), which
    every format needs; :class:`ExportError` for a folder without results or with results of
    several models."""
    from flame_tracker.io.results import REFERENCE_KEYS

    folder = Path(folder)
    rows, images = [], []
    for path in image_results(folder):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            source = json.loads(path.with_suffix(".json").read_text()).get("source", "")
        except (OSError, ValueError) as exc:
            raise ExportError(f"{path}: not a readable `flame-tracker image` result ({exc})") from exc
        if "frame" in arrays or not all(k in arrays for k in (*REFERENCE_KEYS, "pose6", "K_px", "w2c_opencv")):
            continue  # another npz (a video frame, a texture): not a photo result
        rows.append(arrays)
        images.append(Path(source) if source else path.with_suffix(".png"))
    if not rows:
        raise ExportError(f"{folder}: no `flame-tracker image` results (<name>.npz with <name>.json) in it")
    models = sorted({(str(r["model_name"]), str(r.get("model_fingerprint", ""))) for r in rows})
    if len({name for name, _ in models}) > 1 or len({fp for _, fp in models if fp}) > 1:
        names = ", ".join(f"{name} ({fp})" if fp else name for name, fp in models)
        raise ExportError(f"{folder}: the results were fitted with different models ({names}); "
                          "export the photos of one model at a time")
    from flame_tracker.video.pipeline import FIXED_KEYS

    arrays = {k: (v if k in FIXED_KEYS else np.concatenate([r[k] for r in rows])) for k, v in rows[0].items()
              if k == "shape" or k in FIXED_KEYS or all(k in r for r in rows)}
    arrays["shape"] = np.concatenate([r["shape"].reshape(1, -1) for r in rows])  # one row per photo
    n = len(rows)
    arrays.update(frame=np.arange(n, dtype=np.int64), time_s=np.arange(n) / PHOTO_FPS,
                  valid=np.ones(n, bool), source=np.full(n, "landmarks"))
    sizes = arrays["image_size"].copy()
    warps = shared_camera(arrays)
    prints = sorted({fp for _, fp in models if fp})
    return TrackedRun(folder, arrays, PHOTO_FPS, models[0][0], tuple(images), warps, sizes,
                      model_fingerprint=prints[0] if prints else "")


def common_camera(K: np.ndarray, pp: np.ndarray, size: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One pinhole camera for pictures of cameras ``K [N, 3, 3]`` with principal points ``pp [N, 2]``
    and sizes ``size [N, 2]``: the median focal length, the principal point at the centre of a
    canvas that holds every scaled picture. A camera with another focal length sees the same
    picture scaled about its principal point, so picture ``n`` maps exactly by ``p' = s_n p + d_n``.
    Returns ``(s [N], d [N, 2], canvas (W, H) [2], K_shared [3, 3])``."""
    f = K[:, 1, 1].astype(np.float64)
    fs = float(np.median(f))
    s = fs / f
    pp, size = pp.astype(np.float64), size.astype(np.float64)
    half = np.maximum(s[:, None] * pp, s[:, None] * (size - pp)).max(0)  # widest reach from the centre
    canvas = 2 * np.ceil(half - 1e-6).astype(np.int64)  # even sides (video codecs need them)
    centre = canvas / 2.0
    return s, centre - s[:, None] * pp, canvas, np.array([[fs, 0, centre[0]], [0, fs, centre[1]], [0, 0, 1.0]])


def warp_picture(image: np.ndarray, s: float, d: np.ndarray, canvas) -> np.ndarray:
    """``image`` moved by ``p' = s p + d`` onto a ``canvas (W, H)`` picture, black outside it."""
    import cv2

    # p' = s p + d in pixel-edge coordinates; OpenCV's are pixel centres (+0.5)
    m = np.array([[s, 0, d[0] + 0.5 * (s - 1)], [0, s, d[1] + 0.5 * (s - 1)]])
    if s < 0.99:  # warpAffine samples (it has no area filter): low-pass first, or fine detail aliases
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=0.5 * (1.0 / s - 1.0))
    return cv2.warpAffine(image, m, (int(canvas[0]), int(canvas[1])), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def shared_camera(arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """Bring every photo's camera to one, in place (:func:`common_camera`); every ``*_px`` point
    array follows. Returns ``[T, 3]`` ``(s, dx, dy)``, or None when all photos already share one
    camera."""
    K = arrays["K_px"].astype(np.float64)
    pp = arrays["principal_point_px"].astype(np.float64)
    size = arrays["image_size"].astype(np.float64)
    f = K[:, 1, 1]
    if np.allclose(f, f[0], rtol=1e-5) and np.allclose(pp, pp[0], atol=1e-3) and (size == size[0]).all():
        return None
    s, d, canvas, K_shared = common_camera(K, pp, size)
    for key, v in list(arrays.items()):
        if key.endswith("_px") and v.ndim == 3 and v.shape[-1] == 2:
            arrays[key] = (s[:, None, None] * v + d[:, None, :]).astype(v.dtype)
    arrays["residuals_px"] = (arrays["residuals_px"] * s[:, None]).astype(np.float32)
    arrays["K_px"] = np.broadcast_to(K_shared, K.shape).astype(np.float32).copy()
    arrays["principal_point_px"] = np.broadcast_to(K_shared[:2, 2], pp.shape).astype(np.float32).copy()
    arrays["image_size"] = np.broadcast_to(canvas, size.shape).astype(arrays["image_size"].dtype).copy()
    return np.concatenate([s[:, None], d], 1)


def one_identity(run: TrackedRun, fmt: str) -> None:
    """Photo results must share one identity (``--same-person``) for a format that takes one subject."""
    shapes = run.arrays["shape"]
    if shapes.shape[0] > 1 and not np.allclose(shapes, shapes[:1], atol=1e-6):
        raise ExportError(f"{run.folder}: the {shapes.shape[0]} photos were fitted one by one and have different "
                          f"identities; {fmt} takes one person: fit them together with `flame-tracker image "
                          "--same-person`")


# ------------------------------------------------------------------ shared by the folder formats

#: Written into every export folder: its format, then ``written:`` and the names the export wrote there
#: (one per line). A later export replaces those in a folder that has it and keeps anything else (a
#: user's scene file); a marker of an earlier version has the format alone.
MARKER = ".flame-tracker-export"


def export_contents(folder: Path) -> tuple[str, set[str] | None]:
    """The format and the entry names recorded in ``folder``'s :data:`MARKER`; the names are ``None``
    in a marker of an earlier version (the format alone). Only plain names of entries in the folder
    count (a damaged or edited marker never points outside it)."""
    lines = (folder / MARKER).read_text().split("\n")
    fmt = lines[0].strip()
    if len(lines) < 2 or lines[1] != "written:":
        return fmt, None
    return fmt, {n for n in lines[2:] if n not in ("", ".", "..") and "/" not in n and "\\" not in n}


def _write_marker(folder: Path, fmt: str, names: list[str]) -> None:
    (folder / MARKER).write_text("\n".join([fmt, "written:", *names]) + "\n")


def remove_export(folder: Path) -> None:
    """Remove what the export in ``folder`` (marked) wrote, the user's files left in place with a marker
    that lists nothing (the folder too when nothing else is in it). An earlier version's marker does not
    say what it wrote: left as is."""
    import shutil

    fmt, ours = export_contents(folder)
    if ours is None:
        return
    for name in ours:
        entry = folder / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if any(e.name != MARKER for e in folder.iterdir()):  # the user's files stay, in a folder still ours
        _write_marker(folder, fmt, [])
    else:
        shutil.rmtree(folder, ignore_errors=True)


def free_out_dir(out_dir: str | Path, fmt: str | None = None, legacy: tuple[str, ...] = ()) -> Path:
    """``out_dir`` as an absolute path that may be (re)written: missing, empty, or an earlier export
    of ours (:data:`MARKER`) in the same format ``fmt`` (another format's export is not replaced:
    two exports into one folder would otherwise lose the first; the user's files in it are kept,
    :func:`write_folder`). ``legacy``: the file names this format wrote before folders were marked (a
    folder holding only those counts as ours). Anything else is refused, never deleted."""
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.parent == out_dir:
        raise ExportError(f"{out_dir}: give a folder to create for the export, not the file system root")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ExportError(f"{out_dir}: exists and is not a folder; give a new folder for the export")
        entries = list(out_dir.iterdir())
        marker = out_dir / MARKER
        if marker.is_file():  # a VHAP folder looks like our export but is the user's: only the marker counts
            other = export_contents(out_dir)[0]
            if fmt is not None and other and other != fmt:
                raise ExportError(f"{out_dir}: holds an export as {other}; give another folder for the {fmt} "
                                  "export (the earlier one would be replaced)")
        elif entries and not (legacy and all(e.is_file() and e.name in legacy for e in entries)):
            raise ExportError(f"{out_dir}: exists and holds other files; give a new (or empty) folder for the "
                              "export: an earlier export there would be replaced")
    return out_dir


def write_folder(out_dir: str | Path, fmt: str, write, legacy: tuple[str, ...] = ()) -> Path:
    """Run ``write(tmp_folder)`` and put the result at ``out_dir`` (see :func:`free_out_dir`): written
    to a fresh hidden sibling folder first, swapped in when complete, removed on any failure (Ctrl-C
    included). An earlier export's folder keeps what the user put there (a scene file beside the
    ``.glb``): moved into the new folder before the swap."""
    import shutil
    import tempfile

    out_dir = free_out_dir(out_dir, fmt, legacy)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # fresh sibling folders of our own (a user's "<out>.part" or "<out>.old" is never touched)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.part-", dir=out_dir.parent))
    tmp.chmod(0o777 & ~_umask())  # (mkdtemp makes it private: the export gets a normal folder's mode)
    try:
        write(tmp)
        written = sorted(e.name for e in tmp.iterdir())
        _write_marker(tmp, fmt, written)
        keep = _users_entries(out_dir, set(written))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    moved: list[Path] = []
    old = None
    try:
        for entry in keep:
            entry.rename(tmp / entry.name)
            moved.append(entry)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "export")
        tmp.rename(out_dir)
    except BaseException:  # before the swap: the old folder back, the user's files back into it
        if old is not None and (old / "export").exists() and not out_dir.exists():
            (old / "export").rename(out_dir)
        for entry in moved:
            (tmp / entry.name).rename(entry)
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _users_entries(out_dir: Path, written: set[str]) -> list[Path]:
    """The entries of an earlier export's folder ``out_dir`` that it did not write (the user's), to
    keep beside a new export that writes ``written``; :class:`ExportError` where one has the name of a
    new file (it would be replaced). An earlier version's marker lists nothing: what the new export
    writes counts as what it wrote."""
    if not (out_dir / MARKER).is_file():  # missing, empty, or an unmarked earlier version's files
        return []
    ours = export_contents(out_dir)[1]
    if ours is None:  # (an empty list, what --force leaves beside the user's files, means none is ours)
        ours = written
    keep = [e for e in out_dir.iterdir() if e.name != MARKER and e.name not in ours]
    clash = sorted(e.name for e in keep if e.name in written)
    if clash:
        raise ExportError(f"{out_dir}: holds {', '.join(clash)}, which this export did not write and would "
                          "replace; move it out of the folder or give another folder")
    return keep


def _umask() -> int:
    """The process's file-creation mask (read by setting it and back)."""
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _photo_path(run: TrackedRun, path: Path) -> Path | None:
    """Where photo ``path`` is now: in ``run.photo_folder`` (by name) when set, else as recorded
    (relative to the working folder or to the results)."""
    folder = run.photo_folder
    candidates = [folder / path.name] if folder is not None else [path, run.folder / path, run.folder / path.name]
    return next((c for c in candidates if c.is_file()), None)


def source_video(run: TrackedRun, video: str | Path | None) -> Path:
    """The video to decode the frames from: ``video``, else the one the run recorded. For photo
    results: the folder of the (first) photo, each checked to be there; ``video``, when given, is
    the folder that holds them now (remembered in ``run.photo_folder``)."""
    if run.images:
        if video is not None:
            run.photo_folder = Path(video)
        found = [_photo_path(run, p) for p in run.images]
        missing = [p.name for p, f in zip(run.images, found) if f is None]
        if missing or found[0] is None:
            raise ExportError(f"{len(missing)} of the {len(run.images)} photos are not there (e.g. {missing[0]}); "
                              "pass --images FOLDER, the folder that holds them")
        return found[0].parent
    path = Path(video) if video is not None else Path(str(run.arrays.get("video_path", "")))
    if not path.is_file():
        raise ExportError(f"the run's source video {str(path)!r} is not there; pass --video PATH")
    if video is not None:
        _check_same_video(run, path)
    return path


def _check_same_video(run: TrackedRun, path: Path) -> None:
    """``path`` (given by the user in place of the video the run recorded) is the tracked video:
    the same file (the run's fingerprint), or a copy with the same picture size, frame rate and
    enough frames (a re-encoded copy: warned); :class:`ExportError` otherwise."""
    import warnings

    from flame_tracker.video.decode import VideoError, probe
    from flame_tracker.video.store import video_fingerprint

    try:
        recorded = json.loads((run.folder / "manifest.json").read_text()).get("video") or {}
    except (OSError, ValueError):
        recorded = {}
    fingerprint = video_fingerprint(path)
    if all(recorded.get(k) == fingerprint[k] for k in ("size", "sha256_head_tail")):
        return
    try:
        info = probe(path)
    except VideoError as exc:
        raise ExportError(f"--video {path}: {exc}") from exc
    size = run.arrays.get("video_size")
    fps = float(run.arrays.get("video_fps", 0.0))
    last = int(np.max(run.arrays["frame"]))
    problems = []
    if size is not None and (info.width, info.height) != (int(size[0]), int(size[1])):
        problems.append(f"its pictures are {info.width}x{info.height}, "
                        f"the tracked video's {int(size[0])}x{int(size[1])}")
    if fps > 0 and info.fps > 0 and abs(info.fps - fps) > 0.01 * fps:
        problems.append(f"it runs at {info.fps:.3f} frames/s, the tracked video at {fps:.3f}")
    if info.n_frames and info.n_frames + 1 <= last:  # (a count from the duration may be one short)
        problems.append(f"it has {info.n_frames} frames, the run goes to frame {last}")
    if problems:
        raise ExportError(f"--video {path} is not the tracked video ({'; '.join(problems)}): pass the video "
                          "this run tracked")
    warnings.warn(f"--video {path} is not the file this run tracked (another fingerprint), but has its size, frame "
                  "rate and length: exporting its frames as those of the tracked video", stacklevel=3)


def each_frame(run: TrackedRun, video: Path):
    """``(t, frame RGB)`` for every exported frame ``t`` of the run, decoded again from ``video``;
    :class:`ExportError` when frames are missing (not the tracked video). Photo results: each photo
    from the folder ``video`` (see :func:`source_video`), brought to the shared camera."""
    if run.images:
        yield from _each_photo(run)
        return
    from flame_tracker.video.decode import AllBut, VideoReader

    frames = [int(f) for f in run.arrays["frame"]]
    wanted = {f: t for t, f in enumerate(frames)}
    seen = 0
    # the run's frames only: the others are not converted, and long stretches without any (a run
    # of part of the video) are jumped over
    for fr in VideoReader(video, max_frames=None, skip=AllBut(wanted)):
        t = wanted.get(fr.index)
        if t is None:
            continue
        yield t, fr.image
        seen += 1
        if seen == len(frames):
            return
    raise ExportError(f"{video}: found {seen} of the run's {len(frames)} frames; is it the tracked video?")


def _each_photo(run: TrackedRun):
    from flame_tracker.io.images import load_image

    assert run.photo_sizes is not None  # set with the photos (load_image_results)
    for t, path in enumerate(run.images):
        found = _photo_path(run, path)
        if found is None:
            raise ExportError(f"{path}: the photo is not there; pass --images FOLDER, the folder that holds it")
        image = load_image(found)
        if (image.shape[1], image.shape[0]) != tuple(int(v) for v in run.photo_sizes[t]):
            raise ExportError(f"{path.name}: {image.shape[1]}x{image.shape[0]} pixels, but it was fitted at "
                              f"{int(run.photo_sizes[t][0])}x{int(run.photo_sizes[t][1])}: not the fitted photo")
        yield t, to_shared_camera(run, t, image)


def to_shared_camera(run: TrackedRun, t: int, image: np.ndarray) -> np.ndarray:
    """Photo ``t`` (or a matte of it) as the shared camera sees it (:func:`shared_camera`): scaled
    about its principal point onto the common canvas, black outside the photo."""
    if run.warps is None:
        return image
    return warp_picture(image, float(run.warps[t, 0]), run.warps[t, 1:], run.arrays["image_size"][0])


def save_png(path: Path, image: np.ndarray) -> None:
    """An RGB (or single-channel) uint8 image as PNG; :class:`ExportError` when it cannot be written."""
    import cv2

    img = image[..., ::-1] if image.ndim == 3 else image
    if not cv2.imwrite(str(path), np.ascontiguousarray(img)):
        raise ExportError(f"{path}: could not write the image (disk full or not writable?)")


#: the FLAME formats: (name in messages, FLAME version, most shape / expression components)
FLAME_FORMATS = {"gaussian-avatars": ("GaussianAvatars", "2023", 300, 100), "imavatar": ("IMavatar", "2020", 100, 50),
                 "insta": ("INSTA", "2020", 300, 100), "nersemble": ("The NeRSemble benchmark", "2023", 300, 100)}


def tracked_with(run: TrackedRun, model) -> bool:
    """Whether ``run`` was tracked with ``model``: the same name, and the same file contents where
    the run recorded them (runs of earlier versions: the name alone)."""
    if model.name != run.model_name:
        return False
    if not run.model_fingerprint:
        return True
    from flame_tracker.model.embedding import fingerprint

    return fingerprint(model) == run.model_fingerprint


def check_same_model(run: TrackedRun, model) -> None:
    """:class:`ExportError` unless ``run`` was tracked with ``model`` (:func:`tracked_with`)."""
    if tracked_with(run, model):
        return
    if model.name != run.model_name:
        raise ExportError(f"{run.folder}: the run was tracked with model {run.model_name!r}, not {model.name!r}; "
                          "pass the same --model")
    raise ExportError(f"{run.folder}: the run was tracked with another file named {model.name!r} (its contents "
                      "differ; FLAME 2017-2020 all ship as generic_model.pkl): pass the --model file the run "
                      "was tracked with")


def check_flame(run: TrackedRun, model, fmt: str, version: str | None, n_shape: int, n_expr: int) -> None:
    """The run must have been tracked with ``model``, a FLAME model (``version``: ``"2020"`` or
    ``"2023"``, told by the file name) of at most ``n_shape``/``n_expr`` components."""
    check_same_model(run, model)
    check_flame_model(model, fmt, version, n_shape, n_expr)


def check_flame_model(model, fmt: str, version: str | None, n_shape: int, n_expr: int) -> None:
    """``model`` must be FLAME (``version``: ``"2020"`` or ``"2023"``, told by the file name) with
    at most ``n_shape``/``n_expr`` components: what ``fmt`` takes (checkable before tracking)."""
    pkl = {"2023": "flame2023.pkl", "2020": "generic_model.pkl"}.get(version or "", "generic_model.pkl")
    if not model.has_jaw_joint or model.n_verts != 5023:
        raise ExportError(f"{fmt} needs FLAME{' ' + version if version else ''}; this run was tracked with "
                          f"{model.name!r}: track it again (video or photos) with --model PATH/{pkl}")
    is_2023 = "2023" in model.name
    if version == "2023" and not is_2023:
        raise ExportError(f"{fmt} needs FLAME 2023 (flame2023.pkl or flame2023_Open.pkl); this run was tracked "
                          f"with {model.name!r}: track it again (video or photos) with --model .../flame2023.pkl")
    if version == "2023" and "no_jaw" in model.name.lower():
        raise ExportError(f"{fmt} reads flame2023.pkl, whose jaw rotates; this run was tracked with {model.name!r}, "
                          "the variant without it: track it again (video or photos) with --model .../flame2023.pkl")
    if version == "2020" and is_2023:
        raise ExportError(f"{fmt} needs FLAME 2020 (generic_model.pkl); this run was tracked with {model.name!r}: "
                          "track it again (video or photos) with --model .../generic_model.pkl (nothing is "
                          "converted between FLAME versions)")
    if model.n_shape > n_shape or model.n_expr > n_expr:
        raise ExportError(f"{model.name!r} has {model.n_shape} shape / {model.n_expr} expression components; "
                          f"{fmt} takes at most {n_shape} / {n_expr}: track with --shape-components "
                          f"{min(n_shape, model.n_shape)} --expr-components {min(n_expr, model.n_expr)} "
                          "(flame-tracker video or image)")


def pad(a: np.ndarray, n: int) -> np.ndarray:
    """``[T, k]`` zero-padded to ``[T, n]`` float32."""
    out = np.zeros((a.shape[0], n), np.float32)
    out[:, : a.shape[1]] = a
    return out


def posed_vertices(run: TrackedRun, model, rows=None) -> np.ndarray:
    """The fitted mesh of each frame in model space ``[T, V, 3]`` (the camera moves, the head is
    still): identity, expression, jaw, eyes."""
    import torch

    a = run.arrays
    rows = np.arange(run.n_frames) if rows is None else np.asarray(rows)
    dt = model.dtype
    with torch.no_grad():
        out = model(shape=torch.as_tensor(a["shape"][:1], dtype=dt), expr=torch.as_tensor(a["exp"][rows], dtype=dt),
                    jaw_pose=torch.as_tensor(a["jaw_pose"][rows], dtype=dt),
                    eye_pose=torch.as_tensor(a["eye_pose"][rows], dtype=dt),
                    neck_pose=torch.as_tensor(a["neck_pose"][rows], dtype=dt))
    return out.vertices.double().cpu().numpy()
