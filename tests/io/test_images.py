"""Image loading (EXIF, RGBA, grey, 16-bit, bad files) and transforms back to original pixels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from flame_tracker.io.images import (
    ImageError,
    ImageTransform,
    crop_resize,
    load_image,
    resize_max_side,
    to_rgb_uint8,
)


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)


def test_png_roundtrip_any_aspect(rgb: np.ndarray, tmp_path: Path) -> None:
    p = tmp_path / "a.png"
    Image.fromarray(rgb).save(p)
    out = load_image(p)
    assert out.dtype == np.uint8 and out.shape == (24, 40, 3)
    np.testing.assert_array_equal(out, rgb)


def test_greyscale_becomes_rgb(tmp_path: Path) -> None:
    g = np.arange(200, dtype=np.uint8).reshape(10, 20)
    Image.fromarray(g).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (10, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., 0] = 200
    a[:2, :, 3] = 255  # top opaque red, bottom fully transparent
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])
    half = a.copy()
    half[..., 3] = 128
    mixed = to_rgb_uint8(half, background=0)
    np.testing.assert_allclose(mixed[0, 0], [200 * 128 / 255, 0, 0], atol=1)


@pytest.mark.parametrize("grey", [False, True])
def test_16bit_png_keeps_the_high_byte(tmp_path: Path, grey: bool) -> None:
    rng = np.random.default_rng(1)
    shape = (12, 16) if grey else (12, 16, 3)
    a16 = rng.integers(0, 65536, shape, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "x.png"), a16 if grey else a16[..., ::-1])  # cv2 writes BGR
    out = load_image(tmp_path / "x.png")
    expect = np.rint(a16 / 257.0).astype(np.uint8)
    if grey:
        expect = np.repeat(expect[..., None], 3, axis=2)
    np.testing.assert_array_equal(out, expect)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(rgb: np.ndarray, tmp_path: Path, orientation: int) -> None:
    # A flat-coloured quadrant marks the stored top-left; check where it lands after rotation.
    img = np.zeros((40, 60, 3), np.uint8)
    img[:20, :30] = (250, 10, 10)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / "r.jpg"
    Image.fromarray(img).save(p, exif=exif, quality=95)
    out = load_image(p)
    expected = {3: ((40, 60), (35, 55)), 6: ((60, 40), (5, 35)), 8: ((60, 40), (55, 5))}
    (h, w), (y, x) = expected[orientation]
    assert out.shape[:2] == (h, w)
    assert out[y, x, 0] > 200 and out[y, x, 1] < 60


def test_bad_files_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.jpg").write_text("hello, not an image")
    with pytest.raises(ImageError, match="text.jpg"):
        load_image(tmp_path / "text.jpg")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match="trunc.png"):
        load_image(tmp_path / "trunc.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_bad_arrays_give_clear_errors() -> None:
    with pytest.raises(ImageError, match="empty"):
        to_rgb_uint8(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ImageError, match="shape"):
        to_rgb_uint8(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageError, match="dtype"):
        to_rgb_uint8(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(ImageError, match="NaN"):
        to_rgb_uint8(np.full((4, 4, 3), np.nan))
    np.testing.assert_array_equal(to_rgb_uint8(np.ones((2, 2, 3))), np.full((2, 2, 3), 255))


def test_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.new("L", (5000, 4000)).save(p)  # 20 MP, compresses to a few kB
    with pytest.raises(ImageError, match="MP"):
        load_image(p, max_pixels=10_000_000)
    assert load_image(p).shape == (4000, 5000, 3)  # under the default limit it loads


def test_giant_header_gives_our_error_not_pils(tmp_path: Path) -> None:
    """A 40000×30000 PNG header (1.2 GP) must be refused by size before any decoding."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 40000, 30000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    p = tmp_path / "giant.png"
    data = b"IDAT" + zlib.compress(b"\x00" * 64)  # PIL reads chunks up to the first IDAT only
    p.write_bytes(png + struct.pack(">I", len(data) - 4) + data + struct.pack(">I", zlib.crc32(data)))
    with pytest.raises(ImageError, match="1200 MP"):
        load_image(p)
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's guard restored


def test_resize_transform_maps_back_to_original() -> None:
    img = np.zeros((1000, 3000, 3), np.uint8)
    small, tf = resize_max_side(img, 600)
    assert small.shape == (200, 600, 3) and tf.size == (600, 200) and tf.original_size == (3000, 1000)
    pts = np.array([[0.0, 0.0], [600.0, 200.0], [300.0, 50.0]])
    np.testing.assert_allclose(tf.to_original(pts), [[0, 0], [3000, 1000], [1500, 250]])
    np.testing.assert_allclose(tf.from_original(tf.to_original(pts)), pts)
    same, ident = resize_max_side(img, 4000)
    assert same is img and ident == ImageTransform.identity((3000, 1000))


def test_crop_resize_content_and_transform() -> None:
    # A bright pixel at original (x=70, y=30) must appear where the transform says.
    img = np.zeros((100, 200, 3), np.uint8)
    img[30, 70] = 255
    crop, tf = crop_resize(img, (50, 10, 40, 40), (80, 80))
    ys, xs = np.nonzero(crop[..., 0] > 40)
    centre = np.array([[xs.mean() + 0.5, ys.mean() + 0.5]])  # pixel-corner convention
    np.testing.assert_allclose(tf.to_original(centre), [[70.5, 30.5]], atol=0.3)
    # Composition: a resize of the crop maps back through both transforms.
    small, tf2 = resize_max_side(crop, 40)
    both = tf.then(tf2)
    np.testing.assert_allclose(both.to_original(np.array([[20.0, 20.0]])), [[70.0, 30.0]])
    assert both.original_size == (200, 100) and both.size == (40, 40)
    exact, _ = crop_resize(img, (50, 10, 40, 40), (40, 40))
    np.testing.assert_array_equal(exact, img[10:50, 50:90])
    # A box leaving the image is padded, not an error.
    pad, _ = crop_resize(img, (-50, -50, 100, 100), (10, 10))
    assert pad[0, 0].sum() == 0


def test_picture_size_is_the_upright_size(tmp_path: Path) -> None:
    """A portrait phone photo stored landscape with an EXIF rotation: its size is read upright, as
    ``load_image`` returns the picture (the multi-view camera sizes and checks rely on it)."""
    from flame_tracker.io.images import load_image, picture_size

    img = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "portrait.jpg", exif=exif)
    img.save(tmp_path / "plain.jpg")
    assert picture_size(tmp_path / "portrait.jpg") == (30, 40)
    assert load_image(tmp_path / "portrait.jpg").shape[:2] == (40, 30)
    assert picture_size(tmp_path / "plain.jpg") == (40, 30)
