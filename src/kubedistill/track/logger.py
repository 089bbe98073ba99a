"""A run logger that never holds training up and never loses a record.

Every call (create the run, params, metrics, tags, artifacts, datasets, LoggedModels, end) becomes an operation
on a queue that a background thread sends to MLflow, retrying with exponential backoff. When the server stays down the
operation goes to a spool file (`mlflow_pending.jsonl` in the run folder) and the logger goes offline: it
tries again at most every `probe_s` seconds and, once the server answers, replays the spool in order.
Whatever is still pending when training ends stays in the spool, the log says so once, and
`kubedistill mlflow sync RUN_DIR` sends it later. The run id (once known) is kept in `mlflow.json`, so a
resumed training run logs into the same MLflow run.

A circuit breaker bounds what a server that accepts connections and never answers can cost:
- an HTTP server is asked `/health` before the first record and before each replay; no answer within the
  request timeout (`MLFLOW_HTTP_REQUEST_TIMEOUT`, 30 s) opens the breaker: records go to the spool at once;
- a call that times out is not retried: the breaker opens;
- `close` (the end of training) stops waiting for a call that has run past the timeout (an artifact upload
  or a LoggedModel gets the whole close timeout), spools it and everything queued behind it in order, and
  returns. The worker thread is fenced off from the spool from then on. So training waits at most the timeout once.
"""

from __future__ import annotations

import json
import os
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubedistill.core.atomic import atomic_write_text
from kubedistill.core.errors import UserError
from kubedistill.track.models import log_checkpoints_op
from kubedistill.track.settings import client, experiment_id, explain, request_timeout, resolve_uri

SPOOL = "mlflow_pending.jsonl"
RUN_FILE = "mlflow.json"
_STOP = object()


def read_run_file(run_dir: str | Path) -> dict | None:
    p = Path(run_dir) / RUN_FILE
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):  # damaged: as if there were none
        return None
    return {k: v for k, v in data.items() if isinstance(v, str) or v is None}


