"""Feature distillation: frozen teacher, projector, score-weighted L2, student-only outputs, resume."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from kubedistill.config import train_config
from kubedistill.errors import ConfigError, UserError
from kubedistill.model.yolo import DetectionModel
from kubedistill.train import build_trainer
from kubedistill.train.checkpoint import atomic_torch_save, load_checkpoint
from kubedistill.train.distill import FeatureProjector, anchor_weights, score_weighted_l2
from tests.conftest import TINY_TRAIN


def _train(tmp_path, data, name, callbacks=None, **kw):
    cfg = train_config(data=str(data), project=str(tmp_path), name=name, **{**TINY_TRAIN, **kw})
    trainer = build_trainer(cfg, callbacks)
    return trainer, trainer.train()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("teacher")
    _, res = _train(tmp, tiny_data, "teacher", model="yolo-s", epochs=1)
    return Path(res["best"])


@pytest.mark.parametrize("student,teacher_scale", [("n", "s"), ("n", "m"), ("s", "m"), ("s", "l"), ("n", "l")])
def test_projector_shapes(student, teacher_scale):
    s, t = DetectionModel(student, nc=2), DetectionModel(teacher_scale, nc=2)
    proj = FeatureProjector(s.neck_channels, t.neck_channels)
    feats = [torch.rand(1, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate(s.neck_channels)]
    out = proj(feats)
    assert [o.shape[1] for o in out] == list(t.neck_channels)
    assert [o.shape[2:] for o in out] == [f.shape[2:] for f in feats]
    kinds = [type(m).__name__ for m in proj.levels[0]]
    assert kinds == ["Conv2d", "ReLU", "Conv2d"] and proj.levels[0][0].kernel_size == (1, 1)


def test_score_weighted_l2_hand_value():
    s = [torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]]])]  # [1, 2 channels, 1, 2]
    t = [torch.zeros(1, 2, 1, 2)]
    w = [torch.tensor([[[[1.0, 0.5]]]])]
    # sum w * diff^2 = 1*1 + 0.5*9 = 5.5 ; sum(w) * channels = 1.5 * 2 = 3
    assert score_weighted_l2(s, t, w).item() == pytest.approx(5.5 / 3)
    logits = torch.tensor([[[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]]])  # [B=1, C=2, A=3]
    heads = {"one2many": {"scores": logits}, "one2one": {"scores": logits + 2}}
    (wl,) = anchor_weights(heads, [(1, 3)])
    expected = (logits + 1).sigmoid().amax(1).view(1, 1, 1, 3)  # mean of the heads = logits + 1
    assert torch.allclose(wl, expected)


def test_distillation_run(tmp_path, tiny_data, teacher):
    before = load_checkpoint(teacher)["model"]["state_dict"]
    seen = {}

    def check_teacher(trainer):
        t = trainer.distiller.teacher
        seen["no_grad"] = all(p.grad is None and not p.requires_grad for p in t.parameters())
        seen["eval"] = not t.training
        seen["state"] = {k: v.detach().cpu().clone() for k, v in t.state_dict().items()}

    trainer, res = _train(tmp_path, tiny_data, "student", epochs=4, close_mosaic=4, mosaic=0.0, distill_model=str(teacher),
                          callbacks={"on_fit_end": [check_teacher]})
    assert seen["no_grad"] and seen["eval"]
    for k, v in before.items():  # bit-identical teacher after training
        assert torch.equal(v, seen["state"][k]), k
    rows = list(csv.DictReader(open(Path(res["save_dir"]) / "results.csv")))
    dis = [float(r["train/dis_loss"]) for r in rows]
    assert all(d > 0 for d in dis) and dis[-1] < dis[0], dis
    # the student's saved weights hold no teacher and no projector
    best = torch.load(res["best"], weights_only=True)
    keys = best["model"]["state_dict"].keys()
    assert not any("projector" in k or "teacher" in k or k.startswith("levels") for k in keys)
    assert best["model"]["meta"]["scale"] == "n" and "distill" not in best
    plain = DetectionModel("n", nc=2).state_dict()
    assert list(keys) == list(plain.keys())
    assert all(best["model"]["state_dict"][k].shape == v.shape for k, v in plain.items())
    last = torch.load(res["last"], weights_only=True)
    assert last["distill"]["teacher_sha256"] and last["distill"]["projector"]
    # same file size as a student trained without distillation (args differ by a few bytes only)
    _, plain_res = _train(tmp_path, tiny_data, "plain", epochs=1)
    assert abs(Path(res["best"]).stat().st_size - Path(plain_res["best"]).stat().st_size) < 4096


def test_mismatched_teachers_refused(tmp_path, tiny_data, teacher):
    ckpt = load_checkpoint(teacher)
    ckpt["model"]["meta"]["names"] = ["cat", "dog"]
    wrong_names = tmp_path / "names.pt"
    atomic_torch_save(ckpt, wrong_names)
    with pytest.raises(ConfigError, match=r"classes \['cat', 'dog'\] but the dataset has \['circle', 'square'\]"):
        _train(tmp_path, tiny_data, "x", epochs=1, distill_model=str(wrong_names))
    ckpt = load_checkpoint(teacher)
    ckpt["model"]["meta"]["strides"] = [8, 16, 64]
    wrong_strides = tmp_path / "strides.pt"
    atomic_torch_save(ckpt, wrong_strides)
    with pytest.raises(ConfigError, match=r"strides \[8, 16, 64\] but the student has \[8, 16, 32\]"):
        _train(tmp_path, tiny_data, "y", epochs=1, distill_model=str(wrong_strides))
    with pytest.raises(UserError, match="does not exist"):
        _train(tmp_path, tiny_data, "z", epochs=1, distill_model=str(tmp_path / "missing.pt"))


def test_resume_rebuilds_teacher_and_refuses_changed_one(tmp_path, tiny_data, teacher):
    t = tmp_path / "teacher.pt"
    shutil.copy(teacher, t)

    class Kill(Exception):
        pass

    def kill(trainer):
        raise Kill

    with pytest.raises(Kill):
        _train(tmp_path, tiny_data, "cut", epochs=2, distill_model=str(t), callbacks={"on_fit_epoch_end": [kill]})
    last = tmp_path / "cut" / "weights" / "last.pt"
    saved_proj = torch.load(last, weights_only=True)["distill"]["projector"]
    # a changed teacher is refused
    ckpt = load_checkpoint(t)
    ckpt["date"] = "changed"
    atomic_torch_save(ckpt, t)
    with pytest.raises(UserError, match="changed since this run started"):
        build_trainer(train_config(resume=str(last), workers=0)).train()
    # the original teacher resumes, with the projector state restored
    shutil.copy(teacher, t)
    restored = {}

    def grab(trainer):
        restored.update({k: v.clone() for k, v in trainer.distiller.projector.state_dict().items()})

    res = build_trainer(train_config(resume=str(last), workers=0), {"on_train_start": [grab]}).train()
    for k, v in saved_proj.items():
        assert torch.equal(v, restored[k]), k
    assert torch.load(res["last"], weights_only=True)["epoch"] == 1
