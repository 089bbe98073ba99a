"""Run under torchrun by test_ddp.py: train briefly, then save this rank's parameters."""

import sys

import torch

from kubedistill.config import train_config
from kubedistill.train import build_trainer


def main(data: str, project: str) -> None:
    def dump(trainer):
        model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
        torch.save(
            {k: v.detach().clone() for k, v in model.named_parameters()}, f"{project}/rank{max(trainer.rank, 0)}.pt"
        )

    cfg = train_config(
        data=data,
        project=project,
        name="ddp",
        epochs=2,
        imgsz=64,
        batch=8,
        nbs=8,
        workers=0,
        optimizer="AdamW",
        lr0=0.002,
        warmup_epochs=0.5,
        verbose=False,
        close_mosaic=1,
    )
    build_trainer(cfg, {"on_train_epoch_end": [dump]}).train()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