class RunLogger:
    """Asynchronous, retrying logger for one MLflow run. See the module docstring."""

    def __init__(
        self,
        run_dir: str | Path,
        uri: str,
        *,
        experiment: str = "",
        artifact_location: str | None = None,
        run_name: str = "",
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        retries: int = 4,
        backoff: float = 1.0,
        probe_s: float = 30.0,
        timeout: float | None = None,
        log: Callable[[str], None] = print,
        background: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.uri = uri
        self.retries, self.backoff, self.probe_s = retries, backoff, probe_s
        self.log = log
        self.client = client(uri)  # after import_mlflow set MLflow's request timeout
        self.timeout = request_timeout() if timeout is None else timeout
        self.run_id = run_id
        self.offline_since: float | None = None
        self.last_try = 0.0
        self.failures = 0
        self.sent = 0
        self._said_offline = False
        self._checked = False  # the first record asks the server's /health first
        self._q: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # the spool file and the fence
        self._current: dict | None = None  # the record the worker is handling
        self._call_since: float | None = None  # when the worker's network call now running began
        self._fenced = False  # close() gave up on the worker: it no longer touches the spool
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not background:  # `sync`: replays the spool in the caller's thread
            return
        if run_id is None:
            # the URI is on disk from the start, so `kubedistill mlflow sync` knows where to send a spool
            atomic_write_text(
                self.run_dir / RUN_FILE,
                json.dumps({"run_id": None, "experiment_id": None, "tracking_uri": uri}, indent=2),
            )
            self._put(
                {
                    "op": "create_run",
                    "experiment": experiment,
                    "artifact_location": artifact_location,
                    "run_name": run_name,
                    "tags": tags or {},
                }
            )
        self._thread = threading.Thread(target=self._worker, name="mlflow-logger", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API (non-blocking)
    def log_params(self, params: dict[str, Any]) -> None:
        self._put({"op": "log_batch", "params": [[k, param_text(v)] for k, v in params.items()]})

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        ts = int(time.time() * 1000)
        items = [[k, float(v), ts, int(step)] for k, v in metrics.items() if is_number(v)]
        if items:
            self._put({"op": "log_batch", "metrics": items})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._put({"op": "log_batch", "tags": [[k, str(v)] for k, v in tags.items()]})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put({"op": "log_artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def log_dataset(self, name: str, digest: str, source: str, context: str = "train") -> None:
        self._put({"op": "log_dataset", "name": name, "digest": digest, "source": source, "context": context})

    def log_models(
        self,
        checkpoints: list[dict[str, Any]],
        *,
        dataset: tuple[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        """Checkpoints as LoggedModels of this run (`track.models`): each {"name", "checkpoint", "onnx", "step",
        "metrics", "sha256"}; the metrics are tied to the model and to the (name, digest) dataset they were measured
        on. One record for all of them: MLflow copies a run's metrics at a model's step onto the model, so every
        model is made before any metric is tied to one. The files must stay where they are until it is sent."""
        items = [
            {
                "name": c["name"],
                "checkpoint": str(Path(c["checkpoint"]).resolve()),
                "onnx": str(Path(c["onnx"]).resolve()),
                "step": int(c["step"]),
                "metrics": {k: float(v) for k, v in (c.get("metrics") or {}).items() if is_number(v)},
                "sha256": c.get("sha256", ""),
            }
            for c in checkpoints
        ]
        self._put(
            {
                "op": "log_models",
                "id": uuid.uuid4().hex,  # a retry finds the models an earlier try made
                "models": items,
                "dataset": list(dataset) if dataset else None,
                "params": {k: param_text(v) for k, v in (params or {}).items()},
            }
        )

    def end(self, status: str = "FINISHED") -> None:
        self._put({"op": "end", "status": status})

    def close(self, timeout: float = 60.0) -> int:
        """Wait up to `timeout` s for the queue to drain, but not for a call that has hung past the request
        timeout; spool what is left, in order. Returns the number of pending records."""
        self._q.put(_STOP)
        deadline = time.monotonic() + timeout
        hung = False
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.05)
            since, current = self._call_since, self._current
            if since is not None and current is not None and current.get("op") not in ("log_artifact", "log_models"):
                hung = time.monotonic() - since > self.timeout
                if hung:
                    break
        with self._lock:
            if self._thread.is_alive():  # fence the worker: from now on only this thread writes the spool
                self._fenced = True
                left = [self._current] if self._current is not None else []
                while True:
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if item is not _STOP:
                        left.append(item)
                self._q.put(_STOP)
                for op in left:
                    self._append(op)
                why = f"no answer within {self.timeout:g} s" if hung else f"not done after {timeout:g} s"
                self.log(f"MLflow: stopped waiting for {self.uri} ({why}); training does not wait for it")
        pending = self.pending()
        if pending:
            self.log(
                f"MLflow: {pending} record(s) could not be sent and are kept in {self.run_dir / SPOOL}; "
                f"send them later with `kubedistill mlflow sync {self.run_dir}`"
            )
        return pending

    def pending(self) -> int:
        p = self.run_dir / SPOOL
        return sum(1 for line in p.read_text().splitlines() if line.strip()) if p.exists() else 0

    # ------------------------------------------------------------------ worker
    def _put(self, op: dict) -> None:
        self._q.put(op)

    def _worker(self) -> None:
        while True:
            op = self._q.get()
            if op is _STOP:
                return
            self._current = op
            try:
                self._handle(op)
            finally:
                self._current = None

    def _handle(self, op: dict) -> None:
        if not self._checked:
            self._checked = True
            if not self._probe():
                self._go_offline(f"no answer from {self.uri}/health within {self.timeout:g} s", 1)
        if self.offline_since is not None and time.monotonic() - self.last_try < self.probe_s:
            self._spool(op)
            return
        if self.offline_since is not None:
            # probe: replay the spool first (order matters for create_run/end), then this op
            if not (self._probe() and self._replay()):
                self.last_try = time.monotonic()
                self._spool(op)
                return
        if not self._send_with_retry(op, self.retries if self.offline_since is None else 1):
            self._spool(op)

    def _probe(self) -> bool:
        """Whether an HTTP tracking server answers at all (any HTTP status counts) within the timeout; other
        stores (sqlite, a file) are not probed."""
        if not self.uri.startswith(("http://", "https://")):
            return True
        try:
            self._call_since = time.monotonic()
            with urllib.request.urlopen(self.uri.rstrip("/") + "/health", timeout=self.timeout):  # noqa: S310
                return True
        except urllib.error.HTTPError:  # it answered (a proxy's 404, an auth wall): the calls will tell
            return True
        except (OSError, ValueError) as e:  # refused, reset, timed out, bad URL; a TLS handshake is an answer
            return isinstance(getattr(e, "reason", e), ssl.SSLError)
        finally:
            self._call_since = None

    def _send_with_retry(self, op: dict, tries: int) -> bool:
        last: BaseException | None = None
        for attempt in range(max(1, tries)):
            try:
                self._call_since = time.monotonic()
                self._send(op)
                self.sent += 1
                if self.offline_since is not None:
                    self._say(f"MLflow: tracking server reachable again ({self.uri})")
                self.offline_since = None
                self._said_offline = False
                return True
            except Exception as e:  # any transport or server error: retry, then spool
                self.failures += 1
                last = e
                if timed_out(e):  # a server that does not answer: no retry, the breaker opens
                    break
                if attempt + 1 < tries:
                    time.sleep(self.backoff * 2**attempt)
            finally:
                self._call_since = None
                self.last_try = time.monotonic()
        self._go_offline(explain(last, self.uri), tries)
        return False

    def _go_offline(self, why: str, tries: int) -> None:
        self.last_try = time.monotonic()
        if self.offline_since is None:
            self.offline_since = time.monotonic()
        if not self._said_offline:
            self._say(
                f"MLflow: logging failed after {tries} {'try' if tries == 1 else 'tries'} ({why}); training goes "
                f"on, records are kept in {self.run_dir / SPOOL}"
            )
            self._said_offline = True

    def _say(self, text: str) -> None:
        if not self._fenced:
            self.log(text)

    def _replay(self) -> bool:
        """Send the spool in order, one try each; the records sent are dropped from its front, whatever was
        appended meanwhile stays. Network calls run outside the lock."""
        p = self.run_dir / SPOOL
        with self._lock:
            if not p.exists():
                return True
            ops = read_spool(p, self.log)
        made = 0
        if self.run_id is None and ops and ops[0].get("op") != "create_run":
            # the record that creates the run was damaged: create one anyway rather than never sending the rest
            self.log(f"MLflow: the spool in {self.run_dir} does not start by creating its run; creating one now")
            ops.insert(0, {"op": "create_run", "experiment": "", "run_name": self.run_dir.name, "tags": {}})
            made = 1
        done = 0
        for op in ops:
            if not self._send_with_retry(op, 1):
                break
            done += 1
        with self._lock:
            rest = read_spool(p, lambda _m: None)[max(0, done - made) :] if p.exists() else []
            if rest:
                atomic_write_text(p, "".join(json.dumps(o) + "\n" for o in rest))
            else:
                p.unlink(missing_ok=True)
        return done == len(ops)

    def _spool(self, op: dict) -> None:
        with self._lock:
            if not self._fenced:  # once fenced, close() has spooled this record with the rest
                self._append(op)

    def _append(self, op: dict) -> None:
        """Append one record; the caller holds the lock. Append-only: a kill loses at most the line being
        written, and a line left cut by one is ended first, so the next record is whole."""
        p = self.run_dir / SPOOL
        with open(p, "a+b") as f:
            cut = False
            if f.seek(0, os.SEEK_END) > 0:
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
            f.write((b"\n" if cut else b"") + json.dumps(op).encode() + b"\n")
            f.flush()

    def _send(self, op: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "create_run":
            if self.run_id is not None:  # created by a call that answered after close() had spooled it
                return
            exp = experiment_id(self.client, op.get("experiment", ""), op.get("artifact_location"))
            run = self.client.create_run(exp, run_name=op.get("run_name") or None, tags=op.get("tags") or None)
            self.run_id = run.info.run_id
            atomic_write_text(
                self.run_dir / RUN_FILE,
                json.dumps(
                    {"run_id": self.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": self.uri}, indent=2
                ),
            )
            return
        if self.run_id is None:
            raise RuntimeError("the MLflow run is not created yet")
        if kind == "log_batch":
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(k, v, ts, step) for k, v, ts, step in op.get("metrics", [])],
                params=[Param(k, v) for k, v in op.get("params", [])],
                tags=[RunTag(k, v) for k, v in op.get("tags", [])],
            )
        elif kind == "log_artifact":
            path = Path(op["path"])
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), op.get("artifact_path"))
            elif path.exists():
                self.client.log_artifact(self.run_id, str(path), op.get("artifact_path"))
        elif kind == "log_dataset":
            self.client.log_inputs(
                self.run_id, datasets=[dataset_input(op["name"], op["digest"], op["source"], op["context"])]
            )
        elif kind == "log_models":
            for name, model_id in log_checkpoints_op(self.client, self.uri, self.run_id, op).items():
                self.log(
                    f"MLflow: {name} checkpoint logged as models:/{model_id}"
                    if model_id
                    else f"MLflow: {name} checkpoint not logged: its .pt or ONNX file is gone"
                )
        elif kind == "end":
            self.client.set_terminated(self.run_id, op["status"])
        else:
            raise ValueError(f"unknown op {kind}")


def dataset_input(name: str, digest: str, source: str, context: str):
    """An MLflow dataset input: `digest` (a content fingerprint; MLflow keeps 36 characters, the tag all of it) and
    the source URI, with the context (train, eval) as MLflow's tag."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": any local-path source will do
        warnings.simplefilter("ignore")
        src = resolve_dataset_source(source)
    ds = MetaDataset(src, name=name, digest=digest[:36])
    tags = [InputTag("mlflow.data.context", context), InputTag("fingerprint", digest)]
    return DatasetInput(ds._to_mlflow_entity(), tags=tags)


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1} (MLflow params and metrics are flat)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def is_number(v: Any) -> bool:
    if isinstance(v, bool) or v is None:
        return False
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and abs(f) != float("inf")


def param_text(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text[:6000]


def timed_out(e: BaseException) -> bool:
    """Whether a failed call (or what caused it) was a timeout: the server took the connection and never
    answered."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, TimeoutError) or "timeout" in type(e).__name__.lower() or "timed out" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def read_spool(path: Path, log: Callable[[str], None] = print) -> list[dict]:
    """The spooled records, in order. A line that is not a whole record (the last one, cut by a kill while it was
    appended; or one damaged on disk) is skipped with a warning: the rest is still sent."""
    ops, bad = [], []
    lines = path.read_text(errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            op = json.loads(line)
            if not isinstance(op, dict) or "op" not in op:
                raise ValueError("not a record")
            ops.append(op)
        except ValueError:
            bad.append(n)
    if bad:
        where = "the last line, cut short" if bad == [len(lines)] else f"line(s) {bad[:5]}"
        log(f"MLflow: skipped {len(bad)} unreadable record(s) in {path} ({where}); sending the other {len(ops)}")
    return ops


def sync(run_dir: str | Path, uri: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Send a run folder's spooled MLflow records (after the server was down). Returns {sent, pending, run_id}.

    A run created on one tracking server cannot be continued on another: with `uri` naming another server than
    the run's, a UserError says so (instead of failing as "try again later" for ever)."""
    run_dir = Path(run_dir)
    info = read_run_file(run_dir) or {}
    if not (run_dir / SPOOL).exists():  # nothing to send: no client, no local store made as a side effect
        if not info:
            raise UserError(
                f"'{run_dir}' is not a tracked training run (it has no {RUN_FILE} or {SPOOL})",
                "Pass the run's folder, runs/<name>",
            )
        return {"sent": 0, "pending": 0, "run_id": info.get("run_id"), "ok": True}
    if uri and info.get("run_id") and info.get("tracking_uri") and uri.rstrip("/") != info["tracking_uri"].rstrip("/"):
        raise UserError(
            f"Run {info['run_id']} in {run_dir} was created on {info['tracking_uri']}, not on {uri}",
            f"Sync it to {info['tracking_uri']} (leave out --tracking-uri)",
        )
    args_uri = uri or info.get("tracking_uri")
    if not args_uri:
        args_uri = resolve_uri("", run_dir.parent)[0]
    logger = RunLogger(run_dir, args_uri, run_id=info.get("run_id"), retries=3, probe_s=0.0, log=log, background=False)
    ok = logger._replay()
    return {"sent": logger.sent, "pending": logger.pending(), "run_id": logger.run_id, "ok": ok}
