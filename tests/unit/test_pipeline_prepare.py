"""prepare_data: layout, split, check, fingerprint, content-addressed store (local and S3), reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from kubedistill.core.errors import DataError, UserError
from kubedistill.pipeline.prepare import MARKER, load_splits, parse_demo, prepare_dataset
from kubedistill.pipeline.steps import default_store


def _prep(uri, store, tmp_path, **kw):
    return prepare_dataset(
        str(uri),
        str(store),
        cache=tmp_path / "cache",
        report_html=tmp_path / "report.html",
        report_md=tmp_path / "report.md",
        **kw,
    )


def test_store_is_keyed_by_content(tiny_data, tmp_path):
    store = tmp_path / "store"
    res = _prep(tiny_data, store, tmp_path)
    fp = res["fingerprint"]
    out = Path(res["dataset_uri"])
    assert out == (store / fp).resolve() and res["stored"]
    spec = yaml.safe_load((out / "data.yaml").read_text())
    assert spec == {"path": ".", "train": "images/train", "val": "images/val", "names": ["circle", "square"]}
    assert len(list((out / "images" / "train").iterdir())) == 16 and len(list((out / "labels" / "val").iterdir())) == 8
    assert json.loads((out / MARKER).read_text())["fingerprint"] == fp
    assert res["counts"]["train"]["listed"] == 16 and res["counts"]["val"]["usable"] == 8

    again = _prep(tiny_data, store, tmp_path)
    assert again["fingerprint"] == fp and not again["stored"] and again["dataset_uri"] == res["dataset_uri"]
    assert [p.name for p in store.iterdir()] == [fp]  # no temporary leftovers

    changed = tmp_path / "changed"
    shutil.copytree(Path(tiny_data).parent, changed)
    lab = changed / "labels" / "val" / "val_000000.txt"
    lab.write_text(lab.read_text() + "0 0.5 0.5 0.1 0.1\n")
    other = _prep(changed / "data.yaml", store, tmp_path)
    assert other["fingerprint"] != fp and other["stored"]


def test_reports_show_classes_sizes_and_problems(tiny_data, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(Path(tiny_data).parent, src)
    (src / "labels" / "train" / "train_000001.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1\n"
    )  # class 7: error
    (src / "labels" / "train" / "train_000002.txt").write_text("1 0.95 0.5 0.2 0.2\n")  # reaches outside: clipped
    res = _prep(src / "data.yaml", tmp_path / "store", tmp_path)
    assert res["errors"] == 1 and res["problems"] == 2
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    for text in (html, md):
        assert res["fingerprint"] in text and "circle" in text and "square" in text
        assert "class_range" in text
    assert "data:image/png;base64," in html  # class counts / box size histogram inline
    assert "coord_clipped" in html and "train_000001.txt" in html
    assert "| small <32 | medium <96 | large |" in md and "| circle |" in md


def test_unusable_data_stops_after_writing_the_report(tiny_data, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(Path(tiny_data).parent, src)
    for f in (src / "labels" / "val").iterdir():
        f.write_text("9 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match="split 'val' are usable"):
        _prep(src / "data.yaml", tmp_path / "store", tmp_path)
    assert "class_range" in (tmp_path / "report.md").read_text()
    assert not list((tmp_path / "store").glob("[0-9a-f]*"))  # nothing stored


def test_a_single_split_is_split_deterministically(tiny_data, tmp_path):
    src = tmp_path / "only-train"
    shutil.copytree(Path(tiny_data).parent, src)
    (src / "data.yaml").write_text(
        yaml.safe_dump({"path": ".", "train": "images/train", "names": ["circle", "square"]})
    )
    spec, note = load_splits(src / "data.yaml", val_fraction=0.25, seed=3)
    assert "only `train` was given" in note
    train, val = set(spec.splits["train"]), set(spec.splits["val"])
    assert train and val and not train & val and len(train | val) == 16
    spec2, _ = load_splits(src / "data.yaml", val_fraction=0.25, seed=3)
    assert spec2.splits["val"] == spec.splits["val"]
    res = _prep(src / "data.yaml", tmp_path / "store", tmp_path, val_fraction=0.25, seed=3)
    assert res["counts"]["val"]["listed"] == len(val) and "became val" in res["note"]
    assert "became val" in (tmp_path / "report.md").read_text()


def test_class_names_must_match(tiny_data, tmp_path):
    with pytest.raises(DataError, match="class_names \\['cat', 'dog'\\] differ"):
        _prep(tiny_data, tmp_path / "store", tmp_path, class_names=["cat", "dog"])
    assert _prep(tiny_data, tmp_path / "store", tmp_path, class_names=["circle", "square", ""])["names"] == [
        "circle",
        "square",
    ]


def test_demo_source(tmp_path):
    assert parse_demo("demo")["train"] == 160 and parse_demo("./demo") is None and parse_demo("s3://demo") is None
    with pytest.raises(UserError, match="Unknown demo option 'size'"):
        parse_demo("demo?size=3")
    res = _prep("demo?train=4&val=2&imgsz=64&classes=2", tmp_path / "store", tmp_path)
    assert res["names"] == ["circle", "square"] and res["counts"]["train"]["listed"] == 4
    assert _prep("demo?train=4&val=2&imgsz=64", tmp_path / "store", tmp_path, class_names=["ring", "star"])[
        "names"
    ] == ["ring", "star"]
    with pytest.raises(UserError, match="No dataset given"):
        _prep(" ", tmp_path / "store", tmp_path)


def test_default_store_follows_the_pipeline_root():
    assert (
        default_store("minio://mlpipeline/v2/artifacts/kubedistill-training/abc/prepare-data/1/report")
        == "minio://mlpipeline/kubedistill/datasets"
    )
    assert default_store("s3://kfp-artifacts/run/report").startswith("s3://kfp-artifacts/")
    assert not default_store("/tmp/local/report").startswith(("s3:", "minio:"))


@pytest.mark.parametrize("scheme", ["s3", "minio"])
def test_s3_store_uploads_once(tiny_data, tmp_path, s3_env, scheme):
    bucket = s3_env.bucket("kfp-datasets")
    store = f"{scheme}://{bucket}/{scheme}/datasets"
    res = _prep(tiny_data, store, tmp_path)
    assert res["dataset_uri"] == f"{store}/{res['fingerprint']}" and res["stored"]
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket, Prefix=f"{scheme}/datasets/")["Contents"]}
    base = f"{scheme}/datasets/{res['fingerprint']}/"
    assert f"{base}data.yaml" in keys and f"{base}{MARKER}" in keys and f"{base}images/train/train_000000.jpg" in keys
    assert len([k for k in keys if k.startswith(f"{base}images/")]) == 24
    again = _prep(tiny_data, store, tmp_path)
    assert not again["stored"] and again["dataset_uri"] == res["dataset_uri"]
