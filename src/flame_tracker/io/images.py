"""Image loading and resampling that never loses the original frame.

``load_image`` turns any common image file (or array) into an RGB ``uint8`` ``H×W×3`` array in the
orientation a person sees it: EXIF rotation applied, alpha composited, greyscale expanded, 16-bit
reduced to 8-bit. Every resize or crop returns an :class:`ImageTransform` that maps pixel
coordinates of the processed image back to the original one, so all results can be reported in
original pixels (pixel coordinates: x right, y down, origin at the top-left corner of the top-left
pixel, see ``docs/architecture.md``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from flame_tracker.errors import FlameTrackerError, InputError

# Refuse decoding beyond this many pixels (a 16k × 16k image is 768 MiB as RGB); PIL's own
# decompression-bomb guard is replaced by this explicit, documented limit.
MAX_PIXELS = 268_435_456


class ImageError(FlameTrackerError, ValueError):
    """An image file or array cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageTransform:
    """Axis-aligned scale + offset from a processed image to the original image.

    ``original = processed * scale + offset`` for pixel coordinates ``(x, y)``. ``size`` is the
    processed image's ``(W, H)``, ``original_size`` the original's.
    """

    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)
    size: tuple[int, int] = (0, 0)
    original_size: tuple[int, int] = (0, 0)

    @classmethod
    def identity(cls, size: tuple[int, int]) -> ImageTransform:
        """The transform of an image that was not changed (``size`` = ``(W, H)``)."""
        return cls((1.0, 1.0), (0.0, 0.0), size, size)

    @property
    def matrix(self) -> np.ndarray:
        """3×3 homogeneous matrix mapping processed to original pixels."""
        (sx, sy), (ox, oy) = self.scale, self.offset
        return np.array([[sx, 0.0, ox], [0.0, sy, oy], [0.0, 0.0, 1.0]])

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Map ``[..., 2+]`` points (x, y first) from processed to original pixels.

        Extra columns (e.g. MediaPipe's z, which is in x's pixel scale) are scaled by ``scale[0]``.
        """
        pts = np.asarray(points, dtype=np.float64)
        out = pts * self.scale[0]
        out[..., 1] = pts[..., 1] * self.scale[1]
        out[..., :2] += self.offset
        return out

    def from_original(self, points: np.ndarray) -> np.ndarray:
        """Map ``[..., 2+]`` points from original to processed pixels (inverse of ``to_original``)."""
        pts = np.asarray(points, dtype=np.float64).copy()
        pts[..., :2] -= self.offset
        out = pts / self.scale[0]
        out[..., 1] = pts[..., 1] / self.scale[1]
        return out

    def then(self, inner: ImageTransform) -> ImageTransform:
        """Compose: ``inner`` maps a further-processed image to this transform's processed image."""
        scale = (inner.scale[0] * self.scale[0], inner.scale[1] * self.scale[1])
        offset = (
            inner.offset[0] * self.scale[0] + self.offset[0],
            inner.offset[1] * self.scale[1] + self.offset[1],
        )
        return ImageTransform(scale, offset, inner.size, self.original_size)


def _describe(source: object) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "image array"


#: Float pixels are read as [0, 255] (what ``img.astype(np.float32)`` of an 8-bit picture gives) when
#: over 5 % of them exceed this, else as [0, 1] (a sharpened or resampled picture overshoots 1 here
#: and there); up to 255 * FLOAT_OVERSHOOT.
FLOAT_OVERSHOOT = 1.1


