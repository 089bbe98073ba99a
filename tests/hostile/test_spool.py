"""Hostile tracking spools (issue 17): a spool cut by a kill at every byte offset, damaged lines anywhere, a run
file that is not JSON. `kubedistill mlflow sync` must send every whole record in order, skip the rest with a
warning, and never end in a traceback."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("mlflow")

from kubedistill.track.logger import SPOOL, sync  # noqa: E402
from tests.unit.test_track_logger import FlakyClient  # noqa: E402


def _records() -> list[dict]:
    ops = [{"op": "create_run", "experiment": "", "run_name": "a", "tags": {"t": "ü"}}]
    ops += [{"op": "log_batch", "metrics": [["loss", 1.0 / (i + 1), 0, i]], "params": [], "tags": []} for i in range(4)]
    return ops + [{"op": "end", "status": "FINISHED"}]


def _sync(tmp_path, monkeypatch, text: bytes) -> tuple[dict, FlakyClient, list[str]]:
    for f in tmp_path.iterdir():
        f.unlink()
    (tmp_path / SPOOL).write_bytes(text)
    fake = FlakyClient()
    monkeypatch.setattr("kubedistill.track.logger.client", lambda uri: fake)
    logs: list[str] = []
    return sync(tmp_path, "http://fake", log=logs.append), fake, logs


def test_a_spool_cut_at_every_offset_sends_every_whole_record(tmp_path, monkeypatch, hostile):
    ops = _records()
    text = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in ops).encode()
    done = [i for i, b in enumerate(text) if b == ord("\n")]  # a record is whole once its JSON ends
    for cut in range(1, len(text) + 1):
        res, fake, logs = _sync(tmp_path, monkeypatch, text[:cut])
        whole = sum(1 for e in done if e <= cut)
        rest = text[done[whole - 1] if whole else 0 : cut].strip(b"\n")
        assert res["ok"] and res["sent"] == whole, (cut, res)
        assert [s[0] for s in fake.sent] == [o["op"] for o in ops[:whole]], cut
        assert any("skipped 1 unreadable" in m for m in logs) == bool(rest), (cut, logs)
        hostile.record("tracking spools", f"cut at byte {cut}", "refused" if rest else "survived")


def test_damaged_lines_anywhere_are_skipped_and_the_rest_sent(tmp_path, monkeypatch, hostile):
    ops = _records()
    lines = [json.dumps(o) for o in ops]
    rng = random.Random(0)
    junk = ["", "{", "null", "[]", '{"no_op": 1}', "\x00\x00", "garbage", '{"op": "log_batch", "metrics": ', "\ufffd"]
    for k, bad in enumerate(junk):
        for at in (1, 3, len(lines)):
            damaged = [*lines[:at], bad, *lines[at:]]
            res, fake, logs = _sync(tmp_path, monkeypatch, ("\n".join(damaged) + "\n").encode())
            assert res["ok"] and res["sent"] == len(ops), (bad, at, res)
            assert [s[0] for s in fake.sent] == [o["op"] for o in ops]
            hostile.record("tracking spools", f"junk line {k} at {at}", "refused" if bad.strip() else "survived")
    for _ in range(10):  # random bytes flipped
        raw = bytearray(("\n".join(lines) + "\n").encode())
        pos = rng.randrange(len(raw))
        raw[pos] ^= 0xFF
        res, fake, logs = _sync(tmp_path, monkeypatch, bytes(raw))
        assert res["sent"] >= len(ops) - 1, res
        hostile.record("tracking spools", f"byte {pos} flipped", "survived" if res["sent"] == len(ops) else "refused")


def test_a_run_file_that_is_not_json_is_not_a_traceback(tmp_path, monkeypatch, hostile):
    from kubedistill.core.errors import UserError

    for k, text in enumerate(["", "{", "[1]", "null", '{"run_id": 5}', "\x00"]):
        for f in tmp_path.iterdir():
            f.unlink()
        (tmp_path / "mlflow.json").write_text(text)
        try:
            sync(tmp_path, "http://fake")
            hostile.record("tracking spools", f"run file {k}", "survived")
        except UserError as e:
            assert "\n" not in str(e)
            hostile.record("tracking spools", f"run file {k}", "refused")
