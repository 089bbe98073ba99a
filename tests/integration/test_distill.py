"""Feature distillation: frozen teacher, projector, score-weighted L2, student-only outputs, resume."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from kubedistill.benchmark.distill import parse_arm, run_distill_benchmark, summarize
from kubedistill.config import TrainConfig, train_config
from kubedistill.core.checkpoint import atomic_torch_save, load_checkpoint
from kubedistill.core.errors import ConfigError, UserError
from kubedistill.model.yolo import DetectionModel
from kubedistill.train import build_trainer
from kubedistill.train.distill import FeatureProjector, anchor_weights, o2o_score_kl, score_weighted_l2


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_data, tiny_train):
    tmp = tmp_path_factory.mktemp("teacher")
    _, res = tiny_train(tmp, tiny_data, "teacher", model="yolo-s", epochs=1)
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


def test_distillation_run(tmp_path, tiny_data, teacher, tiny_train):
    before = load_checkpoint(teacher)["model"]["state_dict"]
    seen = {}

    def check_teacher(trainer):
        t = trainer.objective.teacher.model
        seen["no_grad"] = all(p.grad is None and not p.requires_grad for p in t.parameters())
        seen["eval"] = not t.training
        seen["state"] = {k: v.detach().cpu().clone() for k, v in t.state_dict().items()}

    trainer, res = tiny_train(
        tmp_path,
        tiny_data,
        "student",
        epochs=4,
        close_mosaic=4,
        mosaic=0.0,
        distill_model=str(teacher),
        callbacks={"on_fit_end": [check_teacher]},
    )
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
    _, plain_res = tiny_train(tmp_path, tiny_data, "plain", epochs=1)
    assert abs(Path(res["best"]).stat().st_size - Path(plain_res["best"]).stat().st_size) < 4096


def test_mismatched_teachers_refused(tmp_path, tiny_data, teacher, tiny_train):
    ckpt = load_checkpoint(teacher)
    ckpt["model"]["meta"]["names"] = ["cat", "dog"]
    wrong_names = tmp_path / "names.pt"
    atomic_torch_save(ckpt, wrong_names)
    with pytest.raises(ConfigError, match=r"classes \['cat', 'dog'\] but the dataset has \['circle', 'square'\]"):
        tiny_train(tmp_path, tiny_data, "x", epochs=1, distill_model=str(wrong_names))
    ckpt = load_checkpoint(teacher)
    ckpt["model"]["meta"]["strides"] = [8, 16, 64]
    wrong_strides = tmp_path / "strides.pt"
    atomic_torch_save(ckpt, wrong_strides)
    with pytest.raises(ConfigError, match=r"strides \[8, 16, 64\] but the student has \[8, 16, 32\]"):
        tiny_train(tmp_path, tiny_data, "y", epochs=1, distill_model=str(wrong_strides))
    with pytest.raises(UserError, match="does not exist"):
        tiny_train(tmp_path, tiny_data, "z", epochs=1, distill_model=str(tmp_path / "missing.pt"))


def test_resume_rebuilds_teacher_and_refuses_changed_one(tmp_path, tiny_data, teacher, tiny_train):
    t = tmp_path / "teacher.pt"
    shutil.copy(teacher, t)

    class Kill(Exception):
        pass

    def kill(trainer):
        raise Kill

    with pytest.raises(Kill):
        tiny_train(tmp_path, tiny_data, "cut", epochs=2, distill_model=str(t), callbacks={"on_fit_epoch_end": [kill]})
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
        restored.update({k: v.clone() for k, v in trainer.objective.projector.state_dict().items()})

    res = build_trainer(train_config(resume=str(last), workers=0), {"on_train_start": [grab]}).train()
    for k, v in saved_proj.items():
        assert torch.equal(v, restored[k]), k
    assert torch.load(res["last"], weights_only=True)["epoch"] == 1


def test_o2o_score_kl_values():
    t = torch.tensor([[[2.0, -1.0, 0.0]]])  # [B=1, C=1, A=3]
    assert o2o_score_kl(t.clone(), t, temp=2.0).item() == pytest.approx(0.0, abs=1e-6)  # matching scores cost nothing
    s = torch.zeros(1, 1, 3)
    p, q = (t / 2).sigmoid(), torch.full_like(t, 0.5)
    kl = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
    expected = (kl.sum() * 4 / p.sum().clamp(min=1.0)).item()  # T^2 = 4, over the teacher's score sum
    assert o2o_score_kl(s, t, temp=2.0).item() == pytest.approx(expected, rel=1e-5)
    assert o2o_score_kl(s, t, temp=1.0).item() != pytest.approx(expected, rel=1e-3)


def test_o2o_term_trains_only_the_one_to_one_head(teacher, tiny_data):
    from kubedistill.train.objective import build_objective

    student = DetectionModel("n", nc=2, names=["circle", "square"]).train()
    dist = build_objective(student, TrainConfig(dis=0.0, dis_o2o=1.0), torch.device("cpu"), str(teacher))
    try:
        img = torch.rand(2, 3, 64, 64)
        preds = student(img)
        loss, items = dist.distill_loss(img, preds)
        assert set(items) == {"dis_loss", "dis_o2o_loss"} and items["dis_o2o_loss"] > 0
        loss.backward()
        touched = [n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        # only the one-to-one head's class branch: it sees detached features, so the backbone gets nothing
        assert touched and all(n.startswith("head.o2o.cls_branch.") for n in touched), touched
        assert all(p.grad is None for p in dist.teacher.model.parameters())
    finally:
        dist.close()


def test_distillation_run_with_o2o_term_logs_it(tmp_path, tiny_data, teacher, tiny_train):
    _, res = tiny_train(
        tmp_path, tiny_data, "o2o", epochs=2, mosaic=0.0, distill_model=str(teacher), dis_o2o=1.0, dis_temp=3.0
    )
    row = list(csv.DictReader(open(Path(res["save_dir"]) / "results.csv")))[-1]
    assert float(row["train/dis_o2o_loss"]) > 0 and float(row["train/dis_loss"]) > 0


def test_summary_over_seeds():
    rows = [
        {"seed": 0, "student_mAP50-95": 0.50, "distilled_mAP50-95": 0.52, "delta_points": 2.0},
        {"seed": 1, "student_mAP50-95": 0.60, "distilled_mAP50-95": 0.60, "delta_points": 0.0},
        {"seed": 2, "student_mAP50-95": 0.55, "distilled_mAP50-95": 0.57, "delta_points": 2.0},
    ]
    s = summarize(rows)
    assert s["student_mAP50-95"] == pytest.approx(0.55) and s["student_sd"] == pytest.approx(0.05)
    assert s["delta_points"] == pytest.approx(4 / 3) and s["wins"] == 2 and s["seeds"] == [0, 1, 2]
    assert s["delta_se"] == pytest.approx((4 / 3) ** 0.5 / 3**0.5)  # sd of (2, 0, 2) = sqrt(4/3)
    assert summarize(rows[:1])["delta_se"] is None


def test_benchmark_distill_over_two_seeds_and_two_arms(tmp_path, tiny_data, teacher):
    lines = []
    arms = [parse_arm("dis=6"), parse_arm("dis=1,dis-o2o=0.5")]
    assert arms[1] == {"dis": 1.0, "dis_o2o": 0.5}
    res = run_distill_benchmark(
        tmp_path,
        data=str(tiny_data),
        teacher_weights=str(teacher),
        epochs=1,
        imgsz=64,
        batch=8,
        seeds=(0, 1),
        arms=arms,
        steps=1,
        workers=0,
        jobs=2,
        echo=lines.append,
    )
    assert [a["arm"] for a in res["arms"]] == ["dis=6", "dis=1,dis_o2o=0.5"] and res["seeds"] == [0, 1]
    for a in res["arms"]:
        assert [r["seed"] for r in a["per_seed"]] == [0, 1] and a["step_s"] > 0 and a["ratio"] > 0
        assert [r["student_mAP50-95"] for r in a["per_seed"]] == [
            r["student_mAP50-95"] for r in res["arms"][0]["per_seed"]
        ]
    assert res["step_s_plain"] > 0 and res["floor"] > 1
    for name in ("student_s1", "distilled_dis6_s1", "distilled_dis1_dis_o2o0.5_s0"):
        assert (tmp_path / name / "weights" / "best.pt").is_file(), name
    assert sum(line.startswith("(b) ") and "standard error" in line for line in lines) == 2, lines
    assert (
        "in 2 processes" in lines[0] and lines[1].startswith("seed 0: alone") and lines[2].startswith("seed 1: alone")
    )


def test_benchmark_arms_are_checked_before_training():
    with pytest.raises(ConfigError, match="'dis' = '-1'"):
        parse_arm("dis=-1")
    with pytest.raises(ConfigError, match="dsi"):
        parse_arm("dsi=6")
    with pytest.raises(UserError, match="not NAME=VALUE"):
        parse_arm("dis")


def test_benchmark_cost_only(tmp_path, tiny_data, teacher):
    lines = []
    res = run_distill_benchmark(
        tmp_path,
        data=str(tiny_data),
        teacher_weights=str(teacher),
        imgsz=64,
        cost_imgsz=96,
        batch=4,
        steps=1,
        arms=[parse_arm("dis=6")],
        cost_only=True,
        echo=lines.append,
    )
    assert (
        res["cost_imgsz"] == 96
        and res["step_s_plain"] > 0
        and res["arms"][0]["arm"] == "dis=6"
        and res["arms"][0]["ratio"] > 0
    )
    assert lines[0].startswith("step at 96 px, batch 4") and not list(tmp_path.glob("student_*"))  # nothing trained
    with pytest.raises(UserError, match="needs a teacher"):
        run_distill_benchmark(tmp_path, data=str(tiny_data), cost_only=True)


def test_teacher_class_logits_equal_its_full_forward(teacher):
    from kubedistill.model.checkpoint import load_model
    from kubedistill.model.head import HEADS

    model, _ = load_model(teacher)
    model.head.eval_heads = HEADS
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        full = model(x)
        feats = model.neck(x)
        for h in HEADS:
            assert torch.equal(model.head.class_logits(feats, h), full[h]["scores"]), h


def test_distillation_under_bf16_autocast_is_fp32(teacher):
    """Mixed precision (bf16 on a CPU with native bf16): student, projector and teacher run under autocast; the
    detection and distillation losses stay fp32 and finite, and the projector gets gradients."""
    from kubedistill.train.objective import autocast, build_objective

    cpu = torch.device("cpu")
    student = DetectionModel("n", nc=2, names=["circle", "square"]).train()
    dist = build_objective(student, TrainConfig(dis=1.0, dis_o2o=1.0), cpu, str(teacher))
    batch = {
        "img": torch.rand(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.4, 0.4, 0.3, 0.3], [0.6, 0.5, 0.4, 0.5]]),
    }
    try:
        with autocast(cpu, torch.bfloat16):
            loss, items = dist(batch)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert items["dis_loss"].dtype == torch.float32 and items["dis_loss"] > 0 and items["dis_o2o_loss"] > 0
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dist.projector.parameters())
    finally:
        dist.close()
