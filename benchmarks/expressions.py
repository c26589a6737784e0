"""Expression weights that mean what they say: synthetic truth, real clips, conditioning.

1. **Synthetic truth** (the scenes of ``benchmarks/accuracy.py``, full pipeline): ``expr_mae`` =
   mean |fitted − true| ICT weight over all channels and detected scenes; ``neutral_max`` = the
   largest fitted weight on the neutral faces.
2. **Real clips** (every 3rd frame of each shared video fitted as a single photo): per-channel
   correlation over time with MediaPipe's own ARKit scores for the channels MediaPipe gets right
   (jawOpen, eyeBlink L/R, mouthSmile L/R, mouthPucker, mouthFunnel, browInnerUp); ``mp_corr`` is the
   median over all clips and channels; ``spurious_channels`` counts channels (over all clips) with a
   fitted mean above 0.3 where MediaPipe's mean is below 0.1; saturated = channels at ≥ 0.99.
3. **Conditioning:** each frame refitted with 0.5 px Gaussian noise on its landmarks; the median
   over frames of the largest weight change.

``--baseline`` measures the previous pipeline (crop-centred camera, ICT's own 68 points, the
reference's 0.025·Σexp² prior, no sparsity, prior centred at zero).

Last line: ``expr_mae=… neutral_max=… mp_corr=… spurious_channels=… noise_delta=… reproj_px=…``

Usage: ``python benchmarks/expressions.py [--n 48] [--every 3] [--baseline]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from flame_tracker.evaluation.metrics import face_region_mask
from flame_tracker.evaluation.runs import clip_expressions, evaluate_scene, summarise
from flame_tracker.evaluation.scenes import sample_scenes
from flame_tracker.fitting.stage2 import REFERENCE_PRIORS, Stage2Options
from flame_tracker.paths import data_dir
from flame_tracker.tracker import Tracker


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="synthetic scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=3, help="fit every N-th frame of each clip")
    ap.add_argument("--mesh-depth", type=float, default=None,
                    help="Tracker mesh_depth (default: the Tracker's; 0 = the landmark fit's rotation)")
    ap.add_argument("--baseline", action="store_true", help="measure the previous pipeline")
    args = ap.parse_args()

    t0 = time.perf_counter()
    kw = dict(principal_point="crop", image_fov=None, landmark_embedding="model", expr_prior="zero",
              mesh_depth=0.0, stage2=Stage2Options(w_contour=200.0, **REFERENCE_PRIORS)) if args.baseline else {}
    if args.mesh_depth is not None and not args.baseline:
        kw["mesh_depth"] = args.mesh_depth
    with Tracker(**kw) as tracker:
        names = list(tracker.model.expr_names or [])
        if not names:
            raise SystemExit("expressions.py needs a model with named (ARKit) expressions, e.g. ICT")
        mask = face_region_mask(tracker.model)
        evals = [evaluate_scene(tracker, s, mask) for s in sample_scenes(tracker.model, args.n, seed=args.seed)]
        syn = summarise(evals)["all"]
        print(f"Synthetic scenes ({int(syn['detected'])}/{args.n} detected): expr_mae {syn['expr_mae']:.3f}, "
              f"largest weight on a neutral face {syn['neutral_max']:.3f}")

        print("\nReal clips (single-photo fits of every "
              f"{args.every}rd frame): correlation with MediaPipe's scores per channel")
        clips = [clip_expressions(tracker, v, every=args.every)
                 for v in sorted((data_dir() / "videos").glob("*.mp4"))]
        channels = None
        all_corr, spurious, deltas, reproj = [], [], [], []
        for c in clips:
            corr = c.correlations(names)
            if channels is None:
                channels = list(corr)
                print(f"{'clip':<16}{'frames':>7}" + "".join(f"{ch[:11]:>12}" for ch in channels)
                      + f"{'median':>8}{'spurious':>9}{'saturated':>10}{'noise Δ':>9}{'reproj':>8}")
            sp = c.spurious(names)
            sat = float((c.expr >= 0.99).sum(1).mean())
            all_corr += list(corr.values())
            spurious += [f"{c.name}:{s}" for s in sp]
            deltas.append(c.noisy_delta)
            reproj.append(c.reproj_px)
            print(f"{c.name:<16}{len(c.expr):>7}" + "".join(f"{corr[ch]:>12.2f}" for ch in channels)
                  + f"{np.median(list(corr.values())):>8.2f}{len(sp):>9}{sat:>10.1f}"
                  + f"{np.median(c.noisy_delta):>9.3f}{c.reproj_px.mean():>8.2f}")
        if spurious:
            print("spurious:", ", ".join(spurious))
    mp_corr = float(np.median(all_corr))
    delta = float(np.median(np.concatenate(deltas)))
    rep = float(np.mean(np.concatenate(reproj)))
    print(f"\n({time.perf_counter() - t0:.0f} s)")
    print(f"expr_mae={syn['expr_mae']:.3f} neutral_max={syn['neutral_max']:.3f} mp_corr={mp_corr:.3f} "
          f"spurious_channels={len(spurious)} noise_delta={delta:.3f} reproj_px={rep:.3f}")


if __name__ == "__main__":
    main()
