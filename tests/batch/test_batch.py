"""``flame-tracker batch`` on a local Ray started by the tests: inputs, a mixed batch with a corrupt
file, a batch interrupted midway and run again, Ray missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from flame_tracker.batch.items import PHOTO_FRAMES, BatchInputError, collect_items, group_images
from flame_tracker.batch.run import detection_parts
from flame_tracker.cli.main import main
from flame_tracker.io.results import load_npz
from flame_tracker.video.pipeline import VideoOptions, track_video


def test_inputs_from_files_folders_globs_and_manifests(shared_dir: Path, tmp_path: Path) -> None:
    vids = shared_dir / "videos"
    items = collect_items([vids / "talking_ex3.mp4", shared_dir / "images" / "gt68", str(vids / "talking_w*.mp4")])
    assert [(i.name, i.kind) for i in items] == [
        ("talking_ex3", "video"), ("lfpw_train_0001", "image"), ("lfpw_train_0002", "image"),
        ("lfpw_train_0004", "image"), ("lfpw_train_0005", "image"), ("talking_wojtek", "video")]
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(f"path,name,start,end,max_frames,face\n{vids / 'talking_ex1.mp4'},ex1a,0.5,2,,left\n"
                        f"{vids / 'talking_ex1.mp4'},,,,10,\n")
    jl = tmp_path / "m.jsonl"
    jl.write_text(json.dumps({"path": "../" + tmp_path.name + "/x.png", "every": 2}) + "\n")
    items = collect_items([csv_path, jl])
    assert items[0].name == "ex1a" and items[0].options == {"start": 0.5, "end": 2.0, "face": "left"}
    assert items[1].name == "talking_ex1" and items[1].options == {"max_frames": 10}
    assert items[2].path == str(tmp_path / ".." / tmp_path.name / "x.png") and items[2].kind == "image"
    # the longest task first: wojtek (400 frames), ex1 (128), ex3 (60), then 3 photos (36), 1 photo (12)
    tasks = group_images(collect_items([shared_dir / "images" / "gt68", vids]), 3)
    assert [t[0].name for t in tasks] == ["talking_wojtek", "talking_ex1", "talking_ex3", "lfpw_train_0001",
                                          "lfpw_train_0005"] and [len(t) for t in tasks] == [1, 1, 1, 3, 1]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,speed\na.mp4,3\n")
    for inputs, msg in (([bad], "unknown option 'speed'"), ([tmp_path / "nope.mp4"], "no such file"),
                        ([str(tmp_path / "*.mov")], "matches no video")):
        with pytest.raises(BatchInputError, match=msg):
            collect_items(inputs)
    dup = collect_items([vids / "talking_ex3.mp4", vids / "talking_ex3.mp4"])
    assert [i.name for i in dup] == ["talking_ex3", "talking_ex3_1"]
    for sub in ("a", "b", "c"):
        (tmp_path / sub).mkdir()
    (tmp_path / "a" / "clip.png").touch()
    (tmp_path / "b" / "clip.png").touch()
    (tmp_path / "c" / "clip_1.png").touch()
    names = [i.name for i in collect_items([tmp_path / "a" / "clip.png", tmp_path / "b" / "clip.png",
                                            tmp_path / "c" / "clip_1.png"])]
    assert names == ["clip", "clip_1", "clip_1_1"]  # never two items in one folder
    esc = tmp_path / "esc.jsonl"
    esc.write_text(json.dumps({"path": "a/clip.png", "name": "../../x"}) + "\n")
    with pytest.raises(BatchInputError, match="plain folder name"):
        collect_items([esc])


def test_a_video_longer_than_a_workers_share_is_detected_in_parts() -> None:
    """One part per worker (at most one per detection block) for a video that is more than a
    worker's share of the batch; one part otherwise, and with one worker."""
    assert detection_parts(100, 1000, 4) == 1 and detection_parts(900, 1000, 1) == 1
    assert detection_parts(300, 1000, 4) == 1  # more than a share, less than 1.5
    assert detection_parts(900, 1000, 4) == 4
    assert detection_parts(150, 180, 8) == 3  # 150 frames: three blocks of 64 at most


