"""COCO-style detection metrics, computed by faster-coco-eval.

This module only converts boxes to COCO json dicts, runs ``faster_coco_eval.COCOeval_faster``
and reads its arrays; it never computes AP itself. It imports numpy only (no torch), and imports
faster-coco-eval lazily inside :func:`evaluate`, so that ``ImageGT``/``ImagePred`` stay usable in
the torch-free ``serve`` install.

Definitions used (all of them also hold for :class:`DetectionMetrics`):

* **Ids.** Image ids are ``1..N`` in the order of the ``gts`` list. Category ids are the
  0-based class ids themselves (``category_id == class id``, no ``+1``), the same ids that
  ``kubedistill predict`` writes. Annotation ids (GT and detections) start at 1.
* **maxDets.** COCO's default caps each image at 100 detections per category. We do not want to
  drop any of the (up to 300) detections a model returns, so ``params.maxDets`` is
  ``[1, 10, M]`` with ``M = max(100, largest number of predictions in one image)``. Every AP is
  read at ``maxDets=M``. With at most 100 predictions per image this is exactly the COCO default.
  Area ranges are COCO's standard ranges (small < 32², medium 32²..96², large > 96², by GT box
  area ``w*h`` in original pixels).
* **AP.** ``mAP50-95``, ``mAP50``, ``mAP75`` and ``AP_small/medium/large`` are
  faster-coco-eval's ``stats[0:6]``. COCO reports -1 when there is nothing to average (for
  example no GT box in an area range); we report ``nan`` and JSON ``null``. Per-class AP is the
  mean of the valid (> -1) entries of ``eval["precision"][:, :, k, area=all, maxDets=M]`` (all
  ten IoU thresholds for AP50-95, IoU 0.5 only for AP50); a class without GT boxes is ``nan``.
  Classes without GT are left out of every mean, as in COCO.
* **Precision / recall / F1 at the best confidence.** The matches come from a second
  faster-coco-eval run with ``iouThrs=[0.5]``, one area range (all) and ``maxDets=[M]``, i.e.
  COCO's own greedy matching at IoU 0.5. (The ``matched`` dict of the standard run mixes matches
  of all ten IoU thresholds, so it cannot be used for this.) For a confidence threshold t, for a
  class c with ``n_gt`` > 0 boxes: ``TP`` = detections of c with score >= t matched to a GT box,
  ``n_det`` = detections of c with score >= t, ``P = TP / n_det`` (0 when ``n_det`` is 0),
  ``R = TP / n_gt``, ``F1 = 2PR/(P+R)`` (0 when P+R is 0). The candidate thresholds are all
  distinct detection scores; t* is the one that maximizes the mean F1 over the classes that have
  GT boxes (ties: the highest such confidence). ``precision``, ``recall`` and ``f1`` are the
  means over those classes at t*; ``conf_best_f1`` is t*. When no detection is a true positive
  (including: no detections at all) P = R = F1 = 0 and ``conf_best_f1`` is ``nan``.
  Detections of classes without GT boxes take no part in these means.
* **PR curves.** ``pr_recall`` is COCO's 101-point recall grid ``0, 0.01, ..., 1``;
  ``pr_precision[c]`` is COCO's interpolated precision at IoU 0.5 (area all, maxDets M) on that
  grid, ``nan`` for a class without GT boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kubedistill.core.atomic import none_if_nan
from kubedistill.core.errors import DataError, UserError

__all__ = [
    "ImageGT",
    "ImagePred",
    "DetectionMetrics",
    "build_coco_gt",
    "build_coco_results",
    "evaluate",
]

# Index of the standard COCO stats we read (faster-coco-eval's summarize() layout for bbox
# with the three standard area ranges): AP, AP50, AP75, AP_small, AP_medium, AP_large.
_STAT_KEYS = ("map50_95", "map50", "map75", "ap_small", "ap_medium", "ap_large")


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """print_function for faster-coco-eval: swallow its progress and summary lines."""


def _as_boxes(boxes: Any) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape [n, 4], got {arr.shape}")
    return arr


def _as_vector(values: Any, n: int, dtype: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} entries for {n} boxes")
    return arr


@dataclass
class ImageGT:
    """Ground truth of one image: boxes are xyxy in original pixels, classes 0-based ids."""

    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = _as_boxes(self.boxes)
        self.classes = _as_vector(self.classes, len(self.boxes), np.int64, "classes")


@dataclass
class ImagePred:
    """Predictions for one image: boxes xyxy in original pixels, scores, 0-based class ids."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = _as_boxes(self.boxes)
        self.scores = _as_vector(self.scores, len(self.boxes), np.float64, "scores")
        self.classes = _as_vector(self.classes, len(self.boxes), np.int64, "classes")

    @classmethod
    def empty(cls) -> ImagePred:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float64, copy=True)
    out[:, 2] = boxes[:, 2] - boxes[:, 0]
    out[:, 3] = boxes[:, 3] - boxes[:, 1]
    return out


