"""kubedistill.eval.coco: faster-coco-eval metrics, cross-checked against pycocotools."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from kubedistill.core.errors import DataError
from kubedistill.eval.coco import (
    DetectionMetrics,
    ImageGT,
    ImagePred,
    build_coco_gt,
    build_coco_results,
    evaluate,
)

NAMES = ["person", "car", "dog", "bicycle"]
TO_DICT_KEYS = {
    "mAP50-95",
    "mAP50",
    "mAP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "precision",
    "recall",
    "f1",
    "conf_best_f1",
    "per_class",
}

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO as PyCOCO  # noqa: E402
from pycocotools.cocoeval import COCOeval as PyCOCOeval  # noqa: E402

# --------------------------------------------------------------------------- synthetic data


def _random_gt(rng: np.random.Generator, n_images: int, n_cls: int, max_per_image: int = 9) -> list[ImageGT]:
    gts = []
    for i in range(n_images):
        w, h = 640, 480
        n = int(rng.integers(0, max_per_image + 1))
        # Mix of small (< 32^2), medium and large (> 96^2) boxes.
        kind = rng.integers(0, 3, size=n)
        side_lo = np.array([6.0, 34.0, 100.0])[kind]
        side_hi = np.array([30.0, 90.0, 300.0])[kind]
        bw = rng.uniform(side_lo, side_hi)
        bh = rng.uniform(side_lo, side_hi)
        x1 = rng.uniform(0, w - bw)
        y1 = rng.uniform(0, h - bh)
        boxes = np.stack([x1, y1, x1 + bw, y1 + bh], axis=1) if n else np.zeros((0, 4))
        gts.append(ImageGT(f"img_{i:04d}.jpg", w, h, boxes, rng.integers(0, n_cls, size=n)))
    return gts


def _noisy_preds(
    rng: np.random.Generator, gts: list[ImageGT], n_cls: int, extra_fp: tuple[int, int] = (0, 6)
) -> list[ImagePred]:
    preds = []
    for gt in gts:
        boxes, scores, classes = [], [], []
        for box, cls in zip(gt.boxes, gt.classes):
            for _ in range(int(rng.integers(0, 3))):  # 0 (missed), 1 or 2 (duplicate) detections
                bw, bh = box[2] - box[0], box[3] - box[1]
                noise = rng.uniform(0.0, 0.35)
                jitter = rng.normal(0.0, noise, size=4) * np.array([bw, bh, bw, bh])
                boxes.append(box + jitter)
                scores.append(float(np.clip(1.0 - noise * 2 + rng.normal(0, 0.15), 0.01, 0.999)))
                classes.append(int(cls) if rng.random() < 0.9 else int(rng.integers(0, n_cls)))
        for _ in range(int(rng.integers(*extra_fp))):  # random false positives
            bw, bh = rng.uniform(8, 200, size=2)
            x1, y1 = rng.uniform(0, gt.width - bw), rng.uniform(0, gt.height - bh)
            boxes.append(np.array([x1, y1, x1 + bw, y1 + bh]))
            scores.append(float(rng.uniform(0.01, 0.6)))
            classes.append(int(rng.integers(0, n_cls)))
        if boxes:
            preds.append(ImagePred(np.array(boxes), np.array(scores), np.array(classes)))
        else:
            preds.append(ImagePred.empty())
    return preds


def _perfect(gts: list[ImageGT], score: float = 0.9) -> list[ImagePred]:
    return [ImagePred(g.boxes.copy(), np.full(len(g.boxes), score), g.classes.copy()) for g in gts]


@pytest.fixture(scope="module")
def synthetic() -> tuple[list[ImageGT], list[ImagePred]]:
    rng = np.random.default_rng(1234)
    gts = _random_gt(rng, 70, len(NAMES))
    preds = _noisy_preds(rng, gts, len(NAMES))
    return gts, preds


# --------------------------------------------------------------------------- pycocotools reference


def _pycoco_eval(gts, preds, names, max_dets=100, cat_ids=None, iou_thrs=None) -> PyCOCOeval:
    gt_dict = copy.deepcopy(build_coco_gt(gts, names))
    results = copy.deepcopy(build_coco_results(preds, [img["id"] for img in gt_dict["images"]]))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = PyCOCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = PyCOCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, max_dets]
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        if iou_thrs is not None:
            ev.params.iouThrs = np.asarray(iou_thrs)
        ev.evaluate()
        ev.accumulate()
        if max_dets == 100 and iou_thrs is None:
            ev.summarize()
    return ev


def _ref_ap(ev: PyCOCOeval, area: str = "all", iou: float | None = None) -> float:
    """Mean of valid entries of pycocotools' precision array at maxDets[-1] (what COCO's summarize does)."""
    p = ev.eval["precision"][:, :, :, ev.params.areaRngLbl.index(area), -1]
    if iou is not None:
        p = p[np.flatnonzero(np.isclose(ev.params.iouThrs, iou))]
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else -1.0


def _as_coco(value: float) -> float:
    return -1.0 if math.isnan(value) else value


def _brute_force_best_f1(ev: PyCOCOeval, n_gt: np.ndarray) -> tuple[float, float, float, float]:
    """P/R/F1 sweep over every distinct score using pycocotools' own per-image matches at IoU 0.5."""
    p = ev.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    t50 = int(np.flatnonzero(np.isclose(p.iouThrs, 0.5))[0])
    per_cls: dict[int, list[tuple[float, bool]]] = {}
    for k, cat in enumerate(p.catIds):
        for i in range(n_img):
            e = ev.evalImgs[k * n_area * n_img + 0 * n_img + i]  # area "all"
            if e is None:
                continue
            for d, score in enumerate(e["dtScores"]):
                per_cls.setdefault(cat, []).append((score, bool(e["dtMatches"][t50, d] > 0)))
    thresholds = sorted({s for items in per_cls.values() for s, _ in items}, reverse=True)
    best = (-1.0, 0.0, 0.0, float("nan"))
    cls_with_gt = [c for c in range(len(n_gt)) if n_gt[c] > 0]
    for t in thresholds:
        ps, rs, fs = [], [], []
        for c in cls_with_gt:
            items = per_cls.get(c, [])
            n_det = sum(1 for s, _ in items if s >= t)
            tp = sum(1 for s, m in items if s >= t and m)
            prec = tp / n_det if n_det else 0.0
            rec = tp / n_gt[c]
            ps.append(prec)
            rs.append(rec)
            fs.append(2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0)
        f1 = float(np.mean(fs))
        if f1 > best[0] + 1e-12:
            best = (f1, float(np.mean(ps)), float(np.mean(rs)), t)
    return best[1], best[2], best[0], best[3]


