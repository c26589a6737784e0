"""FLAME-format models: chumpy-free restricted loading, LBS, landmarks, bad input.

Uses synthetic FLAME-format files from `flame_tracker.model.fixtures` (no FLAME licence needed).
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from flame_tracker.model import ModelFormatError, lbs, load_model, load_model_data
from flame_tracker.model.fixtures import dump_legacy_pickle, flame_model_arrays, write_flame_model
from flame_tracker.model.flame import L_EAR_INDICES_REFERENCE, R_EAR_INDICES, load_flame
from flame_tracker.model.lbs import (
    axis_angle_to_matrix,
    chain_plan,
    chain_transforms,
    depth_levels,
    interpolate,
    rigid_transforms,
)


@pytest.fixture(scope="module")
def flame_pkl(tmp_path_factory):
    return write_flame_model(tmp_path_factory.mktemp("flame"), "flame")


@pytest.fixture(scope="module")
def tiny_pkl(tmp_path_factory):
    return write_flame_model(tmp_path_factory.mktemp("tiny"), "tiny", n_shape=300, n_expr=20)


@pytest.fixture(scope="module")
def flame64(flame_pkl):
    return load_model(flame_pkl, dtype=torch.float64, use_cache=False)


def _params(n_shape: int, n_expr: int, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return dict(shape=r(n, n_shape), expr=r(n, n_expr), head_pose=0.3 * r(n, 3),
                neck_pose=0.2 * r(n, 3), jaw_pose=0.2 * r(n, 3), eye_pose=0.2 * r(n, 6))


def test_pickle_is_chumpy_style_and_round_trips(flame_pkl):
    raw = flame_pkl.read_bytes()
    assert b"chumpy.ch\nCh\n" in raw and b"scipy.sparse.csc\ncsc_matrix\n" in raw
    with pytest.raises(ImportError):
        __import__("chumpy")  # loading must not need it
    ref = flame_model_arrays("flame")
    d = load_flame(flame_pkl)
    assert np.array_equal(d.v_template, ref["v_template"])
    assert np.array_equal(d.faces, ref["f"].astype(np.int64))
    assert np.array_equal(d.shapedirs, ref["shapedirs"][:, :, :300])
    assert np.array_equal(d.exprdirs, ref["shapedirs"][:, :, 300:])
    assert np.array_equal(d.posedirs, ref["posedirs"])
    assert np.array_equal(d.J_regressor, ref["J_regressor"].toarray())
    assert np.array_equal(d.weights, ref["weights"])
    assert d.parents.tolist() == [-1, 0, 1, 1, 1]
    assert d.mp_lmk_faces_idx is not None and d.dyn_lmk_faces_idx.shape == (79, 17)


def test_2023_open_style_and_static_dynamic_embedding(tmp_path, flame_pkl):
    p = write_flame_model(tmp_path, "flame", style="2023_open", embedding="static_dynamic")
    assert b"chumpy" not in p.read_bytes()
    a, b = load_flame(p), load_flame(flame_pkl)
    assert np.array_equal(a.v_template, b.v_template)
    # 17 frontal contour points from the dynamic file + 51 static points == DECA's full 68
    assert np.array_equal(a.lmk_faces_idx, b.lmk_faces_idx)
    assert np.allclose(a.lmk_bary, b.lmk_bary)


def test_component_counts(tiny_pkl, flame_pkl):
    m = load_model(flame_pkl, use_cache=False)
    assert (m.n_shape, m.n_expr) == (300, 100) and m.has_jaw_joint and m.has_pose_correctives
    m = load_model(tiny_pkl, n_shape=50, n_expr=10, use_cache=False)
    assert (m.n_shape, m.n_expr) == (50, 10) and m.shapedirs.shape[2] == 50
    with pytest.raises(ValueError, match="n_expr=30"):
        load_model(tiny_pkl, n_expr=30, use_cache=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bases_are_the_files_in_the_model_dtype(flame_pkl, dtype):
    """The basis matrix is written straight in the model's dtype (no float64 copy of the whole
    basis): the same numbers as the file's, cast once; the joint rows J_regressor times them."""
    d = load_model_data(flame_pkl)
    m = load_model(flame_pkl, dtype=dtype, use_cache=False)
    np_dt = np.float32 if dtype == torch.float32 else np.float64
    assert m.shapedirs.dtype == dtype
    assert np.array_equal(m.shapedirs.numpy(), d.shapedirs.astype(np_dt))
    assert np.array_equal(m.exprdirs.numpy(), d.exprdirs.astype(np_dt))
    assert np.array_equal(m.posedirs.numpy(), d.posedirs.astype(np_dt))
    V, J = m.n_verts, m.n_joints
    k = m.n_shape + m.n_expr
    joints = m._dirs[3 * V:].double().numpy().reshape(J, 3, -1)
    ref = np.einsum("jv,vdk->jdk", d.J_regressor, np.concatenate([d.shapedirs, d.exprdirs], 2))
    assert np.allclose(joints[:, :, :k], ref, rtol=1e-6, atol=1e-9)
    assert not joints[:, :, k:].any()  # pose correctives do not move the joints


