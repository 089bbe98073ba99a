"""fetch_dataset from local folders and archives: safe extraction, data.yaml found and made to work, reuse."""

import io
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from kubedistill.core.errors import DataError, UserError
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.fetch import extract_archive, fetch_dataset, is_archive, resolve_data


def _tree_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _zip_dir(src: Path, out: Path, top: str = "") -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, (Path(top) / f.relative_to(src)).as_posix())
    return out


def _tar_dir(src: Path, out: Path, top: str = "", mode: str = "w:gz") -> Path:
    with tarfile.open(out, mode) as tf:
        tf.add(src, arcname=top or ".")
    return out


def test_is_archive():
    assert all(is_archive(n) for n in ("a.zip", "s3://b/x.TAR.GZ", "d.tgz", "d.tar", "d.tar.xz"))
    assert not any(is_archive(n) for n in ("data.yaml", "s3://b/prefix/", "a.gz"))


def test_local_yaml_and_folder_used_in_place(tiny_data, tmp_path):
    assert fetch_dataset(str(tiny_data), tmp_path / "unused") == tiny_data.resolve()
    assert fetch_dataset(str(tiny_data.parent), tmp_path / "unused") == tiny_data.resolve()
    assert resolve_data(str(tiny_data)) == Path(str(tiny_data))  # local: unchanged, load_data_yaml checks it
    assert not (tmp_path / "unused").exists()
    with pytest.raises(DataError, match="does not exist"):
        fetch_dataset(str(tmp_path / "nope"), tmp_path / "d")


def test_folder_without_data_yaml(tiny_data, tmp_path):
    ds = tmp_path / "noyaml"
    shutil.copytree(tiny_data.parent / "images", ds / "images")
    with pytest.raises(DataError, match="holds images/labels but no data.yaml") as e:
        fetch_dataset(str(ds), tmp_path / "d")
    assert "Add a data.yaml" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no files"):
        fetch_dataset(str(empty), tmp_path / "d")


@pytest.mark.parametrize("kind,top", [("zip", ""), ("zip", "coco-mini"), ("tar.gz", ""), ("tar", "coco-mini")])
def test_archive_fetch(tiny_data, tmp_path, kind, top):
    src = tiny_data.parent
    arc = tmp_path / f"ds.{kind}"
    _zip_dir(src, arc, top) if kind == "zip" else _tar_dir(src, arc, top, "w:gz" if kind == "tar.gz" else "w")
    dest = tmp_path / "fetched"
    yml = fetch_dataset(str(arc), dest)
    assert yml == dest / top / "data.yaml" if top else yml == dest / "data.yaml"
    spec = load_data_yaml(yml)
    assert (len(spec.splits["train"]), len(spec.splits["val"])) == (16, 8) and spec.root == yml.parent
    assert all(dest in p.parents for p in spec.splits["train"])
    # fetching the unchanged archive again reuses the extracted copy (not extracted again)
    marker = spec.splits["train"][0]
    before = marker.stat()
    assert fetch_dataset(str(arc), dest) == yml and marker.stat().st_ino == before.st_ino
    # a changed archive (here: a new mtime) is extracted again into a new copy
    os.utime(arc, ns=(before.st_mtime_ns + 10**9,) * 2)
    assert fetch_dataset(str(arc), dest) == yml and marker.stat().st_ino != before.st_ino
    assert sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(".fetched.")) == [".fetched.lock"]


def test_absolute_path_in_yaml_is_localized(tiny_data, tmp_path):
    src = tmp_path / "src" / "mini"
    shutil.copytree(tiny_data.parent, src)
    cfg = yaml.safe_load((src / "data.yaml").read_text())
    cfg["path"] = "/home/someone/datasets/mini"  # the author's machine
    (src / "data.yaml").write_text(yaml.safe_dump(cfg))
    yml = fetch_dataset(str(_zip_dir(src, tmp_path / "mini.zip", "mini")), tmp_path / "d")
    assert yml.name == "data.fetched.yaml" and yaml.safe_load(yml.read_text())["path"] == "."
    assert (
        yaml.safe_load((yml.parent / "data.yaml").read_text())["path"] == "/home/someone/datasets/mini"
    )  # original kept
    assert len(load_data_yaml(yml).splits["train"]) == 16
    # a root that cannot be found in the copy is a DataError naming `path:`
    cfg["train"] = "elsewhere/images"
    (src / "data.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match="points outside the fetched dataset"):
        fetch_dataset(str(_zip_dir(src, tmp_path / "mini2.zip", "mini")), tmp_path / "d2")


def test_refuses_to_replace_a_foreign_folder(tiny_data, tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="was not written by"):
        fetch_dataset(str(_zip_dir(tiny_data.parent, tmp_path / "ds.zip")), dest)
    assert (dest / "precious.txt").read_text() == "keep"


def _tar_with(path: Path, *members: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("ds/data.yaml")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"x: 1"))
        for m in members:
            tf.addfile(m, io.BytesIO(b"evil") if m.isfile() else None)
    return path


