"""The original ICT-FaceKit `FaceXModel/` OBJ folder, from a small folder generated from the
shared light npz (full 26,719-vertex layout, 2 identities, 2 expressions)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flame_tracker.model import ModelFormatError, load_model_data
from flame_tracker.model.ict import ICT_FULL_VERTS, ICT_KEEP, ICT_LANDMARKS_68, ICT_REGIONS, load_ict_npz


def _write_obj(path, verts, faces=None):
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    if faces is not None:
        lines += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in f) for f in faces]  # OBJ v/vt refs
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def facex(shared_dir, tmp_path_factory):
    z = np.load(shared_dir / "models" / "ict_facekit_light.npz")
    keep = np.concatenate([np.arange(a, b) for a, b in ICT_KEEP])
    assert np.array_equal(z["original_vertex_index"], keep)  # the light model is this subset
    assert json.loads(str(z["regions"])) == {k: list(v) for k, v in ICT_REGIONS.items()}
    assert np.array_equal(z["landmarks_68"], ICT_LANDMARKS_68)
    folder = tmp_path_factory.mktemp("FaceXModel")
    full = np.zeros((ICT_FULL_VERTS, 3), np.float32)
    full[keep] = z["neutral"]
    # a polygon on a removed part (teeth, lashes) must be dropped; a quad must be split
    quads = [[keep[a], keep[b], keep[c], keep[c]] for a, b, c in z["faces"][:1]]
    faces = [keep[f] for f in z["faces"][1:]] + quads + [[11248 + 100, 11248 + 101, 11248 + 102]]
    _write_obj(folder / "generic_neutral_mesh.obj", full, faces)
    names = {"identity000": z["identity_deltas"][0], "identity001": z["identity_deltas"][1],
             "browDown_L": z["expression_deltas"][2], "jawOpen": z["expression_deltas"][30]}
    for name, delta in names.items():
        v = full.copy()
        v[keep] += delta
        _write_obj(folder / f"{name}.obj", v)
    return folder, z


def test_facex_folder_matches_light_npz(facex, shared_dir):
    folder, z = facex
    d = load_model_data(folder, use_cache=False)
    ref = load_ict_npz(shared_dir / "models" / "ict_facekit_light.npz")
    assert d.expr_names == ["browDown_L", "jawOpen"] and d.shapedirs.shape[2] == 2
    assert np.allclose(d.v_template, ref.v_template, atol=1e-8)
    assert np.allclose(d.shapedirs, ref.shapedirs[:, :, :2], atol=2e-8)
    assert np.allclose(d.exprdirs[:, :, 1], ref.exprdirs[:, :, 30], atol=2e-8)
    assert d.faces.shape[0] == ref.faces.shape[0] + 1  # the quad became two triangles
    assert np.array_equal(d.iris_idx, ref.iris_idx)
    assert np.allclose(d.J_regressor @ d.v_template, ref.J_regressor @ ref.v_template, atol=1e-7)


def test_facex_folder_errors(tmp_path, facex):
    with pytest.raises(ModelFormatError, match="no generic_neutral_mesh.obj"):
        load_model_data(tmp_path, use_cache=False)
    _write_obj(tmp_path / "generic_neutral_mesh.obj", np.zeros((10, 3)), [[0, 1, 2]])
    with pytest.raises(ModelFormatError, match="10 vertices, expected ICT-FaceKit's 26719"):
        load_model_data(tmp_path, use_cache=False)
