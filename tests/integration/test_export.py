"""ONNX export: end-to-end output, metadata, self-check against torch, dynamic batch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import yaml

from kubedistill.core.errors import ConfigError, UserError
from kubedistill.detector import Detector
from kubedistill.model.export import compare_detections, export_onnx


@pytest.fixture(scope="module")
def weights(served_model):
    """The serving tests' 1-epoch tiny model (trained once per session)."""
    return served_model[0]


def test_export_static_and_dynamic(tmp_path, weights, served_dynamic_model):
    res = export_onnx(weights, tmp_path / "m.onnx", max_det=50)
    sess = ort.InferenceSession(res["path"])
    assert sess.get_inputs()[0].shape == [1, 3, 64, 64]
    assert sess.get_outputs()[0].shape == [1, 50, 6]
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["names"]) == ["circle", "square"] and meta["imgsz"] == "64" and meta["stride"] == "32"
    assert len(meta["source_sha256"]) == 64 and meta["model"] == "yolo26n"
    s2 = ort.InferenceSession(str(served_dynamic_model))  # `export_onnx(..., dynamic=True)`
    out = s2.run(None, {"images": np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)})[0]
    anchors = 8 * 8 + 4 * 4 + 2 * 2  # at 64 px: fewer (anchor, class) pairs than max_det
    assert out.shape == (3, min(300, anchors * 2), 6)
    assert (np.diff(out[..., 4], axis=1) <= 1e-6).all()  # sorted by score
    assert not list(tmp_path.glob(".*tmp"))


def test_compare_detections_flags_mismatch():
    ref = np.array([[[0, 0, 10, 10, 0.9, 1], [5, 5, 8, 8, 0.5, 0]]], dtype=np.float32)
    assert compare_detections(ref, ref[:, ::-1].copy()) is None  # order does not matter
    bad = ref.copy()
    bad[0, 0, 2] += 1.0
    assert "no ONNX twin" in compare_detections(ref, bad)
    # an untrained model's scores all lie below 0.01: its top detections are still compared
    low = ref.copy()
    low[..., 4] = [0.004, 0.003]
    wrong = low.copy()
    wrong[0, 0, 5] = 0  # class differs
    assert "no ONNX twin" in compare_detections(low, wrong)
    # a tie at the max_det cut-off may keep a different anchor
    tied = np.array([[[0, 0, 10, 10, 0.9, 1], [5, 5, 8, 8, 0.5, 0], [20, 20, 30, 30, 0.5, 0]]], dtype=np.float32)
    assert compare_detections(tied[:, :2], tied[:, [0, 2]]) is None


def test_export_errors(tmp_path, weights):
    with pytest.raises(UserError, match="multiple of 32"):
        export_onnx(weights, tmp_path / "x.onnx", imgsz=70)
    for bad in (0, -1, 10**6):  # 0 ended in an IndexError (issue 17)
        with pytest.raises(UserError, match=f"--max-det {bad} is out of range"):
            export_onnx(weights, tmp_path / "x.onnx", max_det=bad)


def test_export_into_an_existing_folder(tmp_path, weights):
    """--out naming a folder writes the model inside it (it ended in IsADirectoryError, issue 17)."""
    folder = tmp_path / "models"
    folder.mkdir()
    res = export_onnx(weights, folder)
    assert Path(res["path"]) == folder / Path(weights).with_suffix(".onnx").name and Path(res["path"]).is_file()


def test_benchmark_onnx_times_files_side_by_side(served_model, served_dynamic_model, tmp_path):
    from kubedistill.benchmark.onnx import onnx_times

    lines = []
    rows = onnx_times([served_model[1], served_dynamic_model], rounds=3, warmup=1, threads=1, echo=lines.append)
    assert [r["input"] for r in rows] == [[1, 3, 64, 64], [1, 3, 64, 64]]  # the dynamic batch is timed at 1
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0 and all(r["p10_ms"] <= r["ms"] <= r["p90_ms"] for r in rows)
    assert lines[0].startswith("# kubedistill benchmark onnx: 3 interleaved rounds, 1 threads") and len(lines) == 3
    with pytest.raises(UserError, match="does not exist"):
        onnx_times([tmp_path / "nope.onnx"])


