"""Reading images: RGB uint8, EXIF orientation applied. Torch-free and OpenCV-free (the inference server uses it).

Decoding goes through Pillow's full decoder (it raises on truncated files; its libjpeg-turbo gives the
same pixels as OpenCV's `imdecode`, checked in tests/unit/test_data_images.py), grey, RGBA, palette and
16-bit input become RGB uint8, and the EXIF orientation tag is applied here, so that `read_image`,
`image_size` and `verify_image` agree on every format.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kubedistill.core.env import env_number
from kubedistill.core.errors import DataError

IMG_FORMATS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Bounds on one dataset image, checked before it is read or decoded (a file linked to /dev/zero, a 40,000 x 40,000
# PNG of a few KB); environment variables change them. The server has its own, lower pixel limits
# (serve.config.ServeConfig).
MAX_IMAGE_MB = 256
MAX_IMAGE_PIXELS = 100_000_000


def max_image_bytes() -> int:
    return int(env_number("KUBEDISTILL_MAX_IMAGE_MB", MAX_IMAGE_MB, strict=True) * 2**20)


def max_image_pixels() -> int:
    return int(env_number("KUBEDISTILL_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS, strict=True))


_ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)


class ImageReadError(DataError):
    """An image file that cannot be read (missing, not an image, truncated, corrupt).

    `reason` holds the short why (e.g. "file is truncated") without the path.
    """

    reason: str = ""


def is_image_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMG_FORMATS


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device")):
        if test(mode):
            return name
    return "a block device" if stat.S_ISBLK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"


def read_regular(path: str | Path, max_bytes: int | None = None, what: str = "Image") -> bytes:
    """The bytes of a regular file of at most `max_bytes` (default: `max_image_bytes()`); `ImageReadError`
    otherwise. A FIFO, socket or device (also through a link, e.g. to /dev/zero) is refused before it is opened,
    so a read can neither hang nor grow without bound."""
    path = Path(path)
    max_bytes = max_image_bytes() if max_bytes is None else max_bytes
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            err = ImageReadError(f"{what} '{path}' is {_kind(st.st_mode)}", "Remove it from the dataset")
            err.reason = _kind(st.st_mode)
            raise err
        if st.st_size > max_bytes:
            why = f"{st.st_size / 2**20:.0f} MB, more than the limit of {max_bytes / 2**20:.0f} MB"
            err = ImageReadError(f"{what} '{path}' is {why}", "Downscale it, or raise KUBEDISTILL_MAX_IMAGE_MB")
            err.reason = why
            raise err
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        err = ImageReadError(f"{what} '{path}' does not exist", "Check the path or remove it from the split")
        err.reason = "missing"
        raise err from None
    except OSError as e:
        err = ImageReadError(
            f"{what} '{path}' cannot be read ({e.strerror or e.__class__.__name__})", "Check the file's permissions"
        )
        err.reason = e.strerror or e.__class__.__name__
        raise err from None
    if len(data) > max_bytes:  # grew while read
        err = ImageReadError(f"{what} '{path}' is larger than {max_bytes / 2**20:.0f} MB", "Downscale it")
        err.reason = "file too large"
        raise err
    return data


def _read_bytes(path: Path) -> bytes:
    return read_regular(path)


@contextlib.contextmanager
def open_image(src, path: str | Path = "<bytes>", max_pixels: int | None = None) -> Iterator[Image.Image]:
    """Pillow's Image.open (the header only) with kubedistill's pixel limit (default: `max_image_pixels()`)
    checked before any decoding, in place of Pillow's DecompressionBombWarning."""
    max_pixels = max_image_pixels() if max_pixels is None else max_pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(src)
        except Image.DecompressionBombError as e:  # Pillow's own limit (2 x 89 MP) came first: its message has the size
            m = re.search(r"\((\d+) pixels\)", str(e))
            raise _too_many_pixels(path, int(m.group(1)) if m else None, max_pixels) from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise _too_many_pixels(path, w * h, max_pixels, f"{w}x{h} = ")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield im


def _too_many_pixels(path, pixels: int | None, max_pixels: int, dims: str = "") -> ImageReadError:
    got = f"{dims}{pixels:,} pixels" if pixels else "too many pixels"
    err = ImageReadError(
        f"Image '{path}' is {got}, more than the limit of {max_pixels:,}",
        "Downscale it, or raise KUBEDISTILL_MAX_IMAGE_PIXELS",
    )
    err.reason = f"{got}, more than {max_pixels:,}"
    return err


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # a broken EXIF block is not a broken image
        return 1


