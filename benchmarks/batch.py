"""Batch throughput on Ray: the same set of videos and photos with 1 and 2 workers, in one run.

The set: the three shared clips (all frames, or ``--frames`` of each through a JSON-lines manifest)
and the shared photos (12), photos 3 per task, so the batch has 7 tasks. Each configuration runs in
a fresh output folder with a fresh local Ray of N CPUs (started here, timed apart: Ray's start-up
is included in the speed-up, as a user sees it, and also shown without). Then the same set once more on the
same Ray, into another folder: its workers have already imported torch and MediaPipe and loaded the model
("warm"), as they have for every item but the first few of a large batch. Prints a table (items/min,
frames/s, seconds) and ``batch_speedup_2w=… batch_speedup_2w_warm=…`` (2-worker over 1-worker
throughput, first run / warm run; target ≥ 1.6 on this 2-core machine for the first).

Each task runs in one worker, so a 2-worker run cannot end before Ray's start, the workers'
start-up and its longest task: ``bound_2w`` is the 1-worker time over that sum (with the shared
set, the 16-s ``talking_wojtek.mp4`` is two thirds of the video work). A second set is what
datasets look like, many short clips: the shared clips cut into ``--clip-seconds`` items through a
manifest's start/end, with the same photos (``batch_speedup_2w_short_clips…``).

Usage: ``python benchmarks/batch.py [--frames N] [--photos-per-task 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from flame_tracker.batch import collect_items, run_batch, start_local_ray
from flame_tracker.paths import data_dir


def one_set(label: str, items: list, out: Path, photos_per_task: int) -> dict[str, float]:
    """Run ``items`` with 1 and 2 workers (first and warm run each), print the table, return the numbers."""
    import ray

    from flame_tracker.batch.items import group_images

    rows = []
    for workers in (1, 2):
        t0 = time.perf_counter()
        start_local_ray(workers, max(1, (os.cpu_count() or 1) // workers))  # as run_batch starts it
        t1 = time.perf_counter()
        try:
            s = run_batch(items, out / f"out{workers}", workers=workers, photos_per_task=photos_per_task,
                          progress=False)
            dt = time.perf_counter() - t0  # Ray's start and the batch (Ray's shutdown is not counted)
            if not s.ok:
                raise SystemExit(f"batch with {workers} worker(s) failed:\n{s.text()}")
            t2 = time.perf_counter()
            s_warm = run_batch(items, out / f"warm{workers}", workers=workers, photos_per_task=photos_per_task,
                               progress=False)
            warm = time.perf_counter() - t2
            if not s_warm.ok:
                raise SystemExit(f"batch with {workers} worker(s) failed on the warm run:\n{s_warm.text()}")
        finally:
            ray.shutdown()
        frames = sum(r["frames"] for r in s.rows)
        secs = {r["name"]: float(r["seconds"]) for r in s_warm.rows}
        # the longest task, timed in the warm run: a task (one video, or a group of photos) runs in one
        # worker, so the 2-worker batch cannot end before it
        longest = max(sum(secs[it.name] for it in task) for task in group_images(items, photos_per_task))
        rows.append((workers, len(items), frames, dt, t1 - t0, warm, longest))
    print(f"\n{label}: {len(items)} items, {len(group_images(items, photos_per_task))} tasks, local Ray")
    print(f"{'workers':>7} {'items':>6} {'frames':>7} {'seconds':>8} {'Ray start':>9} "
          f"{'items/min':>10} {'frames/s':>9} {'warm s':>7} {'warm items/min':>14} {'longest task s':>15}")
    for w, n, f, dt, st, wm, lt in rows:
        print(f"{w:7d} {n:6d} {f:7d} {dt:8.1f} {st:9.1f} {60 * n / dt:10.1f} {f / dt:9.1f} "
              f"{wm:7.1f} {60 * n / wm:14.1f} {lt:15.1f}")
    work = [dt - st for *_, dt, st, _, _ in rows]
    startup = [work[0] - rows[0][5], work[1] - rows[1][5]]  # the workers' own start-up (imports, model)
    # the best a 2-worker run can do: Ray's and the workers' start-up, then the longest task alone
    bound = rows[0][3] / (rows[1][4] + startup[1] + rows[0][6])
    print(f"without Ray's start-up: speed-up {work[0] / work[1]:.2f}; the workers' own start-up: "
          f"{startup[0]:.1f} s with 1 worker, {startup[1]:.1f} s with 2; bound for 2 workers (start-ups + the "
          f"longest task): {bound:.2f}")
    return {"speedup": rows[0][3] / rows[1][3], "warm": rows[0][5] / rows[1][5], "bound": bound}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (default: all)")
    ap.add_argument("--photos-per-task", type=int, default=3)
    ap.add_argument("--clip-seconds", type=float, default=2.0,
                    help="length of the items of the second set (the shared clips cut into short clips)")
    args = ap.parse_args()
    from flame_tracker.video.decode import probe

    root = data_dir()
    with tempfile.TemporaryDirectory() as tmp:
        videos = sorted((root / "videos").glob("*.mp4"))
        manifest = Path(tmp) / "clips.jsonl"
        manifest.write_text("".join(json.dumps({"path": str(p), **({"max_frames": args.frames} if args.frames else {})})
                                    + "\n" for p in videos))
        photos = sorted((root / "images").glob("*.png")) + sorted((root / "images").glob("*.jpg"))
        photos += sorted((root / "images" / "gt68").glob("*.png"))
        # a dataset of short clips, as avatar and animation datasets are: each shared clip cut into
        # --clip-seconds items (manifest start/end), with the same photos
        cuts = Path(tmp) / "cuts.jsonl"
        lines = []
        for p in videos:
            dur, t, k = probe(p).duration_s, 0.0, 0
            while t < dur - 1e-6:
                end = min(t + args.clip_seconds, dur)
                lines.append(json.dumps({"path": str(p), "name": f"{p.stem}_{k:02d}", "start": t, "end": end}))
                t, k = end, k + 1
        cuts.write_text("".join(line + "\n" for line in lines))
        whole = one_set(f"The shared clips whole ({args.frames or 'all'} frames each) and {len(photos)} photos, "
                        f"{args.photos_per_task} per task", collect_items([manifest, *photos]), Path(tmp) / "whole",
                        args.photos_per_task)
        short = one_set(f"The shared clips cut into {args.clip_seconds:g}-s items and the same photos",
                        collect_items([cuts, *photos]), Path(tmp) / "short", args.photos_per_task)
    print(f"batch_speedup_2w={whole['speedup']:.2f} batch_speedup_2w_warm={whole['warm']:.2f} "
          f"bound_2w={whole['bound']:.2f} batch_speedup_2w_short_clips={short['speedup']:.2f} "
          f"batch_speedup_2w_short_clips_warm={short['warm']:.2f}")


if __name__ == "__main__":
    main()
