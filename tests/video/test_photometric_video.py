"""Photometric video tracking: ``track_video(..., VideoOptions(photometric=True))`` / ``flame-tracker
video --photometric`` fits one texture on the identity keyframes (``texture.png``), refines every
tracked frame against it (per-frame ``light``), and resumes after a kill without redoing finished
chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from flame_tracker.io.results import load_npz


@pytest.mark.slow
def test_video_photometric_tracking_resumes(shared_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from flame_tracker.model import load_model
    from flame_tracker.video import photometric as vph
    from flame_tracker.video.decode import VideoReader
    from flame_tracker.video.pipeline import VideoOptions, track_video
    from flame_tracker.video.track import TrackOptions

    model = load_model()
    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    topts = TrackOptions(n_keyframes=3, identity_rounds=1, identity_iters=5, chunk=4)
    vopts = VideoOptions(max_frames=6, photometric=True, photometric_chunk=2, overlay=True)
    kw = dict(model=model, options=topts, video_options=vopts, progress=False)
    out = tmp_path / "ph"

    calls: list[int] = []
    kill = [True]
    real_refine, real_canonical = vph.refine_frames, vph.canonical_from_frames
    canonical_calls: list[int] = []

    def flaky(model, fit, lm, frames, rows, *args, **kwargs):
        calls.append(len(rows))
        if kill[0] and len(calls) == 2:  # killed while refining the second chunk
            raise KeyboardInterrupt
        return real_refine(model, fit, lm, frames, rows, *args, **kwargs)

    def counted(*args, **kwargs):
        canonical_calls.append(1)
        return real_canonical(*args, **kwargs)

    monkeypatch.setattr(vph, "refine_frames", flaky)
    monkeypatch.setattr(vph, "canonical_from_frames", counted)
    with pytest.raises(KeyboardInterrupt):
        track_video(clip, out, **kw)
    assert (out / "texture.png").exists() and not (out / "tracking.npz").exists()

    calls.clear()
    kill[0] = False
    summary = track_video(clip, out, **kw)
    # resumed: the texture is not fitted again, only the 4 frames not yet refined are refined
    assert len(canonical_calls) == 1
    assert summary.frames_done["photometric"] == 4 and sum(calls) == 4
    assert summary.n_tracked == 6 and summary.mean_reproj_px < 10.0
    assert summary.timings["photometric_s"] > 0

    whole = load_npz(out / "tracking.npz")
    light = whole["light"]
    assert light.shape == (6, 9, 3) and np.isfinite(light).all()
    assert (light[:, 0] > 0).all()  # a lit face: positive ambient (DC) term in every channel
    one = load_npz(sorted((out / "frames").glob("*.npz"))[0])
    assert one["light"].shape == (1, 9, 3)
    np.testing.assert_allclose(one["light"][0], light[0], rtol=1e-6)
    # the refinement moved the parameters away from the landmark track's raw fits
    assert np.abs(whole["exp"] - whole["raw_exp"]).max() > 1e-4

    img = np.asarray(Image.open(out / "texture.png").convert("RGB"))
    assert img.shape == (512, 512, 3)
    # The front view of the textured neutral head: the middle of the face is skin-coloured (red
    # above blue), the corners are the black background.
    face = img[200:320, 200:320].reshape(-1, 3).astype(float).mean(0)
    assert face.min() > 50 and face[0] > face[2]
    assert (img[:20, :20] == 0).all()

    frames = list(VideoReader(out / "overlay.mp4"))
    assert len(frames) == 6
    # A finished folder is left alone.
    calls.clear()
    assert track_video(clip, out, **kw).skipped and calls == []


def test_textured_overlay_only_changes_the_head(shared_dir: Path) -> None:
    import torch

    from flame_tracker.camera import Crop
    from flame_tracker.model import load_model
    from flame_tracker.video.pipeline import _textured

    model = load_model()
    image = np.full((300, 400, 3), 40, np.uint8)
    light = np.zeros((9, 3))
    light[0] = 3.0
    albedo = torch.full((model.n_verts, 3), 0.8)
    with torch.no_grad():
        verts = model().vertices
    # the fitting square sticks out of the frame on the left: the warp must clip, not fail
    out = _textured(image, verts, torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]), 20.0,
                    Crop(-50.0, 20.0, 260.0), model.faces, albedo, light)
    assert out.shape == image.shape and out.dtype == np.uint8
    head = out[150, 80]  # the square's centre is (80, 150)
    assert head.mean() > 100  # the bright textured head
    assert (out[:, 300:] == 40).all()  # right of the square: untouched


def test_cli_video_has_photometric_option() -> None:
    from flame_tracker.cli.main import main

    res = CliRunner().invoke(main, ["video", "--help"])
    assert res.exit_code == 0 and "--photometric" in res.output


@pytest.mark.slow
def test_photometric_video_keeps_the_landmark_fit_where_the_face_is_outside_the_crop(shared_dir: Path,
                                                                                    tmp_path: Path) -> None:
    """Edited footage (from a footage trial): a shot cut to a small face in a corner of the picture,
    outside the video's fitting square, crashed the refinement (an empty mesh). Such frames keep their
    landmark fits; the others are refined; the jitter figures leave out the cut's jump."""
    import cv2

    from flame_tracker.model import load_model
    from flame_tracker.video.decode import VideoReader
    from flame_tracker.video.encode import VideoWriter
    from flame_tracker.video.pipeline import VideoOptions, track_video
    from flame_tracker.video.track import TrackOptions

    src = [f.image for f in VideoReader(shared_dir / "videos" / "talking_wojtek.mp4", max_frames=16)]
    clip = tmp_path / "cut.mp4"
    with VideoWriter(clip, fps=25.0) as writer:
        for k, img in enumerate(src):
            canvas = np.full((512, 1024, 3), 90, np.uint8)
            if k < 12:  # the face large, on the left; then cut to it small in the right corner
                canvas[:, :512] = img
            else:
                canvas[512 - 160:, 1024 - 160:] = cv2.resize(img, (160, 160), interpolation=cv2.INTER_AREA)
            writer.write(canvas)
    out = tmp_path / "ph"
    summary = track_video(clip, out, model=load_model(), progress=False,
                          options=TrackOptions(n_keyframes=3, identity_rounds=1, identity_iters=5, chunk=4),
                          video_options=VideoOptions(photometric=True, photometric_chunk=4))
    assert summary.cuts == [12] and summary.n_tracked == 16 and summary.n_dropped == 0
    t = load_npz(out / "tracking.npz")
    assert np.isfinite(t["light"][:12]).all() and np.isnan(t["light"][12:]).all()  # refined / kept
    assert np.abs(t["exp"][:12] - t["raw_exp"][:12]).max() > 1e-4
    assert np.isfinite(t["cam"]).all() and summary.mean_reproj_px < 10.0
    assert summary.jitter["pose_acc_deg"] < 2.0  # the cut's jump is not counted as jitter
