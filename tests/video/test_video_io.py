"""Video decoding, encoding, smoothing and the resumable output folder (no fitting involved)."""

from __future__ import annotations

import os
import stat
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from flame_tracker.errors import InputError
from flame_tracker.video.decode import VideoError, VideoReader, probe
from flame_tracker.video.encode import VideoWriter, join_videos, side_by_side
from flame_tracker.video.store import CheckpointStage, OutputMismatchError, RunBusyError, RunFolder
from flame_tracker.video.temporal import cutoff_to_lambda, jitter_metrics, segments, smooth_sequence


def _pattern(i: int, w: int = 64, h: int = 48) -> np.ndarray:
    """A frame whose content encodes its index (a bright square that moves) and its orientation."""
    img = np.full((h, w, 3), 40, np.uint8)
    img[:8, :16] = (250, 30, 30)  # red block marks the top-left corner
    x = 4 + (i * 3) % (w - 12)
    img[30:38, x:x + 8] = 255
    return img


def _write_video(path: Path, n: int, fps: float = 25.0, rotation: int = 0,
                 times: list[float] | None = None, fmt: str | None = None, keyint: int | None = None) -> None:
    container = av.open(str(path), mode="w", format=fmt)
    stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.time_base = Fraction(1, 1000)
    stream.codec_context.time_base = Fraction(1, 1000)  # keep millisecond timestamps (VFR)
    stream.options = {"crf": "10", **({"g": str(keyint), "keyint_min": str(keyint)} if keyint else {})}
    if rotation:
        stream.set_display_rotation(rotation)
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
        frame.pts = int(round((times[i] if times else i / fps) * 1000))
        frame.time_base = Fraction(1, 1000)
        for p in stream.encode(frame):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)
    container.close()


# ---------------------------------------------------------------- decoding

def test_reader_streams_shared_video(shared_dir: Path) -> None:
    path = shared_dir / "videos" / "talking_ex3.mp4"
    info = probe(path)
    assert (info.width, info.height) == (918, 612)
    assert info.fps == pytest.approx(24000 / 1001)
    assert info.n_frames == 60 and info.rotation == 0
    reader = VideoReader(path, max_side=306)
    frames = iter(reader)
    first = next(frames)
    assert first.image.shape == (204, 306, 3) and first.image.dtype == np.uint8
    assert reader.scale == pytest.approx(1 / 3)
    rest = list(frames)
    assert [f.index for f in [first, *rest]] == list(range(60))
    assert reader.broken is None
    assert rest[-1].time_s == pytest.approx(59 * 1001 / 24000, abs=1e-6)


def test_time_range_every_and_fps(tmp_path: Path) -> None:
    path = tmp_path / "v.mp4"
    _write_video(path, 50, fps=25.0)
    idx = [f.index for f in VideoReader(path, start_s=0.4, end_s=1.2)]
    assert idx == list(range(10, 30))
    assert [f.index for f in VideoReader(path, every=3, max_frames=4)] == [0, 3, 6, 9]
    assert [f.index for f in VideoReader(path, fps=12.5)] == list(range(0, 50, 2))
    # frames a resumed run already has are passed over but still count towards max_frames
    assert [f.index for f in VideoReader(path, every=2, max_frames=4, skip={0, 4})] == [2, 6]
    # decoded content is the frame it claims to be (the square moves 3 px per frame)
    frame = next(iter(VideoReader(path, start_s=0.4)))
    col = np.flatnonzero(frame.image[34, :, 0] > 200)
    assert col.min() == pytest.approx(4 + 30, abs=1)