_ORIENT_FLIPS = {  # after a transpose for 5..8: which axes to reverse
    2: (slice(None), slice(None, None, -1)),
    3: (slice(None, None, -1),) * 2,
    4: (slice(None, None, -1),),
    5: (),
    6: (slice(None), slice(None, None, -1)),
    7: (slice(None, None, -1),) * 2,
    8: (slice(None, None, -1),),
}


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation value (1..8) to an HxW[xC] array, as `PIL.ImageOps.exif_transpose` does."""
    if orientation not in _ORIENT_FLIPS:
        return img
    t = img.swapaxes(0, 1) if orientation >= 5 else img
    return np.ascontiguousarray(t[_ORIENT_FLIPS[orientation]])


def _to_rgb_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Pillow array in any mode -> RGB uint8 (16-bit and float scaled, not clipped)."""
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        if mode.startswith("I;16") or (arr.dtype.kind in "iu" and a.size and a.max() > 255):
            a = a / 257.0
        elif arr.dtype.kind == "f" and a.size and a.max() <= 1.0:
            a = a * 255.0
        arr = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.shape[2] == 2:  # LA
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(arr)


def _pil_decode(data: bytes, path: Path) -> np.ndarray:
    """Full Pillow decode (raises on truncation), orientation applied, RGB uint8."""
    try:
        with open_image(io.BytesIO(data), path) as im:
            return pil_to_rgb(im, path)
    except Exception as e:
        raise _read_error(path, e) from None


def pil_to_rgb(im: Image.Image, path: str | Path = "<bytes>") -> np.ndarray:
    """An opened Pillow image, decoded in full (raises `ImageReadError` on truncation): RGB uint8 HxWx3,
    EXIF orientation applied. For callers that look at the header first (the server checks the size)."""
    try:
        orientation = _orientation(im)
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "RGB", "RGBA", "LA"):
            arr = _to_rgb_uint8(np.asarray(im), im.mode)
        else:  # P, CMYK, YCbCr, 1, ...
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:
        raise _read_error(Path(path), e) from None
    return apply_orientation(arr, orientation)


def _read_error(path: Path, e: BaseException) -> ImageReadError:
    if isinstance(e, ImageReadError):
        return e
    if isinstance(e, UnidentifiedImageError):
        why = "not a recognised image format"
    else:
        why = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        if "truncated" in why.lower():
            why = "file is truncated"
    err = ImageReadError(
        f"Image '{path}' cannot be decoded ({why})", "Re-export or re-download the file, or remove it from the split"
    )
    err.reason = why
    return err


def decode_image(data: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 HxWx3 with EXIF orientation applied."""
    path = Path(path)
    if not data:
        raise ImageReadError(f"Image '{path}' is an empty file", "Re-export the file or remove it from the split")
    return _pil_decode(data, path)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 HxWx3, EXIF orientation applied. Raises `ImageReadError`."""
    path = Path(path)
    return decode_image(_read_bytes(path), path)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header only (no full decode)."""
    path = Path(path)
    try:
        if not path.is_file():
            read_regular(path)  # the missing / not-a-regular-file message
        with open_image(path, path) as im:
            w, h = im.size
            if _orientation(im) in _SWAPS_SIDES:
                w, h = h, w
    except FileNotFoundError:
        raise ImageReadError(f"Image '{path}' does not exist", "Check the path or remove it from the split") from None
    except Exception as e:
        raise _read_error(path, e) from None
    return int(w), int(h)


def verify_image(path: str | Path, data: bytes | None = None) -> tuple[int, int]:
    """Fully decode the image to detect truncation/corruption; return (width, height) after EXIF.

    `data` may hold the file's bytes when the caller already read them (e.g. to hash them).
    """
    path = Path(path)
    if data is None:
        data = _read_bytes(path)
    if not data:
        err = ImageReadError(f"Image '{path}' is an empty file", "Re-export the file or remove it from the split")
        err.reason = "empty file"
        raise err
    try:
        with open_image(io.BytesIO(data), path) as im:
            w, h = im.size
            orientation = _orientation(im)
            im.load()  # full decode: raises on truncated data
    except Exception as e:
        raise _read_error(path, e) from None
    if w < 1 or h < 1:
        raise ImageReadError(f"Image '{path}' has no pixels ({w}x{h})", "Remove it from the split")
    if orientation in _SWAPS_SIDES:
        w, h = h, w
    return int(w), int(h)
