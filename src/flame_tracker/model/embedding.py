"""Where the landmark *detector* puts its points on a head model, as a function of the head's yaw,
derived by rendering the model.

A model's own 68-point embedding (ICT's vertex list, FLAME's landmark file) says where the iBUG
points are by hand-made convention; MediaPipe's 478 points (and the 68 mapped from them) follow
MediaPipe's convention, and that convention moves with the view: measured on renders of the ICT
model, turning the head 25-70° moves the far eye's outer corner 13-16 mm over the surface, the face
outline by centimetres, and the median point by 4-5 mm. Fitting fixed model points to such
detections biases the head rotation and makes expression and shape absorb the difference.

:func:`derive_detector_embedding` measures the detector's convention on the model itself: it renders
the model (``flame_tracker.evaluation.scenes``: random identities, expressions, views, skin tones,
lights), runs the detector on each picture, sends every detected point back onto the visible surface
under it (triangle + barycentric coordinates from the rasteriser), and takes per-point medians of
those surface points on the mean head, snapped to the surface:

* a **static** embedding (the outline from near-frontal renders, the rest from |yaw| <= 40°; all from
  |pitch| <= 20°), which the fitting model's landmark path uses (:func:`detector_model`,
  :func:`with_landmarks`);
* a **view table**: one embedding per yaw bin (-70°..70°, 10° apart), blended linearly between bins
  (:class:`ViewPoints`); the fit can correct each outline detection by where the point moves at the
  fitted yaw (``flame_tracker.fitting.views``), which makes the outline slide with the view like
  FLAME's dynamic contour.

Points: MediaPipe's 478 (``0..477``; the iris points 468..477 are not used, the model's iris
vertices are) then the 68 iBUG points (``478..545``). Outputs keep the model's own 68 points.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flame_tracker.detection.layout import table68_id
from flame_tracker.errors import StepError
from flame_tracker.model.head import HeadModel

N_RENDERS = 240  # renders per derivation (about 0.8 s each on one core)
MIN_HITS = 4  # detections a point needs in a yaw bin
YAW_MAX = 75.0  # render yaws
VIEW_YAWS = np.arange(-70.0, 70.1, 10.0)  # bin centres, degrees
BIN_STEP = 10.0  # a bin uses the renders within one step of its centre
YAW_CONTOUR = 20.0  # the static outline comes from renders this close to frontal
YAW_FACE = 40.0
PITCH_STATIC = 20.0  # ... and |pitch| up to this
N_MP = 478  # MediaPipe's points, then the 68 iBUG points
N_DENSE = 468  # MediaPipe's face mesh without the iris points
DENSE = slice(0, N_DENSE)
IBUG68 = slice(N_MP, N_MP + 68)
SHIPPED = Path(__file__).with_name("embeddings")


@dataclass
class ViewEmbedding:
    """Detector points (MediaPipe 478, then iBUG 68) on a model's mesh as (triangle, barycentrics):
    a static embedding and one per yaw bin."""

    yaw_deg: np.ndarray  # [B] bin centres
    faces_idx: np.ndarray  # [B, P] int
    bary: np.ndarray  # [B, P, 3]
    static_faces_idx: np.ndarray  # [P]
    static_bary: np.ndarray  # [P, 3]
    spread_mm: np.ndarray  # [P] median distance of single-render points from their bin's median, mm
    hits: np.ndarray  # [P] renders behind the static embedding
    fingerprint: str
    renders: int = 0  # renders with a detection
    seed: int = 0
    table68: str = ""  # detection.layout.table68_id of the 68-point table it was derived with ("": unknown)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, yaw_deg=self.yaw_deg, faces_idx=self.faces_idx.astype(np.int32),
                            bary=self.bary.astype(np.float32), static_faces_idx=self.static_faces_idx,
                            static_bary=self.static_bary, spread_mm=self.spread_mm, hits=self.hits,
                            fingerprint=np.asarray(self.fingerprint), renders=self.renders, seed=self.seed,
                            table68=np.asarray(self.table68))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ViewEmbedding:
        d = np.load(path)
        bary = d["bary"].astype(np.float64)
        return cls(d["yaw_deg"], d["faces_idx"].astype(np.int64), bary / bary.sum(-1, keepdims=True),
                   d["static_faces_idx"].astype(np.int64), d["static_bary"].astype(np.float64), d["spread_mm"],
                   d["hits"], str(d["fingerprint"]), int(d["renders"]), int(d["seed"]),
                   str(d["table68"]) if "table68" in d.files else "")


# model -> (its buffers' identity, fingerprint): a model's fingerprint costs ~40 ms (ICT)
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fingerprint(model: HeadModel) -> str:
    """A short hash of the model's template, faces and first bases: what an embedding depends on, and
    what tells two model files apart whatever their names (runs record it, exports check it). The
    same for the model in float32 or float64 and with fewer components (values rounded to
    0.01 mm / 1e-5; the first 5 components). Cached per model (and its buffers)."""
    parts = (model.v_template, model.faces, model.shapedirs[..., :5], model.exprdirs[..., :5])
    stamp = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in parts)
    hit = _FINGERPRINTS.get(model)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    h = hashlib.sha1()
    for t in parts:
        a = t.detach().cpu().float().double().numpy()
        h.update(np.ascontiguousarray(np.round(a * 1e5).astype(np.int64)).tobytes())
    fp = h.hexdigest()[:16]
    _FINGERPRINTS[model] = (stamp, fp)
    return fp


def with_landmarks(model: HeadModel, emb: ViewEmbedding, points: slice | np.ndarray = IBUG68) -> HeadModel:
    """``model`` whose landmark path gives the static embedding's ``points`` (default: the 68 iBUG
    points; :data:`DENSE`: MediaPipe's 468; or an index array into the embedding's points) (mesh,
    bases and skinning shared, not copied)."""
    out = model.with_landmarks(emb.static_faces_idx[points], emb.static_bary[points])
    out.info["landmark_embedding"] = "detector (derived by rendering)"
    out.info["landmark_points"] = "ibug68" if isinstance(points, slice) and points == IBUG68 else "dense"
    return out.eval()


class ViewPoints:
    """Evaluates the view table of ``emb`` (its ``points``) on posed heads of ``model``: the static
    points and the yaw-blended ones, from one landmark-path pass over the few hundred vertices the
    triangles use (not the full mesh)."""

    def __init__(self, model: HeadModel, emb: ViewEmbedding, points: slice = IBUG68) -> None:
        faces = model.faces.cpu().numpy()
        static = faces[emb.static_faces_idx[points]]  # [P, 3] vertex ids
        binned = faces[emb.faces_idx[:, points]]  # [B, P, 3]
        verts, inv = np.unique(np.concatenate([static.ravel(), binned.ravel()]), return_inverse=True)
        # a landmark path whose "landmarks" are those vertices (each as a corner of one of its faces)
        owner = np.full(model.n_verts, -1)
        owner[faces[::-1].ravel()] = np.repeat(np.arange(len(faces))[::-1], 3)
        corner = (faces[owner[verts]] == verts[:, None]).argmax(1)
        self.model = model.with_landmarks(owner[verts], np.eye(3)[corner]).eval()
        n_static = static.size
        dt, dev = model.dtype, model.device  # on the model's device: a CUDA fit indexes with them
        self.static_idx = torch.as_tensor(inv[:n_static].reshape(static.shape), device=dev)
        self.static_bary = torch.as_tensor(emb.static_bary[points], dtype=dt, device=dev)
        self.bin_idx = torch.as_tensor(inv[n_static:].reshape(binned.shape), device=dev)
        self.bin_bary = torch.as_tensor(emb.bary[:, points], dtype=dt, device=dev)
        self.yaws = torch.as_tensor(emb.yaw_deg, dtype=dt, device=dev)

    def blend(self, yaw_deg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Bins below/above each yaw ``[N]`` and the weight of the upper one (clamped at the ends)."""
        y = yaw_deg.to(self.yaws.dtype).clamp(float(self.yaws[0]), float(self.yaws[-1]))
        hi = torch.searchsorted(self.yaws, y.contiguous()).clamp(1, len(self.yaws) - 1)
        lo = hi - 1
        a = (y - self.yaws[lo]) / (self.yaws[hi] - self.yaws[lo])
        return lo, hi, a

    def __call__(self, params: dict[str, Tensor], yaw_deg: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Static points ``[N, P, 3]`` and (given each head's view yaw ``[N]``) the view-table points
        ``[N, P, 3]`` of heads with ``params`` (model space)."""
        v = self.model.landmarks(**params).landmarks  # [N, U, 3]
        if yaw_deg is not None and yaw_deg.numel() > v.shape[0]:  # one head seen by several cameras
            v = v.expand(yaw_deg.numel(), -1, -1)
        n = v.shape[0]

        def mix(idx: Tensor, bary: Tensor) -> Tensor:  # idx [N, P, 3], bary [N, P, 3]
            picked = torch.gather(v, 1, idx.reshape(n, -1, 1).expand(-1, -1, 3)).view(*idx.shape, 3)
            return (picked * bary[..., None].to(v.dtype)).sum(-2)

        static = mix(self.static_idx.expand(n, -1, -1), self.static_bary.expand(n, -1, -1))
        if yaw_deg is None:
            return static, None
        lo, hi, a = self.blend(yaw_deg.reshape(-1).expand(n))
        a = a.to(v.dtype)[:, None, None]
        viewed = (1 - a) * mix(self.bin_idx[lo], self.bin_bary[lo]) + a * mix(self.bin_idx[hi], self.bin_bary[hi])
        return static, viewed


def _surface_points(vpx: np.ndarray, faces: np.ndarray, face_idx: np.ndarray, pts: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangle and 2-D barycentrics of the visible surface under each image point ``pts [P, 2]``."""
    from flame_tracker.rendering.raster import barycentric_2d

    h, w = face_idx.shape
    xi = np.clip(np.floor(pts[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.floor(pts[:, 1]).astype(int), 0, h - 1)
    tri = face_idx[yi, xi]
    ok = tri >= 0
    bary = np.clip(barycentric_2d(pts, vpx[faces[np.maximum(tri, 0)], :2]), 0, None)
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


def view_yaw_deg(rot_cv: Tensor, centre_cv: Tensor) -> Tensor:
    """Yaw (degrees) of a head relative to the ray from the camera to it: 0 when the head faces the
    camera, whatever the head's place in the picture (a frontal face at the image edge is seen from
    the side by a wide lens). ``rot_cv [N, 3, 3]``: model -> OpenCV camera rotation; ``centre_cv [N, 3]``:
    the head's centre in OpenCV camera coordinates. The sign is the model's +y rotation's."""
    fwd = rot_cv[..., :, 2]  # the model's +z (the face's direction) in the camera
    face = torch.atan2(fwd[..., 0], -fwd[..., 2])
    ray = torch.atan2(centre_cv[..., 0], centre_cv[..., 2])
    return torch.rad2deg(face + ray)


def _contour(n_points: int) -> np.ndarray:
    """Mask of the points on the face outline (they slide over the cheek as the head turns)."""
    from flame_tracker.detection.layout import FACE_OVAL

    mask = np.zeros(n_points, bool)
    mask[FACE_OVAL] = True  # MediaPipe's face oval
    mask[N_MP : N_MP + 17] = True  # the iBUG jawline
    return mask


def derive_detector_embedding(model: HeadModel, landmarker, *, n_renders: int = N_RENDERS, seed: int = 7001,
                              progress: bool = False) -> ViewEmbedding:
    """Measure where ``landmarker`` (a :class:`~flame_tracker.detection.FaceLandmarker`) puts its 478
    points (and their 68-point iBUG mapping) on ``model``'s surface, per head yaw (see the module
    docstring). Deterministic for a ``seed``."""
    from flame_tracker.evaluation.scenes import render_scene, sample_scenes
    from flame_tracker.rendering.raster import rasterize

    specs = sample_scenes(model, n_renders, seed=seed, yaw_max=YAW_MAX, pitch_max=25.0, roll_max=15.0,
                          face_frac=(0.35, 0.65), sizes=(512, 768), fov_range=(15.0, 40.0))
    faces = model.faces.cpu().numpy()
    template = model.v_template.detach().cpu().double().numpy()
    n_pts = N_MP + 68
    yaws: list[float] = []
    pitches: list[float] = []
    hits: list[np.ndarray] = []  # per render: each point's surface place [P, 3]
    oks: list[np.ndarray] = []
    it = specs
    if progress:
        from flame_tracker.progress import progress_bar

        it = progress_bar(specs, desc="embedding renders", unit="render")
    for spec in it:
        img, truth = render_scene(model, spec)
        det = landmarker.detect(img)
        if det is None:
            continue
        cam = truth.vertices_cam
        vpx = np.concatenate([cam[:, :2] / cam[:, 2:] * truth.K[0, 0] + truth.K[:2, 2], cam[:, 2:]], 1)
        fr = rasterize(torch.as_tensor(vpx)[None], model.faces.cpu(), spec.height, spec.width)
        image_pts = np.concatenate([det.points478[:, :2], det.lmks68]).astype(np.float64)
        tri, bary, ok = _surface_points(vpx, faces, fr.face_idx[0].numpy(), image_pts)
        hits.append(np.einsum("pi,pij->pj", bary, template[faces[np.maximum(tri, 0)]]))
        oks.append(ok)
        centre = truth.R @ truth.lmks68_3d.mean(0) + truth.t
        yaws.append(float(view_yaw_deg(torch.as_tensor(truth.R)[None], torch.as_tensor(centre)[None])[0]))
        pitches.append(float(spec.euler_deg[1]))
    if len(yaws) < 8:
        raise StepError("derive_detector_embedding: the detector found too few faces in the renders")
    # [R], [R], [R, P, 3], [R, P]
    yaw, pitch, pts, ok = np.asarray(yaws), np.asarray(pitches), np.stack(hits), np.stack(oks)
    contour = _contour(n_pts)

    def median_of(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per point: median surface point, median spread (mm) and hit count over renders ``sel [R, P]``."""
        med = np.full((n_pts, 3), np.nan)
        spread = np.full(n_pts, np.nan)
        hits = (ok & sel).sum(0)
        for k in np.flatnonzero(hits >= MIN_HITS):
            p = pts[ok[:, k] & sel[:, k], k]
            med[k] = np.median(p, 0)
            spread[k] = np.median(np.linalg.norm(p - med[k], axis=1)) * 1000
        return med, spread, hits

    # the static embedding: the outline from near-frontal renders only, the rest from moderate yaws,
    # both from moderate pitches
    limit = np.where(contour, YAW_CONTOUR, YAW_FACE)
    level = (np.abs(pitch) <= PITCH_STATIC)[:, None]
    static, _, static_hits = median_of((np.abs(yaw)[:, None] <= limit[None]) & level)
    for wider in (YAW_FACE, YAW_MAX):  # few renders: a point seen too rarely widens its yaw range
        missing = np.isnan(static[:, 0])
        if not missing.any():
            break
        more, _, more_hits = median_of(np.abs(yaw)[:, None] <= np.maximum(limit, wider)[None])  # any pitch
        static[missing], static_hits[missing] = more[missing], more_hits[missing]
    if np.isnan(static).any():
        raise StepError("derive_detector_embedding: too few detections for some points; use more renders")
    # per yaw bin: renders within one bin step of its centre; a point seen too rarely there keeps the
    # nearest bin's location (or the static one)
    bins, spreads = [], []
    for c in VIEW_YAWS:
        med, spread, _ = median_of(np.repeat((np.abs(yaw - c) <= BIN_STEP)[:, None], n_pts, 1))
        bins.append(med)
        spreads.append(spread)
    bins_a = np.stack(bins)  # [B, P, 3]
    for b in range(len(VIEW_YAWS)):
        missing = np.isnan(bins_a[b, :, 0])
        for nb in sorted(range(len(VIEW_YAWS)), key=lambda j: abs(VIEW_YAWS[j] - VIEW_YAWS[b])):
            fill = missing & ~np.isnan(bins_a[nb, :, 0])
            bins_a[b, fill] = bins_a[nb, fill]
            missing &= ~fill
        bins_a[b, missing] = static[missing]
    with warnings.catch_warnings():  # a point no bin saw: NaN, replaced below
        warnings.simplefilter("ignore", RuntimeWarning)
        spread = np.nanmedian(np.stack(spreads), 0)
    known = ~np.isnan(spread)
    # a point no bin saw counts as the least consistent one; if none was seen twice (a derivation from
    # a handful of renders), every point gets MediaPipe's typical spread (3 mm on ICT renders): equal weights
    spread = np.where(known, spread, np.max(spread[known]) if known.any() else 3.0)
    s_f, s_b = _snap(static, template, faces)
    bf, bb = _snap(bins_a.reshape(-1, 3), template, faces)
    B = len(VIEW_YAWS)
    return ViewEmbedding(VIEW_YAWS.copy(), bf.reshape(B, n_pts), bb.reshape(B, n_pts, 3), s_f, s_b, spread,
                         static_hits, fingerprint(model), len(yaws), seed,
                         table68_id(getattr(landmarker, "table", "improved")))


def shipped_embedding(model: HeadModel) -> ViewEmbedding | None:
    """The detector embedding shipped with the package for this model (matched by fingerprint)."""
    fp = fingerprint(model)
    for path in sorted(SHIPPED.glob("*.npz")):
        try:
            emb = ViewEmbedding.load(path)
        except (OSError, ValueError, KeyError):
            continue
        if emb.fingerprint == fp:
            return emb
    return None


def cached_path(model: HeadModel) -> Path:
    """Where ``flame-tracker embed`` stores the embedding it derives for ``model`` (user cache)."""
    from flame_tracker.paths import cache_dir

    return cache_dir() / "embeddings" / f"{fingerprint(model)}-views.npz"


def detector_embedding(model: HeadModel, landmarker=None, *, derive: bool = False) -> ViewEmbedding | None:
    """The detector embedding of ``model``: one derived before (user cache, ``flame-tracker embed``),
    else the one shipped for it, else (``derive=True`` with a ``landmarker``) derived now and
    cached; ``None`` when none is available."""
    cached = cached_path(model)
    emb = None
    if cached.is_file():  # one derived by the user wins over the shipped one
        try:
            emb = ViewEmbedding.load(cached)
        except (OSError, ValueError, KeyError):
            emb = None  # an unreadable or old-format file: as if absent
        want = table68_id(getattr(landmarker, "table", "improved"))
        if emb is not None and emb.table68 != want:  # its 68 points are elsewhere: not used
            warnings.warn(f"the detector embedding cached at {cached} was derived with another 68-point table "
                          "(an earlier flame-tracker): not used; run `flame-tracker embed` for this model again",
                          stacklevel=2)
            emb = None
    emb = emb or shipped_embedding(model)
    if emb is None and derive and landmarker is not None:
        emb = derive_detector_embedding(model, landmarker, progress=True)
        try:
            emb.save(cached)
        except OSError:
            pass
    return emb


def detector_model(model: HeadModel, landmarker=None, *, derive: bool = False) -> HeadModel:
    """``model`` with the detector's static 68-point embedding for fitting
    (:func:`detector_embedding`); ``model`` itself when none is available."""
    emb = detector_embedding(model, landmarker, derive=derive)
    return model if emb is None else with_landmarks(model, emb)


def describe(emb: ViewEmbedding) -> str:
    """One-line JSON summary (renders, spread and hits) for logs and the CLI."""
    return json.dumps({"fingerprint": emb.fingerprint, "renders": emb.renders,
                       "median_spread_mm": round(float(np.median(emb.spread_mm)), 2),
                       "min_hits": int(emb.hits.min()), "yaw_bins": len(emb.yaw_deg)})


__all__ = [
    "DENSE",
    "IBUG68",
    "N_DENSE",
    "ViewEmbedding",
    "ViewPoints",
    "cached_path",
    "derive_detector_embedding",
    "describe",
    "detector_embedding",
    "detector_model",
    "fingerprint",
    "shipped_embedding",
    "view_yaw_deg",
    "with_landmarks",
]
