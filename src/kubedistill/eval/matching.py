"""Detection matching for the confusion matrix and the calibration plot, and the expected
calibration error. This is the project's own greedy IoU matching: a diagnostic, not the COCO metric
(that stays in :mod:`kubedistill.eval.coco`). Needs numpy only.

The matching rule (:func:`match_detections`):

* detections with ``score < conf`` are ignored; the others are taken in descending score order
  (stable for ties);
* each one is matched to an unmatched GT box of the same image with IoU >= ``iou_thr``: the
  highest-IoU GT of its own class if there is one (a true positive), otherwise the highest-IoU GT
  of any other class (a class confusion, a false positive for calibration), otherwise none (a
  false positive on background);
* GT boxes left unmatched are misses.

Confusion matrix ``counts[p, t]`` (shape ``(C+1, C+1)``): row = predicted class, column = true
class, index ``C`` = background. So the last row holds missed GT boxes per true class and the
last column false positives on background per predicted class; ``counts[C, C]`` is always 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from kubedistill.eval.coco import ImageGT, ImagePred

__all__ = ["MatchResult", "match_detections", "calibration_bins", "expected_calibration_error"]


class MatchResult(NamedTuple):
    """Output of :func:`match_detections`.

    Per-detection arrays (detections with ``score >= conf``, in descending score order):
    ``scores`` float, ``is_tp`` bool, ``pred_cls`` int, ``gt_cls`` int (class of the matched GT
    box, -1 when unmatched). ``image_index`` int: position of the detection's image in the input.
    ``confusion``: int64 ``(C+1, C+1)`` counts, ``[pred, true]``, index C = background.
    """

    scores: np.ndarray
    is_tp: np.ndarray
    pred_cls: np.ndarray
    gt_cls: np.ndarray
    image_index: np.ndarray
    confusion: np.ndarray

    @property
    def detections(self) -> list[tuple[float, bool, int, int]]:
        """The per-detection records as ``(score, is_tp, pred_cls, matched_gt_cls or -1)``."""
        return [
            (float(s), bool(t), int(p), int(g))
            for s, t, p, g in zip(self.scores, self.is_tp, self.pred_cls, self.gt_cls)
        ]


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a`` [n,4] against ``b`` [m,4] -> [n, m]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def match_detections(
    gts: Sequence[ImageGT],
    preds: Sequence[ImagePred],
    iou_thr: float = 0.5,
    conf: float = 0.25,
    nc: int | None = None,
) -> MatchResult:
    """Greedy IoU matching of ``preds`` to ``gts`` (same order, one entry per image).

    See the module docstring for the rule. ``nc`` is the number of classes (default: largest class
    id seen + 1). Class ids outside ``0..nc-1`` raise ValueError.
    """
    if len(gts) != len(preds):
        raise ValueError(f"{len(preds)} predictions for {len(gts)} images")
    seen = [int(g.classes.max()) for g in gts if len(g.classes)] + [
        int(p.classes.max()) for p in preds if len(p.classes)
    ]
    if nc is None:
        nc = max(seen, default=-1) + 1
    nc = int(nc)
    for g, p in zip(gts, preds):
        for arr in (g.classes, p.classes):
            if len(arr) and (arr.min() < 0 or arr.max() >= nc):
                raise ValueError(f"class id out of range 0..{nc - 1}")
    bg = nc
    confusion = np.zeros((nc + 1, nc + 1), dtype=np.int64)
    scores_out: list[np.ndarray] = []
    tp_out: list[np.ndarray] = []
    pcls_out: list[np.ndarray] = []
    gcls_out: list[np.ndarray] = []
    img_out: list[np.ndarray] = []
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        keep = np.flatnonzero(pred.scores >= conf)
        keep = keep[np.argsort(-pred.scores[keep], kind="mergesort")]
        p_boxes, p_scores, p_cls = pred.boxes[keep], pred.scores[keep], pred.classes[keep]
        g_cls = gt.classes
        iou = _iou_matrix(p_boxes, gt.boxes)
        gt_taken = np.zeros(len(g_cls), dtype=bool)
        matched = np.full(len(keep), -1, dtype=np.int64)
        for d in range(len(keep)):
            if len(g_cls) == 0:
                break
            row = np.where(gt_taken | (iou[d] < iou_thr), -1.0, iou[d])
            same = np.where(g_cls == p_cls[d], row, -1.0)
            j = int(np.argmax(same))
            if same[j] < 0:
                j = int(np.argmax(row))
                if row[j] < 0:
                    continue
            gt_taken[j] = True
            matched[d] = j
        m_cls = np.where(matched >= 0, g_cls[np.maximum(matched, 0)] if len(g_cls) else -1, -1)
        is_tp = (matched >= 0) & (m_cls == p_cls)
        # Confusion counts: matched pairs, false positives on background, missed GT.
        np.add.at(confusion, (p_cls[matched >= 0], m_cls[matched >= 0]), 1)
        np.add.at(confusion, (p_cls[matched < 0], np.full(int((matched < 0).sum()), bg)), 1)
        np.add.at(confusion, (np.full(int((~gt_taken).sum()), bg), g_cls[~gt_taken]), 1)
        scores_out.append(p_scores)
        tp_out.append(is_tp)
        pcls_out.append(p_cls)
        gcls_out.append(m_cls.astype(np.int64))
        img_out.append(np.full(len(keep), i, dtype=np.int64))

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    scores = cat(scores_out, np.float64)
    order = np.argsort(-scores, kind="mergesort")
    return MatchResult(
        scores=scores[order],
        is_tp=cat(tp_out, bool)[order],
        pred_cls=cat(pcls_out, np.int64)[order],
        gt_cls=cat(gcls_out, np.int64)[order],
        image_index=cat(img_out, np.int64)[order],
        confusion=confusion,
    )


def calibration_bins(scores: np.ndarray, is_tp: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, accuracy, mean confidence) per equal-width confidence bin of [0, 1]."""
    bins = max(int(bins), 1)
    idx = np.clip(np.floor(np.asarray(scores, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    tp = np.bincount(idx, weights=np.asarray(is_tp, dtype=np.float64), minlength=bins)
    conf_sum = np.bincount(idx, weights=np.asarray(scores, dtype=np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, tp / np.maximum(count, 1.0), np.nan)
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1.0), np.nan)
    return count, acc, mean_conf


def expected_calibration_error(scores: np.ndarray, is_tp: np.ndarray, bins: int = 10) -> float:
    """ECE: detections binned by confidence into ``bins`` equal-width bins of [0, 1] (a score of
    exactly 1 goes to the last bin); ``sum_b n_b / N * |accuracy_b - mean confidence_b|`` with
    accuracy = fraction of true positives. ``nan`` without detections."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) == 0:
        return math.nan
    count, acc, mean_conf = calibration_bins(scores, is_tp, bins)
    used = count > 0
    return float(np.sum(count[used] / count.sum() * np.abs(acc[used] - mean_conf[used])))
