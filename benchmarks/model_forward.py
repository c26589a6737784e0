"""Head-model forward time: full mesh vs the landmark-only fast path.

Models: a FLAME-sized synthetic FLAME model (5,023 vertices, 300 shape + 100 expression, pose
correctives; written by ``flame_tracker.model.fixtures``) and the open ICT-FaceKit model
(14,388 vertices, 100 + 57) from the data folder. Batches 1, 16 and 256; float32; no autograd;
random parameters; fastest of as many calls as fit in ~1 s per row (``timing.fastest``). Also: model
load time from the npz cache.

Run: ``python benchmarks/model_forward.py [--repeats N] [--threads T]``. The last line is the summary
``landmark_speedup_b16=<x>`` (the smaller speed-up of the two models at batch 16).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from timing import fastest

from flame_tracker.model import HeadModel, load_model
from flame_tracker.model.fixtures import write_flame_model


def _params(m: HeadModel, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return dict(shape=torch.randn(n, m.n_shape, generator=g), expr=0.5 * torch.rand(n, m.n_expr, generator=g),
                head_pose=0.2 * torch.randn(n, 3, generator=g), jaw_pose=0.1 * torch.randn(n, 3, generator=g),
                eye_pose=0.1 * torch.randn(n, 6, generator=g))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5000,
                    help="max timed calls per row (each row samples for about 1 s)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's own). On a CPU shared by several "
                         "busy processes, 1 avoids thread-pool stalls that swamp sub-millisecond calls")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        pkl = write_flame_model(Path(tmp), "flame")
        load_model(pkl)  # first conversion fills the cache
        t0 = time.perf_counter()
        flame = load_model(pkl)
        flame_load = time.perf_counter() - t0
    load_model()
    t0 = time.perf_counter()
    ict = load_model()
    ict_load = time.perf_counter() - t0

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, float32, no autograd, best of repeats")
    print(f"cached load: FLAME-sized {flame_load * 1e3:.0f} ms, ICT {ict_load * 1e3:.0f} ms")
    header = f"{'model':<14}{'verts':>7}{'lmk verts':>10}{'batch':>7}{'full ms':>10}{'landmark ms':>13}{'speed-up':>10}"
    print(header)
    print("-" * len(header))
    speedup_b16 = []
    with torch.no_grad():
        for label, m in (("FLAME-sized", flame), ("ICT-FaceKit", ict)):
            for n in (1, 16, 256):
                p = _params(m, n)
                # each row samples for ~1 s, so the sub-ms landmark rows get the same sampling time
                full = fastest(lambda: m(**p), args.repeats, warmup=True, budget_s=1.0)[0]
                fast = fastest(lambda: m.landmarks(**p), args.repeats, warmup=True, budget_s=1.0)[0]
                print(f"{label:<14}{m.n_verts:>7}{m.n_sub:>10}{n:>7}{full * 1e3:>10.3f}"
                      f"{fast * 1e3:>13.3f}{full / fast:>9.1f}x")
                if n == 16:
                    speedup_b16.append(full / fast)
    print(f"landmark_speedup_b16={min(speedup_b16):.1f}")


if __name__ == "__main__":
    main()