def to_rgb_uint8(array: np.ndarray, *, name: str = "image array", background: int = 255) -> np.ndarray:
    """Convert a greyscale, RGB or RGBA array (uint8, uint16, or float in [0, 1] or in [0, 255]) to RGB
    uint8.

    Floats are taken as [0, 255] when over 5 % of them exceed :data:`FLOAT_OVERSHOOT`, else as [0, 1]
    (both clipped). Alpha is composited over a uniform ``background`` grey level (white by
    default), because a transparent background would otherwise become black or arbitrary colours
    behind the face.
    """
    if not isinstance(array, np.ndarray):
        array = _as_array(array, name)
    a = np.asarray(array)
    if a.size == 0 or a.ndim < 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"{name} is empty (shape {a.shape}); expected H×W, H×W×3 or H×W×4 pixels.")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"{name} has shape {a.shape}; expected H×W, H×W×1, H×W×3 or H×W×4.")
    if a.dtype == np.uint8:
        f = None
    elif a.dtype == np.uint16:
        f = a.astype(np.float32) / 65535.0
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError(f"{name} contains NaN or infinite values.")
        f = a.astype(np.float32)
        top = float(f.max())
        if top > 255.0 * FLOAT_OVERSHOOT:
            raise ImageError(f"{name} has float values up to {top:g}; use floats in [0, 1] or [0, 255], uint8 "
                             "or uint16 pixels.")
        f = np.clip(f / 255.0 if np.mean(f > FLOAT_OVERSHOOT) > 0.05 else f, 0.0, 1.0)
    elif a.dtype == bool:
        raise ImageError(f"{name} is boolean (a mask?); give the picture's pixels as uint8, uint16 or float.")
    else:
        raise ImageError(f"{name} has unsupported dtype {a.dtype}; use uint8, uint16, or float in [0, 1] or "
                         "[0, 255].")
    c = a.shape[2]
    has_alpha = c in (2, 4)
    if f is None and not has_alpha:
        rgb = a if c == 3 else np.repeat(a, 3, axis=2)
        return np.ascontiguousarray(rgb)
    if f is None:
        f = a.astype(np.float32) / 255.0
    colour = f[..., : c - 1] if has_alpha else f
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    if has_alpha:
        alpha = f[..., -1:]
        colour = colour * alpha + (background / 255.0) * (1.0 - alpha)
    return np.ascontiguousarray(np.rint(colour * 255.0).astype(np.uint8))


def _as_array(image: object, name: str) -> np.ndarray:
    """A PIL image or an array-like of pixels (a torch tensor on the CPU, H×W×C) as a numpy array;
    :class:`ImageError` naming what is accepted for anything else."""
    if isinstance(image, Image.Image):
        return _pil_to_array(ImageOps.exif_transpose(image))  # (upright, as load_image reads its file)
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # torch: no import of it here
        t = image.detach().cpu()
        # (half-precision floats have no numpy twin for bfloat16: as float32)
        return np.asarray(t.float() if t.dtype.is_floating_point and t.dtype.itemsize < 4 else t)
    if isinstance(image, (list, tuple)) and image and not isinstance(image[0], (str, os.PathLike, bytes)):
        return np.asarray(image)
    raise ImageError(f"{name}: got {type(image).__name__}; give a file path or the picture's pixels as an H×W×3 "
                     "RGB array (numpy, uint8) or a PIL image")


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """PIL image (any mode) to a numpy array that ``to_rgb_uint8`` understands, keeping 16 bits."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16)
    if mode == "I":  # 32-bit int greyscale, as PIL reports most 16-bit PNGs
        arr = np.asarray(img)
        return np.clip(arr, 0, 65535).astype(np.uint16) if arr.max(initial=0) > 255 else arr.astype(np.uint8)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        return arr / 255.0 if arr.max(initial=0.0) > 1.0 else arr
    if mode in ("L", "RGB", "RGBA", "LA"):
        return np.asarray(img)
    if mode == "P" and "transparency" in img.info:
        return np.asarray(img.convert("RGBA"))
    if mode == "PA":
        return np.asarray(img.convert("RGBA"))
    return np.asarray(img.convert("RGB"))  # P, CMYK, YCbCr, 1, ...


def picture_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of the picture at ``path`` as :func:`load_image` returns it (upright: an
    EXIF rotation by 90° swaps the stored sides), read from the header without decoding."""
    with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def load_image(
    source: str | os.PathLike[str] | np.ndarray,
    *,
    max_pixels: int = MAX_PIXELS,
    background: int = 255,
) -> np.ndarray:
    """Load an image as RGB uint8 ``H×W×3``, upright as displayed.

    Handles any aspect ratio, greyscale, palette, RGBA/LA (composited over ``background``), 16-bit
    PNG/TIFF (48/64-bit colour PNG is read through OpenCV: PIL truncates it), and EXIF
    orientation (JPEG/TIFF/PNG). Arrays (numpy; a PIL image or a CPU torch tensor, H×W×C, is
    converted) are taken as RGB(A) or greyscale and only converted (:func:`to_rgb_uint8`).
    Raises :class:`ImageError` (or ``FileNotFoundError``) with the file name and what is wrong.
    """
    if not isinstance(source, (str, os.PathLike)):
        return to_rgb_uint8(source, background=background)  # type: ignore[arg-type]  # (PIL, torch: converted)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"Image {path} does not exist.")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file.")
    if path.stat().st_size == 0:
        raise ImageError(f"Image {path} is empty (0 bytes).")
    # PIL's decompression-bomb guard (which fires inside Image.open) is replaced by the explicit,
    # documented max_pixels check; restored afterwards.
    old_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with warnings.catch_warnings(), Image.open(path) as img:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"Image {path} is {w}×{h} = {w * h / 1e6:.0f} MP, above the {max_pixels / 1e6:.0f} MP "
                    "limit; downscale it first or raise max_pixels."
                )
            if w == 0 or h == 0:
                raise ImageError(f"Image {path} has no pixels ({w}×{h}).")
            wide = _read_wide_colour(path, img)
            if wide is not None:
                return to_rgb_uint8(wide, name=str(path), background=background)
            arr = _pil_to_array(ImageOps.exif_transpose(img))
    except UnidentifiedImageError as exc:
        from flame_tracker.io.suffixes import VIDEO_SUFFIXES

        if Path(path).suffix.lower() in VIDEO_SUFFIXES:
            raise ImageError(f"{path} is a video, not a photo: track it with `flame-tracker video {path}`") from exc
        raise ImageError(f"Cannot read {path}: not an image format flame-tracker can decode.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"Cannot read {path}: the file is truncated or corrupt ({exc}).") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return to_rgb_uint8(arr, name=str(path), background=background)


def _read_wide_colour(path: Path, img: Image.Image) -> np.ndarray | None:
    """Read 16-bit-per-channel colour files with OpenCV (PIL reduces them to 8 bits badly).

    Returns ``None`` for everything PIL handles well. EXIF orientation is applied by hand because
    ``IMREAD_UNCHANGED`` ignores it.
    """
    if not (img.format == "PNG" and img.mode in ("RGB", "RGBA") and _png_bit_depth(path) == 16):
        return None
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 3:
        return None
    rgb = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGBA if raw.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    orientation = img.getexif().get(0x0112, 1)
    return _apply_orientation(rgb, orientation)


def _png_bit_depth(path: Path) -> int:
    """Bit depth byte of a PNG's IHDR chunk (PIL does not expose it for colour images)."""
    with open(path, "rb") as f:
        head = f.read(25)
    return head[24] if len(head) >= 25 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def _apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation tag (1..8) to an ``H×W×C`` array."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: np.swapaxes(x, 0, 1),
        6: lambda x: np.swapaxes(x, 0, 1)[:, ::-1],
        7: lambda x: np.swapaxes(x, 0, 1)[::-1, ::-1],
        8: lambda x: np.swapaxes(x, 0, 1)[::-1],
    }
    return np.ascontiguousarray(ops[orientation](a)) if orientation in ops else a


