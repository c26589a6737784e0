"""Video tracking throughput per stage, end to end, and peak memory versus video length.

Runs ``track_video`` (open ICT model, landmark mode, no overlay) on every clip of the shared
``videos/`` folder, each in a fresh subprocess so its peak RSS is its own, and prints frames/s per
stage (decode, detect, identity, per-frame fit, smoothing, writing) and end to end (everything
``track_video`` does, in a warm process: the model is loaded and mediapipe imported before the clock
starts; the one-off import, ~1-2 s per process, is printed separately). Decoding runs in a background thread beside
MediaPipe, so its column is frames / time the detector *waited* for decoded frames. The machine's
load average is printed with the table (the CPU is shared: timings depend on it). Then ``talking_wojtek.mp4`` (512²)
is tracked with 100 and with 400 frames, with one detection thread each, to show that peak memory does not grow with
the video's length (frames stream through; the reference decodes every frame into RAM first); each further
detection thread (its own decoder and MediaPipe graphs, a constant) is printed apart.

``err px`` is the mean 68-landmark reprojection error (original pixels), ``jit deg`` the RMS pose
acceleration of the smoothed track (deg/frame², :func:`~flame_tracker.video.temporal.jitter_metrics`).

Last line: ``fps=<end-to-end fps on the 512² clip> peak_mb=<largest peak RSS>``.

Usage: ``python benchmarks/video.py [--frames N]`` (``--frames`` caps every clip, for a quick run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from flame_tracker.paths import data_dir

STAGES = ("decode_s", "detect_s", "identity_s", "fit_s", "smooth_s", "write_s")


def child(video: str, max_frames: int | None, threads: int | None = None) -> None:
    """Track one clip in this process and print its summary and peak RSS as JSON."""
    import resource
    import time

    from flame_tracker.model import load_model
    from flame_tracker.video.pipeline import VideoOptions, track_video

    model = load_model()
    t0 = time.perf_counter()
    from mediapipe.tasks.python import vision  # noqa: F401  (one-off per process, like torch's)

    import_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = track_video(video, Path(tmp) / "out", model=model, progress=False,
                              video_options=VideoOptions(max_frames=max_frames, detect_threads=threads))
        wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"summary": summary.as_dict(), "wall_s": wall, "peak_mb": peak_mb,
                      "import_s": import_s}))


def run_child(video: Path, max_frames: int | None, threads: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", str(video)]
    if max_frames:
        cmd += ["--frames", str(max_frames)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"tracking {video.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(name: str, res: dict) -> str:
    s = res["summary"]
    n = s["n_frames"]
    t = s["timings"]
    fps = [f"{n / t[k]:9.1f}" if t.get(k) else f"{'-':>9}" for k in STAGES]
    e2e = n / res["wall_s"]
    return (f"| {name:<22} | {n:5d} | " + " | ".join(fps)
            + f" | {e2e:8.2f} | {s['mean_reproj_px']:6.2f}"
            + f" | {s['jitter'].get('pose_acc_deg', float('nan')):8.3f} | {res['peak_mb']:7.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=None, help="cap on frames per clip")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.frames, args.threads)
        return

    videos = sorted((data_dir() / "videos").glob("*.mp4"))
    if not videos:
        raise SystemExit(f"no videos in {data_dir() / 'videos'} (set FLAME_TRACKER_DATA)")
    head = ("| clip                   | frames | " + " | ".join(f"{k[:-2] + ' fps':>9}" for k in STAGES)
            + " | e2e fps  | err px | jit deg  | peak MB |")
    print("Video tracking, open ICT model, landmark mode, CPU "
          "(frames/s per stage = frames / time in that stage; decode = waiting for the "
          "decode thread)\nload average at start (1/5/15 min): "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()) + f", {os.cpu_count()} CPUs\n")
    print(head)
    print("|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|")
    results = {}
    for v in videos:
        results[v.name] = run_child(v, args.frames)
        print(row(v.name, results[v.name]), flush=True)

    imports = [r["import_s"] for r in results.values()]
    print(f"\none-off mediapipe import per process (not in e2e): {min(imports):.2f}-"
          f"{max(imports):.2f} s")
    print("\nPeak memory versus video length (talking_wojtek.mp4, 512x512, one detection thread):\n")
    print("| frames | e2e fps | peak MB |")
    print("|--------|---------|---------|")
    lengths = [100, 400] if not args.frames else [max(args.frames // 4, 10), args.frames]
    mem = {}
    for n in lengths:
        res = run_child(data_dir() / "videos" / "talking_wojtek.mp4", n, threads=1)
        mem[n] = res
        fps_n = res["summary"]["n_frames"] / res["wall_s"]
        print(f"| {res['summary']['n_frames']:6d} | {fps_n:7.2f} | {res['peak_mb']:7.0f} |")
    growth = mem[lengths[1]]["peak_mb"] - mem[lengths[0]]["peak_mb"]
    print(f"\npeak RSS change from {lengths[0]} to {lengths[1]} frames: {growth:+.0f} MB")
    w = results["talking_wojtek.mp4"]
    one = mem[lengths[1]]
    if w["summary"]["n_frames"] == one["summary"]["n_frames"]:
        print(f"the same {lengths[1]} frames with the default detection threads: {w['peak_mb']:.0f} MB "
              f"({w['peak_mb'] - one['peak_mb']:+.0f} MB), {w['summary']['n_frames'] / w['wall_s']:.2f} fps "
              f"against {one['summary']['n_frames'] / one['wall_s']:.2f}")

    fps = w["summary"]["n_frames"] / w["wall_s"]
    peak = max(r["peak_mb"] for r in [*results.values(), *mem.values()])
    print(f"target: >= 20 fps end-to-end at 512^2 -> {'met' if fps >= 20 else 'NOT met'}"
          " (load average at end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + ")")
    print(f"fps={fps:.2f} peak_mb={peak:.0f}")


if __name__ == "__main__":
    main()