# --------------------------------------------------------------------------- tests


def test_perfect_predictions_give_ap_one():
    rng = np.random.default_rng(0)
    gts = _random_gt(rng, 20, len(NAMES))
    m = evaluate(gts, _perfect(gts, 0.9), NAMES)
    for value in (m.map50_95, m.map50, m.map75, m.ap_small, m.ap_medium, m.ap_large):
        assert value == pytest.approx(1.0, abs=1e-12)
    assert m.fitness == pytest.approx(1.0)
    assert (m.precision, m.recall, m.f1) == (1.0, 1.0, 1.0)
    assert m.conf_best_f1 == pytest.approx(0.9)
    assert np.allclose(m.ap50_95_per_class, 1.0) and np.allclose(m.ap50_per_class, 1.0)
    assert np.allclose(m.pr_precision, 1.0) and m.pr_recall.shape == (101,)


def test_far_low_score_false_positives_keep_best_f1_precision():
    rng = np.random.default_rng(1)
    gts = _random_gt(rng, 20, len(NAMES))
    preds = []
    for p in _perfect(gts, 0.9):
        fp = np.array([[5000.0, 5000.0, 5050.0, 5040.0], [6000.0, 6000.0, 6010.0, 6010.0]])
        preds.append(ImagePred(np.vstack([p.boxes, fp]), np.r_[p.scores, [0.05, 0.04]], np.r_[p.classes, [0, 1]]))
    m = evaluate(gts, preds, NAMES)
    assert m.precision == 1.0 and m.recall == 1.0 and m.f1 == 1.0
    assert m.conf_best_f1 == pytest.approx(0.9)
    assert m.map50_95 == pytest.approx(1.0)  # FPs ranked below every TP do not lower AP


def test_matches_pycocotools_stats(synthetic):
    gts, preds = synthetic
    n_boxes = sum(len(g.boxes) for g in gts)
    n_pred = sum(len(p.boxes) for p in preds)
    assert n_boxes > 250 and n_pred > 400  # a realistic amount of boxes
    assert max(len(p.scores) for p in preds) <= 100
    m = evaluate(gts, preds, NAMES)
    ref = _pycoco_eval(gts, preds, NAMES).stats
    ours = [m.map50_95, m.map50, m.map75, m.ap_small, m.ap_medium, m.ap_large]
    assert 0.1 < m.map50_95 < 0.9  # the noise makes this a non-trivial check
    assert all(r > 0 for r in ref[:6])  # every area range is populated
    np.testing.assert_allclose([_as_coco(v) for v in ours], ref[:6], atol=1e-6, rtol=0)
    assert m.max_dets == 100


