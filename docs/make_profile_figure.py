"""Make the README's profile figure from synthetic data only: a rendered head turning to 90° of yaw
goes through ``flame-tracker video`` (with its overlay); MediaPipe loses the face past ~40°, the
frames without landmarks are followed by optical flow. The figure shows overlay frames at several
true yaws with their source and head-rotation error. Run: ``python docs/make_profile_figure.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from flame_tracker.camera import Crop, to_opencv
from flame_tracker.evaluation.scenes import turning_head, write_scene_video
from flame_tracker.model import load_model
from flame_tracker.video.decode import VideoReader
from flame_tracker.video.pipeline import VideoOptions, track_video
from flame_tracker.video.track import TrackOptions

OUT = Path(__file__).with_name("profile_example.png")


def main() -> None:
    model = load_model()
    specs = turning_head(model, 40)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "turn.mp4"
        rots = write_scene_video(model, specs, clip)
        run = Path(tmp) / "run"
        track_video(clip, run, options=TrackOptions(max_gap_s=4.0), video_options=VideoOptions(overlay=True),
                    progress=False)
        t = np.load(run / "tracking.npz")
        ident = np.load(run / "work" / "identity.npz")
        crop = Crop(*ident["crop"], cx=float(ident["pp"][0]), cy=float(ident["pp"][1]))
        _, R, _ = to_opencv(torch.as_tensor(t["pose6"].astype(np.float64)), float(ident["fov"]), crop)
        rel = np.einsum("nji,njk->nik", R.numpy(), np.array(rots)[t["frame"]])
        err = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
        frames = {f.index: f.image for f in VideoReader(run / "overlay.mp4")}
    yaw = np.array([s.yaw for s in specs])
    picks = [int(np.argmin(np.abs(yaw[:20] - y))) for y in (15, 40, 60, 80)] + [int(np.argmax(yaw))]
    tiles = []
    for k in picks:
        img = frames[k][40:440, 120:520].copy()
        label = f"yaw {yaw[k]:.0f} deg: {t['source'][k]}, error {err[k]:.1f} deg"
        bar = np.full((34, img.shape[1], 3), 255, np.uint8)
        cv2.putText(bar, label, (6, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([bar, img], 0))
    fig = np.concatenate(tiles, 1)
    cv2.imwrite(str(OUT), fig[..., ::-1])
    print(f"wrote {OUT}: sources {[str(t['source'][k]) for k in picks]}")


if __name__ == "__main__":
    main()
