"""check.py: every problem kind with exact file and line; counts; thresholds; report; fingerprint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from kubedistill.core.errors import DataError
from kubedistill.data.check import check_dataset, fingerprint
from kubedistill.data.dataset_yaml import load_data_yaml

NAMES = ["a", "b", "c"]


def _img(path: Path, seed: int = 0, h: int = 24, w: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), a)
    return path


def _lab(root: Path, split: str, stem: str, text: str) -> Path:
    p = root / "labels" / split / f"{stem}.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _dataset(root: Path, train: dict[str, str | None], val: dict[str, str | None] | None = None) -> Path:
    """{stem: label text or None (no label file)} per split; images are distinct random PNGs."""
    seed = 0
    for split, items in (("train", train), ("val", val or {"v0": "0 0.5 0.5 0.2 0.2\n"})):
        for stem, text in items.items():
            seed += 1
            _img(root / "images" / split / f"{stem}.png", seed)
            if text is not None:
                _lab(root, split, stem, text)
    y = root / "data.yaml"
    y.write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a, b, c]\n")
    return y


def _check(y: Path, **kw):
    return check_dataset(load_data_yaml(y), workers=kw.pop("workers", 2), **kw)


def _only(report, kind):
    found = [p for p in report.problems if p.kind == kind]
    assert len(found) == 1, (kind, report.problems)
    return found[0]


def test_clean_dataset_counts(tmp_path):
    y = _dataset(
        tmp_path,
        {
            "good": "0 0.5 0.5 0.2 0.2\n2 0.25 0.25 0.1 0.1\n2 0.75 0.75 0.1 0.2\n",
            "nolabel": None,
            "empty": "",
            "blank": "\n  \n",
            "floatcls": "1.0 0.5 0.5 0.5 0.5\n",
        },
    )
    r = _check(y)
    assert r.problems == []
    c = r.counts["train"]
    assert (c.listed, c.usable, c.skipped, c.backgrounds, c.boxes) == (5, 5, 0, 3, 4)
    assert c.per_class == [1, 1, 2]
    assert r.names == NAMES
    good = next(s for s in r.samples["train"] if s.im_file.stem == "good")
    assert good.shape == (24, 32) and good.labels.dtype == np.float32 and good.labels.shape == (3, 5)
    np.testing.assert_allclose(good.labels[0], [0, 0.5, 0.5, 0.2, 0.2], atol=1e-6)
    assert "no problems" in r.summary()
    r.raise_if_unusable()


@pytest.mark.parametrize(
    "text,line,kind",
    [
        ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.1\n", 2, "label_columns"),
        ("0 0.5 0.5 0.2 0.2 0.3 0.3\n", 1, "label_columns"),
        ("0 0.5 0.5 0.2 0.2\n\n1 abc 0.5 0.1 0.1\n", 3, "label_value"),
        ("3 0.5 0.5 0.2 0.2\n", 1, "class_range"),
        ("-1 0.5 0.5 0.2 0.2\n", 1, "class_range"),
        ("0 0.5 0.5 0.2 0.2\n1.5 0.5 0.5 0.2 0.2\n", 2, "class_id"),
        ("0 nan 0.5 0.2 0.2\n", 1, "coord_nonfinite"),
        ("0 0.5 0.5 inf 0.2\n", 1, "coord_nonfinite"),
        ("0 160 120 20 20\n", 1, "coord_range"),
    ],
)
def test_errors_skip_sample_with_file_and_line(tmp_path, text, line, kind):
    y = _dataset(tmp_path, {"bad": text, "ok": "1 0.5 0.5 0.2 0.2\n"})
    r = _check(y)
    p = _only(r, kind)
    assert p.severity == "error" and p.split == "train" and p.line == line
    assert Path(p.file) == tmp_path / "labels/train/bad.txt"
    assert [s.im_file.stem for s in r.samples["train"]] == ["ok"]
    assert r.counts["train"].skipped == 1 and r.counts["train"].usable == 1


def test_every_bad_line_is_reported(tmp_path):
    y = _dataset(tmp_path, {"bad": "0 0.5 0.5\n9 0.5 0.5 0.2 0.2\n0 x 0.5 0.2 0.2\n"})
    r = _check(y)
    assert [(p.line, p.kind) for p in r.problems] == [(1, "label_columns"), (2, "class_range"), (3, "label_value")]


def test_clipping_warning_fixes_box(tmp_path):
    y = _dataset(tmp_path, {"edge": "0 0.5 0.5 0.2 0.2\n1 0.98 0.5 0.1 0.1\n"})
    r = _check(y)
    p = _only(r, "coord_clipped")
    assert p.severity == "warning" and p.line == 2 and Path(p.file).name == "edge.txt"
    lab = r.samples["train"][0].labels
    np.testing.assert_allclose(lab[1], [1, (0.93 + 1.0) / 2, 0.5, 0.07, 0.1], atol=1e-6)
    assert r.counts["train"].usable == 1


def test_degenerate_boxes_dropped(tmp_path):
    y = _dataset(tmp_path, {"d": "0 0.5 0.5 0 0.1\n1 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.1 1e-7\n0 1.2 0.5 0.1 0.1\n"})
    r = _check(y)
    deg = [p for p in r.problems if p.kind == "box_degenerate"]
    assert [p.line for p in deg] == [1, 3, 4] and all(p.severity == "warning" for p in deg)
    assert not [p for p in r.problems if p.kind != "box_degenerate"]
    lab = r.samples["train"][0].labels
    assert lab.shape == (1, 5) and lab[0, 0] == 1


def test_duplicate_lines(tmp_path):
    y = _dataset(tmp_path, {"dup": "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n0 0.50 0.5 0.2  0.2\n"})
    r = _check(y)
    p = _only(r, "box_duplicate")
    assert p.line == 3 and "line 1" in p.message and p.severity == "warning"
    assert len(r.samples["train"][0].labels) == 2


def test_bad_images(tmp_path):
    y = _dataset(tmp_path, {"ok": "0 0.5 0.5 0.2 0.2\n"})
    data = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8) + 90)[1].tobytes()
    (tmp_path / "images/train/trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "images/train/junk.png").write_bytes(b"not a png")
    r = _check(y)
    bad = sorted((Path(p.file).name, p.kind, p.line, p.severity) for p in r.problems)
    assert bad == [("junk.png", "image_corrupt", None, "error"), ("trunc.jpg", "image_corrupt", None, "error")]
    assert "truncated" in next(p.message for p in r.problems if p.file.endswith("trunc.jpg"))
    assert r.counts["train"].listed == 3 and r.counts["train"].skipped == 2


def test_missing_image_in_txt_list_and_non_utf8_label(tmp_path):
    _dataset(tmp_path, {"ok": "0 0.5 0.5 0.2 0.2\n", "latin": None})
    (tmp_path / "labels/train/latin.txt").write_bytes(b"0 0.5 0.5 0.2 0.2\n\xff\xfe\n")
    (tmp_path / "train.txt").write_text("images/train/ok.png\nimages/train/latin.png\nimages/train/gone.png\n")
    y = tmp_path / "data2.yaml"
    y.write_text("path: .\ntrain: train.txt\nval: images/val\nnames: [a, b, c]\n")
    r = _check(y)
    got = sorted((Path(p.file).name, p.kind, p.line) for p in r.problems)
    assert got == [("gone.png", "image_missing", None), ("latin.txt", "label_unreadable", 2)]


def test_split_overlap_by_path_and_content(tmp_path):
    y = _dataset(tmp_path, {"t0": "0 0.5 0.5 0.2 0.2\n", "t1": None}, {"v0": None})
    shutil.copy(tmp_path / "images/train/t1.png", tmp_path / "images/val/copy_of_t1.png")
    (tmp_path / "val.txt").write_text("images/val/v0.png\nimages/val/copy_of_t1.png\nimages/train/t0.png\n")
    y.write_text("path: .\ntrain: images/train\nval: val.txt\nnames: [a, b, c]\n")
    r = _check(y)
    ov = sorted((Path(p.file).name, p.message) for p in r.problems if p.kind == "split_overlap")
    assert len(ov) == 2 and all(p.severity == "warning" for p in r.problems)
    assert ov[0][0] == "copy_of_t1.png" and "t1.png" in ov[0][1] and "train" in ov[0][1]
    assert ov[1][0] == "t0.png" and "same file" in ov[1][1]
    assert r.counts["val"].usable == 3  # warnings keep samples


def test_raise_if_unusable_threshold_and_report(tmp_path):
    y = _dataset(
        tmp_path,
        {"g1": "0 0.5 0.5 0.2 0.2\n", "g2": None, "b1": "5 0.5 0.5 0.2 0.2\n", "b2": "0 0.5\n"},
    )
    r = _check(y, min_usable=0.5)
    assert r.counts["train"].usable == 2 and r.counts["train"].listed == 4
    r.raise_if_unusable()  # 2 >= 0.5 * 4
    with pytest.raises(DataError) as e:
        r.raise_if_unusable(0.75)  # needs 3
    msg = str(e.value)
    assert "2 of 4" in msg and "train" in msg and "kubedistill data check" in msg and "\n" not in msg
    out = r.write(tmp_path / "reports/check.json")
    d = json.loads(out.read_text())
    assert d["counts"]["train"]["skipped"] == 2 and len(d["problems"]) == 2
    assert {p["kind"] for p in d["problems"]} == {"class_range", "label_columns"}
    assert [f.name for f in (tmp_path / "reports").iterdir()] == ["check.json"]  # no temp file left
    with pytest.raises(DataError, match="check.json"):
        r.raise_if_unusable(1.0)
    s = r.summary()
    assert "2 of 4" in s and "class_range" in s


def test_all_unusable_raises_even_with_min_usable_zero(tmp_path):
    y = _dataset(tmp_path, {"b": "7 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(DataError, match="0 of 1"):
        _check(y, min_usable=0.0).raise_if_unusable()


def test_serial_and_threaded_agree(tmp_path):
    y = _dataset(tmp_path, {f"i{k}": f"{k % 3} 0.5 0.5 0.2 0.2\n" if k % 4 else "x\n" for k in range(12)})
    a, b = _check(y, workers=1), _check(y, workers=4)
    assert a.problems == b.problems and a.to_dict() == b.to_dict()


def test_fingerprint(tmp_path):
    y = _dataset(tmp_path / "one", {"a": "0 0.5 0.5 0.2 0.2\n", "b": None})
    f1 = fingerprint(load_data_yaml(y))
    assert f1 == fingerprint(load_data_yaml(y)) and len(f1) == 64
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    assert fingerprint(load_data_yaml(tmp_path / "two/data.yaml")) == f1  # location-independent
    _lab(tmp_path / "two", "train", "b", "1 0.5 0.5 0.2 0.2\n")
    f2 = fingerprint(load_data_yaml(tmp_path / "two/data.yaml"))
    assert f2 != f1
    _img(tmp_path / "two/images/train/c.png", 99)
    assert fingerprint(load_data_yaml(tmp_path / "two/data.yaml")) not in (f1, f2)
