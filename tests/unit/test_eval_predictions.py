"""kubedistill.eval.predictions: predictions json, atomic json writes, drawn detections."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from kubedistill.core.atomic import write_json_atomic
from kubedistill.eval.coco import ImagePred
from kubedistill.eval.predictions import (
    class_color,
    draw_detections,
    to_coco_predictions_json,
)

NAMES = ["person", "car"]


def test_to_coco_predictions_json_format():
    preds = [
        ImagePred(
            np.array([[10.123, 20.456, 50.789, 80.111], [1.0, 2.0, 3.0, 4.0]]),
            np.array([0.9876543, 0.5]),
            np.array([1, 0]),
        ),
        ImagePred.empty(),
        ImagePred(np.array([[0.0, 0.0, 5.0, 5.0]]), np.array([0.25]), np.array([0])),
    ]
    out = to_coco_predictions_json(["a.jpg", "b.jpg", "c.png"], preds, NAMES)
    assert out[0] == {
        "image": "a.jpg",
        "image_id": 1,
        "category_id": 1,
        "class_name": "car",
        "bbox": [10.12, 20.46, 40.67, 59.66],
        "score": 0.98765,
    }
    assert [d["image_id"] for d in out] == [1, 1, 3]
    assert out[1]["class_name"] == "person" and out[1]["bbox"] == [1.0, 2.0, 2.0, 2.0]
    assert out[2]["image"] == "c.png"
    json.dumps(out, allow_nan=False)
    with pytest.raises(ValueError):
        to_coco_predictions_json(["a.jpg"], [], NAMES)


def test_write_json_atomic(tmp_path):
    path = tmp_path / "deep" / "er" / "preds.json"
    obj = {"a": np.float32(0.5), "b": float("nan"), "c": np.arange(3), "d": [np.int64(4)]}
    assert write_json_atomic(path, obj) == path
    assert json.loads(path.read_text()) == {"a": 0.5, "b": None, "c": [0, 1, 2], "d": [4]}
    write_json_atomic(path, [1, 2])  # overwrite
    assert json.loads(path.read_text()) == [1, 2]
    assert os.listdir(path.parent) == ["preds.json"]  # no temp file left behind


def test_write_json_atomic_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"ok": 1})

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"new": 2})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["m.json"]  # the temp file was removed


def test_draw_detections_changes_pixels_at_the_box_only():
    img = np.full((120, 160, 3), 30, dtype=np.uint8)
    pred = ImagePred(
        np.array([[40.0, 50.0, 100.0, 110.0], [5.0, 5.0, 20.0, 20.0]]),
        np.array([0.8, 0.1]),  # the second one is below conf
        np.array([1, 0]),
    )
    out = draw_detections(img, pred, NAMES, conf=0.25)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.all(img == 30)  # input untouched
    diff = np.any(out != img, axis=2)
    assert diff[50:111, 40].any() and diff[110, 40:101].any()  # box edges drawn
    assert not diff[5:21, 5:21].any()  # low-score box not drawn
    assert not diff[75, 70]  # box interior untouched
    assert tuple(int(v) for v in out[80, 40]) == class_color(1)  # left edge in the class colour


def test_class_colors_are_distinct():
    colors = {class_color(c) for c in range(20)}
    assert len(colors) == 20


def test_draw_detections_empty_and_out_of_image_boxes():
    img = np.zeros((40, 40, 3), dtype=np.uint8)
    assert np.array_equal(draw_detections(img, ImagePred.empty(), NAMES), img)
    pred = ImagePred(np.array([[-10.0, -10.0, 100.0, 100.0]]), np.array([0.9]), np.array([0]))
    out = draw_detections(img, pred, NAMES)
    assert out.shape == img.shape and np.any(out != img)
