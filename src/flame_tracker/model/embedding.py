"""Where the landmark *detector* puts its 68 points on a head model, derived by rendering the model.

A model's own 68-point embedding (ICT's vertex list, FLAME's landmark file) says where the iBUG
points are by hand-made convention; MediaPipe's 478 points mapped to 68 follow MediaPipe's
convention (its jaw, brows and nose bridge sit several millimetres elsewhere). Fitting model points
to detector points that mean something else biases the head rotation and makes the expression and
shape absorb the difference. :func:`derive_detector_embedding` measures the detector's convention
on the model itself: it renders the model (``flame_tracker.evaluation.scenes``: random identities,
expressions, views, skin tones, lights), runs the detector on each picture, sends every detected
point back onto the visible surface under it (triangle + barycentric coordinates from the
rasteriser), and takes the per-point median of those surface points on the mean head, snapped to the
surface. :func:`detector_model` returns the model with that embedding, for fitting; outputs keep the
model's own (semantic) 68 points. The jawline points slide over the cheek as the head turns, so they
are learned from near-frontal renders only (a yaw-dependent contour is the next step).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flame_tracker.model.head import HeadModel

# Renders per derivation, and the yaw limits (degrees) of the renders each point is learned from.
N_RENDERS = 96
YAW_JAW = 20.0
YAW_FACE = 40.0
SHIPPED = Path(__file__).with_name("embeddings")


@dataclass
class LandmarkEmbedding:
    """68 points as (triangle, barycentric coordinates) on a model's mesh, with their spread."""

    faces_idx: np.ndarray  # [68] int
    bary: np.ndarray  # [68, 3]
    spread_mm: np.ndarray  # [68] median distance of the single-render points from the median, mm
    hits: np.ndarray  # [68] renders that contributed
    fingerprint: str

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, faces_idx=self.faces_idx, bary=self.bary, spread_mm=self.spread_mm, hits=self.hits,
                 fingerprint=np.asarray(self.fingerprint))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LandmarkEmbedding":
        d = np.load(path)
        return cls(d["faces_idx"].astype(np.int64), d["bary"].astype(np.float64), d["spread_mm"], d["hits"],
                   str(d["fingerprint"]))


def fingerprint(model: HeadModel) -> str:
    """A short hash of the model's template, faces and first bases (what the embedding depends on),
    the same for the model in float32 or float64 (values rounded to 0.01 mm / 1e-5)."""
    h = hashlib.sha1()
    for t in (model.v_template, model.faces, model.shapedirs[..., :5], model.exprdirs[..., :5]):
        a = t.detach().cpu().float().double().numpy()
        h.update(np.ascontiguousarray(np.round(a * 1e5).astype(np.int64)).tobytes())
    return h.hexdigest()[:16]


def with_landmarks(model: HeadModel, emb: LandmarkEmbedding) -> HeadModel:
    """``model`` with the 68 landmarks of ``emb`` (mesh, bases and skinning shared, not copied)."""
    out = model.with_landmarks(emb.faces_idx, emb.bary)
    out.info["landmark_embedding"] = "detector (derived by rendering)"
    return out.eval()


