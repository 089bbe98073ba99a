"""Hostile image folders (issue 17): link loops, links to ancestors and out of the split, FIFOs, sockets and
devices named .jpg, a file larger than the byte cap, a header claiming more pixels than the cap. Each case is
added to a clean split, alone and all together; `kubedistill data check` must end (no hang), count every real
image once, and say what it left out or refused."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from kubedistill.data.check import check_dataset
from kubedistill.data.dataset_yaml import load_data_yaml
from kubedistill.data.images import IMG_FORMATS

N_REAL = 4


def _split(root: Path) -> Path:
    img_dir, lab_dir = root / "images" / "train", root / "labels" / "train"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    for i in range(N_REAL):
        cv2.imwrite(str(img_dir / f"{i}.png"), np.full((32, 32, 3), 40 * i, np.uint8))
        (lab_dir / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [a]\n")
    return img_dir


def _png_header(w: int, h: int) -> bytes:
    """A valid PNG signature and IHDR claiming w x h, with a tiny (undecodable) body: cheap to make."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _self_loop(d: Path, tmp: Path):
    os.symlink(".", d / "loop")
    return "a folder link back to an enclosing folder", None


def _two_loops(d: Path, tmp: Path):
    (d / "a").mkdir()
    (d / "b").mkdir()
    os.symlink("../b", d / "a" / "to_b")
    os.symlink("../a", d / "b" / "to_a")
    os.symlink("../..", d / "a" / "up")
    return "a folder link back to an enclosing folder", None


def _link_out(d: Path, tmp: Path):
    other = tmp / "elsewhere"
    other.mkdir()
    cv2.imwrite(str(other / "x.png"), np.zeros((8, 8, 3), np.uint8))
    os.symlink(other, d / "out")
    return "a folder link out of", None


def _fifo(d: Path, tmp: Path):
    os.mkfifo(d / "pipe.jpg")
    return "pipe.jpg (not a regular file)", None


def _dev_zero(d: Path, tmp: Path):
    os.symlink("/dev/zero", d / "zero.jpg")
    return "zero.jpg (not a regular file)", None


def _socket(d: Path, tmp: Path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "s.jpg"))
    s.close()
    return "s.jpg (not a regular file)", None


def _duplicate_link(d: Path, tmp: Path):
    os.symlink("0.png", d / "same.png")  # the same file under two names: counted once
    return None, None


def _too_many_bytes(d: Path, tmp: Path):
    with open(d / "huge.png", "wb") as f:
        f.truncate(300 * 2**20)  # sparse: 300 MB without the disk
    return None, "more than the limit of 256 MB"


def _too_many_pixels(d: Path, tmp: Path):
    (d / "bomb.png").write_bytes(_png_header(20_000, 20_000))
    return None, "400,000,000 pixels, more than 100,000,000"


CASES = [
    _self_loop,
    _two_loops,
    _link_out,
    _fifo,
    _dev_zero,
    _socket,
    _duplicate_link,
    _too_many_bytes,
    _too_many_pixels,
]


@pytest.mark.timeout(60)  # a scan that hangs fails here, not after the suite's 10 minutes
@pytest.mark.parametrize("cases", [[c] for c in CASES] + [CASES], ids=[c.__name__ for c in CASES] + ["all"])
def test_hostile_folder_entries(cases, tmp_path, caplog, hostile):
    root = tmp_path / "ds"
    img_dir = _split(root)
    left_out, refused = [], []
    for case in cases:
        lo, rf = case(img_dir, tmp_path)
        left_out += [lo] if lo else []
        refused += [rf] if rf else []
    spec = load_data_yaml(root / "data.yaml")
    names = sorted(p.name for p in spec.splits["train"])
    assert len([n for n in names if n in {f"{i}.png" for i in range(N_REAL)} | {"same.png"}]) == N_REAL
    report = check_dataset(spec, splits=("train",), workers=1)
    train = report.counts["train"]
    assert train.usable == N_REAL, report.summary()
    problems = " | ".join(p.message for p in report.problems)
    for text in refused:
        assert text in problems, problems
    for text in left_out:
        assert text in caplog.text, caplog.text
    if len(cases) == 1:
        hostile.record("image folders", cases[0].__name__.strip("_"), "refused" if left_out or refused else "survived")


