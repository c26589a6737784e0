"""The calibration of a multi-view rig.

Conventions (stored, and used everywhere in :mod:`flame_tracker.multiview`): OpenCV cameras (x right,
y down, z forward), world-to-camera ``x_cam = R x_world + t``, pixels ``K x_cam`` with the pixel grid's
top-left corner at (0, 0) (pixel ``i`` spans ``[i, i + 1]``), metres. Two files are read:

* ``cameras.json`` (ours, OpenCV): ``{"cameras": {"cam_00": {"K": 3x3, "R": 3x3, "t": [3], "width": W,
  "height": H, "dist": [k1, k2, p1, p2(, k3)] (optional)}, ...}}`` (a list of such objects with
  ``"name"`` also works);
* a NeRF/VHAP ``transforms.json``: ``frames`` with ``transform_matrix`` (camera-to-world, OpenGL axes:
  y up, looking down -z), ``fl_x``, ``fl_y``, ``cx``, ``cy``, ``w``, ``h`` (per frame or at the top
  level) and ``camera_id`` / ``camera_index`` naming the camera (one entry per camera is kept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flame_tracker.errors import FlameTrackerError

UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])


class MultiviewError(FlameTrackerError, ValueError):
    """Bad multi-view input (calibration, frames); the message says what is wrong and what to do."""


@dataclass
class Camera:
    """One calibrated camera (OpenCV, world-to-camera, metres)."""

    name: str
    K: np.ndarray  # [3, 3]
    R: np.ndarray  # [3, 3] world -> camera
    t: np.ndarray  # [3] metres
    width: int
    height: int
    dist: np.ndarray | None = None  # OpenCV distortion coefficients, None = none

    @property
    def P(self) -> np.ndarray:
        """``[3, 4]`` projection matrix ``K [R | t]``."""
        return self.K @ np.concatenate([self.R, self.t[:, None]], 1)

    @property
    def centre(self) -> np.ndarray:
        """The camera centre in world coordinates."""
        return -self.R.T @ self.t

    def w2c(self) -> np.ndarray:
        """``[4, 4]`` world-to-camera (OpenCV)."""
        m = np.eye(4)
        m[:3, :3], m[:3, 3] = self.R, self.t
        return m

    @property
    def K_cv(self) -> np.ndarray:
        """``K`` in OpenCV's convention (pixel centres at integers: the principal point 0.5 less)."""
        k = self.K.copy()
        k[:2, 2] -= 0.5
        return k

    def undistort(self, px: np.ndarray) -> np.ndarray:
        """Pixel points ``[..., 2]`` as an ideal pinhole camera with ``K`` would see them."""
        if self.dist is None or not np.any(self.dist):
            return px
        import cv2

        flat = np.ascontiguousarray(px.reshape(-1, 1, 2), np.float64)
        ok = np.asarray(np.isfinite(flat).all(-1))[:, 0]
        out = np.full_like(flat, np.nan)
        if ok.any():
            # OpenCV's pixel centres are at integers; ours at +0.5
            out[ok] = cv2.undistortPoints(flat[ok] - 0.5, self.K_cv, self.dist, P=self.K_cv) + 0.5
        return out.reshape(px.shape)

    def project(self, x_world: np.ndarray) -> np.ndarray:
        """World points ``[N, 3]`` to pixels ``[N, 2]``, with the lens distortion."""
        cam = x_world @ self.R.T + self.t
        if self.dist is None or not np.any(self.dist):
            return cam[:, :2] / cam[:, 2:] * self.K[[0, 1], [0, 1]] + self.K[:2, 2]
        import cv2

        px, _ = cv2.projectPoints(np.ascontiguousarray(cam), np.zeros(3), np.zeros(3), self.K_cv, self.dist)
        return px[:, 0] + 0.5

    def as_dict(self) -> dict:
        d = {"K": self.K.tolist(), "R": self.R.tolist(), "t": self.t.tolist(), "width": self.width,
             "height": self.height}
        if self.dist is not None:
            d["dist"] = self.dist.tolist()
        return d


@dataclass
class Rig:
    """The cameras of a capture, in file order, and how the file was read."""

    cameras: list[Camera]
    convention: str  # one sentence: which file layout and axes were read
    unit: str = "m"
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def __len__(self) -> int:
        return len(self.cameras)

    def save(self, path: str | Path) -> Path:
        """Write the calibration as ``cameras.json`` (OpenCV, metres)."""
        from flame_tracker.io.results import save_json

        return save_json(path, {"convention": "opencv world-to-camera, metres",
                                "cameras": {c.name: c.as_dict() for c in self.cameras}})


