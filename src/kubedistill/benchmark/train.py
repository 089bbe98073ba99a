"""`kubedistill benchmark train`: forward+backward img/s per scale and size, and data-loader img/s.

The loader is measured with training augmentation (mosaic, affine, HSV, flip) on the built-in demo
data, through the same DataLoader the trainer uses; the model with the training loss on a real batch.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import torch

from kubedistill.benchmark.timing import time_steps, training_step
from kubedistill.config import TrainConfig
from kubedistill.core.device import select_device
from kubedistill.data.check import check_dataset
from kubedistill.data.dataset import DetectionDataset, build_dataloader
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.synth import make_synth
from kubedistill.model.yolo import DetectionModel
from kubedistill.train.objective import build_objective, to_input


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


def model_speed(scale: str, imgsz: int, batch: int, iters: int, device, batch_data: dict) -> float:
    model = DetectionModel(scale, nc=4).to(device).train()
    batch = {**batch_data, "img": to_input(batch_data["img"], device)}
    step = training_step(build_objective(model, TrainConfig(imgsz=imgsz), device), batch)
    return batch["img"].shape[0] / time_steps(step, iters, device)


def run_train_benchmark(scales, sizes, batch=8, iters=5, workers=2, device="", echo=print) -> list[dict]:
    dev = select_device(device)
    rows = []
    echo(
        f"# kubedistill benchmark train: device={dev} threads={torch.get_num_threads()} "
        f"cpu={platform.processor() or platform.machine()} batch={batch} workers={workers}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for imgsz in sizes:
            data = make_synth(Path(tmp) / f"synth{imgsz}", train=64, val=1, imgsz=imgsz, seed=0)
            samples = check_dataset(load_data_yaml(data), splits=("train",)).samples["train"]
            load = loader_speed(samples, imgsz, batch, workers)
            ds = DetectionDataset(samples, imgsz, augment=True, hyp=TrainConfig(imgsz=imgsz), seed=0)
            batch_data = next(iter(build_dataloader(ds, batch, 0, shuffle=False, seed=0)))
            for scale in scales:
                fb = model_speed(scale, imgsz, batch, iters, dev, batch_data)
                row = {
                    "scale": f"yolo26{scale}",
                    "imgsz": imgsz,
                    "train_img_s": round(fb, 2),
                    "loader_img_s": round(load, 1),
                    "loader_over_model": round(load / fb, 2),
                }
                rows.append(row)
                echo(
                    f"yolo26{scale:<2} imgsz={imgsz:<4} fwd+bwd {fb:8.2f} img/s   loader {load:8.1f} img/s   ratio {load / fb:6.2f}x"
                )
    return rows
