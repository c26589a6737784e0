"""Run many videos and photos on Ray: a local Ray on this machine by default, a cluster when given.

One Ray task per video, photos in groups (one model load per group); a video longer than a worker's
share of the batch first has its landmark detection cut into parts, one task each (several workers
or machines detect one video; the landmarks are those of one run), before its own task fits it.
Every item writes its own
folder under the batch's output (``flame-tracker video``'s resumable run folder, or a photo's
``<name>.npz/.json/...``), so a re-run skips finished items and resumes unfinished videos. A failing
item (corrupt file, no face) is recorded with its error and the batch goes on; a worker that dies
is retried (``retries``); Ctrl-C leaves every finished item in place. At the end ``batch.json`` and
``batch.csv`` list each item's status, frames, frames/s, mean reprojection error and error.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flame_tracker.batch.items import Item, estimated_frames, group_images
from flame_tracker.errors import FlameTrackerError, first_line
from flame_tracker.io.results import save_json
from flame_tracker.video.store import PHOTO_CONFIG

STATUSES = ("done", "skipped", "failed", "interrupted")
COLUMNS = ("name", "input", "kind", "status", "frames", "fps", "mean_reproj_px", "seconds", "error")


class RayMissingError(FlameTrackerError, RuntimeError):
    """Ray is not installed (the message says how to install it)."""


def require_ray():
    """The ``ray`` module, or :class:`RayMissingError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise RayMissingError('flame-tracker batch runs on Ray, which is not installed: pip install '
                              '"flame-tracker[batch]" (or pip install ray)') from exc
    return ray


@dataclass
class BatchSummary:
    """What a batch did: one row per item (:data:`COLUMNS`) and the totals."""

    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    workers: int = 0
    address: str | None = None
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(r["status"] == s for r in self.rows) for s in STATUSES}

    @property
    def ok(self) -> bool:
        """Every item done (or already done before)."""
        return bool(self.rows) and all(r["status"] in ("done", "skipped") for r in self.rows)

    def earlier_rows(self) -> list[dict[str, Any]]:
        """The rows of items an earlier batch wrote into the same folder and this one did not name:
        those still there (their folder exists, or they had failed); items an interrupted batch never
        finished are not listed (nothing of theirs is done: their batch, run again, finishes them)."""
        try:
            info = json.loads((self.out_dir / "batch.json").read_text())
        except (OSError, ValueError):
            return []
        if not isinstance(info, dict):  # not a summary of ours
            return []
        names = {r["name"] for r in self.rows}
        out = []
        lists = [info.get(k) for k in ("earlier_items", "items")]
        for r in [r for rows in lists if isinstance(rows, list) for r in rows]:
            if not isinstance(r, dict) or not isinstance(r.get("name"), str) or r["name"] in names:
                continue
            if r.get("status") in ("done", "skipped") and not (self.out_dir / r["name"]).is_dir():
                continue  # its results were removed
            if r.get("status") == "interrupted":
                continue
            names.add(r["name"])
            out.append(r)
        return out

    def write(self) -> None:
        """``batch.json`` and ``batch.csv`` in the output folder (atomically). ``batch.json`` keeps
        this batch's items apart (``items``; ``counts`` are theirs) from the items earlier batches
        wrote into the folder (``earlier_items``); ``batch.csv`` lists them all, earlier ones first."""
        from flame_tracker.io.results import atomic_write, save_json

        earlier = self.earlier_rows()
        save_json(self.out_dir / "batch.json", {
            "counts": self.counts, "workers": self.workers, "address": self.address,
            "seconds": round(self.seconds, 3), "interrupted": self.interrupted, "items": self.rows,
            "earlier_items": earlier})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        # (no value: an empty cell, the same whether the row was made now or read back from batch.json)
        w.writerows([{k: "" if v is None or (isinstance(v, float) and v != v) else v for k, v in r.items()}
                     for r in earlier + self.rows])
        atomic_write(self.out_dir / "batch.csv", lambda p: p.write_text(buf.getvalue()))

    def text(self) -> str:
        c = self.counts
        lines = [f"{len(self.rows)} item(s): {c['done']} done, {c['skipped']} already done, {c['failed']} failed"
                 + (f", {c['interrupted']} not run (interrupted)" if c["interrupted"] else "")
                 + f" in {self.seconds:.1f} s on {self.workers} worker(s) -> {self.out_dir}"]
        lines += [f"failed: {r['input']}: {r['error']}" for r in self.rows if r["status"] == "failed"]
        return "\n".join(lines)


def _row(item: dict[str, Any], status: str, **kw: Any) -> dict[str, Any]:
    row = {"name": item["name"], "input": item["path"], "kind": item["kind"], "status": status, "frames": 0,
           "fps": float("nan"), "mean_reproj_px": float("nan"), "seconds": 0.0, "error": ""}
    row.update(kw)
    return row


#: In each item's folder: the numbers of the batch run that made it, which a later batch reports for
#: it as skipped (its own summary's time leaves out the batch's share: model loading, its parts)
ITEM_RECORD = "batch_item.json"
_RECORDED = ("frames", "fps", "mean_reproj_px", "seconds")


def _record(folder: Path, row: dict[str, Any]) -> dict[str, Any]:
    """Keep a done item's numbers in its folder (:data:`ITEM_RECORD`); returns ``row``."""
    try:
        save_json(folder / ITEM_RECORD, {"input": row["input"], **{k: row[k] for k in _RECORDED}})
    except OSError:  # (the numbers are a report: the item is done whatever happens to them)
        pass
    return row


def _recorded(folder: Path, item: dict[str, Any], **fallback: Any) -> dict[str, Any]:
    """The row of an item a batch finished before: its recorded numbers (:data:`ITEM_RECORD`) when
    they are of this input, else ``fallback``."""
    try:
        rec = json.loads((folder / ITEM_RECORD).read_text())
    except (OSError, ValueError):
        rec = None
    if isinstance(rec, dict) and rec.get("input") == item["path"]:
        fallback = {k: float("nan") if rec.get(k) is None else rec[k] for k in _RECORDED}
    return _row(item, "skipped", **fallback)


def _message(exc: BaseException) -> str:
    return first_line(exc)[:500]


# A Ray worker process runs many tasks: the head models and photo trackers it loaded are kept for
# the next task (a model load and MediaPipe's graphs cost ~0.5 s per task otherwise).
_MODELS: dict[str | None, Any] = {}
_TRACKERS: dict[tuple[str | None, str], Any] = {}


def _model(path: str | None):
    if path not in _MODELS:
        from flame_tracker.model import load_model

        _MODELS[path] = load_model(path)
    return _MODELS[path]


def _tracker(model: str | None, face: str):
    if (model, face) not in _TRACKERS:
        from flame_tracker.tracker import Tracker

        _TRACKERS[(model, face)] = Tracker(_model(model), face=face)
    return _TRACKERS[(model, face)]


def _video_options(o: dict[str, Any]):
    from flame_tracker.video.pipeline import VideoOptions

    return VideoOptions(start_s=o.get("start", 0.0), end_s=o.get("end"), fps=o.get("fps"),
                        every=o.get("every", 1), max_frames=o.get("max_frames"), face=o.get("face", "largest"))


def _video(item: dict[str, Any], out_dir: Path, force: bool, part_seconds: float = 0.0) -> dict[str, Any]:
    from flame_tracker.video.pipeline import track_video

    o = item["options"]
    t0 = time.perf_counter()
    folder = out_dir / item["name"]
    s = track_video(item["path"], folder, model=_model(o.get("model")), video_options=_video_options(o), force=force,
                    progress=False)
    seconds = time.perf_counter() - t0 + part_seconds  # (the parts of its detection included)
    if s.skipped:  # finished by an earlier run: its numbers
        info = json.loads((folder / "summary.json").read_text())
        frames, total = int(info.get("n_frames", 0)), float(info.get("timings", {}).get("total_s", 0.0))
        # (its numbers are those of the run that made it: its frames/s next to its own time)
        return _recorded(folder, item, frames=frames, fps=frames / total if total > 0 else float("nan"),
                         mean_reproj_px=info.get("mean_reproj_px", float("nan")), seconds=total)
    return _record(folder, _row(item, "done", frames=s.n_frames, fps=s.n_frames / max(seconds, 1e-9),
                                mean_reproj_px=s.mean_reproj_px, seconds=seconds))


def process(items: list[dict[str, Any]], out_dir: str, threads: int = 1, force: bool = False,
            parts: list[Any] | None = None) -> list[dict[str, Any]]:
    """Process one task's items (a video, or a group of photos) in this process; each item's
    failure is caught and returned as its row. What a Ray worker runs. ``parts``: the Ray tasks
    detecting parts of the video first (:func:`detect_part`), waited for here; one that failed, or
    whose worker died, leaves its blocks to this task."""
    import torch

    torch.set_num_threads(max(1, threads))
    out = Path(out_dir)
    part_seconds = 0.0
    if parts:
        ray = require_ray()
        for ref in parts:  # (a task waiting in ray.get gives its CPU back)
            try:
                part_seconds += float(ray.get(ref).get("seconds", 0.0))
            except Exception:  # noqa: BLE001  (its worker died: its blocks are detected below)
                pass
    rows: list[dict[str, Any]] = []
    for item in items:
        t0 = time.perf_counter()
        try:
            if item["kind"] == "video":
                rows.append(_video(item, out, force, part_seconds))
                continue
            tracker = _tracker(item["options"].get("model"), item["options"].get("face", "largest"))
            result = tracker.fit_image(item["path"])
            result.save(out / item["name"], item["name"], image=tracker.last_image)
            tracker.settings().save(out / item["name"] / PHOTO_CONFIG, ("image", "stage1", "stage2"))
            seconds = time.perf_counter() - t0
            rows.append(_record(out / item["name"], _row(item, "done", frames=1, fps=1.0 / max(seconds, 1e-9),
                                                         mean_reproj_px=float(result.reprojection_error_px),
                                                         seconds=seconds)))
        except Exception as exc:  # noqa: BLE001  (one bad item must not stop the others)
            rows.append(_row(item, "failed", error=_message(exc), seconds=time.perf_counter() - t0))
    return rows


def detect_part(item: dict[str, Any], out_dir: str, part: int, parts: int, threads: int = 1) -> dict[str, Any]:
    """Detect the landmarks of one part of a video's blocks into its run folder (what a Ray worker
    runs before the video's own task, which goes on from the stored blocks). Returns ``{"seconds":
    ..., "error": message or None}``: it never raises, as the video's task then detects what is
    missing and reports the error itself."""
    import torch

    from flame_tracker.video.pipeline import track_video

    torch.set_num_threads(max(1, threads))
    o = item["options"]
    t0 = time.perf_counter()
    try:
        track_video(item["path"], Path(out_dir) / item["name"], model=_model(o.get("model")),
                    video_options=_video_options(o), progress=False, detect_part=(part, parts))
    except Exception as exc:  # noqa: BLE001
        return {"seconds": time.perf_counter() - t0, "error": _message(exc)}
    return {"seconds": time.perf_counter() - t0, "error": None}


def _video_finished(item: Item, out_dir: Path) -> bool:
    """A video whose run folder says it is complete (a re-run skips it: no parts for it)."""
    try:
        from flame_tracker.video.store import MANIFEST

        return bool(json.loads((out_dir / item.name / MANIFEST).read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def detection_parts(frames: float, total: float, workers: int) -> int:
    """Parts a video's detection is cut into in a batch of ``total`` frames on ``workers`` workers:
    one, unless the video alone is more than 1.5 times a worker's share, then one per worker (at
    most one per detection block), so that a long video does not keep one worker busy while the
    others wait. (Just above a share, the other items keep the workers as busy and the parts' own
    start-up costs more than they save: measured on the shared clips, a video of 1.26 shares.)"""
    from flame_tracker.video.blocks import detect_block

    if workers < 2 or frames <= 1.5 * total / workers:
        return 1
    return int(max(1, min(workers, -(-int(frames) // detect_block(int(frames))))))


def _photo_done(item: Item, out_dir: Path) -> dict[str, Any] | None:
    """The row of a photo finished by an earlier run (its JSON, written last, exists and names it)."""
    js = out_dir / item.name / f"{item.name}.json"
    if not js.is_file():
        return None
    try:
        info = json.loads(js.read_text())
    except ValueError:
        return None
    try:  # the same photo (names come from stems: another input may now carry this name)
        same = Path(str(info.get("source", ""))).resolve() == Path(item.path).resolve()
    except OSError:
        same = False
    if not same:
        return None
    # its numbers from its summary (Result.summary): the error, and the fit's own time
    err = (info.get("reprojection_px") or {}).get("mean_68")
    total = sum(float(v) for v in (info.get("timings_s") or {}).values())
    return _recorded(out_dir / item.name, item.as_dict(), frames=1, fps=1.0 / total if total > 0 else float("nan"),
                     mean_reproj_px=float("nan") if err is None else float(err), seconds=total)


def _thread_env(threads: int) -> dict[str, str]:
    return {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def start_local_ray(workers: int, threads: int, *, verbose: bool = False) -> None:
    """Start a local Ray with ``workers`` CPUs whose worker processes use ``threads`` math threads each.

    The thread limit is put in this process's environment while Ray starts (its raylet and workers
    inherit it) rather than in a ``runtime_env``: workers with a runtime environment cannot be the
    ones Ray pre-starts, and starting them afterwards cost ~0.8 s per batch (measured on 2 cores).
    """
    ray = require_ray()
    env = _thread_env(threads)
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=verbose, logging_level="ERROR")
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_batch(items: list[Item], out_dir: str | Path, *, workers: int | None = None, address: str | None = None,
              photos_per_task: int = 16, retries: int = 2, force: bool = False, progress: bool = True,
              verbose: bool = False) -> BatchSummary:
    """Process ``items`` on Ray (see the module docstring). ``address``: ``None`` starts a local Ray
    with ``workers`` CPUs (default: all cores); ``"auto"`` or ``"ray://host:port"`` joins a cluster
    (``workers`` then limits nothing: the cluster's CPUs are used). Raises :class:`RayMissingError`."""
    from flame_tracker.progress import progress_bar

    ray = require_ray()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    workers = max(1, int(workers or cores))
    threads = max(1, cores // workers) if address is None else 1
    summary = BatchSummary(out, workers=workers, address=address)
    t_start = time.perf_counter()
    started = False
    if not ray.is_initialized():
        if address is None:
            start_local_ray(workers, threads, verbose=verbose)
        else:  # the cluster's workers get the thread limit through Ray's runtime environment
            ray.init(address=address, include_dashboard=False, log_to_driver=verbose, logging_level="ERROR",
                     runtime_env={"env_vars": _thread_env(threads)})
        started = True
    try:
        if address is not None:
            summary.workers = int(ray.cluster_resources().get("CPU", workers))
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        # finished photos are not sent again; videos resume (or skip) inside their task
        rows: dict[str, dict[str, Any]] = {}
        todo = []
        for it in items:
            done = None if force or it.kind != "image" else _photo_done(it, out)
            if done is not None:
                rows[it.name] = done
            else:
                todo.append(it)
        remote = ray.remote(process).options(num_cpus=1, num_gpus=min(1.0, gpus / workers) if gpus else 0,
                                             max_retries=retries, retry_exceptions=False)
        part_remote = ray.remote(detect_part).options(num_cpus=1, max_retries=retries, retry_exceptions=False)
        frames = {it.name: estimated_frames(it) for it in todo}
        finished = {it.name for it in todo if it.kind == "video" and not force and _video_finished(it, out)}
        total = sum(v for k, v in frames.items() if k not in finished)
        pending = {}
        for task in group_images(todo, photos_per_task, frames):
            it = task[0]
            # a long video: its detection parts first, on any worker; its own task waits for them
            k = detection_parts(frames[it.name], total, summary.workers) \
                if it.kind == "video" and not force and it.name not in finished else 1
            # (in a list, so that Ray does not wait for them itself: a part whose worker died
            # would then fail the video instead of leaving its blocks to the video's task)
            parts = [part_remote.remote(it.as_dict(), str(out.resolve()), i, k, threads) for i in range(k)] \
                if k > 1 else None
            ref = remote.remote([it.as_dict() for it in task], str(out.resolve()), threads, force, parts)
            pending[ref] = task
        bar = progress_bar(total=len(items), initial=len(rows), desc="batch", unit="item", disable=not progress,
                           dynamic_ncols=True)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    task = pending[ref]
                    try:
                        got = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001  (a worker that died after its retries)
                        got = [_row(it.as_dict(), "failed", error=f"worker failed: {_message(exc)}") for it in task]
                    del pending[ref]  # only now: Ctrl-C inside ray.get leaves the task "interrupted"
                    for r in got:
                        rows[r["name"]] = r
                    bar.update(len(got))
                    failed = sum(r["status"] == "failed" for r in rows.values())
                    bar.set_postfix(done=len(rows) - failed, failed=failed, running=min(len(pending), summary.workers),
                                    refresh=False)  # (drawn with the next refresh: a log gets one line per 15 s)
        except KeyboardInterrupt:
            # the unfinished tasks end with Ray's shutdown below (a forced ray.cancel raced with
            # replies already on their way and crashed Ray's core worker: "task that was not pending")
            summary.interrupted = True
            for task in pending.values():
                for it in task:
                    rows.setdefault(it.name, _row(it.as_dict(), "interrupted", error="interrupted before it ran"))
        finally:
            bar.close()
        summary.rows = [rows[it.name] for it in items if it.name in rows]
    finally:
        if started:
            ray.shutdown()
        summary.seconds = time.perf_counter() - t_start
        if summary.rows:
            summary.write()
    return summary


__all__ = ["COLUMNS", "STATUSES", "BatchSummary", "RayMissingError", "detect_part", "detection_parts", "process",
           "require_ray", "run_batch", "start_local_ray"]