def resize_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, ImageTransform]:
    """Downscale so that the longer side is at most ``max_side`` (never upscales).

    Returns the resized image and the transform back to ``image``'s pixels.
    """
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, ImageTransform.identity((w, h))
    s = max_side / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    # INTER_AREA averages source pixels: no aliasing when shrinking a lot.
    small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return small, ImageTransform((w / nw, h / nh), (0.0, 0.0), (nw, nh), (w, h))


def crop_resize(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    out_size: tuple[int, int],
    *,
    border_value: int = 0,
) -> tuple[np.ndarray, ImageTransform]:
    """Crop ``box = (x0, y0, width, height)`` (original pixels, may leave the image) and resize it
    to ``out_size = (W, H)``; outside pixels get ``border_value``. Returns the crop and its
    transform back to ``image``'s pixels.
    """
    x0, y0, bw, bh = map(float, box)
    if bw <= 0 or bh <= 0:
        raise InputError(f"crop box {box} must have a positive width and height")
    ow, oh = int(out_size[0]), int(out_size[1])
    sx, sy = bw / ow, bh / oh
    # Pixel-corner convention: original (x, y) = (u*sx + x0, v*sy + y0). warpAffine works on pixel
    # indices (centres), hence u_idx = (x_idx + 0.5 - x0) / sx - 0.5.
    m = np.array(
        [[1 / sx, 0.0, (0.5 - x0 - 0.5 * sx) / sx], [0.0, 1 / sy, (0.5 - y0 - 0.5 * sy) / sy]]
    )
    out = cv2.warpAffine(
        image, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(border_value,) * 3
    )
    h, w = image.shape[:2]
    return out, ImageTransform((sx, sy), (x0, y0), (ow, oh), (w, h))
