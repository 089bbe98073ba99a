"""Where a detector goes wrong: the confusion matrix and confidence calibration (detections matched to ground
truth with `kubedistill.eval.matching.match_detections`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from kubedistill.eval.coco import ImageGT, ImagePred
from kubedistill.eval.matching import calibration_bins, expected_calibration_error, match_detections
from kubedistill.eval.plots.figure import _class_name, _figure, _fmt, _no_data_figure, _save_figure, _text_inches


def plot_confusion_matrix(
    counts: np.ndarray, names: Sequence[str], out_png: str | os.PathLike[str], normalize: bool = True
) -> Path:
    """Confusion matrix ``counts[pred, true]`` of shape (C+1, C+1), background last.

    With ``normalize`` each column (true class) is divided by its sum, so the diagonal is the
    recall of each class at the matching's confidence threshold and the background column shows
    how the false positives split over the predicted classes.
    """
    title = "confusion matrix"
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] < 2:
        return _no_data_figure(out_png, title, "no classes")
    if counts.sum() == 0:
        return _no_data_figure(out_png, title, "no ground truth and no detections above the threshold")
    nc = counts.shape[0] - 1
    labels = [_class_name(list(names), c) for c in range(nc)] + ["background"]
    if normalize:
        col = counts.sum(axis=0, keepdims=True)
        shown = np.divide(counts, col, out=np.zeros_like(counts), where=col > 0)
    else:
        shown = counts
    side = min(max(3.5, 0.4 * (nc + 1)), 20.0)  # inches of the matrix itself
    fs = max(3.0, min(9.0, side / (nc + 1) * 72 * 0.55))  # points; fits one row of cells
    margin = _text_inches(labels, fs) + 0.45  # tick labels + axis label
    left, bottom, top, cbar = margin + 0.1, margin + 0.1, 0.7, 1.2
    width, height = left + side + cbar, bottom + side + top
    fig = _figure(width, height)
    ax = fig.add_axes((left / width, bottom / height, side / width, side / height))
    cax = fig.add_axes(((left + side + 0.2) / width, bottom / height, 0.2 / width, side / height))
    masked = np.ma.masked_where(shown <= 0, shown)
    im = ax.imshow(masked, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(shown.max(), 1.0), aspect="auto")
    ax.set_facecolor("white")
    fig.colorbar(im, cax=cax)
    ticks = np.arange(nc + 1)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=fs)
    ax.set_yticks(ticks, labels, fontsize=fs)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    if nc + 1 <= 30:
        vmax = 1.0 if normalize else max(shown.max(), 1.0)
        for p in range(nc + 1):
            for t in range(nc + 1):
                if counts[p, t] == 0:
                    continue
                text = f"{shown[p, t]:.2f}" if normalize else f"{int(counts[p, t])}"
                color = "white" if shown[p, t] > 0.55 * vmax else "black"
                ax.text(t, p, text, ha="center", va="center", fontsize=fs, color=color)
    kind = "normalised per true class" if normalize else "counts"
    ax.set_title(f"{title} ({kind})\nlast row: missed GT, last column: false positives", fontsize=9)
    return _save_figure(fig, out_png)


class ConfidenceResult(NamedTuple):
    """Output of :func:`plot_confidence`: the PNG, the ECE and the mean confidence of the false
    positives (both ``nan`` when undefined)."""

    path: Path
    ece: float
    fp_mean_conf: float


def plot_confidence(
    gts: Sequence[ImageGT],
    preds: Sequence[ImagePred],
    out_png: str | os.PathLike[str],
    iou_thr: float = 0.5,
    bins: int = 10,
    conf: float = 0.25,
    nc: int | None = None,
) -> ConfidenceResult:
    """Histogram of the confidences of true vs false positives and a reliability diagram.

    Detections are matched by :func:`match_detections` (``score >= conf``; a class confusion
    counts as a false positive). Returns ``(path, ece, fp_mean_conf)``; ECE is in the title.
    The default ``conf`` keeps the flood of near-zero validation detections (conf 0.001) out of
    the statistics, where they would drown the calibration error of the detections that matter.
    """
    title = "confidence calibration"
    if not gts or not preds:
        path = _no_data_figure(out_png, title, "no validation images")
        return ConfidenceResult(path, math.nan, math.nan)
    m = match_detections(gts, preds, iou_thr=iou_thr, conf=conf, nc=nc)
    ece = expected_calibration_error(m.scores, m.is_tp, bins)
    fp = m.scores[~m.is_tp]
    fp_mean = float(fp.mean()) if len(fp) else math.nan
    if len(m.scores) == 0:
        path = _no_data_figure(out_png, title, f"no detections with confidence >= {conf:g}")
        return ConfidenceResult(path, ece, fp_mean)

    fig = _figure(11.0, 4.6, 1, 2, top=0.75)
    ax_h, ax_r = fig.subplots(1, 2)
    edges = np.linspace(0.0, 1.0, max(int(bins), 1) * 2 + 1)
    tp = m.scores[m.is_tp]
    ax_h.hist(
        [tp, fp],
        bins=edges,
        stacked=False,
        color=["tab:green", "tab:red"],
        label=[f"true positive ({len(tp)})", f"false positive ({len(fp)})"],
        alpha=0.85,
    )
    if len(fp):
        ax_h.axvline(fp_mean, color="tab:red", linestyle="--", linewidth=1.2, label=f"mean FP conf {fp_mean:.3f}")
    ax_h.axvspan(0.0, conf, color="#dddddd", alpha=0.6, label=f"below conf {conf:g} (ignored)")
    ax_h.set_xlim(0, 1)
    ax_h.set_xlabel("confidence")
    ax_h.set_ylabel("detections")
    ax_h.set_title(f"detections with confidence >= {conf:g} (IoU {iou_thr:g})", fontsize=10)
    ax_h.legend(fontsize=8)
    ax_h.grid(alpha=0.3)

    count, acc, mean_conf = calibration_bins(m.scores, m.is_tp, bins)
    nb = len(count)
    centers = (np.arange(nb) + 0.5) / nb
    used = count > 0
    ax_r.bar(
        centers[used],
        acc[used],
        width=1.0 / nb,
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy (fraction TP)",
    )
    gap_lo = np.minimum(acc, mean_conf)
    ax_r.bar(
        centers[used],
        np.abs(acc - mean_conf)[used],
        bottom=gap_lo[used],
        width=1.0 / nb,
        color="tab:red",
        alpha=0.35,
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    ax_r.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for x, n in zip(centers[used], count[used]):
        ax_r.text(x, 0.01, f"{int(n)}", ha="center", va="bottom", fontsize=7, color="white", fontweight="bold")
    ax_r.set_xlim(0, 1)
    ax_r.set_ylim(0, 1.0)
    ax_r.set_xlabel("confidence")
    ax_r.set_ylabel("accuracy")
    ax_r.set_title("reliability diagram (numbers in the bars: detections per bin)", fontsize=10)
    ax_r.legend(fontsize=8, loc="upper left")
    ax_r.grid(alpha=0.3)
    fig.suptitle(f"{title}: ECE {_fmt(ece)} ({nb} bins), mean FP confidence {_fmt(fp_mean)}", fontsize=11)
    return ConfidenceResult(_save_figure(fig, out_png), ece, fp_mean)
