"""Ultralytics YOLO26 checkpoints without Ultralytics: loaded safely, equal to Ultralytics' own outputs, and usable
wherever a model is named (fine-tuning, distillation teacher, predict, export).

The fixtures (tests/fixtures/ultralytics) were made by Ultralytics 8.4.190 itself with make_fixtures.py there:
yolo26n and yolo26s trained briefly on the synthetic set (2 classes, 64 px), their raw head outputs on a fixed
input, and their NMS-free predictions on four PNG images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from kubedistill.core.errors import UserError
from kubedistill.detector import Detector
from kubedistill.model.checkpoint import load_model, read_checkpoint
from kubedistill.model.ultralytics import load_ultralytics

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "ultralytics"
SCALES = ("n", "s")
IMAGES = sorted((FIX / "images").glob("*.png"))


def _pt(scale: str) -> Path:
    return FIX / f"yolo26{scale}-tiny.pt"


def _matches(ours: list[tuple], ref: dict, box_px: float = 0.5, score: float = 1e-3) -> None:
    """Every reference detection has one of ours with the same class, the box within box_px and the score within
    `score`; and there are as many of ours."""
    assert len(ours) == len(ref["conf"]), (len(ours), len(ref["conf"]))
    free = list(ours)
    for box, conf, cls in zip(ref["xyxy"], ref["conf"], ref["cls"], strict=True):
        hit = next(
            (
                d
                for d in free
                if d[5] == cls
                and abs(d[4] - conf) <= score
                and max(abs(a - b) for a, b in zip(d[:4], box, strict=True)) <= box_px
            ),
            None,
        )
        assert hit is not None, f"no match for {box} {conf:.5f} class {cls}"
        free.remove(hit)


@pytest.mark.parametrize("scale", SCALES)
def test_both_heads_equal_ultralytics(scale):
    ckpt = load_ultralytics(_pt(scale))
    assert ckpt["model"]["meta"]["names"] == ["circle", "square"] and ckpt["model"]["meta"]["scale"] == scale
    assert ckpt["train_args"]["imgsz"] == 64 and ckpt["source"]["format"] == "ultralytics"
    model, _ = load_model(_pt(scale))
    model.eval().set_eval_head(False)
    model.head.eval_heads = ("one2many", "one2one")
    ref = np.load(FIX / f"yolo26{scale}-tiny_heads.npz")
    with torch.no_grad():
        out = model(torch.from_numpy(ref["x"]))
    for head in ("one2many", "one2one"):
        for key in ("boxes", "scores"):
            np.testing.assert_allclose(out[head][key].numpy(), ref[f"{head}_{key}"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("scale", SCALES)
def test_detections_equal_ultralytics_nms_free_predictions(scale):
    ref = json.loads((FIX / f"yolo26{scale}-tiny_predictions.json").read_text())
    preds = Detector(str(_pt(scale))).predict([str(p) for p in IMAGES], conf=0.001, max_det=20)
    assert sum(len(r["conf"]) for r in ref.values()) > 0
    for path, pred in zip(IMAGES, preds, strict=True):
        ours = [
            (*b, s, int(c))
            for b, s, c in zip(pred.boxes.tolist(), pred.scores.tolist(), pred.classes.tolist(), strict=True)
        ]
        _matches(ours, ref[path.name])


def test_onnx_export_of_an_imported_checkpoint_matches_ultralytics(tmp_path):
    from kubedistill.data.images import read_image
    from kubedistill.model.export import export_onnx
    from kubedistill.serve.model import OnnxDetector

    res = export_onnx(_pt("n"), tmp_path / "n.onnx", max_det=20)
    det = OnnxDetector(res["path"], threads=1)
    assert det.names == ["circle", "square"] and det.imgsz == 64
    ref = json.loads((FIX / "yolo26n-tiny_predictions.json").read_text())
    for path in IMAGES:
        prep = det.prepare(read_image(path))
        out = det.postprocess(det.run(prep.tensor[None])[0], prep, 0.001, 20)
        ours = [
            (d["box"][0], d["box"][1], d["box"][2], d["box"][3], d["score"], d["class_id"])
            for d in out.to_json(det.names)
        ]
        _matches(ours, ref[path.name], score=2e-3)


def _evil_pickle(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"model": Evil(), "train_args": {}}, path)


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    evil, marker = tmp_path / "yolo26n.pt", tmp_path / "pwned"
    _evil_pickle(evil, marker)
    with pytest.raises(UserError, match=r"asks to run (posix|os|nt)\.system.*refused, nothing in it was run"):
        read_checkpoint(evil)
    assert not marker.exists()
    # the same through the command line: one line, exit 2, nothing run
    proc = subprocess.run(
        [sys.executable, "-m", "kubedistill", "val", "--weights", str(evil)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "refused" in proc.stderr
    assert not marker.exists()


def _fake_ultralytics(monkeypatch, path: Path, cls_name: str, cfg: dict, extra: dict | None = None) -> None:
    """A small pickle naming Ultralytics classes (made without Ultralytics: a stand-in module in sys.modules)."""
    tasks = types.ModuleType("ultralytics.nn.tasks")
    cls = type(cls_name, (), {"__module__": "ultralytics.nn.tasks"})
    setattr(tasks, cls_name, cls)
    for name in ("ultralytics", "ultralytics.nn"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "ultralytics.nn.tasks", tasks)
    obj = cls()
    obj.yaml = cfg
    obj.names = {0: "a"}
    torch.save({"model": obj, "train_args": {"imgsz": 640}, **(extra or {})}, path)


def _yolo11_cfg() -> dict:
    layers = [
        "Conv",
        "Conv",
        "C3k2",
        "Conv",
        "C3k2",
        "Conv",
        "C3k2",
        "Conv",
        "C3k2",
        "SPPF",
        "C2PSA",
        "nn.Upsample",
        "Concat",
        "C3k2",
        "nn.Upsample",
        "Concat",
        "C3k2",
        "Conv",
        "Concat",
        "C3k2",
        "Conv",
        "Concat",
        "C3k2",
        "Detect",
    ]
    return {
        "yaml_file": "yolo11n.yaml",
        "scale": "n",
        "nc": 1,
        "reg_max": 16,
        "backbone": [[-1, 1, m, []] for m in layers[:11]],
        "head": [[-1, 1, m, []] for m in layers[11:]],
    }


def test_other_ultralytics_models_get_a_message_saying_what_is_supported(tmp_path, monkeypatch):
    seg = tmp_path / "yolo26n-seg.pt"
    _fake_ultralytics(monkeypatch, seg, "SegmentationModel", {"yaml_file": "yolo26n-seg.yaml"})
    with pytest.raises(UserError, match=r"Ultralytics segmentation checkpoint .*kubedistill takes YOLO26 detect"):
        read_checkpoint(seg)
    v11 = tmp_path / "yolo11n.pt"
    _fake_ultralytics(monkeypatch, v11, "DetectionModel", _yolo11_cfg())
    with pytest.raises(UserError, match=r"is a yolo11 model \(yolo11n\.yaml, 24 layers\), not YOLO26 detect"):
        read_checkpoint(v11)


def test_a_missing_yolo26_file_says_where_to_put_it(tmp_path, tiny_data):
    proc = subprocess.run(
        [sys.executable, "-m", "kubedistill", "train", f"data={tiny_data}", "model=yolo26n.pt", "epochs=1", "imgsz=64"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "yolo26n.pt' does not exist" in proc.stderr and "kubedistill downloads nothing" in proc.stderr


def test_fine_tuning_starts_from_every_tensor_of_the_checkpoint(tmp_path, tiny_data, tiny_train, caplog):
    imported = load_ultralytics(_pt("n"))["model"]["state_dict"]
    seen = {}

    def grab(trainer):
        seen.update({k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()})

    tiny_train(tmp_path, tiny_data, "ft", model=str(_pt("n")), epochs=1, callbacks={"on_train_start": [grab]})
    assert set(seen) == set(imported)
    for k, v in imported.items():  # the same classes: every tensor transferred as it was
        assert torch.equal(seen[k].float(), v.float()), k


def test_fine_tuning_on_other_classes_renews_only_the_class_outputs(tmp_path, tiny_train):
    from kubedistill.data.synth import make_synth

    three = make_synth(
        tmp_path / "three", train=8, val=4, imgsz=64, seed=5, names=("circle", "square", "triangle"), min_size=8
    )
    imported = load_ultralytics(_pt("s"))["model"]["state_dict"]
    seen = {}
    tiny_train(
        tmp_path,
        three,
        "ft3",
        model=str(_pt("s")),
        epochs=1,
        callbacks={"on_train_start": [lambda t: seen.update({k: v.clone() for k, v in t.model.state_dict().items()})]},
    )
    renewed = {k for k in imported if seen[k].shape != imported[k].shape or not torch.equal(seen[k].cpu(), imported[k])}
    # yolo26s: the class branch is 128 wide for any class count up to 128, so only each level's last conv changes
    assert renewed == {
        f"head.{b}.{i}.2.{p}" for b in ("cls_branch", "o2o.cls_branch") for i in range(3) for p in ("weight", "bias")
    }


def test_distilling_from_an_ultralytics_teacher(tmp_path, tiny_data, tiny_train):
    trainer, res = tiny_train(
        tmp_path, tiny_data, "kd", model=str(_pt("n")), distill_model=str(_pt("s")), epochs=1, mosaic=0.0
    )
    assert trainer.objective.teacher.model.scale == "s"
    row = (Path(res["save_dir"]) / "results.csv").read_text().splitlines()
    assert "train/dis_loss" in row[0]
    assert float(row[1].split(",")[row[0].split(",").index("train/dis_loss")]) > 0


def test_the_users_command_from_their_ultralytics_files(tmp_path, tiny_data):
    """`kubedistill train data=... model=yolo26n.pt distill_model=yolo26s.pt`, with the files named as users have them."""
    import shutil

    for scale in SCALES:
        shutil.copyfile(_pt(scale), tmp_path / f"yolo26{scale}.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubedistill",
            "train",
            f"data={tiny_data}",
            "model=yolo26n.pt",
            "distill_model=yolo26s.pt",
            "epochs=1",
            "imgsz=64",
            "batch=8",
            "workers=0",
            "plots=False",
            "project=runs",
            "name=kd",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fine-tuning from yolo26n.pt (yolo26n): 708/708 tensors transferred" in proc.stdout
    assert "distilling from teacher yolo26s.pt (yolo26s)" in proc.stdout
    best = tmp_path / "runs" / "kd" / "weights" / "best.pt"
    assert best.is_file() and load_model(best)[0].names == ["circle", "square"]


def test_checkpoints_from_s3_for_training_distillation_and_the_pipelines_teacher(
    s3_env, tmp_path, monkeypatch, tiny_data, tiny_train
):
    from kubedistill import storage
    from kubedistill.pipeline.steps import train_step
    from kubedistill.storage import s3 as storage_s3
    from kubedistill.train import checkpoint_file

    s3_env.bucket("kd-models")
    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    storage_s3._client.cache_clear()
    n_uri = storage.upload(_pt("n"), "s3://kd-models/yolo26n.pt")
    s_uri = storage.upload(_pt("s"), "s3://kd-models/teachers/yolo26s.pt")
    local = checkpoint_file(n_uri)
    assert (tmp_path / "cache") in local.parents and local.read_bytes() == _pt("n").read_bytes()
    trainer, _ = tiny_train(tmp_path, tiny_data, "s3", model=n_uri, distill_model=s_uri, epochs=1, mosaic=0.0)
    assert trainer.objective.teacher.model.scale == "s" and trainer.cfg.model == n_uri  # the run records the URIs
    # the pipeline's teacher_uri: an Ultralytics teacher on S3, used as is
    res = train_step(
        tiny_data.parent,
        tmp_path / "teacher.pt",
        role="teacher",
        options={},
        extra_config=None,
        fingerprint="fp",
        teacher_uri=s_uri,
    )
    assert res["trained"] is False and res["source"] == s_uri
    assert (tmp_path / "teacher.pt").read_bytes() == _pt("s").read_bytes()
    with pytest.raises(UserError, match="is a prefix, not a checkpoint"):
        checkpoint_file("s3://kd-models/teachers/")
    storage_s3._client.cache_clear()


def test_serving_a_checkpoint_exports_it_once(tmp_path, monkeypatch):
    from kubedistill.serve.model import OnnxDetector
    from kubedistill.serve.resolve import resolve_model_uri

    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "cache"))
    onnx = resolve_model_uri(_pt("n"))
    assert onnx.suffix == ".onnx" and (tmp_path / "cache") in onnx.parents
    stamp = onnx.stat().st_mtime_ns
    assert resolve_model_uri(_pt("n")) == onnx and onnx.stat().st_mtime_ns == stamp  # made once
    det = OnnxDetector(onnx, threads=1)
    assert det.names == ["circle", "square"] and det.imgsz == 64


def test_fine_tuning_beats_training_from_scratch_at_equal_epochs(tmp_path, tiny_train):
    """The yolo26n fixture learnt circles and squares (one draw of the synthetic set); on another draw, 4 epochs from
    it beat 4 epochs from scratch."""
    from kubedistill.data.synth import make_synth

    data = make_synth(
        tmp_path / "other", train=96, val=32, imgsz=64, seed=11, names=("circle", "square"), min_size=12, max_objects=3
    )
    common = dict(epochs=4, batch=16, nbs=16, mosaic=0.0, close_mosaic=0, plots=False)
    _, scratch = tiny_train(tmp_path, data, "scratch", model="yolo26n", **common)
    _, tuned = tiny_train(tmp_path, data, "tuned", model=str(_pt("n")), **common)
    print(
        f"mAP50 after 4 epochs: from scratch {scratch['metrics']['mAP50']:.3f}, fine-tuned {tuned['metrics']['mAP50']:.3f}"
    )
    assert tuned["metrics"]["mAP50"] > scratch["metrics"]["mAP50"] + 0.05
