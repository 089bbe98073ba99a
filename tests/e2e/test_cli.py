"""The README's first commands, through the real CLI: synth, check, train, val, predict, info; one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def kd(*args, cwd=None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "kubedistill", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc


def test_synth_train_val_predict(tmp_path):
    kd(
        "data",
        "synth",
        "demo",
        "--train",
        "16",
        "--val",
        "8",
        "--imgsz",
        "64",
        "--classes",
        "2",
        "--min-size",
        "8",
        cwd=tmp_path,
    )
    assert "no problems found" in kd("data", "check", "demo/data.yaml", cwd=tmp_path).stdout
    out = kd(
        "train",
        "--data",
        "demo/data.yaml",
        "epochs=2",
        "--imgsz",
        "64",
        "--batch",
        "8",
        "nbs=8",
        "--workers",
        "0",
        "--name",
        "t",
        "--optimizer",
        "AdamW",
        cwd=tmp_path,
    ).stdout
    assert "optimizer: AdamW" in out and "epoch 2/2" in out
    # not a terminal: plain log lines, no progress-bar control characters
    assert "\r" not in out
    best = tmp_path / "runs/t/weights/best.pt"
    assert best.is_file()
    val = kd("val", "--weights", best, "--out", "m.json", "--workers", "0", cwd=tmp_path)
    metrics = json.loads((tmp_path / "m.json").read_text())
    for k in (
        "mAP50-95",
        "mAP50",
        "mAP75",
        "AP_small",
        "AP_medium",
        "AP_large",
        "precision",
        "recall",
        "per_class",
        "ms_per_img",
    ):
        assert k in metrics, k
    assert set(metrics["per_class"]) == {"circle", "square"}
    assert "wrote m.json" in val.stdout
    kd(
        "predict",
        "--weights",
        best,
        "--source",
        "demo/images/val",
        "--out",
        "p.json",
        "--conf",
        "0.0",
        "--max-det",
        "5",
        "--save-images",
        cwd=tmp_path,
    )
    preds = json.loads((tmp_path / "p.json").read_text())
    assert preds and {"image", "image_id", "category_id", "class_name", "bbox", "score"} <= set(preds[0])
    assert len(preds) == 8 * 5  # conf 0: max_det per image
    assert len(list((tmp_path / "p_images").glob("*.jpg"))) == 8
    info = kd("info", "yolo-s", "--imgsz", "320").stdout
    assert "yolo26s:" in info and "GFLOPs at 320" in info


@pytest.mark.parametrize(
    "args,expect",
    [
        (["train", "--data", "missing.yaml", "--epochs", "1"], "missing.yaml"),
        (["train", "--epoch", "3"], "did you mean 'epochs'"),
        (["train", "--imgsz", "100"], "multiple of 32"),
        (["val", "--weights", "nope.pt"], "does not exist"),
        (["predict", "--weights", "nope.pt", "--source", "."], "does not exist"),
        (["data", "check", "nope.yaml"], "nope.yaml"),
        (["benchmark", "distill", "--seeds", "0,x"], "--seeds '0,x' is not a comma-separated list of integers"),
        (["benchmark", "distill", "--arm", "dsi=6"], "unknown option 'dsi'"),
        (["benchmark", "train", "--imgsz", "320,big"], "--imgsz '320,big' is not a comma-separated list"),
        # issue 17: values that used to pass or end in a traceback
        (["train", "--lr0", "inf"], "option 'lr0' = 'inf': Input should be a finite number"),
        (["train", "--epochs", "100000000"], "option 'epochs'"),
        (["train", "--epochs", "3", "epochs=4"], "Option 'epochs' is given twice"),
        (["train", "--name", "../../x"], "option 'name' = '../../x': must be one folder name inside project"),
        (["data", "synth", "/proc/kubedistill-x"], "/proc/kubedistill-x. Check the path and its permissions"),
    ],
)
def test_user_errors_are_one_line(tmp_path, args, expect):
    proc = kd(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr


def test_train_help_lists_every_option():
    from kubedistill.config import TrainConfig

    out = kd("train", "--help").stdout
    for name in ("--lr0", "--lrf", "--distill-model", "--close-mosaic", "--optimizer", "--cos-lr"):
        assert name in out
    for name, field in TrainConfig.model_fields.items():  # each with its description
        line = next((x for x in out.splitlines() if x.split()[:1] == [f"--{name.replace('_', '-')}"]), None)
        assert line is not None and field.description[:30] in line, name


def test_import_is_cheap():
    code = (
        "import sys, kubedistill, kubedistill.config, kubedistill.cli; "
        "print(sorted(m for m in ('torch', 'mlflow', 'kfp', 'kubernetes', 'boto3', 'cv2', 'helm_python') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_missing_extra_is_one_line(tmp_path):
    """`kubedistill train` where torch is not installed (the serve image): one line naming the extra."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from kubedistill.cli import main\n"
        "main(['train', 'data=x.yaml', 'epochs=1'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert (
        lines[0]
        == "error: this command needs the 'torch' package, which is not installed. Install it with: pip install 'kubedistill[train]'."
    )


def test_benchmark_train_smoke(tmp_path):
    out = kd(
        "benchmark",
        "train",
        "--scales",
        "n",
        "--imgsz",
        "64",
        "--iters",
        "1",
        "--batch",
        "2",
        "--workers",
        "0",
        "--out",
        tmp_path / "b.json",
    ).stdout
    assert "yolo26n  imgsz=64" in out
    rows = json.loads((tmp_path / "b.json").read_text())
    assert rows[0]["scale"] == "yolo26n" and rows[0]["train_img_s"] > 0 and rows[0]["loader_img_s"] > 0