def test_reader_jumps_over_frames_it_does_not_need(tmp_path: Path, monkeypatch) -> None:
    """A reader that needs nothing from long runs of frames (the part before a later detection
    thread's blocks, a resumed run, --start, the frames between the flow's gaps) decodes from the
    keyframe before each frame it needs, and yields exactly the frames, numbers, times, positions
    and pixels of a reader that decodes every frame from the start."""
    import flame_tracker.video.decode as decode

    path = tmp_path / "gop.mp4"
    _write_video(path, 300, fps=25.0, keyint=25)  # a keyframe about every second, B-frames between
    table = decode._packet_table(path)
    assert table is not None
    keyframes = np.flatnonzero(table[1])
    assert len(keyframes) >= 10

    def key_before(i: int) -> int:
        return int(keyframes[keyframes <= i].max())

    cases = [dict(start_s=6.1), dict(keep=lambda p: p >= 203), dict(skip=set(range(150)), every=2),
             dict(fps=12.5, start_s=4.1, max_frames=20), dict(keep=lambda p: 100 <= p < 140, stop_at=140),
             dict(keep=lambda p: p < 30 or 180 <= p < 200),
             dict(skip=decode.AllBut({20, 21, 150, 151, 260})),  # (the flow's frame source)
             dict(start_s=1.0)]  # (too near the start to jump)

    def frames(kw: dict) -> tuple[list, VideoReader]:
        reader = VideoReader(path, **kw)
        return [(f.index, f.time_s, f.position, f.image) for f in reader], reader

    runs = []
    for kw in cases:
        got, reader = frames(kw)
        runs.append(reader.decoded)
        with monkeypatch.context() as m:
            m.setattr(decode, "_packet_table", lambda path: None)  # no jumping: every frame decoded
            want, seq = frames(kw)
        assert seq.decoded == [[0, seq.n_decoded - 1]]
        assert [g[:3] for g in got] == [w[:3] for w in want], kw
        assert all(np.array_equal(g[3], w[3]) for g, w in zip(got, want)), kw
        assert (reader.n_selected, reader.n_decoded, reader.broken) == (seq.n_selected, seq.n_decoded, seq.broken)
        for index, _, _, image in got:  # the square encodes the frame's number
            assert np.flatnonzero(image[34, :, 0] > 200).min() == pytest.approx(4 + (index * 3) % 52, abs=1)
        for first, last in reader.decoded:  # each run from a keyframe (or the start)
            assert first == 0 or table[1][first], kw
    # where each reader started: the keyframe before its first frame (the start when that is fewer
    # than SEEK_MIN_FRAMES frames in); the readers with two far-apart needs decoded two runs
    assert [r[0][0] for r in runs[:5]] == [key_before(i) for i in (153, 203, 150, 103, 100)]
    assert min(r[0][0] for r in runs[:5]) >= decode.SEEK_MIN_FRAMES and runs[7][0][0] == 0
    assert [r[0] for r in runs[5]] == [0, key_before(180)] and runs[5][0][1] == 29
    assert [r[0] for r in runs[6]] == [0, key_before(150), key_before(260)] and runs[6][:2] == [
        [0, 21], [key_before(150), 151]]
    # packets whose timestamps the decoded frames do not carry (from frame 150 on): the reader
    # decodes from the start after what it yielded, nothing twice, nothing lost
    real = decode._packet_table

    def shifted(p: Path):
        pts, key, start, tb = real(p)
        return np.where(np.arange(len(pts)) >= 150, pts + 1, pts), key, start, tb

    monkeypatch.setattr(decode, "_packet_table", shifted)
    got, reader = frames(cases[5])
    assert [g[0] for g in got] == list(range(30)) + list(range(180, 200))
    assert reader.decoded == [[0, 299]]  # the second, sequential pass (the first decoded 0-29)
    monkeypatch.setattr(decode, "_packet_table", real)
    # the display rotation holds after a jump
    _write_video(tmp_path / "rot.mp4", 200, rotation=90, keyint=25)
    jumped_r, seq_r = VideoReader(tmp_path / "rot.mp4", start_s=6.0), VideoReader(tmp_path / "rot.mp4")
    first = next(iter(jumped_r))
    assert jumped_r.decoded[0][0] >= decode.SEEK_MIN_FRAMES and first.image.shape == (64, 48, 3)
    assert np.array_equal(first.image, [f for f in seq_r][first.index].image)
    # a clip cut mid-GOP without re-encoding (its first frames cannot be decoded, so the packets would
    # number the frames differently from decoding): decoded from the start
    src = av.open(str(path))
    cut = av.open(str(tmp_path / "cut.mkv"), "w")
    out_stream = cut.add_stream_from_template(src.streams.video[0])
    for i, packet in enumerate(p for p in src.demux(video=0) if p.size):
        if i >= 5:
            packet.stream = out_stream
            cut.mux(packet)
    cut.close()
    src.close()
    assert decode._packet_table(tmp_path / "cut.mkv") is None
    # Matroska jumps too; MPEG-TS (keyframe flags not trusted) decodes from the start
    _write_video(tmp_path / "gop.mkv", 120, keyint=25)
    _write_video(tmp_path / "gop.ts", 120, keyint=25, fmt="mpegts")
    assert VideoReader(tmp_path / "gop.mkv", start_s=3.0)._seek_plan() is not None
    ts = VideoReader(tmp_path / "gop.ts", start_s=3.0)
    assert ts._seek_plan() is None and next(iter(ts)).index == 75 and ts.decoded[0][0] == 0


def test_variable_frame_rate_timestamps(tmp_path: Path) -> None:
    times = [0.0, 0.04, 0.08, 0.20, 0.24, 0.50, 0.54, 0.58]
    path = tmp_path / "vfr.mkv"
    _write_video(path, len(times), fps=25.0, times=times)
    got = [f.time_s for f in VideoReader(path)]
    assert got == pytest.approx(times, abs=1e-3)
    # subsampling to 10 fps follows the real timestamps, not the frame count
    kept = [f.time_s for f in VideoReader(path, fps=10)]
    assert kept == pytest.approx([0.0, 0.20, 0.50], abs=1e-3)
    # a late frame kept for its slot does not bring the next one closer than half a step (0.18 s for
    # the 0.1 s slot, then 0.20 s for the 0.2 s slot: 20 ms apart before)
    times = [0.0, 0.04, 0.18, 0.20, 0.24, 0.30, 0.34]
    _write_video(tmp_path / "late.mkv", len(times), fps=25.0, times=times)
    kept = [f.time_s for f in VideoReader(tmp_path / "late.mkv", fps=10)]
    assert kept == pytest.approx([0.0, 0.18, 0.24, 0.30], abs=1e-3)
    # a steady source keeps exactly the asked rate (30 -> 25 fps: 50 of 60 frames)
    _write_video(tmp_path / "steady.mp4", 60, fps=30.0)
    assert len(list(VideoReader(tmp_path / "steady.mp4", fps=25))) == 50


def test_a_matroska_file_without_a_frame_rate_is_probed_from_its_timestamps(tmp_path: Path) -> None:
    """A variable-frame-rate MP4 remuxed to Matroska states no frame rate (FFmpeg reports its 1 ms
    clock: 1000 frames/s) and no frame count: both come from its packets, as the MP4's."""
    times = [0.0, 0.02, 0.06, 0.10, 0.18, 0.20, 0.25, 0.30, 0.41, 0.45, 0.50, 0.62, 0.70, 0.71, 0.80]
    mp4, mkv = tmp_path / "vfr.mp4", tmp_path / "vfr.mkv"
    _write_video(mp4, len(times), fps=25.0, times=times)
    with av.open(str(mp4)) as src, av.open(str(mkv), "w") as dst:  # remuxed, as a user's tool does
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    with av.open(str(mkv)) as c:
        assert float(c.streams.video[0].average_rate or 0) == 1000.0 and not c.streams.video[0].frames
    a, b = probe(mp4), probe(mkv)
    assert b.n_frames == a.n_frames == len(times)
    assert b.fps == pytest.approx((len(times) - 1) / times[-1]) and a.fps < 30
    assert [f.time_s for f in VideoReader(mkv)] == pytest.approx(times, abs=1e-3)