def test_per_class_ap_matches_pycocotools(synthetic):
    gts, preds = synthetic
    m = evaluate(gts, preds, NAMES)
    for c in range(len(NAMES)):
        ref = _pycoco_eval(gts, preds, NAMES, cat_ids=[c]).stats
        assert m.ap50_95_per_class[c] == pytest.approx(ref[0], abs=1e-6)
        assert m.ap50_per_class[c] == pytest.approx(ref[1], abs=1e-6)
    n_gt = np.bincount(np.concatenate([g.classes for g in gts]), minlength=len(NAMES))
    assert m.n_gt_per_class.tolist() == n_gt.tolist()


def test_more_than_100_predictions_per_image_are_all_counted(synthetic):
    gts, preds = synthetic
    rng = np.random.default_rng(7)
    crowded = []
    for i, p in enumerate(preds):
        if i % 5 == 0:  # some images get up to ~170 detections, many of them duplicates of real ones
            k = 120
            src = rng.integers(0, max(len(p.boxes), 1), size=k)
            extra = p.boxes[src] + rng.normal(0, 3, size=(k, 4)) if len(p.boxes) else rng.uniform(0, 300, (k, 4))
            extra[:, 2:] = np.maximum(extra[:, 2:], extra[:, :2] + 1)
            p = ImagePred(
                np.vstack([p.boxes, extra]),
                np.r_[p.scores, rng.uniform(0.01, 0.95, k)],
                np.r_[p.classes, rng.integers(0, len(NAMES), k)],
            )
        crowded.append(p)
    max_per_image = max(len(p.scores) for p in crowded)
    assert max_per_image > 100
    m = evaluate(gts, crowded, NAMES)
    assert m.max_dets == max_per_image
    ref = _pycoco_eval(gts, crowded, NAMES, max_dets=max_per_image)
    expected = [
        _ref_ap(ref),
        _ref_ap(ref, iou=0.5),
        _ref_ap(ref, iou=0.75),
        _ref_ap(ref, "small"),
        _ref_ap(ref, "medium"),
        _ref_ap(ref, "large"),
    ]
    ours = [m.map50_95, m.map50, m.map75, m.ap_small, m.ap_medium, m.ap_large]
    np.testing.assert_allclose([_as_coco(v) for v in ours], expected, atol=1e-6, rtol=0)


def test_best_f1_matches_brute_force_on_pycocotools_matches(synthetic):
    gts, preds = synthetic
    m = evaluate(gts, preds, NAMES)
    ev = _pycoco_eval(gts, preds, NAMES, iou_thrs=[0.5])
    precision, recall, f1, conf = _brute_force_best_f1(ev, m.n_gt_per_class)
    assert m.f1 == pytest.approx(f1, abs=1e-9)
    assert m.precision == pytest.approx(precision, abs=1e-9)
    assert m.recall == pytest.approx(recall, abs=1e-9)
    assert m.conf_best_f1 == pytest.approx(conf, abs=1e-12)
    assert 0 < m.precision < 1 and 0 < m.recall < 1
    assert np.nanmean(m.precision_per_class) == pytest.approx(m.precision)
    assert np.nanmean(m.recall_per_class) == pytest.approx(m.recall)


def test_pr_curves_come_from_coco_precision_at_iou_50(synthetic):
    gts, preds = synthetic
    m = evaluate(gts, preds, NAMES)
    assert m.pr_precision.shape == (len(NAMES), 101)
    ref = _pycoco_eval(gts, preds, NAMES)
    np.testing.assert_allclose(m.pr_precision, ref.eval["precision"][0, :, :, 0, -1].T, atol=1e-9)
    # AP50 is the mean of the curve
    np.testing.assert_allclose(m.pr_precision.mean(axis=1), m.ap50_per_class, atol=1e-12)


def test_no_predictions_at_all():
    rng = np.random.default_rng(2)
    gts = _random_gt(rng, 10, len(NAMES))
    m = evaluate(gts, [ImagePred.empty() for _ in gts], NAMES)
    assert (m.map50_95, m.map50, m.map75) == (0.0, 0.0, 0.0)
    assert (m.precision, m.recall, m.f1) == (0.0, 0.0, 0.0)
    assert math.isnan(m.conf_best_f1)
    assert np.all(m.ap50_95_per_class == 0.0)
    d = m.to_dict()
    assert d["conf_best_f1"] is None and d["mAP50-95"] == 0.0
    json.dumps(d, allow_nan=False)


