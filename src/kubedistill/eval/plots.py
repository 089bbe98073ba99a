"""Training plots: loss/metric curves, PR curves, confusion matrix, calibration, label statistics,
and a ground-truth | prediction mosaic of validation images.

Every ``plot_*`` function writes one PNG atomically (temporary file in the same folder, then
``os.replace``) and returns its path. Empty inputs give an informative "no data" figure, never an
exception. :func:`write_run_plots` writes them all and never raises for a plotting failure (it logs
a warning on the ``kubedistill`` logger), so a plot can never fail a training run.

Importing this module is cheap: it needs numpy only. matplotlib, OpenCV and Pillow are imported
inside the functions. Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg
canvas directly, without pyplot: no GUI backend, no global figure registry, nothing to leak, safe
from a worker thread, and the user's own pyplot backend is left alone.

The confusion matrix and the calibration plot match detections to ground truth with
:func:`kubedistill.eval.matching.match_detections`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from kubedistill.core.atomic import atomic_path
from kubedistill.data.images import read_image
from kubedistill.eval.coco import DetectionMetrics, ImageGT, ImagePred
from kubedistill.eval.matching import calibration_bins, expected_calibration_error, match_detections
from kubedistill.eval.predictions import class_color, draw_detections

__all__ = [
    "ConfidenceResult",
    "plot_results",
    "plot_pr_curves",
    "plot_confusion_matrix",
    "plot_confidence",
    "plot_labels",
    "plot_val_mosaic",
    "write_run_plots",
]

LOGGER = logging.getLogger("kubedistill")

DPI = 100
COCO_SMALL_PX = 32.0  # sqrt(area) edges of COCO's small / medium / large ranges
COCO_MEDIUM_PX = 96.0


# --------------------------------------------------------------------------------------------
# Figure helpers
# --------------------------------------------------------------------------------------------


def _figure(
    width: float,
    height: float,
    rows: int = 1,
    cols: int = 1,
    *,
    left: float = 0.75,
    right: float = 0.25,
    bottom: float = 0.65,
    top: float = 0.55,
    wgap: float = 0.8,
    hgap: float = 0.8,
) -> Any:
    """A pyplot-free matplotlib figure (rendered by Agg on save) whose subplot grid has fixed
    margins and gaps, all in inches. (No layout engine: constrained layout would cost about half
    of the drawing time.)"""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    ax_w = max((width - left - right - (cols - 1) * wgap) / cols, 0.1)
    ax_h = max((height - top - bottom - (rows - 1) * hgap) / rows, 0.1)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wgap / ax_w, hspace=hgap / ax_h)
    return fig


def _text_inches(labels: Sequence[str], fontsize: float) -> float:
    """Rough width in inches of the longest of ``labels`` at ``fontsize`` points."""
    return max((len(str(x)) for x in labels), default=0) * fontsize * 0.6 / 72.0


def _save_figure(fig: Any, out_png: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to ``out_png`` atomically and release it."""
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    finally:
        fig.clear()
    return Path(out_png)


def _save_array(img_rgb: np.ndarray, out_png: str | os.PathLike[str]) -> Path:
    """Write an RGB uint8 array as PNG atomically."""

    with atomic_path(out_png) as tmp:
        Image.fromarray(np.ascontiguousarray(img_rgb)).save(tmp, format="PNG")
    return Path(out_png)


def _no_data_axes(ax: Any, message: str) -> None:
    ax.set_facecolor("#eeeeee")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555", wrap=True,
            transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _no_data_figure(out_png: str | os.PathLike[str], title: str, message: str) -> Path:
    fig = _figure(6.4, 4.0, left=0.3, right=0.3, bottom=0.3, top=0.5)
    ax = fig.add_subplot(1, 1, 1)
    _no_data_axes(ax, f"no data\n{message}")
    ax.set_title(title)
    return _save_figure(fig, out_png)


