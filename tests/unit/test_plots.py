"""kubedistill.eval.plots and eval.matching: training plots, detection matching, calibration error."""

from __future__ import annotations

import logging
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kubedistill.data.check import Sample
from kubedistill.eval import plots
from kubedistill.eval.coco import DetectionMetrics, ImageGT, ImagePred
from kubedistill.eval.matching import expected_calibration_error, match_detections
from kubedistill.eval.plots import (
    plot_confidence,
    plot_confusion_matrix,
    plot_labels,
    plot_pr_curves,
    plot_results,
    plot_val_mosaic,
    write_run_plots,
)

NAMES = ["circle", "square"]

# results.csv of `kubedistill train ... epochs=3 imgsz=64` on `kubedistill data synth` (2 classes):
# AP_medium and AP_large are empty (no such boxes in the val split).
RESULTS_CSV = """\
epoch,train/box_loss,train/cls_loss,train/l1_loss,metrics/mAP50-95,metrics/mAP50,metrics/mAP75,metrics/AP_small,metrics/AP_medium,metrics/AP_large,metrics/precision,metrics/recall,lr/weights,lr/norm,lr/bias,momentum,prog/o2m,prog/o2o,img_s,epoch_s
1,4.111579,4.633222,0.257691,0.003763,0.015247,0.000187,0.007242,,,0.028646,0.280303,0.000446,0.000446,0.067112,0.833333,0.8,0.2,23.806779,0.672077
2,4.161203,4.196492,0.214778,0.00419,0.015606,0.000182,0.008141,,,0.028315,0.280303,0.000677,0.000677,0.000677,0.9,0.45,0.55,49.333696,0.324322
3,4.239731,4.727548,0.226834,0.004185,0.015574,0.000177,0.008117,,,0.028125,0.280303,1.7e-05,1.7e-05,1.7e-05,0.9,0.1,0.9,57.953147,0.276085
"""


def assert_png_not_blank(path: Path, min_std: float = 8.0, min_colors: int = 8) -> None:
    path = Path(path)
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 100 and im.height > 100, im.size
        rgb = np.asarray(im.convert("RGB"))
    assert rgb.std() > min_std, f"{path.name} looks blank (std {rgb.std():.2f})"
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    n_colors = int(np.count_nonzero(np.bincount(packed.ravel(), minlength=1 << 24)))
    assert n_colors > min_colors, f"{path.name} has only {n_colors} colours"


