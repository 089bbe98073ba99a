"""Real servers on loopback for the tests: SeaweedFS (S3) and an MLflow tracking server.

Both start as child processes bound to 127.0.0.1 on free ports and are stopped (and their data folders
kept under pytest's tmp dir for post-mortems) when the context exits. SeaweedFS telemetry stays off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

S3_KEY, S3_SECRET = "kubedistill-test", "kubedistill-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _free_ports(n: int) -> list[int]:
    """n distinct free ports, no two of them 10000 apart (SeaweedFS reserves port+10000 for gRPC and refuses
    to start when another component's port sits there)."""
    ports: set[int] = set()
    while len(ports) < n:
        p = free_port()
        if p < 55000 and not ({p - 10000, p + 10000} & ports):
            ports.add(p)
    return sorted(ports)


def _bin(name: str) -> str:
    """A console script of this virtualenv (tests may run without the venv on PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"'{name}' is not installed; run `make install`")
    return found


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _log_tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class S3Server:
    endpoint: str
    key: str = S3_KEY
    secret: str = S3_SECRET
    region: str = "us-east-1"
    _made: set = field(default_factory=set)

    def env(self) -> dict[str, str]:
        """The environment a client (boto3, MLflow) needs to reach this store."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def bucket(self, name: str) -> str:
        """Create bucket `name` once; returns the name."""
        if name not in self._made:
            c = self.client()
            with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou, c.exceptions.BucketAlreadyExists):
                c.create_bucket(Bucket=name)
            self._made.add(name)
        return name


@contextlib.contextmanager
def seaweedfs(workdir: Path, timeout: float = 60.0):
    """A SeaweedFS `weed mini` with S3 on a free loopback port; yields an S3Server."""
    workdir.mkdir(parents=True, exist_ok=True)
    s3, master, volume, filer, admin, metrics, *grpc = _free_ports(11)
    cmd = [
        _bin("weed"),
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        # Each bucket is a collection with volumes of its own; left to itself, `weed mini` allows free disk / 1 GiB
        # volumes, so a machine with 9 GB free refused writes to the tenth bucket (InternalError). Volumes are
        # sparse files: a fixed count of small ones does not depend on the disk.
        "-volume.max=100",
        "-master.volumeSizeLimitMB=64",
        f"-s3.port={s3}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-admin.port={admin}",
        f"-metricsPort={metrics}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{c}.port.grpc={p}" for c, p in zip(("s3", "master", "volume", "filer", "admin"), grpc)),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
    log = workdir / "weed.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    server = S3Server(endpoint=f"http://127.0.0.1:{s3}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                server.client().list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS S3 not ready after {timeout:.0f}s:\n{_log_tail(log)}") from None
                time.sleep(0.3)
        yield server
    finally:
        _stop(proc)


@dataclass
class MlflowServer:
    uri: str
    artifact_root: str


@contextlib.contextmanager
def mlflow_server(workdir: Path, s3: S3Server, bucket: str = "mlflow", timeout: float = 120.0):
    """`mlflow server` with a sqlite backend and SeaweedFS as its (proxied) artifact store."""
    workdir.mkdir(parents=True, exist_ok=True)
    s3.bucket(bucket)
    port = free_port()
    cmd = [
        _bin("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{bucket}/artifacts",
    ]
    # no job runner: MLflow 3's huey consumers are four more processes the tests never use, busy on 2 cores
    env = {**os.environ, **s3.env(), "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI")
    log = workdir / "mlflow.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not ready after {timeout:.0f}s:\n{_log_tail(log)}")
            time.sleep(0.5)
        yield MlflowServer(uri=uri, artifact_root=f"s3://{bucket}/artifacts")
    finally:
        _stop(proc)
