"""Batch throughput on Ray: the same set of videos and photos with 1 and 2 workers, in one run.

The set: the three shared clips (all frames, or ``--frames`` of each through a JSON-lines manifest)
and the shared photos (12), photos 3 per task, so the batch has 7 tasks. Each configuration runs in
a fresh output folder with a fresh local Ray of N CPUs (started here, timed apart: Ray's start-up
is included in the speed-up, as a user sees it, and also shown without). Then the same set once more on the
same Ray, into another folder: its workers have already imported torch and MediaPipe and loaded the model
("warm"), as they have for every item but the first few of a large batch. Prints a table (items/min,
frames/s, seconds) and ``batch_speedup_2w=… batch_speedup_2w_warm=…`` (2-worker over 1-worker
throughput, first run / warm run; target ≥ 1.6 on this 2-core machine for the first).

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (default: all)")
    ap.add_argument("--photos-per-task", type=int, default=3)
    args = ap.parse_args()
    root = data_dir()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "clips.jsonl"
        manifest.write_text("".join(json.dumps({"path": str(p), **({"max_frames": args.frames} if args.frames else {})})
                                    + "\n"
                                    for p in sorted((root / "videos").glob("*.mp4"))))
        photos = sorted((root / "images").glob("*.png")) + sorted((root / "images").glob("*.jpg"))
        photos += sorted((root / "images" / "gt68").glob("*.png"))
        items = collect_items([manifest, *photos])
        rows = []
        for workers in (1, 2):
            import ray

            t0 = time.perf_counter()
            start_local_ray(workers, max(1, (os.cpu_count() or 1) // workers))  # as run_batch starts it
            t1 = time.perf_counter()
            try:
                s = run_batch(items, Path(tmp) / f"out{workers}", workers=workers,
                              photos_per_task=args.photos_per_task, progress=False)
                dt = time.perf_counter() - t0  # Ray's start and the batch (Ray's shutdown is not counted)
                if not s.ok:
                    raise SystemExit(f"batch with {workers} worker(s) failed:\n{s.text()}")
                t2 = time.perf_counter()
                s_warm = run_batch(items, Path(tmp) / f"warm{workers}", workers=workers,
                                   photos_per_task=args.photos_per_task, progress=False)
                warm = time.perf_counter() - t2
                if not s_warm.ok:
                    raise SystemExit(f"batch with {workers} worker(s) failed on the warm run:\n{s_warm.text()}")
            finally:
                ray.shutdown()
            startup = t1 - t0
            frames = sum(r["frames"] for r in s.rows)
            rows.append((workers, len(items), frames, dt, startup, warm))
    print(f"Batch of {len(items)} items ({sum(i.kind == 'video' for i in items)} clips, {args.frames or 'all'} frames, "
          f"{sum(i.kind == 'image' for i in items)} photos, {args.photos_per_task} photos per task), local Ray")
    print(f"{'workers':>7} {'items':>6} {'frames':>7} {'seconds':>8} {'Ray start':>9} "
          f"{'items/min':>10} {'frames/s':>9} {'warm s':>7} {'warm items/min':>14}")
    for w, n, f, dt, st, wm in rows:
        print(f"{w:7d} {n:6d} {f:7d} {dt:8.1f} {st:9.1f} {60 * n / dt:10.1f} {f / dt:9.1f} "
              f"{wm:7.1f} {60 * n / wm:14.1f}")
    work = [dt - st for *_, dt, st, _ in rows]
    print(f"without Ray's start-up: speed-up {work[0] / work[1]:.2f}; the workers' own start-up (imports, model): "
          f"{work[0] - rows[0][5]:.1f} s with 1 worker, {work[1] - rows[1][5]:.1f} s with 2")
    print(f"batch_speedup_2w={rows[0][3] / rows[1][3]:.2f} batch_speedup_2w_warm={rows[0][5] / rows[1][5]:.2f}")


if __name__ == "__main__":
    main()
