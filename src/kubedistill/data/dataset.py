"""Torch dataset and data loader for detection training and validation.

Randomness: every sample's augmentation is drawn from `np.random.default_rng([seed, epoch, index])`,
so it depends on nothing else (not the worker that loads it, not the worker count, not the order).

How the epoch reaches worker processes: `build_dataloader` uses an `EpochSampler`, which runs in the
main process and yields keys ``(index, epoch, mosaic)`` read from the dataset when an epoch's
iteration starts; `DetectionDataset.__getitem__` accepts such keys (and plain ints, which use the
dataset's own epoch/mosaic). Workers, persistent ones included, thus always see the current epoch and
the current mosaic probability, as long as the trainer calls ``dataset.set_epoch(e)`` (and
``dataset.close_mosaic()`` when due) before iterating the loader for that epoch.
"""

from __future__ import annotations

import random
import shutil
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from kubedistill.config import TrainConfig
from kubedistill.core.log import LOGGER
from kubedistill.data.augment import hflip, mosaic4, random_affine, random_hsv
from kubedistill.data.check import Sample
from kubedistill.data.images import read_image
from kubedistill.data.letterbox import letterbox, letterbox_params

FILL = 114


class DetectionDataset(Dataset):
    """Usable `Sample`s -> dicts of uint8 image tensor and normalised boxes on an imgsz x imgsz canvas.

    augment=False: letterbox only (validation). augment=True: mosaic of 4 images with probability
    `hyp.mosaic`, else letterbox + random affine; then HSV jitter and left-right flip.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        imgsz: int = 640,
        augment: bool = False,
        hyp: Any = None,
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.imgsz = int(imgsz)
        self.augment = bool(augment)
        h = hyp if hyp is not None else TrainConfig()  # the training defaults, from their one place
        self.mosaic = float(h.mosaic) if augment else 0.0
        self.degrees = float(h.degrees)
        self.translate = float(h.translate)
        self.scale = float(h.scale)
        self.fliplr = float(h.fliplr)
        self.hsv = (float(h.hsv_h), float(h.hsv_s), float(h.hsv_v))
        self.seed = int(seed) % (2**63)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def close_mosaic(self) -> None:
        """Stop using mosaic (the trainer calls this for the last `close_mosaic` epochs)."""
        self.mosaic = 0.0

    def mosaic_enabled(self) -> bool:
        return self.augment and self.mosaic > 0

    @property
    def labels(self) -> list[np.ndarray]:
        """Each sample's labels, float32 [n,5] cls,cx,cy,w,h normalised to the original image."""
        return [s.labels for s in self.samples]

    # --- loading -----------------------------------------------------------------------------------

    def _read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Original image, its boxes in pixel xyxy, classes [n]."""
        s = self.samples[i]
        img = read_image(s.im_file)
        h, w = img.shape[:2]
        lab = s.labels
        cx, cy, bw, bh = lab[:, 1] * w, lab[:, 2] * h, lab[:, 3] * w, lab[:, 4] * h
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32)
        return img, boxes, lab[:, 0].astype(np.float32)

    def _read_resized(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image resized so its long side is imgsz (aspect kept), with its boxes."""
        img, boxes, cls = self._read(i)
        h, w = img.shape[:2]
        r = self.imgsz / max(h, w)
        if r != 1:
            nw, nh = max(1, round(w * r)), max(1, round(h * r))
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
            boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
        return img, boxes, cls

    def _letterboxed(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img, boxes, cls = self._read(i)
        h, w = img.shape[:2]
        out, _, (left, top) = letterbox(img, self.imgsz, (FILL, FILL, FILL))
        _, (rw, rh), _ = letterbox_params((h, w), self.imgsz)
        boxes = boxes * np.array([rw / w, rh / h, rw / w, rh / h], np.float32) + np.array(
            [left, top, left, top], np.float32
        )
        return out, boxes, cls

    # --- items -------------------------------------------------------------------------------------

    def __getitem__(self, key: int | tuple[int, int, float]) -> dict[str, Any]:
        if isinstance(key, (tuple, list)):
            index, epoch, mosaic = int(key[0]), int(key[1]), float(key[2])
        else:
            index, epoch, mosaic = int(key), self.epoch, self.mosaic
        s = self.samples[index]
        s_img = self.imgsz
        if not self.augment:
            img, boxes, cls = self._letterboxed(index)
        else:
            rng = np.random.default_rng([self.seed, epoch, index])
            if mosaic > 0 and rng.random() < mosaic:
                others = rng.integers(0, len(self.samples), 3)
                items = [self._read_resized(j) for j in (index, *others.tolist())]
                canvas, boxes, cls = mosaic4(items, s_img, rng, fill=FILL)
                img, boxes, cls = random_affine(
                    canvas, boxes, cls, self.degrees, self.translate, self.scale, FILL, s_img, rng
                )
            else:
                img, boxes, cls = self._letterboxed(index)
                img, boxes, cls = random_affine(
                    img, boxes, cls, self.degrees, self.translate, self.scale, FILL, s_img, rng
                )
            img = random_hsv(img, *self.hsv, rng)
            if self.fliplr and rng.random() < self.fliplr:
                img, boxes = hflip(img, boxes)
        # pixel xyxy on the canvas -> normalised cx, cy, w, h
        b = np.asarray(boxes, np.float32).reshape(-1, 4).clip(0, s_img) / s_img
        xywh = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
        ratio, _, pad = letterbox_params(s.shape, s_img)
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        return {
            "img": torch.from_numpy(chw),
            "cls": torch.from_numpy(np.asarray(cls, np.float32).reshape(-1, 1)),
            "bboxes": torch.from_numpy(xywh.astype(np.float32).reshape(-1, 4)),
            "im_file": str(s.im_file),
            "ori_shape": (int(s.shape[0]), int(s.shape[1])),
            "ratio_pad": (ratio, (float(pad[0]), float(pad[1]))),
        }


def collate_fn(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images; concatenate boxes with `batch_idx` telling which image each box belongs to."""
    return {
        "img": torch.stack([b["img"] for b in batch], 0),
        "cls": torch.cat([b["cls"] for b in batch], 0),
        "bboxes": torch.cat([b["bboxes"] for b in batch], 0),
        "batch_idx": torch.cat([torch.full((len(b["cls"]),), float(i)) for i, b in enumerate(batch)], 0),
        "im_file": [b["im_file"] for b in batch],
        "ori_shape": [b["ori_shape"] for b in batch],
        "ratio_pad": [b["ratio_pad"] for b in batch],
    }


class EpochSampler(Sampler):
    """Yields ``(index, epoch, mosaic)`` keys; epoch and mosaic are read from the dataset when an
    epoch's iteration starts (in the main process), so worker processes always get current values.

    Order: a permutation from a torch.Generator seeded with seed + epoch (shuffle) or 0..n-1; with
    world_size > 1 a `DistributedSampler` (same seed + epoch rule) gives this rank's share.
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = -1,
        world_size: int = 1,
    ) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = int(seed)
        self.dist = (
            DistributedSampler(dataset, num_replicas=world_size, rank=max(rank, 0), shuffle=shuffle, seed=self.seed)
            if world_size > 1
            else None
        )

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dist) if self.dist is not None else len(self.dataset)

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        epoch, mosaic = self.dataset.epoch, self.dataset.mosaic
        if self.dist is not None:
            self.dist.set_epoch(epoch)
            order = list(self.dist)
        elif self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(len(self.dataset), generator=g).tolist()
        else:
            order = list(range(len(self.dataset)))
        for i in order:
            yield (i, epoch, mosaic)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
    cv2.setNumThreads(0)  # one process per worker already; avoid oversubscribing cores


