"""A run folder after `kill -9` at each of the trainer's write points (issue 17): once the run resumes, best.pt,
last.pt, results.csv and metrics.json agree and no temporary file is left. The kill comes from the fault hook
in core.atomic (KUBEDISTILL_FAULT=NAME:before-rename|after-rename:N), in a real `kubedistill train` process."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.processes]  # own CI stage: make test-processes

EPOCHS = 3


def _train(data: Path, project: Path, *extra: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    if fault:
        env["KUBEDISTILL_FAULT"] = fault
    cmd = [sys.executable, "-m", "kubedistill", "train", "--data", str(data), "--epochs", str(EPOCHS)]
    cmd += ["--imgsz", "64", "--batch", "8", "--workers", "0", "--device", "cpu", "--plots", "false"]
    cmd += ["--project", str(project), "--name", "r", "--warmup-epochs", "0", "--close-mosaic", "0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _consistent(run: Path) -> None:
    last = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    best = torch.load(run / "weights" / "best.pt", map_location="cpu", weights_only=True)
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "results.csv", newline="") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert last["epoch"] == EPOCHS - 1
    assert epochs == list(range(1, EPOCHS + 1)), epochs  # every epoch once, none missing
    assert best["epoch"] == last["best_epoch"] and metrics["best_epoch"] == last["best_epoch"] + 1
    assert metrics["mAP50-95"] == pytest.approx(last["best_metrics"]["mAP50-95"])
    best_w = best["model"]["state_dict"]
    assert all(torch.equal(best_w[k], last["best"]["model"]["state_dict"][k]) for k in best_w)
    assert not list(run.glob(".*.tmp")) and not list((run / "weights").glob(".*.tmp"))


@pytest.mark.parametrize(
    "fault",
    [
        "last.pt:before-rename:2",  # epoch 2's last.pt never landed; its temporary file is left behind
        "last.pt:after-rename:2",  # epoch 2 committed, but results.csv and metrics.json still say epoch 1
        "best.pt:before-rename:1",  # last.pt names epoch 1 best; best.pt was never written
        "results.csv:before-rename:2",  # results.csv lacks epoch 2's row
    ],
)
def test_kill_at_a_write_point_then_resume(fault, tiny_data, tmp_path):
    killed = _train(tiny_data, tmp_path, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    run = tmp_path / "r"
    resumed = _train(tiny_data, tmp_path, "--resume", str(run / "weights" / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _consistent(run)


def test_an_uninterrupted_run_is_consistent_too(tiny_data, tmp_path):
    res = _train(tiny_data, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    _consistent(tmp_path / "r")


def test_resume_from_a_last_pt_without_the_rows_keeps_results_csv(tiny_data, tmp_path):
    """A last.pt written before it carried results.csv's rows: resuming keeps the rows already on disk."""
    killed = _train(tiny_data, tmp_path, fault="last.pt:after-rename:2")
    assert killed.returncode == -signal.SIGKILL
    run = tmp_path / "r"
    last = torch.load(run / "weights" / "last.pt", map_location="cpu", weights_only=True)
    for key in ("results", "best"):
        last.pop(key)
    torch.save(last, run / "weights" / "last.pt")
    with open(run / "results.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1]  # epoch 2's row was never written
    resumed = _train(tiny_data, tmp_path, "--resume", str(run / "weights" / "last.pt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with open(run / "results.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 3]  # what the old format had: nothing dropped
