"""The page to try the model (`GET /`) and its sample image (`GET /demo.jpg`), packaged files."""

from __future__ import annotations

import io
from functools import lru_cache
from importlib.resources import files

from PIL import Image

from kubedistill.data.images import decode_image
from kubedistill.data.resize import resize

DEMO_SIZE = 320  # side of the packaged sample image, serve/demo.jpg


@lru_cache(maxsize=8)
def demo_image_bytes(imgsz: int) -> bytes:
    """The packaged sample image, a JPEG of imgsz x imgsz (at least 32): the demo set's four shapes
    (circle, square, triangle, cross) on clutter, drawn by `kubedistill.data.synth._make_image` with
    `np.random.default_rng(24)`, 320 px, min_size=32, max_objects=6 (tests/integration/test_serve.py redraws
    it), scaled with the letterbox resize. A file rather than a drawing: the server carries no OpenCV."""

    data = files("kubedistill.serve").joinpath("demo.jpg").read_bytes()
    size = max(32, int(imgsz))
    if size == DEMO_SIZE:
        return data
    buf = io.BytesIO()
    Image.fromarray(resize(decode_image(data), (size, size))).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@lru_cache(maxsize=1)
def page_html() -> str:

    return files("kubedistill.serve").joinpath("index.html").read_text(encoding="utf-8")
