"""`kubedistill deploy`: the plan, the rollout wait against recorded Kubernetes API responses (as client
models, and served over loopback HTTP to the real client), the upgrade / test / rollback logic with a
scripted Helm engine, and the CLI. No cluster: nothing here talks to a real API server."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

from kubedistill.core.errors import UserError
from kubedistill.deploy import helm
from kubedistill.deploy.chart import find_chart
from kubedistill.deploy.helm import HelmActionError, user_values
from kubedistill.deploy.plan import check_pinned_uri, make_plan, split_replicas
from kubedistill.deploy.rollout import deployment_progress, kube_clients, pod_problems, wait_for_rollout
from kubedistill.deploy.run import deploy
from tests.k8s_api import RecordedApiServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "k8s"
STABLE, CANARY = "det-kubedistill", "det-kubedistill-canary"


def recorded(name: str, kind: str):
    """A fixture JSON turned into a kubernetes.client model by the client's own deserializer."""
    from kubernetes.client import ApiClient

    class _Response:
        data = (FIXTURES / name).read_text()

    return ApiClient().deserialize(_Response(), kind)


class Clock:
    """monotonic() and sleep() for the wait loops: time passes only when they sleep."""

    def __init__(self):
        self.t = 0.0
        self.sleeps = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.sleeps.append(dt)
        self.t += dt


class Apps:
    """AppsV1Api stand-in: each read returns the next recorded Deployment (the last one repeats)."""

    def __init__(self, script: dict[str, list]):
        self.script = {k: list(v) for k, v in script.items()}
        self.reads: list[str] = []

    def read_namespaced_deployment_status(self, name, namespace):
        assert namespace == "serving"
        self.reads.append(name)
        seq = self.script[name]
        item = seq.pop(0) if len(seq) > 1 else seq[0]
        if isinstance(item, Exception):
            raise item
        return recorded(item, "V1Deployment")


class Core:
    def __init__(self, script: list[str]):
        self.script = list(script)
        self.selectors: list[str] = []

    def list_namespaced_pod(self, namespace, label_selector):
        self.selectors.append(label_selector)
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return recorded(item, "V1PodList")


def wait(apps, core, names=(STABLE,), timeout=30.0, **kw):
    clock = Clock()
    res = wait_for_rollout(
        apps, core, "serving", list(names), timeout=timeout, poll=2.0, clock=clock, sleep=clock.sleep, **kw
    )
    return res, clock


# -- the plan -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "uri",
    [
        "models:/det/7",
        "models:/yolo-student/12",
        "s3://models/det/v7/model.onnx",
        "models:/m-0f3c9a7e21b84d5c9e6a1b2c3d4e5f60",  # an MLflow LoggedModel: immutable
    ],
)
def test_pinned_uris_pass(uri):
    assert check_pinned_uri(uri) == uri


@pytest.mark.parametrize(
    "uri, why",
    [
        ("models:/det@champion", "registry alias \\(@champion\\), which moves"),
        ("models:/det/latest", "follows the latest version"),
        ("models:/det/Production", "'Production' is not a version number"),
        ("models:/det", "names no version"),
        ("runs:/abc/model", "not a model URI a Deployment can pin"),
        ("/data/model.onnx", "not a model URI a Deployment can pin"),
    ],
)
def test_moving_or_unknown_uris_are_refused(uri, why):
    with pytest.raises(UserError, match=why) as e:
        check_pinned_uri(uri)
    assert "models:/NAME/VERSION" in str(e.value)


@pytest.mark.parametrize(
    "weight, total, expect",
    [
        (10, 4, (4, 1)),
        (10, 9, (9, 1)),
        (25, 6, (6, 2)),
        (50, 3, (3, 3)),
        (75, 2, (1, 2)),
        (90, 9, (1, 9)),
        (1, 2, (2, 1)),
        (99, 1, (1, 1)),
    ],
)
def test_canary_weight_to_replicas(weight, total, expect):
    assert split_replicas(weight, total) == expect


