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
