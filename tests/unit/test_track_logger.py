"""RunLogger: retries with backoff, spools when the server stays down, replays in order when it is back;
the promotion decision never promotes a worse model."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("mlflow")

from kubedistill.release.promote import decide  # noqa: E402
from kubedistill.track.logger import SPOOL, RunLogger, flatten, is_number, sync  # noqa: E402


class FlakyClient:
    """Stands in for MlflowClient: fails while `down`, records what it was sent."""

    def __init__(self, fail_first: int = 0):
        self.fail_first = fail_first
        self.down = False
        self.calls = 0
        self.sent: list[tuple] = []

    def _maybe_fail(self):
        self.calls += 1
        if self.down or self.calls <= self.fail_first:
            raise ConnectionError("connection refused")

    def get_experiment_by_name(self, name):
        self._maybe_fail()
        return type("E", (), {"experiment_id": "7", "lifecycle_stage": "active"})()

    def create_run(self, exp, run_name=None, tags=None):
        self._maybe_fail()
        self.sent.append(("create_run", exp, run_name))
        info = type("I", (), {"run_id": "r1", "experiment_id": exp})()
        return type("R", (), {"info": info})()

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._maybe_fail()
        self.sent.append(
            ("log_batch", run_id, [(m.key, m.value, m.step) for m in metrics], [(p.key, p.value) for p in params])
        )

    def set_terminated(self, run_id, status):
        self._maybe_fail()
        self.sent.append(("end", run_id, status))


def _logger(tmp_path, fake, **kw):
    lg = RunLogger(tmp_path, "http://fake", background=False, **kw)  # no worker thread, nothing contacted
    lg.client = fake
    return lg


def test_transient_failures_are_retried_with_backoff(tmp_path):
    fake = FlakyClient(fail_first=2)
    lg = _logger(tmp_path, fake, retries=4, backoff=0.01)
    t0 = time.monotonic()
    assert lg._send_with_retry({"op": "create_run", "experiment": "", "run_name": "a", "tags": {}}, lg.retries)
    assert time.monotonic() - t0 >= 0.01 + 0.02  # two sleeps: 0.01, 0.02
    assert lg.run_id == "r1" and lg.failures == 2 and fake.sent[0] == ("create_run", "7", "a")
    assert json.loads((tmp_path / "mlflow.json").read_text())["run_id"] == "r1"


def test_down_server_spools_then_sync_replays_in_order(tmp_path, monkeypatch):
    fake = FlakyClient()
    fake.down = True
    logs = []
    lg = _logger(tmp_path, fake, retries=2, backoff=0.0, probe_s=0.0, log=logs.append)
    ops = [{"op": "create_run", "experiment": "", "run_name": "a", "tags": {}}]
    ops += [{"op": "log_batch", "metrics": [["loss", 1.0 / (i + 1), 0, i]]} for i in range(3)]
    ops += [{"op": "end", "status": "FINISHED"}]
    for op in ops:
        lg._handle(op)
    assert lg.pending() == 5 and fake.sent == []
    assert sum("logging failed" in m for m in logs) == 1  # said once, not per record
    fake.down = False
    monkeypatch.setattr("kubedistill.track.logger.client", lambda uri: fake)
    res = sync(tmp_path, "http://fake", log=logs.append)  # what `kubedistill mlflow sync` runs
    assert res == {"sent": 5, "pending": 0, "run_id": "r1", "ok": True} and not (tmp_path / SPOOL).exists()
    kinds = [s[0] for s in fake.sent]
    assert kinds == ["create_run", "log_batch", "log_batch", "log_batch", "end"]
    assert [s[2][0][2] for s in fake.sent[1:4]] == [0, 1, 2]


def test_partial_replay_keeps_the_rest(tmp_path):
    fake = FlakyClient()
    fake.down = True
    lg = _logger(tmp_path, fake, retries=1, backoff=0.0, probe_s=0.0)
    lg.run_id = "r1"
    for i in range(4):
        lg._handle({"op": "log_batch", "metrics": [["m", float(i), 0, i]]})
    fake.down = False
    fake.fail_first = fake.calls + 1  # the server is back but drops the next request
    assert not lg._replay()  # one try per record while probing: the first fails, nothing is lost
    assert lg.pending() == 4
    assert lg._replay() and lg.pending() == 0
    assert [s[2][0][1] for s in fake.sent] == [0.0, 1.0, 2.0, 3.0]


def test_background_logger_never_blocks_and_close_spools(tmp_path):
    fake = FlakyClient()
    fake.down = True
    lg = _logger(tmp_path, fake, retries=3, backoff=0.2, probe_s=60.0)
    # start the worker now that the fake is in place
    import threading

    lg._thread = threading.Thread(target=lg._worker, daemon=True)
    lg._thread.start()
    t0 = time.monotonic()
    for step in range(50):
        lg.log_metrics({"loss": 1.0, "nan": float("nan"), "none": None}, step)
    assert time.monotonic() - t0 < 0.5  # logging calls return at once
    pending = lg.close(timeout=5.0)
    assert pending == 50
    first = json.loads((tmp_path / SPOOL).read_text().splitlines()[0])
    assert first["metrics"] == [["loss", 1.0, first["metrics"][0][2], 0]]  # NaN and None are not sent


def test_flatten_and_numbers():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}
    assert [is_number(v) for v in (1, 2.5, "3", True, None, math.nan, math.inf, "x")] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
    ]


@given(
    cand=st.one_of(st.floats(-1, 2), st.just(math.nan)),
    champ=st.one_of(st.none(), st.floats(0, 1)),
    delta=st.floats(0, 0.5),
)
def test_a_worse_model_is_never_promoted(cand, champ, delta):
    promoted, reason = decide(cand, champ, delta)
    if promoted and champ is not None:
        assert cand >= champ + delta
    if math.isnan(cand):
        assert not promoted
    if champ is None and not math.isnan(cand):
        assert promoted and reason == "no champion yet"


def test_sync_skips_a_record_cut_by_a_kill_and_sends_the_rest(tmp_path, monkeypatch):
    """A kill while a record was appended leaves half a line; sync ended in a traceback and sent nothing."""
    fake = FlakyClient()
    lines = [{"op": "create_run", "experiment": "", "run_name": "a", "tags": {}}]
    lines += [{"op": "log_batch", "metrics": [["loss", 1.0, 0, i]]} for i in range(3)]
    text = "".join(json.dumps(op) + "\n" for op in lines)
    cut = json.dumps({"op": "end", "status": "FINISHED"})[:17]  # no newline: the write never finished
    (tmp_path / SPOOL).write_text(text + cut)
    monkeypatch.setattr("kubedistill.track.logger.client", lambda uri: fake)
    logs = []
    res = sync(tmp_path, "http://fake", log=logs.append)
    assert res == {"sent": 4, "pending": 0, "run_id": "r1", "ok": True}
    assert [s[0] for s in fake.sent] == ["create_run", "log_batch", "log_batch", "log_batch"]
    assert any("skipped 1 unreadable record(s)" in m and "the last line, cut short" in m for m in logs), logs


def test_sync_to_another_server_than_the_runs_says_so(tmp_path):
    from kubedistill.core.errors import UserError

    (tmp_path / "mlflow.json").write_text(json.dumps({"run_id": "abc", "tracking_uri": "http://one:5000"}))
    (tmp_path / SPOOL).write_text(json.dumps({"op": "end", "status": "FINISHED"}) + "\n")
    with pytest.raises(UserError, match="Run abc .* was created on http://one:5000, not on http://two:5000"):
        sync(tmp_path, "http://two:5000")
