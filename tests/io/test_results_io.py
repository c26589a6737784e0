"""Atomic result writes: npz, JSON, images."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from flame_tracker.io.results import atomic_path, load_npz, save_image, save_json, save_npz


def test_npz_round_trip(tmp_path):
    arrays = {"shape": np.zeros((1, 5), np.float32), "fov": np.array([20.0])}
    path = save_npz(tmp_path / "sub" / "r.npz", arrays)
    back = load_npz(path)
    assert set(back) == {"shape", "fov"}
    np.testing.assert_array_equal(back["fov"], [20.0])


@pytest.mark.parametrize("compress", [False, True])
def test_npz_refuses_objects(tmp_path, compress):
    with pytest.raises(TypeError, match="'bad'"):
        save_npz(tmp_path / "r.npz", {"bad": np.array([{"a": 1}], dtype=object)}, compress=compress)
    assert not (tmp_path / "r.npz").exists()


def test_uncompressed_npz_reads_back_as_numpys_own(tmp_path):
    """The per-frame files' archive, built without zipfile: a valid zip that ``np.load`` reads back
    exactly as what ``np.savez`` writes, for every kind of array a result holds (0-d, empty, strings,
    non-ASCII names and text, Fortran order, big-endian, structured)."""
    import io
    import zipfile

    rng = np.random.default_rng(0)
    arrays = {"pose": rng.normal(size=(1, 6)), "nan": np.array([np.nan, 1.0], np.float32),
              "scalar": np.float64(3.5), "flag": np.bool_(True), "name": np.str_("ict_facekit_light"),
              "text": np.str_("naïve ✓"), "empty": np.zeros((0, 3)),
              "fortran": np.asfortranarray(rng.normal(size=(3, 4))),
              "big_endian": np.arange(5, dtype=">i4"), "records": np.zeros(2, [("a", "<f4"), ("b", "<i2")]),
              "ünïcode_key": np.arange(3, dtype=np.uint8), "frames": np.arange(4, dtype=np.int64)}
    path = save_npz(tmp_path / "f.npz", arrays, compress=False)
    assert zipfile.ZipFile(path).testzip() is None
    ref = io.BytesIO()
    np.savez(ref, **arrays)
    ours, theirs = np.load(path), np.load(io.BytesIO(ref.getvalue()))
    assert list(ours.keys()) == list(theirs.keys()) == list(arrays)
    for key in arrays:
        a, b = ours[key], theirs[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert a.tobytes() == b.tobytes(), key


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "r.json"
    save_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed midway")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_json_converts_numpy_and_nan(tmp_path):
    path = save_json(tmp_path / "s.json", {"x": np.float32(1.5), "v": np.arange(3), "n": float("nan")})
    assert json.loads(path.read_text()) == {"x": 1.5, "v": [0, 1, 2], "n": None}


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        load_npz(tmp_path / "bad.npz")


def test_save_image(tmp_path):
    import cv2

    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = 255  # red in RGB
    path = save_image(tmp_path / "o.png", img)
    back = cv2.imread(str(path))
    assert back.shape == (4, 6, 3) and back[0, 0, 2] == 255 and back[0, 0, 0] == 0
    with pytest.raises(ValueError, match="RGB uint8"):
        save_image(tmp_path / "g.png", np.zeros((4, 6), np.uint8))


def test_outputs_get_the_users_umask_permissions(tmp_path):
    # Written through a temporary name and renamed: the file must not keep a private 0600 mode.
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (save_json(tmp_path / "s.json", {"a": 1}), save_npz(tmp_path / "a.npz", {"x": np.zeros(2)}),
                 save_image(tmp_path / "o.png", np.zeros((4, 4, 3), np.uint8))):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "o.png", "s.json"]


@pytest.mark.parametrize("compress", [True, False])
def test_stacked_npz_written_in_blocks_equals_the_whole_arrays(tmp_path, compress):
    from flame_tracker.io.results import StackedNpzWriter

    rng = np.random.default_rng(0)
    n = 10
    rows = {"a": rng.normal(size=(n, 3, 2)).astype(np.float32), "i": np.arange(n, dtype=np.int64),
            "s": np.array(["landmarks", "flow"] * 5)}
    fixed = {"shape": rng.normal(size=(1, 4)), "name": np.str_("ict")}
    whole = {"all_frames": np.arange(25), "fps": np.float64(30.0)}
    path = tmp_path / "t.npz"
    with StackedNpzWriter(path, n, fixed=("shape", "name"), compress=compress) as w:
        for start in (0, 4, 8):  # uneven blocks
            w.add(start, {**{k: v[start:start + 4] for k, v in rows.items()}, **fixed})
        w.add_whole(whole)
    got = load_npz(path)
    assert set(got) == {*rows, *fixed, *whole}
    for k, v in {**rows, **fixed, **whole}.items():
        assert got[k].dtype == np.asarray(v).dtype and np.array_equal(got[k], v), k
    assert [p.name for p in tmp_path.iterdir()] == ["t.npz"]  # no parts left behind
    import zipfile

    with zipfile.ZipFile(path) as zf:  # .npy format 1.0, as np.savez writes: readers outside numpy
        assert all(zf.read(name)[:8] == b"\x93NUMPY\x01\x00" for name in zf.namelist())


def test_stacked_npz_failure_leaves_no_file_and_no_parts(tmp_path):
    from flame_tracker.io.results import StackedNpzWriter

    path = tmp_path / "t.npz"
    with pytest.raises(RuntimeError, match="killed"):
        with StackedNpzWriter(path, 4) as w:
            w.add(0, {"a": np.zeros((2, 3))})
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match="Python objects"), StackedNpzWriter(path, 1) as w:
        w.add(0, {"o": np.array([None], dtype=object)})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="<U9 after blocks of <U4"), StackedNpzWriter(path, 4) as w:
        w.add(0, {"s": np.array(["flow", "flow"])})
        w.add(2, {"s": np.array(["landmarks", "bridged"])})  # would be cut to 'land'
    with pytest.raises(ValueError, match="fewer than 4 rows"), StackedNpzWriter(path, 4) as w:
        w.add(0, {"a": np.zeros((2, 3))})  # rows 2..3 never came
    with pytest.raises(ValueError, match="after 0 rows"), StackedNpzWriter(path, 4) as w:
        w.add(2, {"a": np.zeros((2, 3))})  # out of order
    assert list(tmp_path.iterdir()) == []