def test_zero_params_give_template(flame64):
    out = flame64()
    assert torch.allclose(out.vertices[0], flame64.v_template, atol=1e-12)


def test_jaw_rotation_moves_only_jaw_weighted_vertices(flame64):
    jaw = torch.tensor([[0.25, 0.0, 0.0]], dtype=torch.float64)
    moved = (flame64(jaw_pose=jaw).vertices[0] - flame64.v_template).norm(dim=-1)
    weighted = flame64.lbs_weights[:, 2] > 0
    assert weighted.any() and (~weighted).any()
    assert torch.all(moved[~weighted] < 1e-12)
    assert torch.all(moved[flame64.lbs_weights[:, 2] > 0.5] > 1e-4)
    chin = flame64(jaw_pose=jaw).landmarks[0, 8]
    assert chin[1] < flame64().landmarks[0, 8, 1]  # opening the jaw lowers the chin


def test_fast_path_equals_barycentric_interpolation(flame64):
    p = _params(flame64.n_shape, flame64.n_expr, 4)
    full, fast = flame64(**p), flame64.landmarks(**p)
    ref = interpolate(full.vertices, flame64.faces[flame64.lmk_faces_idx], flame64.lmk_bary)
    assert fast.vertices is None
    assert torch.allclose(fast.landmarks, ref, atol=1e-6, rtol=0)
    assert torch.allclose(fast.iris, full.vertices[:, flame64.iris_idx], atol=1e-6, rtol=0)
    assert torch.allclose(fast.ears, full.vertices[:, flame64.ear_idx], atol=1e-6, rtol=0)
    assert flame64.n_sub < 260
    mp = flame64.mediapipe_points(full.vertices)
    assert mp.shape == (4, flame64.mp_lmk_indices.shape[0], 3) and flame64.mp_lmk_indices.max() < 478


def test_fast_chain_matches_generic_transforms(flame64, monkeypatch):
    rot = axis_angle_to_matrix(0.4 * torch.randn(3, 5, 3, dtype=torch.float64))
    joints = torch.randn(3, 5, 3, dtype=torch.float64)
    parents = [-1, 0, 1, 1, 1]  # FLAME
    plan = chain_plan(parents)
    assert plan is not None
    ref = rigid_transforms(rot, joints, depth_levels(parents), parents)
    assert torch.allclose(chain_transforms(rot, joints, plan), ref, atol=1e-12, rtol=0)
    # skeletons the fast chain cannot do in one product per depth fall back to the generic code
    assert chain_plan([-1, 0, 0, 1, 2]) is None and chain_plan([-1, 0, 2, 0, 1]) is None
    p = _params(flame64.n_shape, flame64.n_expr, 2, seed=3)
    fast = flame64.landmarks(**p)
    full = flame64(**p)
    monkeypatch.setattr(lbs, "_plan", lambda parents: None)  # as for a skeleton without a plan
    assert torch.allclose(flame64.landmarks(**p).landmarks, fast.landmarks, atol=1e-12, rtol=0)
    assert torch.allclose(flame64(**p).vertices, full.vertices, atol=1e-12, rtol=0)


def test_landmark_path_gradients(tiny_pkl):
    m = load_model(tiny_pkl, n_shape=6, n_expr=5, dtype=torch.float64, use_cache=False)
    p = _params(6, 5, 2, seed=2)
    keys = ("shape", "expr", "head_pose", "neck_pose", "jaw_pose", "eye_pose")

    def f(*a):
        out = m.landmarks(**dict(zip(keys, a)))
        return torch.cat([x.flatten() for x in (out.landmarks, out.iris, out.ears) if x is not None])

    for point in (p, {k: torch.zeros_like(v) for k, v in p.items()}):  # random, and the zero pose
        assert torch.autograd.gradcheck(f, tuple(point[k].clone().requires_grad_() for k in keys),
                                        fast_mode=True)