def test_canary_split_is_monotonic_and_symmetric():
    for total in range(1, 11):
        shares = []
        for w in range(1, 100):
            s, c = split_replicas(w, total)
            assert s >= 1 and c >= 1 and max(s, c) == total
            assert split_replicas(100 - w, total) == (c, s)
            shares.append(c / (s + c))
        assert shares == sorted(shares)
        if (
            total >= 9
        ):  # enough replicas: within 5 points of the asked share from 10% to 90% (one pod is the floor below)
            assert max(abs(sh - w / 100) for sh, w in zip(shares, range(1, 100)) if 10 <= w <= 90) < 0.05


@pytest.mark.parametrize("weight", [0, 100, -5, 50.5, True])
def test_canary_weight_out_of_range(weight):
    with pytest.raises(UserError, match="--canary-weight .* out of range"):
        split_replicas(weight, 4)


def test_plan_sets_model_replicas_and_canary():
    defaults = yaml.safe_load((find_chart() / "values.yaml").read_text())
    plan = make_plan(
        "det",
        "serving",
        "models:/det/7",
        canary_uri="models:/det/8",
        canary_weight=20,
        values={"replicaCount": 4, "model": {"name": "people"}},
        defaults=defaults,
    )
    assert plan.values == {
        "replicaCount": 4,
        "model": {"name": "people", "uri": "models:/det/7"},
        "canary": {"enabled": True, "model": {"uri": "models:/det/8"}, "replicas": 1},
    }
    assert plan.replicas == {"stable": 4, "canary": 1} and plan.canary_share == pytest.approx(0.2)
    assert plan.notes == []
    coarse = make_plan(
        "det", "serving", "models:/det/7", canary_uri="models:/det/8", canary_weight=10, defaults=defaults
    )
    assert coarse.replicas == {"stable": 2, "canary": 1}
    assert any("about 33% of requests, not 10%" in n for n in coarse.notes)


def test_plan_with_autoscaling_sizes_the_canary_against_min_replicas():
    defaults = yaml.safe_load((find_chart() / "values.yaml").read_text())
    plan = make_plan(
        "det",
        "serving",
        "models:/det/7",
        canary_uri="models:/det/8",
        canary_weight=25,
        values={"autoscaling": {"enabled": True, "minReplicas": 6, "maxReplicas": 12}},
        defaults=defaults,
    )
    assert "replicaCount" not in plan.values
    assert plan.values["canary"]["replicas"] == 2 and plan.replicas["stable"] == "6-12 (autoscaled)"
    assert any("share falls as the autoscaler adds stable pods" in n for n in plan.notes)


@pytest.mark.parametrize(
    "kw, why",
    [
        ({"canary_uri": "models:/det/8"}, "needs both --canary-uri and --canary-weight"),
        ({"canary_weight": 10}, "needs both --canary-uri and --canary-weight"),
        (
            {"canary_uri": "models:/det@challenger", "canary_weight": 10},
            "--canary-uri 'models:/det@challenger' is a registry alias",
        ),
    ],
)
def test_plan_refuses_half_a_canary(kw, why):
    with pytest.raises(UserError, match=why):
        make_plan("det", "serving", "models:/det/7", **kw)


@pytest.mark.parametrize(
    "release, namespace", [("Det", "serving"), ("det", "serving_ns"), ("a" * 54, "x"), ("det-", "x"), ("det", "")]
)
def test_plan_refuses_bad_names(release, namespace):
    with pytest.raises(UserError, match="is not a valid name"):
        make_plan(release, namespace, "models:/det/7")


