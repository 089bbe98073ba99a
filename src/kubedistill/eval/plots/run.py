"""All of a training run's plots at once; a plot that fails only logs a warning."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.core.log import LOGGER
from kubedistill.eval.coco import DetectionMetrics, ImageGT, ImagePred
from kubedistill.eval.matching import match_detections
from kubedistill.eval.plots.curves import plot_pr_curves, plot_results
from kubedistill.eval.plots.diagnostics import plot_confidence, plot_confusion_matrix
from kubedistill.eval.plots.figure import _no_data_figure
from kubedistill.eval.plots.labels import plot_labels
from kubedistill.eval.plots.mosaic import plot_val_mosaic


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

    attempt(
        "results",
        lambda: (
            plot_results(results_csv, save / "results.png")
            if results_csv is not None
            else _no_data_figure(save / "results.png", "training results", "no results.csv")
        ),
    )
    attempt("pr_curves", lambda: plot_pr_curves(metrics, save / "pr_curves.png"))

    def confusion() -> Path:
        n = nc if nc is not None else 0
        counts = (
            match_detections(gts, preds, iou_thr=iou_thr, conf=conf, nc=nc).confusion
            if gts
            else np.zeros((n + 1, n + 1))
        )
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
