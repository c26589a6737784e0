"""One configuration tree: TOML in and out, checked keys and types, ``--config`` on the commands
with the command line winning, and every run recording what it used."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from flame_tracker.cli.main import main
from flame_tracker.config import Config, ConfigError
from flame_tracker.tracker import PHOTO_EXPR_SPARSITY


def test_the_printed_defaults_read_back_as_the_defaults(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["config"])
    assert res.exit_code == 0 and "[stage2]" in res.output and "[multiview]" in res.output
    assert "[stage1]" in res.output and "[track.stage2]" in res.output  # the video's own fits, nested
    (tmp_path / "run.toml").write_text(res.output)
    loaded = Config.load(tmp_path / "run.toml")
    # nothing is set by the printed defaults: the model's own choices (ICT's priors) stay
    assert loaded == Config() and loaded.explicit == frozenset()
    # a file's settings print back as set (an unset optional one as "none") and read back the same
    (tmp_path / "set.toml").write_text("[track]\nimage_fov = \"none\"\nfov = 25\n[video]\nface = \"Index 1\"\n")
    res = CliRunner().invoke(main, ["config", str(tmp_path / "set.toml")])
    assert res.exit_code == 0 and 'image_fov = "none"' in res.output and 'face = "index 1"' in res.output
    (tmp_path / "again.toml").write_text(res.output)
    again = Config.load(tmp_path / "again.toml")
    assert again == Config.load(tmp_path / "set.toml") and again.track.image_fov is None
    # a run's recorded settings (JSON, None for unset) read back too
    assert Config().updated(json.loads(json.dumps(Config().to_dict()))) == Config()


def test_an_infinite_setting_is_recorded_and_read_back(tmp_path: Path) -> None:
    """``max_gap_s = inf`` (bridge every gap) survives config.json, which JSON alone would turn into
    null, and the recorded file sets the same value again."""
    (tmp_path / "run.toml").write_text("[track]\nmax_gap_s = inf\n[flow]\nmax_gap_s = -inf\n")
    config = Config.load(tmp_path / "run.toml")
    assert config.track.max_gap_s == float("inf") and config.flow.max_gap_s == -float("inf")
    config.save(tmp_path / "config.json")
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["track"]["max_gap_s"] == "inf" and doc["flow"]["max_gap_s"] == "-inf"
    again = Config().updated(doc)
    assert again.track.max_gap_s == float("inf") and again.flow.max_gap_s == -float("inf")
    assert again.to_dict() == config.to_dict()


def test_bad_settings_are_named(tmp_path: Path) -> None:
    cases = {"[stage2]\nw_shpe = 1.0\n": "unknown setting stage2.w_shpe",
             "[nope]\nx = 1\n": "unknown section [nope]",
             "[track]\npose_cutoff_hz = \"fast\"\n": "track.pose_cutoff_hz",
             "[stage2]\nsolver = \"gd\"\n": "'lm', 'adam'",
             "[video\n": "not a readable TOML",
             "[video]\nmeshes = \"stl\"\n": "video.meshes",
             "[video]\nevery = 0\n": "at least 1",
             "[image]\nimage_fov = nan\n": "image.image_fov: NaN is not a value",
             "[image]\nimage_fov = inf\n": "field of view in degrees",
             "[track]\npose_cutoff_hz = -5\n": "above 0",
             "[track]\nexpr_cutoff_hz = 0\n": "(inf: no smoothing)",
             "[video]\nstart_s = -1\n": "video.start_s: must be 0 or more",
             "[video]\nstart_s = 3\nend_s = 2\n": "video.end_s (2) must be after video.start_s (3)",
             "[video]\nfps = nan\n": "video.fps: NaN",
             "[photometric]\nresolution = 0\n": "at least 16 pixels",
             "[stage2]\nw_shape = -1\n": "stage2.w_shape: must be 0 or more",
             "[video]\nface = \"bogus\"\n": "video.face",
             "[track.stage2]\nw_shpe = 1.0\n": "unknown setting track.stage2.w_shpe",
             "[track]\nstage1 = 3\n": "[track.stage1] must be a table",
             "[stage1]\nsolver = \"gd\"\n": "stage1.solver",
             "[image]\nlandmarks = \"100\"\n": "image.landmarks",
             "[image]\nrounds = 0\n": "at least 1",
             "[stage2]\nprior_view_fade = [20.0]\n": "stage2.prior_view_fade: [20.0] needs 2 values"}
    for text, message in cases.items():
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises(ConfigError, match=re.escape(message)):
            Config.load(tmp_path / "bad.toml")
        res = CliRunner().invoke(main, ["config", str(tmp_path / "bad.toml")])
        assert res.exit_code == 1 and message in res.output
    # "none" unsets an optional setting; integers are taken where a float is wanted
    (tmp_path / "ok.toml").write_text("[track]\nimage_fov = \"none\"\nfov = 25\n")
    c = Config.load(tmp_path / "ok.toml")
    assert c.track.image_fov is None and c.track.fov == 25.0 and isinstance(c.track.fov, float)
    assert c.explicit == {"track.image_fov", "track.fov"}
    # a pair is a TOML array (integers taken as floats), recorded and read back as the same tuple
    (tmp_path / "pair.toml").write_text("[stage2]\nprior_view_fade = [20, 60.5]\n")
    c = Config.load(tmp_path / "pair.toml")
    assert c.stage2.prior_view_fade == (20.0, 60.5)
    assert Config().updated(json.loads(json.dumps(c.to_dict()))).stage2.prior_view_fade == (20.0, 60.5)


def test_image_command_takes_a_config_file_and_records_the_settings(shared_dir: Path, tmp_path: Path) -> None:
    """The file's stage-2 weight applies (the model's blendshape priors stay), an option given on
    the command line wins over the file, and the folder records every setting used."""
    (tmp_path / "run.toml").write_text("[image]\nimage_fov = 55\nface = \"Center\"\n[stage1]\nw_contour = 150\n"
                                       "[stage2]\nw_shape = 2.0\nloss = \"huber\"\nmax_iter = 12\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["image", str(shared_dir / "images" / "ffhq_00000.png"), "--out", str(out),
                                    "--config", str(tmp_path / "run.toml"), "--loss", "l1", "--no-mesh",
                                    "--no-overlay"])
    assert res.exit_code == 0, res.output
    used = json.loads((out / "flame_tracker_config.json").read_text())
    assert used["stage2"]["w_shape"] == 2.0 and used["stage2"]["max_iter"] == 12
    assert used["stage2"]["loss"] == "l1"  # the command line wins
    assert used["stage2"]["w_exp"] == 4.0  # the ICT model's own expression prior, recorded as used
    assert used["stage1"]["w_contour"] == 150.0 and used["stage1"]["w_lmk"] == 300.0
    assert used["image"]["image_fov"] == 55.0 and used["image"]["face"] == "center"  # from the file
    assert used["image"]["landmark_embedding"] == "detector" and used["image"]["rounds"] == 2  # defaults, recorded
    assert used["image"]["expr_prior"] == "blendshapes"  # ICT's choice, recorded as used
    assert set(used) == {"image", "stage1", "stage2", "photometric"}  # the sections this command uses
    # --fov (the reference's crop FOV) replaces the picture's FOV and moves the principal point
    res = CliRunner().invoke(main, ["image", str(shared_dir / "images" / "ffhq_00000.png"), "--out", str(out),
                                    "--config", str(tmp_path / "run.toml"), "--fov", "20", "--no-mesh",
                                    "--no-overlay"])
    assert res.exit_code == 0, res.output
    used = json.loads((out / "flame_tracker_config.json").read_text())
    assert used["image"]["image_fov"] is None and used["image"]["fov"] == 20.0
    assert used["image"]["principal_point"] == "crop"
    # a printed default uncommented as it is ("none": the model's or the command's choice) changes nothing
    (tmp_path / "default.toml").write_text('[stage2]\nw_exp_l1 = "none"\nw_exp = "none"\n')
    res = CliRunner().invoke(main, ["image", str(shared_dir / "images" / "ffhq_00000.png"), "--out", str(out),
                                    "--config", str(tmp_path / "default.toml"), "--no-mesh", "--no-overlay"])
    assert res.exit_code == 0, res.output
    used = json.loads((out / "flame_tracker_config.json").read_text())
    assert used["stage2"]["w_exp_l1"] == PHOTO_EXPR_SPARSITY and used["stage2"]["w_exp"] == 4.0


@pytest.mark.slow
def test_video_command_takes_a_config_file_and_records_the_settings(shared_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("[track]\npose_cutoff_hz = 1.0\nexpr_cutoff_hz = 4.0\n"
                                       "[flow]\nmax_points = 120\n[track.stage2]\nw_contour = 50.0\n"
                                       "[track.stage1]\nw_lmk = 250\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["video", str(shared_dir / "videos" / "talking_ex3.mp4"), "--out", str(out),
                                    "--max-frames", "6", "--quiet", "--config", str(tmp_path / "run.toml"),
                                    "--smooth-pose", "2.0", "--landmarks", "dense"])
    assert res.exit_code == 0, res.output
    used = json.loads((out / "config.json").read_text())
    assert used["track"]["pose_cutoff_hz"] == 2.0 and used["track"]["expr_cutoff_hz"] == 4.0
    assert used["track"]["landmarks"] == "dense"
    assert used["flow"]["max_points"] == 120 and used["video"]["max_frames"] == 6
    assert used["track"]["stage2"]["w_contour"] == 50.0 and used["track"]["stage1"]["w_lmk"] == 250.0
    assert used["track"]["stage2"]["w_exp"] == 4.0 and used["track"]["stage2"]["max_iter"] == 6  # as used
    assert set(used) == {"track", "video", "flow", "photometric"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["track"]["expr_cutoff_hz"] == 4.0  # the run folder keys on them (resume)