def test_file_names_with_a_colon_are_files_not_protocols(tmp_path: Path, monkeypatch) -> None:
    """FFmpeg reads ``take:1.mp4`` as the protocol ``take:``: relative names with a colon are read
    and written as files."""
    from flame_tracker.video.encode import VideoWriter

    monkeypatch.chdir(tmp_path)
    _write_video(tmp_path / "take:1.mp4", 3)
    assert probe("take:1.mp4").n_frames == 3 and len(list(VideoReader(Path("take:1.mp4")))) == 3
    with VideoWriter("run:1/overlay.mp4", fps=25.0) as out:
        for f in VideoReader("take:1.mp4"):
            out.write(f.image)
    assert probe(tmp_path / "run:1" / "overlay.mp4").n_frames == 3


def _damaged_copy(src: Path, dst: Path, packet_no: int, also_next_keyframe: bool = False) -> None:
    """``src`` remuxed to ``dst`` with one packet (decode order) replaced by random bytes (and the
    first keyframe's packet after it)."""
    rng = np.random.default_rng(1)
    with av.open(str(src)) as cin, av.open(str(dst), "w") as cout:
        out = cout.add_stream_from_template(cin.streams.video[0])
        for i, packet in enumerate(p for p in cin.demux(cin.streams.video[0]) if p.size):
            if also_next_keyframe and i > packet_no and packet.is_keyframe:
                also_next_keyframe, packet_no = False, i
            if i == packet_no:
                bad = av.Packet(rng.integers(0, 256, packet.size + 200, dtype=np.uint8).tobytes())
                bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                bad.is_keyframe = packet.is_keyframe  # (the container still lists it as one)
                packet = bad
            packet.stream = out
            cout.mux(packet)


def test_a_damaged_packet_is_passed_over(tmp_path: Path) -> None:
    """One packet the decoder rejects used to end the reader (the rest of the video lost). Now it is
    noted in ``damaged`` and decoding goes on; frames keep their numbers and times; where the packets
    are listed (MP4, Matroska), the reader decodes on to the next keyframe and goes on from there
    afresh: what a reader that jumps there decodes (elsewhere it decodes on)."""
    for fmt in ("mp4", "mkv"):
        clip, bad = tmp_path / f"clip.{fmt}", tmp_path / f"bad.{fmt}"
        _write_video(clip, 60, keyint=20, fmt="matroska" if fmt == "mkv" else None)
        _damaged_copy(clip, bad, 25)
        reader = VideoReader(bad)
        frames = list(reader)
        idx = [f.index for f in frames]
        assert reader.broken is None and len(reader.damaged) == 1 and 20 <= min(reader.damaged) < 30, reader.damaged
        assert 55 <= len(frames) < 60 and idx == sorted(set(idx)) and idx[-1] == 59, idx
        assert all(abs(f.time_s * 25 - f.index) < 1e-6 for f in frames)
        from flame_tracker.video.decode import _packet_table

        key = _packet_table(bad)[1]
        k = min(reader.damaged) + 1 + int(np.flatnonzero(key[min(reader.damaged) + 1:])[0])
        assert reader.decoded == [[0, k - 1], [k, 59]], (reader.decoded, np.flatnonzero(key))
        jumped = list(VideoReader(bad, start_s=k / 25))  # a reader that jumps past the damage
        assert jumped[0].index == k
        np.testing.assert_array_equal(jumped[0].image, next(f.image for f in frames if f.index == k))
    # the keyframe it would go on from damaged too: it goes on from the one after (and ends)
    worse = tmp_path / "worse.mp4"
    _damaged_copy(tmp_path / "clip.mp4", worse, 25, also_next_keyframe=True)
    reader = VideoReader(worse)
    idx = [f.index for f in reader]
    assert len(reader.damaged) >= 2 and idx == sorted(set(idx)) and idx[-1] == 59 and len(idx) < 55, reader.damaged


def test_damage_at_the_keyframe_a_reader_goes_on_from(tmp_path: Path) -> None:
    """A damaged packet, then the keyframe the reader would go on from damaged too (its payload
    overwritten in place: the container still lists it): the reader goes on from the next keyframe,
    as a reader jumping there does, instead of ending (it lost the rest of the video). The frames the
    decoder lost are counted by the selection, so positions are those of a jumping reader."""
    from flame_tracker.video.decode import _packet_table

    clip, bad = tmp_path / "clip.mp4", tmp_path / "bad.mp4"
    _write_video(clip, 120, keyint=20)
    key = np.flatnonzero(_packet_table(clip)[1]).tolist()
    data = bytearray(clip.read_bytes())
    rng = np.random.default_rng(3)
    with av.open(str(clip)) as c:
        payload = sorted(((p.pts, bytes(p)) for p in c.demux(c.streams.video[0]) if p.size), key=lambda x: x[0])
    for frame_no in (key[1] + 12, key[2]):  # a frame of the second GOP, and the third GOP's keyframe
        b = payload[frame_no][1]
        at = data.find(b)
        data[at + 8: at + len(b)] = rng.integers(0, 256, len(b) - 8, dtype=np.uint8).tobytes()
    bad.write_bytes(bytes(data))
    reader = VideoReader(bad)
    frames = list(reader)
    assert reader.broken is None and frames[-1].index == 119 and len(frames) < 110, reader.decoded
    assert reader.decoded[-1] == [key[3], 119]
    jumping = VideoReader(bad, keep=lambda p: p >= key[3] + 5)
    jumped = list(jumping)
    assert jumping.broken is None and jumping.decoded == [[key[3], 119]]
    mine = {f.index: f for f in frames}
    for f in jumped:
        assert mine[f.index].position == f.position and mine[f.index].time_s == f.time_s
        np.testing.assert_array_equal(mine[f.index].image, f.image)


