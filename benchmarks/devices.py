"""CPU versus CUDA on the same workloads, in one run (the CUDA column appears where torch sees a GPU).

Workloads, open ICT-FaceKit model, float32 unless said:
* model forward, full mesh and the landmark-only path, batch 16 and 256 (no autograd);
* stage 1 on 128 synthetic frames (yaw up to 60°, 0.5 px noise, float64 as in ``stage1.py``): the
  reference's Adam loop (1500 iterations, float32, as the reference runs it) and our LM solver;
* the photometric fit in tracking mode (texture fixed), 8 frames at 256² (``photometric.scene``);
* ``Tracker.fit_image`` on the shared photos, detection included (MediaPipe runs on the CPU either way);
* ``track_video`` in landmark mode on ``talking_wojtek.mp4`` (400 frames), the model on the device.

Each cell is the fastest of ``--repeats`` runs after a warm-up (CUDA is synchronised before the clock
stops). A workload that fails on a device prints its error in that cell and the run goes on.
The headline is the reference's stage 1 on the GPU against ours on the CPU, in the same run:
``ref_adam_gpu_over_lm_cpu`` (how many times faster our CPU solver is than the reference solver on
the GPU). Last line: ``ref_adam_gpu_over_lm_cpu=… photometric_s_per_frame_cpu=… …_cuda=…``.

Run: ``python benchmarks/devices.py [--repeats N] [--skip NAME …]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flame_tracker.paths import data_dir


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: torch.device, repeats: int) -> float:
    """Fastest wall time (s) of ``repeats`` calls after one warm-up call, CUDA synchronised."""
    fn()
    _sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return best


def workloads(dev: torch.device, repeats: int, skip: set[str]) -> dict[str, float | str]:
    """Seconds per workload on ``dev`` (or the error, as text)."""
    from photometric import scene

    from flame_tracker.fitting import fit_camera, make_synthetic
    from flame_tracker.fitting.photometric import fit_photometric
    from flame_tracker.model import load_model

    model_cpu = load_model()
    model = load_model(device=dev)
    out: dict[str, float | str] = {}

    def run(name: str, fn: Callable[[], Any], reps: int = repeats) -> None:
        if name in skip:
            return
        try:
            out[name] = timed(fn, dev, reps)
        except Exception as e:  # noqa: BLE001  (a table cell, not a crash: the other workloads still run)
            out[name] = f"{type(e).__name__}: {e}"[:60]
            traceback.print_exc()

    g = torch.Generator().manual_seed(0)
    for n in (16, 256):
        p = {"shape": torch.randn(n, model.n_shape, generator=g),
             "expr": 0.5 * torch.rand(n, model.n_expr, generator=g),
             "head_pose": 0.2 * torch.randn(n, 3, generator=g), "jaw_pose": 0.1 * torch.randn(n, 3, generator=g)}
        p = {k: v.to(dev) for k, v in p.items()}
        with torch.no_grad():
            run(f"forward full b{n}", lambda p=p: model(**p))
            run(f"forward landmarks b{n}", lambda p=p: model.landmarks(**p))

    model64 = load_model(dtype=torch.float64)
    b = make_synthetic(model64, 128, seed=128, yaw_deg=60.0, pitch_deg=10.0, roll_deg=5.0, noise_px=0.5)
    pts, tg = b.points3d.to(dev), b.targets_ndc.to(dev)
    run("stage 1 reference Adam, 128 frames", lambda: fit_camera(pts.float(), tg.float(), solver="adam"), 1)
    run("stage 1 LM, 128 frames", lambda: fit_camera(pts, tg))

    s = scene(model_cpu, 8, 256)
    mv = {k: s[k].to(dev) for k in ("albedo", "lmk", "pose0", "fov", "iris", "expr0")}
    run("photometric tracking, 8 frames", lambda: fit_photometric(
        model, s["image"], mv["lmk"], mv["pose0"], mv["fov"], init={"expr": mv["expr0"]}, iris_ndc=mv["iris"],
        temporal=True, albedo=mv["albedo"]), 1)

    if "images" not in skip:
        from flame_tracker.tracker import Tracker

        photos = sorted((data_dir() / "images").glob("ffhq_*.png"))
        try:
            with Tracker(model=model, device=dev) as tracker:
                run(f"fit_image x{len(photos)} photos", lambda: [tracker.fit_image(p) for p in photos], 1)
        except Exception as e:  # noqa: BLE001
            out[f"fit_image x{len(photos)} photos"] = f"{type(e).__name__}: {e}"[:60]
            traceback.print_exc()

    if "video" not in skip:
        from flame_tracker.video.pipeline import VideoOptions, track_video

        clip = data_dir() / "videos" / "talking_wojtek.mp4"

        def video() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                track_video(clip, Path(tmp) / "run", model=model, progress=False,
                            video_options=VideoOptions(overlay=False))

        run("track_video wojtek (400 frames)", video, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], help="workload groups to leave out: images, video")
    args = ap.parse_args()
    devs = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, GPU: {gpu}")
    res = {d.type: workloads(d, args.repeats, set(args.skip)) for d in devs}
    names = list(res["cpu"])
    w = max(len(n) for n in names)
    print(f"\n| {'workload':<{w}} | cpu s | cuda s | cpu / cuda |")
    print(f"|{'-' * (w + 2)}|---|---|---|")
    for n in names:
        c, g = res["cpu"].get(n), res.get("cuda", {}).get(n)
        cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
        ratio = f"{c / g:.1f}" if isinstance(c, float) and isinstance(g, float) else ""
        print(f"| {n:<{w}} | {cell(c)} | {cell(g) if g is not None else ''} | {ratio} |")
    lm_cpu = res["cpu"].get("stage 1 LM, 128 frames")
    adam = res.get("cuda", res["cpu"]).get("stage 1 reference Adam, 128 frames")
    photo = "photometric tracking, 8 frames"
    head = ""
    if isinstance(lm_cpu, float) and isinstance(adam, float):
        head += f"ref_adam_{'gpu' if 'cuda' in res else 'cpu'}_over_lm_cpu={adam / lm_cpu:.1f} "
    for d in res:
        v = res[d].get(photo)
        if isinstance(v, float):
            head += f"photometric_s_per_frame_{d}={v / 8:.3f} "
    print(head.strip())


if __name__ == "__main__":
    main()
