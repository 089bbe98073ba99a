"""Training runs end to end: outputs, resume continuing exactly, bad data, divergence, checkpoints."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from kubedistill import Detector
from kubedistill.config import train_config
from kubedistill.core.errors import DataError, UserError
from kubedistill.train import build_trainer
from kubedistill.train.trainer import TrainingDiverged


def test_outputs_and_checkpoint_format(tmp_path, tiny_data, tiny_train):
    from kubedistill.train.objective import amp_dtype

    trainer, res = tiny_train(tmp_path, tiny_data, epochs=2, close_mosaic=1, nbs=None)
    # nbs left to its default on a run this short: no accumulation (train.optim.resolve_nbs); amp as the CPU allows
    assert (trainer.nbs, trainer.accumulate) == (8, 1)
    assert trainer.amp_dtype == amp_dtype(torch.device("cpu"), True)
    run = Path(res["save_dir"])
    for f in (
        "weights/last.pt",
        "weights/best.pt",
        "results.csv",
        "args.yaml",
        "metrics.json",
        "data_check.json",
        "results.png",
        "pr_curves.png",
        "confusion_matrix.png",
        "confidence.png",
        "labels.png",
        "val_batch.png",
    ):
        assert (run / f).is_file(), f
    rows = list(csv.DictReader(open(run / "results.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in (
        "train/box_loss",
        "train/cls_loss",
        "train/l1_loss",
        "metrics/mAP50-95",
        "metrics/mAP50",
        "prog/o2m",
        "prog/o2o",
        "lr/weights",
    ):
        assert rows[0][col] != "", col
    assert float(rows[0]["prog/o2m"]) == pytest.approx(0.8) and float(rows[1]["prog/o2m"]) == pytest.approx(0.1)
    # checkpoints are plain data: weights_only loading works
    best = torch.load(run / "weights/best.pt", weights_only=True)
    last = torch.load(run / "weights/last.pt", weights_only=True)
    assert best["model"]["meta"]["names"] == ["circle", "square"]
    assert "optimizer" not in best and "optimizer" in last
    assert not list((run / "weights").glob("*.tmp"))


@pytest.mark.parametrize("losses", [{}, {"box_loss": "wiou", "cls_loss": "ghm"}], ids=["default", "stateful-losses"])
def test_resume_continues_exactly(tmp_path, tiny_data, losses, tiny_train):
    # Wise-IoU's running mean and GHM's bin counts are resume state too: without them the runs differ
    full = tiny_train(tmp_path, tiny_data, name="full", epochs=3, close_mosaic=1, **losses)[1]

    class Kill(Exception):
        pass

    def kill_after_first(trainer):
        if trainer.epoch == 0:
            raise Kill

    with pytest.raises(Kill):
        tiny_train(
            tmp_path,
            tiny_data,
            name="cut",
            epochs=3,
            close_mosaic=1,
            callbacks={"on_fit_epoch_end": [kill_after_first]},
            **losses,
        )[1]
    resumed = build_trainer(train_config(resume=str(tmp_path / "cut" / "weights" / "last.pt"), workers=0)).train()
    assert resumed["save_dir"] == str(tmp_path / "cut")
    a = torch.load(Path(full["last"]), weights_only=True)
    b = torch.load(Path(resumed["last"]), weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    if losses:
        assert b["loss_state"]["box_loss"]["iou_mean"] != 1.0 and b["loss_state"]["cls_loss"]["acc_sum"].sum() > 0
    for k, v in a["train_state_dict"].items():
        assert torch.equal(v, b["train_state_dict"][k]), k
    for k, v in a["model"]["state_dict"].items():
        assert torch.equal(v, b["model"]["state_dict"][k]), k
    rows = list(csv.DictReader(open(tmp_path / "cut" / "results.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    with pytest.raises(UserError, match="already finished"):
        build_trainer(train_config(resume=resumed["last"])).train()


def _break_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src.parent, dst)
    labels = sorted((dst / "labels" / "train").glob("*.txt"))
    labels[0].write_text("0 0.5 0.5 0.2\n")  # wrong column count -> image skipped
    labels[1].write_text("7 0.5 0.5 0.2 0.2\n")  # class out of range -> skipped
    images = sorted((dst / "images" / "train").glob("*.jpg"))
    images[2].write_bytes(images[2].read_bytes()[:200])  # truncated -> skipped
    return dst / "data.yaml"


def test_bad_samples_skipped_and_reported(tmp_path, tiny_data, tiny_train):
    data = _break_dataset(tiny_data, tmp_path / "broken")
    res = tiny_train(tmp_path, data, epochs=1)[1]
    report = (Path(res["save_dir"]) / "data_check.json").read_text()
    assert "class_range" in report and "label_columns" in report and "image_corrupt" in report
    ckpt = torch.load(res["last"], weights_only=True)
    assert ckpt["epoch"] == 0


def test_too_little_usable_data_stops_clearly(tmp_path, tiny_data, tiny_train):
    data = _break_dataset(tiny_data, tmp_path / "broken")
    with pytest.raises(DataError, match=r"usable"):
        tiny_train(tmp_path, data, epochs=1, min_usable=0.95)[1]


def test_nonfinite_loss_skips_then_stops(tmp_path, tiny_data, tiny_cfg):
    from kubedistill.train.trainer import Trainer

    class NaNTrainer(Trainer):
        def setup_objective(self):  # the extension point: wrap the objective (here: a loss that is always NaN)
            super().setup_objective()
            loss = self.objective.loss
            self.objective.loss = lambda preds, batch: (loss(preds, batch)[0] * float("nan"), {})

    cfg = tiny_cfg(tiny_data, tmp_path, "nan", epochs=20, batch=2, nbs=2)
    with pytest.raises(TrainingDiverged, match="non-finite for 10 steps"):
        NaNTrainer(cfg).train()


def test_missing_data_is_a_user_error(tmp_path, tiny_train):
    with pytest.raises(UserError, match="does not exist|not found|No such"):
        tiny_train(tmp_path, tmp_path / "nope.yaml", epochs=1)[1]


@pytest.mark.slow
@pytest.mark.learning  # about 60-75 s: its own CI stage (make test-learning), to keep `make test` under 15 minutes
def test_learns_to_map50_half(tmp_path, easy_data):
    """It learns, not only runs: yolo-n from scratch, about 60-75 s on 2 CPU cores, val mAP50 >= 0.5.

    32 epochs: at 24, five seeds ended between 0.43 and 0.82 in bf16 and between 0.47 and 0.82 in fp32, so the bar
    judged the seed; at 32, seeds 0-2 reached 0.63-0.79 in both (docs/benchmarks.md)."""
    det = Detector("yolo-n")
    res = det.train(
        data=str(easy_data),
        project=str(tmp_path),
        name="learn",
        epochs=32,
        imgsz=96,
        batch=16,
        nbs=16,
        workers=2,
        optimizer="AdamW",
        lr0=0.004,
        warmup_epochs=1,
        close_mosaic=5,
        verbose=False,
    )
    assert res["metrics"]["mAP50"] >= 0.5, res["metrics"]
    # the Python API keeps the trained model: val and predict use the same code as the CLI
    m = det.val(workers=0)
    assert m["mAP50"] == pytest.approx(res["metrics"]["mAP50"], abs=1e-6)
    img = sorted((easy_data.parent / "images" / "val").glob("*.jpg"))[0]
    preds = det.predict(img, conf=0.3)
    assert len(preds) == 1 and len(preds[0].scores) >= 1