def test_avi_with_b_frames_keeps_every_frame_in_time_order(tmp_path: Path) -> None:
    """AVI stores no presentation times (H.264 with B-frames comes out with decode-order pts): its
    frames are timed at the constant rate AVI has by design, none taken for out of order."""
    path = tmp_path / "b.avi"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(50):
            f = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            for q in s.encode(f):
                c.mux(q)
        for q in s.encode():
            c.mux(q)
    reader = VideoReader(path)
    frames = list(reader)
    assert len(frames) == 50 and not reader.damaged
    assert [f.index for f in frames] == list(range(50)) and [f.time_s for f in frames] == pytest.approx(
        [i / 25 for i in range(50)])


def test_stretches_a_damaged_container_lost_are_found_from_its_packets(tmp_path: Path) -> None:
    """A Matroska file that lost packets (damage the demuxer skips without an error) decodes with a
    jump in time: found from the packets of a steady-rate video, not in a variable-rate one."""
    from flame_tracker.video.decode import missing_stretches

    clip, cut = tmp_path / "clip.mkv", tmp_path / "cut.mkv"
    _write_video(clip, 60, keyint=10, fmt="matroska")
    with av.open(str(clip)) as cin, av.open(str(cut), "w") as cout:
        out = cout.add_stream_from_template(cin.streams.video[0])
        for packet in cin.demux(cin.streams.video[0]):
            if packet.size and not 1.0 <= float(packet.pts * packet.time_base) < 1.6:
                packet.stream = out
                cout.mux(packet)
    assert missing_stretches(clip) == []
    (i, t, dt), = missing_stretches(cut)
    assert t == pytest.approx(0.96) and dt == pytest.approx(0.64) and i == 24
    assert missing_stretches(cut, start_s=1.0) == [] and missing_stretches(cut, end_s=0.9) == []
    times = [0.0, 0.04, 0.08, 0.20, 0.24, 0.50, 0.54, 0.58, 0.70, 0.72, 1.5]
    _write_video(tmp_path / "vfr.mkv", len(times), fps=25.0, times=times, fmt="matroska")
    assert missing_stretches(tmp_path / "vfr.mkv") == []


def test_rotation_metadata_applied(tmp_path: Path) -> None:
    path = tmp_path / "rot.mp4"
    _write_video(path, 3, rotation=90)
    info = probe(path)
    assert info.rotation == 90 and (info.width, info.height) == (48, 64)
    img = next(iter(VideoReader(path))).image
    assert img.shape == (64, 48, 3)
    # displayed = decoded rotated 90 degrees counter-clockwise: the red top-left block goes to the
    # bottom-left corner
    assert img[-4, 2, 0] > 200 and img[-4, 2, 1] < 100
    assert img[2, 2, 0] < 100


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoReader(tmp_path / "missing.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoError, match="could not be opened as a video"):
        VideoReader(text)
    with pytest.raises(VideoError, match="folder"):
        VideoReader(tmp_path)
    # a photo, which FFmpeg would read as a one-frame video, is named as such
    still = tmp_path / "photo.png"
    cv2.imwrite(str(still), np.full((64, 64, 3), 90, np.uint8))
    with pytest.raises(VideoError, match="still image.*flame-tracker image"):
        VideoReader(still)


def test_start_past_the_end_is_named(shared_dir: Path) -> None:
    clip = shared_dir / "videos" / "talking_ex3.mp4"
    with pytest.raises(InputError, match=r"start 100s is past the end .* \(2\.\d\ds long\)"):
        VideoReader(clip, start_s=100.0)


def test_truncated_stream_keeps_decoded_frames(truncated_mkv: Path, shared_dir: Path, tmp_path: Path) -> None:
    # A streamable container (mkv) cut in half: the first half decodes, the reader says where it
    # broke instead of raising.
    cut = truncated_mkv
    reader = VideoReader(cut)
    frames = [f.index for f in reader]
    assert 5 < len(frames) < 60
    assert frames == list(range(len(frames)))
    assert reader.broken is not None
    assert reader.broken.after_index == frames[-1]
    assert "truncated" in str(reader.broken) or "Error" in str(reader.broken)
    # an MP4 cut short loses its index (moov atom at the end): a clear error, not a crash
    mp4 = tmp_path / "cut.mp4"
    mp4.write_bytes((shared_dir / "videos" / "talking_ex3.mp4").read_bytes()[:100_000])
    with pytest.raises(VideoError, match="truncated"):
        VideoReader(mp4)
    empty = tmp_path / "empty.mp4"  # (an interrupted copy: said as such, as the image command does)
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match=r"is empty \(0 bytes\)"):
        VideoReader(empty)


# ---------------------------------------------------------------- encoding

