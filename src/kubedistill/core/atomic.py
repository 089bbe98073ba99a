"""Atomic file writes: readers see the old file or the complete new one, never a partial write.

Write to a temporary file in the target's folder, fsync, give it normal permissions (0644 less the
umask, not mkstemp's 0600), then rename it over the target. On any error the temporary file is
removed and the target is untouched.
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    """The process umask, read from /proc where possible (os.umask is a process-wide toggle)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """with atomic_path(p) as tmp: write the complete file to tmp (any writer); renamed over p on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        _fault_point(path, "before-rename")
        os.replace(tmp_path, path)
        _fault_point(path, "after-rename")
    finally:
        tmp_path.unlink(missing_ok=True)


_FAULT_ENV = "KUBEDISTILL_FAULT"
_fault_counts: dict[tuple[str, str], int] = {}


def _fault_point(path: Path, point: str) -> None:
    """The crash tests' hook (tests/integration/test_crash_consistency.py): KUBEDISTILL_FAULT=NAME:POINT:N kills
    this process (SIGKILL, as the OOM killer or `kill -9` would) at the Nth atomic write of a file called NAME,
    just before or just after its rename. Unset, it costs one environment lookup per write."""
    spec = os.environ.get(_FAULT_ENV)
    if not spec:
        return
    name, where, nth = spec.rsplit(":", 2)
    if name == path.name and where == point:
        key = (name, point)
        _fault_counts[key] = _fault_counts.get(key, 0) + 1
        if _fault_counts[key] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def none_if_nan(value: Any) -> Any:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def json_safe(obj: Any) -> Any:
    """Copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts.

    numpy scalars/arrays become Python numbers/lists, nan and inf become ``None``, tuples become
    lists, other non-JSON objects (paths, ...) become ``str``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return none_if_nan(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return str(obj)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as json to ``path`` atomically (temp file in the same folder, then os.replace).

    Parent folders are created. numpy values are converted and nan/inf are written as ``null``
    (see :func:`json_safe`), so the file is always strict JSON. Readers see
    either the old file or the complete new one, never a partial write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(json_safe(obj), indent=indent, allow_nan=False)
    atomic_write_text(path, text + "\n")
    return path
