"""Mixed precision of a training step (`amp`): which dtype where, and a loss that stays fp32 under autocast."""

import pytest
import torch

from kubedistill.config import TrainConfig
from kubedistill.model.yolo import DetectionModel
from kubedistill.train import objective as obj
from kubedistill.train.objective import amp_dtype, autocast, build_objective, precision_name

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _batch(n=2, imgsz=64):
    return {
        "img": torch.rand(n, 3, imgsz, imgsz),
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.4, 0.4, 0.3, 0.3], [0.6, 0.5, 0.4, 0.5]]),
    }


def test_amp_dtype_by_device_and_cpu(monkeypatch):
    assert amp_dtype(CUDA, True) is torch.float16 and amp_dtype(CUDA, False) is None
    monkeypatch.setattr(obj, "cpu_has_bf16", lambda: True)
    assert amp_dtype(CPU, True) is torch.bfloat16 and amp_dtype(CPU, False) is None
    monkeypatch.setattr(obj, "cpu_has_bf16", lambda: False)  # a CPU would emulate bf16: stay in fp32
    assert amp_dtype(CPU, True) is None
    assert amp_dtype(torch.device("meta"), True) is None
    assert [precision_name(d) for d in (None, torch.float16, torch.bfloat16)] == ["fp32", "amp-fp16", "amp-bf16"]


def test_cpu_has_bf16_reads_torch_probes(monkeypatch):
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert obj.cpu_has_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert obj.cpu_has_bf16() is True
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without the probe: no bf16
    assert obj.cpu_has_bf16() is False


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_training_step_under_autocast_gives_fp32_loss_and_gradients(dtype):
    """Autocast makes the head's outputs bf16 (fp16 on CUDA); the assigner and the loss must still run, in fp32.
    Before the loss cast its inputs, the assigner failed with an index_put dtype error under any autocast."""
    torch.manual_seed(0)
    model = DetectionModel("n", nc=2).train()
    objective = build_objective(model, TrainConfig(imgsz=64), CPU)
    with autocast(CPU, dtype):
        preds = model(_batch()["img"])
        assert preds["one2many"]["scores"].dtype == (dtype or torch.float32)
        loss, items = objective.loss(preds, _batch())
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in items.values())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_bf16_and_fp32_losses_agree():
    """The same model and batch: the bf16 step's loss is the fp32 one within bf16's rounding, not another value."""
    torch.manual_seed(0)
    model = DetectionModel("n", nc=2).train()
    objective = build_objective(model, TrainConfig(imgsz=64), CPU)
    batch = _batch()
    losses = []
    for dtype in (None, torch.bfloat16):
        with autocast(CPU, dtype):
            losses.append(float(objective(batch)[0].detach()))
    assert losses[1] == pytest.approx(losses[0], rel=0.05)