def _surface_points(vpx: np.ndarray, faces: np.ndarray, face_idx: np.ndarray, pts: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangle and 2-D barycentrics of the visible surface under each image point ``pts [P, 2]``."""
    h, w = face_idx.shape
    xi = np.clip(np.floor(pts[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.floor(pts[:, 1]).astype(int), 0, h - 1)
    tri = face_idx[yi, xi]
    ok = tri >= 0
    corners = vpx[faces[np.maximum(tri, 0)], :2]  # [P, 3, 2]
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    v0, v1, v2 = b - a, c - a, pts - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    den = np.where(np.abs(den) < 1e-12, 1e-12, den)
    l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
    l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    bary = np.clip(np.stack([1 - l1 - l2, l1, l2], 1), 0, None)
    bary /= bary.sum(1, keepdims=True).clip(1e-12)
    return tri, bary, ok


def _snap(points: np.ndarray, verts: np.ndarray, faces: np.ndarray, k: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Nearest surface point (triangle, barycentrics) of each point ``[P, 3]`` on the mesh."""
    from scipy.spatial import cKDTree

    _, near = cKDTree(verts).query(points, k=k)
    vert_faces: dict[int, list[int]] = {}
    for f, tri in enumerate(faces):
        for v in tri:
            vert_faces.setdefault(int(v), []).append(f)
    out_f, out_b = np.zeros(len(points), np.int64), np.zeros((len(points), 3))
    for i, p in enumerate(points):
        cand = np.unique(np.concatenate([vert_faces.get(int(v), []) for v in near[i]]))
        t = verts[faces[cand]]  # [C, 3, 3]
        e0, e1 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
        d = p - t[:, 0]
        g = np.stack([np.einsum("ij,ij->i", e0, e0), np.einsum("ij,ij->i", e0, e1),
                      np.einsum("ij,ij->i", e1, e1)], 1)
        r = np.stack([np.einsum("ij,ij->i", d, e0), np.einsum("ij,ij->i", d, e1)], 1)
        det = (g[:, 0] * g[:, 2] - g[:, 1] ** 2).clip(1e-20)
        u = (g[:, 2] * r[:, 0] - g[:, 1] * r[:, 1]) / det
        v = (g[:, 0] * r[:, 1] - g[:, 1] * r[:, 0]) / det
        bary = np.clip(np.stack([1 - u - v, u, v], 1), 0, None)
        bary /= bary.sum(1, keepdims=True).clip(1e-12)
        q = np.einsum("ci,cij->cj", bary, t)
        j = int(np.argmin(np.linalg.norm(q - p, axis=1)))
        out_f[i], out_b[i] = cand[j], bary[j]
    return out_f, out_b


def derive_detector_embedding(model: HeadModel, landmarker, *, n_renders: int = N_RENDERS, seed: int = 7001,
                              progress: bool = False) -> LandmarkEmbedding:
    """Measure where ``landmarker`` (a :class:`~flame_tracker.detection.FaceLandmarker`) puts its 68
    points on ``model``'s surface (see the module docstring). Deterministic for a ``seed``."""
    from flame_tracker.evaluation.scenes import render_scene, sample_scenes
    from flame_tracker.rendering.raster import rasterize

    specs = sample_scenes(model, n_renders, seed=seed, yaw_max=YAW_FACE, pitch_max=20.0, roll_max=15.0,
                          face_frac=(0.35, 0.65), sizes=(512, 768), fov_range=(15.0, 40.0))
    faces = model.faces.cpu().numpy()
    template = model.v_template.detach().cpu().double().numpy()
    hits: list[list[np.ndarray]] = [[] for _ in range(68)]
    it = specs
    if progress:
        from tqdm import tqdm

        it = tqdm(specs, desc="embedding renders", unit="render")
    for spec in it:
        img, truth = render_scene(model, spec)
        det = landmarker.detect(img)
        if det is None:
            continue
        cam = truth.vertices_cam
        vpx = np.concatenate([cam[:, :2] / cam[:, 2:] * truth.K[0, 0] + truth.K[:2, 2], cam[:, 2:]], 1)
        fr = rasterize(torch.as_tensor(vpx)[None], model.faces.cpu(), spec.height, spec.width)
        tri, bary, ok = _surface_points(vpx, faces, fr.face_idx[0].numpy(), np.asarray(det.lmks68, np.float64))
        on_mean_head = np.einsum("pi,pij->pj", bary, template[faces[np.maximum(tri, 0)]])
        for k in range(68):
            limit = YAW_JAW if k < 17 else YAW_FACE
            if ok[k] and abs(spec.yaw) <= limit:
                hits[k].append(on_mean_head[k])
    if min(len(h) for h in hits) < 3:
        raise RuntimeError("derive_detector_embedding: the detector found too few faces in the renders")
    med = np.stack([np.median(np.stack(h), 0) for h in hits])
    spread = np.array([np.median(np.linalg.norm(np.stack(h) - m, axis=1)) * 1000 for h, m in zip(hits, med)])
    f_idx, b = _snap(med, template, faces)
    return LandmarkEmbedding(f_idx, b, spread, np.array([len(h) for h in hits]), fingerprint(model))


def shipped_embedding(model: HeadModel) -> LandmarkEmbedding | None:
    """The detector embedding shipped with the package for this model (matched by fingerprint)."""
    fp = fingerprint(model)
    for path in sorted(SHIPPED.glob("*.npz")):
        try:
            emb = LandmarkEmbedding.load(path)
        except (OSError, ValueError, KeyError):
            continue
        if emb.fingerprint == fp:
            return emb
    return None


def detector_model(model: HeadModel, landmarker=None, *, derive: bool = False) -> HeadModel:
    """``model`` with the detector's 68-point embedding for fitting: one derived before for this model
    (user cache, ``flame-tracker embed``), else the one shipped for it, else (``derive=True`` with a
    ``landmarker``) derived now and cached. Returns ``model`` itself when none is available."""
    from flame_tracker.paths import cache_dir

    cached = cache_dir() / "embeddings" / f"{fingerprint(model)}.npz"
    # one derived by the user (`flame-tracker embed`) wins over the shipped one
    emb = LandmarkEmbedding.load(cached) if cached.is_file() else shipped_embedding(model)
    if emb is None and derive and landmarker is not None:
        emb = derive_detector_embedding(model, landmarker, progress=True)
        try:
            emb.save(cached)
        except OSError:
            pass
    return model if emb is None else with_landmarks(model, emb)


def describe(emb: LandmarkEmbedding) -> str:
    """One-line JSON summary (spread and hits) for logs and the CLI."""
    return json.dumps({"fingerprint": emb.fingerprint, "median_spread_mm": float(np.median(emb.spread_mm)),
                       "min_hits": int(emb.hits.min())})


__all__ = ["LandmarkEmbedding", "derive_detector_embedding", "detector_model", "with_landmarks",
           "fingerprint", "shipped_embedding", "describe"]
