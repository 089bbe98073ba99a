"""Curves: training losses and metrics from results.csv, and precision-recall curves per class."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from kubedistill.eval.coco import DetectionMetrics
from kubedistill.eval.plots.figure import (
    _class_name,
    _figure,
    _fmt,
    _no_data_axes,
    _no_data_figure,
    _rgb01,
    _save_figure,
)


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
    fig = _figure(
        3.0 * ncols, 2.3 * nrows + 0.4, nrows, ncols, left=0.6, right=0.15, bottom=0.5, top=0.65, wgap=0.75, hgap=0.65
    )
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
        ax.plot(
            rec, prec[c], linewidth=1.0, alpha=0.8, color=_rgb01(int(c)), label=label if show_legend_per_class else None
        )
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
