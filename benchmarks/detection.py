"""Landmark detection: small faces in wide shots, throughput, and 68-point accuracy.

1. **Small faces** (``--faces``; ``--no-small`` skips it): the shared photos, the annotated photos
   and frames of the shared videos are pasted (soft-edged, at seeded random places) into textured
   1920×1080 and 3840×2160 canvases at eye-to-chin heights from 30 to 800 px; each canvas is
   searched as before (MediaPipe on the whole picture, downscaled to 1920) and with the search
   (``detection.search.FaceFinder``: whole picture, then tiles, each face refined on a crop around
   it). Per size: the detection rate and the landmark error (NME: mean distance to the face's own
   landmarks, MediaPipe on the photo where the face fills the picture, in % of the outer-eye-corner
   distance) with and without the search: at the large sizes this is the precision of the
   face-centred crop against the whole downscaled frame.
2. **Video throughput** on a 1080p wide shot (``talking_ex1`` shrunk to a 120-pixel face in a
   1920×1080 canvas; 128 frames, and 384 frames played forwards, backwards, forwards) and on
   ``talking_ex1`` itself: decoding + detection alone (the follower of
   ``flame-tracker video``) and the whole ``track_video`` on the same clip, in frames/s, and their ratio.
3. Raw MediaPipe throughput:  of frames/s for MediaPipe IMAGE and VIDEO mode on 512² frames
(``talking_wojtek.mp4``) and 1080p frames (``talking_ex1.mp4`` scaled to 1080 px high and padded to
1920×1080), one detector run per frame (the reference runs it three times: original, 512 and 256
images; a row reproduces that for comparison), then the inter-ocular NME of the 68 points on the
hand-annotated 300-W image (and its mirror image) for the reference and the default ("improved")
68-point tables. Frames are decoded before timing; the first call (graph warm-up) is not timed.
Last line: ``small_face_rate_1080p=… small_face_rate_4k=… e2e_ratio_wide=… e2e_ratio_wide_long=…
e2e_ratio_ex1=… fps_video_512=… nme_300w=…`` (the rates over faces of at least 40 px eye to chin;
the ratios: end-to-end fps over detection-only fps).

Usage: ``python benchmarks/detection.py [--frames N] [--faces N] [--no-small] [--no-e2e]``
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

#: Frames of the longer wide shot (12.8 s at 30 fps): the end-to-end run's costs that do not grow
#: with the clip (model, identity fit, the first search for the small face) weigh less on it.
LONG_FRAMES = 384


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


HEIGHTS = (30, 40, 60, 100, 150, 250, 400, 800)  # eye-to-chin, pixels
CANVASES = {"1080p": (1920, 1080), "4k": (3840, 2160)}


def face_samples(n_max: int) -> list:
    """Faces with their reference landmarks: photos, annotated photos, frames of the videos."""
    from flame_tracker.evaluation.footage import FaceSample, load_faces
    from flame_tracker.paths import data_dir

    root = data_dir()
    photos = sorted((root / "images").glob("*.png")) + sorted((root / "images").glob("*.jpg"))
    photos += sorted((root / "images" / "gt68").glob("*.[jp][pn]g"))
    with FaceLandmarker(max_side=4096) as lm:
        faces = load_faces(photos, lm)
        for name in ("talking_ex1.mp4", "talking_ex3.mp4", "talking_wojtek.mp4"):
            for k, f in enumerate(read_frames(name, 60)[::30]):
                det = lm.detect(f)
                if det is not None:
                    faces.append(FaceSample(f"{name[:-4]}#{k * 30}", f, det.lmks68.astype(np.float64)))
    return faces[:n_max]


def small_faces(faces: list, seed: int = 0) -> dict[tuple[str, int], dict[str, list[float]]]:
    """Detection rate and NME per (canvas, eye-chin height), without and with the search."""
    from flame_tracker.detection.search import FaceFinder, face_centre
    from flame_tracker.evaluation.footage import paste_face, textured_canvas

    rng = np.random.default_rng(seed)
    stats: dict[tuple[str, int], dict[str, list[float]]] = {}
    with FaceFinder() as finder:
        for cname, (w, h) in CANVASES.items():
            bg = textured_canvas(w, h, seed=1)
            for hgt in HEIGHTS:
                if hgt * 1.7 > h:  # the whole face (forehead to chin) would not fit
                    continue
                st = stats.setdefault((cname, hgt), {"found_before": [], "found_after": [], "nme_before": [],
                                                     "nme_after": [], "extra_after": [], "s_after": []})
                for face in faces:
                    half = 0.9 * hgt
                    c = (rng.uniform(half, w - half), rng.uniform(half, h - half))
                    canvas = bg.copy()
                    ref = paste_face(canvas, face, c, hgt)
                    iod = float(np.linalg.norm(ref[36] - ref[45]))
                    centre = (ref.min(0) + ref.max(0)) / 2
                    t0 = time.perf_counter()
                    before = finder.whole_frame(canvas)
                    t1 = time.perf_counter()
                    after = finder.find(canvas)
                    st["s_after"].append(time.perf_counter() - t1 + (t1 - t0))
                    for key, dets in (("before", before), ("after", after)):
                        match = [d for d in dets if np.linalg.norm(face_centre(d.points478) - centre) < 0.5 * hgt]
                        st[f"found_{key}"].append(float(bool(match)))
                        if match:
                            err = np.linalg.norm(match[0].lmks68 - ref, axis=1).mean() / iod * 100
                            st[f"nme_{key}"].append(float(err))
                        if key == "after":
                            st["extra_after"].append(float(len(dets) - bool(match)))
    return stats


def wide_shot_clip(path, n: int) -> None:
    """``talking_ex1`` shrunk to a 120-pixel (eye to chin) face in a 1920×1080 textured canvas;
    ``n`` beyond its 128 frames: played forwards, backwards, forwards, ... (no jump at the turns)."""
    from flame_tracker.evaluation.footage import FaceSample, paste_face, textured_canvas
    from flame_tracker.video.encode import VideoWriter

    once = read_frames("talking_ex1.mp4", n)
    frames, back = list(once), True
    while len(frames) < n:  # each pass starts where the last one ended (its end frame not repeated)
        frames += (once[::-1] if back else once)[1:]
        back = not back
    frames = frames[:n]
    with FaceLandmarker() as lm:
        ref = lm.detect(frames[0]).lmks68.astype(np.float64)
    bg = textured_canvas(1920, 1080, seed=2)
    with VideoWriter(path, fps=30.0) as out:
        for f in frames:
            canvas = bg.copy()
            paste_face(canvas, FaceSample("ex1", f, ref), (1250.0, 600.0), 120.0, feather=0.05)
            out.write(canvas)


def throughput(clip, n: int, reps: int = 3) -> tuple[float, float, float]:
    """(detection-only fps, end-to-end fps, the end-to-end run's own detection stage's share of its
    time) of ``clip``'s first ``n`` frames, in this process: medians of ``reps`` alternating runs
    of each, after one untimed run of each (the first MediaPipe graph of a process costs ~0.4 s of
    loading that would fall on whichever ran first). The pipeline detects a short clip's blocks in
    parallel (docs/detection.md), the detection-only pass with one follower."""
    import tempfile
    from contextlib import closing

    from flame_tracker.detection.search import FaceFollower
    from flame_tracker.video.decode import VideoReader, prefetch
    from flame_tracker.video.pipeline import VideoOptions, track_video

    def detect_only() -> float:
        t0 = time.perf_counter()
        with FaceFollower() as fol, closing(prefetch(VideoReader(clip, max_frames=n))) as frames:
            k = sum(fol(f.image, f.time_s) is not None for f in frames)  # decoded ahead, as the pipeline does
        if k < n // 2:
            raise SystemExit(f"{clip}: the follower found a face in only {k} of {n} frames")
        return time.perf_counter() - t0

    def end_to_end() -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = track_video(clip, f"{tmp}/run", video_options=VideoOptions(max_frames=n), progress=False)
            total = time.perf_counter() - t0
        return total, summary.timings["detect_s"] / total

    detect_only(), end_to_end()  # untimed
    det, e2e = [], []
    for _ in range(reps):
        det.append(detect_only())
        e2e.append(end_to_end())
    total, share = e2e[int(np.argsort([t for t, _ in e2e])[len(e2e) // 2])]
    return n / float(np.median(det)), n / total, share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100, help="frames per row (default 100)")
    ap.add_argument("--faces", type=int, default=24, help="faces per size in the small-face table (default 24)")
    ap.add_argument("--no-small", action="store_true", help="skip the small-face table")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end video throughput")
    args = ap.parse_args()
    n = max(2, args.frames)

    rates = {"1080p": float("nan"), "4k": float("nan")}
    if not args.no_small:
        faces = face_samples(args.faces)
        stats = small_faces(faces)
        print(f"Small faces: {len(faces)} faces pasted per size (eye-to-chin px) into textured canvases;")
        print("found = a detection within half a face height of the face; NME in % of the outer-eye distance")
        print("against the face's own landmarks; before = MediaPipe on the whole picture (downscaled to 1920),")
        print("after = the search (whole picture, tiles, crop around each face)")
        print(f"{'canvas':<7} {'eye-chin':>8} {'found before':>13} {'found after':>12} {'NME before':>11} "
              f"{'NME after':>10} {'extra faces':>12} {'s/picture':>10}")
        for (cname, hgt), st in stats.items():
            def m(v):
                return float(np.mean(v)) if v else float("nan")
            print(f"{cname:<7} {hgt:8d} {m(st['found_before']):13.0%} {m(st['found_after']):12.0%} "
                  f"{m(st['nme_before']):11.2f} {m(st['nme_after']):10.2f} {sum(st['extra_after']):12.0f} "
                  f"{m(st['s_after']):10.2f}")
        for cname in rates:
            found = [v for (c, hgt), st in stats.items() if c == cname and hgt >= 40 for v in st["found_after"]]
            rates[cname] = float(np.mean(found))
        print()

    ratios = {"wide": float("nan"), "wide_long": float("nan"), "ex1": float("nan")}
    if not args.no_e2e:
        import tempfile
        from pathlib import Path

        print("Video throughput (frames/s; detection alone = decoding + the follower of `flame-tracker video`;")
        print("end to end = track_video: detection, identity, fits, smoothing, files)")
        print("(stage share = the end-to-end run's own detection stage over its whole time; each the median")
        print("of 3 alternating runs after an untimed one)")
        print(f"{'clip':<28} {'frames':>6} {'detection':>10} {'end to end':>11} {'ratio':>6} {'stage share':>12}")
        with tempfile.TemporaryDirectory() as tmp:
            wide, wide_long = Path(tmp) / "wide_1080p.mp4", Path(tmp) / "wide_1080p_long.mp4"
            wide_shot_clip(wide, 128)
            wide_shot_clip(wide_long, LONG_FRAMES)
            for key, label, clip, n in (
                    ("wide", "1080p wide shot (120 px)", wide, 128),
                    ("wide_long", "  the same, 3 passes", wide_long, LONG_FRAMES),
                    ("ex1", "talking_ex1 (1080x720)", data_file("videos", "talking_ex1.mp4"), 128)):
                det_fps, e2e_fps, share = throughput(clip, n)
                ratios[key] = e2e_fps / det_fps
                print(f"{label:<28} {n:6d} {det_fps:10.1f} {e2e_fps:11.1f} {ratios[key]:6.2f} {share:12.2f}")
        print()

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
    print(f"small_face_rate_1080p={rates['1080p']:.3f} small_face_rate_4k={rates['4k']:.3f} "
          f"e2e_ratio_wide={ratios['wide']:.2f} e2e_ratio_wide_long={ratios['wide_long']:.2f} "
          f"e2e_ratio_ex1={ratios['ex1']:.2f} "
          f"fps_video_512={fps_video_512:.1f} nme_300w={nme:.4f}")


if __name__ == "__main__":
    main()