def test_benchmark_train_drives_a_peer_over_its_protocol(tmp_path):
    """The peer side runs in another venv (Ultralytics'); here a stand-in script speaks the same protocol."""
    import sys

    from kubedistill.benchmark.train import run_train_benchmark

    peer = tmp_path / "peer.py"
    peer.write_text(
        "import sys, time\n"
        "assert sys.argv[2] == 'n' and sys.argv[3] == '4'\n"
        "print('a notice first'); print('ready', flush=True)\n"
        "for line in sys.stdin:\n"
        "    if line.strip() == 'quit': break\n"
        "    time.sleep(0.01 * int(line)); print(0.5 * int(line), flush=True)\n"  # says 0.5 s per step: 16 img/s
    )
    lines = []
    rows = run_train_benchmark(
        ["n"],
        [64],
        batch=8,
        iters=2,
        workers=0,
        echo=lines.append,
        peer_python=sys.executable,
        peer_script=peer,
        rounds=2,
    )
    assert rows[0]["peer_img_s"] == 16.0 and rows[0]["ours_over_peer"] == pytest.approx(
        rows[0]["train_img_s"] / 16.0, rel=0.01
    )
    assert "Ultralytics    16.00 img/s" in lines[-1]
    with pytest.raises(UserError, match="does not exist"):
        run_train_benchmark(["n"], [64], batch=8, iters=1, workers=0, peer_python=str(tmp_path / "nope"), rounds=1)


def test_benchmark_peer_train_scores_both_with_one_evaluator(tmp_path, tiny_data, served_model):
    """The peer trains in Ultralytics' venv; here a stand-in script answers as it would, with a ready checkpoint."""
    import sys

    from kubedistill.benchmark.peer import run_peer_train_benchmark

    peer = tmp_path / "peer.py"
    peer.write_text(
        "import sys\n"
        "data, model, epochs, imgsz, batch, project, name, seed = sys.argv[1:9]\n"
        "assert open(data).read().startswith('path: /') and model == 'yolo26n' and epochs == '1'\n"
        "assert name == 'theirs_s' + seed and seed in ('0', '3')\n"
        f"print('training ...'); print('best {served_model[0]} 12.5' if seed == '0' else 'best {served_model[0]} 7.5')\n"
    )
    lines = []
    res = run_peer_train_benchmark(
        sys.executable,
        str(tiny_data),
        model="yolo26n",
        epochs=1,
        imgsz=64,
        batch=8,
        out=tmp_path / "work",
        peer_script=peer,
        echo=lines.append,
        seeds=(0, 3),
        ours_options={"nbs": 8},
    )
    assert res["theirs_s"] == 10.0 and res["ours_s"] > 0 and 0 <= res["ours_mAP50-95"] <= 1  # means of the seeds
    theirs = Detector(str(served_model[0])).val(str(tiny_data), imgsz=64, workers=0)["mAP50-95"]
    assert res["theirs_mAP50-95"] == pytest.approx(theirs) and [r["seed"] for r in res["runs"]] == [0, 3]
    assert [r["theirs_s"] for r in res["runs"]] == [12.5, 7.5]
    ours = [r["ours_mAP50-95"] for r in res["runs"]]
    assert res["ours_mAP50-95"] == pytest.approx(sum(ours) / 2)
    # each seed trained its own run of ours, with that seed
    args = [yaml.safe_load((tmp_path / "work" / f"ours_s{s}" / "args.yaml").read_text()) for s in (0, 3)]
    assert [(a["seed"], a["nbs"]) for a in args] == [(0, 8), (3, 8)]  # and --ours options reach ours only
    assert lines[0].endswith("seeds 0,3, ours nbs=8") and lines[1].startswith("seed 0: kubedistill mAP50-95 ")
    assert "(mean of 2 seeds)" in lines[-2]
    assert lines[-1].startswith("ours/theirs: mAP50-95 ") and "same evaluator" in lines[-1]
    with pytest.raises(ConfigError, match="--ours epochs is set by the benchmark"):
        run_peer_train_benchmark(sys.executable, str(tiny_data), epochs=1, peer_script=peer, ours_options={"epochs": 3})
    peer.write_text("import sys; sys.exit(3)\n")
    with pytest.raises(UserError, match=r"Ultralytics' training failed \(exit 3\)"):
        run_peer_train_benchmark(
            sys.executable, str(tiny_data), epochs=1, imgsz=64, batch=8, out=tmp_path / "w2", peer_script=peer
        )
