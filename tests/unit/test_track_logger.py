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
    lg._probe = lambda: not fake.down  # the /health probe sees what the fake client sees
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


class SilentServer:
    """A TCP server on loopback that accepts connections and never answers (all paths), or answers only
    `/health` (a server whose API hangs behind a live front)."""

    def __init__(self, health: bool):
        import socket
        import threading

        self.health, self.conns = health, []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            first = conn.recv(65536).split(b"\r\n", 1)[0]
            if self.health and b" /health " in first:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
                conn.close()
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.mark.parametrize("health", [False, True], ids=["silent", "api-hangs"])
def test_a_server_that_never_answers_costs_the_timeout_once(tmp_path, monkeypatch, health):
    """Issue 17: a server that took connections and never answered made a 25 s training take 385 s (4 tries of
    MLflow's 3 attempts of 30 s each, and close() waited on the stuck call). Now the end of training waits at
    most the request timeout once, every record is spooled in order, and sync sends them all later."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    server = SilentServer(health)
    logs = []
    try:
        t0 = time.monotonic()
        lg = RunLogger(tmp_path, server.uri, run_name="a", log=logs.append)  # the real MlflowClient
        assert lg.timeout == 1.0
        for step in range(5):
            lg.log_metrics({"loss": 1.0 / (step + 1)}, step)
            time.sleep(0.1)
        lg.end()
        t_close = time.monotonic()
        assert lg.close(timeout=120) == 7
        assert time.monotonic() - t_close < 1.0 + 1.0, logs  # at most the timeout, once
        assert time.monotonic() - t0 < 1.0 + 1.0 + 0.5 + 1.0, logs
    finally:
        server.close()
    ops = [json.loads(line) for line in (tmp_path / SPOOL).read_text().splitlines()]
    assert [o["op"] for o in ops] == ["create_run"] + ["log_batch"] * 5 + ["end"]
    assert [o["metrics"][0][3] for o in ops[1:6]] == [0, 1, 2, 3, 4]
    assert any("within 1 s" in m for m in logs), logs
    fake = FlakyClient()
    monkeypatch.setattr("kubedistill.track.logger.client", lambda uri: fake)
    assert sync(tmp_path, server.uri, log=logs.append)["sent"] == 7
    assert [s[0] for s in fake.sent] == ["create_run"] + ["log_batch"] * 5 + ["end"]


def test_an_answer_after_close_gave_up_never_makes_a_second_run(tmp_path, monkeypatch):
    """close() spools the call it stopped waiting for; when that call answers later (the run was created after
    all), the run id it wrote is used and sync does not create the run again."""
    import threading

    gate = threading.Event()

    class SlowCreate(FlakyClient):
        def create_run(self, exp, run_name=None, tags=None):
            gate.wait(10)
            return super().create_run(exp, run_name, tags)

    fake = SlowCreate()
    logs = []
    lg = _logger(tmp_path, fake, timeout=0.2, log=logs.append)
    lg._thread = threading.Thread(target=lg._worker, daemon=True)
    lg._thread.start()
    lg._put({"op": "create_run", "experiment": "", "run_name": "a", "tags": {}})
    lg.log_metrics({"loss": 0.5}, 0)
    lg.end()
    t0 = time.monotonic()
    assert lg.close(timeout=30) == 3
    assert time.monotonic() - t0 < 1.5
    assert any("no answer within 0.2 s" in m for m in logs), logs
    gate.set()
    lg._thread.join(5)
    assert json.loads((tmp_path / "mlflow.json").read_text())["run_id"] == "r1"
    assert lg.pending() == 3  # the fenced worker did not touch the spool
    monkeypatch.setattr("kubedistill.track.logger.client", lambda uri: fake)
    res = sync(tmp_path, "http://fake", log=logs.append)
    assert res["pending"] == 0 and res["run_id"] == "r1"
    assert [s[0] for s in fake.sent] == ["create_run", "log_batch", "end"]  # one create_run: the late one


def test_a_record_appended_after_a_cut_line_stays_whole(tmp_path):
    """A resumed run appends to a spool whose last line a kill cut short: the new record starts a new line."""
    fake = FlakyClient()
    fake.down = True
    lg = _logger(tmp_path, fake, retries=1, backoff=0.0)
    lg.run_id = "r1"
    (tmp_path / SPOOL).write_text(json.dumps({"op": "log_batch", "metrics": [["m", 1.0, 0, 0]]}) + "\n" + '{"op": "lo')
    lg._handle({"op": "end", "status": "FINISHED"})
    logs = []
    from kubedistill.track.logger import read_spool

    assert [o["op"] for o in read_spool(tmp_path / SPOOL, logs.append)] == ["log_batch", "end"]
    assert len(logs) == 1 and "line(s) [2]" in logs[0]
