"""``flame-tracker export``: ARKit / Live Link Face CSV and glTF, read back the way their consumers
read them, on a tracked clip; bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from _readers import gaussian_avatars_landmarks
from click.testing import CliRunner

from flame_tracker.cli.main import main
from flame_tracker.video.pipeline import VideoOptions, track_video
from flame_tracker.video.track import TrackOptions


@pytest.fixture(scope="module")
def model(shared_dir: Path):
    from flame_tracker.model import load_model

    return load_model()


@pytest.fixture(scope="module")
def run_dir(shared_dir: Path, model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    track_video(shared_dir / "videos" / "talking_ex3.mp4", out, model=model,
                options=TrackOptions(n_keyframes=3, identity_rounds=1, identity_iters=5, chunk=8),
                video_options=VideoOptions(max_frames=16), progress=False)
    return out


def _exported(t) -> np.ndarray:
    """The rows of tracking.npz an export holds: frames with landmarks or followed by optical flow."""
    return t["valid"] | (t["source"] == "flow")


def test_arkit_csv_reads_back_as_live_link_face(run_dir: Path) -> None:
    from scipy.spatial.transform import Rotation

    from flame_tracker.camera import to_head_centric
    from flame_tracker.export.arkit import ARKIT_52

    res = CliRunner().invoke(main, ["export", str(run_dir), "--format", "arkit-csv", "--out", str(run_dir / "ark")])
    assert res.exit_code == 0, res.output
    t = np.load(run_dir / "tracking.npz")
    names = [str(n) for n in t["expr_names"]]
    # the fitted curves: every tracked frame (flow ones too); MediaPipe's: the frames it saw
    for fname, src_names, ok in (("arkit_fitted.csv", names, _exported(t)),
                                 ("arkit_mediapipe.csv", [str(n) for n in t["blendshape_names"]], t["valid"])):
        src = t["exp"][ok] if fname == "arkit_fitted.csv" else t["blendshape_scores"][ok]
        with open(run_dir / "ark" / fname, newline="") as f:
            rows = list(csv.DictReader(f))  # an importer reads columns by (case-insensitive) name
        assert len(rows) == int(ok.sum())
        header = {k.lower(): k for k in rows[0]}
        assert all(s.lower() in header for s in ARKIT_52) and rows[0]["BlendShapeCount"] == "61"
        # the column of each named source channel holds that channel's weight
        idx = {n.lower(): i for i, n in enumerate(src_names)}
        for arkit, own in (("eyeBlinkLeft", "eyeBlink_L" if fname == "arkit_fitted.csv" else "eyeBlinkLeft"),
                           ("jawOpen", "jawOpen")):
            got = np.array([float(r[header[arkit.lower()]]) for r in rows])
            assert np.allclose(got, np.clip(src[:, idx[own.lower()]], 0, 1), atol=2e-6)
        # timecodes HH:MM:SS:FF.mmm increase; the head rotation is the tracked one
        tc = [r["Timecode"] for r in rows]
        assert all(len(c.split(":")) == 4 for c in tc) and tc == sorted(tc)
        euler = np.array([[float(r[k]) for k in ("HeadYaw", "HeadPitch", "HeadRoll")] for r in rows])
        head, _ = to_head_centric(torch.as_tensor(t["pose6"][ok], dtype=torch.float64))
        want = Rotation.from_rotvec(head.numpy()).as_matrix()
        got = Rotation.from_euler("YXZ", euler).as_matrix()
        assert np.abs(got - want).max() < 1e-5


def _accessor(doc, blob: bytes, i: int) -> np.ndarray:
    """Decode accessor ``i`` as a consumer does (bufferView offset, component type, element type)."""
    import pygltflib as g

    acc = doc.accessors[i]
    view = doc.bufferViews[acc.bufferView]
    dtype = {g.FLOAT: np.float32, g.UNSIGNED_INT: np.uint32}[acc.componentType]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc.type]
    start = view.byteOffset + (acc.byteOffset or 0)
    return np.frombuffer(blob, dtype, acc.count * width, start).reshape(acc.count, width)


def test_gltf_reproduces_the_tracked_landmarks_through_its_camera(run_dir: Path, model) -> None:
    import pygltflib as g
    from scipy.spatial.transform import Rotation

    res = CliRunner().invoke(main, ["export", str(run_dir), "--format", "gltf", "--out", str(run_dir / "gl")])
    assert res.exit_code == 0, res.output
    doc = g.GLTF2().load_binary(str(run_dir / "gl" / "run.glb"))
    blob = doc.binary_blob()
    t = np.load(run_dir / "tracking.npz")
    prim = doc.meshes[0].primitives[0]
    base = _accessor(doc, blob, prim.attributes.POSITION).astype(np.float64)
    targets = np.stack([_accessor(doc, blob, tg["POSITION"]) for tg in prim.targets], -1)  # [V, 3, E]
    assert doc.meshes[0].extras["targetNames"] == [str(n) for n in t["expr_names"]]
    # smooth-shading normals: unit length, outward (the nose tip's faces the viewer, +z)
    normals = _accessor(doc, blob, prim.attributes.NORMAL).astype(np.float64)
    assert normals.shape == base.shape and np.allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    assert normals[int(np.argmax(base[:, 2]))][2] > 0.7
    # each target carries the change of the normals at weight 1 (an eye closing turns its lid's normals),
    # checked against normals computed here (area-weighted, numpy)
    def unit_normals(v: np.ndarray) -> np.ndarray:
        f = model.faces.numpy()
        fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
        vn = np.zeros_like(v)
        for corner in range(3):
            np.add.at(vn, f[:, corner], fn)
        return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-30)

    used = np.zeros(len(base), bool)
    used[model.faces.numpy().reshape(-1)] = True
    blink = doc.meshes[0].extras["targetNames"].index("eyeBlink_L")
    for e in (0, blink):
        d_nrm = _accessor(doc, blob, prim.targets[e]["NORMAL"]).astype(np.float64)
        want = unit_normals(base + targets[:, :, e]) - unit_normals(base)
        assert np.abs(d_nrm - want)[used].max() < 1e-4
    turned = np.degrees(np.arccos(np.clip((normals * (normals + d_nrm)).sum(1)
                                          / np.linalg.norm(normals + d_nrm, axis=1), -1, 1)))
    assert turned.max() > 60  # the closed lid faces another way than the open one
    anim = doc.animations[0]
    out = {ch.target.path: _accessor(doc, blob, anim.samplers[ch.sampler].output) for ch in anim.channels}
    n = int(_exported(t).sum())
    weights = out["weights"].reshape(n, -1)
    cam = doc.cameras[0].perspective
    w_img, h_img = (float(v) for v in t["image_size"][0])
    assert abs(cam.aspectRatio - w_img / h_img) < 1e-6
    faces = model.faces.numpy()
    lmk_v, lmk_b = faces[model.lmk_faces_idx.numpy()], model.lmk_bary.double().numpy()
    worst = 0.0
    for k in range(0, n, 5):
        verts = base + targets.astype(np.float64) @ weights[k]
        lmk = np.einsum("pi,pij->pj", lmk_b, verts[lmk_v])
        x = lmk @ Rotation.from_quat(out["rotation"][k]).as_matrix().T + out["translation"][k]  # the head node
        # glTF camera at the origin looking down -z (y up)
        f = 0.5 * h_img / np.tan(0.5 * cam.yfov)
        px = np.stack([w_img / 2 + f * x[:, 0] / -x[:, 2], h_img / 2 - f * x[:, 1] / -x[:, 2]], 1)
        worst = max(worst, float(np.abs(px - t["fit_lmks_68_px"][_exported(t)][k]).max()))
    print(f"glTF round trip: worst landmark {worst:.4f} px")
    assert worst < 0.5, worst


def test_export_help_describes_every_format() -> None:
    from flame_tracker.export import FORMATS

    res = CliRunner().invoke(main, ["export", "--help"])
    assert res.exit_code == 0
    described = {line.split()[0] for line in res.output.splitlines() if line.startswith("  ") and line.split()}
    assert set(FORMATS) <= described, set(FORMATS) - described


def test_export_refuses_bad_input_with_one_line(run_dir: Path, tmp_path: Path, shared_dir: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["export", str(tmp_path), "--format", "gltf"])
    assert res.exit_code == 1 and "neither a finished" in res.output and "flame-tracker image" in res.output
    res = runner.invoke(main, ["export", str(run_dir), "--format", "vrm"])
    assert res.exit_code == 1 and "unknown format" in res.output
    # a FLAME-format model cannot carry its jaw as morph targets: refused, nothing written
    from flame_tracker.model.fixtures import write_flame_model

    pkl = write_flame_model(tmp_path / "flame", size="tiny", n_shape=10, n_expr=10)
    res = runner.invoke(main, ["export", str(run_dir), "--format", "gltf", "--model", str(pkl),
                               "--out", str(tmp_path / "gl")])
    assert res.exit_code == 1 and "pass the same --model" in res.output  # another model than the run's
    assert not (tmp_path / "gl").exists() or not any((tmp_path / "gl").iterdir())
    # the single-file formats take a folder like the others: one holding a user's files is refused,
    # their files untouched; an earlier export of ours is replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "arkit_fitted.csv").write_text("mine")
    (mine / "run.glb").write_text("mine too")
    for fmt in ("arkit-csv", "gltf"):
        res = runner.invoke(main, ["export", str(run_dir), "--format", fmt, "--out", str(mine)])
        assert res.exit_code == 1 and "holds other files" in res.output, (fmt, res.output)
        res = runner.invoke(main, ["export", str(run_dir), "--format", fmt, "--out", str(tmp_path / fmt)])
        assert res.exit_code == 0, res.output
        res = runner.invoke(main, ["export", str(run_dir), "--format", fmt, "--out", str(tmp_path / fmt)])
        assert res.exit_code == 0, res.output
    assert (mine / "arkit_fitted.csv").read_text() == "mine" and (mine / "run.glb").read_text() == "mine too"
    # the user's files beside an earlier export of ours are kept when it is replaced (a scene file beside
    # the .glb); one named as a file the export writes is refused
    ours = tmp_path / "gltf"
    (ours / "scene.blend").write_text("my scene")
    (ours / "textures").mkdir()
    (ours / "textures" / "skin.png").write_text("my texture")
    before = (ours / "run.glb").read_bytes()
    res = runner.invoke(main, ["export", str(run_dir), "--format", "gltf", "--out", str(ours)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in ours.iterdir()) == [".flame-tracker-export", "run.glb", "scene.blend", "textures"]
    assert (ours / "scene.blend").read_text() == "my scene" and (ours / "textures" / "skin.png").is_file()
    assert (ours / "run.glb").read_bytes() == before
    (ours / ".flame-tracker-export").write_text("gltf\n")  # an earlier version's marker: what it wrote unknown
    res = runner.invoke(main, ["export", str(run_dir), "--format", "gltf", "--out", str(ours)])
    assert res.exit_code == 0 and (ours / "scene.blend").is_file() and (ours / "textures").is_dir(), res.output
    (ours / ".flame-tracker-export").write_text("gltf\nwritten:\nold.glb\n")  # run.glb is now the user's
    res = runner.invoke(main, ["export", str(run_dir), "--format", "gltf", "--out", str(ours)])
    assert res.exit_code == 1 and "holds run.glb, which this export did not write" in res.output, res.output
    assert (ours / "scene.blend").is_file() and (ours / "run.glb").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".gltf.")]  # no hidden folder left
    (ours / ".flame-tracker-export").write_text("gltf\nwritten:\n")  # what --force leaves: nothing here is ours
    res = runner.invoke(main, ["export", str(run_dir), "--format", "gltf", "--out", str(ours)])
    assert res.exit_code == 1 and "holds run.glb, which this export did not write" in res.output, res.output
    assert (ours / "run.glb").read_bytes() == before
    (ours / ".flame-tracker-export").write_text("gltf\nwritten:\nrun.glb\n")
    # another format's export in the folder is not replaced (it would be lost)
    res = runner.invoke(main, ["export", str(run_dir), "--format", "gltf", "--out", str(tmp_path / "arkit-csv")])
    assert res.exit_code == 1 and "holds an export as arkit-csv" in res.output, res.output
    assert (tmp_path / "arkit-csv" / "arkit_fitted.csv").is_file()
    # a folder an earlier version wrote (its files, no marker) is taken as ours
    old = tmp_path / "old_gltf"
    old.mkdir()
    (old / "run.glb").write_bytes(b"an older export")
    res = runner.invoke(main, ["export", str(run_dir), "--format", "gltf", "--out", str(old)])
    assert res.exit_code == 0, res.output
    assert (old / "run.glb").stat().st_size > 1000
    assert (tmp_path / "gltf" / "run.glb").stat().st_size > 1000
    assert (tmp_path / "arkit-csv" / "arkit_fitted.csv").is_file()


def test_video_command_exports_after_tracking(shared_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["video", str(shared_dir / "videos" / "talking_ex3.mp4"), "--out", str(out),
                                    "--max-frames", "6", "--quiet", "--export", "arkit-csv", "--export", "gltf"])
    assert res.exit_code == 0, res.output
    assert (out / "export-arkit-csv" / "arkit_fitted.csv").is_file() and (out / "export-gltf" / "run.glb").is_file()
    with open(out / "export-arkit-csv" / "arkit_fitted.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 6
    # a format the model cannot take is refused before anything is tracked
    out2 = tmp_path / "not_flame"
    res = CliRunner().invoke(main, ["video", str(shared_dir / "videos" / "talking_ex3.mp4"), "--out", str(out2),
                                    "--max-frames", "6", "--export", "imavatar"])
    assert res.exit_code == 1 and "--export imavatar" in res.output and "FLAME 2020" in res.output, res.output
    assert not out2.exists()


@pytest.fixture(scope="module")
def flame_run(shared_dir: Path, tmp_path_factory) -> tuple[Path, object, Path]:
    """A clip tracked with a FLAME-2023-format model of FLAME's size (synthetic bases)."""
    return _tracked_flame_run(shared_dir, tmp_path_factory.mktemp("flame_export"), 10, style="2023_open")


