"""SIGTERM handled like Ctrl-C, so a stopped run ends cleanly instead of vanishing.

Kubernetes stops a pod, and a user stops a background job, with SIGTERM. Python's default is to die on
the spot: no `finally`, an MLflow run left RUNNING, child processes left behind. Inside
`sigterm_as_interrupt()` SIGTERM raises KeyboardInterrupt in the main thread instead, so the same
clean-up as for Ctrl-C runs (the trainer marks its MLflow run KILLED; finished epochs are already in
last.pt). `terminate_children()` passes the signal on to the processes below this one (kfp.local's
step subprocess), which would otherwise run on alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


def _fields(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after "(comm)": state, ppid, ... (field 3 on); None when the process (or /proc) is not there."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _stat(pid: int | str) -> tuple[str, int] | None:
    """(state, parent pid); None when the process (or /proc) is not there."""
    fields = _fields(pid)
    try:
        return (fields[0], int(fields[1])) if fields else None
    except (IndexError, ValueError):
        return None


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) the process has used so far; None when it is gone or there is no /proc."""
    fields = _fields(pid)
    try:
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else None  # utime, stime
    except (IndexError, ValueError, OSError):
        return None


def process_state(pid: int) -> str | None:
    """The process's state letter ("R", "S", "Z" for exited but not yet reaped, ...); None once it is gone."""
    st = _stat(pid)
    return st[0] if st else None


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process, read once from /proc (empty where /proc is missing)."""
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        st = _stat(d.name)
        if st is not None:
            out[int(d.name)] = st[1]
    return out


def child_pids(pid: int | None = None) -> list[int]:
    """Direct children of `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    return [p for p, parent in _parents().items() if parent == pid]


def descendant_pids(pid: int | None = None) -> list[int]:
    """Children, their children and so on, parents first (one pass over /proc)."""
    parents = _parents()
    out, todo = [], [os.getpid() if pid is None else pid]
    while todo:
        current = todo.pop(0)
        kids = [p for p, parent in parents.items() if parent == current]
        out.extend(kids)
        todo.extend(kids)
    return out


def terminate_children() -> None:
    """SIGTERM to every process below this one: kfp.local's step is `sh -ec ...` running python, and a
    shell that gets SIGTERM does not pass it on."""
    for pid in descendant_pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)


@contextlib.contextmanager
def sigterm_as_interrupt(before: Callable[[], None] | None = None) -> Iterator[None]:
    """Within the block, SIGTERM calls `before` (if given) and raises KeyboardInterrupt. Main thread only:
    elsewhere (signals cannot be set there) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if before is not None:
            before()
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