def build_coco_gt(images: Sequence[ImageGT], names: Sequence[str]) -> dict:
    """COCO ground-truth json dict.

    Image ids are 1..N in list order, annotation ids 1..n, ``category_id`` is the 0-based class
    id, ``area`` is the box ``w*h`` in original pixels and ``iscrowd`` is 0.
    """
    n_cls = len(names)
    out_images: list[dict] = []
    annotations: list[dict] = []
    ann_id = 0
    for i, img in enumerate(images, start=1):
        out_images.append(
            {"id": i, "file_name": str(img.file_name), "width": int(img.width), "height": int(img.height)}
        )
        if len(img.classes) and (img.classes.min() < 0 or img.classes.max() >= n_cls):
            bad = int(img.classes[(img.classes < 0) | (img.classes >= n_cls)][0])
            raise DataError(
                f"Label of image {img.file_name} has class id {bad}, but the dataset defines "
                f"{n_cls} class(es) (ids 0..{n_cls - 1})",
                "Fix the label file or add the class to the dataset's names",
            )
        for box, cls in zip(_xyxy_to_xywh(img.boxes).tolist(), img.classes.tolist()):
            ann_id += 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": i,
                    "category_id": int(cls),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": str(name), "supercategory": "object"} for c, name in enumerate(names)]
    return {
        "info": {"description": "kubedistill validation set"},
        "images": out_images,
        "annotations": annotations,
        "categories": categories,
    }


def build_coco_results(preds: Sequence[ImagePred], image_ids: Sequence[int]) -> list[dict]:
    """COCO results list: one ``{"image_id", "category_id", "bbox" (xywh), "score"}`` per box."""
    if len(preds) != len(image_ids):
        raise ValueError(f"{len(preds)} predictions for {len(image_ids)} image ids")
    results: list[dict] = []
    for pred, image_id in zip(preds, image_ids):
        for box, score, cls in zip(_xyxy_to_xywh(pred.boxes).tolist(), pred.scores.tolist(), pred.classes.tolist()):
            results.append({"image_id": int(image_id), "category_id": int(cls), "bbox": box, "score": score})
    return results


def _nan_if_negative(value: float) -> float:
    value = float(value)
    return float("nan") if value < 0 else value


