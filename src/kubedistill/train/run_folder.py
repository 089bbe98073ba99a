"""A training run's folder after a kill: what resume repairs, from last.pt.

The trainer writes each epoch's files in one order (`Trainer._save`): last.pt first, the commit point, holding
the best epoch's weights ("best") and every results.csv row ("results"); then best.pt, results.csv and
metrics.json, each written atomically (a temporary file renamed over the old one). A kill can come between any
two of those writes, or inside one (leaving its temporary file). `repair_run_folder` makes the folder agree
with last.pt again: it removes the temporary files and rewrites best.pt, results.csv and metrics.json from
last.pt where they differ. A resumed run calls it before training on.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from kubedistill.core.atomic import atomic_write_text, write_json_atomic
from kubedistill.core.checkpoint import atomic_torch_save
from kubedistill.core.log import LOGGER

TEMP_GLOB = ".*.tmp"  # core.atomic.atomic_path's temporary files


def results_csv_text(rows: list[dict]) -> str:
    """results.csv: one row per epoch, the union of the rows' columns."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_results_csv(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, results_csv_text(rows))


def read_results_csv(path: Path, upto_epoch: int) -> list[dict]:
    """The rows of an existing results.csv up to `upto_epoch` (1-based), for a last.pt written before last.pt
    carried its rows (kubedistill 0.1.0 runs from before issue 17)."""
    try:
        with open(path, newline="") as f:
            rows = [{**r, "epoch": int(r["epoch"])} for r in csv.DictReader(f)]
    except (OSError, ValueError, KeyError, csv.Error):
        return []
    return [r for r in rows if r["epoch"] <= upto_epoch]


def write_metrics_json(save_dir: Path, best_epoch: int, best_metrics: dict) -> None:
    """metrics.json: the best epoch (1-based; `best_epoch` is 0-based, -1 for none) and its metrics."""
    write_json_atomic(save_dir / "metrics.json", {"best_epoch": best_epoch + 1, **best_metrics})


def _epoch_of(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # missing, cut short, not a checkpoint: rewritten
        return None


def repair_run_folder(save_dir: Path, ckpt: dict) -> list[str]:
    """Make best.pt, results.csv and metrics.json agree with last.pt (`ckpt`); remove leftover temporary files.
    Returns what was done, one phrase each (also logged)."""
    done = []
    for tmp in sorted([*save_dir.glob(TEMP_GLOB), *(save_dir / "weights").glob(TEMP_GLOB)]):
        tmp.unlink(missing_ok=True)
        done.append(f"removed {tmp.name}")
    best = ckpt.get("best")
    if best is not None and _epoch_of(save_dir / "weights" / "best.pt") != best["epoch"]:
        atomic_torch_save(best, save_dir / "weights" / "best.pt")
        done.append(f"best.pt rewritten (epoch {best['epoch'] + 1})")
    rows = ckpt.get("results")
    if rows is not None:
        path, text = save_dir / "results.csv", results_csv_text(rows)
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
            done.append(f"results.csv rewritten ({len(rows)} epochs)")
    if best is not None:
        write_metrics_json(save_dir, ckpt.get("best_epoch", -1), ckpt.get("best_metrics", {}))
    if done:
        LOGGER.info(f"{save_dir}: repaired after an interrupted run: " + "; ".join(done))
    return done
