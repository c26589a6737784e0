"""A tracked run as one glTF 2.0 binary (``.glb``) that Blender, three.js and game engines import:

* one mesh: the fitted identity (neutral face) with the model's expression blendshapes as morph
  targets (positions and the change of the vertex normals at weight 1), named in
  ``mesh.extras.targetNames`` (what Blender's importer turns into shape keys; ICT: its 57 ARKit-style
  channels);
* its node animated per frame: morph ``weights`` (the fitted expression), ``rotation`` and
  ``translation`` (the head relative to the camera);
* a camera node at the origin looking down −z (glTF's convention, OpenGL axes) with the run's
  vertical FOV and aspect ratio: rendering the animation through it reproduces the tracked views.

For a blendshape model (ICT-FaceKit, the default) the morph targets are its expressions and the
eyeballs stay at rest (eye rotations are in the ARKit CSV). A FLAME run (its jaw and eyes are joint
rotations, not blendshapes) is exported as a mesh sequence: one morph target per frame (that frame's
mesh minus the neutral one), each frame's weight 1 on its own target (Blender imports them as shape
keys with their animation); at most :data:`MAX_SEQUENCE_FRAMES` frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_tracker.export.run import ExportError, TrackedRun, check_same_model

#: A FLAME run's glTF stores every frame's mesh and normals: at most this many frames (about 240 MB for FLAME).
MAX_SEQUENCE_FRAMES = 2000


def _sequence(model) -> bool:
    """FLAME-like models (jaw joint, pose correctives) are exported as a mesh sequence."""
    return bool(model.has_jaw_joint or model.has_pose_correctives)


def _check(run: TrackedRun, model) -> None:
    check_same_model(run, model)
    if _sequence(model) and run.n_frames > MAX_SEQUENCE_FRAMES:
        raise ExportError(f"{run.folder}: {run.n_frames} frames; a glTF of a {model.name!r} run holds one mesh per "
                          f"frame, at most {MAX_SEQUENCE_FRAMES} "
                          f"(~{MAX_SEQUENCE_FRAMES * model.n_verts * 24 >> 20} MB): "
                          "track or export a shorter range (flame-tracker video --start/--end)")
    pp, size = run.arrays["principal_point_px"], run.arrays["image_size"]
    if np.abs(pp - size / 2.0).max() > 0.5:
        raise ExportError(f"{run.folder}: the camera's principal point is not the image centre (a run with "
                          "--fov, the reference crop camera); glTF cameras have a centred one: track with "
                          "--image-fov (the default)")


def export_gltf(run: TrackedRun, model, path: str | Path) -> Path:
    """Write ``path`` (``.glb``) for ``run`` tracked with ``model`` (see the module docstring)."""
    import pygltflib as g
    import torch

    from flame_tracker.camera import to_head_centric

    _check(run, model)
    a = run.arrays
    with torch.no_grad():
        shape = torch.as_tensor(a["shape"][:1], dtype=model.dtype)
        base = model(shape=shape).vertices[0].double().cpu().numpy().astype(np.float32)  # neutral identity
    if _sequence(model):  # one morph target per frame: that frame's mesh (jaw, eyes, correctives) - base
        from flame_tracker.export.run import posed_vertices

        targets = np.stack([posed_vertices(run, model, [t])[0] - base for t in range(run.n_frames)], -1)
        targets = targets.astype(np.float32)  # [V, 3, T]
        # frame t: its own target (LINEAR: meshes blend between frames)
        weights = np.eye(run.n_frames, dtype=np.float32)
        names = [f"frame_{int(f):06d}" for f in a["frame"]]
    else:
        targets = model.exprdirs.detach().double().cpu().numpy().astype(np.float32)  # [V, 3, E]
        weights = a["exp"].astype(np.float32)  # [T, E]
        names = [str(n) for n in a.get("expr_names", [])] or [f"expr{e}" for e in range(targets.shape[2])]
    faces = model.faces.cpu().numpy().astype(np.uint32)
    head_rv, head_t = to_head_centric(torch.as_tensor(a["pose6"], dtype=torch.float64))
    from scipy.spatial.transform import Rotation

    quats = Rotation.from_rotvec(head_rv.numpy()).as_quat().astype(np.float32)  # x, y, z, w
    trans = head_t.numpy().astype(np.float32)
    times = run.times.astype(np.float32)
    fy, (w_img, h_img) = float(a["K_px"][0, 1, 1]), (float(a["image_size"][0, 0]), float(a["image_size"][0, 1]))
    yfov = 2.0 * np.arctan(0.5 * h_img / fy)

    blob = bytearray()
    views, accessors = [], []

    def add(arr: np.ndarray, kind: str, comp: int, target: int | None = None, minmax: bool = False) -> int:
        while len(blob) % 4:
            blob.append(0)
        data = np.ascontiguousarray(arr).tobytes()
        views.append(g.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
        blob.extend(data)
        acc = g.Accessor(bufferView=len(views) - 1, componentType=comp, count=int(arr.shape[0]), type=kind)
        if minmax:
            acc.min = np.atleast_1d(arr.min(0)).astype(float).tolist()
            acc.max = np.atleast_1d(arr.max(0)).astype(float).tolist()
        accessors.append(acc)
        return len(accessors) - 1

    pos = add(base, "VEC3", g.FLOAT, g.ARRAY_BUFFER, minmax=True)
    # smooth shading: without normals a viewer must shade flat (glTF 2.0, 3.7.2.1); the neutral mesh's,
    # and each morph target's change of them (a closed eyelid's normals turn by up to ~150 degrees:
    # with positions alone a viewer would shade it as the open lid)
    normals = _normals(base, faces)
    nrm = add(normals, "VEC3", g.FLOAT, g.ARRAY_BUFFER)
    idx = add(faces.reshape(-1), "SCALAR", g.UNSIGNED_INT, g.ELEMENT_ARRAY_BUFFER)
    tgt = []
    for lo in range(0, targets.shape[2], 64):  # the targets' normals in batches (memory stays flat)
        moved = np.moveaxis(targets[:, :, lo:lo + 64], -1, 0) + base  # [B, V, 3]
        d_nrm = _normals(moved, faces) - normals
        tgt += [{"POSITION": add(targets[:, :, lo + k], "VEC3", g.FLOAT, g.ARRAY_BUFFER, minmax=True),
                 "NORMAL": add(d_nrm[k], "VEC3", g.FLOAT, g.ARRAY_BUFFER)} for k in range(len(moved))]
    t_in = add(times, "SCALAR", g.FLOAT, minmax=True)
    w_out = add(weights.reshape(-1), "SCALAR", g.FLOAT)
    r_out = add(quats, "VEC4", g.FLOAT)
    tr_out = add(trans, "VEC3", g.FLOAT)
    mesh = g.Mesh(name="head", primitives=[g.Primitive(attributes=g.Attributes(POSITION=pos, NORMAL=nrm), indices=idx,
                                                       targets=tgt)],
                  weights=[0.0] * len(tgt), extras={"targetNames": names})
    head = g.Node(name="head", mesh=0, rotation=quats[0].tolist(), translation=trans[0].tolist())
    cam_node = g.Node(name="camera", camera=0)
    camera = g.Camera(type="perspective", perspective=g.Perspective(yfov=float(yfov), aspectRatio=w_img / h_img,
                                                                    znear=0.01, zfar=100.0))
    anim = g.Animation(name="tracking", samplers=[
        g.AnimationSampler(input=t_in, output=w_out, interpolation="LINEAR"),
        g.AnimationSampler(input=t_in, output=r_out, interpolation="LINEAR"),
        g.AnimationSampler(input=t_in, output=tr_out, interpolation="LINEAR"),
    ], channels=[g.AnimationChannel(sampler=0, target=g.AnimationChannelTarget(node=0, path="weights")),
                 g.AnimationChannel(sampler=1, target=g.AnimationChannelTarget(node=0, path="rotation")),
                 g.AnimationChannel(sampler=2, target=g.AnimationChannelTarget(node=0, path="translation"))])
    doc = g.GLTF2(asset=g.Asset(generator="flame-tracker"), scene=0, scenes=[g.Scene(nodes=[0, 1])],
                  nodes=[head, cam_node], meshes=[mesh], cameras=[camera], animations=[anim],
                  accessors=accessors, bufferViews=views, buffers=[g.Buffer(byteLength=len(blob))])
    doc.set_binary_blob(bytes(blob))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.glb")
    doc.save_binary(str(tmp))
    tmp.replace(path)
    return path


def _normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals (float32) of meshes ``[V, 3]`` or ``[B, V, 3]``, in the input's layout; a vertex
    in no triangle gets +z (glTF wants unit normals)."""
    import torch

    from flame_tracker.rendering.differentiable import vertex_normals

    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float64)
    out = vertex_normals(v if v.dim() == 3 else v[None], torch.as_tensor(faces.astype(np.int64))).numpy()
    out[np.linalg.norm(out, axis=-1) < 0.5] = (0.0, 0.0, 1.0)
    return out.astype(np.float32).reshape(np.shape(vertices))


__all__ = ["export_gltf"]
