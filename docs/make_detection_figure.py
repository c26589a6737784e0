"""Make the README's wide-shot figure from synthetic data only (no third-party photo is copied).

A random ICT-FaceKit identity is rendered small (about 70 px from eyes to chin) into a textured
1920 x 1080 frame; MediaPipe on the whole frame finds nothing, ``flame-tracker image``'s search
finds and fits it. The figure shows the frame (halved, the face boxed) and the fitted overlay around
the face, enlarged. Run: ``python docs/make_detection_figure.py``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from flame_tracker.camera import intrinsics_pixels
from flame_tracker.detection.layout import eye_chin
from flame_tracker.detection.search import FaceFinder
from flame_tracker.evaluation.scenes import render_scene, sample_scenes
from flame_tracker.model import load_model
from flame_tracker.rendering.overlay import render_overlay
from flame_tracker.tracker import Tracker

OUT = Path(__file__).with_name("wide_shot_example.png")


def main() -> None:
    model = load_model()
    spec = sample_scenes(model, 1, seed=21, yaw_max=25.0, pitch_max=8.0, roll_max=5.0)[0]
    spec = type(spec)(**{**spec.__dict__, "width": 1920, "height": 1080, "face_frac": 0.09,
                         "centre_frac": (0.68, 0.42), "fov_deg": 50.0})
    frame, truth = render_scene(model, spec)
    with FaceFinder() as finder:
        whole = finder.whole_frame(frame)
    with Tracker(model) as tracker:
        result = tracker.fit_image(frame)
    lm = result.lmks68_px
    c = (lm.min(0) + lm.max(0)) / 2
    side = int(2.6 * np.ptp(lm, 0).max())
    x0, y0 = (c - side / 2).astype(int)
    # the overlay drawn on the enlarged crop (so the points keep their size): everything scaled by k
    k = 540 / side
    crop = cv2.resize(frame[y0:y0 + side, x0:x0 + side], (540, 540), interpolation=cv2.INTER_CUBIC)
    verts = np.asarray(result.vertices_px(), np.float64).copy()
    verts[:, :2] = (verts[:, :2] - (x0, y0)) * k
    focal = float(intrinsics_pixels(torch.as_tensor(result.fov[0], dtype=torch.float64), result.crop_obj)[0, 0])
    zoom = render_overlay(crop, verts, result.faces, lmks_detected=(lm - (x0, y0)) * k,
                          lmks_fitted=(result.matched_lmks68_px - (x0, y0)) * k, focal=focal * k)
    small = cv2.resize(frame, (960, 540), interpolation=cv2.INTER_AREA)
    cv2.rectangle(small, (x0 // 2, y0 // 2), ((x0 + side) // 2, (y0 + side) // 2), (255, 200, 0), 2)
    fig = np.full((540 + 40, 960 + 540 + 10, 3), 255, np.uint8)
    fig[40:, :960] = small
    fig[40:, 970:] = zoom
    font = cv2.FONT_HERSHEY_SIMPLEX
    eye_chin_px = eye_chin(lm)
    cv2.putText(fig, f"1920x1080 input: MediaPipe alone finds {len(whole)} face(s)", (8, 28), font, 0.7,
                (20, 20, 20), 2, cv2.LINE_AA)
    cv2.putText(fig, f"flame-tracker: found by the tiled search, fitted ({eye_chin_px:.0f} px eyes-chin)", (978, 28),
                font, 0.55, (20, 20, 20), 2, cv2.LINE_AA)
    cv2.imwrite(str(OUT), fig[..., ::-1])
    print(f"wrote {OUT} (whole-frame faces: {len(whole)}, reprojection {result.reprojection_error_px:.2f} px)")


if __name__ == "__main__":
    main()
