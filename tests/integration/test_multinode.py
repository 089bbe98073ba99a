"""DDP on CPU (gloo). Two torchrun "nodes" on loopback (c10d rendezvous, gloo, one process each), each with its own project folder as
separate machines have: they train together to the same weights a one-node two-process run reaches, and when one
node's worker is killed mid-run, torchrun's elastic restart resumes from the last checkpoint (issue 18)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kubedistill.benchmark.serve import free_port

WORKER = Path(__file__).with_name("multinode_worker.py")
pytestmark = [pytest.mark.slow, pytest.mark.processes]  # own CI stage: make test-processes
ROOT = Path(__file__).parents[2]


def _torchrun(*launch: str, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    # as the TrainJob sets it (trainjob/manifest.py): with the shared store the restarted group never formed
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, str(WORKER), *args]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _nodes(tmp: Path, data, epochs: int, restarts: int = 0, teacher: str = "") -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for node in (0, 1):
        (tmp / f"node{node}").mkdir(parents=True, exist_ok=True)
        launch = (
            "--nnodes=2",
            f"--node-rank={node}",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--rdzv-id=kd-test",
            f"--max-restarts={restarts}",
        )
        args = [str(data), str(tmp / f"node{node}" / "runs"), str(tmp), str(epochs), teacher]
        procs.append(_torchrun(*launch, args=args, log=tmp / f"node{node}.log"))
    return procs


def _wait(procs, tmp: Path, timeout: float = 300) -> None:
    for i, p in enumerate(procs):
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                os.killpg(q.pid, signal.SIGKILL)
            raise AssertionError("multi-node run did not end: " + (tmp / f"node{i}.log").read_text()[-3000:]) from None
        assert rc == 0, (tmp / f"node{i}.log").read_text()[-4000:]


def _logged_once(uri: str, experiment: str, epochs: int) -> None:
    """Only rank 0 logs: one run, each epoch's metrics once, one LoggedModel per checkpoint, system metrics."""
    import mlflow

    cl = mlflow.MlflowClient(uri)
    exp = cl.get_experiment_by_name(experiment)
    (run,) = cl.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    steps = [m.step for m in cl.get_metric_history(run.info.run_id, "train/box_loss")]
    assert sorted(steps) == list(range(epochs))
    assert sorted(m.name for m in cl.search_logged_models(experiment_ids=[exp.experiment_id])) == ["best", "last"]
    assert "system/cpu_utilization_percentage" in run.data.metrics


def _params(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_two_nodes_train_together_like_one_node_with_two_processes(tmp_path, tiny_data, mlflow_server):
    _wait(_nodes(tmp_path / "two", tiny_data, epochs=2), tmp_path / "two")
    r0, r1 = _params(tmp_path / "two" / "rank0.pt"), _params(tmp_path / "two" / "rank1.pt")
    assert r0.keys() == r1.keys() and len(r0) > 100
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # identical across the nodes
    # only rank 0's node wrote a run folder
    folders = [n for n in ("node0", "node1") if (tmp_path / "two" / n / "runs").exists()]
    assert len(folders) == 1 and (tmp_path / "two" / folders[0] / "runs" / "mn" / "weights" / "last.pt").is_file()
    # the same training on one node with two processes, tracked on a real MLflow server
    one = tmp_path / "one"
    one.mkdir()
    launch = ("--standalone", "--nproc-per-node=2")
    tracking = {"MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_EXPERIMENT_NAME": "two-processes"}
    proc = _torchrun(
        *launch, args=[str(tiny_data), str(one / "runs"), str(one), "2"], log=one / "node0.log", env=tracking
    )
    _wait([proc], one)
    _logged_once(mlflow_server.uri, "two-processes", epochs=2)
    o0, o1 = _params(one / "rank0.pt"), _params(one / "rank1.pt")
    assert all(torch.equal(o0[k], o1[k]) for k in o0)  # DDP keeps the two processes identical
    assert (one / "runs" / "mn" / "weights" / "last.pt").is_file() and len(list(one.glob("runs/*"))) == 1
    worst = max((r0[k] - o0[k]).abs().max().item() for k in r0)
    assert worst <= 1e-6, worst


def test_a_killed_node_is_restarted_and_the_run_resumes(tmp_path, tiny_data):
    """Node 1's worker is killed after epoch 1 was saved. torchrun restarts the group; the new rank 0 may be on
    either node, and only one of them has the run folder: the latest last.pt is handed over, and the run ends
    with every epoch once."""
    procs = _nodes(tmp_path, tiny_data, epochs=4, restarts=2)
    lasts = [tmp_path / n / "runs" / "mn" / "weights" / "last.pt" for n in ("node0", "node1")]
    deadline = time.monotonic() + 240
    while not any(p.exists() for p in lasts):  # epoch 1 is saved
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
            tmp_path / "node0.log"
        ).read_text()
        time.sleep(0.05)
    first = sorted(tmp_path.glob("pid-node1-*"))
    assert len(first) == 1
    os.kill(int(first[0].name.rsplit("-", 1)[1]), signal.SIGKILL)  # node 1's worker dies in the middle of the run
    _wait(procs, tmp_path, timeout=150)
    assert len(list(tmp_path.glob("pid-node*"))) == 4  # both nodes' workers were started again
    logs = (tmp_path / "node0.log").read_text() + (tmp_path / "node1.log").read_text()
    assert "torchrun restarted the workers: resuming" in logs, logs[-3000:]
    finals = [p.parent.parent for p in lasts if p.exists()]
    final = max(finals, key=lambda d: (d / "results.csv").stat().st_mtime)
    rows = (final / "results.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4], rows  # every epoch once, none lost or repeated
    r0, r1 = _params(tmp_path / "rank0.pt"), _params(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)


def test_distillation_across_two_nodes_has_a_nonzero_dis_loss(tmp_path, tiny_data, tiny_train):
    """The teacher runs on every rank: dis_loss is not 0 (third-party YOLO distillers silently give 0 under DDP),
    and the students stay identical across the nodes."""
    _, res = tiny_train(tmp_path / "t", tiny_data, "teacher", model="yolo-s", epochs=1)
    _wait(_nodes(tmp_path, tiny_data, epochs=1, teacher=res["best"]), tmp_path)
    folder = next(d for d in (tmp_path / "node0", tmp_path / "node1") if (d / "runs").exists())
    header, *rows = (folder / "runs" / "mn" / "results.csv").read_text().splitlines()
    col = [c.strip() for c in header.split(",")].index("train/dis_loss")
    assert float(rows[-1].split(",")[col]) > 0, rows
    r0, r1 = _params(tmp_path / "rank0.pt"), _params(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