def test_user_values_merge_files_then_sets(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("replicaCount: 3\nresources:\n  limits: {cpu: '4', memory: 4Gi}\n")
    b.write_text("replicaCount: 5\nserver: {threads: 4}\n")
    got = user_values([a, b], ["replicaCount=6", "ingress.enabled=true,ingress.hosts[0].host=det.example.com"])
    assert got == {
        "replicaCount": 6,
        "resources": {"limits": {"cpu": "4", "memory": "4Gi"}},
        "server": {"threads": 4},
        "ingress": {"enabled": True, "hosts": [{"host": "det.example.com"}]},
    }
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        user_values([tmp_path / "bad.yaml"])
    with pytest.raises(UserError, match="Values file .*missing.yaml. does not exist"):
        user_values([tmp_path / "missing.yaml"])


# -- reading a Deployment's progress and its pods -----------------------------------------------------
@pytest.mark.parametrize(
    "fixture, state, words",
    [
        ("deployment_unobserved.json", "waiting", "waiting for the controller to see generation 8"),
        ("deployment_surge.json", "waiting", "1 of 2 replicas updated"),
        ("deployment_old_left.json", "waiting", "1 old replica(s) still running"),
        ("deployment_complete.json", "done", "2 of 2 replicas updated, ready and available"),
        ("deployment_deadline.json", "failed", 'ReplicaSet "det-kubedistill-7f8b9c6d4f" has timed out progressing'),
    ],
)
def test_deployment_progress(fixture, state, words):
    got_state, msg = deployment_progress(recorded(fixture, "V1Deployment"))
    assert got_state == state and words in msg


def test_pod_problems_carry_the_pods_own_words():
    crash = pod_problems(recorded("pods_crashloop.json", "V1PodList"))
    assert len(crash) == 1 and crash[0].reason == "CrashLoopBackOff" and crash[0].restarts == 4
    assert "last exit code 2 (Error): error: Model version models:/det/8 does not exist in the MLflow registry" in str(
        crash[0]
    )
    assert [p.reason for p in pod_problems(recorded("pods_unschedulable.json", "V1PodList"))] == ["Unschedulable"]
    assert pod_problems(recorded("pods_running.json", "V1PodList")) == []


# -- waiting for the rollout --------------------------------------------------------------------------
def test_rollout_completes_after_the_surge(caplog):
    apps = Apps(
        {
            STABLE: [
                "deployment_unobserved.json",
                "deployment_surge.json",
                "deployment_old_left.json",
                "deployment_complete.json",
            ]
        }
    )
    core = Core(["pods_running.json"])
    with caplog.at_level(logging.INFO, logger="kubedistill.deploy"):
        res, clock = wait(apps, core)
    assert res.ok and "2 of 2 replicas updated, ready and available" in res.reason
    assert apps.reads == [STABLE] * 4 and clock.sleeps == [2.0] * 3
    assert (
        core.selectors[0]
        == "app.kubernetes.io/component=server,app.kubernetes.io/instance=det,app.kubernetes.io/name=kubedistill,"
        "kubedistill.io/track=stable"
    )
    assert "1 old replica(s) still running" in caplog.text


def test_rollout_waits_for_stable_and_canary():
    apps = Apps(
        {STABLE: ["deployment_complete.json"], CANARY: ["deployment_surge.json", "deployment_canary_complete.json"]}
    )
    res, _ = wait(apps, Core(["pods_running.json"]), names=(STABLE, CANARY))
    assert res.ok and set(res.states) == {STABLE, CANARY}
    assert apps.reads.count(CANARY) == 2


def test_progress_deadline_fails_with_its_message():
    res, clock = wait(
        Apps({STABLE: ["deployment_surge.json", "deployment_deadline.json"]}), Core(["pods_running.json"])
    )
    assert not res.ok and "has timed out progressing" in res.reason and clock.t == 2.0


def test_crash_loop_fails_fast_with_the_containers_last_words():
    res, clock = wait(Apps({STABLE: ["deployment_surge.json"]}), Core(["pods_crashloop.json"]), timeout=300)
    assert not res.ok and clock.t == 0.0
    assert "CrashLoopBackOff after 4 restarts" in res.reason
    assert "Model version models:/det/8 does not exist in the MLflow registry" in res.reason


def test_one_crash_is_not_a_failure():
    res, _ = wait(
        Apps({STABLE: ["deployment_surge.json", "deployment_surge.json", "deployment_complete.json"]}),
        Core(["pods_crash_once.json", "pods_running.json"]),
    )
    assert res.ok


def test_missing_secret_fails_at_once():
    res, _ = wait(Apps({STABLE: ["deployment_surge.json"]}), Core(["pods_config_error.json"]), timeout=300)
    assert not res.ok and 'CreateContainerConfigError: secret "mlflow-credentials" not found' in res.reason


def test_image_pull_gets_a_grace_period_then_fails():
    res, clock = wait(
        Apps({STABLE: ["deployment_surge.json"]}), Core(["pods_imagepull.json"]), timeout=300, pull_grace=60
    )
    assert not res.ok and 60 <= clock.t <= 62
    assert 'ImagePullBackOff: Back-off pulling image "kubedistill/serve:0.1.1" (for 60 s)' in res.reason


def test_timeout_says_what_was_pending_and_why():
    res, clock = wait(Apps({STABLE: ["deployment_surge.json"]}), Core(["pods_unschedulable.json"]), timeout=30)
    assert not res.ok and clock.t == 30.0
    assert res.reason.startswith("timed out after 30 s; det-kubedistill: 1 of 2 replicas updated")
    assert "Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu" in res.reason


def test_transient_api_errors_are_retried_and_forbidden_is_not():
    from kubernetes.client.exceptions import ApiException

    flaky = Apps(
        {
            STABLE: [
                ApiException(status=503, reason="Service Unavailable"),
                ApiException(status=0, reason="connection reset"),
                "deployment_complete.json",
            ]
        }
    )
    res, clock = wait(flaky, Core(["pods_running.json"]))
    assert res.ok and clock.t == 4.0
    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = (FIXTURES / "status_forbidden.json").read_text()
    res, clock = wait(Apps({STABLE: [forbidden]}), Core(["pods_running.json"]))
    assert not res.ok and clock.t == 0.0
    assert res.reason.startswith(
        'cannot read Deployment det-kubedistill: 403 Forbidden (deployments.apps "det-kubedistill" is forbidden'
    )
    res, _ = wait(
        Apps({STABLE: [ApiException(status=503, reason="Service Unavailable")]}),
        Core(["pods_running.json"]),
        timeout=10,
    )
    assert (
        not res.ok
        and "timed out after 10 s" in res.reason
        and "last API error: reading det-kubedistill: 503 Service Unavailable" in res.reason
    )


# -- the real Kubernetes client against recorded responses on loopback --------------------------------
def recorded_api(deployments: dict[str, list] | None = None, pods=(), extra: dict | None = None) -> RecordedApiServer:
    """The two GETs of the rollout wait (each Deployment's status, the release's pods) answered from fixtures in
    order, and `extra`: a path prefix -> a JSON body, for anything else."""
    routes = {
        ("GET", f"/apis/apps/v1/namespaces/serving/deployments/{name}/status"): list(seq)
        for name, seq in (deployments or {}).items()
    }
    if pods:
        routes[("GET", "/api/v1/namespaces/serving/pods")] = list(pods)
    for prefix, body in (extra or {}).items():
        routes[("GET", re.escape(prefix) + ".*")] = [body]
    return RecordedApiServer(routes, namespace="serving")


def test_real_client_waits_through_recorded_responses(tmp_path):
    with recorded_api(
        {STABLE: [(503, "etcd leader changed"), "deployment_surge.json", "deployment_complete.json"]},
        ["pods_running.json"],
    ) as api:
        apps, core = kube_clients(str(api.kubeconfig(tmp_path)))
        res = wait_for_rollout(apps, core, "serving", [STABLE], timeout=20, poll=0.01)
    assert res.ok, res.reason
    assert len(api.calls("GET", "/deployments/det-kubedistill/status$")) == 3
    pods = api.calls("GET", "/namespaces/serving/pods$")
    assert pods and all("app.kubernetes.io/instance=det" in query["labelSelector"][0] for _, _, query, _ in pods)
    assert set(api.auth) == {"Bearer t0ken"}  # the kubeconfig's credentials


def test_real_client_stops_on_forbidden(tmp_path):
    with recorded_api({STABLE: ["status_forbidden.json"]}, ["pods_running.json"]) as api:
        apps, core = kube_clients(str(api.kubeconfig(tmp_path)))
        res = wait_for_rollout(apps, core, "serving", [STABLE], timeout=20, poll=0.01)
    assert not res.ok and "403 Forbidden" in res.reason and 'cannot get resource "deployments/status"' in res.reason


def test_no_kubeconfig_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UserError, match="No usable Kubernetes configuration"):
        kube_clients(str(tmp_path / "missing-kubeconfig"))