def assert_no_temp_files(folder: Path) -> None:
    assert not [p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")]


def gt(boxes, classes, name="a.jpg", size=(100, 100)) -> ImageGT:
    return ImageGT(name, size[0], size[1], np.asarray(boxes, dtype=float).reshape(-1, 4), classes)


def pred(boxes, scores, classes) -> ImagePred:
    return ImagePred(np.asarray(boxes, dtype=float).reshape(-1, 4), scores, classes)


# --------------------------------------------------------------------------------------------
# Import cost
# --------------------------------------------------------------------------------------------


def test_import_does_not_load_matplotlib_torch_or_cv2():
    code = (
        "import sys, kubedistill.eval.plots\n"
        "heavy = [m for m in ('matplotlib', 'torch', 'cv2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# Matching and calibration (exact numbers)
# --------------------------------------------------------------------------------------------


def test_match_detections_hand_made_case():
    # GT: circle A, square B, circle C (missed). Predictions: circle on A (TP), circle on B (class
    # confusion), square on empty ground (FP), and one below the confidence threshold (ignored).
    g = gt([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0, 1, 0])
    p = pred(
        [[0, 0, 10, 10], [20, 20, 30, 31], [80, 80, 90, 90], [50, 50, 60, 60]],
        [0.9, 0.8, 0.7, 0.1],
        [0, 0, 1, 0],
    )
    m = match_detections([g], [p], iou_thr=0.5, conf=0.25, nc=2)
    assert m.detections == [(0.9, True, 0, 0), (0.8, False, 0, 1), (0.7, False, 1, -1)]
    # counts[pred, true], index 2 = background
    expected = np.array(
        [
            [1, 1, 0],  # predicted circle: 1 TP, 1 on a square
            [0, 0, 1],  # predicted square: 1 false positive on background
            [1, 0, 0],  # background: the missed circle
        ]
    )
    np.testing.assert_array_equal(m.confusion, expected)
    assert m.confusion.dtype == np.int64
    np.testing.assert_array_equal(m.image_index, [0, 0, 0])


def test_match_detections_greedy_rules():
    # Image 0: a square GT overlaps a circle GT; the circle prediction overlaps the square more,
    # but a same-class GT above the IoU threshold wins. A duplicate circle is a false positive.
    g0 = gt([[0, 0, 10, 10], [1, 0, 11, 10]], [0, 1])
    p0 = pred([[1, 0, 11, 10], [0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.6, 0.5], [0, 1, 0])
    # Image 1: no GT; its prediction must not match image 0's GT.
    g1 = gt(np.zeros((0, 4)), [], name="b.jpg")
    p1 = pred([[0, 0, 10, 10]], [0.95], [0])
    m = match_detections([g0, g1], [p0, p1], nc=2)
    np.testing.assert_array_equal(m.scores, [0.95, 0.9, 0.6, 0.5])
    np.testing.assert_array_equal(m.image_index, [1, 0, 0, 0])
    np.testing.assert_array_equal(m.is_tp, [False, True, True, False])
    np.testing.assert_array_equal(m.gt_cls, [-1, 0, 1, -1])
    np.testing.assert_array_equal(m.confusion, [[1, 0, 2], [0, 1, 0], [0, 0, 0]])
    # At IoU 0.9 the circle box (IoU 9/11 with the circle GT) only matches the square GT exactly:
    # greedy by score, the circle takes the square and the square then takes the circle.
    m9 = match_detections([g0, g1], [p0, p1], iou_thr=0.9, nc=2)
    assert not m9.is_tp.any()
    np.testing.assert_array_equal(m9.confusion, [[0, 1, 2], [1, 0, 0], [0, 0, 0]])


def test_match_detections_empty_and_errors():
    m = match_detections([], [], nc=3)
    assert m.confusion.shape == (4, 4) and m.confusion.sum() == 0
    assert len(m.scores) == 0 and m.detections == []
    m = match_detections([gt([[0, 0, 5, 5]], [1])], [ImagePred.empty()])
    assert m.confusion.tolist() == [[0, 0, 0], [0, 0, 0], [0, 1, 0]]  # nc inferred = 2
    with pytest.raises(ValueError):
        match_detections([gt([[0, 0, 5, 5]], [1])], [])
    with pytest.raises(ValueError):
        match_detections([gt([[0, 0, 5, 5]], [3])], [ImagePred.empty()], nc=2)


def test_expected_calibration_error_exact_values():
    assert expected_calibration_error(np.ones(5), np.ones(5, dtype=bool)) == 0.0
    # Bin 0.9-1.0: 4 detections at 0.9, 3 TP -> |0.75 - 0.9| = 0.15, weight 4/6.
    # Bin 0.3-0.4: 2 detections at 0.3, no TP -> |0 - 0.3| = 0.3, weight 2/6. ECE = 0.1 + 0.1.
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.3, 0.3])
    is_tp = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    assert expected_calibration_error(scores, is_tp, bins=10) == pytest.approx(0.2, abs=1e-12)
    # One bin: |3/6 - mean conf 0.7| = 0.2 as well.
    assert expected_calibration_error(scores, is_tp, bins=1) == pytest.approx(0.2, abs=1e-12)
    assert math.isnan(expected_calibration_error(np.zeros(0), np.zeros(0, dtype=bool)))


def test_confidence_statistics_through_matching():
    # 2 TP + 1 FP (a square on background), all at confidence 1.0: accuracy 2/3 in the last bin.
    g = gt([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0, 1, 0])
    p = pred([[0, 0, 10, 10], [20, 20, 30, 30], [80, 80, 90, 90]], [1.0, 1.0, 1.0], [0, 1, 1])
    m = match_detections([g], [p])
    assert expected_calibration_error(m.scores, m.is_tp) == pytest.approx(1 / 3)
    # All correct and fully confident: ECE exactly 0.
    m = match_detections([g], [pred(g.boxes, [1.0] * 3, g.classes)])
    assert m.is_tp.all() and expected_calibration_error(m.scores, m.is_tp) == 0.0


def test_plot_confidence_returns_ece_and_fp_confidence(tmp_path):
    # The hand-made mix of the ECE test, through matching: 0.9 x4 (3 TP, 1 FP), 0.3 x2 (FP), and a
    # detection at 0.1, below conf and ignored.
    boxes = [[i * 10, 0, i * 10 + 8, 8] for i in range(6)]
    g = gt(boxes[:3], [0, 0, 0])
    p = pred(boxes + [[0, 50, 8, 58]], [0.9, 0.9, 0.9, 0.9, 0.3, 0.3, 0.1], [0] * 7)
    res = plot_confidence([g], [p], tmp_path / "confidence.png", bins=10)
    path, ece, fp_mean = res
    assert path == res.path == tmp_path / "confidence.png"
    assert ece == pytest.approx(0.2)
    assert fp_mean == pytest.approx((0.9 + 0.3 + 0.3) / 3)
    assert_png_not_blank(path)
    assert_no_temp_files(tmp_path)


def test_plot_confidence_empty_inputs(tmp_path):
    res = plot_confidence([], [], tmp_path / "none.png")
    assert math.isnan(res.ece) and math.isnan(res.fp_mean_conf)
    assert_png_not_blank(res.path, min_std=1.0, min_colors=2)
    res = plot_confidence([gt([[0, 0, 5, 5]], [0])], [pred([[0, 0, 5, 5]], [0.05], [0])], tmp_path / "low.png")
    assert math.isnan(res.ece)
    assert_png_not_blank(res.path, min_std=1.0, min_colors=2)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def test_plot_results_from_training_csv(run_plots):
    save, out = run_plots
    assert_png_not_blank(out["results"])
    with Image.open(out["results"]) as im:
        assert im.width >= 1000 and im.height >= 700  # 19 panels, 5 per row
    epochs, data = plots.curves._read_results(save / "results.csv")
    assert epochs.tolist() == [1.0, 2.0, 3.0]
    assert len(data) == 19 and "epoch" not in data
    assert np.isnan(data["metrics/AP_medium"]).all()
    assert data["train/box_loss"][0] == pytest.approx(4.111579)


@pytest.fixture(scope="module")
def trainer_csv(tmp_path_factory, tiny_data, tiny_train):
    """results.csv of a real (tiny) training run: what plot_results reads in practice."""
    _, res = tiny_train(tmp_path_factory.mktemp("real_run"), tiny_data, epochs=2, plots=False)
    return Path(res["save_dir"]) / "results.csv"


def test_plot_results_reads_what_the_trainer_writes(trainer_csv, tmp_path):
    from kubedistill.core.names import METRIC_NAMES

    epochs, data = plots.curves._read_results(trainer_csv)
    assert epochs.tolist() == [1.0, 2.0]
    assert {"train/box_loss", "train/cls_loss", "train/l1_loss", "prog/o2m", "prog/o2o"} <= set(data)
    assert {f"metrics/{k}" for k in METRIC_NAMES} <= set(data)
    assert np.isfinite(data["train/box_loss"]).all() and np.isfinite(data["metrics/mAP50-95"]).all()
    assert_png_not_blank(plot_results(trainer_csv, tmp_path / "results.png"))


def test_plot_results_resumed_run_and_empty_files(tmp_path):
    resumed = tmp_path / "resumed.csv"
    resumed.write_text("epoch,train/box,note\n1,3.0,a\n2,2.5,b\n2,2.0,c\n3,,d\n")
    epochs, data = plots.curves._read_results(resumed)
    assert epochs.tolist() == [1.0, 2.0, 3.0]
    assert list(data) == ["train/box"]  # the text column is left out
    assert data["train/box"][1] == 2.0  # the last row of epoch 2
    header_only = tmp_path / "header.csv"
    header_only.write_text(RESULTS_CSV.splitlines()[0] + "\n")
    for src in (header_only, tmp_path / "missing.csv"):
        out = plot_results(src, tmp_path / f"{src.stem}.png")
        assert_png_not_blank(out, min_std=1.0, min_colors=2)


def make_metrics(names=NAMES, with_gt=(True, True)) -> DetectionMetrics:
    rec = np.linspace(0.0, 1.0, 101)
    prec = np.full((len(names), 101), np.nan)
    for c, has in enumerate(with_gt):
        if has:
            prec[c] = np.where(rec <= 0.5 + 0.3 * c, 1.0 - 0.4 * rec, 0.0)
    ap50 = np.where(np.isfinite(prec).all(1), np.nan_to_num(prec).mean(1), np.nan)
    nan = float("nan")
    return DetectionMetrics(
        names=list(names),
        map50_95=nan,
        map50=float(np.nanmean(ap50)) if np.isfinite(ap50).any() else nan,
        map75=nan,
        ap_small=nan,
        ap_medium=nan,
        ap_large=nan,
        precision=nan,
        recall=nan,
        f1=nan,
        conf_best_f1=nan,
        ap50_95_per_class=ap50 * 0.5,
        ap50_per_class=ap50,
        n_gt_per_class=np.array([5 if h else 0 for h in with_gt]),
        precision_per_class=ap50,
        recall_per_class=ap50,
        pr_recall=rec,
        pr_precision=prec,
    )


def test_plot_pr_curves(run_plots, tmp_path):
    assert_png_not_blank(run_plots[1]["pr_curves"])  # 3 classes, one without GT
    # Nothing to draw: no metrics, or no class with GT.
    out = plot_pr_curves(None, tmp_path / "none.png")
    assert_png_not_blank(out, min_std=1.0, min_colors=2)
    out = plot_pr_curves(make_metrics(with_gt=(False, False)), tmp_path / "nogt.png")
    assert_png_not_blank(out, min_std=1.0, min_colors=2)


def test_plot_confusion_matrix(run_plots, tmp_path):
    assert_png_not_blank(run_plots[1]["confusion_matrix"])  # normalised
    counts = np.array([[7, 1, 2], [2, 5, 1], [1, 3, 0]])
    out = plot_confusion_matrix(counts, NAMES, tmp_path / "cm_counts.png", normalize=False)
    assert_png_not_blank(out)
    out = plot_confusion_matrix(np.zeros((3, 3)), NAMES, tmp_path / "empty.png")
    assert_png_not_blank(out, min_std=1.0, min_colors=2)
    out = plot_confusion_matrix(np.zeros((0, 0)), [], tmp_path / "noclass.png")
    assert_png_not_blank(out, min_std=1.0, min_colors=2)


def make_samples(n: int = 6) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        k = int(rng.integers(1, 6))
        wh = rng.uniform(0.02, 0.6, (k, 2))
        xy = rng.uniform(0.3, 0.7, (k, 2))
        labels = np.column_stack([rng.integers(0, 2, k), xy, wh]).astype(np.float32)
        out.append(Sample(Path(f"img{i}.jpg"), (120, 160), labels))
    out.append(Sample(Path("background.jpg"), (120, 160), np.zeros((0, 5), np.float32)))
    return out


def test_plot_labels(run_plots, tmp_path):
    assert_png_not_blank(run_plots[1]["labels"])
    for samples, name in (([], "none"), ([Sample(Path("bg.jpg"), (10, 10), np.zeros((0, 5)))], "bg")):
        out = plot_labels(samples, NAMES, tmp_path / f"{name}.png")
        assert_png_not_blank(out, min_std=1.0, min_colors=2)


def write_images(folder: Path, n: int, size=(96, 128)) -> list[ImageGT]:
    import cv2

    rng = np.random.default_rng(1)
    gts = []
    for i in range(n):
        h, w = size
        img = np.full((h, w, 3), (40 + 20 * i, 90, 160), dtype=np.uint8)
        boxes = []
        for _ in range(2):
            x, y = int(rng.integers(0, w - 30)), int(rng.integers(0, h - 30))
            cv2.rectangle(img, (x, y), (x + 25, y + 25), (230, 200, 40), -1)
            boxes.append([x, y, x + 25, y + 25])
        path = folder / f"val_{i}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        gts.append(ImageGT(str(path), w, h, np.array(boxes, float), np.array([0, 1])))
    return gts


def test_plot_val_mosaic(run_plots, tmp_path):
    save, out = run_plots
    assert_png_not_blank(out["val_batch"])
    with Image.open(out["val_batch"]) as im:
        # 3 images (one unreadable) -> 2 rows of 2 (GT | pred) pairs of 320 px tiles plus captions.
        assert 4 * 320 < im.width < 4 * 320 + 40
        assert 2 * 320 < im.height < 2 * (320 + 30)
    # Small tiles; n limits the images.
    small = plot_val_mosaic(*run_plots_inputs(save)[:2], NAMES, tmp_path / "small.png", n=1, tile=120)
    with Image.open(small) as im:
        assert 2 * 120 < im.width < 2 * 120 + 20 and 120 < im.height < 120 + 40
    out = plot_val_mosaic([], [], NAMES, tmp_path / "empty.png")
    assert_png_not_blank(out, min_std=1.0, min_colors=2)


# --------------------------------------------------------------------------------------------
# write_run_plots
# --------------------------------------------------------------------------------------------

EXPECTED_FILES = {
    "results": "results.png",
    "pr_curves": "pr_curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "confidence": "confidence.png",
    "labels": "labels.png",
    "val_batch": "val_batch.png",
}


def run_plots_inputs(folder: Path) -> tuple[list[ImageGT], list[ImagePred]]:
    gts = write_images(folder, 2)
    gts.append(ImageGT(str(folder / "missing.png"), 50, 50, np.zeros((0, 4)), np.zeros(0)))  # unreadable
    preds = [ImagePred(g.boxes + 1, np.array([0.8, 0.4])[: len(g.boxes)], g.classes) for g in gts]
    return gts, preds


@pytest.fixture(scope="module")
def run_plots(tmp_path_factory):
    """All plots of a run, written once for the module: (save_dir, write_run_plots' dict)."""
    save = tmp_path_factory.mktemp("run")
    (save / "results.csv").write_text(RESULTS_CSV)
    gts, preds = run_plots_inputs(save)
    out = write_run_plots(
        save,
        results_csv=save / "results.csv",
        metrics=make_metrics(["a", "b", "c"], (True, True, False)),
        gts=gts,
        preds=preds,
        samples=make_samples(),
        names=NAMES,
    )
    return save, out


def test_write_run_plots_all(run_plots):
    save, out = run_plots
    assert set(out) == set(EXPECTED_FILES) | {"ece", "fp_mean_conf"}
    umask = os.umask(0o022)
    os.umask(umask)
    for key, name in EXPECTED_FILES.items():
        assert out[key] == save / name
        assert_png_not_blank(out[key])
        assert stat.S_IMODE(out[key].stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    # All 4 detections are TPs (conf 0.8, 0.4): |1 - 0.8| and |1 - 0.4| in two bins -> ECE 0.4.
    assert out["ece"] == pytest.approx(0.4)
    assert math.isnan(out["fp_mean_conf"])
    assert_no_temp_files(save)


def test_write_run_plots_never_raises(tmp_path, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(plots.run, "plot_labels", boom)  # the name write_run_plots calls
    with caplog.at_level(logging.WARNING, logger="kubedistill"):
        # Nothing to plot at all, mismatched gts/preds, and one plot that raises.
        out = write_run_plots(
            tmp_path / "run",
            results_csv=tmp_path / "missing.csv",
            metrics=None,
            gts=[gt([[0, 0, 5, 5]], [0])],
            preds=[],
            samples=None,
            names=NAMES,
        )
    assert "labels" not in out
    assert "renderer exploded" in caplog.text
    assert set(out) == (set(EXPECTED_FILES) - {"labels"}) | {"ece", "fp_mean_conf"}
    for key in set(EXPECTED_FILES) - {"labels"}:
        assert_png_not_blank(out[key], min_std=1.0, min_colors=2)
    assert math.isnan(out["ece"])
    # An impossible save_dir (a file) is logged, not raised.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = write_run_plots(blocker / "run", names=NAMES)
    assert set(out) == {"ece", "fp_mean_conf"}


def test_failed_write_leaves_target_untouched(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(TypeError, match="Cannot handle this data type"):
        plots.figure._save_array(np.zeros((4, 4, 7), dtype=np.uint8), target)  # not an image PIL can write
    assert target.read_bytes() == b"old"
    assert_no_temp_files(tmp_path)