@dataclass
class DetectionMetrics:
    """Result of :func:`evaluate`. See the module docstring for the exact definitions.

    Scalars are floats in 0..1 or ``nan`` (undefined); per-class arrays have one entry per class
    name, in class-id order.
    """

    names: list[str]
    map50_95: float
    map50: float
    map75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    precision: float
    recall: float
    f1: float
    conf_best_f1: float
    ap50_95_per_class: np.ndarray  # [C], nan where the class has no GT
    ap50_per_class: np.ndarray  # [C]
    n_gt_per_class: np.ndarray  # [C] int
    precision_per_class: np.ndarray  # [C] at conf_best_f1, nan where the class has no GT
    recall_per_class: np.ndarray  # [C]
    pr_recall: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 101))  # [101]
    pr_precision: np.ndarray = field(default_factory=lambda: np.zeros((0, 101)))  # [C, 101]
    max_dets: int = 100
    n_images: int = 0
    n_predictions: int = 0

    @property
    def fitness(self) -> float:
        """Model-selection score: mAP50-95 (0.0 when undefined, so comparisons keep working)."""
        return 0.0 if math.isnan(self.map50_95) else float(self.map50_95)

    def to_dict(self) -> dict:
        """JSON-safe dict (nan -> None, numpy -> Python numbers)."""
        per_class = {
            str(name): {
                "AP50-95": none_if_nan(self.ap50_95_per_class[c]),
                "AP50": none_if_nan(self.ap50_per_class[c]),
                "n_gt": int(self.n_gt_per_class[c]),
            }
            for c, name in enumerate(self.names)
        }
        return {
            "mAP50-95": none_if_nan(self.map50_95),
            "mAP50": none_if_nan(self.map50),
            "mAP75": none_if_nan(self.map75),
            "AP_small": none_if_nan(self.ap_small),
            "AP_medium": none_if_nan(self.ap_medium),
            "AP_large": none_if_nan(self.ap_large),
            "precision": none_if_nan(self.precision),
            "recall": none_if_nan(self.recall),
            "f1": none_if_nan(self.f1),
            "conf_best_f1": none_if_nan(self.conf_best_f1),
            "per_class": per_class,
        }

    def summary_table(self) -> str:
        """Human-readable per-class table (AP at maxDets M; P/R at the best-F1 confidence)."""

        def fmt(value: float) -> str:
            return "      -" if math.isnan(float(value)) else f"{float(value):7.3f}"

        width = max([len("class"), 3] + [len(str(n)) for n in self.names])
        header = f"{'class':<{width}}  {'n_gt':>7} {'P':>7} {'R':>7} {'AP50':>7} {'AP50-95':>7}"
        lines = [header, "-" * len(header)]
        lines.append(
            f"{'all':<{width}}  {int(self.n_gt_per_class.sum()):>7d} {fmt(self.precision)} "
            f"{fmt(self.recall)} {fmt(self.map50)} {fmt(self.map50_95)}"
        )
        for c, name in enumerate(self.names):
            lines.append(
                f"{str(name):<{width}}  {int(self.n_gt_per_class[c]):>7d} {fmt(self.precision_per_class[c])} "
                f"{fmt(self.recall_per_class[c])} {fmt(self.ap50_per_class[c])} {fmt(self.ap50_95_per_class[c])}"
            )
        conf = "-" if math.isnan(self.conf_best_f1) else f"{self.conf_best_f1:.3f}"
        lines.append(
            f"F1 {fmt(self.f1).strip()} at conf {conf}; AP75 {fmt(self.map75).strip()}; "
            f"AP small/medium/large {fmt(self.ap_small).strip()}/{fmt(self.ap_medium).strip()}/"
            f"{fmt(self.ap_large).strip()}; {self.n_images} images, {self.n_predictions} predictions, "
            f"maxDets {self.max_dets}"
        )
        return "\n".join(lines)


def _import_faster_coco_eval() -> Any:
    try:
        import faster_coco_eval
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise UserError(
            "Evaluation needs the faster-coco-eval package, which is not installed",
            "Install the training extra: pip install 'kubedistill[train]'",
        ) from exc
    return faster_coco_eval


def _coco_dt(fce: Any, gt_dict: dict, results: list[dict]) -> Any:
    """Detections as a faster-coco-eval COCO object (what loadRes builds, minus the polygons)."""
    annotations = []
    for i, res in enumerate(results, start=1):
        bbox = res["bbox"]
        annotations.append({**res, "id": i, "area": bbox[2] * bbox[3], "iscrowd": 0})
    dataset = {
        "images": list(gt_dict["images"]),
        "categories": [dict(c) for c in gt_dict["categories"]],
        "annotations": annotations,
    }
    return fce.COCO(dataset, print_function=_quiet)