def test_helm_engine_says_when_the_cluster_is_unreachable(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "k", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            }
        )
    )
    with pytest.raises(UserError, match="Cannot reach the Kubernetes API server"):
        helm.HelmSDK("serving", kubeconfig=str(cfg))


def helm_release_secret(revision: int, status: str) -> dict:
    """A release record the way Helm stores it: a Secret whose `release` is base64(gzip(JSON)), base64-encoded again by the API."""
    import base64
    import gzip

    release = {
        "name": "det",
        "namespace": "serving",
        "version": revision,
        "config": {"model": {"uri": f"models:/det/{revision}"}},
        "info": {
            "first_deployed": "2026-11-20T09:14:02Z",
            "last_deployed": "2026-11-22T10:02:41Z",
            "deleted": "",
            "description": "kubedistill deploy",
            "status": status,
        },
        "chart": {
            "metadata": {"apiVersion": "v2", "name": "kubedistill", "version": "0.1.0", "appVersion": "0.1.0"},
            "templates": [],
            "values": {},
        },
        "manifest": "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: det-kubedistill\n",
    }
    payload = base64.b64encode(gzip.compress(json.dumps(release).encode())).decode()
    return {
        "metadata": {
            "name": f"sh.helm.release.v1.det.v{revision}",
            "namespace": "serving",
            "labels": {"owner": "helm", "name": "det", "status": status, "version": str(revision)},
        },
        "type": "helm.sh/release.v1",
        "data": {"release": base64.b64encode(payload.encode()).decode()},
    }


