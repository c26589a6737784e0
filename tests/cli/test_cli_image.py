"""`flame-tracker image` / `demo`: outputs, per-image errors, exit codes, help."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from flame_tracker.cli.main import main


def test_image_help_explains_every_option():
    res = CliRunner().invoke(main, ["image", "--help"])
    assert res.exit_code == 0
    for opt in ("--out", "--model", "--device", "--landmarker", "--fov", "--solver", "--loss", "--shape",
                "--neck", "--mesh", "--overlay"):
        assert opt in res.output
    assert "open ICT-FaceKit" in res.output


@pytest.mark.slow
def test_image_batch_keeps_going_after_bad_inputs(shared_dir, tmp_path):
    good = tmp_path / "woman.jpg"
    shutil.copy(shared_dir / "images" / "woman.jpg", good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    res = CliRunner().invoke(main, ["image", str(broken), str(missing), str(good), str(empty), "--out", str(out)])
    assert res.exit_code == 1
    assert f"warning: {empty}: no images in this folder (its subfolders are not searched)" in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2
    assert "broken.png" in errors[0] and "missing.jpg" in errors[1]
    assert "1/3 image(s) fitted" in res.output
    for name in ("woman.npz", "woman.obj", "woman.ply", "woman_overlay.png", "woman.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "woman.json").read_text())
    assert summary["model"] == "ict_facekit_light" and summary["reprojection_px"]["mean_68"] < 10
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary files left


@pytest.mark.slow
def test_demo_writes_outputs(shared_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["demo"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "flame_tracker_demo"
    assert (out / "woman_overlay.png").is_file() and (out / "woman.npz").is_file()


def test_demo_missing_sample_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FLAME_TRACKER_DATA", str(tmp_path))
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "FLAME_TRACKER_DATA" in res.output


def test_demo_wrong_image_name_names_the_samples(shared_dir, tmp_path):
    res = CliRunner().invoke(main, ["demo", "--image", "nope.png", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "no image 'nope.png'" in res.output and "ffhq_00000.png" in res.output, res.output
    assert "FLAME_TRACKER_DATA" not in res.output  # the data folder is fine


@pytest.mark.parametrize("command", ["image", "video"])
def test_fov_and_image_fov_together_are_a_usage_error(tmp_path, command):
    """--fov replaces --image-fov: both given is refused before anything runs, not one ignored."""
    target = tmp_path / ("a.jpg" if command == "image" else "a.mp4")
    target.write_bytes(b"not read")
    res = CliRunner().invoke(main, [command, str(target), "--fov", "20", "--image-fov", "30",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--fov" in res.output and "--image-fov" in res.output
    assert not (tmp_path / "o").exists()


def test_photo_results_and_a_video_run_never_share_a_folder(shared_dir, tmp_path):
    """An export of a folder reads either a video run or photo results: photos into a video run's
    folder, or a video into a folder of photo results, are refused with the reason."""
    from flame_tracker.video.pipeline import VideoOptions, track_video
    from flame_tracker.video.store import OutputMismatchError

    photos = tmp_path / "photos"
    res = CliRunner().invoke(main, ["image", str(shared_dir / "images" / "woman.jpg"), "--out", str(photos)])
    assert res.exit_code == 0, res.output
    with pytest.raises(OutputMismatchError, match="photo results"):
        track_video(shared_dir / "videos" / "talking_ex3.mp4", photos, video_options=VideoOptions(max_frames=2),
                    progress=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")
    res = CliRunner().invoke(main, ["image", str(shared_dir / "images" / "woman.jpg"), "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "holds a video run" in res.output
    assert not (tmp_path / "run" / "woman.npz").exists()


def test_video_takes_a_landmarker_path_and_names_a_wrong_one(shared_dir, tmp_path):
    """`flame-tracker video --landmarker` as `image` has it: a given model is used, a missing one is
    named before any run folder is made (not a traceback)."""
    clip = str(shared_dir / "videos" / "talking_ex3.mp4")
    res = CliRunner().invoke(main, ["video", clip, "--out", str(tmp_path / "bad"), "--max-frames", "3",
                                    "--landmarker", str(tmp_path / "nope.task")])
    assert res.exit_code == 2 and "nope.task" in res.output and "does not exist" in res.output
    assert not (tmp_path / "bad").exists()
    res = CliRunner().invoke(main, ["video", clip, "--out", str(tmp_path / "ok"), "--max-frames", "3", "--quiet",
                                    "--landmarker", str(shared_dir / "models" / "face_landmarker.task")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ok" / "tracking.npz").is_file()


@pytest.mark.slow
def test_image_with_the_reference_adam_solver(shared_dir, tmp_path):
    """``--solver adam`` runs the reference's schedule (expression, jaw, eyes): the photo default's
    rigid refinement, shape and neck belong to the LM solver and are turned off for it (it failed on
    every photo with the rigid refinement on)."""
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["image", str(shared_dir / "images" / "woman.jpg"), "--solver", "adam",
                                    "--out", str(out), "--no-mesh", "--no-overlay"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "woman.json").read_text())
    assert summary["reprojection_px"]["mean_68"] < 10
    used = json.loads((out / "flame_tracker_config.json").read_text())
    assert used["stage2"]["solver"] == "adam" and not used["stage2"]["fit_rigid"]


def test_a_video_given_to_image_points_to_the_video_command(shared_dir, tmp_path):
    clip = shared_dir / "videos" / "talking_ex1.mp4"
    res = CliRunner().invoke(main, ["image", str(clip), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and f"track it with `flame-tracker video {clip}`" in res.output, res.output


def test_ctrl_c_in_any_command_exits_130(tmp_path, monkeypatch):
    """Ctrl-C outside a command's own handling (here while exporting) is reported as an interruption
    with exit code 130, as a shell reports it, not as click's "Aborted!" with code 1."""
    import flame_tracker.export as export

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_run", interrupted)
    res = CliRunner().invoke(main, ["export", str(tmp_path), "--format", "arkit"])
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.output and "Aborted" not in res.output