def test_writer_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "overlay.mp4"
    with VideoWriter(path, fps=30000 / 1001) as writer:
        for i in range(12):
            writer.write(side_by_side(_pattern(i, 31, 47), _pattern(i, 31, 47)))
    info = probe(path)
    assert (info.width, info.height) == (62, 48)  # odd height padded to even
    assert info.fps == pytest.approx(30000 / 1001, rel=1e-3)
    assert len(list(VideoReader(path))) == 12
    assert not list(path.parent.glob(".*"))  # no temporary files left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # readable like any file the user makes
    with pytest.raises(ValueError, match="differs"):
        with VideoWriter(tmp_path / "bad.mp4", fps=25) as writer:
            writer.write(_pattern(0))
            writer.write(_pattern(0, 32, 32))
    assert not (tmp_path / "bad.mp4").exists()


def test_writer_keeps_source_times_closer_than_its_frame_rate(tmp_path: Path) -> None:
    """A 23.976 fps video read at ``--fps 15`` keeps its frames at their source times, some 1/24 s
    apart: closer than the writer's nominal 1/15 s. The overlay must keep each frame at its time
    (the encoder's clock at 1/15 s put two frames on one tick and the muxer refused the file)."""
    step = 1001 / 24000
    times = [k * step for k in range(40) if int(k * step * 15) != int((k - 1) * step * 15) or k == 0]
    times += [times[-1] + step]  # one more at the source's own spacing
    path = tmp_path / "overlay.mp4"
    with VideoWriter(path, fps=15.0) as writer:
        for i, t in enumerate(times):
            writer.write(_pattern(i), t)
    got = [f.time_s for f in VideoReader(path)]
    assert len(got) == len(times)
    np.testing.assert_allclose(got, times, atol=1e-3)


def test_writer_keeps_a_late_first_frame_at_its_time(tmp_path: Path) -> None:
    """A video whose first frame is not at 0 (a piece of an overlay, a range's first frame) keeps
    every frame at its time to the tick: MP4's default movie clock of 1/1000 s moved them 0.83 ms."""
    times = [(100 + k) * 1001 / 24000 for k in range(6)]  # from 4.170833 s
    path = tmp_path / "late.mp4"
    with VideoWriter(path, fps=24000 / 1001) as writer:
        for i, t in enumerate(times):
            writer.write(_pattern(i), t)
    with av.open(str(path)) as container:  # (VideoReader counts time from the first frame)
        got = [float(f.time) for f in container.decode(video=0)]
    np.testing.assert_allclose(got, times, atol=1e-5)
    # and pieces joined into one file (the same muxer clock there)
    more = tmp_path / "later.mp4"
    with VideoWriter(more, fps=24000 / 1001) as writer:
        for i in range(6, 9):
            writer.write(_pattern(i), (100 + i) * 1001 / 24000)
    with av.open(str(join_videos([path, more], tmp_path / "joined.mp4"))) as container:
        got = [float(f.time) for f in container.decode(video=0)]
    np.testing.assert_allclose(got, [(100 + k) * 1001 / 24000 for k in range(9)], atol=1e-5)


def test_a_frame_at_the_time_of_the_one_before_is_left_out_and_the_others_keep_their_numbers(tmp_path: Path) -> None:
    """A file whose muxer rounded its frames' times onto a coarser clock (two frames at one time, a
    trial's variable-rate Matroska file): the second of each pair is left out and said, and every
    other frame keeps its source number (the frames after such a pair were numbered one short)."""
    path = tmp_path / "rounded.mkv"
    container = av.open(str(path), mode="w", format="matroska")
    stream = container.add_stream("libx264", rate=24)  # (the encoder's clock stays at 1/24 s)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.time_base = Fraction(1, 1000)
    slots = [0, 1, 2, 2, 3, 4, 5, 5, 6, 7]  # frames 3 and 7 share their slot with the one before
    for i, k in enumerate(slots):
        frame = av.VideoFrame.from_ndarray(_pattern(i), format="rgb24")
        frame.pts, frame.time_base = round(k * 1000 / 24), Fraction(1, 1000)
        for p in stream.encode(frame):
            container.mux(p)
    for p in stream.encode():
        container.mux(p)
    container.close()
    reader = VideoReader(path)
    frames = list(reader)
    assert [f.index for f in frames] == [0, 1, 2, 4, 5, 6, 8, 9]
    for f in frames:  # each is the source frame of its number (the nearest of the patterns; lossy coding)
        assert np.argmin([np.abs(f.image.astype(int) - _pattern(i)).mean() for i in range(10)]) == f.index
    assert "two frames at one time" in reader.damaged[2]


def test_pieces_join_into_one_video_without_encoding_again(tmp_path: Path) -> None:
    """Pieces of one timeline, each written on its own, join into one file holding every frame at its
    time, also where a slower piece follows a faster one (its first decoding times reach back into the
    piece before) and across a joint of 1.1 ms. Pieces of another size are refused and nothing is
    written."""
    times = [k / 25 for k in range(10)]  # 0 - 0.36 s
    times += [0.40043 + k / 5 for k in range(6)]  # 0.4 - 1.4 s, slower (pieces start between milliseconds)
    times += [1.40153 + k / 25 for k in range(8)]  # a 1.1 ms joint
    cuts = [(0, 10), (10, 16), (16, 24)]
    parts = []
    for n, (lo, hi) in enumerate(cuts):
        parts.append(tmp_path / f"{n:05d}.mp4")
        with VideoWriter(parts[-1], fps=25.0) as writer:
            for i in range(lo, hi):
                writer.write(_pattern(i), times[i])
    whole = join_videos(parts, tmp_path / "out" / "overlay.mp4")
    frames = list(VideoReader(whole))
    assert len(frames) == len(times)
    np.testing.assert_allclose([f.time_s for f in frames], times, atol=1e-5)
    for i, f in enumerate(frames):  # each frame is the one written at its time (the nearest pattern: lossy coding)
        assert np.argmin([np.abs(f.image.astype(int) - _pattern(j)).mean() for j in range(len(times))]) == i
    assert all(p.is_file() for p in parts)
    assert not list(whole.parent.glob(".*"))
    with VideoWriter(tmp_path / "other.mp4", fps=25.0) as writer:
        writer.write(_pattern(0, 32, 32), 2.0)
    with pytest.raises(InputError, match="32x32"):
        join_videos([parts[0], tmp_path / "other.mp4"], tmp_path / "bad.mp4")
    assert not (tmp_path / "bad.mp4").exists() and not list(tmp_path.glob(".bad*"))


