"""dataset.py: item and batch layout, boxes on pixels, seeded loader across worker counts and epochs."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from kubedistill.data.check import Sample, check_dataset
from kubedistill.data.dataset import DetectionDataset, EpochSampler, build_dataloader, collate_fn
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.letterbox import scale_boxes_to_original
from kubedistill.data.synth import make_synth

COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]
NO_AUG = dict(mosaic=0.0, degrees=0.0, translate=0.0, scale=0.0, fliplr=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)


def _hyp(**kw):
    return SimpleNamespace(**{**NO_AUG, **kw})


def _rect_sample(path, h, w, rects):
    """Grey image with solid rectangles [(cls, x1, y1, x2, y2)] in class colours -> Sample."""
    img = np.full((h, w, 3), 114, np.uint8)
    labels = []
    for c, x1, y1, x2, y2 in rects:
        img[y1:y2, x1:x2] = COLOURS[c]
        labels.append([c, (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h])
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return Sample(path, (h, w), np.array(labels, np.float32).reshape(-1, 5))


def _colour_fraction(img_chw, box_xyxy, colour):
    img = img_chw.permute(1, 2, 0).numpy().astype(np.float32)
    x1, y1, x2, y2 = (int(round(v)) for v in box_xyxy)
    crop = img[y1:y2, x1:x2].reshape(-1, 3)
    palette = np.array([colour] + [c for c in COLOURS if c != colour] + [(114, 114, 114)], np.float32)
    nearest = np.abs(crop[:, None] - palette).sum(-1).argmin(-1)
    return float((nearest == 0).mean()) if len(crop) else 0.0


@pytest.fixture(scope="module")
def synth_samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    y = make_synth(root, train=8, val=2, imgsz=64, seed=1, ext=".png")
    return check_dataset(load_data_yaml(y), workers=1).samples["train"]


def test_val_item_layout_and_letterbox_mapping(tmp_path):
    s = _rect_sample(tmp_path / "a.png", 48, 96, [(0, 10, 8, 40, 30), (2, 60, 20, 90, 44)])
    ds = DetectionDataset([s], imgsz=64, augment=False)
    d = ds[0]
    assert d["img"].dtype == torch.uint8 and d["img"].shape == (3, 64, 64)
    assert d["cls"].dtype == torch.float32 and d["cls"].shape == (2, 1) and d["cls"][:, 0].tolist() == [0, 2]
    assert d["bboxes"].dtype == torch.float32 and d["bboxes"].shape == (2, 4)
    assert d["im_file"] == str(s.im_file) and d["ori_shape"] == (48, 96)
    ratio, pad = d["ratio_pad"]
    assert ratio == pytest.approx(64 / 96) and pad == (0.0, 16.0)
    b = d["bboxes"].numpy() * 64
    xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
    for box, c in zip(xyxy, (0, 2)):
        assert _colour_fraction(d["img"], box, COLOURS[c]) > 0.85
    back = scale_boxes_to_original(xyxy, ratio, pad, d["ori_shape"])
    np.testing.assert_allclose(back, [[10, 8, 40, 30], [60, 20, 90, 44]], atol=0.6)


def test_background_item_and_collate(tmp_path):
    a = _rect_sample(tmp_path / "a.png", 32, 32, [(1, 4, 4, 20, 20)])
    bg = _rect_sample(tmp_path / "bg.png", 40, 20, [])
    c = _rect_sample(tmp_path / "c.png", 32, 32, [(0, 2, 2, 10, 10), (2, 12, 12, 30, 30)])
    ds = DetectionDataset([a, bg, c], imgsz=32)
    assert ds[1]["cls"].shape == (0, 1) and ds[1]["bboxes"].shape == (0, 4)
    batch = collate_fn([ds[i] for i in range(3)])
    assert batch["img"].shape == (3, 3, 32, 32) and batch["img"].dtype == torch.uint8
    assert batch["cls"].shape == (3, 1) and batch["bboxes"].shape == (3, 4)
    assert batch["batch_idx"].dtype == torch.float32 and batch["batch_idx"].tolist() == [0.0, 2.0, 2.0]
    assert len(batch["im_file"]) == len(batch["ori_shape"]) == len(batch["ratio_pad"]) == 3


def test_augmented_boxes_stay_on_objects(tmp_path):
    samples = [
        _rect_sample(
            tmp_path / f"{k}.png", 48 + 8 * k, 64, [(k % 3, 6 + k, 8, 30 + k, 30), ((k + 1) % 3, 36, 20, 60, 44)]
        )
        for k in range(4)
    ]
    hyp = _hyp(mosaic=0.5, degrees=10.0, translate=0.1, scale=0.3, fliplr=0.5)
    ds = DetectionDataset(samples, imgsz=64, augment=True, hyp=hyp, seed=3)
    n = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(4):
            d = ds[i]
            assert d["img"].shape == (3, 64, 64)
            b = d["bboxes"].numpy() * 64
            xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
            for box, c in zip(xyxy, d["cls"][:, 0].tolist()):
                assert _colour_fraction(d["img"], box, COLOURS[int(c)]) > 0.6
                n += 1
    assert n > 10


def _run(loader, ds, epochs):
    out = []
    for e in epochs:
        ds.set_epoch(e)
        out.append([(b["img"].clone(), b["bboxes"].clone(), b["batch_idx"].clone(), b["im_file"]) for b in loader])
    return out


def _same(x, y):
    return len(x) == len(y) and all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) and a[3] == b[3]
        for a, b in zip(x, y)
    )


def test_loader_same_batches_for_any_worker_count_and_new_ones_each_epoch(synth_samples):
    hyp = _hyp(mosaic=1.0, degrees=5.0, translate=0.1, scale=0.5, fliplr=0.5, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4)
    ds0 = DetectionDataset(synth_samples, imgsz=64, augment=True, hyp=hyp, seed=7)
    ds2 = DetectionDataset(synth_samples, imgsz=64, augment=True, hyp=hyp, seed=7)
    l0 = build_dataloader(ds0, batch=4, workers=0, shuffle=True, seed=7)
    l2 = build_dataloader(ds2, batch=4, workers=2, shuffle=True, seed=7)
    assert l2.persistent_workers and len(l0) == len(l2) == 2
    r0 = _run(l0, ds0, [0, 1])
    r2 = _run(l2, ds2, [0, 1, 0])
    assert _same(r0[0], r2[0]) and _same(r0[1], r2[1])  # workers=0 == workers=2, every epoch
    assert not _same(r2[0], r2[1])  # the epoch reached the (persistent) workers
    assert [x[3] for x in r2[0]] != [x[3] for x in r2[1]]  # new shuffle order too
    assert _same(r2[0], r2[2])  # epoch 0 again: same as before


def test_close_mosaic_reaches_persistent_workers(synth_samples):
    hyp = _hyp(mosaic=1.0)  # no other augmentation: without mosaic, items equal the plain letterbox
    ds = DetectionDataset(synth_samples, imgsz=64, augment=True, hyp=hyp, seed=0)
    plain = DetectionDataset(synth_samples, imgsz=64, augment=False)
    loader = build_dataloader(ds, batch=4, workers=2, shuffle=False, seed=0)
    want = torch.stack([plain[i]["img"] for i in range(len(plain))])
    first = torch.cat([b["img"] for b in loader])
    assert not torch.equal(first, want) and ds.mosaic_enabled()
    ds.close_mosaic()
    assert not ds.mosaic_enabled()
    second = torch.cat([b["img"] for b in loader])
    assert torch.equal(second, want)


def test_distributed_shards(synth_samples):
    ds = DetectionDataset(synth_samples, imgsz=64, augment=False)
    parts = []
    for rank in range(2):
        s = EpochSampler(ds, shuffle=True, seed=0, rank=rank, world_size=2)
        keys = list(s)
        assert len(keys) == len(s) == 4 and all(k[1] == 0 for k in keys)
        parts.append([k[0] for k in keys])
    assert sorted(parts[0] + parts[1]) == list(range(8))
    ds.set_epoch(1)
    moved = [k[0] for k in EpochSampler(ds, shuffle=True, seed=0, rank=0, world_size=2)]
    assert moved != parts[0]
    loader = build_dataloader(ds, batch=2, workers=0, shuffle=False, seed=0, rank=1, world_size=2, drop_last=True)
    assert len(loader) == 2


def test_shm_too_small_for_the_workers_falls_back_to_the_main_process(monkeypatch, caplog):
    """A pod's 64 MB /dev/shm cannot hold 2 workers' batches of 32 x 416 px: load in the main process, with a
    warning naming the fix (the real thing in a 64 MB container: tests/container/test_pipeline_docker.py)."""
    import collections
    import logging
    import shutil
    import sys

    from kubedistill.data import dataset as ds

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(64 << 20, 0, 64 << 20))
    with caplog.at_level(logging.WARNING, logger="kubedistill"):
        assert ds.shm_workers(2, 32, 416) == 0
    assert "/dev/shm has 64 MB free but 2 DataLoader workers need about 95 MB" in caplog.text
    assert "emptyDir with medium Memory" in caplog.text and "--shm-size" in caplog.text
    caplog.clear()
    assert ds.shm_workers(2, 8, 320) == 2  # 2 x 2 x 8 x 3 x 320^2 x 1.5 = 14 MB: fits
    assert ds.shm_workers(0, 32, 640) == 0 and caplog.text == ""
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(2 << 30, 0, 2 << 30))
    assert ds.shm_workers(8, 64, 640) == 8  # the pipeline's 2Gi emptyDir holds 8 workers at 64 x 640
