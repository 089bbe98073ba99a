"""Hostile dataset archives (issue 17): corrupt or cut archives, decompression bombs, member names the OS
rejects. Generated, not a fixed list: every byte position class of each compressed format, several cut lengths.
Each case ends in a one-line DataError or an extracted tree equal to the original; nothing lost silently, and
nothing written outside the target folder."""

from __future__ import annotations

import io
import os
import random
import tarfile
import zipfile
from pathlib import Path

import pytest

from kubedistill.core.errors import DataError
from kubedistill.data.fetch import ArchiveLimits, extract_archive

FORMATS = {"tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz", "zip": None}


def _tree() -> dict[str, bytes]:
    rng = random.Random(0)
    files = {"ds/data.yaml": b"path: .\ntrain: images/train\nval: images/val\nnames: [a]\n"}
    for i in range(6):
        files[f"ds/images/train/{i}.jpg"] = bytes(rng.getrandbits(8) for _ in range(3000))
        files[f"ds/labels/train/{i}.txt"] = f"0 0.5 0.5 0.{i + 1} 0.2\n".encode() * 20
    return files


def _pack(files: dict[str, bytes], fmt: str, path: Path) -> Path:
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in files.items():
                z.writestr(name, data)
    else:
        with tarfile.open(path, FORMATS[fmt]) as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return path


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _outcome(archive: Path, out: Path, want: dict[str, bytes] | None, hostile, case: str, limits=None) -> str:
    """'refused' (a one-line DataError) or 'survived' (the tree extracted exactly as `want`); anything else, or
    a file written beside `out` in its parent folder, fails the test."""
    out.parent.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(out.parent))
    try:
        extract_archive(archive, out, limits=limits)
        outcome = "survived"
    except DataError as e:
        assert "\n" not in str(e) and str(e).startswith(("Archive '", "'")), str(e)
        outcome = "refused"
    assert set(os.listdir(out.parent)) - before <= {out.name}, f"{case}: wrote outside {out}"
    if outcome == "survived":
        got = _read_tree(out)
        assert got == want, f"{archive.name}: extracted without an error but the files differ (lost silently)"
    return hostile.record("archives", case, outcome)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_corrupt_and_cut_archives_are_refused_never_extracted_wrong(fmt, tmp_path, hostile):
    files = _tree()
    good = _pack(files, fmt, tmp_path / f"good.{fmt}")
    raw = good.read_bytes()
    assert _outcome(good, tmp_path / "ok" / "out", files, hostile, f"{fmt} intact") == "survived"
    outcomes = []
    # one flipped byte at 40 positions spread over the whole file, header and trailer included
    for k, pos in enumerate(sorted({int(i * (len(raw) - 1) / 39) for i in range(40)})):
        bad = tmp_path / f"flip{k}.{fmt}"
        bad.write_bytes(raw[:pos] + bytes([raw[pos] ^ 0xFF]) + raw[pos + 1 :])
        outcomes.append(_outcome(bad, tmp_path / f"o{k}" / "out", files, hostile, f"{fmt} byte {pos} flipped"))
    # cut short at 10 lengths
    for k, n in enumerate(int(len(raw) * f) for f in (0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99)):
        cut = tmp_path / f"cut{k}.{fmt}"
        cut.write_bytes(raw[:n])
        case = f"{fmt} cut at {n} of {len(raw)} bytes"
        assert _outcome(cut, tmp_path / f"c{k}" / "out", files, hostile, case) == "refused", case
    # most flips change data and must be refused; a flip in a field nothing reads (a gzip mtime, a zip comment
    # length slack) may leave the files intact, and that is fine: what must never happen is a wrong tree
    assert outcomes.count("refused") >= 30, outcomes


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_decompression_bombs_stop_at_the_limits(fmt, tmp_path, hostile):
    zeros = {"ds/data.yaml": b"names: [a]\n", "ds/images/big.bin": bytes(30_000_000)}  # 30 MB of zeros: ~30 KB packed
    bomb = _pack(zeros, fmt, tmp_path / f"bomb.{fmt}")
    assert bomb.stat().st_size < 200_000
    with pytest.raises(
        DataError, match=r"unpacks to \d+x its size .* a decompression bomb\?.*KUBEDISTILL_ARCHIVE_MAX_RATIO"
    ):
        extract_archive(bomb, tmp_path / "out")
    assert not (tmp_path / "out" / "ds" / "images" / "big.bin").exists()  # refused before it was written
    limits = ArchiveLimits()
    limits.max_ratio, limits.max_bytes = 10_000, 10_000_000
    with pytest.raises(DataError, match="unpacks to more than 0.01 GB .*KUBEDISTILL_ARCHIVE_MAX_GB"):
        extract_archive(bomb, tmp_path / "out2", limits=limits)
    many = _pack({f"ds/{i}.txt": b"x" for i in range(50)}, fmt, tmp_path / f"many.{fmt}")
    limits = ArchiveLimits()
    limits.max_members = 20
    with pytest.raises(DataError, match="more than 20 members .*KUBEDISTILL_ARCHIVE_MAX_MEMBERS"):
        extract_archive(many, tmp_path / "out3", limits=limits)
    for case in ("ratio", "size", "members"):
        hostile.record("archives", f"{fmt} bomb past the {case} limit", "refused")


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("KUBEDISTILL_ARCHIVE_MAX_GB", "1.5")
    monkeypatch.setenv("KUBEDISTILL_ARCHIVE_MAX_MEMBERS", "7")
    monkeypatch.setenv("KUBEDISTILL_ARCHIVE_MAX_RATIO", "3")
    lim = ArchiveLimits()
    assert (lim.max_bytes, lim.max_members, lim.max_ratio) == (1_500_000_000, 7, 3.0)


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
@pytest.mark.parametrize(
    "case,files,expect",
    [
        ("long name", {"ds/" + "n" * 300 + ".jpg": b"x"}, "name too long"),
        ("file then folder", {"ds/a": b"x", "ds/a/b.jpg": b"y"}, "clashes with a file or folder"),
    ],
)
def test_members_the_os_rejects_are_one_line_refusals(fmt, case, files, expect, tmp_path, hostile):
    archive = _pack(files, fmt, tmp_path / f"x.{fmt}")
    with pytest.raises(DataError, match=expect):
        extract_archive(archive, tmp_path / "out")
    hostile.record("archives", f"{fmt} {case}", "refused")


