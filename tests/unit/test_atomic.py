"""Atomic writes: complete file or the old one, normal permissions, no temporary left behind."""

import os
import stat

import pytest

from kubedistill.core.atomic import atomic_path, atomic_write_text


def test_write_replace_and_permissions(tmp_path):
    p = tmp_path / "sub" / "f.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    mode = stat.S_IMODE(os.stat(p).st_mode)
    assert mode & 0o044 == 0o044  # readable by group and others (not mkstemp's 0600), umask permitting
    assert [f.name for f in p.parent.iterdir()] == ["f.txt"]


def test_failure_keeps_old_file(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["f.txt"]