def test_real_helm_engine_reads_release_history(tmp_path):
    """HelmSDK.history through the real Helm engine, from release records served on loopback: the fields deploy() uses."""
    version = {"major": "1", "minor": "30", "gitVersion": "v1.30.4", "platform": "linux/amd64"}
    secrets = {
        "kind": "SecretList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1"},
        "items": [helm_release_secret(2, "superseded"), helm_release_secret(3, "deployed")],
    }
    with recorded_api(extra={"/version": version, "/api/v1/namespaces/serving/secrets": secrets}) as api:
        engine = helm.HelmSDK("serving", kubeconfig=str(api.kubeconfig(tmp_path)))
        history = engine.history("det")
    assert [(h["revision"], h["status"]) for h in history] == [(2, "superseded"), (3, "deployed")]
    secret_list = ("GET", "/api/v1/namespaces/serving/secrets", {"labelSelector": ["name=det,owner=helm"]}, None)
    assert secret_list in api.requests
    from kubedistill.deploy.run import _deployed_revision

    assert _deployed_revision(history) == 3
    secrets["items"] = []
    with recorded_api(extra={"/version": version, "/api/v1/namespaces/serving/secrets": secrets}) as api:
        assert helm.HelmSDK("serving", kubeconfig=str(api.kubeconfig(tmp_path))).history("det") == []  # a new release