@pytest.mark.slow
def test_a_photo_fitted_again_never_replaces_another_photos_results(shared_dir, tmp_path):
    """Photos of one stem from two folders go to ``x`` and ``x_1``. Fitting the second again into
    the same --out used to name it ``x`` and replace the first one's files (a user trial); now it
    finds ``x_1`` again. A run with other settings says so, and each photo's .json keeps its own."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d, name in ((a, "woman.jpg"), (b, "woman.jpg")):
        d.mkdir()
        shutil.copy(shared_dir / "images" / name, d / "x.jpg")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["image", str(a / "x.jpg"), str(b / "x.jpg"), "--out", str(out), "--no-overlay"])
    assert res.exit_code == 0, res.output

    def source(name):
        return json.loads((out / f"{name}.json").read_text())

    assert source("x")["source"].endswith("a/x.jpg") and source("x_1")["source"].endswith("b/x.jpg")
    first = (out / "x.npz").read_bytes()
    res = CliRunner().invoke(main, ["image", str(b / "x.jpg"), "--out", str(out), "--no-overlay", "--mesh-depth", "0"])
    assert res.exit_code == 0, res.output
    assert f"-> {out / 'x_1'}.npz" in res.output
    assert (out / "x.npz").read_bytes() == first and source("x")["source"].endswith("a/x.jpg")
    assert "other settings (image.mesh_depth: 0.5 -> 0.0)" in res.output
    assert source("x")["settings"]["image"]["mesh_depth"] == 0.5
    assert source("x_1")["settings"]["image"]["mesh_depth"] == 0.0
    assert not (out / "x_2.json").exists()


@pytest.mark.slow
def test_a_photo_of_two_people_says_that_one_was_fitted(shared_dir, tmp_path):
    """Two faces side by side: the default fits the largest and says that there is another (a user
    trial: nothing said so); a photo of one face says nothing."""
    import cv2
    import numpy as np

    a, b = (cv2.imread(str(shared_dir / "images" / f"ffhq_0000{k}.png")) for k in (0, 1))
    h = min(a.shape[0], b.shape[0])
    cv2.imwrite(str(tmp_path / "two.png"), np.concatenate([a[:h], b[:h]], axis=1))
    res = CliRunner().invoke(main, ["image", str(tmp_path / "two.png"), str(shared_dir / "images" / "woman.jpg"),
                                    "--out", str(tmp_path / "out"), "--no-overlay", "--no-mesh"])
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "two.png: 2 faces found, one fitted (--face largest)" in notes[0], res.output
