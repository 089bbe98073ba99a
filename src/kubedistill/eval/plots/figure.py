"""What every plot shares: a pyplot-free Figure, atomic PNG writes, "no data" figures, class names and colours."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from kubedistill.core.atomic import atomic_path
from kubedistill.eval.predictions import class_color

DPI = 100


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
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wgap / ax_w,
        hspace=hgap / ax_h,
    )
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
    ax.text(
        0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555", wrap=True, transform=ax.transAxes
    )
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