def test_writer_keeps_the_colours(tmp_path: Path) -> None:
    """Frames come back with their colours (the RGB -> YUV conversion matches what decoders assume):
    flat patches of saturated and grey colours, a few levels of compression error at most."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [230, 180, 140], [20, 40, 60]])
    frame = np.repeat(np.repeat(colours[None], 64, 0), 32, 1).astype(np.uint8)  # 64 x 192
    with VideoWriter(tmp_path / "c.mp4", fps=25, crf=12) as writer:
        for _ in range(3):
            writer.write(frame)
    back = [f.image for f in VideoReader(tmp_path / "c.mp4")]
    assert len(back) == 3
    centres = back[1][32, 16::32].astype(int)  # the middle of each patch
    assert np.abs(centres - colours).max() <= 6, centres


# ---------------------------------------------------------------- smoothing

def test_segments_split_on_long_gaps() -> None:
    valid = np.array([0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0], bool)
    assert segments(valid, max_gap_s=2) == [(1, 6), (11, 13)]
    assert segments(valid, max_gap_s=10) == [(1, 13)]
    assert segments(np.zeros(4, bool)) == []


def test_cutoff_gain_is_half() -> None:
    for fc, fps in [(2.0, 25.0), (6.0, 60.0)]:
        lam = cutoff_to_lambda(fc, fps)
        w = 2 * np.pi * fc / fps
        assert 1 / (1 + lam * (2 - 2 * np.cos(w)) ** 2) == pytest.approx(0.5)
    assert cutoff_to_lambda(np.inf, 25.0) == 0.0


def test_smoother_reduces_noise_and_bridges_gaps() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(300) / 25.0
    truth = np.stack([np.sin(2 * np.pi * 0.4 * t), 0.3 * t], axis=1)
    noisy = truth + rng.normal(0, 0.05, truth.shape)
    valid = np.ones(300, bool)
    valid[100:105] = False  # short gap: bridged
    valid[200:260] = False  # 2.4 s gap: split
    noisy[~valid] = np.nan
    y, covered = smooth_sequence(noisy, valid, fps=25.0, cutoff_hz=2.0, max_gap_s=0.5)
    assert covered[100:105].all() and not covered[200:260].any()
    assert np.isnan(y[200:260]).all()
    err = np.abs(y - truth)[covered]
    assert err.std() < 0.02  # noise was 0.05
    assert np.abs(y[100:105] - truth[100:105]).max() < 0.08  # bridged: about the noise level
    # the two sides of the long gap do not influence each other: changing one leaves the other
    noisy2 = noisy.copy()
    noisy2[260:] += 1.0
    y2, _ = smooth_sequence(noisy2, valid, fps=25.0, cutoff_hz=2.0, max_gap_s=0.5)
    np.testing.assert_allclose(y2[:200], y[:200])


def test_smoother_uses_real_time_spacing() -> None:
    # A line sampled irregularly is reproduced exactly: the second *divided* difference of a line is
    # zero, while treating the samples as equally spaced would bend it.
    times = np.cumsum(np.r_[0, np.random.default_rng(1).uniform(0.02, 0.08, 59)])
    x = (2.0 * times + 1.0)[:, None]
    y, _ = smooth_sequence(x, np.ones(60, bool), times=times, cutoff_hz=0.5)
    np.testing.assert_allclose(y, x, atol=1e-8)


def test_a_long_segment_is_smoothed_in_windows_to_the_same_result(monkeypatch) -> None:
    """Segments longer than a window are solved window by window (bounded memory over an hour-long
    take) with the same result as one solve, through irregular spacing, bridged gaps and a
    cutoff so low that the padding is wider than the window; into a caller's array too."""
    from flame_tracker.video import temporal

    rng = np.random.default_rng(3)
    n = 6000
    times = np.cumsum(np.r_[0, rng.uniform(0.03, 0.05, n - 1)])
    x = np.cumsum(rng.normal(0, 0.1, (n, 4)), axis=0)
    valid = rng.random(n) > 0.1
    valid[1200:1208] = False  # a bridged gap inside a window
    x[~valid] = np.nan
    cut = np.array([2.0, 6.0, 0.5, np.inf])
    whole, cov = smooth_sequence(x, valid, times=times, cutoff_hz=cut, max_gap_s=0.5)
    monkeypatch.setattr(temporal, "SMOOTH_WINDOW", 100)
    assert n > 100 + 2 * temporal._window_pad(temporal.cutoff_to_lambda(cut, 25.0))  # (windows are used)
    out = np.zeros((n, 4))
    windowed, cov2 = smooth_sequence(x, valid, times=times, cutoff_hz=cut, max_gap_s=0.5, out=out)
    assert windowed is out
    np.testing.assert_array_equal(cov, cov2)
    np.testing.assert_allclose(windowed, whole, rtol=0, atol=1e-9 * np.nanmax(np.abs(whole)))
    # sparse measurements (1 frame in 12 measured: the padding holds enough measured rows) and dense
    # timestamps (10 per nominal frame: the padding spans enough time)
    steps = np.full(n - 1, 0.04)
    steps[1000:1600] = 0.004  # a stretch sampled 10 times as densely as the rest
    for t2, v2 in ((np.arange(n) / 25.0, np.arange(n) % 12 == 0), (np.r_[0, np.cumsum(steps)], np.ones(n, bool))):
        x_filled = np.cumsum(rng.normal(0, 0.1, (n, 4)), axis=0)
        x2 = np.where(v2[:, None], x_filled, np.nan)
        monkeypatch.setattr(temporal, "SMOOTH_WINDOW", 10**9)
        one, _ = smooth_sequence(x2, v2, times=t2, cutoff_hz=cut, max_gap_s=1.0)
        monkeypatch.setattr(temporal, "SMOOTH_WINDOW", 100)
        win, _ = smooth_sequence(x2, v2, times=t2, cutoff_hz=cut, max_gap_s=1.0)
        np.testing.assert_allclose(win, one, rtol=0, atol=1e-9 * np.abs(x_filled).max())
    # a window's edge would show without its padding: the check above can fail
    monkeypatch.setattr(temporal, "_window_pad", lambda lam: 2)
    cut_short, _ = smooth_sequence(x, valid, times=times, cutoff_hz=cut, max_gap_s=0.5)
    assert np.nanmax(np.abs(cut_short - whole)) > 1e-6


