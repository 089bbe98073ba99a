"""synth.py: deterministic, valid, and labels sit on drawn shapes."""

from __future__ import annotations

import numpy as np
import pytest

from kubedistill.data.check import check_dataset
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.images import read_image
from kubedistill.data.synth import _make_image, _shape_kinds, make_synth


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_valid(tmp_path):
    a = make_synth(tmp_path / "a", train=6, val=3, imgsz=96, seed=3)
    b = make_synth(tmp_path / "b", train=6, val=3, imgsz=96, seed=3)
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert fa == fb and len(fa) == 1 + 2 * 9
    make_synth(tmp_path / "c", train=6, val=3, imgsz=96, seed=4)
    assert _files(tmp_path / "c") != fa
    assert a.name == "data.yaml" and "path: ." in a.read_text()
    spec = load_data_yaml(a)
    assert spec.names == ["circle", "square", "triangle", "cross"]
    r = check_dataset(spec, workers=1)
    assert r.problems == []
    assert r.counts["train"].usable == 6 and r.counts["train"].backgrounds == 0
    for s in r.samples["train"]:
        assert s.shape == (96, 96) and 1 <= len(s.labels) <= 6
    # re-running with fewer images removes the stale ones
    make_synth(tmp_path / "b", train=2, val=1, imgsz=96, seed=3)
    assert len(list((tmp_path / "b/images/train").iterdir())) == 2
    assert len(list((tmp_path / "b/labels/train").iterdir())) == 2
    assert b.exists()


def test_boxes_are_tight_on_shapes():
    """Before compression: each box is exactly the extent of its object's visible pixels, which have
    one flat colour (plus the +/-6 noise), and at least half of every object stays visible."""
    kinds = _shape_kinds(["circle", "square", "triangle", "cross"])
    n, sizes, checked = 128, [], 0
    for seed in range(12):
        img, labels, ids = _make_image(np.random.default_rng([seed]), n, kinds)
        assert ids.max() == len(labels)
        for k, (_, cx, cy, w, h) in enumerate(labels):
            ys, xs = np.nonzero(ids == k + 1)
            np.testing.assert_allclose(
                [cx * n, cy * n, w * n, h * n],
                [
                    (xs.min() + xs.max() + 1) / 2,
                    (ys.min() + ys.max() + 1) / 2,
                    xs.max() + 1 - xs.min(),
                    ys.max() + 1 - ys.min(),
                ],
                atol=1e-9,
            )
            px = img[ys, xs].astype(np.int32)
            assert (px.max(0) - px.min(0) <= 12).all()
            sizes.append(max(w, h) * n)
            checked += 1
    assert checked > 20
    assert min(sizes) <= 8 and max(sizes) >= n // 4  # tiny to large


def test_labelled_pixels_differ_from_background(tmp_path):
    y = make_synth(tmp_path, train=8, val=1, imgsz=128, seed=0, ext=".png")
    spec = load_data_yaml(y)
    diffs = []
    for f in spec.splits["train"]:
        img = read_image(f).astype(np.float32)
        for line in spec.label_path(f).read_text().splitlines():
            _, cx, cy, w, h = map(float, line.split())
            x1, y1 = int(round((cx - w / 2) * 128)), int(round((cy - h / 2) * 128))
            x2, y2 = int(round((cx + w / 2) * 128)), int(round((cy + h / 2) * 128))
            inner = img[y1:y2, x1:x2].reshape(-1, 3).mean(0)
            ring = np.concatenate(
                [
                    img[max(0, y1 - 3) : y1, x1:x2].reshape(-1, 3),
                    img[y2 : y2 + 3, x1:x2].reshape(-1, 3),
                    img[y1:y2, max(0, x1 - 3) : x1].reshape(-1, 3),
                    img[y1:y2, x2 : x2 + 3].reshape(-1, 3),
                ]
            )
            if len(ring):
                diffs.append(np.abs(inner - ring.mean(0)).sum())
    assert len(diffs) > 10
    assert np.median(diffs) > 30


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_synth(tmp_path, train=0)
    with pytest.raises(ValueError):
        make_synth(tmp_path, names=[str(i) for i in range(20)])