def _best_f1(
    scores: np.ndarray, classes: np.ndarray, is_tp: np.ndarray, n_gt: np.ndarray
) -> tuple[float, float, float, float, np.ndarray, np.ndarray]:
    """Threshold sweep on COCO's IoU-0.5 matches (definition in the module docstring).

    Returns (precision, recall, f1, conf, precision_per_class, recall_per_class); the per-class
    arrays are nan for classes without GT.
    """
    n_cls = len(n_gt)
    has_gt = n_gt > 0
    k = int(has_gt.sum())
    p_cls = np.where(has_gt, 0.0, np.nan)
    r_cls = np.where(has_gt, 0.0, np.nan)
    if k == 0:
        nan = float("nan")
        return nan, nan, nan, nan, p_cls, r_cls
    keep = has_gt[classes] if len(classes) else np.zeros(0, dtype=bool)
    scores, classes, is_tp = scores[keep], classes[keep], is_tp[keep].astype(np.float64)
    if not is_tp.any():
        return 0.0, 0.0, 0.0, float("nan"), p_cls, r_cls

    # Detections in descending score order (stable, like COCO).
    order = np.argsort(-scores, kind="mergesort")
    scores, classes, is_tp = scores[order], classes[order], is_tp[order]
    # Per-class running counts at each detection: n (detections so far) and tp (true positives).
    by_cls = np.argsort(classes, kind="mergesort")  # groups by class, keeps score order inside
    cls_sorted = classes[by_cls]
    tp_sorted = is_tp[by_cls]
    starts = np.r_[0, np.flatnonzero(np.diff(cls_sorted)) + 1]
    group_len = np.diff(np.r_[starts, len(by_cls)])
    cum_tp_sorted = np.cumsum(tp_sorted)
    cum_n = np.empty(len(by_cls), dtype=np.float64)
    cum_tp = np.empty(len(by_cls), dtype=np.float64)
    cum_n[by_cls] = np.arange(len(by_cls)) - np.repeat(starts, group_len) + 1.0
    cum_tp[by_cls] = cum_tp_sorted - np.repeat(cum_tp_sorted[starts] - tp_sorted[starts], group_len)
    # F1 of a class = 2 TP / (n_det + n_gt); the change of the class's F1 when this detection is
    # added, summed in score order, gives the sum of F1 over classes at every cut-off.
    g = n_gt[classes].astype(np.float64)
    f1_after = 2.0 * cum_tp / (cum_n + g)
    f1_before = 2.0 * (cum_tp - is_tp) / (cum_n - 1.0 + g)
    mean_f1 = np.cumsum(f1_after - f1_before) / k
    # Only cut after the last of equal scores (a threshold keeps all detections with score >= t).
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    candidates = np.flatnonzero(last_of_tie)
    cand_f1 = mean_f1[candidates]
    # First (= highest confidence) cut-off within float noise of the maximum.
    best = int(candidates[np.flatnonzero(cand_f1 >= cand_f1.max() - 1e-12)[0]])
    conf = float(scores[best])
    n_det = np.bincount(classes[: best + 1], minlength=n_cls).astype(np.float64)
    tp = np.bincount(classes[: best + 1], weights=is_tp[: best + 1], minlength=n_cls)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_all = np.where(n_det > 0, tp / np.maximum(n_det, 1.0), 0.0)
        r_all = tp / n_gt
    p_cls = np.where(has_gt, p_all, np.nan)
    r_cls = np.where(has_gt, r_all, np.nan)
    f1_cls = np.where((p_all + r_all) > 0, 2 * p_all * r_all / np.maximum(p_all + r_all, 1e-300), 0.0)
    precision = float(p_cls[has_gt].mean())
    recall = float(r_cls[has_gt].mean())
    f1 = float(f1_cls[has_gt].mean())
    return precision, recall, f1, conf, p_cls, r_cls


def _validate(gts: Sequence[ImageGT], preds: Sequence[ImagePred], names: Sequence[str]) -> None:
    if len(gts) == 0:
        raise DataError(
            "The validation set has no images, so there is nothing to evaluate",
            "Add labelled images to the val split of the dataset",
        )
    if len(names) == 0:
        raise DataError("The dataset defines no class names", "List the classes under 'names' in the dataset yaml")
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} images")
    n_cls = len(names)
    for pred in preds:
        if len(pred.classes) and (pred.classes.min() < 0 or pred.classes.max() >= n_cls):
            raise ValueError(f"predicted class id out of range 0..{n_cls - 1}")


