"""augment.py: boxes stay on the pixels they label through affine, flip and mosaic."""

from __future__ import annotations

import numpy as np
import pytest

from kubedistill.data.augment import hflip, mosaic4, random_affine, random_hsv

GREY = 114
COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)]


def _scene(h, w, rect, colour=COLOURS[0]):
    """Grey image with one solid rectangle; rect = (x1, y1, x2, y2) continuous edges."""
    img = np.full((h, w, 3), GREY, np.uint8)
    x1, y1, x2, y2 = rect
    img[y1:y2, x1:x2] = colour
    return img, np.array([rect], np.float32)


def _pixels_box(img, colour):
    """Tight box of pixels nearer to `colour` than to grey and to every other test colour, or None."""
    palette = np.array([colour] + [c for c in COLOURS if c != tuple(colour)] + [(GREY,) * 3], np.float32)
    d = np.abs(img.astype(np.float32)[:, :, None, :] - palette).sum(-1)
    ys, xs = np.nonzero(d.argmin(-1) == 0)
    if not len(xs):
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def test_affine_keeps_box_on_rectangle():
    img, boxes = _scene(80, 100, (20, 30, 50, 60))
    kept = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        out, b, c = random_affine(
            img, boxes, np.array([3.0]), degrees=30, translate=0.2, scale=0.5, border=GREY, out_size=96, rng=rng
        )
        assert out.shape == (96, 96, 3) and out.dtype == np.uint8
        if not len(b):
            continue
        kept += 1
        assert c.tolist() == [3.0]
        want = _pixels_box(out, COLOURS[0])
        assert want is not None
        np.testing.assert_allclose(b[0], want, atol=1.5)
    assert kept >= 8


def test_affine_drops_boxes_pushed_out_and_tiny():
    img, boxes = _scene(64, 64, (0, 0, 6, 6))
    boxes = np.concatenate([boxes, np.array([[30, 30, 31, 31]], np.float32)])
    out, b, c = random_affine(img, boxes, np.array([0.0, 1.0]), 0, 0, 0, GREY, 64, np.random.default_rng(0))
    assert np.array_equal(out, img)  # identity: nothing warped
    np.testing.assert_array_equal(b, [[0, 0, 6, 6]])  # the 1 px box is dropped (< 2 px)
    assert c.tolist() == [0.0]
    # a 128 px input onto a 64 px output crops the centre: canvas x = input x - 32
    big = np.full((128, 128, 3), GREY, np.uint8)
    bx = np.array([[0, 0, 40, 40], [20, 20, 50, 50]], np.float32)
    _, b2, c2 = random_affine(big, bx, np.array([0.0, 1.0]), 0, 0, 0, GREY, 64, np.random.default_rng(0))
    # first keeps 8x8 of 40x40 (4 %): dropped; second keeps 18x18 of 30x30 (36 %): clipped and kept
    np.testing.assert_allclose(b2, [[0, 0, 18, 18]])
    assert c2.tolist() == [1.0]


def test_hflip():
    img, boxes = _scene(40, 60, (5, 10, 20, 30))
    out, b = hflip(img, boxes)
    np.testing.assert_array_equal(b, [[40, 10, 55, 30]])
    np.testing.assert_allclose(b[0], _pixels_box(out, COLOURS[0]))
    _, back = hflip(out, b)
    np.testing.assert_array_equal(back, boxes)


def test_mosaic_then_affine_keeps_boxes_on_rectangles():
    s = 64
    items = []
    for k, col in enumerate(COLOURS):
        h, w = (64, 48) if k % 2 else (40, 64)
        x1, y1 = 8 + 3 * k, 6 + 2 * k
        img, b = _scene(h, w, (x1, y1, x1 + 20, y1 + 18), col)
        items.append((img, b, np.array([float(k)], np.float32)))
    seen = set()
    for seed in range(10):
        rng = np.random.default_rng(seed)
        canvas, b, c = mosaic4(items, s, rng, fill=GREY)
        assert canvas.shape == (2 * s, 2 * s, 3)
        for box, k in zip(b, c):
            want = _pixels_box(canvas, COLOURS[int(k)])
            np.testing.assert_allclose(box, want, atol=0.01)
        out, b2, c2 = random_affine(canvas, b, c, 10, 0.1, 0.3, GREY, s, rng)
        assert out.shape == (s, s, 3)
        for box, k in zip(b2, c2):
            seen.add(int(k))
            want = _pixels_box(out, COLOURS[int(k)])
            assert want is not None
            np.testing.assert_allclose(box, want, atol=1.5)
    assert len(seen) == 4


def test_hsv_seeded_and_identity():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a = random_hsv(img, 0.1, 0.7, 0.4, np.random.default_rng(5))
    b = random_hsv(img, 0.1, 0.7, 0.4, np.random.default_rng(5))
    assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b) and not np.array_equal(a, img)
    assert random_hsv(img, 0, 0, 0, np.random.default_rng(0)) is img


def test_mosaic_needs_four():
    with pytest.raises(ValueError):
        mosaic4([], 32, np.random.default_rng(0))
