"""What a request brings in: its media type, its body (with the size limit) and its images (decoded with
the size checked from the header first). Bad input is a `ServeError` with a 4xx code, never a 500."""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image
from starlette.requests import ClientDisconnect, Request

from kubedistill.data.images import ImageReadError, pil_to_rgb
from kubedistill.serve.protocol import ServeError

IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF", "MPO", "PPM")  # Pillow names; nothing that shells out
IMAGE_MEDIA = (
    "image/jpeg",
    "image/png",
    "image/bmp",
    "image/webp",
    "image/gif",
    "image/tiff",
    "application/octet-stream",
)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes."""
    too_big = f"request body is larger than the limit of {limit / 2**20:g} MiB (--max-body-mb)"
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise ServeError(400, "invalid Content-Length header") from None
        if n > limit:
            raise ServeError(413, too_big)
    chunks, total = [], 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ServeError(413, too_big)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ServeError(400, "client disconnected before sending the whole body") from None
    return b"".join(chunks)


def decode_upload(data: bytes, label: str, max_pixels: int, request_left: int | None = None) -> np.ndarray:
    """Encoded image bytes -> RGB uint8, with the size checked from the header before decoding: at most
    `max_pixels`, and at most `request_left`, what the request's pixel budget has left (`max_request_pixels`)."""

    if not data:
        raise ServeError(400, f"{label} is empty")
    try:
        im = Image.open(io.BytesIO(data), formats=available_formats())  # the header only
    except Image.DecompressionBombError:
        raise ServeError(413, f"{label} has too many pixels") from None
    except Exception:
        raise ServeError(
            400, f"{label} is not an image in a supported format ({', '.join(available_formats())})"
        ) from None
    with im:
        w, h = im.size
        if w < 1 or h < 1:
            raise ServeError(400, f"{label} has no pixels ({w}x{h})")
        if w * h > max_pixels:
            raise ServeError(413, f"{label} is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
        if request_left is not None and w * h > request_left:
            raise ServeError(
                413, f"{label} ({w}x{h}) takes the request past its limit on decoded pixels in all; send fewer images"
            )
        try:
            return pil_to_rgb(im, label)
        except ImageReadError as e:
            raise ServeError(400, f"{label} cannot be decoded ({e.reason or e.cause})") from None
        except Exception as e:
            raise ServeError(400, f"{label} cannot be decoded ({e.__class__.__name__})") from None


@lru_cache(maxsize=1)
def available_formats() -> tuple[str, ...]:
    """IMAGE_FORMATS that this Pillow build can open (WebP, for one, is optional)."""

    Image.init()
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)
