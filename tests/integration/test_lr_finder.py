"""The lr finder: the suggestion rule on synthetic curves, and `kubedistill tune lr` on tiny data through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kubedistill.core.errors import ConfigError
from kubedistill.train.lr_finder import check_sweep, exp_lrs, smooth_losses, suggest_lr

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
TINY = ["--imgsz", "32", "--batch", "4", "nbs=4", "workers=0", "--optimizer", "AdamW", "mosaic=0"]


def kd(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "kubedistill", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ----------------------------------------------------------------------------------------------------------- unit


def test_suggestion_on_synthetic_curve():
    lrs = exp_lrs(1e-6, 1.0, 121)  # log10 lr from -6 to 0 in steps of 0.05
    x = np.log10(lrs)
    # plateau, steepest fall at lr 1e-3, minimum near 1e-1, then divergence
    loss = 2.0 - np.tanh((x + 3.0) / 0.5) + np.exp(4.0 * x)
    loss[:8] += np.linspace(5.0, 0.0, 8)  # a steep fall inside the skipped start: must be ignored
    rng = np.random.default_rng(0)
    loss[-10:] = loss[-10:] + 40.0 * rng.random(10)  # a noisy diverged tail with steep drops: ignored too
    s = suggest_lr(lrs, loss)
    assert s.method == "steepest"
    assert abs(np.log10(s.lr) - (-3.0)) <= 0.05 + 1e-9, s.lr
    assert s.window[0] == 12 and s.index is not None and s.window[0] <= s.index <= s.min_index == s.window[1]
    assert -1.7 < np.log10(s.min_lr) < -1.2 and s.min_lr_div10 == pytest.approx(s.min_lr / 10)
    assert s.slope < 0


def test_suggestion_fallback_when_loss_only_rises():
    lrs = exp_lrs(1e-3, 10.0, 30)
    s = suggest_lr(lrs, np.linspace(1.0, 5.0, 30))
    assert s.index is None and s.method.startswith("min/10")
    assert s.lr == pytest.approx(s.min_lr / 10)


def test_smoothing_is_bias_corrected():
    assert smooth_losses([3.0, 3.0, 3.0], 0.05) == pytest.approx([3.0, 3.0, 3.0])
    sm = smooth_losses([1.0, 2.0], 0.5)
    assert sm[0] == pytest.approx(1.0) and sm[1] == pytest.approx((0.25 + 1.0) / 0.75)
    assert smooth_losses([1.0, 5.0, 2.0], 1.0) == pytest.approx([1.0, 5.0, 2.0])


def test_bad_sweep_settings():
    check_sweep(1e-6, 1.0, 100, 0.05, 4.0)
    with pytest.raises(ConfigError, match="--end-lr 1e-07 must be larger.*--steps 2.*--smooth 0"):
        check_sweep(1e-6, 1e-7, 2, 0.0, 4.0)


# ------------------------------------------------------------------------------------------------------ through CLI


def test_lr_finder_cli(tmp_path, tiny_data):
    out = tmp_path / "lrf"
    proc = kd(
        "tune",
        "lr",
        "--data",
        tiny_data,
        "--model",
        "yolo-n",
        *TINY,
        "--steps",
        "30",
        "--start-lr",
        "1e-5",
        "--end-lr",
        "1.0",
        "--out",
        out,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith("suggested lr0=") and str(out) in lines[-2]
    assert (
        lines[-1].startswith("use it: kubedistill train ") and "optimizer=AdamW" in lines[-1] and " lr0=" in lines[-1]
    )

    res = json.loads((out / "lr_find.json").read_text())
    for k in (
        "lrs",
        "losses",
        "smoothed",
        "suggestion",
        "min_lr",
        "min_lr_div10",
        "stopped_early",
        "stop_reason",
        "settings",
        "train_command",
    ):
        assert k in res, k
    lrs = np.array(res["lrs"])
    n = len(lrs)
    assert 5 <= n <= 30 and len(res["losses"]) == len(res["smoothed"]) == n
    assert np.all(np.isfinite(res["losses"]))
    # exponentially spaced and increasing, starting at start_lr
    assert lrs[0] == pytest.approx(1e-5) and np.all(np.diff(lrs) > 0)
    assert np.allclose(lrs[1:] / lrs[:-1], (1.0 / 1e-5) ** (1 / 29))
    if not res["stopped_early"]:
        assert n == 30 and lrs[-1] == pytest.approx(1.0)
    # recorded smoothing = the documented formula on the recorded losses
    assert np.allclose(res["smoothed"], smooth_losses(res["losses"], 0.05))
    # suggestion inside the swept range, before the minimum (not in the diverged tail)
    assert lrs[0] <= res["suggestion"] <= lrs[-1]
    assert res["suggestion_method"] == "steepest"
    assert res["search_window"][0] <= res["suggestion_index"] <= res["min_index"]
    assert res["suggestion"] <= res["min_lr"]
    assert res["settings"]["optimizer"] == "AdamW" and res["settings"]["steps"] == 30
    assert res["settings"]["accumulate"] == 1 and res["settings"]["batch"] == 4
    # nothing but the outputs: no weights, no run folder from the trainer's setup
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]
    assert not (tmp_path / "runs").exists()

    from PIL import Image

    img = np.asarray(Image.open(out / "lr_find.png").convert("L"), dtype=np.float64)
    assert img.shape[0] >= 200 and img.shape[1] >= 300
    assert img.std() > 5.0  # not blank

    # divergence: an absurd end lr stops the sweep early
    out2 = tmp_path / "lrf_div"
    proc = kd(
        "tune",
        "lr",
        "--data",
        tiny_data,
        *TINY,
        "--steps",
        "12",
        "--start-lr",
        "1e-2",
        "--end-lr",
        "1e3",
        "--out",
        out2,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res2 = json.loads((out2 / "lr_find.json").read_text())
    assert res2["stopped_early"] is True and res2["stop_reason"], res2["stop_reason"]
    assert len(res2["lrs"]) < 12 and "stopped early" in proc.stdout
    if res2["suggestion_method"] == "steepest":
        assert res2["lrs"][0] <= res2["suggestion"] <= res2["min_lr"]


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--data", "nope/data.yaml"], "does not exist"),
        (["--data", "{data}", "--epochz", "3"], "unknown option 'epochz'"),
    ],
)
def test_lr_finder_user_errors(tmp_path, tiny_data, args, expect):
    proc = kd("tune", "lr", *[a.format(data=tiny_data) for a in args], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()
