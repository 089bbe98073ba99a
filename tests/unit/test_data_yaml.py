"""dataset_yaml.py: data.yaml forms and the errors a user can get."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubedistill.core.errors import DataError
from kubedistill.data.dataset_yaml import DataSpec, label_path, load_data_yaml


def _touch_images(d: Path, n: int, prefix: str = "im") -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"{prefix}{i}.jpg"
        p.write_bytes(b"x")  # parsing never decodes images
        out.append(p)
    return out


def _write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_folders_and_list_names(tmp_path):
    _touch_images(tmp_path / "ds/images/train", 3)
    _touch_images(tmp_path / "ds/images/train/sub", 1, "deep")
    _touch_images(tmp_path / "ds/images/val", 2)
    (tmp_path / "ds/images/val/notes.md").write_text("not an image")
    y = _write(tmp_path / "cfg/data.yaml", "path: ../ds\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    spec = load_data_yaml(y)
    assert isinstance(spec, DataSpec)
    assert spec.root == (tmp_path / "ds").resolve() or spec.root == tmp_path / "ds"
    assert spec.names == ["a", "b"] and spec.nc == 2
    assert len(spec.splits["train"]) == 4 and len(spec.splits["val"]) == 2
    assert "test" not in spec.splits
    assert spec.splits["train"] == sorted(spec.splits["train"])


def test_dict_names_default_root_and_list_of_sources(tmp_path):
    _touch_images(tmp_path / "images/a", 2)
    _touch_images(tmp_path / "images/b", 1, "b")
    _touch_images(tmp_path / "images/val", 1)
    y = _write(
        tmp_path / "data.yaml",
        "train: [images/a, images/b]\nval: images/val\ntest: images/val\nnames: {1: dog, 0: cat}\n",
    )
    spec = load_data_yaml(y)
    assert spec.root == tmp_path.resolve()
    assert spec.names == ["cat", "dog"]
    assert len(spec.splits["train"]) == 3 and len(spec.splits["test"]) == 1
    assert load_data_yaml(tmp_path).names == ["cat", "dog"]  # a folder holding data.yaml works too


def test_txt_split_lists(tmp_path):
    imgs = _touch_images(tmp_path / "images/train", 3)
    _touch_images(tmp_path / "images/val", 1)
    _write(
        tmp_path / "train.txt",
        f"./images/train/im0.jpg\n\n# a comment\nimages/train/im1.jpg\n{imgs[2]}\n./images/train/im0.jpg\n",
    )
    y = _write(tmp_path / "data.yaml", "path: .\ntrain: train.txt\nval: images/val\nnames: [x]\n")
    spec = load_data_yaml(y)
    assert [p.name for p in spec.splits["train"]] == ["im0.jpg", "im1.jpg", "im2.jpg"]  # duplicates dropped
    assert all(p.is_file() for p in spec.splits["train"])


def test_label_path():
    assert label_path("/d/images/train/x.jpg") == Path("/d/labels/train/x.txt")
    assert label_path("/images/d/images/train/a.b.PNG") == Path("/images/d/labels/train/a.b.txt")
    assert label_path("/d/pics/x.jpg") == Path("/d/pics/x.txt")
    assert label_path("/d/images.jpg") == Path("/d/images.txt")
    spec = DataSpec(Path("/d/data.yaml"), Path("/d"), ["a"], {})
    assert spec.label_path(Path("/d/images/v/q.webp")) == Path("/d/labels/v/q.txt")


@pytest.mark.parametrize(
    "text,match",
    [
        ("train: images/train\nval: images/val\n", "names"),
        ("train: images/train\nval: images/val\nnames: []\n", "names"),
        ("train: images/train\nval: images/val\nnames: {0: a, 2: b}\n", "0..1"),
        ("train: images/train\nval: images/val\nnames: {a: x}\n", "not an integer"),
        ("train: images/train\nval: images/val\nnames: cat\n", "list or a mapping"),
        ("val: images/val\nnames: [a]\n", "train"),
        ("train: images/train\nnames: [a]\n", "val"),
        ("train: images/nope\nval: images/val\nnames: [a]\n", "does not exist"),
        ("train: images/empty\nval: images/val\nnames: [a]\n", "no images"),
        ("path: missing_root\ntrain: images/train\nval: images/val\nnames: [a]\n", "not a folder"),
        ("train: images/train\nval: images/val\nnames: [a]\nnc: 3\n", "nc"),
        ("train: [images/train\nval: x\n", "not valid YAML"),
        ("- just\n- a list\n", "mapping"),
    ],
)
def test_errors(tmp_path, text, match):
    _touch_images(tmp_path / "images/train", 1)
    _touch_images(tmp_path / "images/val", 1)
    (tmp_path / "images/empty").mkdir()
    y = _write(tmp_path / "data.yaml", text)
    with pytest.raises(DataError, match=match) as e:
        load_data_yaml(y)
    assert e.value.fix and "\n" not in str(e.value)


def test_missing_yaml(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data_yaml(tmp_path / "nope.yaml")
