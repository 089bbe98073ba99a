"""letterbox.py: geometry, box round trip, pixel agreement, no torch import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from kubedistill.data.letterbox import boxes_to_letterbox, letterbox, letterbox_params, scale_boxes_to_original


@pytest.mark.parametrize("h,w", [(200, 300), (300, 200), (64, 64), (17, 31), (1000, 13)])
def test_letterbox_shape_and_padding(h, w):
    img = np.full((h, w, 3), 50, np.uint8)
    out, r, (pw, ph) = letterbox(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert r == pytest.approx(min(64 / h, 64 / w))
    assert pw == int(pw) and ph == int(ph)
    _, (rw, rh), _ = letterbox_params((h, w), 64)
    assert max(rw, rh) == 64
    # the resized image sits at (pw, ph); the rest is the pad colour
    assert (out[int(ph) : int(ph) + rh, int(pw) : int(pw) + rw] == 50).all()
    mask = np.ones((64, 64), bool)
    mask[int(ph) : int(ph) + rh, int(pw) : int(pw) + rw] = False
    assert (out[mask] == 114).all()
    # centred: left/right (top/bottom) padding differ by at most one pixel
    assert abs(pw - (64 - rw - pw)) <= 1 and abs(ph - (64 - rh - ph)) <= 1


def test_rectangular_target_and_no_scaleup():
    img = np.zeros((10, 20, 3), np.uint8)
    out, r, pad = letterbox(img, 64, scaleup=False)
    assert out.shape == (64, 64, 3) and r == 1.0 and pad == (22.0, 27.0)
    out, r, pad = letterbox(img, (32, 64))
    assert out.shape == (32, 64, 3) and r == pytest.approx(3.2)


def test_box_round_trip():
    rng = np.random.default_rng(0)
    h, w = 240, 320
    xy = rng.uniform(0, [w, h], (20, 2))
    wh = rng.uniform(1, 80, (20, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1).astype(np.float32)
    _, r, pad = letterbox(np.zeros((h, w, 3), np.uint8), 640)
    lb = boxes_to_letterbox(boxes, r, pad)
    assert lb.dtype == np.float32 and (lb >= 0).all() and (lb <= 640).all()
    back = scale_boxes_to_original(lb, r, pad, (h, w))
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    # outside the image after undoing -> clipped
    clipped = scale_boxes_to_original(np.array([[-50.0, -50, 700, 700]]), r, pad, (h, w))
    np.testing.assert_allclose(clipped, [[0, 0, w, h]])


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    lb = boxes_to_letterbox(b, 2.0, (5.0, 7.0))
    assert torch.allclose(lb, torch.tensor([[25.0, 47.0, 65.0, 87.0]]))
    back = scale_boxes_to_original(lb, 2.0, (5.0, 7.0), (100, 100))
    assert torch.allclose(back, b)


def test_box_mapping_matches_pixels():
    img = np.zeros((90, 160, 3), np.uint8)
    img[30:60, 40:100] = 255  # box x1=40, y1=30, x2=100, y2=60 (continuous pixel edges)
    out, r, pad = letterbox(img, 128)
    ys, xs = np.nonzero(out[..., 0] > 127)
    got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
    want = boxes_to_letterbox(np.array([[40.0, 30, 100, 60]]), r, pad)[0]
    np.testing.assert_allclose(got, want, atol=1.0)


def test_torch_free_imports():
    code = (
        "import sys\n"
        "import kubedistill.data, kubedistill.data.letterbox, kubedistill.data.images, kubedistill.data.augment\n"
        "import kubedistill.data.check, kubedistill.data.dataset_yaml, kubedistill.data.synth\n"
        "bad = [m for m in ('torch', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the resize (numpy, no cv2) against OpenCV, which training used before --------------------------------
def _smooth(h: int, w: int, c: int | None, seed: int) -> np.ndarray:
    """Noise plus gradients plus a hard-edged block: exercises both flat areas and edges."""
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    y, x = np.mgrid[0:h, 0:w]
    base = x * 255 / max(1, w - 1) * 0.6 + y * 255 / max(1, h - 1) * 0.3
    base = base if c is None else base[:, :, None]
    img = np.clip(base + rng.normal(0, 25, shape), 0, 255)
    img[h // 4 : h // 2, w // 3 : w // 2] = 255
    return img.astype(np.uint8)


@pytest.mark.parametrize(
    "src,dst",
    [
        ((720, 1280), (360, 640)),
        ((1080, 1920), (180, 320)),
        ((427, 640), (43, 64)),
        ((480, 640), (240, 321)),  # shrink
        ((300, 200), (97, 64)),
        ((1000, 13), (64, 1)),
        ((13, 1000), (1, 64)),
        ((5, 7), (5, 3)),  # odd shrinks
        ((48, 64), (480, 640)),
        ((31, 17), (64, 35)),
        ((2, 3), (64, 96)),
        ((1, 1), (9, 9)),  # enlarge
        ((40, 60), (80, 30)),  # one side grows, the other shrinks: bilinear, as cv2 INTER_LINEAR
    ],
)
@pytest.mark.parametrize("channels", [3, None])
def test_resize_matches_cv2_within_one_grey_level(src, dst, channels):
    cv2 = pytest.importorskip("cv2")  # a dev install has it (train extra); the serve image does not
    from kubedistill.data.resize import resize

    img = _smooth(*src, channels, seed=src[0] * 7 + src[1])
    (h, w), (nh, nw) = src, dst
    interp = cv2.INTER_AREA if nh <= h and nw <= w else cv2.INTER_LINEAR
    want = cv2.resize(img, (nw, nh), interpolation=interp)
    got = resize(img, (nw, nh))
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_resize_random_sizes_match_cv2():
    cv2 = pytest.importorskip("cv2")
    from kubedistill.data.resize import resize

    rng = np.random.default_rng(1)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # pure noise: the worst case for rounding
        r, (rw, rh), _ = letterbox_params((h, w), int(rng.integers(1, 160)))
        want = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
        got = resize(img, (rw, rh))
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (h, w, rw, rh)


def test_resize_keeps_flat_images_flat_and_rejects_bad_input():
    from kubedistill.data.resize import resize

    img = np.full((37, 53, 3), 200, np.uint8)
    for size in ((10, 7), (200, 140), (53, 37)):
        out = resize(img, size)
        assert out.shape == (size[1], size[0], 3) and (out == 200).all()
    assert resize(img, (53, 37)) is not img
    with pytest.raises(ValueError, match="uint8"):
        resize(img.astype(np.float32), (10, 10))
    with pytest.raises(ValueError, match="at least 1"):
        resize(img, (0, 10))


def test_letterbox_and_images_need_no_opencv():
    code = (
        "import sys\n"
        "class NoCv2:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'cv2': raise ImportError('no cv2 here')\n"
        "sys.meta_path.insert(0, NoCv2())\n"
        "import numpy as np\n"
        "from kubedistill.data.letterbox import letterbox\n"
        "from kubedistill.data.images import decode_image\n"
        "for shape in ((30, 50, 3), (300, 500, 3)):\n"
        "    assert letterbox(np.zeros(shape, np.uint8), 64)[0].shape == (64, 64, 3)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