def _ti(name: str, type_=tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.linkname = type_, link
    t.size = 4 if type_ == tarfile.REGTYPE else 0
    return t


@pytest.mark.parametrize(
    "member,needle",
    [
        (_ti("../evil.txt"), "'..'"),
        (_ti("ds/../../evil.txt"), "'..'"),
        (_ti("/tmp/evil.txt"), "absolute path"),
        (_ti("ds/link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link pointing outside"),
        (_ti("ds/link", tarfile.SYMTYPE, "../../outside"), "symbolic link pointing outside"),
        (_ti("ds/hard", tarfile.LNKTYPE, "../outside"), "hard link pointing outside"),
        (_ti("ds/dev", tarfile.CHRTYPE), "device or FIFO"),
        (_ti("ds/fifo", tarfile.FIFOTYPE), "device or FIFO"),
    ],
)
def test_unsafe_tar_refused(tmp_path, member, needle):
    arc = _tar_with(tmp_path / "bad.tar", member)
    with pytest.raises(DataError, match=needle) as e:
        fetch_dataset(str(arc), tmp_path / "work" / "d")
    assert member.name in str(e.value)
    # nothing written anywhere: no dest, no temporary folder left, nothing outside
    assert set(_tree_files(tmp_path)) <= {"bad.tar", "work/.d.lock"}
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work" / "d").exists()


def test_tar_links_inside_are_fine(tmp_path):
    arc = _tar_with(
        tmp_path / "ok.tar",
        _ti("ds/link.yaml", tarfile.SYMTYPE, "data.yaml"),
        _ti("ds/hard.yaml", tarfile.LNKTYPE, "ds/data.yaml"),
    )
    extract_archive(arc, tmp_path / "out")
    assert (tmp_path / "out" / "ds" / "link.yaml").read_text() == "x: 1" and (
        tmp_path / "out" / "ds" / "hard.yaml"
    ).read_text() == "x: 1"


def _zip_with(path: Path, name: str, data: bytes = b"evil", mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ds/data.yaml", "x: 1")
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    "name,data,mode,needle",
    [
        ("../evil.txt", b"evil", None, "'..'"),
        ("ds/../../evil.txt", b"evil", None, "'..'"),
        ("/abs/evil.txt", b"evil", None, "absolute path"),
        ("C:/evil.txt", b"evil", None, "absolute path"),
        ("ds/link", b"/etc/passwd", stat.S_IFLNK | 0o777, "symbolic link pointing outside"),
        ("ds/link", b"data.yaml", stat.S_IFLNK | 0o777, "symbolic link"),
        ("ds/fifo", b"", stat.S_IFIFO | 0o644, "device or FIFO"),
    ],
)
def test_unsafe_zip_refused(tmp_path, name, data, mode, needle):
    arc = _zip_with(tmp_path / "bad.zip", name, data, mode)
    with pytest.raises(DataError, match=needle):
        fetch_dataset(str(arc), tmp_path / "work" / "d")
    assert set(_tree_files(tmp_path)) <= {"bad.zip", "work/.d.lock"}


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="not a readable tar archive"):
        fetch_dataset(str(bad), tmp_path / "d")
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="not a readable zip archive"):
        fetch_dataset(str(bad), tmp_path / "d")


def test_cli_fetch_and_check_archive(tiny_data, tmp_path, monkeypatch, capsys):
    from kubedistill.cli import main

    monkeypatch.setenv("KUBEDISTILL_CACHE", str(tmp_path / "cache"))
    arc = _zip_dir(tiny_data.parent, tmp_path / "tiny.zip", "tiny")
    main(["data", "fetch", str(arc), str(tmp_path / "ds")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "ds" / "tiny" / "data.yaml")
    main(["data", "check", str(arc)])  # extracted into the cache first
    assert "train" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "cache" / "datasets").iterdir() if not p.name.startswith(".")][0].startswith(
        "tiny-"
    )
    with pytest.raises(SystemExit) as e:
        main(["data", "fetch", str(_tar_with(tmp_path / "bad.tar", _ti("../x"))), str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "path traversal" in err