def test_autograd_matches_finite_differences(tiny_pkl):
    m = load_model(tiny_pkl, n_shape=6, n_expr=5, dtype=torch.float64, use_cache=False)
    p = _params(6, 5, 2, seed=1)
    keys = ("shape", "expr", "head_pose", "neck_pose", "jaw_pose", "eye_pose")
    inputs = tuple(p[k].clone().requires_grad_() for k in keys)

    def f(*a):
        return m(**dict(zip(keys, a))).vertices.flatten()

    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    # zero pose is the smooth point of Rodrigues that naive `norm + eps` code gets wrong
    zero = tuple(torch.zeros_like(t).requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(f, zero, fast_mode=True)


def test_dynamic_contour(flame64):
    verts = flame64().vertices.expand(3, -1, -1)
    yaw = torch.deg2rad(torch.tensor([0.0, 25.0, -60.0], dtype=torch.float64))
    contour = flame64.dynamic_contour(verts, yaw)
    # yaw 0 is the static contour of the 68-point embedding
    assert torch.allclose(contour[0], flame64().landmarks[0, :17], atol=1e-12)
    ref = flame64.dyn_lmk_faces_idx
    assert not torch.allclose(contour[1], contour[0])  # the contour slides with yaw
    expect = interpolate(verts[:1], flame64.faces[ref[25]], flame64.dyn_lmk_bary[25])[0]
    assert torch.allclose(contour[1], expect)
    expect = interpolate(verts[:1], flame64.faces[ref[78]], flame64.dyn_lmk_bary[78])[0]
    assert torch.allclose(contour[2], expect)  # beyond -39 degrees: the last entry
    hp = torch.tensor([[0.0, 0.3, 0.0]], dtype=torch.float64)
    assert torch.allclose(flame64.head_yaw(hp), torch.tensor([0.3], dtype=torch.float64))


def test_iris_and_fixed_ear_indices(flame64):
    v = flame64.v_template
    iris = v[flame64.iris_idx]
    assert torch.all(iris[:5, 0] < 0) and torch.all(iris[5:, 0] > 0)  # right eye first
    ears = flame64.ear_idx.tolist()
    assert ears[20:] == R_EAR_INDICES
    assert L_EAR_INDICES_REFERENCE[9] == 641 and v[641, 0] < 0  # the reference bug is in the data
    assert ears[9] != 641 and len(set(ears)) == 40
    assert torch.all(v[ears[:20], 0] > 0) and torch.all(v[ears[20:], 0] < 0)
    mirror = v[R_EAR_INDICES[9]] * torch.tensor([-1.0, 1.0, 1.0], dtype=v.dtype)
    assert (v[ears[9]] - mirror).norm() < 0.01


def test_float32_cache_round_trip(flame_pkl, tmp_path, monkeypatch):
    monkeypatch.setenv("FLAME_TRACKER_CACHE", str(tmp_path))
    a = load_model(flame_pkl)  # converts and caches
    assert len(list((tmp_path / "models").glob("*.npz"))) == 1
    b = load_model(flame_pkl)
    assert a.dtype == torch.float32
    assert torch.equal(a.shapedirs, b.shapedirs) and torch.equal(a.ear_idx, b.ear_idx)
    assert torch.equal(a.landmarks().landmarks, b.landmarks().landmarks)


# ---------------------------------------------------------------------- bad input
class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "generic_model.pkl"
    bad.write_bytes(pickle.dumps({"v_template": _Evil(str(marker))}, protocol=2))
    with pytest.raises(ModelFormatError, match=r"generic_model\.pkl.*refusing.*(posix|os)\.system"):
        load_model(bad, use_cache=False)
    assert not marker.exists()
    # also inside a landmark .npy
    npy = tmp_path / "landmark_embedding.npy"
    np.save(npy, np.array({"x": _Evil(str(marker))}, dtype=object), allow_pickle=True)
    ok = write_flame_model(tmp_path / "m", "tiny", embedding="none", mediapipe=False)
    with pytest.raises(ModelFormatError, match="landmark_embedding.npy.*refusing"):
        load_model(ok, landmark_embedding=npy, use_cache=False)
    assert not marker.exists()


def test_missing_truncated_wrong_keys_wrong_shapes(tmp_path, tiny_pkl):
    with pytest.raises(FileNotFoundError, match="nothere.pkl"):
        load_model(tmp_path / "nothere.pkl")
    raw = tiny_pkl.read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFormatError, match=r"cut\.pkl.*(truncated|damaged)"):
        load_model(cut, use_cache=False)
    # a text file named .npz: said to be no npz archive (not numpy's hint to unpickle it)
    text = tmp_path / "model.npz"
    text.write_text("not a model\n")
    with pytest.raises(ModelFormatError, match=r"model\.npz: not an \.npz archive") as err:
        load_model(text, use_cache=False)
    assert "pickle" not in str(err.value)
    arrays = flame_model_arrays("tiny", n_expr=10)
    keys = tmp_path / "keys" / "model.pkl"
    keys.parent.mkdir()
    dump_legacy_pickle({k: v for k, v in arrays.items() if k != "weights"}, keys)
    with pytest.raises(ModelFormatError, match=r"model\.pkl.*missing keys \['weights'\]"):
        load_model(keys, use_cache=False)
    shapes = tmp_path / "shapes" / "model.pkl"
    shapes.parent.mkdir()
    dump_legacy_pickle({**arrays, "weights": arrays["weights"][:-3]}, shapes)
    with pytest.raises(ModelFormatError, match=r"model\.pkl.*weights"):
        load_model(shapes, use_cache=False)
    # no landmark embedding next to the model
    bare = write_flame_model(tmp_path / "bare", "tiny", embedding="none", mediapipe=False)
    with pytest.raises(ModelFormatError, match="no 68-point landmark embedding"):
        load_model(bare, use_cache=False)
    # an embedding for another mesh
    other = write_flame_model(tmp_path / "other", "flame", mediapipe=False)
    with pytest.raises(ModelFormatError, match="lmk_faces_idx indexes triangles outside"):
        load_model(bare, landmark_embedding=other.parent / "landmark_embedding.npy", use_cache=False)