def _tracked_flame_run(shared_dir: Path, root: Path, frames: int, **model_kw) -> tuple[Path, object, Path]:
    """``frames`` of a shared clip tracked with a synthetic FLAME-format model written with ``model_kw``."""
    from flame_tracker.model import load_model
    from flame_tracker.model.fixtures import write_flame_model

    pkl = write_flame_model(root / "model", size="flame", **model_kw)
    model = load_model(pkl)
    out = root / "run"
    track_video(shared_dir / "videos" / "talking_ex3.mp4", out, model=model,
                options=TrackOptions(n_keyframes=3, identity_rounds=1, identity_iters=5, chunk=8),
                video_options=VideoOptions(max_frames=frames), progress=False)
    return out, model, pkl


def _gaussian_avatars_worst_px(ga: Path, model, fit_lmks_px: np.ndarray) -> float:
    """Read the VHAP folder ``ga`` as GaussianAvatars does and return the worst distance (px) of
    the exported head's landmarks through the exported camera from ``fit_lmks_px [T, 68, 2]``."""
    import json

    tf = json.loads((ga / "transforms.json").read_text())
    n = len(tf["frames"])
    assert n == len(fit_lmks_px) and (ga / "canonical_flame_param.npz").is_file()
    train = json.loads((ga / "transforms_train.json").read_text())["frames"]
    test = json.loads((ga / "transforms_test.json").read_text())["frames"]
    assert len(train) + len(test) == n and json.loads((ga / "transforms_val.json").read_text())["frames"] == []
    worst = 0.0
    for fr in tf["frames"]:
        assert (ga / fr["file_path"]).is_file()
        px = gaussian_avatars_landmarks(ga, fr, tf["camera_angle_x"], model)
        worst = max(worst, float(np.abs(px - fit_lmks_px[fr["timestep_index"]]).max()))
    return worst