def evaluate(gts: Sequence[ImageGT], preds: Sequence[ImagePred], names: Sequence[str]) -> DetectionMetrics:
    """COCO bbox metrics of ``preds`` against ``gts`` (same order, one entry per image).

    Raises DataError for an empty validation set or a GT class id outside ``names``.
    """
    _validate(gts, preds, names)
    names = [str(n) for n in names]
    n_cls = len(names)
    fce = _import_faster_coco_eval()

    gt_dict = build_coco_gt(gts, names)
    image_ids = [img["id"] for img in gt_dict["images"]]
    results = build_coco_results(preds, image_ids)
    max_dets = max([100] + [len(p.scores) for p in preds])
    all_gt_classes = np.concatenate([g.classes for g in gts]) if gts else np.zeros(0, dtype=np.int64)
    n_gt = np.bincount(all_gt_classes, minlength=n_cls).astype(np.int64)

    coco_gt = fce.COCO(gt_dict, print_function=_quiet)
    coco_dt = _coco_dt(fce, gt_dict, results)

    # 1) Standard COCO evaluation (10 IoU thresholds, standard area ranges), maxDets [1, 10, M].
    ev = fce.COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_quiet)
    ev.params.maxDets = [1, 10, max_dets]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = {key: _nan_if_negative(ev.stats[i]) for i, key in enumerate(_STAT_KEYS)}

    precision_arr = np.asarray(ev.eval["precision"], dtype=np.float64)  # [T, R, K, A, M]
    cat_ids = [int(c) for c in ev.params.catIds]
    iou_thrs = np.asarray(ev.params.iouThrs)
    t50 = int(np.flatnonzero(np.isclose(iou_thrs, 0.5))[0])
    area_all = list(ev.params.areaRngLbl).index("all")
    ap50_95 = np.full(n_cls, np.nan)
    ap50 = np.full(n_cls, np.nan)
    pr_precision = np.full((n_cls, len(ev.params.recThrs)), np.nan)
    for k, cat in enumerate(cat_ids):
        pk = precision_arr[:, :, k, area_all, -1]  # [T, R]
        if (pk > -1).any():
            ap50_95[cat] = float(pk[pk > -1].mean())
        p50 = pk[t50]
        if (p50 > -1).any():
            ap50[cat] = float(p50[p50 > -1].mean())
            pr_precision[cat] = np.where(p50 > -1, p50, np.nan)

    # 2) COCO's greedy matching at IoU 0.5 only, for precision/recall/F1 at the best confidence.
    scores = np.array([r["score"] for r in results], dtype=np.float64)
    classes = np.array([r["category_id"] for r in results], dtype=np.int64)
    is_tp = np.zeros(len(results), dtype=bool)
    if results and n_gt.sum() > 0:
        ev50 = fce.COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_quiet)
        ev50.params.iouThrs = np.array([0.5])
        ev50.params.areaRng = [[0.0, 1e5**2]]
        ev50.params.areaRngLbl = ["all"]
        ev50.params.maxDets = [max_dets]
        ev50.evaluate()
        ev50.accumulate()
        matched_dt = [int(key.split("_", 1)[0]) for key in ev50.eval["matched"]]
        if matched_dt:
            is_tp[np.asarray(matched_dt, dtype=np.int64) - 1] = True  # dt annotation id = index + 1
    precision, recall, f1, conf, p_cls, r_cls = _best_f1(scores, classes, is_tp, n_gt)

    return DetectionMetrics(
        names=names,
        **stats,
        precision=precision,
        recall=recall,
        f1=f1,
        conf_best_f1=conf,
        ap50_95_per_class=ap50_95,
        ap50_per_class=ap50,
        n_gt_per_class=n_gt,
        precision_per_class=p_cls,
        recall_per_class=r_cls,
        pr_recall=np.asarray(ev.params.recThrs, dtype=np.float64).copy(),
        pr_precision=pr_precision,
        max_dets=max_dets,
        n_images=len(gts),
        n_predictions=len(results),
    )