# -- upgrade, wait, test, roll back -------------------------------------------------------------------
class FakeEngine:
    """A scripted HelmEngine: records every call; `fail` maps an action to the error it raises."""

    def __init__(self, history=(), fail=None, restored=(STABLE,)):
        self.calls: list[tuple] = []
        self.revisions = [dict(h) for h in history]
        self.fail = fail or {}
        self.restored = restored

    def _act(self, what, *args):
        self.calls.append((what,) + args)
        if what in self.fail:
            raise HelmActionError(self.fail[what])

    def history(self, release):
        self.calls.append(("history", release))
        return [dict(r) for r in self.revisions]

    def _new_revision(self, status="deployed"):
        for r in self.revisions:
            if r["status"] == "deployed":
                r["status"] = "superseded"
        rev = {"revision": len(self.revisions) + 1, "status": status}
        self.revisions.append(rev)
        return dict(rev)

    def install(self, chart, release, values, *, timeout):
        self._act("install", release, values)
        return self._new_revision()

    def upgrade(self, chart, release, values, *, timeout):
        assert (Path(chart) / "Chart.yaml").is_file()
        self._act("upgrade", release, values)
        return self._new_revision()

    def rollback(self, release, revision, *, timeout):
        self._act("rollback", release, revision)
        self._new_revision()

    def test(self, release, *, timeout):
        self._act("test", release)
        return {"logs": "ready after 0.4 s\none inference: 2 detection(s) in 31 ms\nok"}

    def manifest(self, release):
        self._act("manifest", release)
        return "".join(f"---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {n}\n" for n in self.restored)


def run_deploy(engine, apps, pods=("pods_running.json",), **kw):
    clock = Clock()
    return deploy(
        "det",
        "serving",
        kw.pop("model_uri", "models:/det/8"),
        engine=engine,
        kube=(apps, Core(list(pods))),
        clock=clock,
        sleep=clock.sleep,
        **kw,
    )


HISTORY = [
    {"revision": 1, "status": "superseded"},
    {"revision": 2, "status": "failed"},
    {"revision": 3, "status": "deployed"},
]


def test_first_install_then_test():
    eng = FakeEngine()
    out = run_deploy(eng, Apps({STABLE: ["deployment_surge.json", "deployment_complete.json"]}))
    assert [c[0] for c in eng.calls] == ["history", "install", "test"]
    assert eng.calls[1][2] == {"model": {"uri": "models:/det/8"}}
    assert (
        out["status"] == "deployed" and out["revision"] == 1 and out["rolled_back"] is False and out["reason"] is None
    )
    assert out["deployments"] == [STABLE] and "one inference" in out["test_logs"]
    json.dumps(out)  # the summary is JSON-able


def test_upgrade_of_a_running_release():
    eng = FakeEngine(HISTORY)
    out = run_deploy(eng, Apps({STABLE: ["deployment_complete.json"]}), values={"replicaCount": 3})
    assert [c[0] for c in eng.calls] == ["history", "upgrade", "test"]
    assert out["status"] == "deployed" and out["revision"] == 4 and out["previous_revision"] == 3


def test_crash_looping_rollout_rolls_back_and_says_why():
    eng = FakeEngine(HISTORY)
    apps = Apps({STABLE: ["deployment_surge.json", "deployment_surge.json", "deployment_complete.json"]})
    out = run_deploy(eng, apps, pods=("pods_crashloop.json", "pods_running.json"))
    assert [c[0] for c in eng.calls] == ["history", "upgrade", "rollback", "manifest"]
    assert eng.calls[2] == ("rollback", "det", 3)
    assert out["status"] == "rolled-back" and out["rolled_back"] is True and out["revision"] == 4
    assert out["reason"].startswith("rollout of revision 4 did not complete:")
    assert "does not exist in the MLflow registry" in out["reason"]
    assert out["rollback_rollout"] == "complete"


def test_failing_helm_test_rolls_back():
    eng = FakeEngine(
        HISTORY,
        fail={"test": "helm test: pod det-kubedistill-test failed: error: inference failed: 503 model not loaded"},
    )
    out = run_deploy(eng, Apps({STABLE: ["deployment_complete.json"]}))
    assert [c[0] for c in eng.calls] == ["history", "upgrade", "test", "rollback", "manifest"]
    assert out["status"] == "rolled-back" and out["reason"].startswith(
        "helm test failed: helm test: pod det-kubedistill-test failed"
    )