def _tar_member(t: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"x"):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


# members that try to reach outside the target: generated from names x kinds, every one must stay inside
_ESCAPES = ["../x", "../../x", "/tmp/kubedistill-hostile-x", "ds/../../x", "ds/./../../x", "./../x"]


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_members_that_reach_outside_the_target_never_write_there(fmt, tmp_path, hostile):
    cases: list[tuple[str, list]] = [(f"file {n}", [("file", n, "")]) for n in _ESCAPES]
    if fmt != "zip":
        for target in ("/etc", "../..", "/etc/passwd", "ds/../../.."):
            cases.append((f"symlink to {target}", [("sym", "ds/l", target), ("file", "ds/l/p", "")]))
            cases.append((f"hard link to {target}", [("hard", "ds/h", target)]))
        cases += [
            ("character device", [("dev", "ds/null.jpg", "")]),
            ("fifo", [("fifo", "ds/p.jpg", "")]),
            (
                "symlink then file through it",
                [("sym", "ds/a", "."), ("sym", "ds/a/b", "../../.."), ("file", "ds/a/b/x", "")],
            ),
        ]
    for k, (case, members) in enumerate(cases):
        archive = tmp_path / f"esc{k}.{fmt}"
        if fmt == "zip":
            with zipfile.ZipFile(archive, "w") as z:
                z.writestr("ds/data.yaml", b"names: [a]\n")
                for _kind, name, _ in members:
                    z.writestr(zipfile.ZipInfo(name), b"x")
        else:
            kinds = {"file": tarfile.REGTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
                     "dev": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}  # fmt: skip
            with tarfile.open(archive, FORMATS[fmt]) as t:
                _tar_member(t, "ds/data.yaml", data=b"names: [a]\n")
                for kind, name, link in members:
                    _tar_member(t, name, kinds[kind], link)
        outcome = _outcome(archive, tmp_path / f"e{k}" / "out", None, hostile, f"{fmt} {case}", None)
        assert outcome == "refused", case
        assert not Path("/tmp/kubedistill-hostile-x").exists()


def test_encrypted_zip_member_is_refused(tmp_path, hostile):
    path = _pack({"ds/data.yaml": b"names: [a]\n"}, "zip", tmp_path / "enc.zip")
    raw = bytearray(path.read_bytes())
    # set bit 0 of the general-purpose flags ("encrypted", what a password-protected zip says of its members)
    # in the local header and in the central directory entry
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        raw[raw.index(sig) + off] |= 0x1
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="member 'ds/data.yaml' is encrypted"):
        extract_archive(path, tmp_path / "out")
    assert os.listdir(tmp_path / "out") in ([], ["ds"])
    hostile.record("archives", "zip encrypted member", "refused")


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf"])
def test_a_bad_limit_in_the_environment_is_a_one_line_error(value, monkeypatch, tmp_path):
    from kubedistill.core.errors import ConfigError
    from kubedistill.data.images import read_regular

    monkeypatch.setenv("KUBEDISTILL_ARCHIVE_MAX_RATIO", value)
    with pytest.raises(ConfigError, match=f"KUBEDISTILL_ARCHIVE_MAX_RATIO='{value}' is not a positive number"):
        ArchiveLimits()
    monkeypatch.setenv("KUBEDISTILL_MAX_IMAGE_MB", value)
    (tmp_path / "a.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="KUBEDISTILL_MAX_IMAGE_MB"):
        read_regular(tmp_path / "a.jpg")


def test_image_limits_come_from_the_environment(monkeypatch, tmp_path):
    from kubedistill.data.images import ImageReadError, read_regular

    (tmp_path / "a.jpg").write_bytes(b"x" * 3 * 2**20)
    assert len(read_regular(tmp_path / "a.jpg")) == 3 * 2**20
    monkeypatch.setenv("KUBEDISTILL_MAX_IMAGE_MB", "2")
    with pytest.raises(ImageReadError, match="is 3 MB, more than the limit of 2 MB"):
        read_regular(tmp_path / "a.jpg")
