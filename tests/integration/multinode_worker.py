"""Run under torchrun by test_multinode.py as one "node" of a multi-node job: train briefly in this node's own
project folder (the nodes share no disk), write this rank's parameters and pid."""

import os
import sys

import torch

from kubedistill.config import train_config
from kubedistill.train import build_trainer


def main(data: str, project: str, out: str, epochs: str, teacher: str = "") -> None:
    rank = int(os.environ["RANK"])
    node = os.path.basename(os.path.dirname(project))  # node0, node1: the test's "machines"
    with open(f"{out}/pid-{node}-{os.getpid()}", "w") as f:  # c10d assigns ranks: a node's rank may change
        f.write(str(rank))

    def dump(trainer):
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        torch.save({k: v.detach().clone() for k, v in model.named_parameters()}, f"{out}/rank{rank}.pt")

    cfg = train_config(
        data=data,
        project=project,
        name="mn",
        exist_ok=True,
        epochs=int(epochs),
        imgsz=64,
        batch=8,
        nbs=8,
        workers=0,
        optimizer="AdamW",
        lr0=0.002,
        warmup_epochs=0.5,
        verbose=False,
        close_mosaic=1,
        seed=3,
        **({"distill_model": teacher} if teacher else {}),
    )
    build_trainer(cfg, {"on_train_epoch_end": [dump]}).train()


if __name__ == "__main__":
    main(*sys.argv[1:6])