def test_failed_upgrade_rolls_back():
    eng = FakeEngine(
        HISTORY,
        fail={"upgrade": 'helm upgrade: cannot patch "det-kubedistill" with kind Deployment: field is immutable'},
    )
    out = run_deploy(eng, Apps({STABLE: ["deployment_complete.json"]}))
    assert [c[0] for c in eng.calls] == ["history", "upgrade", "rollback", "manifest"]
    assert out["status"] == "rolled-back" and "field is immutable" in out["reason"] and out["revision"] is None


def test_failed_first_install_has_nothing_to_roll_back_to():
    eng = FakeEngine()
    out = run_deploy(eng, Apps({STABLE: ["deployment_surge.json"]}), pods=("pods_config_error.json",))
    assert [c[0] for c in eng.calls] == ["history", "install"]
    assert out["status"] == "failed" and out["rolled_back"] is False
    assert 'secret "mlflow-credentials" not found' in out["reason"]
    assert (
        "no earlier deployed revision to roll back to" in out["reason"]
        and "helm uninstall det -n serving" in out["reason"]
    )


def test_failed_rollback_is_reported_too():
    eng = FakeEngine(HISTORY, fail={"test": "helm test: timed out", "rollback": "helm rollback: release det not found"})
    out = run_deploy(eng, Apps({STABLE: ["deployment_complete.json"]}))
    assert out["status"] == "failed" and out["rolled_back"] is False
    assert (
        "helm test failed" in out["reason"]
        and "the rollback to revision 3 failed too: helm rollback: release det not found" in out["reason"]
    )


def test_canary_rollout_waits_for_both_and_rollback_waits_for_what_was_restored():
    eng = FakeEngine(HISTORY, fail={"test": "helm test: failed"})
    apps = Apps(
        {STABLE: ["deployment_complete.json"], CANARY: ["deployment_surge.json", "deployment_canary_complete.json"]}
    )
    out = run_deploy(eng, apps, model_uri="models:/det/8", canary_uri="models:/det/9", canary_weight=30)
    assert out["deployments"] == [STABLE, CANARY]
    assert eng.calls[1][2]["canary"] == {"enabled": True, "model": {"uri": "models:/det/9"}, "replicas": 1}
    assert out["canary_share"] == pytest.approx(1 / 3) and out["replicas"] == {"stable": 2, "canary": 1}
    reads_before_rollback = apps.reads.count(CANARY)
    assert (
        out["status"] == "rolled-back" and apps.reads.count(CANARY) == reads_before_rollback == 2
    )  # revision 3 had no canary


def test_rollback_wait_falls_back_to_the_stable_deployment():
    eng = FakeEngine(
        HISTORY,
        fail={"test": "helm test: failed", "manifest": "helm status: the server could not find the requested resource"},
    )
    apps = Apps({STABLE: ["deployment_complete.json"], CANARY: ["deployment_canary_complete.json"]})
    out = run_deploy(eng, apps, canary_uri="models:/det/9", canary_weight=30)
    assert out["status"] == "rolled-back" and out["rollback_rollout"] == "complete"
    assert apps.reads == [STABLE, CANARY, STABLE]  # after the rollback: the stable Deployment only


def test_release_with_an_operation_in_progress_is_refused():
    eng = FakeEngine(HISTORY + [{"revision": 4, "status": "pending-upgrade"}])
    with pytest.raises(UserError, match="operation in progress \\(revision 4 is pending-upgrade\\)"):
        run_deploy(eng, Apps({STABLE: ["deployment_complete.json"]}))
    assert [c[0] for c in eng.calls] == ["history"]


def test_bad_request_stops_before_the_cluster():
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"engine.{name} called")

    for kw, why in [
        ({"values": {"replicaCount": 0}}, "at '/replicaCount'"),
        ({"model_uri": "models:/det@champion"}, "registry alias"),
        ({"timeout": 0}, "--timeout 0 must be positive"),
    ]:
        with pytest.raises(UserError, match=why):
            run_deploy(Untouchable(), Apps({}), **kw)