def test_synthetic_flame_helper():
    from flame_tracker.model.fixtures import synthetic_flame

    m = synthetic_flame("tiny", n_shape=20, n_expr=10, dtype=torch.float64)  # via 'expressiondirs'
    assert (m.n_shape, m.n_expr, m.n_verts) == (20, 10, 159) and m.dtype == torch.float64
    lmk = m.landmarks().landmarks[0]
    assert lmk[30, 2] > lmk[36, 2] and int(torch.argmin(lmk[:, 1])) == 8  # face-like layout


def test_load_model_data_accepts_cached_npz(tmp_path, tiny_pkl):
    d = load_model_data(tiny_pkl, use_cache=False)
    out = tmp_path / "model.npz"
    d.save_npz(out)
    m = load_model(out)
    assert m.n_verts == d.v_template.shape[0] and m.n_expr == d.exprdirs.shape[2]


def test_protocol_5_pickles_and_sparse_arrays_load(tmp_path):
    """What chumpy-removal scripts write (``pickle.HIGHEST_PROTOCOL``, scipy's sparse arrays) loads as
    the same model as a protocol-2 file."""
    import scipy.sparse as sp

    ref = write_flame_model(tmp_path / "ref", "tiny", n_expr=10, style="2023_open", mediapipe=False)
    arrays = flame_model_arrays("tiny", n_expr=10)
    for name, jreg in (("p5", arrays["J_regressor"]), ("csc_array", sp.csc_array(arrays["J_regressor"]))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "landmark_embedding.npy").write_bytes((ref.parent / "landmark_embedding.npy").read_bytes())
        with open(folder / "generic_model.pkl", "wb") as f:
            pickle.dump({**arrays, "J_regressor": jreg}, f, protocol=5)
        got = load_model_data(folder / "generic_model.pkl", use_cache=False)
        want = load_model_data(ref, use_cache=False)
        for key in ("v_template", "shapedirs", "exprdirs", "J_regressor", "weights", "posedirs", "lmk_faces_idx"):
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=f"{name}: {key}")