def test_data_check_cli_ends_on_a_hostile_folder(tmp_path):
    root = tmp_path / "ds"
    img_dir = _split(root)
    for case in CASES:
        case(img_dir, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "kubedistill", "data", "check", str(root / "data.yaml")],
        capture_output=True,
        text=True,
        timeout=60,  # the FIFO and /dev/zero hung this forever before
    )
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "DecompressionBomb" not in out, out
    assert f"train: {N_REAL} of {N_REAL + 2} images usable" in out, out
    assert proc.returncode == 0
    # too little usable: exit 2, as `data check --help` says (it said 1)
    strict = [sys.executable, "-m", "kubedistill", "data", "check", str(root / "data.yaml"), "--min-usable", "1.0"]
    proc = subprocess.run(strict, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: Only 4 of 6"), proc.stderr
    helptext = subprocess.run([*strict[:5], "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "exit 2 when too little is usable" in " ".join(helptext.split())


def _png_bytes() -> bytes:
    ok, buf = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (24, 24, 3), np.uint8))
    return buf.tobytes()


def _image_variants():
    png = _png_bytes()
    ok, jpg = cv2.imencode(".jpg", np.full((24, 24, 3), 90, np.uint8))
    jpg = jpg.tobytes()
    yield "empty png", "x.png", b""
    yield "text named .jpg", "x.jpg", b"hello, not an image\n"
    yield "png named .jpg", "x.jpg", png
    yield "unsupported suffix", "x.gifv", png
    for frac in (0.1, 0.3, 0.5, 0.7, 0.9, 0.99):
        yield f"png cut at {frac:.0%}", "x.png", png[: int(len(png) * frac)]
        yield f"jpg cut at {frac:.0%}", "x.jpg", jpg[: int(len(jpg) * frac)]
    for k in range(12):
        pos = 8 + k * (len(png) - 9) // 11
        yield f"png byte {pos} flipped", "x.png", png[:pos] + bytes([png[pos] ^ 0xFF]) + png[pos + 1 :]
    yield "zero-size png header", "x.png", _png_header(0, 0)
    yield "1 x 100000 png header", "x.png", _png_header(1, 100_000)


def _label_variants():
    yield "no label file", None
    yield "empty label file", ""
    fields = {
        "class": ["0", "1", "-1", "0.5", "nan", "x", "1e9"],
        "coord": ["0.5", "nan", "inf", "-3", "640", "1e308", "?"],
    }
    for c in fields["class"]:
        yield f"class {c}", f"{c} 0.5 0.5 0.2 0.2\n"
    for v in fields["coord"]:
        for col in range(4):
            vals = ["0.5", "0.5", "0.2", "0.2"]
            vals[col] = v
            yield f"coordinate {col + 1} = {v}", "0 " + " ".join(vals) + "\n"
    for n in (1, 4, 6, 7, 9):
        yield f"{n} columns", " ".join(["0"] + ["0.5"] * (n - 1)) + "\n"
    yield "same box twice", "0 0.5 0.5 0.2 0.2\n" * 2
    yield "zero-area box", "0 0.5 0.5 0 0.2\n"
    yield "box reaching out", "0 0.95 0.5 0.3 0.2\n"
    yield "binary garbage", bytes(range(256)) * 4
    yield "UTF-8 with BOM", "\ufeff0 0.5 0.5 0.2 0.2\n"
    yield "a million boxes", "0 0.5 0.5 0.2 0.2\n" * 1_000_000


@pytest.mark.timeout(120)
def test_hostile_file_contents_are_refused_by_name_or_read_right(tmp_path, hostile):
    """Generated image and label contents: each one extra sample `x` beside the four good ones. It is either
    usable with labels that are finite and inside the image, or refused by a problem naming its file; the four
    good images stay usable either way."""
    from kubedistill.data.dataset_yaml import label_path

    cases = [(f"image: {c}", name, data, "0 0.5 0.5 0.2 0.2\n") for c, name, data in _image_variants()]
    cases += [(f"label: {c}", "x.png", _png_bytes(), text) for c, text in _label_variants()]
    for k, (case, name, data, label) in enumerate(cases):
        root = tmp_path / f"d{k}"
        img_dir = _split(root)
        (img_dir / name).write_bytes(data)
        if label is not None:
            lf = label_path(img_dir / name)
            lf.write_bytes(label if isinstance(label, bytes) else label.encode())
        spec = load_data_yaml(root / "data.yaml")
        report = check_dataset(spec, splits=("train",), workers=1)
        usable = {smp.im_file.name: smp for smp in report.samples.get("train", [])}
        errors = [p for p in report.errors if Path(p.file).stem == "x"]
        train = report.counts["train"]
        if Path(name).suffix not in IMG_FORMATS:  # not an image: not listed, as in Ultralytics
            assert train.listed == train.usable == N_REAL, (case, report.summary())
            hostile.record("image folders", case, "survived")
        elif errors:
            assert train.usable == N_REAL, (case, report.summary())
            assert all(p.message and "\n" not in p.message for p in errors), case
            hostile.record("image folders", case, "refused")
        else:
            assert train.usable == N_REAL + 1, (case, report.summary())
            labels = usable[name].labels
            assert np.isfinite(labels).all() and ((labels[:, 1:] >= 0) & (labels[:, 1:] <= 1)).all(), case
            hostile.record("image folders", case, "survived")