def test_dry_run_renders_without_a_cluster():
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"engine.{name} called")

    out = run_deploy(
        Untouchable(), Apps({}), dry_run=True, canary_uri="models:/det/9", canary_weight=50, values={"replicaCount": 3}
    )
    assert out["status"] == "dry-run" and out["revision"] is None
    docs = [d for d in yaml.safe_load_all(out["manifests"]) if d]
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert deps[STABLE]["spec"]["replicas"] == 3 and deps[CANARY]["spec"]["replicas"] == 3
    assert "# Source: kubedistill/templates/deployment.yaml" in out["manifests"]
    assert any(d["kind"] == "Pod" and d["metadata"]["annotations"]["helm.sh/hook"] == "test" for d in docs)


def test_deploy_end_to_end_with_the_real_kubernetes_client(tmp_path):
    """deploy() builds its own Kubernetes clients from --kubeconfig; the API answers are recorded ones on loopback."""
    with recorded_api(
        {STABLE: ["deployment_unobserved.json", "deployment_complete.json"]}, ["pods_running.json"]
    ) as api:
        eng = FakeEngine(HISTORY)
        out = deploy(
            "det",
            "serving",
            "models:/det/8",
            engine=eng,
            kubeconfig=str(api.kubeconfig(tmp_path)),
            poll=0.01,
            timeout=20,
        )
    assert out["status"] == "deployed" and out["revision"] == 4, out
    with recorded_api({STABLE: ["deployment_deadline.json"]}, ["pods_crashloop.json"]) as api:
        eng = FakeEngine(HISTORY)
        out = deploy(
            "det",
            "serving",
            "models:/det/8",
            engine=eng,
            kubeconfig=str(api.kubeconfig(tmp_path)),
            poll=0.01,
            timeout=5,
        )
    assert out["status"] == "rolled-back" and "has timed out progressing" in out["reason"]
    assert "does not exist in the MLflow registry" in out["reason"]


# -- the CLI ------------------------------------------------------------------------------------------
def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from kubedistill.cli import main

    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_dry_run_prints_values_then_manifests(capsys, tmp_path):
    vf = tmp_path / "prod.yaml"
    vf.write_text("replicaCount: 4\nmlflow: {trackingUri: 'http://mlflow.mlops.svc:5000'}\n")
    code, out, err = run_cli(
        capsys,
        "deploy",
        "--release",
        "det",
        "-n",
        "serving",
        "--model-uri",
        "models:/det/8",
        "--canary-uri",
        "models:/det/9",
        "--canary-weight",
        "20",
        "-f",
        str(vf),
        "--set",
        "server.threads=4",
        "--dry-run",
        "--json",
        str(tmp_path / "plan.json"),
    )
    assert code == 0, err
    head, _, manifests = out.partition("\n---\n")
    assert "# kubedistill deploy --dry-run: release det in namespace serving" in head
    assert "# replicas: {'stable': 4, 'canary': 1}, canary share ~20%" in head
    assert (
        "#   replicaCount: 4" in head
        and "#       uri: models:/det/9" in head
        and "#   server:\n#     threads: 4" in head
    )
    docs = [d for d in yaml.safe_load_all("---\n" + manifests) if d]
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    assert json.loads((tmp_path / "plan.json").read_text())["values"]["server"] == {"threads": 4}


def test_cli_refuses_an_alias_in_one_line(capsys):
    code, out, err = run_cli(
        capsys, "deploy", "--release", "det", "-n", "serving", "--model-uri", "models:/det@champion", "--dry-run"
    )
    assert code == 2 and out == ""
    assert err.startswith(
        "error: --model-uri 'models:/det@champion' is a registry alias (@champion), which moves. Pin a version"
    )
    assert err.count("\n") == 1 and "Traceback" not in err


def test_cli_bad_value_in_one_line(capsys):
    code, _, err = run_cli(
        capsys,
        "deploy",
        "--release",
        "det",
        "-n",
        "serving",
        "--model-uri",
        "models:/det/8",
        "--set",
        "service.type=Magic",
        "--dry-run",
    )
    assert code == 2 and err.startswith("error: The chart refused the values: at '/service/type': value must be one of")
    assert err.count("\n") == 1
