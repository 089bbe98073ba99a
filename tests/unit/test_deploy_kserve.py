"""`kubedistill deploy --mode kserve`: the plan, the InferenceService wait through the real kubernetes client against
recorded API responses on loopback (ready, a canary that becomes ready, one that fails, a rollback), the one
inference through the service's URL, and the CLI. No cluster: nothing here talks to a real API server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubedistill.core.errors import UserError
from kubedistill.deploy import helm, smoke
from kubedistill.deploy.chart import find_chart
from kubedistill.deploy.kserve import kserve_clients, service_progress, wait_for_service
from kubedistill.deploy.plan import make_plan
from kubedistill.deploy.run import deploy
from tests.k8s_api import RecordedApiServer
from tests.kserve_schema import problems
from tests.unit.test_deploy import HISTORY, Clock, FakeEngine, run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "k8s" / "kserve"
NAME = "det-kubedistill"
ISVC = rf"/apis/serving\.kserve\.io/v1beta1/namespaces/serving/inferenceservices/{NAME}"
PODS = r"/api/v1/namespaces/serving/pods"
TAG_URL = f"http://latest-{NAME}-predictor.serving.example.com"
URL = f"http://{NAME}.serving.example.com"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


class KServeEngine(FakeEngine):
    """The scripted Helm engine; its manifest is the InferenceService the chart renders for `restored` values."""

    def __init__(self, history=(), fail=None, restored_values=None):
        super().__init__(history, fail)
        self.restored_values = restored_values or {"model": {"uri": "models:/det/8"}, "serving": {"mode": "kserve"}}

    def manifest(self, release):
        self._act("manifest", release)
        return helm.manifest_text(helm.render(find_chart(), self.restored_values, release=release, namespace="serving"))


class Checks:
    """Stands for `smoke.run`: records where the inference went; `fail` makes it fail as smoke.run does."""

    def __init__(self, fail: str | None = None):
        self.calls: list[tuple] = []
        self.fail = fail

    def __call__(self, base, model, *, host=None, echo=print):
        self.calls.append((base, model, host))
        if self.fail:
            raise smoke.SmokeError(self.fail)
        echo("one inference: 2 detection(s) in 31 ms")


def run(api: RecordedApiServer, tmp_path, engine, check=None, **kw):
    clock = Clock()
    return deploy(
        "det",
        "serving",
        kw.pop("model_uri", "models:/det/8"),
        mode="kserve",
        engine=engine,
        kube=kserve_clients(str(api.kubeconfig(tmp_path))),
        check=check or Checks(),
        clock=clock,
        sleep=clock.sleep,
        poll=1.0,
        timeout=kw.pop("timeout", 60),
        **kw,
    )


def routes(isvc: list, pods=("kserve/pods_running.json",)) -> dict:
    return {("GET", ISVC): [f"kserve/{n}" for n in isvc], ("GET", PODS): list(pods)}


# -- the fixtures are what the chart renders, and fit KServe's published models ------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("isvc_*.json")))
def test_recorded_services_fit_kserves_models(name):
    obj = fixture(name)
    obj.pop("status")
    for key in ("generation", "uid", "resourceVersion", "creationTimestamp"):
        assert key in obj["metadata"]
    assert problems(obj) == []


# -- progress of one InferenceService ------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, canary, state, words",
    [
        ("isvc_v8_ready.json", None, "done", "revision det-kubedistill-predictor-00001 ready; traffic"),
        ("isvc_canary_unobserved.json", 10, "waiting", "waiting for KServe to see generation 2"),
        ("isvc_canary_deploying.json", 10, "waiting", "not ready (RevisionMissing)"),
        ("isvc_canary_ready.json", 10, "done", "00002 10%, det-kubedistill-predictor-00001 90%"),
        ("isvc_canary_ready.json", None, "waiting", "has 10% of the traffic, want 100%"),
        ("isvc_canary_failed.json", 10, "failed", "the model did not load in det-kubedistill-predictor-00002"),
        ("isvc_image_missing.json", 10, "failed", "PredictorConfigurationReady is False (ContainerMissing)"),
        ("isvc_rolled_back.json", None, "done", "revision det-kubedistill-predictor-00003 ready"),
        ("isvc_standard_ready.json", None, "done", "det-kubedistill: ready"),
        ("isvc_standard_deadline.json", None, "failed", "PredictorReady is False (ProgressDeadlineExceeded)"),
    ],
)
def test_service_progress(name, canary, state, words):
    got, msg, url = service_progress(fixture(name), canary)
    assert got == state and words in msg, msg
    assert (url is not None) == (state == "done")


def test_check_url_is_the_canarys_own_revision_or_the_service():
    assert service_progress(fixture("isvc_canary_ready.json"), 10)[2] == TAG_URL
    assert service_progress(fixture("isvc_v8_ready.json"), None)[2] == URL
    assert service_progress(fixture("isvc_standard_ready.json"), None)[2] == f"http://{NAME}-serving.example.com"


def test_failure_carries_the_containers_words():
    _, msg, _ = service_progress(fixture("isvc_canary_failed.json"), 10)
    assert "ModelLoadFailed (exit code 1)" in msg and "version 9 does not exist in the MLflow registry" in msg


# -- the real kubernetes client against recorded responses ---------------------------------------------
def test_wait_through_the_real_client(tmp_path):
    isvc = [(503, "etcd leader changed"), "isvc_canary_unobserved.json", "isvc_canary_deploying.json"]
    r = {("GET", ISVC): isvc[:1] + [f"kserve/{n}" for n in isvc[1:]] + ["kserve/isvc_canary_ready.json"]}
    r[("GET", PODS)] = ["kserve/pods_running.json"]
    with RecordedApiServer(r, namespace="serving") as api:
        clock = Clock()
        res = wait_for_service(
            *kserve_clients(str(api.kubeconfig(tmp_path))),
            "serving",
            NAME,
            canary=10,
            timeout=60,
            poll=1.0,
            clock=clock,
            sleep=clock.sleep,
        )
        pod_queries = [q for m, p, q, _ in api.requests if p.endswith("/pods")]
    assert res.ok and res.url == TAG_URL, res.reason
    assert res.traffic == [
        {"revision": f"{NAME}-predictor-00002", "percent": 10, "latest": True, "tag": "latest"},
        {"revision": f"{NAME}-predictor-00001", "percent": 90, "latest": False, "tag": "prev"},
    ]
    assert pod_queries[0]["labelSelector"] == [f"serving.kserve.io/inferenceservice={NAME}"]


def test_a_crash_looping_canary_fails_fast_with_the_pods_words(tmp_path):
    with RecordedApiServer(
        routes(["isvc_canary_deploying.json"], ["kserve/pods_canary_crashloop.json"]), namespace="serving"
    ) as api:
        clock = Clock()
        res = wait_for_service(
            *kserve_clients(str(api.kubeconfig(tmp_path))), "serving", NAME, canary=10, clock=clock, sleep=clock.sleep
        )
    assert not res.ok and "CrashLoopBackOff after 4 restarts" in res.reason
    assert "kserve-container" in res.reason and "models:/det/9 does not exist" in res.reason


def test_forbidden_stops_at_once(tmp_path):
    with RecordedApiServer(routes([]) | {("GET", ISVC): ["status_forbidden.json"]}, namespace="serving") as api:
        res = wait_for_service(*kserve_clients(str(api.kubeconfig(tmp_path))), "serving", NAME, timeout=5, poll=0.01)
    assert not res.ok and "403" in res.reason


# -- deploy: upgrade, wait, one inference, roll back ----------------------------------------------------
def test_first_install_waits_for_ready_then_checks_one_inference(tmp_path):
    eng, check = KServeEngine(), Checks()
    with RecordedApiServer(routes(["isvc_v8_ready.json"]), namespace="serving") as api:
        out = run(api, tmp_path, eng, check)
    assert [c[0] for c in eng.calls] == ["history", "install"]
    values = eng.calls[1][2]
    assert values["serving"] == {"mode": "kserve"} and values["model"]["uri"] == "models:/det/8"
    assert values["kserve"] == {"canaryTrafficPercent": None, "stableModelUri": "models:/det/8"}
    assert check.calls == [(URL, "detector", None)]
    assert out["status"] == "deployed" and out["mode"] == "kserve" and out["inference_service"] == NAME
    assert out["deployments"] == [] and out["checked_url"] == URL and "one inference" in out["test_logs"]
    assert out["traffic"] == [{"revision": f"{NAME}-predictor-00001", "percent": 100, "latest": True, "tag": "latest"}]
    json.dumps(out)


def test_canary_gets_its_share_and_is_checked_at_its_own_url(tmp_path):
    eng, check = KServeEngine(HISTORY), Checks()
    isvc = ["isvc_v8_ready.json", "isvc_canary_unobserved.json", "isvc_canary_deploying.json", "isvc_canary_ready.json"]
    with RecordedApiServer(routes(isvc), namespace="serving") as api:
        out = run(api, tmp_path, eng, check, canary_uri="models:/det/9", canary_weight=10)
    assert [c[0] for c in eng.calls] == ["history", "upgrade"]
    values = eng.calls[1][2]
    assert values["model"]["uri"] == "models:/det/9"  # KServe's canary: the new spec, with its share
    assert values["kserve"] == {"canaryTrafficPercent": 10, "stableModelUri": "models:/det/8"}
    assert check.calls == [(TAG_URL, "detector", None)]
    assert out["status"] == "deployed" and out["canary_share"] == 0.1 and out["checked_url"] == TAG_URL


def test_failing_canary_rolls_back_to_the_previous_spec_and_says_why(tmp_path):
    eng, check = KServeEngine(HISTORY), Checks()
    isvc = [
        "isvc_v8_ready.json",
        "isvc_canary_deploying.json",
        "isvc_canary_failed.json",
        "isvc_rolled_back.json",
    ]
    with RecordedApiServer(routes(isvc), namespace="serving") as api:
        out = run(api, tmp_path, eng, check, canary_uri="models:/det/9", canary_weight=10)
    assert [c[0] for c in eng.calls] == ["history", "upgrade", "rollback", "manifest"]
    assert eng.calls[2] == ("rollback", "det", 3)
    assert check.calls == []  # nothing to check: the canary never became ready
    assert out["status"] == "rolled-back" and out["rolled_back"] is True
    assert out["reason"].startswith(f"InferenceService {NAME} did not take revision 4: {NAME}: the model did not load")
    assert "version 9 does not exist in the MLflow registry" in out["reason"]
    assert out["rollback_rollout"] == "complete"


def test_a_failed_inference_rolls_back(tmp_path):
    eng = KServeEngine(HISTORY)
    check = Checks(fail="inference failed: 503 model not loaded")
    isvc = ["isvc_v8_ready.json", "isvc_canary_ready.json", "isvc_rolled_back.json"]
    with RecordedApiServer(routes(isvc), namespace="serving") as api:
        out = run(api, tmp_path, eng, check, canary_uri="models:/det/9", canary_weight=10)
    assert out["status"] == "rolled-back"
    assert out["reason"] == f"the inference through {TAG_URL} failed: inference failed: 503 model not loaded"
    assert out["rollback_rollout"] == "complete"


def test_rollback_that_does_not_settle_is_reported(tmp_path):
    eng = KServeEngine(HISTORY)
    isvc = ["isvc_v8_ready.json", "isvc_canary_failed.json", "isvc_canary_failed.json"]
    with RecordedApiServer(routes(isvc), namespace="serving") as api:
        out = run(api, tmp_path, eng, canary_uri="models:/det/9", canary_weight=10)
    assert out["status"] == "rolled-back" and out["rollback_rollout"].startswith("not complete:")


def test_promotion_without_canary_waits_for_100_percent(tmp_path):
    eng, check = KServeEngine(HISTORY), Checks()
    isvc = ["isvc_canary_ready.json", "isvc_v9_ready.json"]
    with RecordedApiServer(routes(isvc), namespace="serving") as api:
        out = run(api, tmp_path, eng, check, model_uri="models:/det/9")
    assert out["status"] == "deployed" and check.calls == [(URL, "detector", None)]
    assert eng.calls[1][2]["kserve"]["canaryTrafficPercent"] is None


def test_ingress_address_gets_the_services_host_name(tmp_path):
    eng, check = KServeEngine(), Checks()
    with RecordedApiServer(routes(["isvc_v8_ready.json"]), namespace="serving") as api:
        out = run(api, tmp_path, eng, check, ingress="http://10.0.0.5:8080")
    assert check.calls == [("http://10.0.0.5:8080", "detector", f"{NAME}.serving.example.com")]
    assert out["status"] == "deployed"


def test_ingress_must_be_an_address():
    with pytest.raises(UserError, match="--ingress '10.0.0.5' is not an address"):
        deploy("det", "serving", "models:/det/8", mode="kserve", ingress="10.0.0.5", dry_run=True)


def test_standard_mode_and_its_deadline(tmp_path):
    values = {"kserve": {"deploymentMode": "Standard", "scaleMetric": "cpu", "scaleTarget": 70}}
    with RecordedApiServer(routes(["isvc_standard_ready.json"]), namespace="serving") as api:
        out = run(api, tmp_path, KServeEngine(), values=values)
    assert out["status"] == "deployed" and out["checked_url"] == f"http://{NAME}-serving.example.com"
    eng = KServeEngine(HISTORY, restored_values={"model": {"uri": "models:/det/8"}, "serving": {"mode": "kserve"}})
    with RecordedApiServer(
        routes(["isvc_standard_deadline.json", "isvc_standard_ready.json"]), namespace="serving"
    ) as api:
        out = run(api, tmp_path, eng, values=values)
    assert out["status"] == "rolled-back" and "ProgressDeadlineExceeded" in out["reason"]


def test_failed_first_install_is_left_for_inspection(tmp_path):
    eng = KServeEngine()
    with RecordedApiServer(routes(["isvc_standard_deadline.json"]), namespace="serving") as api:
        out = run(api, tmp_path, eng)
    assert [c[0] for c in eng.calls] == ["history", "install"]
    assert out["status"] == "failed" and "no earlier deployed revision to roll back to" in out["reason"]


# -- refused before anything changes ---------------------------------------------------------------------
def test_canary_against_another_live_model_is_refused(tmp_path):
    eng = KServeEngine(HISTORY)
    with RecordedApiServer(routes(["isvc_v9_ready.json"]), namespace="serving") as api:
        with pytest.raises(UserError) as e:
            run(api, tmp_path, eng, canary_uri="models:/det/10", canary_weight=10)
    assert "has its traffic on models:/det/9, not --model-uri models:/det/8" in str(e.value)
    assert "upgrade" not in [c[0] for c in eng.calls]


def test_canary_without_a_live_service_is_refused(tmp_path):
    eng = KServeEngine(HISTORY)
    with RecordedApiServer(routes(["status_isvc_not_found.json"]), namespace="serving") as api:
        with pytest.raises(UserError, match="does not exist yet: a KServe canary splits traffic"):
            run(api, tmp_path, eng, canary_uri="models:/det/9", canary_weight=10)


def test_an_unreadable_live_service_is_a_user_error(tmp_path):
    eng = KServeEngine(HISTORY)
    with RecordedApiServer(routes([]) | {("GET", ISVC): ["status_forbidden.json"]}, namespace="serving") as api:
        with pytest.raises(UserError, match=f"Cannot read InferenceService {NAME} in serving: 403"):
            run(api, tmp_path, eng, canary_uri="models:/det/9", canary_weight=10)
    assert "upgrade" not in [c[0] for c in eng.calls]


def test_plan_refuses_a_canary_in_standard_mode_and_a_bad_mode():
    std = {"kserve": {"deploymentMode": "Standard", "scaleMetric": "cpu"}}
    with pytest.raises(UserError, match="A KServe canary needs kserve.deploymentMode Knative, not Standard"):
        make_plan(
            "det", "serving", "models:/det/8", canary_uri="models:/det/9", canary_weight=5, values=std, mode="kserve"
        )
    with pytest.raises(UserError, match="--mode 'knative' is not a serving mode"):
        make_plan("det", "serving", "models:/det/8", mode="knative")


def test_plan_follows_the_values_mode_and_clears_a_stale_canary_percent():
    plan = make_plan(
        "det",
        "serving",
        "models:/det/8",
        values={"serving": {"mode": "kserve"}, "kserve": {"canaryTrafficPercent": 20}},
    )
    assert plan.mode == "kserve" and plan.values["kserve"]["canaryTrafficPercent"] is None
    assert any("canaryTrafficPercent 20 from the values is cleared" in n for n in plan.notes)


def test_dry_run_renders_the_inference_service_only():
    out = deploy(
        "det", "serving", "models:/det/8", mode="kserve", canary_uri="models:/det/9", canary_weight=25, dry_run=True
    )
    assert out["status"] == "dry-run" and out["inference_service"] == NAME and out["deployments"] == []
    assert "kind: InferenceService" in out["manifests"] and "kind: Deployment" not in out["manifests"]
    assert "canaryTrafficPercent: 25" in out["manifests"]


def test_cli_dry_run_and_a_bad_mode(capsys):
    args = ["deploy", "--release", "det", "-n", "serving", "--model-uri", "models:/det/8", "--dry-run"]
    code, out, _ = run_cli(capsys, *args, "--mode", "kserve")
    assert code == 0 and "kind: InferenceService" in out
    code, out, err = run_cli(capsys, *args, "--mode", "seldon")
    assert code != 0 and "--mode 'seldon' is not a serving mode" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# -- the inference through a URL with another Host header -------------------------------------------------
def test_smoke_sends_the_host_header():
    seen: list[str] = []

    class Gateway(BaseHTTPRequestHandler):
        def _reply(self, body: bytes, ctype="application/json"):
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            seen.append(self.headers["Host"])
            if self.path == "/demo.jpg":
                self._reply(b"\xff\xd8jpeg", "image/jpeg")
            else:
                self._reply(json.dumps({"name": "detector", "versions": ["9"]}).encode())

        def do_POST(self):
            seen.append(self.headers["Host"])
            self.rfile.read(int(self.headers["Content-Length"]))
            self._reply(json.dumps({"model_name": "detector", "results": [{"detections": []}]}).encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = smoke.run(
            f"http://127.0.0.1:{server.server_port}", "detector", timeout=5, host="det.serving.example.com", echo=str
        )
    finally:
        server.shutdown()
        server.server_close()
    assert out["detections"] == 0 and seen == ["det.serving.example.com"] * 4
