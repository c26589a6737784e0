"""External landmarks files (npz/json): round trips, optional parts, malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from flame_tracker.io.landmarks_file import (
    LandmarksFileError,
    LandmarkTrack,
    load_landmarks,
    save_landmarks,
)


@pytest.fixture
def track() -> LandmarkTrack:
    rng = np.random.default_rng(0)
    n = 4
    lm = rng.uniform(0, 500, (n, 68, 2)).astype(np.float32)
    lm[2] = np.nan  # frame without a face
    ears = rng.uniform(0, 500, (n, 20, 2)).astype(np.float32)
    conf = rng.uniform(0, 1, (n, 20)).astype(np.float32)
    iris = rng.uniform(0, 500, (n, 10, 2)).astype(np.float32)
    return LandmarkTrack(lm, iris, ears, conf, np.array([0, 2, 4, 6]), image_size=(640, 480))


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_roundtrip(track: LandmarkTrack, tmp_path: Path, suffix: str) -> None:
    p = save_landmarks(tmp_path / f"t{suffix}", track)
    back = load_landmarks(p)
    assert len(back) == 4 and back.image_size == (640, 480)
    np.testing.assert_array_equal(back.valid, [True, True, False, True])
    np.testing.assert_array_equal(back.frame_index, [0, 2, 4, 6])
    ok = back.valid
    np.testing.assert_allclose(back.lmks68[ok], track.lmks68[ok], rtol=1e-6)
    assert np.isnan(back.lmks68[2]).all()
    np.testing.assert_allclose(back.ears, track.ears, rtol=1e-6)
    np.testing.assert_allclose(back.ears_conf, track.ears_conf, rtol=1e-6)
    np.testing.assert_allclose(back.iris, track.iris, rtol=1e-6)
    assert back.row_of(4) == 2 and back.row_of(3) is None


def test_minimal_json_and_per_frame_conf(tmp_path: Path) -> None:
    pts = [[float(i), float(2 * i)] for i in range(68)]
    ears = [[1.0, 1.0]] * 19 + [None]
    p = tmp_path / "m.json"
    p.write_text(json.dumps([{"lmks68": pts}, {"lmks68": pts, "ears": ears, "ears_conf": 0.7}]))
    t = load_landmarks(p)
    assert t.iris is None and t.image_size is None
    np.testing.assert_array_equal(t.frame_index, [0, 1])
    assert t.lmks68[1, 5].tolist() == [5.0, 10.0]
    np.testing.assert_allclose(t.ears_conf[1], 0.7)
    assert np.isnan(t.ears[1, 19]).all() and np.isnan(t.ears[0]).all()
    assert (t.ears_conf[0] == 0).all()


def test_minimal_npz_single_image(tmp_path: Path) -> None:
    p = tmp_path / "one.npz"
    np.savez(p, lmks68=np.ones((68, 2)))
    t = load_landmarks(p)
    assert t.lmks68.shape == (1, 68, 2) and t.valid.tolist() == [True]


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"points": np.ones((2, 68, 2))}, "no 'lmks68'"),
        ({"lmks68": np.ones((2, 67, 2))}, r"\[N, 68, 2\]"),
        ({"lmks68": np.ones((2, 68, 2)), "iris": np.ones((3, 10, 2))}, "iris"),
        ({"lmks68": np.ones((2, 68, 2)), "ears": np.ones((2, 20, 2)), "ears_conf": np.full(2, 2.0)}, r"\[0, 1\]"),
        ({"lmks68": np.ones((2, 68, 2)), "ears_conf": np.ones(2)}, "without 'ears'"),
        ({"lmks68": np.ones((2, 68, 2)), "frame_index": np.array([3, 1])}, "increasing"),
        ({"lmks68": np.full((1, 68, 2), np.inf)}, "infinite"),
    ],
)
def test_malformed_npz(tmp_path: Path, arrays: dict, match: str) -> None:
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(LandmarksFileError, match=match) as info:
        load_landmarks(p)
    assert "bad.npz" in str(info.value)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON"),
        ('{"frames": []}', "non-empty"),
        ('{"frames": [{"lmks68": [[1, 2]]}]}', "68"),
        ('{"frames": [{"lmks68": "abc"}]}', "not numeric|68"),
        ('{"frames": [5]}', "not an object"),
        ('{"frames": [{"frame": "a"}]}', "integer"),
    ],
)
def test_malformed_json(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(LandmarksFileError, match=match):
        load_landmarks(p)


def test_missing_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_landmarks(tmp_path / "nope.npz")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(LandmarksFileError, match=".csv"):
        load_landmarks(tmp_path / "x.csv")
    (tmp_path / "c.npz").write_bytes(b"garbage")
    with pytest.raises(LandmarksFileError, match="c.npz"):
        load_landmarks(tmp_path / "c.npz")


def test_from_detections(shared_dir: Path, tmp_path: Path) -> None:
    from flame_tracker.detection import FaceLandmarker

    with FaceLandmarker() as lm:
        dets = [lm.detect(shared_dir / "images" / "woman.jpg"), None]
    t = LandmarkTrack.from_detections(dets)
    assert t.valid.tolist() == [True, False] and t.image_size == dets[0].image_size
    back = load_landmarks(save_landmarks(tmp_path / "d.npz", t))
    np.testing.assert_allclose(back.lmks68[0], dets[0].lmks68)
    np.testing.assert_allclose(back.iris[0], dets[0].iris)
