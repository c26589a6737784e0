"""OBJ/PLY export round trips and bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest

from flame_tracker.io.mesh import load_obj, load_ply, save_obj, save_ply


@pytest.fixture()
def tetra() -> tuple[np.ndarray, np.ndarray]:
    v = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64)
    return v, f


def test_obj_round_trip(tmp_path, tetra):
    v, f = tetra
    path = save_obj(tmp_path / "m.obj", v, f)
    text = path.read_text()
    assert "f 1 3 2" in text  # 1-based indices
    v2, f2 = load_obj(path)
    np.testing.assert_allclose(v2, v, atol=1e-6)
    np.testing.assert_array_equal(f2, f)


def test_ply_round_trip(tmp_path, tetra):
    v, f = tetra
    path = save_ply(tmp_path / "m.ply", v, f)
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    v2, f2 = load_ply(path)
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(f2, f)


def test_obj_quads_are_fanned(tmp_path):
    (tmp_path / "q.obj").write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nf 1/1 2/2 3/3 4/4\n")
    _, f = load_obj(tmp_path / "q.obj")
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3]])


def test_bad_meshes_are_refused(tmp_path, tetra):
    v, f = tetra
    with pytest.raises(ValueError, match="out of range"):
        save_obj(tmp_path / "x.obj", v, f + 4)
    with pytest.raises(ValueError, match="NaN"):
        save_ply(tmp_path / "x.ply", np.full_like(v, np.nan), f)
    with pytest.raises(ValueError, match="V×3"):
        save_ply(tmp_path / "x.ply", v[:, :2], f)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    (tmp_path / "t.ply").write_bytes(save_ply(tmp_path / "ok.ply", v, f).read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        load_ply(tmp_path / "t.ply")
    with pytest.raises(FileNotFoundError, match="missing.obj"):
        load_obj(tmp_path / "missing.obj")


def test_obj_face_cache_follows_the_faces(tmp_path, tetra):
    """The formatted-face cache is keyed by content: same-shaped but different faces are rewritten."""
    v, f = tetra
    save_obj(tmp_path / "a.obj", v, f)
    f2 = f[:, ::-1].copy()  # same shape, flipped winding
    save_obj(tmp_path / "b.obj", v, f2)
    np.testing.assert_array_equal(load_obj(tmp_path / "a.obj")[1], f)
    np.testing.assert_array_equal(load_obj(tmp_path / "b.obj")[1], f2)
    f[0] = [1, 2, 3]  # mutating the caller's array in place must not serve the old text
    save_obj(tmp_path / "c.obj", v, f)
    np.testing.assert_array_equal(load_obj(tmp_path / "c.obj")[1], f)
