"""`kubedistill run --runner docker`: every step in the train image (uid 10001, read-only root, host network),
the run id and MLflow settings reaching the steps, a failing step failing the run with its one-line cause, and
DataLoader workers surviving a 64 MB /dev/shm (a pod's default) by falling back with a warning."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.container.pods import docker

pytestmark = pytest.mark.container

TINY = ["--set", "teacher_epochs=1", "--set", "student_epochs=1", "--set", "dataset_uri=demo?train=48&val=16&imgsz=96"]


def _run(out: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    return subprocess.run(
        [sys.executable, "-m", "kubedistill", "run", "--runner", "docker", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_pipeline_runs_in_the_train_image_and_promotes(images, tmp_path):
    out = tmp_path / "run"
    res = _run(out, *TINY)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert f"steps in containers of {images['train']}" in res.stdout
    assert "registered: models:/kubedistill-student/1" in res.stdout
    assert "promoted to champion: yes (no champion yet)" in res.stdout
    # the steps wrote as the image's user (this test runs as root: the runner handed `out` to uid 10001)
    if os.getuid() == 0:
        made = [p for p in (out / "pipeline_root").rglob("executor_output.json")]
        assert len(made) >= 6 and all(p.stat().st_uid == 10001 for p in made)
    # the run id and tracking URI reached the containers: every step's MLflow run is a child of the pipeline's
    # run, and the image's git commit is recorded
    db = sqlite3.connect(out / "mlflow.db")
    runs = dict(db.execute("select run_uuid, name from runs").fetchall())
    tags = db.execute("select run_uuid, key, value from tags").fetchall()
    parents = {r for r, k, _ in tags if k == "mlflow.parentRunId"}
    assert len(runs) >= 3 and len(parents) >= 2
    label = docker(
        "image", "inspect", "--format", '{{index .Config.Labels "org.opencontainers.image.revision"}}', images["train"]
    ).stdout.strip()
    assert ("git_commit", label) in {(k, v) for _, k, v in tags}


def test_failing_step_fails_the_run_with_its_cause(images, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "data.yaml").write_text("names: [a]\n")
    res = _run(tmp_path / "run", "--data", str(bad / "data.yaml"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "error: Pipeline step 'prepare-data' failed:" in res.stderr and "neither `train:` nor `val:`" in res.stderr


def test_no_engine_or_no_image_is_a_one_line_error(tmp_path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    res = subprocess.run(
        [sys.executable, "-m", "kubedistill", "run", "--runner", "docker", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: No docker engine answers") and "--runner subprocess" in res.stderr


@pytest.mark.parametrize("shm,fallback", [("64m", True), ("1g", False)])
def test_dataloader_workers_with_a_small_dev_shm(images, tmp_path, shm, fallback):
    """A pod's 64 MB /dev/shm cannot hold 2 workers' batches of 32 images at 416 px: without the check the
    training hangs (a worker fails to allocate). With it, loading falls back to the main process, with a warning."""
    from kubedistill.data.synth import make_synth

    data = make_synth(tmp_path / "data", train=24, val=8, imgsz=128, seed=0)
    for p in [tmp_path, *tmp_path.parents][:-1]:
        if p.stat().st_uid == os.getuid():
            p.chmod(p.stat().st_mode | 0o755)
    uid = "10001:10001"
    res = docker(
        "run", "--rm", "--read-only", "--user", uid, "--shm-size", shm,
        "--tmpfs", "/tmp:uid=10001,gid=10001", "--tmpfs", "/home/kubedistill:uid=10001,gid=10001",
        "-v", f"{data.parent}:/data:ro", images["train"],
        "kubedistill", "train", "--data", f"/data/{data.name}", "--epochs", "1", "--imgsz", "416",
        "--batch", "32", "--workers", "2", "--project", "/tmp/r",
        check=False, timeout=600,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "done: best mAP50-95" in out
    warned = "/dev/shm has 64 MB free but 2 DataLoader workers need about" in out
    assert warned == fallback, out[-3000:]