def test_class_without_gt_is_nan_and_left_out_of_means():
    rng = np.random.default_rng(3)
    names = ["a", "b", "c"]
    gts = _random_gt(rng, 15, 2)  # classes 0 and 1 only; "c" has no GT
    preds = _noisy_preds(rng, gts, 2)
    m = evaluate(gts, preds, names)
    assert m.n_gt_per_class[2] == 0
    assert math.isnan(m.ap50_95_per_class[2]) and math.isnan(m.ap50_per_class[2])
    assert math.isnan(m.precision_per_class[2]) and np.all(np.isnan(m.pr_precision[2]))
    assert m.map50_95 == pytest.approx(np.mean(m.ap50_95_per_class[:2]), abs=1e-12)
    # false positives of the class without GT change nothing
    with_c = [
        ImagePred(
            np.vstack([p.boxes, g.boxes]),
            np.r_[p.scores, np.full(len(g.boxes), 0.99)],
            np.r_[p.classes, np.full(len(g.boxes), 2)],
        )
        for p, g in zip(preds, gts)
    ]
    m2 = evaluate(gts, with_c, names)
    for key in ("map50_95", "map50", "precision", "recall", "f1", "conf_best_f1"):
        assert getattr(m2, key) == pytest.approx(getattr(m, key), abs=1e-12)
    d = m.to_dict()
    assert d["per_class"]["c"] == {"AP50-95": None, "AP50": None, "n_gt": 0}
    json.dumps(d, allow_nan=False)


def test_images_without_gt_and_preds_change_nothing(synthetic):
    gts, preds = synthetic
    m = evaluate(gts, preds, NAMES)
    empty_gt = [ImageGT(f"bg_{i}.jpg", 320, 240, np.zeros((0, 4)), np.zeros(0, dtype=int)) for i in range(5)]
    m2 = evaluate(gts + empty_gt, preds + [ImagePred.empty() for _ in empty_gt], NAMES)
    assert m2.to_dict() == m.to_dict()
    assert m2.n_images == m.n_images + 5


def test_no_gt_boxes_at_all_gives_nan_not_crash():
    gts = [ImageGT("bg.jpg", 100, 100, np.zeros((0, 4)), np.zeros(0, dtype=int))]
    preds = [ImagePred(np.array([[1.0, 1, 20, 20]]), np.array([0.5]), np.array([0]))]
    m = evaluate(gts, preds, ["a"])
    assert math.isnan(m.map50_95) and math.isnan(m.precision)
    assert m.fitness == 0.0
    assert m.to_dict()["mAP50-95"] is None


def test_empty_val_set_and_bad_class_raise_data_error():
    with pytest.raises(DataError):
        evaluate([], [], NAMES)
    bad = [ImageGT("x.jpg", 100, 100, np.array([[0.0, 0, 10, 10]]), np.array([7]))]
    with pytest.raises(DataError, match="class id 7"):
        evaluate(bad, [ImagePred.empty()], NAMES)
    with pytest.raises(ValueError):
        evaluate(bad[:1], [], NAMES)


def test_to_dict_format_and_summary(synthetic):
    gts, preds = synthetic
    m = evaluate(gts, preds, NAMES)
    d = m.to_dict()
    assert set(d) == TO_DICT_KEYS
    assert list(d["per_class"]) == NAMES
    for entry in d["per_class"].values():
        assert set(entry) == {"AP50-95", "AP50", "n_gt"}
        assert type(entry["n_gt"]) is int and type(entry["AP50"]) is float
    assert all(type(d[k]) is float for k in TO_DICT_KEYS - {"per_class"})
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert m.fitness == d["mAP50-95"]
    table = m.summary_table()
    for name in NAMES + ["all"]:
        assert name in table
    assert isinstance(m, DetectionMetrics)


def test_coco_json_builders():
    gts = [
        ImageGT("a.jpg", 100, 80, np.array([[10.0, 20, 40, 60]]), np.array([1])),
        ImageGT("b.jpg", 50, 50, np.zeros((0, 4)), np.zeros(0, dtype=int)),
    ]
    d = build_coco_gt(gts, ["x", "y"])
    assert [img["id"] for img in d["images"]] == [1, 2]
    assert d["categories"] == [
        {"id": 0, "name": "x", "supercategory": "object"},
        {"id": 1, "name": "y", "supercategory": "object"},
    ]
    (ann,) = d["annotations"]
    assert ann == {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [10.0, 20.0, 30.0, 40.0],
        "area": 1200.0,
        "iscrowd": 0,
    }
    res = build_coco_results([ImagePred(np.array([[1.0, 2, 4, 8]]), np.array([0.5]), np.array([0]))], [9])
    assert res == [{"image_id": 9, "category_id": 0, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}]
    json.dumps(d)


def test_evaluation_is_quiet(capfd, synthetic):
    gts, preds = synthetic
    evaluate(gts[:10], preds[:10], NAMES)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_import_does_not_pull_torch():
    code = (
        "import sys, numpy as np\n"
        "import kubedistill.eval.coco as c, kubedistill.eval.predictions\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'faster_coco_eval' not in sys.modules, 'faster_coco_eval imported eagerly'\n"
        "g = [c.ImageGT('a', 10, 10, np.array([[0., 0, 5, 5]]), np.array([0]))]\n"
        "c.evaluate(g, [c.ImagePred(g[0].boxes, np.array([.9]), np.array([0]))], ['a'])\n"
        "assert 'torch' not in sys.modules, 'torch imported by evaluate'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