def test_the_batch_driver_plans_without_importing_torch(shared_dir: Path) -> None:
    """Collecting the items and planning their tasks (detection parts included) stays light: the
    pipeline and torch are the workers' imports. Importing them in the driver held every batch's
    first task back by ~2 s."""
    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    code = ("import sys\n"
            "from flame_tracker.batch.items import collect_items, estimated_frames, group_images\n"
            "from flame_tracker.batch.run import detection_parts\n"
            f"items = collect_items([{str(clip)!r}])\n"
            "frames = {it.name: estimated_frames(it) for it in items}\n"
            "group_images(items, 4, frames)\n"
            "assert detection_parts(frames[items[0].name], frames[items[0].name] / 2, 2) == 2\n"
            "heavy = sorted(m for m in ('torch', 'mediapipe', 'flame_tracker.video.pipeline') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def test_batch_reports_a_corrupt_file_and_finishes_the_others(shared_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 but then nothing")
    manifest = tmp_path / "clips.jsonl"
    # the long video is most of the batch's work: its detection is cut into parts, one per worker
    long = {"path": str(shared_dir / "videos" / "talking_wojtek.mp4"), "max_frames": 150}
    manifest.write_text(json.dumps({"path": str(shared_dir / "videos" / "talking_ex3.mp4"), "max_frames": 12}) + "\n"
                        + json.dumps(long) + "\n")
    assert detection_parts(150, 150 + 12 + 2 * PHOTO_FRAMES, 2) == 2  # (1.6 shares)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["batch", str(manifest), str(shared_dir / "images" / "ffhq_00001.png"),
                                    str(shared_dir / "images" / "woman.jpg"), str(broken), "--out", str(out),
                                    "--workers", "2", "--quiet"])
    assert res.exit_code == 1, res.output
    info = json.loads((out / "batch.json").read_text())
    status = {r["name"]: r for r in info["items"]}
    assert {k: v["status"] for k, v in status.items()} == {
        "talking_ex3": "done", "talking_wojtek": "done", "ffhq_00001": "done", "woman": "done", "broken": "failed"}
    # detected in two parts by two workers, fitted by a third task: the results of one run
    assert json.loads((out / "talking_wojtek" / "summary.json").read_text())["frames_done"]["landmarks"] == 0
    alone = tmp_path / "alone"
    track_video(long["path"], alone, video_options=VideoOptions(max_frames=150), progress=False)
    for key in ("lmks_68_px", "exp", "pose6"):
        np.testing.assert_array_equal(load_npz(out / "talking_wojtek" / "tracking.npz")[key],
                                      load_npz(alone / "tracking.npz")[key], err_msg=key)
    assert "could not be opened as a video" in status["broken"]["error"]
    assert status["talking_ex3"]["frames"] == 12 and status["talking_ex3"]["mean_reproj_px"] > 0
    assert (out / "talking_ex3" / "tracking.npz").is_file() and (out / "woman" / "woman.npz").is_file()
    # a photo's settings recorded beside its results, as `flame-tracker image` does
    used = json.loads((out / "woman" / "flame_tracker_config.json").read_text())
    assert used["image"]["expr_prior"] == "blendshapes" and "stage2" in used and "track" not in used
    rows = (out / "batch.csv").read_text().splitlines()
    assert rows[0].startswith("name,input,kind,status,frames,fps,mean_reproj_px") and len(rows) == 6
    assert "1 failed" in res.output and "broken.mp4" in res.output
    # the same batch again: the finished items are skipped, reported with the numbers the batch that
    # made them reported (their own summaries' times leave out the batch's share: a trial saw 7.92 s,
    # then 6.74 s for the same video)
    again = CliRunner().invoke(main, ["batch", str(manifest), str(shared_dir / "images" / "ffhq_00001.png"),
                                      str(shared_dir / "images" / "woman.jpg"), str(broken), "--out", str(out),
                                      "--workers", "2", "--quiet"])
    assert again.exit_code == 1, again.output
    keys = ("frames", "fps", "mean_reproj_px", "seconds")
    for r in json.loads((out / "batch.json").read_text())["items"]:
        if r["name"] != "broken":
            assert r["status"] == "skipped" and [r[k] for k in keys] == [status[r["name"]][k] for k in keys]


