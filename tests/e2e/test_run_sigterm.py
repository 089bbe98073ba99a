"""SIGTERM to `kubedistill run` stops the step it is running too (kfp.local runs steps as child processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

pytest.importorskip("kfp")

from kubedistill.core.interrupt import child_pids, process_state  # noqa: E402


def _gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z")  # "Z": exited, waiting to be reaped by whoever adopted it


@pytest.mark.slow
def test_sigterm_stops_the_running_step(tmp_path, tiny_data):
    cfg = tmp_path / "params.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "dataset_uri": str(tiny_data),
                "imgsz": 64,
                "teacher_model": "yolo-n",
                "teacher_epochs": 500,
                "student_epochs": 1,
                "extra_config": {"batch": 8, "nbs": 8, "workers": 0, "plots": False},
            }
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KUBEDISTILL_CACHE": str(tmp_path / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubedistill", "run", "--config", str(cfg), "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        seen = []
        for line in proc.stdout:  # bounded by the test timeout
            seen.append(line)
            if "Executing task 'train-teacher'" in line:
                break
        assert proc.poll() is None, "".join(seen[-30:])
        deadline = time.monotonic() + 60
        while not (steps := child_pids(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert steps, "no step process under `kubedistill run`"
        time.sleep(3)  # into the teacher's training
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, rest[-3000:]
        assert "interrupted" in rest
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in steps) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(_gone(p) for p in steps), f"step processes {steps} outlived `kubedistill run`"
        # the exit-handler step never ran: `kubedistill run` itself ended the pipeline's MLflow run
        from mlflow import MlflowClient

        cl = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
        runs = cl.search_runs([e.experiment_id for e in cl.search_experiments()], "tags.kubedistill_kind = 'pipeline'")
        assert len(runs) == 1 and runs[0].info.status == "KILLED", [(r.info.run_name, r.info.status) for r in runs]
        assert runs[0].data.tags["pipeline_state"] == "CANCELLED"
    finally:
        proc.kill()
        proc.wait()
