"""Landmark detection throughput and 68-point accuracy.

Prints a table of frames/s for MediaPipe IMAGE and VIDEO mode on 512² frames
(``talking_wojtek.mp4``) and 1080p frames (``talking_ex1.mp4`` scaled to 1080 px high and padded to
1920×1080), one detector run per frame (the reference runs it three times: original, 512 and 256
images; a row reproduces that for comparison), then the inter-ocular NME of the 68 points on the
hand-annotated 300-W image (and its mirror image) for the reference and the default ("improved")
68-point tables. Frames are decoded before timing; the first call (graph warm-up) is not timed.
Last line: ``fps_video_512=<x> nme_300w=<NME>``.

Usage: ``python benchmarks/detection.py [--frames N]``
"""

from __future__ import annotations

import argparse
import time
from itertools import islice

import av
import cv2
import numpy as np

from flame_tracker.detection import GROUPS68, FaceLandmarker, mediapipe_to_dlib68, read_pts
from flame_tracker.io.images import load_image
from flame_tracker.paths import data_file


def read_frames(name: str, n: int) -> list[np.ndarray]:
    """First ``n`` frames of a shared video as RGB arrays."""
    with av.open(str(data_file("videos", name))) as c:
        return [f.to_ndarray(format="rgb24") for f in islice(c.decode(video=0), n)]


def to_1080p(frame: np.ndarray) -> np.ndarray:
    """Scale to 1080 px high and pad (edge colours) to 1920×1080, keeping the aspect ratio."""
    h, w = frame.shape[:2]
    nw = round(w * 1080 / h)
    big = cv2.resize(frame, (nw, 1080), interpolation=cv2.INTER_LINEAR)
    left = (1920 - nw) // 2
    return cv2.copyMakeBorder(big, 0, 0, left, 1920 - nw - left, cv2.BORDER_REPLICATE)


def run(lm: FaceLandmarker, frames: list[np.ndarray], video: bool, step_ms: int) -> tuple[float, float]:
    """Return (frames/s, fraction of frames with a face); the first frame warms the graph up."""
    lm.detect(frames[0], timestamp_ms=0 if video else None)
    found = 0
    t0 = time.perf_counter()
    for i, f in enumerate(frames[1:], start=1):
        found += lm.detect(f, timestamp_ms=i * step_ms if video else None) is not None
    dt = time.perf_counter() - t0
    return (len(frames) - 1) / dt, found / (len(frames) - 1)


def run_reference_style(lm: FaceLandmarker, frames: list[np.ndarray]) -> tuple[float, float]:
    """The reference's per-frame work: detect on the original, a 512² and a 256² image."""

    def small(f: np.ndarray, side: int) -> np.ndarray:
        return cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA)

    lm.detect(frames[0])
    found = 0
    t0 = time.perf_counter()
    for f in frames[1:]:
        ok = lm.detect(f) is not None
        ok &= lm.detect(small(f, 512)) is not None
        ok &= lm.detect(small(f, 256)) is not None
        found += ok
    return (len(frames) - 1) / (time.perf_counter() - t0), found / (len(frames) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100, help="frames per row (default 100)")
    args = ap.parse_args()
    n = max(2, args.frames)

    f512 = read_frames("talking_wojtek.mp4", n)  # 512×512, 25 fps
    f1080 = [to_1080p(f) for f in read_frames("talking_ex1.mp4", n)]
    step_512, step_1080 = 40, 33

    rows = []
    for label, frames, step in (("512x512", f512, step_512), ("1920x1080", f1080, step_1080)):
        with FaceLandmarker(mode="image") as lm:
            rows.append((label, "IMAGE", "max_faces=4, largest", *run(lm, frames, False, step)))
        with FaceLandmarker(mode="image", max_faces=1) as lm:
            rows.append((label, "IMAGE", "max_faces=1", *run(lm, frames, False, step)))
        with FaceLandmarker(mode="video") as lm:
            rows.append((label, "VIDEO", "tracking", *run(lm, frames, True, step)))
    with FaceLandmarker(mode="video", max_side=960) as lm:
        rows.append(("1920x1080", "VIDEO", "downscaled to 960 for detection", *run(lm, f1080, True, step_1080)))
    with FaceLandmarker(mode="image", max_faces=1) as lm:
        rows.append(("512x512", "IMAGE x3", "reference style (orig+512+256)", *run_reference_style(lm, f512)))

    print(f"Detection throughput ({n - 1} timed frames per row, one detector run per frame)")
    print(f"{'frames':<10} {'mode':<9} {'setting':<33} {'fps':>8} {'ms/frame':>9} {'found':>6}")
    for label, mode, setting, fps, found in rows:
        print(f"{label:<10} {mode:<9} {setting:<33} {fps:8.1f} {1000 / fps:9.2f} {found:6.0%}")

    img = load_image(data_file("images", "300w_image_0010.png"))
    gt = read_pts(str(data_file("images", "300w_image_0010.pts")))
    # Mirror check: the flipped image with the flipped, re-labelled ground truth.
    perm = np.r_[16:-1:-1, 26:16:-1, 27:31, 35:30:-1, 45:41:-1, 47:45:-1, 39:35:-1, 41:39:-1,
                 54:47:-1, 59:54:-1, 64:59:-1, 67:64:-1]
    gt_m = gt[perm] * (-1, 1) + (img.shape[1], 0)
    with FaceLandmarker() as lm:
        dets = [lm.detect(img), lm.detect(np.ascontiguousarray(img[:, ::-1]))]
    if any(d is None for d in dets):
        raise SystemExit("no face found in 300w_image_0010.png")
    print()
    print("68-point accuracy on 300w_image_0010 (NME = mean error / outer-eye-corner distance;")
    print("'mirror' = the horizontally flipped image, a second MediaPipe run)")
    cols = [(t, name, d.points478[:, :2], g) for t in ("reference", "improved")
            for name, d, g in (("orig", dets[0], gt), ("mirror", dets[1], gt_m))]
    errs = {}
    for t, name, pts, g in cols:
        errs[t, name] = np.linalg.norm(mediapipe_to_dlib68(pts, t) - g, axis=1) / np.linalg.norm(g[36] - g[45])
    print(f"{'group':<12} {'points':>6} " + " ".join(f"{t[:3] + '/' + n:>10}" for t, n, _, _ in cols))
    for g, sl in list(GROUPS68.items()) + [("all", slice(0, 68))]:
        print(f"{g:<12} {sl.stop - sl.start:6d} " + " ".join(f"{errs[t, n][sl].mean():10.4f}" for t, n, _, _ in cols))
    nme = float(errs["improved", "orig"].mean())  # the default table
    fps_video_512 = next(r[3] for r in rows if r[0] == "512x512" and r[1] == "VIDEO")
    print(f"fps_video_512={fps_video_512:.1f} nme_300w={nme:.4f}")


if __name__ == "__main__":
    main()