def test_gaussian_avatars_folder_reads_back_as_gaussian_avatars_does(flame_run) -> None:
    run, model, pkl = flame_run
    res = CliRunner().invoke(main, ["export", str(run), "--format", "gaussian-avatars", "--model", str(pkl),
                                    "--out", str(run.parent / "ga")])
    assert res.exit_code == 0, res.output
    t = np.load(run / "tracking.npz")
    worst = _gaussian_avatars_worst_px(run.parent / "ga", model, t["fit_lmks_68_px"][_exported(t)])
    print(f"GaussianAvatars round trip: worst landmark {worst:.4f} px")
    assert worst < 0.5, worst


def test_export_checks_the_video_it_is_given(flame_run, shared_dir: Path, tmp_path: Path) -> None:
    """``--video`` names where the tracked video is now: another video (another size) is refused
    before anything is written; a moved copy of the tracked file is taken without a word; a
    re-encoded copy (same size, rate and length, another file) is taken with a warning."""
    import shutil

    from flame_tracker.video.decode import VideoReader
    from flame_tracker.video.encode import VideoWriter

    run, _, pkl = flame_run
    args = ["export", str(run), "--format", "gaussian-avatars", "--model", str(pkl)]
    res = CliRunner().invoke(main, [*args, "--video", str(shared_dir / "videos" / "talking_ex1.mp4"),
                                    "--out", str(tmp_path / "wrong")])
    assert res.exit_code == 1 and "is not the tracked video" in res.output and "1080x720" in res.output, res.output
    assert not (tmp_path / "wrong").exists()
    moved = shutil.copy(shared_dir / "videos" / "talking_ex3.mp4", tmp_path / "moved.mp4")
    res = CliRunner().invoke(main, [*args, "--video", str(moved), "--out", str(tmp_path / "moved")])
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    reader = VideoReader(shared_dir / "videos" / "talking_ex3.mp4")
    with VideoWriter(tmp_path / "reencoded.mp4", fps=reader.info.fps, crf=18) as out:
        for frame in reader:
            out.write(frame.image, frame.time_s)
    res = CliRunner().invoke(main, [*args, "--video", str(tmp_path / "reencoded.mp4"), "--out", str(tmp_path / "re")])
    assert res.exit_code == 0 and "not the file this run tracked" in res.output, res.output


def test_gaussian_avatars_refuses_a_model_that_is_not_flame_2023(run_dir: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["export", str(run_dir), "--format", "gaussian-avatars", "--out",
                                    str(tmp_path / "ga")])
    assert res.exit_code == 1 and "FLAME 2023" in res.output
    assert not (tmp_path / "ga").exists()


def test_a_run_is_tied_to_its_model_file_not_its_name(flame_run, shared_dir: Path, tmp_path: Path) -> None:
    """FLAME 2017-2020 all ship as generic_model.pkl: another file of the run's model name (other
    contents) is refused by every export and by a rerun into the run's folder, which would otherwise
    report "already complete"; a folder written before runs recorded the file (no fingerprint) still
    resumes."""
    import json
    import shutil

    from flame_tracker.model import load_model
    from flame_tracker.model.fixtures import write_flame_model
    from flame_tracker.video.store import OutputMismatchError

    run, model, pkl = flame_run
    other_pkl = write_flame_model(tmp_path / "other", size="flame", style="2023_open", seed=1, filename=pkl.name)
    other = load_model(other_pkl)
    assert other.name == model.name
    for fmt in ("gaussian-avatars", "gltf", "nersemble"):
        res = CliRunner().invoke(main, ["export", str(run), "--format", fmt, "--model", str(other_pkl),
                                        "--out", str(tmp_path / fmt)])
        assert res.exit_code == 1 and "another file named" in res.output, (fmt, res.output)
        assert not (tmp_path / fmt).exists()
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    clip = shared_dir / "videos" / "talking_ex3.mp4"
    opts = dict(options=TrackOptions(n_keyframes=3, identity_rounds=1, identity_iters=5, chunk=8),
                video_options=VideoOptions(max_frames=10), progress=False)
    with pytest.raises(OutputMismatchError, match="another file of the same name"):
        track_video(clip, copy, model=other, **opts)
    manifest = copy / "manifest.json"
    info = json.loads(manifest.read_text())
    assert info["settings"].pop("model_fingerprint")
    manifest.write_text(json.dumps(info))
    assert track_video(clip, copy, model=model, **opts).skipped