def test_jitter_metrics_counts_only_valid_triplets() -> None:
    rot = np.zeros((6, 3))
    rot[3, 0] = np.radians(1.0)
    trans = np.zeros((6, 3))
    valid = np.ones(6, bool)
    m = jitter_metrics(rot, trans, valid, np.zeros((6, 2, 2)))
    assert m.n_triplets == 4 and m.trans_acc_mm == 0 and m.lmk_acc_px == 0
    # accelerations 0, 1, 2, 1 degrees -> RMS sqrt(6/4)
    assert m.pose_acc_deg == pytest.approx(np.sqrt(6 / 4))
    valid[3] = False
    assert jitter_metrics(rot, trans, valid).n_triplets == 1


# ---------------------------------------------------------------- output folder

def test_checkpoints_resume(tmp_path: Path) -> None:
    stage = CheckpointStage(tmp_path, "fits", chunk=3)
    for f in range(7):
        stage.add(f, {"x": np.full(2, f, np.float32)})
    # 2 chunks on disk, one frame buffered; a crash now loses only the buffered frame
    assert CheckpointStage(tmp_path, "fits").done() == set(range(6))
    stage.flush()
    again = CheckpointStage(tmp_path, "fits")
    assert again.done() == set(range(7))
    data = again.load()
    np.testing.assert_array_equal(data["frame"], np.arange(7))
    np.testing.assert_array_equal(data["x"][:, 0], np.arange(7))
    # an unreadable checkpoint is dropped and its frames redone
    (tmp_path / "work" / "fits" / "broken.npz").write_bytes(b"garbage")
    assert CheckpointStage(tmp_path, "fits").done() == set(range(7))
    assert not (tmp_path / "work" / "fits" / "broken.npz").exists()


def test_checkpoints_load_into_memory_mapped_arrays(tmp_path: Path) -> None:
    """A long video's checkpoints load into memory-mapped files one stored file at a time, with the
    records load() gives (sorted by frame, a frame stored twice taken from its first file), and lay
    out along a sequence as load_rows() does in memory."""
    from flame_tracker.video.store import FrameArrays

    stage = CheckpointStage(tmp_path, "fits", chunk=3)
    for f in (5, 6, 7, 0, 1, 2, 9):
        stage.add(f, {"x": np.full(2, f, np.float32), "n": np.int64(f)})
    stage.flush()
    stage.add(6, {"x": np.full(2, -1, np.float32), "n": np.int64(-1)})  # 6 again, in a later file
    stage.flush()
    ref = CheckpointStage(tmp_path, "fits").load()
    arrays = FrameArrays(tmp_path / "arrays", min_frames=1)
    got = CheckpointStage(tmp_path, "fits").load_into(arrays, prefix="lm_")
    assert set(got) == set(ref) and all(isinstance(v, np.memmap) for v in got.values())
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k])
        assert got[k].dtype == ref[k].dtype
    assert (tmp_path / "arrays" / "lm_x.npy").is_file()
    only = CheckpointStage(tmp_path, "fits").load_into(arrays, keys=("n",))
    assert set(only) == {"frame", "n"}
    seq = np.array([0, 1, 2, 3, 5, 6])
    stored, rows = CheckpointStage(tmp_path, "fits").load_rows(seq)
    stored_m, rows_m = CheckpointStage(tmp_path, "fits").load_rows(seq, arrays)
    np.testing.assert_array_equal(stored, [True, True, True, False, True, True])
    np.testing.assert_array_equal(stored, stored_m)
    for k in rows:
        np.testing.assert_array_equal(rows[k], rows_m[k])
    assert rows["x"][5, 0] == 6  # the first file's record of frame 6
    arrays.close()
    assert not (tmp_path / "arrays").exists()
    assert FrameArrays(tmp_path / "arrays").full("a", (10, 2), np.nan).__class__ is np.ndarray  # short: in memory
    # a name used again makes a new file: the first array keeps its contents
    again = FrameArrays(tmp_path / "arrays", min_frames=1)
    first = again.full("x", (4, 2), 1.0)
    second = again.full("x", (4, 2), np.nan)
    again.release()
    assert (first == 1.0).all() and np.isnan(second).all()
    # a key stored with different dtypes in different files loads in the dtype load() gives
    mixed = CheckpointStage(tmp_path / "mixed", "landmarks", chunk=2)
    mixed.add(0, {"p": np.full(2, np.nan, np.float32)})
    mixed.add(1, {"p": np.full(2, np.nan, np.float32)})
    mixed.add(2, {"p": np.full(2, 1 / 3, np.float64)})
    mixed.flush()
    ref = mixed.load()["p"]
    got = mixed.load_into(FrameArrays(tmp_path / "mixed_arrays", min_frames=1))["p"]
    assert got.dtype == ref.dtype == np.float64
    np.testing.assert_array_equal(got, ref)


