"""images.py: RGB uint8 reading, EXIF orientation, odd modes, truncated files, same pixels as OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from kubedistill.core.errors import DataError
from kubedistill.data.images import ImageReadError, image_size, read_image, verify_image


def _pattern(h: int = 20, w: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    f = tmp_path / f"o{orientation}.png"  # lossless, so the comparison is exact
    Image.fromarray(_pattern()).save(f, exif=_exif(orientation))
    with Image.open(f) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    got = read_image(f)
    assert got.dtype == np.uint8 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    h, w = want.shape[:2]
    assert image_size(f) == (w, h)
    assert verify_image(f) == (w, h)


def test_exif_rotated_jpeg_shape(tmp_path):
    f = tmp_path / "rot.jpg"
    Image.fromarray(_pattern(20, 40)).save(f, exif=_exif(6), quality=95)  # stored 40 wide, 20 high
    img = read_image(f)
    assert img.shape == (40, 20, 3)
    assert image_size(f) == (20, 40)
    assert verify_image(f) == (20, 40)


def test_colour_order_is_rgb(tmp_path):
    f = tmp_path / "red.png"
    a = np.zeros((8, 8, 3), np.uint8)
    a[..., 0] = 255
    Image.fromarray(a).save(f)
    assert read_image(f)[0, 0].tolist() == [255, 0, 0]


def test_gray_rgba_and_16bit_become_rgb_uint8(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(g).save(tmp_path / "g.png")
    Image.fromarray(np.dstack([_pattern(8, 8), np.full((8, 8), 7, np.uint8)])).save(tmp_path / "a.png")
    g16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    for name in ("g.png", "a.png", "g16.png"):
        img = read_image(tmp_path / name)
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8, name
    img = read_image(tmp_path / "g16.png")
    assert img[..., 0].max() > 200 and img[0, 0, 0] == 0  # scaled, not clipped
    np.testing.assert_array_equal(read_image(tmp_path / "g.png")[..., 1], g)


def test_truncated_and_garbage_files_raise(tmp_path):
    data_jpg = cv2.imencode(".jpg", _pattern(64, 64))[1].tobytes()
    data_png = cv2.imencode(".png", _pattern(64, 64))[1].tobytes()
    (tmp_path / "t.jpg").write_bytes(data_jpg[: len(data_jpg) // 2])
    (tmp_path / "t.png").write_bytes(data_png[: len(data_png) // 2])
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("t.jpg", "t.png", "junk.jpg", "empty.png"):
        with pytest.raises(ImageReadError) as e:
            read_image(tmp_path / name)
        assert isinstance(e.value, DataError) and e.value.fix, name
        with pytest.raises(ImageReadError):
            verify_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="truncated"):
        verify_image(tmp_path / "t.jpg")
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError):
        image_size(tmp_path / "junk.jpg")


def test_jpeg_with_trailing_bytes_still_reads(tmp_path):
    data = cv2.imencode(".jpg", _pattern(16, 16))[1].tobytes()
    (tmp_path / "x.jpg").write_bytes(data + b"\x00\x00garbage")
    assert read_image(tmp_path / "x.jpg").shape == (16, 16, 3)


@pytest.mark.parametrize("fmt", ["cv2.jpg", "pil420.jpg", "pil444.jpg", "grey.jpg", "png"])
def test_decode_matches_opencv(tmp_path, fmt):
    """Pillow decodes to the pixels OpenCV's imdecode gave training before the switch (within 1, in practice equal)."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:97, 0:131]
    img = np.clip(np.dstack([x * 1.9, y * 2.5, (x + y) * 1.1]) + rng.normal(0, 20, (97, 131, 3)), 0, 255).astype(
        np.uint8
    )
    f = tmp_path / ("x.png" if fmt == "png" else "x.jpg")
    if fmt == "cv2.jpg":
        cv2.imwrite(str(f), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    elif fmt == "grey.jpg":
        Image.fromarray(img[..., 0]).save(f, quality=90)
    elif fmt == "png":
        Image.fromarray(img).save(f)
    else:
        Image.fromarray(img).save(f, quality=90, subsampling=2 if fmt == "pil420.jpg" else 0)
    want = cv2.cvtColor(cv2.imread(str(f), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    got = read_image(f)
    assert got.shape == want.shape and np.abs(got.astype(int) - want.astype(int)).max() <= 1
