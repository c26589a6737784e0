"""``track_video`` / ``flame-tracker video`` on real clips: outputs, resume, bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from flame_tracker.errors import InputError
from flame_tracker.io.results import REFERENCE_KEYS, load_npz
from flame_tracker.video import blocks as blocks_mod
from flame_tracker.video import pipeline as pipeline_mod
from flame_tracker.video import track as track_mod
from flame_tracker.video.decode import VideoError
from flame_tracker.video.pipeline import VideoOptions, track_video
from flame_tracker.video.track import NoFacesError, TrackOptions

TINY = TrackOptions(n_keyframes=3, identity_rounds=1, identity_iters=5, chunk=4)


def kill_fits_at(monkeypatch, n: int) -> None:
    """Make the ``n``-th chunk fit (``video.track.fit_frames``) raise KeyboardInterrupt: a run
    killed while fitting."""
    calls = [0]
    real_fit = track_mod.fit_frames

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(track_mod, "fit_frames", flaky)


@pytest.fixture(scope="module")
def model(shared_dir: Path):
    from flame_tracker.model import load_model

    return load_model()


@pytest.mark.slow
def test_track_resume_and_outputs(shared_dir: Path, tmp_path: Path, model, monkeypatch) -> None:
    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    out = tmp_path / "run"
    vopts = VideoOptions(start_s=2.0, max_frames=12, every=2, meshes="ply")
    calls: list[int] = []
    kill = [True]
    real = track_mod.fit_frames

    def flaky(*args, **kwargs):
        calls.append(len(args[3]))  # (model, identity, targets, frames, ...)
        if kill[0] and len(calls) == 2:  # killed while fitting the second chunk
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(track_mod, "fit_frames", flaky)
    with pytest.raises(KeyboardInterrupt):
        track_video(clip, out, model=model, options=TINY, video_options=vopts, progress=False)
    assert not (out / "tracking.npz").exists()
    stale = out / ".tracking.999.0123456789ab.parts"  # what a hard kill while writing leaves
    stale.mkdir()
    (stale / "exp.npy").write_bytes(b"partial")
    monkeypatch.setattr(pipeline_mod, "WRITE_BLOCK", 5)  # blocks of 5, 5, 2 frames

    calls.clear()
    kill[0] = False
    summary = track_video(clip, out, model=model, options=TINY, video_options=vopts,
                          progress=False)
    # resumed: no frame decoded+detected again, only the 8 frames not yet fitted were fitted
    assert summary.frames_done == {"landmarks": 0, "fits": 8}
    assert sum(calls) == 8
    assert summary.n_frames == 12 and summary.n_tracked == 12 and summary.n_dropped == 0
    assert summary.mean_reproj_px < 10.0

    frames = sorted((out / "frames").glob("*.npz"))
    assert [int(f.stem) for f in frames] == list(range(50, 74, 2))  # source frame indices
    one = load_npz(frames[0])
    for key in REFERENCE_KEYS:
        assert key in one and one[key].shape[0] == 1, key
    assert one["exp"].shape == (1, model.n_expr) and one["cam"].shape == (1, 6)
    assert np.abs(one["lmks_68"]).max() < 1.5  # normalised to the fitting crop
    # fit_lmks_68_px: the model's own 68 points (as for photos); the detector-convention points the
    # fit matched are fit_lmks_68_detector_px
    assert not np.allclose(one["fit_lmks_68_px"], one["fit_lmks_68_detector_px"])
    # K_px and the OpenCV camera project the fitted model onto the detected landmarks
    assert np.linalg.norm(one["fit_lmks_68_px"] - one["lmks_68_px"], axis=-1).mean() < 10.0
    whole = load_npz(out / "tracking.npz")
    assert whole["exp"].shape == (12, model.n_expr) and whole["shape"].shape == (1, model.n_shape)
    np.testing.assert_array_equal(whole["frame"], np.arange(50, 74, 2))
    assert float(whole["video_fps"]) == pytest.approx(25.0)
    for i, f in enumerate(frames):  # the consolidated file, written in blocks, holds each frame's file
        per = load_npz(f)
        for key in ("exp", "pose6", "fit_lmks_68_px", "source"):
            np.testing.assert_array_equal(whole[key][i:i + 1], per[key], err_msg=key)
    assert not stale.exists()

    from flame_tracker.io.mesh import load_ply

    plys = sorted((out / "meshes").glob("*.ply"))
    assert [p.stem for p in plys] == [f.stem for f in frames]
    verts, faces = load_ply(plys[0])
    assert verts.shape == (model.n_verts, 3) and len(faces) == len(model.faces)

    # a second run on the finished folder does nothing
    calls.clear()
    again = track_video(clip, out, model=model, options=TINY, video_options=vopts,
                        progress=False)
    assert again.skipped and calls == []
    # a different frame selection in the same folder is refused without --force
    from flame_tracker.video.store import OutputMismatchError

    with pytest.raises(OutputMismatchError, match="--force"):
        track_video(clip, out, model=model, options=TINY,
                    video_options=VideoOptions(max_frames=5), progress=False)


@pytest.mark.slow
def test_corrupt_stream_keeps_tracked_frames(truncated_mkv: Path, tmp_path: Path, model) -> None:
    cut = truncated_mkv
    summary = track_video(cut, tmp_path / "out", model=model, options=TINY,
                          video_options=VideoOptions(every=4), progress=False)
    assert summary.broken is not None and "broke after frame" in summary.broken
    assert 3 <= summary.n_tracked < 15
    assert (tmp_path / "out" / "tracking.npz").exists()
    assert "broke" in summary.text()


@pytest.mark.slow
def test_overlay_video(shared_dir: Path, tmp_path: Path, model) -> None:
    from flame_tracker.video.decode import VideoReader, probe

    out = tmp_path / "ov"
    track_video(shared_dir / "videos" / "talking_wojtek.mp4", out, model=model, options=TINY,
                video_options=VideoOptions(max_frames=3, overlay=True, side_by_side=True),
                progress=False)
    info = probe(out / "overlay.mp4")
    assert (info.width, info.height) == (1024, 512)
    frames = list(VideoReader(out / "overlay.mp4"))
    assert len(frames) == 3
    left, right = frames[1].image[:, :512].astype(int), frames[1].image[:, 512:].astype(int)
    # the right half has the mesh drawn over the face region, the left half is the input
    assert np.abs(left - right)[150:400, 150:400].mean() > 10
    assert np.abs(left - right)[:40, 400:].mean() < 5


@pytest.mark.slow
def test_a_killed_overlay_keeps_the_pieces_it_finished(shared_dir: Path, tmp_path: Path, model, monkeypatch) -> None:
    """A run killed while drawing the overlay keeps the pieces it finished: the resumed run draws only
    from the first piece missing, and its overlay.mp4 holds the frames of an uninterrupted run's, at the
    same times; the pieces are gone at the end."""
    from flame_tracker.rendering import overlay as overlay_mod
    from flame_tracker.video.decode import VideoReader

    monkeypatch.setattr(pipeline_mod, "OVERLAY_PIECE", 8)
    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    vopts = VideoOptions(max_frames=20, overlay=True)
    whole = tmp_path / "whole"
    track_video(clip, whole, model=model, options=TINY, video_options=vopts, progress=False)

    real, drawn = overlay_mod.render_overlay, [0]

    def counted(*args, **kwargs):
        drawn[0] += 1
        if drawn[0] == kill_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(overlay_mod, "render_overlay", counted)
    kill_at, resumed = 12, tmp_path / "resumed"  # inside the second piece (frames 8-15)
    with pytest.raises(KeyboardInterrupt):
        track_video(clip, resumed, model=model, options=TINY, video_options=vopts, progress=False)
    pieces = resumed / "work" / "overlay"
    assert (pieces / "00000.mp4").is_file() and not (pieces / "00001.mp4").exists()
    assert not (resumed / "overlay.mp4").exists()
    drawn[0], kill_at = 0, -1
    track_video(clip, resumed, model=model, options=TINY, video_options=vopts, progress=False)
    assert drawn[0] == 12  # frames 8-19 only
    assert not pieces.exists()
    a, b = list(VideoReader(whole / "overlay.mp4")), list(VideoReader(resumed / "overlay.mp4"))
    assert len(a) == len(b) == 20
    np.testing.assert_allclose([f.time_s for f in a], [f.time_s for f in b], atol=1e-4)
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa.image, fb.image)


@pytest.mark.slow
def test_a_finished_run_draws_the_overlay_and_meshes_it_is_asked_for_again(shared_dir: Path, tmp_path: Path,
                                                                           model) -> None:
    """A finished run asked for its overlay side by side, or its meshes in another format, writes them
    (a trial's `--side-by-side` on a finished run said "nothing to do" and kept the plain overlay);
    asked again the same, it does nothing."""
    from flame_tracker.video.decode import probe

    clip, out = shared_dir / "videos" / "talking_wojtek.mp4", tmp_path / "run"

    def run(**kw):
        return track_video(clip, out, model=model, options=TINY, progress=False,
                           video_options=VideoOptions(max_frames=3, overlay=True, **kw))

    assert not run().skipped and probe(out / "overlay.mp4").width == 512
    assert not run(side_by_side=True).skipped and probe(out / "overlay.mp4").width == 1024
    assert run(side_by_side=True).skipped
    assert not run(side_by_side=True, meshes="obj").skipped and len(list((out / "meshes").glob("*.obj"))) == 3
    assert run(side_by_side=True, meshes="obj").skipped
    assert not (out / "work" / "overlay").exists()


@pytest.mark.slow
def test_overlay_says_where_no_face_was_found(shared_dir: Path, tmp_path: Path, model) -> None:
    """Frames of the run without a result are labelled in the overlay (a footage trial found them bare,
    while flow and interpolated frames were labelled)."""
    from flame_tracker.video.decode import VideoReader
    from flame_tracker.video.encode import VideoWriter

    src = [f.image for f in VideoReader(shared_dir / "videos" / "talking_wojtek.mp4", max_frames=40)]
    clip = tmp_path / "gap.mp4"
    with VideoWriter(clip, fps=25.0) as writer:
        for k, img in enumerate(src):  # 0.8 s of grey: longer than max_gap_s, nothing bridged there
            writer.write(np.full_like(img, 128) if 10 <= k < 30 else img)
    out = tmp_path / "ov"
    summary = track_video(clip, out, model=model, options=replace(TINY, flow=False),
                          video_options=VideoOptions(overlay=True), progress=False)
    assert summary.n_dropped == 20
    frames = list(VideoReader(out / "overlay.mp4"))
    corner = frames[20].image[:40, -150:].astype(int)
    assert np.abs(corner - 128).max() > 60  # the caption over the grey frame (top right: the legend is top left)
    assert np.abs(frames[20].image[200:, 200:].astype(int) - 128).max() < 12  # nothing else drawn


@pytest.mark.slow
def test_a_video_stored_upside_down_is_refused_with_what_to_do(shared_dir: Path, tmp_path: Path, model) -> None:
    """A clip stored upside down without a rotation flag is refused, saying how to turn it (tracked, it
    gave an upright head drawn across the turned face, exit code 0); a clip mostly without faces
    (grey frames, nothing turned over there either) is tracked as before."""
    from flame_tracker.video.decode import VideoReader
    from flame_tracker.video.encode import VideoWriter

    src = [f.image for f in VideoReader(shared_dir / "videos" / "talking_wojtek.mp4", max_frames=30)]
    turned = tmp_path / "turned.mp4"
    with VideoWriter(turned, fps=25.0) as writer:
        for img in src:
            writer.write(np.ascontiguousarray(img[::-1, ::-1]))
    with pytest.raises(InputError, match=r"upside down.*hflip,vflip"):
        track_video(turned, tmp_path / "t", model=model, options=TINY, progress=False)
    grey = tmp_path / "grey.mp4"
    with VideoWriter(grey, fps=25.0) as writer:
        for k, img in enumerate(src):
            writer.write(np.full_like(img, 128) if k < 22 else img)
    summary = track_video(grey, tmp_path / "g", model=model, options=replace(TINY, flow=False), progress=False)
    assert summary.n_tracked == 8


def test_bad_input_errors(tmp_path: Path, shared_dir: Path, model) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        track_video(tmp_path / "nope.mp4", tmp_path / "o", model=model, progress=False)
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00" * 4096)
    with pytest.raises(VideoError):
        track_video(fake, tmp_path / "o", model=model, progress=False)
    # a real video without any face: a clear error, not a crash
    blank = tmp_path / "blank.mp4"
    container = av.open(str(blank), mode="w")
    stream = container.add_stream("libx264", rate=Fraction(10))
    stream.width, stream.height, stream.pix_fmt = 128, 128, "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(5):
        img = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
        for p in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)
    container.close()
    with pytest.raises(NoFacesError, match="no face found in any of the 5 frames"):
        track_video(blank, tmp_path / "o2", model=model, progress=False)
    # a range before the video's end that holds no frame (the last one is at 0.4 s): said so, not "no face"
    with pytest.raises(NoFacesError, match=r"no frame of .* lies in the selected range \(from 0.45 s\)"):
        track_video(blank, tmp_path / "o3", model=model, video_options=VideoOptions(start_s=0.45), progress=False)


def test_cli_reports_bad_input(tmp_path: Path) -> None:
    from flame_tracker.cli.main import main

    result = CliRunner().invoke(main, ["video", str(tmp_path / "missing.mp4"), "--out",
                                       str(tmp_path / "o")])
    assert result.exit_code != 0
    assert "does not exist" in result.output


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path: Path, shared_dir: Path) -> None:
    """The same command started twice: the second says so at once (exit 1) and leaves the first's
    folder alone (the two used to overwrite each other's files, and one failed on a file the other
    had removed)."""
    from flame_tracker.cli.main import main
    from flame_tracker.video.store import RunFolder

    clip, out = shared_dir / "videos" / "talking_wojtek.mp4", tmp_path / "run"
    held = RunFolder(out, clip, {"first": "run"}, exclusive=True)
    try:
        result = CliRunner().invoke(main, ["video", str(clip), "--out", str(out), "--max-frames", "3", "--quiet"])
    finally:
        held.release()
    assert result.exit_code == 1
    assert "another process is tracking into" in result.output
    assert json.loads((out / "manifest.json").read_text())["settings"] == {"first": "run"}


def test_cli_names_a_start_past_the_end_and_leaves_no_folder(tmp_path: Path, shared_dir: Path) -> None:
    from flame_tracker.cli.main import main

    out = tmp_path / "o"
    result = CliRunner().invoke(main, ["video", str(shared_dir / "videos" / "talking_ex3.mp4"), "--out", str(out),
                                       "--start", "100"])
    assert result.exit_code == 1 and "past the end" in result.output, result.output
    assert not out.exists()


def test_batched_result_arrays_equal_per_frame_arrays() -> None:
    """The video writer converts all frames in one batched ``Result.arrays()`` call: each row must
    equal what a single-frame Result (the photo path) writes."""
    from flame_tracker.tracker import Result
    from flame_tracker.video.pipeline import FIXED_KEYS

    rng = np.random.default_rng(0)
    n = 3
    f32 = np.float32

    def result(sl: slice) -> Result:
        one = sl.stop - sl.start == 1  # a photo's Result: per-image arrays without a frame axis
        per = lambda a: a[sl][0] if one else a[sl]  # noqa: E731
        return Result(
            model_name="m", image_size=(640, 480), crop=(10.0, 5.0, 300.0),
            shape=np.ones((1, 4), f32), exp=exp[sl], head_pose=np.zeros_like(jaw[sl]),
            jaw_pose=jaw[sl], neck_pose=np.zeros_like(jaw[sl]), eye_pose=eye[sl],
            pose6=pose6[sl], fov=fov[sl], lmks68_px=per(l68), iris_px=per(iris),
            fit_lmks68_px=per(f68), fit_iris_px=per(firis),
            vertices=np.zeros((0, 3), f32), faces=np.zeros((0, 3), np.int64),
            objective=float(per(obj)) if one else obj[sl],
            stage1_objective=float("nan") if one else np.full(n, np.nan),
            blendshape_scores=per(bs), expr_names=("a", "b"))

    exp, jaw, eye = (rng.normal(size=(n, k)).astype(f32) for k in (5, 3, 6))
    pose6 = np.concatenate([rng.normal(0, 0.3, (n, 3)), rng.normal(0, 0.1, (n, 2)),
                            rng.uniform(0.8, 1.2, (n, 1))], 1)
    fov = np.full(n, 20.0, f32)
    l68, f68 = (rng.uniform(0, 400, (n, 68, 2)).astype(f32) for _ in range(2))
    iris, firis = (rng.uniform(0, 400, (n, 10, 2)).astype(f32) for _ in range(2))
    obj = rng.uniform(size=n)
    bs = rng.uniform(size=(n, 52)).astype(f32)
    batched = result(slice(0, n)).arrays()
    for i in range(n):
        single = result(slice(i, i + 1)).arrays()
        assert set(single) == set(batched)
        for k, v in single.items():
            got = batched[k] if k in FIXED_KEYS else batched[k][i:i + 1]
            assert got.shape == v.shape, k
            if v.dtype.kind in "fi":
                np.testing.assert_allclose(got, v, rtol=1e-6, atol=1e-6, err_msg=k)
            else:
                np.testing.assert_array_equal(got, v, err_msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("kill_in", ["landmarks", "fits"])
def test_resume_after_a_kill_equals_an_uninterrupted_run(shared_dir: Path, tmp_path: Path, model, monkeypatch,
                                                          kill_in: str) -> None:
    """A run killed while detecting (mid-block) or while fitting, then resumed, writes exactly the
    results of a run that was never interrupted: MediaPipe's tracking restarts at fixed blocks and a
    resumed run redoes the partly detected block."""
    from flame_tracker.detection import search as search_mod

    monkeypatch.setattr(blocks_mod, "DETECT_BLOCK", 8)
    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    vopts = VideoOptions(max_frames=20, overlay=False, meshes=None)
    whole = tmp_path / "whole"
    track_video(clip, whole, model=model, options=TINY, video_options=vopts, progress=False)

    calls = [0]
    if kill_in == "landmarks":
        real = search_mod.FaceFollower.__call__

        def flaky(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 16:  # inside the second block of 8 (calls 9-13 replay the 5 warm-up frames)
                raise KeyboardInterrupt
            return real(self, *args, **kwargs)

        monkeypatch.setattr(search_mod.FaceFollower, "__call__", flaky)
    else:
        kill_fits_at(monkeypatch, 3)
    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        track_video(clip, resumed, model=model, options=TINY, video_options=vopts, progress=False)
    monkeypatch.undo()
    monkeypatch.setattr(blocks_mod, "DETECT_BLOCK", 8)
    track_video(clip, resumed, model=model, options=TINY, video_options=vopts, progress=False)
    a, b = load_npz(whole / "tracking.npz"), load_npz(resumed / "tracking.npz")
    assert set(a) == set(b)
    for key in a:
        if a[key].dtype.kind in "fc":
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert np.array_equal(a[key], b[key]), key


@pytest.mark.slow
def test_a_long_video_keeps_its_arrays_on_disk_with_the_same_results(shared_dir: Path, tmp_path: Path, model,
                                                                      monkeypatch) -> None:
    """With every per-frame array in memory-mapped work files (what a long video gets, forced here
    from one frame on) and the smoother working in windows, a run killed while fitting and resumed
    writes the results of an in-memory run, and leaves no work arrays behind."""
    from flame_tracker.video import store as store_mod
    from flame_tracker.video import temporal as temporal_mod

    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    vopts = VideoOptions(max_frames=200, overlay=False, meshes=None)
    whole = tmp_path / "whole"
    track_video(clip, whole, model=model, options=TINY, video_options=vopts, progress=False)

    monkeypatch.setattr(store_mod, "DISK_FRAMES", 1)
    monkeypatch.setattr(temporal_mod, "SMOOTH_WINDOW", 16)  # 200 frames: windows of 16 (+ 64 each side)
    mapped: list[str] = []
    real_full = store_mod.FrameArrays.full

    def full(self, name, shape, fill, dtype=np.float64):
        arr = real_full(self, name, shape, fill, dtype)
        if isinstance(arr, np.memmap):
            mapped.append(name)
        return arr

    monkeypatch.setattr(store_mod.FrameArrays, "full", full)
    real_fit = track_mod.fit_frames
    kill_fits_at(monkeypatch, 20)
    on_disk = tmp_path / "on_disk"
    with pytest.raises(KeyboardInterrupt):
        track_video(clip, on_disk, model=model, options=TINY, video_options=vopts, progress=False)
    monkeypatch.setattr(track_mod, "fit_frames", real_fit)
    track_video(clip, on_disk, model=model, options=TINY, video_options=vopts, progress=False)
    assert {"landmarks_lmks68", "raw_expr", "stored_fits_expr", "smooth_out", "fit_lmks68"} <= set(mapped)
    assert not (on_disk / "work" / "arrays").exists()
    a, b = load_npz(whole / "tracking.npz"), load_npz(on_disk / "tracking.npz")
    assert set(a) == set(b)
    for key in a:
        if a[key].dtype.kind in "fc":
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-9, err_msg=key)
        else:
            assert np.array_equal(a[key], b[key]), key


def test_tracking_restarts_do_not_jump_the_landmarks(shared_dir: Path, tmp_path: Path, model, monkeypatch) -> None:
    # MediaPipe's tracking restarts at every detection block; the restarted tracker first sees the
    # frames before the block again, so the landmarks at a restart move like those between frames
    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    vopts = VideoOptions(max_frames=97, overlay=False, meshes=None)
    monkeypatch.setattr(blocks_mod, "DETECT_BLOCK", 16)
    jump = {}
    for warm in (0, pipeline_mod.DETECT_WARMUP):
        monkeypatch.setattr(pipeline_mod, "DETECT_WARMUP", warm)
        track_video(clip, tmp_path / f"w{warm}", model=model, options=TINY, video_options=vopts, progress=False)
        pts = load_npz(tmp_path / f"w{warm}" / "tracking.npz")["lmks_68_px"].astype(float)
        iod = np.linalg.norm(pts[:, 36] - pts[:, 45], axis=-1)
        second = np.linalg.norm(pts[1:-1] - 0.5 * (pts[:-2] + pts[2:]), axis=-1).mean(-1) / iod[1:-1]
        at_restart = np.arange(1, len(pts) - 1) % 16 == 0
        jump[warm] = (second[at_restart].mean(), np.median(second[~at_restart]))
    (cold, typical), (warm, _) = jump[0], jump[pipeline_mod.DETECT_WARMUP]
    assert cold > 2 * typical  # the jump this guards against
    assert warm < 0.6 * cold, jump


def test_dense_landmarks_run(shared_dir: Path, tmp_path: Path, model) -> None:
    """``landmarks="dense"`` stores MediaPipe's 478 points with the detections (original pixels,
    around the 68 of the same frame), fits them, and keys the run folder: a folder tracked with the
    68 points is not resumed as a dense run."""
    from dataclasses import replace

    from flame_tracker.video.store import CheckpointStage, OutputMismatchError

    clip = shared_dir / "videos" / "talking_ex3.mp4"
    vopts = VideoOptions(max_frames=6)
    dense_opts = replace(TINY, landmarks="dense")
    track_video(clip, tmp_path / "dense", model=model, options=dense_opts, video_options=vopts, progress=False)
    track_video(clip, tmp_path / "68", model=model, options=TINY, video_options=vopts, progress=False)
    rec = CheckpointStage(tmp_path / "dense", "landmarks").load()
    assert rec["dense"].shape == (6, 478, 2) and np.isfinite(rec["dense"]).all()
    lo, hi = rec["lmks68"].min(1), rec["lmks68"].max(1)  # the face outline holds the 68 points
    assert (rec["dense"][:, :468].min(1) <= lo + 1).all() and (rec["dense"][:, :468].max(1) >= hi - 1).all()
    assert "dense" not in CheckpointStage(tmp_path / "68", "landmarks").load()
    a, b = load_npz(tmp_path / "dense" / "tracking.npz"), load_npz(tmp_path / "68" / "tracking.npz")
    np.testing.assert_array_equal(a["lmks_68_px"], b["lmks_68_px"])  # the same detections
    assert np.abs(a["exp"] - b["exp"]).max() > 1e-3  # another objective, other expressions
    with pytest.raises(OutputMismatchError, match=r"track\.landmarks: '\(default\)' -> 'dense'"):
        track_video(clip, tmp_path / "68", model=model, options=dense_opts, video_options=vopts, progress=False)


def test_detection_threads_give_the_same_landmarks(shared_dir: Path, tmp_path: Path, model, monkeypatch) -> None:
    """Detection blocks start afresh, so one thread or several (each with its own decoder and
    landmarker, the blocks split between them) detect the same landmarks. The clip is short, so its
    blocks are shorter than ``DETECT_BLOCK`` (here 8 frames: 30 frames over 4 blocks)."""
    monkeypatch.setattr(blocks_mod, "DETECT_MIN_BLOCK", 8)
    assert blocks_mod.detect_block(30) == 8
    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    out = {}
    for threads in (1, 3):
        track_video(clip, tmp_path / f"t{threads}", model=model, options=TINY, progress=False,
                    video_options=VideoOptions(max_frames=30, detect_threads=threads))
        out[threads] = load_npz(tmp_path / f"t{threads}" / "tracking.npz")
    assert out[1]["valid"].all() and len(out[1]["frame"]) == 30
    for key in ("lmks_68_px", "lmks_eyes_px", "blendshape_scores", "exp", "pose6"):
        np.testing.assert_array_equal(out[1][key], out[3][key], err_msg=key)


def _keyframe_clip(source: Path, out: Path, n: int, keyint: int, damage: int | None = None) -> None:
    """``source``'s first ``n`` frames at 320 × 240 with a keyframe every ``keyint`` frames; ``damage``:
    that packet (decode order) replaced by random bytes (a damaged file)."""
    import io

    buf = io.BytesIO()
    src = av.open(str(source))
    enc = av.open(buf, "w", format="matroska")
    stream = enc.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
    stream.options = {"crf": "18", "g": str(keyint), "keyint_min": str(keyint), "sc_threshold": "0"}
    for i, frame in enumerate(src.decode(video=0)):
        if i == n:
            break
        small = av.VideoFrame.from_ndarray(frame.to_ndarray(width=320, height=240, format="rgb24"), format="rgb24")
        for packet in stream.encode(small):
            enc.mux(packet)
    for packet in stream.encode():
        enc.mux(packet)
    enc.close()
    src.close()
    buf.seek(0)
    coded = av.open(buf)
    instream = coded.streams.video[0]
    dst = av.open(str(out), "w")
    ostream = dst.add_stream_from_template(instream)
    rng = np.random.default_rng(0)
    for i, packet in enumerate(p for p in coded.demux(instream) if p.size):
        if i == damage:
            bad = av.Packet(rng.integers(0, 256, packet.size + 200, dtype=np.uint8).tobytes())
            bad.pts, bad.dts, bad.time_base, bad.is_keyframe = packet.pts, packet.dts, packet.time_base, False
            packet = bad
        packet.stream = ostream
        dst.mux(packet)
    dst.close()
    coded.close()


def test_detection_threads_that_jump_to_keyframes_give_the_same_landmarks(shared_dir: Path, tmp_path: Path, model,
                                                                        monkeypatch) -> None:
    """In a video with frequent keyframes, the threads that detect later blocks start decoding at
    the keyframe before them (``VideoReader``'s seek plan) instead of at the start, with the same
    landmarks as one thread decoding every frame; in a damaged one, the damaged packet is passed over
    and reported the same way whatever the threads (a later thread's reader jumps past it)."""
    from flame_tracker.video import decode as decode_mod

    wojtek = shared_dir / "videos" / "talking_wojtek.mp4"
    _keyframe_clip(wojtek, tmp_path / "gop.mkv", 30, 6)  # a keyframe every 6 frames
    _keyframe_clip(wojtek, tmp_path / "bad.mkv", 30, 6, damage=11)
    monkeypatch.setattr(blocks_mod, "DETECT_MIN_BLOCK", 8)
    monkeypatch.setattr(decode_mod, "SEEK_MIN_FRAMES", 4)
    starts: list[int] = []
    plan = decode_mod.VideoReader._seek_plan

    def spy(self, *args, **kwargs):
        got = plan(self, *args, **kwargs)
        starts.extend(seg[0] for seg in got.segments) if got is not None else None
        return got

    monkeypatch.setattr(decode_mod.VideoReader, "_seek_plan", spy)
    out = {}
    for name in ("gop", "bad"):
        for threads in (1, 3):
            starts.clear()
            summary = track_video(tmp_path / f"{name}.mkv", tmp_path / f"{name}{threads}", model=model, options=TINY,
                                  progress=False, video_options=VideoOptions(detect_threads=threads))
            out[name, threads] = (load_npz(tmp_path / f"{name}{threads}" / "tracking.npz"), sorted(starts), summary)
    assert out["gop", 1][0]["valid"].all() and len(out["gop", 1][0]["frame"]) == 30
    # blocks of 8 frames; the third thread detects block 24-29, warmed up from frame 19: it starts at
    # keyframe 18 (the second thread's block 8-15 warms up from frame 3: from the start)
    assert out["gop", 1][1] == [] and out["gop", 3][1] == [18]
    assert out["gop", 1][2].broken is None and out["gop", 3][2].broken is None
    # the damaged packet is passed over (decoding used to stop there: one bad packet lost the rest of
    # the video) and reported, the same with one thread and three (the third jumps past it)
    # (the damaged packet, 11th in decode order, is frame 16's: a reader that meets it decodes on to
    # the next keyframe, 18, and goes on from there afresh, as the third thread's reader, which jumps
    # to keyframe 18, decodes)
    bad1, bad3 = out["bad", 1][2], out["bad", 3][2]
    assert bad1.broken is None and bad3.broken is None
    assert out["bad", 1][1] == [18] and out["bad", 3][1] == [18, 18]
    assert bad1.damaged is not None and "at frame 16" in bad1.damaged
    assert bad1.damaged is not None and "damaged" in bad1.damaged and bad3.damaged == bad1.damaged
    assert "damaged" in bad1.text()
    n_bad = len(out["bad", 1][0]["frame"])
    assert 28 <= n_bad <= 30 and len(out["bad", 3][0]["frame"]) == n_bad
    for name in ("gop", "bad"):
        for key in ("frame", "lmks_68_px", "lmks_eyes_px", "blendshape_scores", "exp", "pose6"):
            np.testing.assert_array_equal(out[name, 1][0][key], out[name, 3][0][key], err_msg=f"{name} {key}")


def test_a_short_clip_is_cut_into_blocks_for_every_thread() -> None:
    """Blocks of ``DETECT_BLOCK`` frames, or ``DETECT_THREADS`` shorter ones (not under
    ``DETECT_MIN_BLOCK``) in a short clip; an unknown length keeps ``DETECT_BLOCK``."""
    full, least = blocks_mod.DETECT_BLOCK, blocks_mod.DETECT_MIN_BLOCK
    n = blocks_mod.DETECT_THREADS
    assert blocks_mod.detect_block(0) == full and blocks_mod.detect_block(100 * full) == full
    assert blocks_mod.detect_block(n * full) == full and blocks_mod.detect_block(1) == least
    mid = n * (least + full) // 2
    assert blocks_mod.detect_block(mid) == -(-mid // n) and least < -(-mid // n) < full


def test_a_video_detected_in_parts_gives_the_results_of_one_run(shared_dir: Path, tmp_path: Path, model,
                                                                 monkeypatch) -> None:
    """Several processes (here threads) may each detect one part of a video's blocks into the same
    folder at the same time (the batch on Ray does, for long videos); a call without a part then goes
    on from the stored blocks, and the results are those of one uninterrupted run."""
    from concurrent.futures import ThreadPoolExecutor

    from flame_tracker.errors import InputError

    monkeypatch.setattr(blocks_mod, "DETECT_BLOCK", 8)
    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    vopts = VideoOptions(max_frames=30, overlay=False, meshes=None, detect_threads=1)
    alone = track_video(clip, tmp_path / "one", model=model, options=TINY, video_options=vopts, progress=False)
    folder = tmp_path / "parts"

    def part(i: int):
        return track_video(clip, folder, model=model, options=TINY, video_options=vopts, progress=False,
                           detect_part=(i, 3))

    with ThreadPoolExecutor(3) as pool:
        detected = sum(s.frames_done["landmarks"] for s in pool.map(part, range(3)))
    assert detected >= 30 and not (folder / "tracking.npz").exists()  # the parts only detect
    summary = track_video(clip, folder, model=model, options=TINY, video_options=vopts, progress=False)
    assert summary.frames_done["landmarks"] == 0  # every block stored, the last (short) one too
    assert summary.faces_seen == alone.faces_seen == 1  # what the parts' followers saw is kept
    one, parts = load_npz(tmp_path / "one" / "tracking.npz"), load_npz(folder / "tracking.npz")
    for key in ("lmks_68_px", "lmks_eyes_px", "exp", "pose6", "fit_lmks_68_px"):
        np.testing.assert_array_equal(one[key], parts[key], err_msg=key)
    with pytest.raises(InputError, match="force"):
        track_video(clip, folder, model=model, options=TINY, video_options=vopts, detect_part=(0, 2), force=True)


def test_a_resume_detects_the_blocks_past_a_short_frame_count(shared_dir: Path, tmp_path: Path, model,
                                                              monkeypatch) -> None:
    """A container that counts fewer frames than it holds: the reader that reaches the end stores
    where the selection ends, and a resume detects every missing block up to there (not only up to
    the container's count), then nothing once all are stored."""
    from flame_tracker.video.store import CheckpointStage

    monkeypatch.setattr(blocks_mod, "DETECT_BLOCK", 8)
    monkeypatch.setattr(pipeline_mod.VideoReader, "expected_frames", lambda reader: 12)  # the container says 12
    clip = shared_dir / "videos" / "talking_wojtek.mp4"
    vopts = VideoOptions(max_frames=30, overlay=False, meshes=None, detect_threads=1)
    out = tmp_path / "run"
    track_video(clip, out, model=model, options=TINY, video_options=vopts, progress=False)
    first = load_npz(out / "tracking.npz")
    assert len(first["frame"]) == 30
    stage = CheckpointStage(out, "landmarks")
    last = stage.files()[-1]
    assert last.name.endswith("_000029.npz")
    def unfinish() -> None:  # as a run killed after its detection threads
        (out / "work" / "landmarks_done.json").unlink()
        manifest = (out / "manifest.json").read_text()
        (out / "manifest.json").write_text(manifest.replace('"complete": true', '"complete": false'))
        (out / "tracking.npz").unlink()

    last.unlink()  # a block lost past the container's count
    unfinish()
    summary = track_video(clip, out, model=model, options=TINY, video_options=vopts, progress=False)
    assert summary.frames_done["landmarks"] == 6  # frames 24..29, again
    np.testing.assert_array_equal(load_npz(out / "tracking.npz")["lmks_68_px"], first["lmks_68_px"])
    unfinish()  # every block stored: nothing is decoded again

    def no_decoding(*args, **kwargs):
        raise AssertionError("the detection threads ran")

    monkeypatch.setattr(pipeline_mod._DetectJob, "run", no_decoding)
    track_video(clip, out, model=model, options=TINY, video_options=vopts, progress=False)
    np.testing.assert_array_equal(load_npz(out / "tracking.npz")["lmks_68_px"], first["lmks_68_px"])


def test_the_block_size_is_kept_for_a_resume(tmp_path: Path) -> None:
    """A run's block size is fixed when it starts: a resume reuses it whatever the clip's estimated
    length says now, and landmarks stored by a version without it (always ``DETECT_BLOCK``) are
    resumed in ``DETECT_BLOCK`` blocks."""
    from flame_tracker.video.store import CheckpointStage, RunFolder

    short = 100  # frames: a short clip's blocks are shorter than DETECT_BLOCK
    assert blocks_mod.detect_block(short) < blocks_mod.DETECT_BLOCK
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not decoded here")
    fresh = RunFolder(tmp_path / "fresh", clip, {})
    assert pipeline_mod._block_size(fresh, short) == blocks_mod.detect_block(short)
    assert pipeline_mod._block_size(fresh, 10 * short) == blocks_mod.detect_block(short)  # kept
    old = RunFolder(tmp_path / "old", clip, {})
    stage = CheckpointStage(old.root, "landmarks", chunk=4)
    for k in range(4):
        stage.add(k, {"position": np.int64(k), "lmks68": np.zeros((68, 2), np.float32)})
    stage.flush()
    assert pipeline_mod._block_size(old, short) == blocks_mod.DETECT_BLOCK


def test_landmarks_of_an_earlier_version_resume_by_whole_blocks(tmp_path: Path) -> None:
    """Landmark records without their position (stored by an earlier version, always a prefix of the
    selection) get it; a partly stored block is deleted, to be detected again."""
    from flame_tracker.video.store import CheckpointStage

    stage = CheckpointStage(tmp_path, "landmarks", chunk=8)
    for k in range(19):  # two whole blocks and 3 frames of the third
        stage.add(2 * k, {"time_s": np.float64(k / 15), "lmks68": np.zeros((68, 2), np.float32)})
    stage.flush()
    assert pipeline_mod._complete_blocks(stage, 8) == {0, 1}
    rec = CheckpointStage(tmp_path, "landmarks").load()
    assert rec["frame"].tolist() == [2 * k for k in range(16)] and rec["position"].tolist() == list(range(16))


def test_a_write_cut_short_by_a_kill_does_not_stop_a_resume(tmp_path: Path) -> None:
    """A kill during a block's atomic write leaves a hidden, truncated temporary file: it is neither
    loaded nor counted, and the stored blocks resume."""
    from flame_tracker.video.store import CheckpointStage

    stage = CheckpointStage(tmp_path, "landmarks", chunk=4)
    for k in range(6):
        stage.add(k, {"position": np.int64(k), "lmks68": np.zeros((68, 2), np.float32)})
    stage.flush()
    (stage.dir / ".000004_000007.123.abcdef.npz").write_bytes(b"PK\x03\x04 cut short")
    assert pipeline_mod._complete_blocks(stage, 4) == {0}
    assert CheckpointStage(tmp_path, "landmarks").load()["frame"].tolist() == [0, 1, 2, 3]


def test_a_person_switch_is_seen_across_a_missed_face() -> None:
    """A block whose first frame has no face is judged by its first face against the last face
    before it: the other person there is a switch; the same person moved a little is not."""
    pts = np.random.default_rng(0).normal(0, 20, (68, 2)) + 100.0
    lm = np.repeat(pts[None], 40, 0)
    at = 16
    lm[at - 1] = lm[at] = np.nan  # no face on either side of the boundary
    assert not pipeline_mod._switched(lm, at, 16)
    lm[at + 1:] += 400.0  # another person from the block on
    assert pipeline_mod._switched(lm, at, 16)
    lm[at + 1:] -= 395.0  # the same face, moved 5 px
    assert not pipeline_mod._switched(lm, at, 16)


def test_a_block_stored_twice_is_detected_again(tmp_path: Path) -> None:
    """Two versions of a block's frames on disk (a block redone and cut short, before it stopped
    being written): the block is not trusted, it is detected again; the other blocks stay."""
    from flame_tracker.video.store import CheckpointStage

    stage = CheckpointStage(tmp_path, "landmarks", chunk=4)
    for k in range(8):
        stage.add(k, {"position": np.int64(k), "lmks68": np.zeros((68, 2), np.float32)})
    stage.flush()
    part = CheckpointStage(tmp_path, "landmarks", chunk=4)
    for k in (4, 5):  # the start of block 1 again, another face
        part.add(k, {"position": np.int64(k), "lmks68": np.ones((68, 2), np.float32)})
    part.flush()
    assert pipeline_mod._complete_blocks(stage, 4) == {0}
    assert CheckpointStage(tmp_path, "landmarks").load()["frame"].tolist() == [0, 1, 2, 3]


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_same_command_resumes(shared_dir: Path, tmp_path: Path) -> None:
    """Ctrl-C during `flame-tracker video`: exit code 130 (as a shell and `batch` report it) with the
    message that says how to resume; the same command then finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flame_tracker.cli.main", "video", str(shared_dir / "videos" / "talking_wojtek.mp4"),
           "--out", str(out), "--quiet"]
    # a background shell starts its children with SIGINT ignored, which they would inherit: restore it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "manifest.json").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # detecting
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before it could be interrupted")  # a very fast machine
    assert proc.returncode == 130, output
    assert "run the same command again to resume" in output and "Traceback" not in output
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (out / "tracking.npz").is_file()


def test_overlay_caption_leaves_the_legend_alone() -> None:
    """The caption of a frame without landmarks ("optical flow", "interpolated") was drawn over the
    legend of the landmark colours (both in the top-left corner); it is now in the top-right one."""
    from flame_tracker.rendering.overlay import _draw_legend
    from flame_tracker.video.pipeline import _label

    for h, w in ((480, 640), (1080, 1920)):
        img = np.full((h, w, 3), 128, np.uint8)
        _draw_legend(img, [("fitted", (255, 0, 0)), ("iris", (0, 0, 255))])
        legend = np.argwhere((img != 128).any(2))
        before = img.copy()
        _label(img, "optical flow", (60, 200, 255))
        drawn = np.argwhere((img != before).any(2))
        assert len(legend) and len(drawn)
        assert drawn[:, 1].min() > legend[:, 1].max() and drawn[:, 1].max() < w
