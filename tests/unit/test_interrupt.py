"""SIGTERM as Ctrl-C, and passing it on to child processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import typer

from kubedistill.core.interrupt import process_cpu_seconds, process_state, sigterm_as_interrupt


def test_sigterm_raises_keyboard_interrupt_then_handler_is_restored():
    called = []
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt(before=lambda: called.append(True)):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10**7):  # a signal is handled between bytecodes; this never finishes first
                pass
    assert called == [True]
    assert signal.getsignal(signal.SIGTERM) == before


HELPER = """
import json, subprocess, sys, time
from pathlib import Path
from kubedistill.core.interrupt import child_pids, descendant_pids, terminate_children
marker = Path(sys.argv[1])
code = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
sh = subprocess.Popen(["sh", "-ec", f'{sys.executable} -c "{code}"; echo after'])
deadline = time.monotonic() + 20
while not marker.exists() or not marker.read_text():
    assert time.monotonic() < deadline, "the grandchild did not start"
    time.sleep(0.05)
tree = {"sh": sh.pid, "grandchild": int(marker.read_text()), "children": child_pids(), "descendants": descendant_pids()}
terminate_children()
tree["sh_rc"] = sh.wait(timeout=20)
print(json.dumps(tree))
"""


def _gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z")  # "Z": exited, not yet reaped


def test_the_whole_tree_gets_sigterm(tmp_path):
    # Like kfp.local's step: a shell running python, and a shell that gets SIGTERM does not pass it on.
    # Run in a helper process of its own: here, pytest's other children (session servers) would get it too.
    out = subprocess.run(
        [sys.executable, "-c", HELPER, str(tmp_path / "grandchild.pid")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    tree = json.loads(out.stdout.strip().splitlines()[-1])
    assert tree["children"] == [tree["sh"]] and tree["descendants"] == [tree["sh"], tree["grandchild"]]
    assert tree["sh_rc"] != 0
    deadline = time.monotonic() + 20
    while not _gone(tree["grandchild"]):
        assert time.monotonic() < deadline, "the grandchild outlived the SIGTERM"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "raise_in_command,code,said",
    [
        (KeyboardInterrupt, 130, "interrupted; finished training epochs are kept in weights/last.pt"),
        (lambda: typer.Exit(3), 3, ""),  # e.g. `kubedistill deploy` when the release did not come up
        (None, None, ""),
    ],
)
def test_cli_exit_codes_survive_typer(monkeypatch, capsys, raise_in_command, code, said):
    """typer (standalone_mode=False) returns Exit codes and Ctrl-C as 130 instead of exiting; main must exit with them."""
    import kubedistill.cli as cli

    app = typer.Typer()

    @app.command()
    def go():
        if raise_in_command is not None:
            raise raise_in_command()

    monkeypatch.setattr(cli, "app", app)
    if code is None:
        cli.main([])
    else:
        with pytest.raises(SystemExit) as e:
            cli.main([])
        assert e.value.code == code
    assert said in capsys.readouterr().err


def test_process_cpu_seconds_counts_a_child_that_works_and_none_once_it_is_gone():
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(30)",
        ]
    )
    try:
        start = process_cpu_seconds(busy.pid)
        assert start is not None and start >= 0
        deadline = time.monotonic() + 20
        while (process_cpu_seconds(busy.pid) or 0) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 0.5 <= process_cpu_seconds(busy.pid) < 5  # the busy loop's 0.6 s, then sleep (no more CPU)
    finally:
        busy.kill()
        busy.wait()
    assert process_cpu_seconds(busy.pid) is None