def test_flame_2023_without_jaw_is_refused_where_flame2023_pkl_is_read(tmp_path: Path) -> None:
    """GaussianAvatars and the NeRSemble benchmark read flame2023.pkl; its no-jaw variant is refused
    (before tracking, as `video --export` checks), flame2023.pkl itself is not."""
    from flame_tracker.export import ExportError, check_export_model
    from flame_tracker.model import load_model
    from flame_tracker.model.fixtures import write_flame_model

    for name, refused in (("flame2023_no_jaw.pkl", True), ("flame2023.pkl", False)):
        model = load_model(write_flame_model(tmp_path / name, size="flame", style="2023_open", filename=name))
        for fmt in ("gaussian-avatars", "nersemble"):
            if refused:
                with pytest.raises(ExportError, match="flame2023.pkl, whose jaw rotates"):
                    check_export_model(fmt, model)
            else:
                check_export_model(fmt, model)


def test_gltf_of_a_flame_run_is_a_mesh_sequence(flame_run) -> None:
    """A FLAME run (jaw and eyes are joints) as one morph target per frame: rebuilt as a consumer
    does (base + weighted targets, node transform, camera) it lands on the tracked landmarks."""
    import pygltflib as g
    from scipy.spatial.transform import Rotation

    run, model, pkl = flame_run
    out = run.parent / "gl_flame"
    res = CliRunner().invoke(main, ["export", str(run), "--format", "gltf", "--model", str(pkl), "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = g.GLTF2().load_binary(str(out / "run.glb"))
    blob = doc.binary_blob()
    t = np.load(run / "tracking.npz")
    ok = _exported(t)
    prim = doc.meshes[0].primitives[0]
    base = _accessor(doc, blob, prim.attributes.POSITION).astype(np.float64)
    targets = np.stack([_accessor(doc, blob, tg["POSITION"]) for tg in prim.targets], -1)
    n = int(ok.sum())
    assert targets.shape == (model.n_verts, 3, n)
    assert doc.meshes[0].extras["targetNames"][0] == f"frame_{int(t['frame'][ok][0]):06d}"
    anim = doc.animations[0]
    outs = {ch.target.path: _accessor(doc, blob, anim.samplers[ch.sampler].output) for ch in anim.channels}
    weights = outs["weights"].reshape(n, -1)
    cam = doc.cameras[0].perspective
    w_img, h_img = (float(v) for v in t["image_size"][0])
    worst = 0.0
    for k in range(n):
        verts = base + targets.astype(np.float64) @ weights[k]
        x = _landmarks_from_vertices(model, verts) @ Rotation.from_quat(outs["rotation"][k]).as_matrix().T \
            + outs["translation"][k]
        f = 0.5 * h_img / np.tan(0.5 * cam.yfov)
        px = np.stack([w_img / 2 + f * x[:, 0] / -x[:, 2], h_img / 2 - f * x[:, 1] / -x[:, 2]], 1)
        worst = max(worst, float(np.abs(px - t["fit_lmks_68_px"][ok][k]).max()))
    print(f"glTF (FLAME mesh sequence) round trip: worst landmark {worst:.4f} px")
    assert worst < 0.5, worst


def test_gaussian_avatars_never_deletes_a_folder_it_did_not_write(flame_run, tmp_path: Path) -> None:
    run, _, pkl = flame_run
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    res = CliRunner().invoke(main, ["export", str(run), "--format", "gaussian-avatars", "--model", str(pkl),
                                    "--out", str(keep)])
    assert res.exit_code == 1 and "holds other files" in res.output, res.output
    assert (keep / "notes.txt").read_text() == "precious" and not (tmp_path / "mine.part").exists()
    # the current folder as --out: the same refusal, no crash
    import os

    cwd = os.getcwd()
    try:
        os.chdir(keep)
        res = CliRunner().invoke(main, ["export", str(run), "--format", "gaussian-avatars", "--model", str(pkl),
                                        "--out", "."])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 1 and "holds other files" in res.output, res.output
    # a VHAP dataset (the same layout, not ours) is refused too, and a user's "<out>.part" is left alone
    vhap = tmp_path / "vhap"
    (vhap / "flame_param").mkdir(parents=True)
    (vhap / "transforms.json").write_text("{}")
    (tmp_path / "ga.part").mkdir()
    (tmp_path / "ga.part" / "keep.txt").write_text("mine")
    res = CliRunner().invoke(main, ["export", str(run), "--format", "gaussian-avatars", "--model", str(pkl),
                                    "--out", str(vhap)])
    assert res.exit_code == 1 and (vhap / "transforms.json").read_text() == "{}"
    # an earlier export of ours is replaced
    ga = tmp_path / "ga"
    for _ in range(2):
        res = CliRunner().invoke(main, ["export", str(run), "--format", "gaussian-avatars", "--model", str(pkl),
                                        "--out", str(ga)])
        assert res.exit_code == 0, res.output
    assert (ga / "transforms.json").is_file() and not list(tmp_path.glob(".ga.*"))
    assert (tmp_path / "ga.part" / "keep.txt").read_text() == "mine"


def test_load_run_keeps_video_metadata_and_drops_untracked_frames(run_dir: Path, tmp_path: Path) -> None:
    """A run of exactly 52 frames (MediaPipe's blendshape count) with one bridged frame: the name
    lists stay whole and the bridged frame is left out of every per-frame array."""
    import json

    from flame_tracker.export import load_run
    from flame_tracker.export.arkit import export_arkit
    from flame_tracker.export.run import is_video_metadata

    t = dict(np.load(run_dir / "tracking.npz"))
    n_names = len(t["blendshape_names"])
    rows = np.arange(n_names) % len(t["valid"])
    fake = {k: (v if is_video_metadata(k) else v[rows].copy()) for k, v in t.items()}
    fake["frame"] = np.arange(n_names)
    fake["time_s"] = fake["frame"] / 30.0
    fake["valid"][:] = True
    fake["valid"][5] = False
    fake["video_fps"] = np.float64(0.0)  # a container without a frame rate
    folder = tmp_path / "run52"
    folder.mkdir()
    np.savez(folder / "tracking.npz", **fake)
    (folder / "manifest.json").write_text(json.dumps({"complete": True}))
    run = load_run(folder)
    assert run.n_frames == n_names - 1 and 5 not in run.arrays["frame"]
    assert len(run.arrays["blendshape_names"]) == n_names and run.arrays["shape"].shape == t["shape"].shape
    assert abs(run.fps - 30.0) < 1e-6  # from the timestamps
    assert np.array_equal(run.arrays["exp"], fake["exp"][fake["valid"]])
    (ark,) = [p for p in export_arkit(run, tmp_path / "ark") if p.name == "arkit_mediapipe.csv"]
    with open(ark, newline="") as f:
        assert len(list(csv.DictReader(f))) == n_names - 1


def test_arkit_rotations_and_timecodes_follow_the_documented_convention() -> None:
    from flame_tracker.camera import from_head_centric, world_to_view
    from flame_tracker.export.arkit import rotations, timecodes
    from flame_tracker.export.run import TrackedRun

    turns = torch.tensor([[0.0, 0.3, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 0.25]], dtype=torch.float64)
    pose6 = from_head_centric(turns, torch.tensor([[0.0, 0.0, -1.0]] * 3, dtype=torch.float64))
    run = TrackedRun(Path("."), {"pose6": pose6.numpy(), "eye_pose": np.zeros((3, 6))}, 30.0, "m")
    rot = rotations(run)[:, :3]
    assert np.allclose(rot, np.diag([0.3, 0.2, 0.25]), atol=1e-9)
    # what the signs mean in the picture: the nose tip (model +z) of
    # the yawed head moves right, the pitched one's moves down; the rolled head's top moves left
    nose = world_to_view(torch.tensor([[0.0, 0.0, 0.1]], dtype=torch.float64).expand(3, 1, 3), pose6)[:, 0]
    top = world_to_view(torch.tensor([[0.0, 0.1, 0.0]], dtype=torch.float64).expand(3, 1, 3), pose6)[:, 0]
    assert nose[0, 0] > 0.01 and nose[1, 1] > 0.01 and top[2, 0] < -0.01  # OpenCV view: y down
    # the thousandths of a frame round up into the next frame and second, never to ".1000"
    assert timecodes(np.array([0.0, 1 / 30 - 1e-7, 1.0 - 1e-7, 3661.5]), 30.0) == [
        "00:00:00:00.000", "00:00:00:01.000", "00:00:01:00.000", "01:01:01:15.000"]


def _obj_vertices(path: Path) -> np.ndarray:
    return np.array([[float(x) for x in line.split()[1:4]] for line in path.read_text().splitlines()
                     if line.startswith("v ")])


def _landmarks_from_vertices(model, verts: np.ndarray) -> np.ndarray:
    faces = model.faces.numpy()
    return np.einsum("pi,pij->pj", model.lmk_bary.double().numpy(), verts[faces[model.lmk_faces_idx.numpy()]])


def test_gaussian_avatars_masks_from_the_fitted_head(flame_run) -> None:
    import json

    import cv2

    run, model, pkl = flame_run
    ga = run.parent / "ga_masks"
    res = CliRunner().invoke(main, ["export", str(run), "--format", "gaussian-avatars", "--model", str(pkl),
                                    "--out", str(ga), "--masks", "model"])
    assert res.exit_code == 0, res.output
    t = np.load(run / "tracking.npz")
    frames = json.loads((ga / "transforms.json").read_text())["frames"]
    for fr in frames[::3]:
        mask = cv2.imread(str(ga / fr["fg_mask_path"]), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (fr["h"], fr["w"]) and set(np.unique(mask)) <= {0, 255}
        lm = t["fit_lmks_68_px"][_exported(t)][fr["timestep_index"]]
        inside = mask[np.clip(lm[:, 1].astype(int), 0, fr["h"] - 1), np.clip(lm[:, 0].astype(int), 0, fr["w"] - 1)]
        assert (inside == 255).mean() > 0.95  # the fitted face lies in its own silhouette
        assert 0.02 < (mask > 0).mean() < 0.9
    res = CliRunner().invoke(main, ["export", str(run), "--format", "gaussian-avatars", "--model", str(pkl),
                                    "--out", str(run.parent / "ga_bad"), "--masks", str(run.parent / "nope")])
    assert res.exit_code == 1 and "--masks" in res.output and not (run.parent / "ga_bad").exists()
    # another format has no masks to take: refused rather than ignored
    res = CliRunner().invoke(main, ["export", str(run), "--format", "arkit-csv", "--out", str(run.parent / "csv_m"),
                                    "--masks", "model"])
    assert res.exit_code == 1 and "--masks is for gaussian-avatars" in res.output
    assert not (run.parent / "csv_m").exists()


def test_nersemble_tracking_reads_back_as_the_benchmark_does(flame_run) -> None:
    import json

    import av
    from scipy.spatial.transform import Rotation

    run, model, pkl = flame_run
    out = run.parent / "ners"
    res = CliRunner().invoke(main, ["export", str(run), "--format", "nersemble", "--model", str(pkl),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    seq = run.name
    z = np.load(out / "sequences" / seq / "tracking" / "flame2023_tracking.npz")
    assert sorted(z.files) == sorted(["shape", "expression", "rotation", "rotation_matrices", "translation", "jaw",
                                      "frames", "scale", "neck", "eyes"])  # the benchmark's dataclass, exactly
    cams = json.loads((out / "calibration" / "camera_params.json").read_text())
    w2c, K = np.array(cams["world_2_cam"]["00"]), np.array(cams["intrinsics"]["00"])
    t = np.load(run / "tracking.npz")
    T = int(_exported(t).sum())
    assert z["expression"].shape == (T, 100) and z["shape"].shape == (1, 300) and z["scale"].shape == (1, 1)
    with av.open(str(out / "sequences" / seq / "images" / "cam_00.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == T
    worst = 0.0
    for i in range(T):
        with torch.no_grad():  # FlameProvider: FLAME without global rotation or translation ...
            lmk = model.landmarks(shape=torch.as_tensor(z["shape"][:, : model.n_shape]),
                                  expr=torch.as_tensor(z["expression"][i: i + 1, : model.n_expr]),
                                  jaw_pose=torch.as_tensor(z["jaw"][i: i + 1]),
                                  neck_pose=torch.as_tensor(z["neck"][i: i + 1]),
                                  eye_pose=torch.as_tensor(z["eyes"][i: i + 1])).landmarks[0].double().numpy()
        # ... then model-to-world from the intrinsic XYZ Euler angles (dreifus Pose.from_euler)
        R = Rotation.from_euler("XYZ", z["rotation"][i]).as_matrix()
        assert np.abs(R - z["rotation_matrices"][i]).max() < 1e-5
        world = float(z["scale"][0, 0]) * lmk @ R.T + z["translation"][i]
        cam = world @ w2c[:3, :3].T + w2c[:3, 3]
        px = (cam / cam[:, 2:]) @ K.T
        worst = max(worst, float(np.abs(px[:, :2] - t["fit_lmks_68_px"][_exported(t)][i]).max()))
    print(f"NeRSemble round trip: worst landmark {worst:.4f} px")
    assert worst < 0.5, worst


@pytest.fixture(scope="module")
def flame2020_run(shared_dir: Path, tmp_path_factory) -> tuple[Path, object, Path]:
    """A clip tracked with a FLAME-2020-format model of FLAME's size (synthetic bases) with the
    IMavatar family's 100 shape / 50 expression components."""
    return _tracked_flame_run(shared_dir, tmp_path_factory.mktemp("flame2020_export"), 8, style="2020",
                              n_shape=100, n_expr=50)


def test_insta_folder_reads_back_as_insta_does(flame2020_run, flame_run) -> None:
    import json

    run, model, pkl = flame2020_run
    out = run.parent / "insta"
    res = CliRunner().invoke(main, ["export", str(run), "--format", "insta", "--model", str(pkl), "--out", str(out)])
    assert res.exit_code == 0, res.output
    tf = json.loads((out / "transforms.json").read_text())
    t = np.load(run / "tracking.npz")
    T = int(_exported(t).sum())
    assert len(tf["frames"]) == T and (out / "canonical.obj").is_file()
    test = json.loads((out / "transforms_test.json").read_text())["frames"]
    train = json.loads((out / "transforms_train.json").read_text())["frames"]
    val = json.loads((out / "transforms_val.json").read_text())["frames"]
    assert len(train) + len(test) == T and 0 < len(val) <= min(20, len(test))
    # validation frames are the last test frames, never training frames (a short clip had them overlap)
    assert val == test[len(test) - len(val):] and not {f["file_path"] for f in val} & {f["file_path"] for f in train}
    K = np.array([[tf["fl_x"], 0, tf["cx"]], [0, tf["fl_y"], tf["cy"]], [0, 0, 1.0]])
    worst = 0.0
    for i, fr in enumerate(tf["frames"]):
        assert (out / fr["file_path"]).is_file()
        exp = np.loadtxt(out / fr["exp_path"])
        assert exp.shape == (100,) and np.allclose(exp[: model.n_expr], t["exp"][_exported(t)][i], atol=1e-6)
        verts = _obj_vertices(out / fr["mesh_path"])
        w2c = np.linalg.inv(np.array(fr["transform_matrix"]))  # OpenCV camera-to-world, no axis flip
        cam = _landmarks_from_vertices(model, verts) @ w2c[:3, :3].T + w2c[:3, 3]
        px = (cam / cam[:, 2:]) @ K.T
        worst = max(worst, float(np.abs(px[:, :2] - t["fit_lmks_68_px"][_exported(t)][i]).max()))
    print(f"INSTA round trip: worst landmark {worst:.4f} px")
    assert worst < 0.5, worst
    # a FLAME 2023 run is refused by INSTA, a FLAME 2020 one by NeRSemble: one line, nothing written
    run23, _, pkl23 = flame_run
    for r, p, fmt, want in ((run23, pkl23, "insta", "FLAME 2020"), (run, pkl, "nersemble", "FLAME 2023")):
        dest = r.parent / f"refused_{fmt}"
        res = CliRunner().invoke(main, ["export", str(r), "--format", fmt, "--model", str(p), "--out", str(dest)])
        assert res.exit_code == 1 and want in res.output and not dest.exists(), res.output


def test_imavatar_json_reads_back_as_imavatar_does(flame2020_run) -> None:
    import json

    import cv2

    run, model, pkl = flame2020_run
    out = run.parent / "imavatar"
    res = CliRunner().invoke(main, ["export", str(run), "--format", "imavatar", "--model", str(pkl), "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "flame_params.json").read_text())
    t = np.load(run / "tracking.npz")
    lm = t["fit_lmks_68_px"][_exported(t)]
    intr = np.array(doc["intrinsics"])
    assert intr[0] < 0 and len(doc["shape_params"]) == 100
    size = cv2.imread(str(out / "image" / "1.png")).shape[0]
    assert cv2.imread(str(out / "image" / "1.png")).shape[:2] == (size, size)
    assert cv2.imread(str(out / "mask" / "1.png"), cv2.IMREAD_GRAYSCALE).shape == (size, size)
    worst, offsets = 0.0, []
    for i, fr in enumerate(doc["frames"]):
        assert fr["file_path"] == f"./image/{i + 1}" and (out / "image" / f"{i + 1}.png").is_file()
        p = np.array(fr["pose"])
        assert p.shape == (15,) and len(fr["expression"]) == 50
        with torch.no_grad():  # FLAME with the global pose (about the root joint), then x4
            lmk = model.landmarks(shape=torch.as_tensor(doc["shape_params"], dtype=torch.float32)[None],
                                  expr=torch.as_tensor(fr["expression"], dtype=torch.float32)[None],
                                  head_pose=torch.as_tensor(p[None, :3], dtype=torch.float32),
                                  neck_pose=torch.as_tensor(p[None, 3:6], dtype=torch.float32),
                                  jaw_pose=torch.as_tensor(p[None, 6:9], dtype=torch.float32),
                                  eye_pose=torch.as_tensor(p[None, 9:], dtype=torch.float32)
                                  ).landmarks[0].double().numpy()
        wm = np.array(fr["world_mat"])
        cam = 4.0 * lmk @ wm[:, :3].T + wm[:, 3]
        # IMavatar's projection: u / size = x / z * intrinsics[0] + intrinsics[2] (its camera looks down -z)
        uv = np.stack([cam[:, 0] / cam[:, 2] * intr[0] + intr[2], cam[:, 1] / cam[:, 2] * intr[1] + intr[3]], 1) * size
        kp = (np.array(fr["flame_keypoints"]) + 1) / 2 * size
        assert np.abs(kp - uv).max() < 0.5  # its keypoints are where the mesh projects
        offset = lm[i].mean(0) - kp.mean(0)  # the square crop's corner: whole pixels, one for the run
        offsets.append(offset)
        worst = max(worst, float(np.abs(uv + offset - lm[i]).max()))
        assert (cam[:, 2] < 0).all()
    offsets = np.array(offsets)
    assert np.abs(offsets - offsets[0]).max() < 1e-3 and np.abs(offsets - np.round(offsets)).max() < 1e-3
    print(f"IMavatar round trip: worst landmark {worst:.4f} px")
    assert worst < 0.5, worst


@pytest.fixture(scope="module")
def photo_results(shared_dir: Path, tmp_path_factory) -> tuple[Path, Path, object, Path]:
    """The four annotated photos of one person (four sizes: 412x600 ... 686x1024) fitted with a
    FLAME-2023-format model, one by one (``single/``) and as one person (``joint/``)."""
    from flame_tracker.cli.image import run_images
    from flame_tracker.model import load_model
    from flame_tracker.model.fixtures import write_flame_model

    root = tmp_path_factory.mktemp("photo_export")
    pkl = write_flame_model(root / "model", size="flame", style="2023_open")
    photos = sorted((shared_dir / "images" / "gt68").glob("*.png"))
    for name, joint in (("single", False), ("joint", True)):
        assert run_images(photos, root / name, model=str(pkl), same_person=joint, mesh=False, overlay=False) == 0
    return root / "single", root / "joint", load_model(pkl), pkl


def test_photo_results_export_onto_one_shared_camera(photo_results, tmp_path: Path) -> None:
    """Photos of four sizes: every exported frame is one camera, the photos scaled about their
    principal points onto it; the landmarks land within 0.5 px through GaussianAvatars' reading,
    and the exported pictures are the photos moved the same way."""
    import json

    import cv2

    from flame_tracker.export import load_run
    from flame_tracker.io.images import load_image

    single, joint, model, pkl = photo_results
    res = CliRunner().invoke(main, ["export", str(joint), "--format", "gaussian-avatars", "--model", str(pkl),
                                    "--masks", "model", "--out", str(tmp_path / "ga")])
    assert res.exit_code == 0, res.output
    run = load_run(joint)
    assert run.n_frames == 4 and run.warps is not None and len(set(map(tuple, run.photo_sizes))) == 4
    fits = [np.load(joint / f"{p.stem}.npz") for p in run.images]
    s, d = run.warps[:, 0], run.warps[:, 1:]
    # the shared camera: one focal length, principal point at the canvas centre, every photo inside
    K = run.arrays["K_px"]
    assert np.allclose(K, K[:1]) and np.allclose(K[0, :2, 2], run.arrays["image_size"][0] / 2)
    assert np.allclose(s * np.array([f["K_px"][0, 1, 1] for f in fits]), K[0, 1, 1], rtol=1e-5)
    worst = _gaussian_avatars_worst_px(tmp_path / "ga", model, run.arrays["fit_lmks_68_px"])
    print(f"GaussianAvatars round trip of 4 photos: worst landmark {worst:.4f} px")
    assert worst < 0.5, worst
    tf = json.loads((tmp_path / "ga" / "transforms.json").read_text())
    for t, fr in enumerate(tf["frames"]):
        img = load_image(tmp_path / "ga" / fr["file_path"])
        mask = cv2.imread(str(tmp_path / "ga" / fr["fg_mask_path"]), cv2.IMREAD_GRAYSCALE)
        assert img.shape[:2] == mask.shape == (fr["h"], fr["w"])
        # the colours around the detected landmarks are the photo's there (both blurred alike)
        photo = load_image(run.images[t]).astype(np.float32)
        a = cv2.GaussianBlur(img.astype(np.float32), (0, 0), 3.0)
        b = cv2.GaussianBlur(photo, (0, 0), 3.0 / s[t])
        lm = fits[t]["lmks_68_px"][0]
        lm_new = s[t] * lm + d[t]
        assert np.allclose(lm_new, run.arrays["lmks_68_px"][t], atol=1e-3)
        ca = np.array([a[int(y), int(x)] for x, y in lm_new])
        cb = np.array([b[int(y), int(x)] for x, y in lm])
        assert np.abs(ca - cb).mean() < 12, np.abs(ca - cb).mean()
        assert (mask[lm_new[:, 1].astype(int), lm_new[:, 0].astype(int)] > 0).mean() > 0.9


def test_photo_results_of_several_identities(photo_results, shared_dir: Path, tmp_path: Path) -> None:
    """Photos fitted one by one: ARKit curves per photo (MediaPipe's: a FLAME fit has no ARKit
    names); a one-subject format is refused with the fix."""
    import csv

    single, _, _, pkl = photo_results
    res = CliRunner().invoke(main, ["export", str(single), "--format", "arkit-csv", "--out", str(tmp_path / "ark")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "ark" / "arkit_mediapipe.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    res = CliRunner().invoke(main, ["export", str(single), "--format", "gltf", "--model", str(pkl),
                                    "--out", str(tmp_path / "g")])
    assert res.exit_code == 1 and "--same-person" in res.output and not (tmp_path / "g").exists(), res.output
    # photos that moved: found again with --images, refused with the fix when not there
    moved = tmp_path / "photos"
    moved.mkdir()
    res = CliRunner().invoke(main, ["export", str(single), "--format", "arkit-csv", "--images", str(moved),
                                    "--out", str(tmp_path / "ark2")])
    assert res.exit_code == 0, res.output  # the CSV needs no pictures
    _, joint, _, _ = photo_results
    res = CliRunner().invoke(main, ["export", str(joint), "--format", "nersemble", "--model", str(pkl), "--images",
                                    str(moved), "--out", str(tmp_path / "n")])
    assert res.exit_code == 1 and "--images" in res.output and not (tmp_path / "n").exists(), res.output
    import shutil

    for p in (shared_dir / "images" / "gt68").glob("*.png"):
        shutil.copy(p, moved / p.name)
    res = CliRunner().invoke(main, ["export", str(joint), "--format", "nersemble", "--model", str(pkl), "--images",
                                    str(moved), "--out", str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "n" / "sequences" / "joint" / "images" / "cam_00.mp4").is_file()


def test_warp_picture_downscales_without_aliasing_and_keeps_geometry() -> None:
    """A picture scaled down onto the shared camera: a 1-pixel checkerboard becomes flat grey (not a
    moire of aliased stripes), and a blob's centre lands at ``s p + d``."""
    from flame_tracker.export.run import warp_picture

    board = np.dstack([((np.indices((400, 400)).sum(0) % 2) * 255).astype(np.uint8)] * 3)
    out = warp_picture(board, 0.3, np.array([0.0, 0.0]), (120, 120))[5:-5, 5:-5].astype(np.float64)
    assert out.std() < 5.0 and abs(out.mean() - 127.5) < 3.0, (out.std(), out.mean())
    blob = np.zeros((400, 400, 3), np.uint8)
    yy, xx = np.indices((400, 400))
    blob[(xx - 150.5) ** 2 + (yy - 220.5) ** 2 < 30 ** 2] = 255  # centre (151, 221) in pixel-edge units
    d = np.array([7.0, 3.0])
    out = warp_picture(blob, 0.4, d, (200, 200))[..., 0].astype(np.float64)
    ys, xs = np.indices(out.shape)
    centre = np.array([(out * (xs + 0.5)).sum(), (out * (ys + 0.5)).sum()]) / out.sum()
    np.testing.assert_allclose(centre, 0.4 * np.array([151.0, 221.0]) + d, atol=0.05)


def test_arkit_eye_angles_are_the_gaze_from_straight_ahead(model) -> None:
    """ICT's eyeballs converge at rest (``eye_pose`` = 0 turns each pupil ~7° towards the nose), so
    the CSV's eye angles are the gaze ``R(eye_pose) @ R(eye_rest)``: eyes turned back by their rest
    rotation look straight ahead (0), eyes at rest show the convergence, inwards on each side."""
    from flame_tracker.export.arkit import rotations
    from flame_tracker.export.run import TrackedRun

    rest = model.eye_rest_rotvec()
    # the rest rotation turns +z onto each pupil's direction from its eye joint (the model's geometry)
    with torch.no_grad():
        verts = model().vertices[0].double().numpy()
    joints = model.rest_joints()[0].double().numpy()
    iris = model.iris_idx.numpy()
    for joint, centre, slot in ((3, iris[5], 0), (4, iris[0], 3)):  # left eye = MediaPipe's second
        d = verts[centre] - joints[joint]
        turned = torch.as_tensor(rest[slot:slot + 3])[None]
        from flame_tracker.camera import rotvec_to_matrix

        z = rotvec_to_matrix(turned)[0].numpy() @ np.array([0.0, 0.0, 1.0])
        assert np.allclose(z, d / np.linalg.norm(d), atol=1e-9)
    assert 3.0 < np.degrees(abs(rest[1])) < 15.0 and np.sign(rest[1]) == -np.sign(rest[4])
    pose6 = np.zeros((2, 6))
    pose6[:, 5] = 1.0
    run = TrackedRun(Path("."), {"pose6": pose6, "eye_pose": np.stack([-rest, np.zeros(6)])}, 30.0, "m")
    eyes = rotations(run, rest)[:, 3:]
    assert np.allclose(eyes[0], 0.0, atol=1e-9)  # turned back: straight ahead
    left_yaw, right_yaw = eyes[1, 0], eyes[1, 3]
    # at rest: converged; the subject's left eye (image right) turns towards image left (yaw < 0)
    assert left_yaw < -np.radians(3) and right_yaw > np.radians(3)
    assert np.allclose(rotations(run)[1, 3:], 0.0)  # without the rest: eye_pose's own angles


def test_an_export_folder_gets_a_normal_folders_mode(tmp_path: Path) -> None:
    """Exports are assembled in a private temporary folder; the finished one has the mode a folder
    made with the process's umask has (others on shared cluster storage can read it)."""
    import os

    from flame_tracker.export.run import write_folder

    out = write_folder(tmp_path / "exp", "arkit-csv", lambda tmp: (tmp / "a.csv").write_text("x"))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert os.stat(out).st_mode & 0o777 == os.stat(plain).st_mode & 0o777


def test_arkit_eye_look_curves_follow_the_gaze() -> None:
    """Both eyes turned towards the subject's left by half the full angle: the left eye looks out
    and the right one in, each at 0.5; a downward gaze drives the down curves; the opposite
    directions stay at 0."""
    from flame_tracker.export.arkit import GAZE_FULL_DEG, gaze_curves

    rots = np.zeros((2, 9))
    rots[0, [3, 6]] = np.radians(GAZE_FULL_DEG["Out"] / 2)  # yaw of both eyes
    rots[1, [4, 7]] = np.radians(GAZE_FULL_DEG["Down"] / 2)  # pitch of both eyes (down)
    c = gaze_curves(rots)
    assert np.allclose(c["eyeLookOutLeft"], [0.5, 0]) and np.allclose(c["eyeLookInRight"], [0.5, 0])
    assert np.allclose(c["eyeLookInLeft"], 0) and np.allclose(c["eyeLookOutRight"], 0)
    assert np.allclose(c["eyeLookDownLeft"], [0, 0.5]) and np.allclose(c["eyeLookDownRight"], [0, 0.5])
    assert np.allclose(c["eyeLookUpLeft"], 0) and len(c) == 8


def test_photos_fitted_with_fewer_components_export_to_imavatar(shared_dir: Path, tmp_path: Path) -> None:
    """The official FLAME 2020 has 300 / 100 components, IMavatar takes 100 / 50: `image` fits the
    first ones (as `video` does), and the refusal of a full fit says so."""
    import json

    from flame_tracker.model.fixtures import write_flame_model

    pkl = write_flame_model(tmp_path / "model", size="flame", style="2020")  # 300 / 100, like generic_model.pkl
    photo = sorted((shared_dir / "images" / "gt68").glob("*.png"))[0]
    for name, extra in (("full", []), ("small", ["--shape-components", "100", "--expr-components", "50"])):
        res = CliRunner().invoke(main, ["image", str(photo), "--model", str(pkl), "--out", str(tmp_path / name),
                                        "--no-mesh", "--no-overlay", *extra])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["export", str(tmp_path / "full"), "--format", "imavatar", "--model", str(pkl),
                                    "--out", str(tmp_path / "ima_full")])
    assert res.exit_code == 1 and "--shape-components 100 --expr-components 50" in res.output, res.output
    res = CliRunner().invoke(main, ["export", str(tmp_path / "small"), "--format", "imavatar", "--model", str(pkl),
                                    "--out", str(tmp_path / "ima")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "ima" / "flame_params.json").read_text())
    assert len(doc["shape_params"]) == 100 and len(doc["frames"][0]["expression"]) == 50


def test_nersemble_video_keeps_the_frame_rate_when_frames_are_left_out(flame_run, tmp_path: Path) -> None:
    """Frames without a face are left out of the exported video; its frame rate stays the run's (it
    was the frame count over the time span: 17 instead of 25 frames/s with a third left out)."""
    import shutil

    import av

    run, _, pkl = flame_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    with np.load(copy / "tracking.npz") as z:
        arrays = {k: z[k] for k in z.files}
    drop = np.zeros(len(arrays["valid"]), bool)
    drop[3:6] = True
    arrays["valid"] = arrays["valid"] & ~drop
    arrays["source"] = np.where(drop, "dropped", arrays["source"])
    np.savez(copy / "tracking.npz", **arrays)
    res = CliRunner().invoke(main, ["export", str(copy), "--format", "nersemble", "--model", str(pkl),
                                    "--out", str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    with av.open(str(tmp_path / "n" / "sequences" / "run" / "images" / "cam_00.mp4")) as c:
        rate = c.streams.video[0].average_rate
        n = sum(1 for _ in c.decode(video=0))
    assert n == int(arrays["valid"].sum()) and abs(float(rate) - float(arrays["video_fps"])) < 1e-3, (n, rate)
