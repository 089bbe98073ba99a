"""Label statistics of a dataset: instances per class, box centres, and box sizes against COCO's size ranges."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.eval.plots.figure import _class_name, _figure, _no_data_figure, _rgb01, _save_figure, _text_inches

COCO_SMALL_PX = 32.0  # sqrt(area) edges of COCO's small / medium / large ranges


COCO_MEDIUM_PX = 96.0


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
    ax_s.axvspan(
        lo, tiny_px, color="tab:red", alpha=0.15, label=f"tiny < {tiny_px:g} px: {n_tiny} ({100 * n_tiny / n:.1f}%)"
    )
    ax_s.axvline(
        COCO_SMALL_PX,
        color="tab:orange",
        linestyle="--",
        label=f"COCO small < 32 px: {n_small} ({100 * n_small / n:.1f}%)",
    )
    ax_s.axvline(
        COCO_MEDIUM_PX, color="tab:green", linestyle="--", label=f"medium 32-96 px: {n_medium}, large: {n_large}"
    )
    ax_s.set_xlabel("box size sqrt(w*h) (px, original image)")
    ax_s.set_ylabel("boxes")
    ax_s.set_title("box sizes", fontsize=10)
    ax_s.legend(fontsize=8)
    ax_s.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return _save_figure(fig, out_png)
