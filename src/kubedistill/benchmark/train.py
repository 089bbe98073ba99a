"""`kubedistill benchmark train`: forward+backward img/s per scale and size, and data-loader img/s.

The loader is measured with training augmentation (mosaic, affine, HSV, flip) on the built-in demo
data, through the same DataLoader the trainer uses; the model with the training loss on a real batch.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kubedistill.benchmark.peer import PEER_DIR, check_peer
from kubedistill.benchmark.timing import time_steps, training_step
from kubedistill.config import TrainConfig
from kubedistill.core.device import select_device
from kubedistill.core.errors import UserError
from kubedistill.data.check import check_dataset
from kubedistill.data.dataset import DetectionDataset, build_dataloader
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.synth import make_synth
from kubedistill.model.yolo import DetectionModel
from kubedistill.train.objective import amp_dtype, build_objective, precision_name, to_input


def loader_speed(samples, imgsz: int, batch: int, workers: int, batches: int = 20) -> float:
    cfg = TrainConfig(imgsz=imgsz)
    ds = DetectionDataset(samples, imgsz, augment=True, hyp=cfg, seed=0)
    loader = build_dataloader(ds, batch, workers, shuffle=True, seed=0)
    n, t0, done = 0, None, 0
    while done < batches + 2:
        for b in loader:
            done += 1
            if done == 2:  # after workers started and warmed up
                t0 = time.perf_counter()
            elif done > 2:
                n += b["img"].shape[0]
            if done >= batches + 2:
                break
    return n / (time.perf_counter() - t0)


NC = 4  # the synthetic set's classes
PEER_SCRIPT = PEER_DIR / "ultralytics_train_step.py"


def _step(scale: str, imgsz: int, device, batch_data: dict, amp: bool = True):
    model = DetectionModel(scale, nc=NC).to(device).train()
    batch = {**batch_data, "img": to_input(batch_data["img"], device)}
    objective = build_objective(model, TrainConfig(imgsz=imgsz), device)
    return training_step(objective, batch, amp_dtype(device, amp))


def model_speed(scale: str, imgsz: int, batch: int, iters: int, device, batch_data: dict, amp: bool = True) -> float:
    return batch / time_steps(_step(scale, imgsz, device, batch_data, amp), iters, device)


class PeerSteps:
    """Ultralytics' training step on the same batch, in its own venv (benchmarks/peer/ultralytics_train_step.py),
    driven over stdin: `time(n)` runs n steps there and returns their seconds."""

    def __init__(self, python: str, script: Path, batch_data: dict, scale: str, folder: Path):
        check_peer(python, script)
        npz = folder / f"batch_{scale}.npz"
        np.savez(
            npz,
            img=(batch_data["img"].float() / 255.0).numpy(),
            batch_idx=batch_data["batch_idx"].numpy(),
            cls=batch_data["cls"].numpy(),
            bboxes=batch_data["bboxes"].numpy(),
        )
        env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(folder / "ulcfg")}
        self.proc = subprocess.Popen(
            [python, str(script), str(npz), scale, str(NC)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        while self._line() != "ready":  # Ultralytics may print its settings notice first
            pass

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.kill()
            raise UserError("The peer stopped", "Run the peer script by hand in its venv to see why")
        return line.strip()

    def time(self, n: int) -> float:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return float(self._line())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def side_by_side(
    scale: str, imgsz: int, iters: int, rounds: int, device, batch_data: dict, peer: PeerSteps, amp: bool = True
) -> tuple:
    """(ours img/s, peer img/s): medians over `rounds`, each round `iters` steps of ours then of the peer's."""
    step = _step(scale, imgsz, device, batch_data, amp)
    for _ in range(2):  # warm-up of both
        step()
    peer.time(2)
    ours, theirs = [], []
    n_img = batch_data["img"].shape[0] * iters
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        ours.append(n_img / (time.perf_counter() - t0))
        theirs.append(n_img / peer.time(iters))
    return statistics.median(ours), statistics.median(theirs)


def run_train_benchmark(
    scales,
    sizes,
    batch=8,
    iters=5,
    workers=2,
    device="",
    echo=print,
    peer_python: str | None = None,
    peer_script: Path | None = None,
    rounds: int = 5,
    amp: bool = True,
) -> list[dict]:
    """Training-step and loader img/s per scale and size; with `peer_python` (the Ultralytics venv's python), the
    same step of Ultralytics on the same batch, interleaved round by round (`rounds` x `iters` steps each).
    `amp`: ours in the mixed precision training uses (`amp_dtype`; Ultralytics' step is fp32 on a CPU, as its
    trainer turns AMP off there)."""
    dev = select_device(device)
    rows = []
    precision = precision_name(amp_dtype(dev, amp))
    echo(
        f"# kubedistill benchmark train: device={dev} threads={torch.get_num_threads()} "
        f"cpu={platform.processor() or platform.machine()} batch={batch} workers={workers} precision={precision}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for imgsz in sizes:
            data = make_synth(Path(tmp) / f"synth{imgsz}", train=64, val=1, imgsz=imgsz, seed=0)
            samples = check_dataset(load_data_yaml(data), splits=("train",)).samples["train"]
            load = loader_speed(samples, imgsz, batch, workers)
            ds = DetectionDataset(samples, imgsz, augment=True, hyp=TrainConfig(imgsz=imgsz), seed=0)
            batch_data = next(iter(build_dataloader(ds, batch, 0, shuffle=False, seed=0)))
            for scale in scales:
                if peer_python:
                    peer = PeerSteps(peer_python, Path(peer_script or PEER_SCRIPT), batch_data, scale, Path(tmp))
                    try:
                        fb, theirs = side_by_side(scale, imgsz, iters, rounds, dev, batch_data, peer, amp)
                    finally:
                        peer.close()
                else:
                    fb, theirs = model_speed(scale, imgsz, batch, iters, dev, batch_data, amp), None
                row = {
                    "scale": f"yolo26{scale}",
                    "imgsz": imgsz,
                    "precision": precision,
                    "train_img_s": round(fb, 2),
                    "loader_img_s": round(load, 1),
                    "loader_over_model": round(load / fb, 2),
                }
                line = f"yolo26{scale:<2} imgsz={imgsz:<4} fwd+bwd {fb:8.2f} img/s   loader {load:8.1f} img/s   ratio {load / fb:6.2f}x"
                if theirs is not None:
                    row.update(peer_img_s=round(theirs, 2), ours_over_peer=round(fb / theirs, 3))
                    line += f"   Ultralytics {theirs:8.2f} img/s   ours/theirs {fb / theirs:5.3f}x"
                rows.append(row)
                echo(line)
    return rows
