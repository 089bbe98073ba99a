"""The serve image run as the chart runs it (tests/container/pods.py turns the rendered Deployment into `docker
run`: read-only root, uid 10001, no capabilities, tmpfs on the cache dir and /tmp, the chart's probes): a model
from a mounted file and from the MLflow registry (S3 on loopback) answers like `kubedistill predict`, the
chart's `helm test` pod passes against it, and SIGTERM drains in-flight requests."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid

import httpx
import pytest

from tests.container.pods import chart_objects, configmaps, docker, logs, run_args, wait_probe
from tests.servers import free_port, http_get

pytestmark = pytest.mark.container


def _deployment(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]


def _predictor(objects: list[dict]) -> dict:
    """serving.mode kserve: the InferenceService's predictor (a pod spec with KServe's fields beside it)."""
    return next(o for o in objects if o["kind"] == "InferenceService")["spec"]["predictor"]


def _test_pod(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "Pod" and o["metadata"]["name"].endswith("-test"))


def _replace_arg(args: list[str], flag: str, value: str) -> list[str]:
    i = args.index(flag)
    return args[: i + 1] + [value] + args[i + 2 :]


class ServeContainer:
    """The chart's server container, started detached with host networking on a free port."""

    def __init__(
        self,
        image: str,
        values: dict,
        *,
        model: str | None = None,
        extra: tuple[str, ...] = (),
        secrets=None,
        kserve: bool = False,
    ):
        self.port = free_port()
        values = {**values, "server": {**values.get("server", {}), "port": self.port}}
        if kserve:
            values["serving"] = {"mode": "kserve"}
        self.objects = chart_objects(values)
        self.pod = _predictor(self.objects) if kserve else _deployment(self.objects)
        container = "kserve-container" if kserve else "server"
        args = run_args(self.pod, container, configmaps(self.objects), secrets)
        if model is not None:  # a mounted file instead of the chart's pinned URI
            args = _replace_arg(args, "--model", model)
        i = args.index("{image}")
        self.name = f"kd-serve-{uuid.uuid4().hex[:8]}"
        cmd = ["run", "-d", "--name", self.name, "--network", "host", *extra, *args[:i], image, *args[i + 1 :]]
        self.id = docker(*cmd).stdout.strip()
        self.base = f"http://127.0.0.1:{self.port}"
        self.spec = next(c for c in (self.pod.get("spec") or self.pod)["containers"] if c["name"] == container)

    def wait_started(self) -> float:
        t = wait_probe(self.base, self.spec["startupProbe"], "startup", self.id)
        return t + wait_probe(self.base, self.spec["readinessProbe"], "readiness", self.id)

    def detect(self, files, conf: float) -> dict:
        files = [("images", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
        r = httpx.post(f"{self.base}/v1/detect", params={"conf": conf}, files=files, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


@pytest.fixture(scope="module")
def model_dir(served_model, tmp_path_factory):
    """The ONNX model in a folder the image's user (10001) may read, as a mounted volume would be."""
    d = tmp_path_factory.mktemp("mounted")
    shutil.copy2(served_model[1], d / "tiny.onnx")
    for p in [d, *d.parents][:-1]:
        if p.stat().st_uid == os.getuid():
            p.chmod(p.stat().st_mode | 0o755)
    (d / "tiny.onnx").chmod(0o644)
    return d


@pytest.fixture(scope="module")
def val_files(tiny_data):
    return sorted((tiny_data.parent / "images" / "val").glob("*.jpg"))[:4]


def _predict(weights, files, conf):
    import torch

    from kubedistill.model.checkpoint import load_model
    from kubedistill.predict import predict_files

    model, ckpt = load_model(weights)
    return predict_files(model, files, int(ckpt["train_args"]["imgsz"]), torch.device("cpu"), conf=conf, max_det=300)


def _assert_same_as_predict(body: dict, preds, files, conf: float) -> None:
    from tests.integration.test_serve import _match

    assert len(body["results"]) == len(files)
    n = 0
    for p, res in zip(preds, body["results"]):
        _match(p.boxes, p.scores, p.classes, res["detections"], conf, 300)
        n += len(res["detections"])
    assert n > 0  # something was compared


PINNED = {"model": {"uri": "models:/det/1", "name": "tiny"}}


@pytest.mark.parametrize("kserve", [False, True], ids=["deployment", "kserve-predictor"])
def test_mounted_model_as_the_chart_runs_it_then_helm_test(images, served_model, model_dir, val_files, kserve):
    """The Deployment's container, and the InferenceService's custom predictor (serving.mode kserve)."""
    srv = ServeContainer(
        images["serve"], PINNED, model="/models/tiny.onnx", extra=("-v", f"{model_dir}:/models:ro"), kserve=kserve
    )
    try:
        started = srv.wait_started()
        assert started < 60
        inspect = json.loads(docker("inspect", srv.id).stdout)[0]
        assert inspect["Config"]["User"] == "10001:10001" and inspect["HostConfig"]["ReadonlyRootfs"]
        assert inspect["HostConfig"]["CapDrop"] == ["ALL"]
        body = srv.detect(val_files, conf=0.05)
        _assert_same_as_predict(body, _predict(served_model[0], val_files, 0.05), val_files, 0.05)
        # nothing but the tmpfs mounts was written to (the root filesystem is read-only)
        assert docker("exec", srv.id, "touch", "/opt/x", check=False).returncode != 0
        # the chart's `helm test` pod, pointed at this container instead of the Service
        test_pod = _test_pod(srv.objects)
        args = run_args(test_pod, "smoke", {})
        args = _replace_arg(args, "--url", srv.base)
        i = args.index("{image}")
        res = docker("run", "--rm", "--network", "host", *args[:i], images["serve"], *args[i + 1 :], check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "tiny" in res.stdout
    finally:
        srv.remove()


def test_registered_model_from_mlflow_and_s3(images, served_model, mlflow_server, s3_server, val_files, monkeypatch):
    from kubedistill.release.register import register_student

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    name = f"det-{uuid.uuid4().hex[:6]}"
    version = register_student(
        served_model[0], name, onnx=served_model[1], tracking_uri=mlflow_server.uri, experiment="container"
    )
    env = s3_server.env()
    values = {
        "model": {"uri": f"models:/{name}/{version}", "name": "tiny"},
        "mlflow": {"trackingUri": mlflow_server.uri},
        "s3": {"endpointUrl": env["AWS_ENDPOINT_URL"], "region": env["AWS_DEFAULT_REGION"]},
        "credentials": {"existingSecret": "s3-creds"},
    }
    secrets = {"s3-creds": {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}
    srv = ServeContainer(images["serve"], values, secrets=secrets)
    try:
        srv.wait_started()
        body = srv.detect(val_files, conf=0.05)
        _assert_same_as_predict(body, _predict(served_model[0], val_files, 0.05), val_files, 0.05)
        status, meta = http_get(f"{srv.base}/v2/models/tiny")
        assert status == 200 and json.loads(meta)["name"] == "tiny"
    finally:
        srv.remove()


def test_unreadable_model_is_a_one_line_error(images, served_model):
    """The model folder as pytest made it (0700, root's): the server says so and how to fix it, no traceback."""
    srv = ServeContainer(
        images["serve"], PINNED, model="/models/tiny.onnx", extra=("-v", f"{served_model[1].parent}:/models:ro")
    )
    try:
        code = int(docker("wait", srv.id).stdout.strip())
        out = logs(srv.id)
        assert code != 0 and "Traceback" not in out, out
        assert "error: Model '/models/tiny.onnx' cannot be read by this user (uid 10001)" in out
    finally:
        srv.remove()


def test_sigterm_drains_in_flight_requests(images, model_dir, val_files):
    srv = ServeContainer(
        images["serve"],
        PINNED,
        model="/models/tiny.onnx",
        extra=("-v", f"{model_dir}:/models:ro", "-e", "KUBEDISTILL_SERVE_TEST_DELAY_S=2.0"),
    )
    try:
        srv.wait_started()
        result = {}
        t = threading.Thread(target=lambda: result.update(body=srv.detect(val_files[:1], conf=0.05)))
        t0 = time.monotonic()
        t.start()
        time.sleep(0.6)  # inside its 2 s model call now
        docker("kill", "--signal", "TERM", srv.id)
        t.join(30)
        assert result["body"]["results"][0]["file"] == val_files[0].name
        assert time.monotonic() - t0 >= 2.0
        code = int(docker("wait", srv.id).stdout.strip())
        out = logs(srv.id)
        assert code == 0, out
        assert "Shutting down" in out and "Traceback" not in out
    finally:
        srv.remove()