def _class_name(names: Sequence[str], cls: int) -> str:
    return str(names[cls]) if 0 <= cls < len(names) else str(cls)


def _rgb01(cls: int) -> tuple[float, float, float]:

    r, g, b = class_color(cls)
    return r / 255.0, g / 255.0, b / 255.0


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.{digits}f}"


# --------------------------------------------------------------------------------------------
# results.csv
# --------------------------------------------------------------------------------------------


def _to_float(text: str | None) -> float:
    if text is None:
        return math.nan
    text = text.strip()
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def _read_results(csv_path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(epochs, {column: values}) of the numeric columns; nan for empty cells.

    A column whose non-empty cells are not all numbers is left out. Rows are sorted by epoch and a
    repeated epoch (a resumed run) keeps its last row.
    """
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = [row for row in csv.DictReader(fh, skipinitialspace=True)]
    if not rows:
        return np.zeros(0), {}
    columns = [c for c in rows[0].keys() if c is not None]
    key = {c.strip(): c for c in columns}
    if "epoch" in key:
        epochs = np.array([_to_float(r.get(key["epoch"])) for r in rows])
    else:
        epochs = np.arange(1, len(rows) + 1, dtype=np.float64)
    data: dict[str, np.ndarray] = {}
    for name, raw in key.items():
        if name == "epoch":
            continue
        cells = [(r.get(raw) or "").strip() for r in rows]
        values = np.array([_to_float(c) for c in cells])
        if any(c and not math.isfinite(v) and c.lower() not in ("nan", "inf", "-inf") for c, v in zip(cells, values)):
            continue  # text column
        data[name] = values
    # Sort by epoch; keep the last row of a repeated epoch.
    valid = np.isfinite(epochs)
    idx = np.flatnonzero(valid)
    last: dict[float, int] = {}
    for i in idx:
        last[float(epochs[i])] = int(i)
    keep = np.array(sorted(last.values(), key=lambda i: epochs[i]), dtype=np.int64)
    return epochs[keep], {k: v[keep] for k, v in data.items()}


def plot_results(csv_path: str | os.PathLike[str], out_png: str | os.PathLike[str]) -> Path:
    """One subplot per numeric column of ``results.csv`` (except ``epoch``) against the epoch.

    Empty cells are skipped (a column without any value gets an empty panel saying so).
    """
    title = "training results"
    try:
        epochs, data = _read_results(csv_path)
    except FileNotFoundError:
        return _no_data_figure(out_png, title, f"{csv_path} does not exist")
    if len(epochs) == 0 or not data:
        return _no_data_figure(out_png, title, f"{Path(csv_path).name} has no rows")

    names = list(data)
    ncols = min(5, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = _figure(3.0 * ncols, 2.3 * nrows + 0.4, nrows, ncols, left=0.6, right=0.15, bottom=0.5, top=0.65,
                  wgap=0.75, hgap=0.65)
    from matplotlib.ticker import MaxNLocator

    for k, name in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        y = data[name]
        ok = np.isfinite(y)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if k >= len(names) - ncols:
            ax.set_xlabel("epoch", fontsize=8)
        if not ok.any():
            _no_data_axes(ax, "no values")
            continue
        # Few ticks: tick creation is most of matplotlib's drawing time.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        marker = "o" if ok.sum() <= 30 else None
        ax.plot(epochs[ok], y[ok], marker=marker, markersize=3, linewidth=1.5, color="tab:blue")
        if name.startswith("metrics/"):
            best = int(np.argmax(np.where(ok, y, -np.inf)))
            ax.plot(epochs[best], y[best], marker="*", markersize=9, color="tab:orange", linestyle="none")
        # Very small or large values (learning rates, a tiny mAP) as "1e-4" multipliers, not long labels.
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    fig.suptitle(f"{title}: {len(epochs)} epochs", fontsize=11)
    return _save_figure(fig, out_png)


# --------------------------------------------------------------------------------------------
# PR curves
# --------------------------------------------------------------------------------------------


def plot_pr_curves(metrics: DetectionMetrics | None, out_png: str | os.PathLike[str]) -> Path:
    """Per-class precision-recall curves at IoU 0.5 (COCO's interpolated precision on the 101-point
    recall grid), AP50 in the legend, and the mean over the classes that have GT in bold."""
    title = "precision-recall at IoU 0.5"
    if metrics is None:
        return _no_data_figure(out_png, title, "no validation metrics")
    prec = np.asarray(metrics.pr_precision, dtype=np.float64)
    rec = np.asarray(metrics.pr_recall, dtype=np.float64)
    if prec.ndim != 2 or prec.size == 0 or prec.shape[1] != len(rec) or not np.isfinite(prec).any():
        return _no_data_figure(out_png, title, "no class has ground-truth boxes")

    names = list(metrics.names)
    valid = np.isfinite(prec).all(axis=1)
    n_valid = int(valid.sum())
    fig = _figure(7.5, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    show_legend_per_class = n_valid <= 20
    ap50 = np.asarray(metrics.ap50_per_class, dtype=np.float64)
    for c in np.flatnonzero(valid):
        label = f"{_class_name(names, int(c))} {_fmt(ap50[c] if c < len(ap50) else math.nan)}"
        ax.plot(rec, prec[c], linewidth=1.0, alpha=0.8, color=_rgb01(int(c)),
                label=label if show_legend_per_class else None)
    mean = prec[valid].mean(axis=0)
    ax.plot(rec, mean, linewidth=3.0, color="#1f3b73", label=f"all classes {_fmt(metrics.map50)} mAP@0.5")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8, title="AP50" if show_legend_per_class else None)
    skipped = len(valid) - n_valid
    note = f" ({skipped} class{'es' if skipped != 1 else ''} without GT left out)" if skipped else ""
    ax.set_title(f"{title}{note}", fontsize=10)
    return _save_figure(fig, out_png)


# --------------------------------------------------------------------------------------------
# Matching, confusion matrix, calibration
# --------------------------------------------------------------------------------------------


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
    ax_h.hist([tp, fp], bins=edges, stacked=False, color=["tab:green", "tab:red"],
              label=[f"true positive ({len(tp)})", f"false positive ({len(fp)})"], alpha=0.85)
    if len(fp):
        ax_h.axvline(fp_mean, color="tab:red", linestyle="--", linewidth=1.2,
                     label=f"mean FP conf {fp_mean:.3f}")
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
    ax_r.bar(centers[used], acc[used], width=1.0 / nb, edgecolor="black", color="tab:blue", alpha=0.8,
             label="accuracy (fraction TP)")
    gap_lo = np.minimum(acc, mean_conf)
    ax_r.bar(centers[used], np.abs(acc - mean_conf)[used], bottom=gap_lo[used], width=1.0 / nb,
             color="tab:red", alpha=0.35, edgecolor="tab:red", hatch="//", label="gap to mean confidence")
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


# --------------------------------------------------------------------------------------------
# Label statistics
# --------------------------------------------------------------------------------------------


def plot_labels(
    samples: Sequence[Any], names: Sequence[str], out_png: str | os.PathLike[str], tiny_px: float = 8.0
) -> Path:
    """Label statistics of ``samples`` (``Sample``: ``shape`` (h, w), ``labels`` [n,5] cls cx cy w h
    normalised): class counts, box centres, box width x height in original pixels, and a histogram
    of box size ``sqrt(w*h)`` (px, log x) with the tiny band ``< tiny_px`` shaded and COCO's
    small/medium edges (32/96 px) marked."""
    title = "labels"
    names = list(names)
    parts = []
    n_images = 0
    for s in samples or ():
        n_images += 1
        lab = np.asarray(s.labels, dtype=np.float64).reshape(-1, 5)
        if len(lab) == 0:
            continue
        h, w = s.shape
        px = lab.copy()
        px[:, 3] *= float(w)
        px[:, 4] *= float(h)
        parts.append(px)
    if not parts:
        msg = "no samples" if n_images == 0 else f"{n_images} images, no boxes"
        return _no_data_figure(out_png, title, msg)
    lab = np.concatenate(parts)
    cls = lab[:, 0].astype(np.int64)
    bw, bh = lab[:, 3], lab[:, 4]
    nc = max(len(names), int(cls.max()) + 1)

    labels = [_class_name(names, c) for c in range(nc)]
    fs_names = 8 if nc <= 20 else 6
    rotate = nc > 8
    extra = _text_inches(labels, fs_names) if rotate and nc <= 40 else 0.0
    fig = _figure(12.0, 9.0 + extra, 2, 2, top=0.6, hgap=0.9 + extra, wgap=1.0)
    (ax_c, ax_xy), (ax_wh, ax_s) = fig.subplots(2, 2)

    counts = np.bincount(np.clip(cls, 0, None), minlength=nc)
    ax_c.bar(np.arange(nc), counts, color=[_rgb01(c) for c in range(nc)], edgecolor="black", linewidth=0.5)
    if nc <= 40:
        ax_c.set_xticks(np.arange(nc), labels, rotation=90 if rotate else 0, fontsize=fs_names)
    ax_c.set_ylabel("boxes")
    ax_c.set_title(f"boxes per class ({len(lab)} boxes, {n_images} images)", fontsize=10)
    ax_c.grid(alpha=0.3, axis="y")

    many = len(lab) > 3000
    if many:
        ax_xy.hist2d(lab[:, 1], lab[:, 2], bins=50, range=[[0, 1], [0, 1]], cmap="Blues", cmin=1)
    else:
        ax_xy.scatter(lab[:, 1], lab[:, 2], s=12, alpha=0.7, c=[_rgb01(c) for c in cls], linewidths=0)
    ax_xy.set_xlim(0, 1)
    ax_xy.set_ylim(1, 0)
    ax_xy.set_aspect("equal")
    ax_xy.set_xlabel("x centre (fraction of width)")
    ax_xy.set_ylabel("y centre (fraction of height)")
    ax_xy.set_title("box centres", fontsize=10)

    top = max(float(bw.max()), float(bh.max()), 1.0) * 1.05
    if many:
        ax_wh.hist2d(bw, bh, bins=60, range=[[0, top], [0, top]], cmap="Blues", cmin=1)
    else:
        ax_wh.scatter(bw, bh, s=12, alpha=0.7, c=[_rgb01(c) for c in cls], linewidths=0)
    ax_wh.set_xlim(0, top)
    ax_wh.set_ylim(0, top)
    ax_wh.set_xlabel("box width (px, original image)")
    ax_wh.set_ylabel("box height (px)")
    ax_wh.set_title("box width x height", fontsize=10)
    ax_wh.grid(alpha=0.3)

    size = np.sqrt(np.clip(bw * bh, 0, None))
    positive = size[size > 0]
    lo = min(float(positive.min()) if len(positive) else 1.0, float(tiny_px)) / 1.5
    hi = max(float(size.max()), COCO_MEDIUM_PX) * 1.5
    lo = max(lo, 1e-2)
    edges = np.geomspace(lo, hi, 50)
    ax_s.hist(np.clip(size, lo, None), bins=edges, color="tab:blue", alpha=0.85)
    ax_s.set_xscale("log")
    ax_s.set_xlim(lo, hi)
    n_tiny = int((size < tiny_px).sum())
    n_small = int((size < COCO_SMALL_PX).sum())
    n_medium = int(((size >= COCO_SMALL_PX) & (size < COCO_MEDIUM_PX)).sum())
    n_large = int((size >= COCO_MEDIUM_PX).sum())
    n = len(size)
    ax_s.axvspan(lo, tiny_px, color="tab:red", alpha=0.15,
                 label=f"tiny < {tiny_px:g} px: {n_tiny} ({100 * n_tiny / n:.1f}%)")
    ax_s.axvline(COCO_SMALL_PX, color="tab:orange", linestyle="--",
                 label=f"COCO small < 32 px: {n_small} ({100 * n_small / n:.1f}%)")
    ax_s.axvline(COCO_MEDIUM_PX, color="tab:green", linestyle="--",
                 label=f"medium 32-96 px: {n_medium}, large: {n_large}")
    ax_s.set_xlabel("box size sqrt(w*h) (px, original image)")
    ax_s.set_ylabel("boxes")
    ax_s.set_title("box sizes", fontsize=10)
    ax_s.legend(fontsize=8)
    ax_s.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return _save_figure(fig, out_png)


# --------------------------------------------------------------------------------------------
# Validation mosaic
# --------------------------------------------------------------------------------------------

_HEADER = 18  # px of the caption strip above each tile
_GAP = 4  # px between tiles


def _tile(img: np.ndarray | None, tile: int, caption: str) -> np.ndarray:
    import cv2

    out = np.full((tile + _HEADER, tile, 3), 255, dtype=np.uint8)
    if img is None:
        out[_HEADER:] = 200
        cv2.putText(out, "unreadable", (8, _HEADER + tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (90, 90, 90), 1,
                    cv2.LINE_AA)
    else:
        h, w = img.shape[:2]
        out[_HEADER:] = 114
        y0 = _HEADER + (tile - h) // 2
        x0 = (tile - w) // 2
        out[y0:y0 + h, x0:x0 + w] = img
    # Caption: shrink the font until it fits.
    scale = 0.42
    (tw, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    while tw > tile - 6 and len(caption) > 4:
        caption = caption[:-4] + "..."
        (tw, _), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(out, caption, (3, _HEADER - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def plot_val_mosaic(
    gts: Sequence[ImageGT],
    preds: Sequence[ImagePred],
    names: Sequence[str],
    out_png: str | os.PathLike[str],
    n: int = 8,
    conf: float = 0.25,
    tile: int = 320,
) -> Path:
    """The first ``n`` validation images in a grid, each twice side by side: ground truth (left,
    labelled "name 1.00") | predictions with ``score >= conf`` (right). Every image is scaled to fit a
    ``tile`` x ``tile`` cell (down for large images, up for tiny ones) before the boxes are drawn."""
    import cv2


    title = "validation images"
    count = min(int(n), len(gts), len(preds))
    if count <= 0:
        return _no_data_figure(out_png, title, "no validation images")
    names = list(names)
    tiles: list[np.ndarray] = []
    for gt, pred in list(zip(gts, preds))[:count]:
        file = Path(gt.file_name).name
        try:
            img = read_image(gt.file_name)
        except Exception as exc:  # an unreadable image must not lose the whole mosaic
            LOGGER.debug("val mosaic: cannot read %s: %s", gt.file_name, exc)
            tiles += [_tile(None, tile, f"GT {file}"), _tile(None, tile, "pred")]
            continue
        h, w = img.shape[:2]
        r = tile / max(h, w, 1)
        nh, nw = max(1, round(h * r)), max(1, round(w * r))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
        gt_draw = ImagePred(gt.boxes * r, np.ones(len(gt.boxes)), gt.classes)
        pred_draw = ImagePred(pred.boxes * r, pred.scores, pred.classes)
        n_pred = int((pred.scores >= conf).sum())
        tiles.append(_tile(draw_detections(img, gt_draw, names, conf=0.0), tile, f"GT ({len(gt.boxes)}) {file}"))
        tiles.append(_tile(draw_detections(img, pred_draw, names, conf=conf), tile, f"pred ({n_pred}, conf>={conf:g})"))

    pairs_per_row = 2 if count > 1 else 1
    cols = 2 * pairs_per_row
    rows = math.ceil(len(tiles) / cols)
    th, tw = tiles[0].shape[:2]
    canvas = np.full((rows * (th + _GAP) + _GAP, cols * (tw + _GAP) + _GAP + (pairs_per_row - 1) * _GAP, 3),
                     255, dtype=np.uint8)
    for k, t in enumerate(tiles):
        rr, cc = divmod(k, cols)
        extra = (cc // 2) * _GAP  # a wider gap between image pairs
        y = _GAP + rr * (th + _GAP)
        x = _GAP + cc * (tw + _GAP) + extra
        canvas[y:y + th, x:x + tw] = t
    return _save_array(canvas, out_png)


# --------------------------------------------------------------------------------------------
# All of them
# --------------------------------------------------------------------------------------------


def write_run_plots(
    save_dir: str | os.PathLike[str],
    *,
    results_csv: str | os.PathLike[str] | None = None,
    metrics: DetectionMetrics | None = None,
    gts: Sequence[ImageGT] | None = None,
    preds: Sequence[ImagePred] | None = None,
    samples: Sequence[Any] | None = None,
    names: Sequence[str] = (),
    conf: float = 0.25,
    iou_thr: float = 0.5,
) -> dict[str, Any]:
    """Write results.png, pr_curves.png, confusion_matrix.png, confidence.png, labels.png and
    val_batch.png into ``save_dir``.

    Returns ``{"results": path, "pr_curves": path, "confusion_matrix": path, "confidence": path,
    "labels": path, "val_batch": path, "ece": float, "fp_mean_conf": float}``; a plot that failed
    is missing from the dict (a warning is logged) and ``ece``/``fp_mean_conf`` are ``nan`` when
    they could not be computed. Never raises for a plotting failure.
    """
    out: dict[str, Any] = {"ece": math.nan, "fp_mean_conf": math.nan}
    try:
        save = Path(save_dir)
        save.mkdir(parents=True, exist_ok=True)
    except Exception as exc:
        LOGGER.warning("plots: cannot create %s (%s); no plots written", save_dir, exc)
        return out
    names = [str(x) for x in (names or ())]
    gts = list(gts or ())
    preds = list(preds or ())
    if len(gts) != len(preds):
        LOGGER.warning("plots: %d predictions for %d images; matching-based plots skipped", len(preds), len(gts))
        gts, preds = [], []
    nc = len(names) if names else None

    def attempt(key: str, fn: Any) -> None:
        try:
            out[key] = fn()
        except Exception as exc:
            LOGGER.warning("plots: %s failed: %s: %s", key, type(exc).__name__, exc)

    attempt("results", lambda: plot_results(results_csv, save / "results.png") if results_csv is not None
            else _no_data_figure(save / "results.png", "training results", "no results.csv"))
    attempt("pr_curves", lambda: plot_pr_curves(metrics, save / "pr_curves.png"))

    def confusion() -> Path:
        n = nc if nc is not None else 0
        counts = match_detections(gts, preds, iou_thr=iou_thr, conf=conf, nc=nc).confusion if gts else np.zeros((n + 1, n + 1))
        return plot_confusion_matrix(counts, names, save / "confusion_matrix.png")

    attempt("confusion_matrix", confusion)

    def confidence() -> Path:
        res = plot_confidence(gts, preds, save / "confidence.png", iou_thr=iou_thr, conf=conf, nc=nc)
        out["ece"], out["fp_mean_conf"] = res.ece, res.fp_mean_conf
        return res.path

    attempt("confidence", confidence)
    attempt("labels", lambda: plot_labels(samples or (), names, save / "labels.png"))
    attempt("val_batch", lambda: plot_val_mosaic(gts, preds, names, save / "val_batch.png", conf=conf))
    return out