def test_an_interrupted_batch_resumes_without_redoing_finished_items(shared_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C after the first photo is done: exit code 130, that photo is kept; the same command
    again skips it (its files untouched) and does the rest."""
    imgs = sorted((shared_dir / "images").glob("ffhq_*.png"))[:4]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flame_tracker.cli.main", "batch", *map(str, imgs), "--out", str(out),
           "--workers", "1", "--photos-per-task", "1", "--quiet"]
    # a background shell starts its children with SIGINT ignored, which they would inherit: restore it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = out / imgs[0].stem / f"{imgs[0].stem}.json"
    deadline = time.time() + 240
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.is_file(), "the first photo was never finished"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the batch finished before it could be interrupted")  # a very fast machine
    assert proc.returncode == 130, output
    info = json.loads((out / "batch.json").read_text())
    assert info["interrupted"] and info["counts"]["interrupted"] >= 1
    # finished = its files written (the JSON last); a photo whose result was still on its way to the
    # driver at Ctrl-C is listed as interrupted in batch.json but finished on disk all the same
    finished = {p.stem for p in imgs if (out / p.stem / f"{p.stem}.json").is_file()}
    done_before = {r["name"] for r in info["items"] if r["status"] == "done"}
    assert imgs[0].stem in finished and done_before <= finished
    stamps = {n: (out / n / f"{n}.npz").stat().st_mtime_ns for n in finished}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    info = json.loads((out / "batch.json").read_text())
    status = {r["name"]: r["status"] for r in info["items"]}
    assert all(status[n] == "skipped" for n in finished)
    # a skipped photo still reports its numbers (from its own summary)
    skipped = [r for r in info["items"] if r["status"] == "skipped"]
    assert all(r["mean_reproj_px"] is not None and 0 < r["mean_reproj_px"] < 20 and r["fps"] > 0 for r in skipped)
    # ... and its frames/s with the time of the run that made it (it reported 0 s beside them)
    assert all(abs(r["fps"] * r["seconds"] - r["frames"]) < 1e-6 * r["frames"] for r in skipped)
    assert all(status[p.stem] in ("done", "skipped") for p in imgs) and len(status) == 4
    assert all((out / n / f"{n}.npz").stat().st_mtime_ns == t for n, t in stamps.items())


def test_batch_without_ray_says_how_to_install(monkeypatch, tmp_path: Path, shared_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    res = CliRunner().invoke(main, ["batch", str(shared_dir / "images" / "woman.jpg"), "--out", str(tmp_path)])
    assert res.exit_code == 1 and 'pip install "flame-tracker[batch]"' in res.output


def test_local_ray_workers_get_the_thread_limit_and_the_caller_keeps_its_environment(monkeypatch) -> None:
    import ray

    from flame_tracker.batch import start_local_ray

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    start_local_ray(1, 1)
    try:
        @ray.remote(num_cpus=1)
        def env() -> tuple[str | None, str | None]:
            return os.environ.get("OMP_NUM_THREADS"), os.environ.get("MKL_NUM_THREADS")

        assert ray.get(env.remote()) == ("1", "1")
    finally:
        ray.shutdown()
    assert os.environ.get("OMP_NUM_THREADS") == "7" and "MKL_NUM_THREADS" not in os.environ


def test_a_video_whose_detection_part_died_is_still_tracked(shared_dir: Path, tmp_path: Path) -> None:
    """A detection part whose worker dies (out of memory, a crash) leaves its blocks to the video's
    own task, which waits for the parts without failing on them and detects what is missing."""
    import ray

    from flame_tracker.batch import start_local_ray
    from flame_tracker.batch.run import process

    start_local_ray(1, 1)
    try:
        @ray.remote(num_cpus=1, max_retries=0)
        def dies() -> dict:
            os._exit(1)

        item = {"path": str(shared_dir / "videos" / "talking_ex3.mp4"), "kind": "video", "name": "clip",
                "options": {"max_frames": 10}}
        rows = process([item], str(tmp_path), 1, False, [dies.remote()])
    finally:
        ray.shutdown()
    assert rows[0]["status"] == "done" and rows[0]["frames"] == 10, rows
    assert (tmp_path / "clip" / "tracking.npz").is_file()


def test_the_summary_keeps_the_items_of_earlier_batches_into_the_same_folder(tmp_path: Path) -> None:
    """A second batch into the same ``--out`` with other inputs: ``batch.csv`` lists the earlier
    batch's items still there (and its failures) with the new ones; ``batch.json`` keeps them apart
    (its counts are this batch's); an earlier item whose results were removed, or that an interrupted
    batch never ran, is left out."""
    from flame_tracker.batch.run import BatchSummary, _row

    def row(name: str, status: str) -> dict:
        return _row({"name": name, "path": f"/in/{name}.mp4", "kind": "video"}, status)

    for name in ("a", "b", "gone"):
        (tmp_path / name).mkdir()
    BatchSummary(tmp_path, rows=[row("a", "done"), row("b", "done"), row("bad", "failed"), row("gone", "done"),
                               row("never", "interrupted")]).write()
    (tmp_path / "gone").rmdir()
    second = BatchSummary(tmp_path, rows=[row("b", "skipped"), row("c", "done")])
    (tmp_path / "c").mkdir()
    second.write()
    info = json.loads((tmp_path / "batch.json").read_text())
    assert [r["name"] for r in info["items"]] == ["b", "c"] and info["counts"]["done"] == 1
    assert [r["name"] for r in info["earlier_items"]] == ["a", "bad"]
    lines = (tmp_path / "batch.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["a", "bad", "b", "c"]
    assert lines[3].split(",")[3] == "skipped"
    assert lines[2].split(",")[5] == "" and "nan" not in (tmp_path / "batch.csv").read_text()  # failed: no fps
    # a batch.json that is not a summary of ours (a list, a string) is no earlier batch
    for other in ("[1, 2]", '"x"', '{"items": 3}', '{"earlier_items": true}', '{"items": [{"name": ["a"]}]}'):
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        (tmp_path / "elsewhere" / "batch.json").write_text(other)
        assert BatchSummary(tmp_path / "elsewhere", rows=[row("e", "done")]).earlier_rows() == []
    # a third batch still sees the first one's items
    BatchSummary(tmp_path, rows=[row("d", "failed")]).write()
    info = json.loads((tmp_path / "batch.json").read_text())
    assert sorted(r["name"] for r in info["earlier_items"]) == ["a", "b", "bad", "c"]


def test_an_input_finds_its_folder_of_an_earlier_batch_again(tmp_path: Path) -> None:
    """Names come from stems, made unique within a batch: a photo and a video of one stem went to
    ``clip/`` and ``clip_1/``. A later batch of the video alone used to name it ``clip`` and fail on
    the photo's folder (a user trial); now a folder holding another input's results is passed over,
    and the video finds ``clip_1`` again."""
    from flame_tracker.video.store import MANIFEST, PHOTO_CONFIG

    src = tmp_path / "in"
    src.mkdir()
    photo, video, other = src / "clip.jpg", src / "clip.mp4", tmp_path / "other" / "clip.mp4"
    for p in (photo, video):
        p.write_bytes(b"x")
    out = tmp_path / "out"
    first = collect_items([src], out)
    assert [(Path(i.path).name, i.name) for i in first] == [("clip.jpg", "clip"), ("clip.mp4", "clip_1")]
    (out / "clip").mkdir(parents=True)  # what that batch left: the photo's fit, the video's run
    (out / "clip" / "clip.json").write_text(json.dumps({"source": str(photo)}))
    (out / "clip" / PHOTO_CONFIG).write_text("{}")
    (out / "clip_1").mkdir()
    (out / "clip_1" / MANIFEST).write_text(json.dumps({"video": {"path": str(video.resolve())}}))
    assert [i.name for i in collect_items([video], out)] == ["clip_1"]
    assert [i.name for i in collect_items([photo], out)] == ["clip"]
    assert [i.name for i in collect_items([photo, video], out)] == ["clip", "clip_1"]
    other.parent.mkdir()
    other.write_bytes(b"y")  # another file of that stem: a folder of its own
    assert [i.name for i in collect_items([other], out)] == ["clip_2"]
    assert [i.name for i in collect_items([video])] == ["clip"]  # (no out folder given: stems as before)
    (out / "clip_2").mkdir()  # an empty folder holds nothing: free
    assert [i.name for i in collect_items([other], out)] == ["clip_2"]
