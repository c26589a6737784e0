"""Finding faces in real footage: small and distant faces, several people, faces that leave and
come back.

MediaPipe's face detector (BlazeFace, short range) looks at the whole picture at 128 × 128 pixels:
measured on the shared photos, it finds a face only when the eye-to-chin height is at least about
8 % of the picture's longer side (a 150-pixel face in a 1920 × 1080 frame is not found). Three
things fix that:

* :class:`FaceFinder` — the whole-frame pass, then (when it finds nothing) MediaPipe over
  overlapping square tiles at several scales, sized so that the smallest face wanted
  (:data:`MIN_FACE_PX` eye to chin) fills 10 % of a tile; every face found is detected again on a
  square crop around it (:meth:`FaceLandmarker.detect_region`), so its landmarks come from a crop
  in which the face is large, at the frame's full resolution.
* :class:`FaceChoice` — which face to follow (``largest``, ``center``, ``left``, ``right``,
  ``index N`` counted from the left, ``near X,Y``).
* :class:`FaceFollower` — in a video, the landmarker runs on a square crop that follows the chosen
  face (the region of interest, ROI); a lost face is searched for again in every frame (the
  whole-frame pass, and the tiles once per :attr:`~FaceFollower.tile_every_s`), and re-acquired
  as the face nearest to where it was last seen, so the track does not jump to another person.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from flame_tracker.detection.landmarker import FaceDetection, FaceLandmarker
from flame_tracker.detection.layout import eye_chin
from flame_tracker.errors import InputError

#: The smallest face the tiled search is sized for: eye line to chin, in pixels.
MIN_FACE_PX = 32.0
#: MediaPipe finds a face whose eye-to-chin height is at least this fraction of its input's longer
#: side (measured: found at 8 %, missed at 6 %); the tiles are sized for 10 %.
DETECTABLE_FRACTION = 0.10
#: MediaPipe's face-detection threshold over tiles (its default, 0.5, for the whole picture).
#: Measured on 24 wide shots with textured backgrounds: 27 false faces at 0.5, none at 0.7 or
#: 0.8, every real face (30-60 px eye to chin) found at each.
TILE_DETECTION_CONFIDENCE = 0.75
#: A face found by the whole-frame pass whose eye-to-chin height is below this fraction of the
#: (downscaled) picture's longer side is detected again on a crop around it.
REFINE_BELOW_FRACTION = 0.15
#: Side of the square crop around a face, in face sizes (the 478 points' bounding box).
ROI_SCALE = 2.0
#: The crop is shown to MediaPipe at most this large (its face model works at 256 × 256).
ROI_PX = 512
#: The crop moves only when the face drifts by this fraction of its side (or changes size by it).
ROI_DEADBAND = 0.2
#: A face at least this large (pixels, in the whole-frame pass's downscaled input) and alone in the
#: picture is followed on the whole frame; smaller ones, or several people, through the crop.
WHOLE_FRAME_PX = 200.0


def face_size(points: np.ndarray) -> float:
    """Size of a face (longer side of its points' bounding box), pixels."""
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    return float(max(hi - lo))


def face_centre(points: np.ndarray) -> np.ndarray:
    """Centre of a face's points' bounding box ``[2]``, pixels."""
    lo, hi = points[:, :2].min(0), points[:, :2].max(0)
    return (lo + hi) / 2.0


def _crop_of(det: FaceDetection) -> tuple[np.ndarray, float]:
    """The ROI around a face: its centre and side (:data:`ROI_SCALE` face sizes), pixels."""
    return face_centre(det.points478), ROI_SCALE * face_size(det.points478)


def turned_over(det: FaceDetection) -> FaceDetection:
    """A face detected in a picture turned by 180° (``image[::-1, ::-1]``) as seen in the picture itself:
    pixel corners map as ``(x, y) -> (W - x, H - y)``, MediaPipe's depth stays, its camera turns about
    its axis."""
    from dataclasses import replace

    size = np.array(det.image_size, dtype=np.float64)
    points = det.points478.copy()
    points[:, :2] = (size - points[:, :2]).astype(points.dtype)
    return replace(det, points478=points, lmks68=size - det.lmks68, iris=size - det.iris,
                   transform=np.diag([-1.0, -1.0, 1.0, 1.0]).astype(det.transform.dtype) @ det.transform)


def tiles(width: int, height: int, side: int, overlap: float = 0.5) -> list[tuple[float, float]]:
    """Centres of square tiles of ``side`` pixels covering a ``width × height`` frame, neighbours
    overlapping by ``overlap`` of a side (so every face up to ``overlap × side`` lies whole in one)."""
    def centres(n: int) -> np.ndarray:
        if n <= side:
            return np.array([n / 2.0])
        count = int(np.ceil((n - side) / (side * (1.0 - overlap)))) + 1
        return np.linspace(side / 2.0, n - side / 2.0, count)

    return [(float(x), float(y)) for y in centres(height) for x in centres(width)]


def tile_sides(width: int, height: int, min_face_px: float = MIN_FACE_PX) -> list[int]:
    """Tile sizes of the search, smallest first: each level finds faces from ``DETECTABLE_FRACTION``
    to about 40 % of its side; levels double until the whole-frame pass takes over."""
    longest = max(width, height)
    side = int(round(min_face_px / DETECTABLE_FRACTION))
    out = []
    while side * 1.5 < longest:
        out.append(side)
        side *= 2
    return out


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def distinct(faces: list[FaceDetection], iou: float = 0.3) -> list[FaceDetection]:
    """One detection per face: among overlapping ones (boxes' IoU above ``iou``) the larger is kept."""
    kept: list[FaceDetection] = []
    for f in sorted(faces, key=lambda d: -d.area):
        if all(_iou(f.bbox, k.bbox) <= iou for k in kept):
            kept.append(f)
    return kept


@dataclass(frozen=True)
class FaceChoice:
    """Which face to follow when a picture has several.

    ``rule``: ``largest`` (default), ``center`` (nearest the picture's centre), ``left`` / ``right``
    (the leftmost / rightmost), ``index`` (``index`` counted from the left, 0-based) or ``near``
    (nearest the pixel ``point``). Parse the command line's form with :meth:`parse`.
    """

    rule: str = "largest"
    index: int = 0
    point: tuple[float, float] = (0.0, 0.0)

    RULES = ("largest", "center", "left", "right", "index", "near")

    def __post_init__(self) -> None:
        if self.rule not in self.RULES:
            raise InputError(f"unknown face choice {self.rule!r}; use one of: largest, center, left, right, "
                             "'index N', 'near X,Y'")
        if self.index < 0:
            raise InputError(f"face index must be >= 0, got {self.index}")

    @classmethod
    def parse(cls, text: str | FaceChoice | None) -> FaceChoice:
        """``"largest"``, ``"center"``, ``"left"``, ``"right"``, ``"index 2"``, ``"near 640,360"``."""
        if text is None:
            return cls()
        if isinstance(text, FaceChoice):
            return text
        t = text.strip().lower()
        m = re.fullmatch(r"index[\s=:]*(\d+)", t)
        if m:
            return cls("index", index=int(m.group(1)))
        m = re.fullmatch(r"near[\s=:]*(-?[\d.]+)\s*[, ]\s*(-?[\d.]+)", t)
        if m:
            return cls("near", point=(float(m.group(1)), float(m.group(2))))
        if t in ("centre", "middle"):
            t = "center"
        if t in ("index", "near"):
            raise InputError(f"face choice {text!r} needs a value: 'index N' or 'near X,Y'")
        return cls(t)

    def order(self, faces: list[FaceDetection]) -> list[FaceDetection]:
        """``faces`` from the most to the least wanted (``index N``: the N-th from the left first)."""
        if not faces:
            return []
        cx = [float(face_centre(f.points478)[0]) for f in faces]
        by_x = [faces[i] for i in np.argsort(cx, kind="stable")]
        if self.rule == "largest":
            return sorted(faces, key=lambda f: -f.area)
        if self.rule == "left":
            return by_x
        if self.rule == "right":
            return by_x[::-1]
        if self.rule == "index":
            if self.index >= len(faces):
                return []
            return [by_x[self.index]] + [f for f in by_x if f is not by_x[self.index]]
        w, h = faces[0].image_size
        target = np.array(self.point if self.rule == "near" else (w / 2.0, h / 2.0))
        return sorted(faces, key=lambda f: float(np.linalg.norm(face_centre(f.points478) - target)))

    def pick(self, faces: list[FaceDetection]) -> FaceDetection | None:
        """The wanted face, or None (no face, or fewer faces than ``index + 1``)."""
        ordered = self.order(faces)
        return ordered[0] if ordered else None

    def __str__(self) -> str:
        if self.rule == "index":
            return f"index {self.index}"
        if self.rule == "near":
            return f"near {self.point[0]:g},{self.point[1]:g}"
        return self.rule


class FaceFinder:
    """Every face of a picture, small ones included (see the module docstring).

    Args:
        landmarker_path: the ``face_landmarker.task`` bundle (default: found via assets).
        max_faces: faces per MediaPipe call (whole frame and each tile).
        min_face_px: the smallest eye-to-chin height the tiled search is sized for.
        refine: detect each face again on a crop around it (:data:`ROI_SCALE`, :data:`ROI_PX`).
        verbose: let MediaPipe's native log lines through.
    """

    def __init__(self, landmarker_path: str | os.PathLike[str] | None = None, *, max_faces: int = 6,
                 min_face_px: float = MIN_FACE_PX, refine: bool = True, verbose: bool = False,
                 max_side: int = 1920, landmarker: FaceLandmarker | None = None) -> None:
        self._owned = landmarker is None
        self.landmarker = landmarker or FaceLandmarker(landmarker_path, mode="image", max_faces=max_faces,
                                                       transformation_matrix=False, verbose=verbose,
                                                       max_side=max_side)
        if self.landmarker.mode != "image":
            raise InputError("FaceFinder needs an IMAGE-mode FaceLandmarker")
        self._path, self._verbose, self._max_faces = landmarker_path, verbose, max_faces
        self._tile_landmarker: FaceLandmarker | None = None  # created on the first tiled search
        self.min_face_px = float(min_face_px)
        self.refine = refine
        self.n_tiles = 0  # tiles looked at by the last search (0: the whole-frame pass was enough)

    def close(self) -> None:
        """Release MediaPipe (idempotent; a landmarker passed in is left to its owner)."""
        if self._owned:
            self.landmarker.close()
        if self._tile_landmarker is not None:
            self._tile_landmarker.close()
            self._tile_landmarker = None

    @property
    def tile_landmarker(self) -> FaceLandmarker:
        """The landmarker of the tiles: a stricter face detector (:data:`TILE_DETECTION_CONFIDENCE`),
        as hundreds of tiles of background give MediaPipe hundreds of chances to see a face."""
        if self._tile_landmarker is None:
            self._tile_landmarker = FaceLandmarker(
                self._path or self.landmarker.model_path, mode="image", max_faces=self._max_faces,
                transformation_matrix=False, verbose=self._verbose,
                min_detection_confidence=TILE_DETECTION_CONFIDENCE)
        return self._tile_landmarker

    def __enter__(self) -> FaceFinder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def whole_frame(self, image: np.ndarray) -> list[FaceDetection]:
        """The faces MediaPipe finds in the whole (downscaled) picture."""
        return self.landmarker.detect_all(image)

    def tiled(self, image: np.ndarray, first_hit: bool = False) -> list[FaceDetection]:
        """The faces found over overlapping tiles at every level of :func:`tile_sides` (largest
        tiles first, the fewest; ``first_hit``: stop after the first level that finds a face)."""
        h, w = image.shape[:2]
        found: list[FaceDetection] = []
        self.n_tiles = 0
        for side in tile_sides(w, h, self.min_face_px)[::-1]:
            for c in tiles(w, h, side):
                self.n_tiles += 1
                # a tile goes to MediaPipe at no more than 640 pixels: its 128-pixel face detector
                # gains nothing from more, and the crop is refined afterwards
                found.extend(self.tile_landmarker.detect_region(image, c, side, out_side=min(side, 640)))
            if found and first_hit:
                break
        return distinct(found)

    def around(self, image: np.ndarray, centre: np.ndarray, size: float) -> list[FaceDetection]:
        """The faces in the square crop around a face of ``size`` pixels at ``centre`` (:data:`ROI_SCALE`
        face sizes wide, shown to MediaPipe at :data:`ROI_PX`), detected afresh."""
        return self.landmarker.detect_region(image, tuple(centre), ROI_SCALE * size, None, ROI_PX)

    def region(self, image: np.ndarray, det: FaceDetection) -> FaceDetection | None:
        """``det`` detected again on a square crop around it (the face nearest its centre there)."""
        c = face_centre(det.points478)
        got = self.around(image, c, face_size(det.points478))
        if not got:
            return None
        return min(got, key=lambda f: float(np.linalg.norm(face_centre(f.points478) - c)))

    def find(self, image: np.ndarray, tiled: bool = True, first_hit: bool = False,
             exhaustive: bool = False) -> list[FaceDetection]:
        """The faces of ``image`` (RGB uint8): the whole-frame pass, then (``tiled`` and nothing
        found) the tiled search; ``exhaustive``: the tiles too even when the whole frame found a
        face (every person, small ones beside a large one: to choose one, or fit all).

        With ``refine``, a face seen at less than full resolution (a tile, or a frame downscaled
        for the whole-frame pass) is detected again on a crop around it; a face found in a picture
        at full resolution keeps the whole-frame landmarks (measured on the annotated photos: the
        same error against the annotation, 4.3 % of the eye distance either way)."""
        whole = self.whole_frame(image)
        self.n_tiles = 0
        tiled_faces = self.tiled(image, first_hit) if tiled and (exhaustive or not whole) else []

        def refined(f: FaceDetection, from_tile: bool) -> FaceDetection:
            # a tile's face always (one cut by the tile's edge is seen whole in its own crop); a
            # whole-frame face when the frame was downscaled, or when the face is near the
            # detector's limit (its box, hence the landmarks, are then unreliable: measured 9 %
            # NME at 8 % of the frame, 1 % after the crop)
            small = eye_chin(f.lmks68) < REFINE_BELOW_FRACTION * max(f.image_size)
            if self.refine and (from_tile or small or max(f.detect_transform.scale) > 1.0 + 1e-6):
                return self.region(image, f) or f
            return f

        return distinct([refined(f, False) for f in whole] + [refined(f, True) for f in tiled_faces])


class FaceFollower:
    """Landmarks of one chosen face through a video (see the module docstring).

    Call it on each frame in order (RGB uint8, time in seconds); it returns the followed face or
    None. A face that is large in the whole-frame pass's input (at least :data:`WHOLE_FRAME_PX`)
    and alone in the picture is followed by MediaPipe's video mode on the whole frame (its own
    tracking; measured steadiest); a small face, or one of several people, through the crop around
    it (the ROI). ``roi=False`` never uses the crop nor searches tiles (the behaviour before).

    Args:
        landmarker_path: the ``face_landmarker.task`` bundle.
        choice: which face to follow first (and after a loss with no face near the last place).
        roi: allow the face-centred crop and the tiled search (default).
        tile_every_s: while no face is followed, the tiled search runs at most this often
            (the whole-frame pass runs on every such frame).
        rescan_s: while following, a whole-frame pass this often counts the faces in the picture
            (:attr:`faces_seen`): a second person entering switches to the crop, which follows
            the chosen face by place and does not jump to the newcomer.
        max_side: the whole-frame pass downscales frames to this longer side.
    """

    def __init__(self, landmarker_path: str | os.PathLike[str] | None = None, *,
                 choice: FaceChoice | str | None = None, roi: bool = True, tile_every_s: float = 1.0,
                 rescan_s: float = 2.0, max_side: int = 1280, verbose: bool = False) -> None:
        self.path = landmarker_path
        self.choice = FaceChoice.parse(choice)
        self.roi = roi
        self.tile_every_s = float(tile_every_s)
        self.rescan_s = float(rescan_s)
        self.max_side = int(max_side)
        self.verbose = verbose
        self.finder = FaceFinder(landmarker_path, verbose=verbose, max_side=max_side, refine=roi)
        self._video: FaceLandmarker | None = None
        self.window: tuple[np.ndarray, float] | None = None  # ROI centre, side (pixels); None: whole frame
        self.last: tuple[np.ndarray, float, float] | None = None  # centre, size, time of the last face
        self.following = False
        self.faces_seen = 0  # most faces seen at once in a picture
        self.searches = 0  # frames on which a search ran
        self.roi_frames = 0  # frames followed through the crop
        self.reset()

    # -- lifetime ----------------------------------------------------------------------------------
    def reset(self, seed: np.ndarray | None = None, time_s: float = 0.0, image_size: tuple[int, int] | None = None
              ) -> None:
        """A fresh tracking state (MediaPipe's video mode restarts), optionally following on from
        the face whose points (original pixels) are ``seed`` in a frame of ``image_size`` (e.g. the
        previous frame's landmarks): the same person, the same way (crop or whole frame)."""
        self._restart()
        self.window, self.last, self.following = None, None, False
        # what steers the landmarks restarts too, so a block gives the same landmarks wherever a
        # run starts (the video pipeline restarts every 64 frames; a resumed run at such a start)
        self._several = False  # several faces seen since the restart: follow through the crop
        self._last_tiled, self._last_scan = -np.inf, time_s
        if seed is not None and np.isfinite(seed).all() and image_size is not None:
            c, s = face_centre(seed), face_size(seed)
            self.last = (c, s, time_s)
            self.following = True
            if self._use_roi(s, image_size):
                self.window = (c, ROI_SCALE * s)

    def _restart(self) -> None:
        """MediaPipe's video mode starts afresh: its graph is created when next used (a graph costs
        ~30 ms; a block's restart followed by a search used to create two, the first unused)."""
        if self._video is not None:
            self._video.close()
            self._video = None

    def _tracker(self) -> FaceLandmarker:
        """MediaPipe's video-mode landmarker of the current track (created on first use)."""
        if self._video is None:
            self._video = FaceLandmarker(self.path, mode="video", transformation_matrix=False, verbose=self.verbose,
                                         max_side=self.max_side)
        return self._video

    def close(self) -> None:
        """Release MediaPipe (idempotent)."""
        if self._video is not None:
            self._video.close()
            self._video = None
        self.finder.close()

    def __enter__(self) -> FaceFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- per frame -----------------------------------------------------------------------------------
    def _use_roi(self, size: float, image_size: tuple[int, int]) -> bool:
        """Follow through the crop: a face small in the whole-frame input, or several people."""
        if not self.roi:
            return False
        shrink = max(1.0, max(image_size) / self.max_side)
        return self._several or size / shrink < WHOLE_FRAME_PX

    def __call__(self, image: np.ndarray, time_s: float) -> FaceDetection | None:
        ts = time_s * 1000.0
        det = None
        if self.following:
            if self.window is not None:
                self.roi_frames += 1
                det = self._nearest(self._tracker().detect_region(image, tuple(self.window[0]), self.window[1], ts,
                                                                  ROI_PX))
                if det is None:  # MediaPipe's tracking lost the face: look where it just was first
                    det = self._recover(image)
            else:
                det = self._nearest(self._tracker().detect_all(image, timestamp_ms=ts))
        if det is None:
            det = self._search(image, time_s)
        elif time_s - self._last_scan >= self.rescan_s:  # notice people entering the picture
            self._last_scan = time_s
            n = len(self.finder.whole_frame(image))
            self.faces_seen = max(self.faces_seen, n)
            if n > 1 and not self._several:
                self._several = True
                if self.window is None and self.roi:  # several people: follow by place, through the crop
                    self._restart()
                    self.window = _crop_of(det)
        if det is not None:
            self._follow(det, time_s, (image.shape[1], image.shape[0]))
        else:
            self.following, self.window = False, None
        return det

    def _nearest(self, faces: list[FaceDetection]) -> FaceDetection | None:
        """Of the faces found, the one nearest where the followed face was (None if far off)."""
        if not faces or self.last is None:
            return faces[0] if faces else None
        c, s, _ = self.last
        best = min(faces, key=lambda f: float(np.linalg.norm(face_centre(f.points478) - c)))
        return best if np.linalg.norm(face_centre(best.points478) - c) < 0.75 * s else None

    def _recover(self, image: np.ndarray) -> FaceDetection | None:
        """The followed face detected afresh (image mode) in the crop around where it was on the
        previous frame, for a face MediaPipe's video tracking dropped in the crop while it is still
        there: one detection (~10 ms) instead of the whole search (the tiles: ~0.1 s in a 1080p
        frame). Found, tracking restarts on it as after a search; else None (the search follows)."""
        if self.last is None:
            return None
        det = self._nearest(self.finder.around(image, self.last[0], self.last[1]))
        if det is not None:
            self._restart()
            self.window = _crop_of(det)
        return det

    def _search(self, image: np.ndarray, time_s: float) -> FaceDetection | None:
        """The whole-frame pass (and, at most every ``tile_every_s``, the tiles); the face nearest
        the last place seen (within a face size or two), else the one ``choice`` wants."""
        self.searches += 1
        tiled = self.roi and time_s - self._last_tiled >= self.tile_every_s
        # the first acquisition of a chosen person (not simply the largest) looks at every face
        exhaustive = self.roi and self.last is None and self.choice.rule != "largest"
        faces = self.finder.find(image, tiled=tiled or exhaustive, first_hit=not exhaustive, exhaustive=exhaustive)
        if self.finder.n_tiles:
            self._last_tiled = time_s
        self._last_scan = time_s
        self.faces_seen = max(self.faces_seen, len(faces))
        self._several = self._several or len(faces) > 1
        if not faces:
            return None
        pick = None
        if self.last is not None:
            c, s, _ = self.last
            near = min(faces, key=lambda f: float(np.linalg.norm(face_centre(f.points478) - c)))
            if np.linalg.norm(face_centre(near.points478) - c) < 1.5 * s:
                pick = near
        pick = pick or self.choice.pick(faces)
        if pick is not None:
            self._restart()  # MediaPipe's tracking starts on the new face, in its new input
            self.window = None
            if self._use_roi(face_size(pick.points478), (image.shape[1], image.shape[0])):
                self.window = _crop_of(pick)
        return pick

    def _follow(self, det: FaceDetection, time_s: float, image_size: tuple[int, int]) -> None:
        """Move the ROI with the face, only when it drifts by :data:`ROI_DEADBAND` (MediaPipe's
        frame-to-frame tracking is steadiest on a still input: measured, moving the crop every
        frame added 17 % to the landmarks' jitter, the dead band 2 %)."""
        c, s = face_centre(det.points478), face_size(det.points478)
        self.last = (c, s, time_s)
        self.following = True
        if self.window is None:
            return
        wc, ws = self.window
        side = ROI_SCALE * s
        if np.linalg.norm(c - wc) > ROI_DEADBAND * ws or abs(side / ws - 1.0) > ROI_DEADBAND:
            self.window = (c, side)


__all__ = ["DETECTABLE_FRACTION", "MIN_FACE_PX", "ROI_DEADBAND", "ROI_PX", "ROI_SCALE", "TILE_DETECTION_CONFIDENCE",
           "REFINE_BELOW_FRACTION", "WHOLE_FRAME_PX",
           "FaceChoice", "FaceFinder", "FaceFollower", "distinct", "face_centre", "face_size",
           "tile_sides", "tiles"]
