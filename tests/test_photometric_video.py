"""Video canonical texture: ``track_video(..., VideoOptions(photometric=True))`` / ``flame-tracker video
--photometric`` estimate one texture on the identity keyframes and write ``texture.png``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image


@pytest.mark.slow
def test_video_canonical_texture(shared_dir: Path, tmp_path: Path) -> None:
    from flame_tracker.model import load_model
    from flame_tracker.video.pipeline import VideoOptions, track_video
    from flame_tracker.video.track import TrackOptions

    model = load_model()
    kw = dict(model=model, options=TrackOptions(n_keyframes=3, identity_rounds=1, identity_iters=5, chunk=4),
              video_options=VideoOptions(max_frames=6, photometric=True), progress=False)
    out = tmp_path / "tex"
    summary = track_video(shared_dir / "videos" / "talking_wojtek.mp4", out, **kw)
    img = np.asarray(Image.open(out / "texture.png").convert("RGB"))
    assert img.shape == (512, 512, 3)
    # The front view of the textured neutral head: the middle of the face is skin-coloured (red
    # above blue), the corners are the black background.
    face = img[200:320, 200:320].reshape(-1, 3).astype(float).mean(0)
    assert face.min() > 50 and face[0] > face[2]
    assert (img[:20, :20] == 0).all()
    assert summary.timings.get("texture_s", 0) > 0
    # A finished folder with its texture is left alone.
    assert track_video(shared_dir / "videos" / "talking_wojtek.mp4", out, **kw).skipped


def test_cli_video_has_photometric_option() -> None:
    from flame_tracker.cli.main import main

    res = CliRunner().invoke(main, ["video", "--help"])
    assert res.exit_code == 0 and "--photometric" in res.output