def test_a_run_folder_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    """A whole run holds its folder alone: a second one (with or without force) is refused at once and
    empties nothing; a part's process (not exclusive) shares it; a released or killed holder leaves no
    lock behind."""
    import subprocess
    import sys

    video = tmp_path / "v.mp4"
    _write_video(video, 3)
    out = tmp_path / "out"
    held = RunFolder(out, video, {"every": 1}, exclusive=True)
    fits = held.stage("fits")
    fits.add(0, {"x": np.zeros(1)})
    fits.flush()
    for force in (False, True):
        with pytest.raises(RunBusyError, match="another process is tracking into"):
            RunFolder(out, video, {"every": 1}, force=force, exclusive=True)
    assert (out / "work" / "fits").is_dir() and (out / "manifest.json").is_file()
    RunFolder(out, video, {"every": 1})  # (a detection part's process)
    held.release()
    RunFolder(out, video, {"every": 1}, exclusive=True).release()
    # another process holds it, then is killed: the lock ends with it
    code = ("import sys, time; from flame_tracker.video.store import hold_folder; "
            "hold_folder(__import__('pathlib').Path(sys.argv[1])); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError):
            RunFolder(out, video, {"every": 1}, exclusive=True)
    finally:
        proc.kill()
        proc.wait()
    RunFolder(out, video, {"every": 1}, exclusive=True).release()


def test_run_folder_manifest(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    _write_video(video, 3)
    out = tmp_path / "out"
    run = RunFolder(out, video, {"every": 1})
    assert not run.complete
    run.stage("fits").add(0, {"x": np.zeros(1)})
    run.stage("fits").flush()
    run.mark_complete()
    assert RunFolder(out, video, {"every": 1}).complete
    with pytest.raises(OutputMismatchError, match="--force"):
        RunFolder(out, video, {"every": 2})
    # the message names what differs
    with pytest.raises(OutputMismatchError, match=r"every: 1 -> 2; track\.fov: '\(default\)' -> 30"):
        RunFolder(out, video, {"every": 2, "track": {"fov": 30}})
    # the photometric refinement's table is there when it is on: named as on or off, not by its keys
    with pytest.raises(OutputMismatchError, match=r"photometric: off -> on\)"):
        RunFolder(out, video, {"every": 1, "photometric": {"chunk": 8}})
    other = tmp_path / "w.mp4"
    _write_video(other, 4)
    with pytest.raises(OutputMismatchError, match="another video"):
        RunFolder(out, other, {"every": 1})
    # --force also removes the old run's exports in their default place (ours: with the marker, what it
    # lists), and nothing else: the user's file beside them, a folder of the user's named like one, an
    # earlier version's export (its marker does not say what it wrote) are kept
    from flame_tracker.export.run import MARKER

    for name in ("export-gltf", "export-arkit-csv", "export-mine", "export-old"):
        (out / name).mkdir()
    (out / "export-gltf" / MARKER).write_text("gltf\nwritten:\nrun.glb\n")
    (out / "export-gltf" / "run.glb").write_bytes(b"old run")
    (out / "export-arkit-csv" / MARKER).write_text("arkit-csv\nwritten:\narkit_fitted.csv\n")
    (out / "export-arkit-csv" / "arkit_fitted.csv").write_text("old run")
    (out / "export-arkit-csv" / "scene.blend").write_text("mine")
    (out / "export-mine" / "notes.txt").write_text("mine")
    (out / "export-old" / MARKER).write_text("gltf\n")
    (out / "export-old" / "run.glb").write_bytes(b"old run, older version")
    # a damaged marker never points outside its folder
    (out / "export-bad").mkdir()
    (out / "export-bad" / MARKER).write_text(f"gltf\nwritten:\n..\n.\n{tmp_path / 'victim'}\n../victim\n")
    (tmp_path / "victim").write_text("keep")
    forced = RunFolder(out, video, {"every": 2}, force=True)
    assert not forced.complete and not (out / "work").exists()
    assert not (out / "export-gltf").exists() and (out / "export-mine" / "notes.txt").is_file()
    # the user's file stays in a folder still marked as the export's (listing nothing): exportable again
    assert sorted(p.name for p in (out / "export-arkit-csv").iterdir()) == [MARKER, "scene.blend"]
    assert (out / "export-old" / "run.glb").read_bytes() == b"old run, older version"
    assert (tmp_path / "victim").read_text() == "keep" and video.is_file()


def test_prefetch_order_errors_and_early_stop() -> None:
    """The decode prefetcher yields items in order, re-raises the producer's error in the consumer,
    and stops (closing the source) when the consumer leaves early."""
    from contextlib import closing

    from flame_tracker.video.decode import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("stream broke")

    got = []
    with pytest.raises(ValueError, match="stream broke"):
        for x in prefetch(broken()):
            got.append(x)
    assert got == [1]

    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    with closing(prefetch(endless(), depth=2)) as it:
        assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert closed == [True]