def test_the_model_cache_follows_the_landmark_files_beside_the_pkl(tmp_path, monkeypatch):
    """Replacing the landmark file next to a cached model takes effect, and the same .pkl linked into
    another folder is read with that folder's landmark files (not the cached conversion of the first)."""
    monkeypatch.setenv("FLAME_TRACKER_CACHE", str(tmp_path / "cache"))
    pkl = write_flame_model(tmp_path / "a", "tiny", n_expr=10, mediapipe=False)
    before = load_model(pkl).landmarks().landmarks
    other = write_flame_model(tmp_path / "b", "flame", mediapipe=False)  # an embedding of other triangles
    emb = pkl.parent / "landmark_embedding.npy"
    d = np.load(emb, allow_pickle=True).item()
    d["full_lmk_bary_coords"] = d["full_lmk_bary_coords"][:, ::-1].copy()  # the same triangles, other points
    np.save(emb, np.array(d, dtype=object), allow_pickle=True)
    after = load_model(pkl).landmarks().landmarks
    assert not torch.allclose(before, after)
    np.testing.assert_allclose(after.numpy(), load_model(pkl, use_cache=False).landmarks().landmarks.numpy())
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / pkl.name).symlink_to(pkl)
    (linked / "landmark_embedding.npy").symlink_to(other.parent / "landmark_embedding.npy")
    with pytest.raises(ModelFormatError, match="lmk_faces_idx indexes triangles outside"):
        load_model(linked / pkl.name)


def test_damaged_landmark_files_are_named(tmp_path):
    """A damaged landmark file beside the model is named in the error (not taken for the model)."""
    pkl = write_flame_model(tmp_path / "mp", "tiny", n_expr=10)
    (pkl.parent / "mediapipe_landmark_embedding.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ModelFormatError, match=r"mediapipe_landmark_embedding\.npz: not a readable"):
        load_model(pkl, use_cache=False)
    pkl = write_flame_model(tmp_path / "cut", "tiny", n_expr=10, mediapipe=False)
    emb = pkl.parent / "landmark_embedding.npy"
    emb.write_bytes(emb.read_bytes()[:-200])
    with pytest.raises(ModelFormatError, match=r"landmark_embedding\.npy: truncated or damaged"):
        load_model(pkl, use_cache=False)
    bare = write_flame_model(tmp_path / "bare", "tiny", embedding="none", mediapipe=False)
    with pytest.raises(ModelFormatError, match=r"put DECA's landmark_embedding\.npy.*next to generic_model\.pkl"):
        load_model(bare, use_cache=False)


def test_a_model_in_millimetres_or_with_nan_is_refused(tmp_path):
    """FLAME is in metres: the same model in millimetres would fit, with cameras and exports off by
    1000; a template with NaN would fail every photo. Both are said at load."""
    arrays = flame_model_arrays("tiny", n_expr=10)
    ref = write_flame_model(tmp_path / "ref", "tiny", n_expr=10, mediapipe=False)
    for name, change, msg in (("mm", lambda a: {**a, "v_template": a["v_template"] * 1000.0}, "millimetres"),
                              ("nan", lambda a: {**a, "v_template": np.where(np.arange(len(a["v_template"]))[:, None]
                                                                              == 3, np.nan, a["v_template"])},
                               "NaN")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "landmark_embedding.npy").write_bytes((ref.parent / "landmark_embedding.npy").read_bytes())
        dump_legacy_pickle(change(arrays), folder / "generic_model.pkl")
        with pytest.raises(ModelFormatError, match=rf"generic_model\.pkl: v_template .*{msg}.*in metres"):
            load_model(folder / "generic_model.pkl", use_cache=False)


def test_a_flame_folder_given_as_the_model_names_its_pkl(tmp_path):
    pkl = write_flame_model(tmp_path / "FLAME2020", "tiny", n_expr=10, mediapipe=False)
    with pytest.raises(ModelFormatError, match=r"FaceXModel folder.*pass the \.pkl itself .*generic_model\.pkl"):
        load_model(pkl.parent, use_cache=False)


def test_a_zip_named_pkl_is_called_a_zip(tmp_path):
    """FLAME's download is a zip: one renamed .pkl (or an .npz) is said to be a zip archive."""
    import zipfile

    fake = tmp_path / "generic_model.pkl"
    with zipfile.ZipFile(fake, "w") as z:
        z.writestr("generic_model.pkl", b"x")
    with pytest.raises(ModelFormatError, match=r"generic_model\.pkl: a zip archive, not a pickle"):
        load_model(fake, use_cache=False)