def _matrix(value, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MultiviewError(f"{what}: not a numeric array ({exc})") from exc
    if a.shape != shape and a.size == int(np.prod(shape)):
        a = a.reshape(shape)
    if a.shape != shape:
        raise MultiviewError(f"{what}: expected shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise MultiviewError(f"{what}: holds NaN or infinite values")
    return a


def check_camera(cam: Camera, where: str) -> None:
    """A usable camera: a proper rotation, a positive focal length, a size."""
    if np.abs(cam.R @ cam.R.T - np.eye(3)).max() > 1e-4 or np.linalg.det(cam.R) < 0.999:
        raise MultiviewError(f"{where}: R is not a rotation matrix (orthonormal, determinant +1); give the "
                             "world-to-camera rotation")
    if cam.K[0, 0] <= 0 or cam.K[1, 1] <= 0 or abs(cam.K[2, 2] - 1) > 1e-6:
        raise MultiviewError(f"{where}: K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with fx, fy > 0")
    if cam.width <= 0 or cam.height <= 0:
        raise MultiviewError(f"{where}: give the image size (width, height) in pixels")


def _from_opencv(entries: list[tuple[str, dict]], path: Path) -> list[Camera]:
    cams = []
    for name, c in entries:
        where = f"{path}: camera {name!r}"
        missing = [k for k in ("K", "R", "t") if k not in c]
        if missing:
            raise MultiviewError(f"{where}: missing {', '.join(missing)} (need K 3x3, world-to-camera R 3x3, t [3], "
                                 "width, height)")
        size = c.get("image_size") or c.get("size") or [c.get("width", 0), c.get("height", 0)]
        dist = c.get("dist", c.get("distortion"))
        if dist is not None:
            d = _matrix(dist, (len(np.ravel(dist)),), f"{where} dist") if np.size(dist) else None
            if d is not None and len(d) not in (4, 5, 8, 12, 14):
                raise MultiviewError(f"{where}: dist has {len(d)} values; OpenCV takes 4, 5, 8, 12 or 14 "
                                     "(k1, k2, p1, p2[, k3, ...])")
            dist = d
        cams.append(Camera(str(name), _matrix(c["K"], (3, 3), f"{where} K"), _matrix(c["R"], (3, 3), f"{where} R"),
                           _matrix(c["t"], (3,), f"{where} t"), int(size[0]), int(size[1]),
                           None if dist is None else np.asarray(dist, np.float64).reshape(-1)))
    return cams


def _from_transforms(doc: dict, path: Path) -> list[Camera]:
    cams: dict[str, Camera] = {}
    for i, fr in enumerate(doc["frames"]):
        name = fr.get("camera_id", fr.get("camera_index"))
        if name is None:  # one camera per frame entry: name it by its image file
            name = Path(str(fr.get("file_path", f"cam_{i:02d}"))).stem
        name = str(name)
        if name in cams:
            continue
        get = lambda k: fr.get(k, doc.get(k))  # noqa: E731  (per frame, else the shared value)
        w, h = get("w"), get("h")
        fx, fy, cx, cy = get("fl_x"), get("fl_y"), get("cx"), get("cy")
        if fx is None and get("camera_angle_x") is not None and w:
            fx = 0.5 * w / np.tan(0.5 * float(get("camera_angle_x")))
        fy = fy if fy is not None else fx
        if None in (w, h, fx):
            raise MultiviewError(f"{path}: frame {i}: need w, h and fl_x (or camera_angle_x) for camera {name!r}")
        cx = w / 2 if cx is None else cx
        cy = h / 2 if cy is None else cy
        c2w = _matrix(fr.get("transform_matrix"), (4, 4), f"{path}: frame {i} transform_matrix")
        c2w_cv = c2w.copy()
        c2w_cv[:3, :3] = c2w[:3, :3] @ _GL_TO_CV  # OpenGL camera axes -> OpenCV
        w2c = np.linalg.inv(c2w_cv)
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]], np.float64)
        dist = [float(get(k) or 0.0) for k in ("k1", "k2", "p1", "p2", "k3")]
        cams[name] = Camera(name, K, w2c[:3, :3], w2c[:3, 3], int(w), int(h),
                            np.asarray(dist, np.float64) if any(dist) else None)
    return list(cams.values())


def load_cameras(path: str | Path, unit: str = "m") -> Rig:
    """Read a calibration (see the module docstring); ``unit``: of its translations (``m``, ``cm``,
    ``mm``). :class:`MultiviewError` names what is missing or inconsistent."""
    path = Path(path)
    if unit not in UNITS:
        raise MultiviewError(f"unknown unit {unit!r}; use one of: {', '.join(UNITS)}")
    if not path.is_file():
        raise MultiviewError(f"{path}: calibration file not found (give --cameras cameras.json or transforms.json)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MultiviewError(f"{path}: not a readable JSON file ({exc})") from exc
    if isinstance(doc, dict) and isinstance(doc.get("frames"), list):
        cams = _from_transforms(doc, path)
        convention = (f"{path.name}: NeRF/VHAP transforms (OpenGL camera-to-world), converted to OpenCV "
                      "world-to-camera")
    else:
        body = doc.get("cameras", doc) if isinstance(doc, dict) else doc
        if isinstance(body, dict):
            entries = [(k, v) for k, v in body.items() if isinstance(v, dict)]
        elif isinstance(body, list):
            entries = [(str(c.get("name", f"cam_{i:02d}")), c) for i, c in enumerate(body) if isinstance(c, dict)]
        else:
            entries = []
        cams = _from_opencv(entries, path)
        convention = f"{path.name}: OpenCV K and world-to-camera R, t"
    if len(cams) < 2:
        raise MultiviewError(f"{path}: found {len(cams)} camera(s); a multi-view capture needs at least 2")
    names = [c.name for c in cams]
    if len(set(names)) != len(names):
        raise MultiviewError(f"{path}: camera names repeat ({', '.join(names)})")
    for c in cams:
        check_camera(c, f"{path}: camera {c.name!r}")
        c.t = c.t * UNITS[unit]
    return Rig(cams, convention + f", translations in {unit}", unit)


__all__ = ["Camera", "Rig", "MultiviewError", "UNITS", "load_cameras", "check_camera"]