SHM = "/dev/shm"
PREFETCH = 2  # DataLoader's prefetch_factor default: batches in flight per worker


def shm_workers(workers: int, batch: int, imgsz: int, shm: str = SHM) -> int:
    """`workers`, or 0 with a warning when /dev/shm cannot hold the batches in flight.

    Worker processes hand batches over through /dev/shm. A Kubernetes pod (and a plain `docker run`) gets
    64 MB there; when the batches do not fit, a worker fails to allocate and the training hangs or dies
    with a bus error. Loading in the main process is slower but works."""
    if workers <= 0 or not sys.platform.startswith("linux"):
        return workers
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return workers
    need = int(workers * PREFETCH * batch * 3 * imgsz * imgsz * 1.5)  # uint8 images, half again for labels/slack
    if need <= free:
        return workers
    LOGGER.warning(
        f"{shm} has {free / 2**20:.0f} MB free but {workers} DataLoader workers need about {need / 2**20:.0f} MB "
        f"at batch {batch}, imgsz {imgsz}: loading in the main process instead (slower). Fix: give {shm} more "
        "room (Kubernetes: an emptyDir with medium Memory mounted there, as the kubedistill pipeline does; "
        "docker: --shm-size 2g), or lower workers/batch"
    )
    return 0


def build_dataloader(
    dataset: DetectionDataset,
    batch: int,
    workers: int,
    shuffle: bool,
    seed: int = 0,
    rank: int = -1,
    world_size: int = 1,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader over `dataset` with `batch` images per batch (per rank) and `workers` processes.

    Call ``dataset.set_epoch(e)`` (or ``loader.sampler.set_epoch(e)``) before each epoch's iteration.
    """
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
    workers = shm_workers(workers, batch, dataset.imgsz)
    g = torch.Generator()
    g.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        collate_fn=collate_fn,
        worker_init_fn=_worker_init,
        persistent_workers=workers > 0,
        generator=g,
    )
