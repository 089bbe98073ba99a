"""The Helm chart, rendered by the real Helm engine in-process (helm-python-sdk): lint, schema, manifests
valid for Kubernetes 1.30-1.37 (kubernetes-validate, strict), and the settings every pod must have."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

import kubedistill
import kubedistill.images
from kubedistill.core.errors import UserError
from kubedistill.deploy import helm
from kubedistill.deploy.chart import PACKAGED_CHART, chart_values, find_chart

CHART = find_chart()
KUBE_VERSIONS = [f"1.{m}.0" for m in range(30, 38)]  # the chart's range: kubeVersion >=1.30
MODEL = {"model": {"uri": "models:/det/7"}}

MATRIX = {
    "gpu": {
        "gpu": {"enabled": True, "count": 2},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
    },
    "ingress": {
        "ingress": {
            "enabled": True,
            "className": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "20m"},
            "hosts": [{"host": "det.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            "tls": [{"secretName": "det-tls", "hosts": ["det.example.com"]}],
        }
    },
    "hpa": {
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 6,
            "customMetric": {"enabled": True},
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        }
    },
    "canary": {"canary": {"enabled": True, "model": {"uri": "models:/det/8"}, "replicas": 1}},
    "servicemonitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    "restricted": {
        "networkPolicy": {
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}],
            "egress": {"restrict": True, "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
        },
        "credentials": {
            "existingSecret": "det-creds",
            "secretKeys": {"AWS_ACCESS_KEY_ID": "access-key", "AWS_SECRET_ACCESS_KEY": "secret-key"},
        },
        "mlflow": {"trackingUri": "http://mlflow.mlops.svc:5000"},
        "s3": {"endpointUrl": "http://minio.mlops.svc:9000", "region": "us-east-1"},
    },
}


def render(values: dict | None = None, release: str = "det", namespace: str = "serving") -> list[dict]:
    return [
        obj
        for _, obj in helm.split_manifests(
            helm.render(CHART, helm_values(values), release=release, namespace=namespace)
        )
    ]


def helm_values(values: dict | None) -> dict:
    from kubedistill.deploy.plan import deep_merge

    return deep_merge(MODEL, values or {})


def kinds(objs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for o in objs:
        out.setdefault(o["kind"], []).append(o)
    return out


def pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    """(name, pod spec) of every pod the chart makes: Deployments' templates and the test Pod."""
    out = []
    for o in objs:
        if o["kind"] == "Deployment":
            out.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            out.append((o["metadata"]["name"], o["spec"]))
    return out


def validate_all(objs: list[dict], versions: list[str]) -> int:
    import kubernetes_validate

    checked = 0
    for o in objs:
        if o["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: kubernetes-validate has no schema for it (test_servicemonitor checks it)
        for v in versions:
            kubernetes_validate.validate(o, v, strict=True)
            checked += 1
    return checked


# -- lint and render ----------------------------------------------------------------------------------
def test_lint_strict_passes_for_defaults_and_matrix():
    for name, values in [("defaults", {})] + list(MATRIX.items()):
        report = helm.lint(CHART, helm_values(values), strict=True, kube_version="v1.30.0")
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        assert not bad and not report["errors"], (name, report)


def test_lint_strict_flags_a_broken_chart(tmp_path):
    """The lint is real: a template that does not parse is reported as an error."""
    import shutil

    broken = tmp_path / "kubedistill"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "service.yaml").write_text("{{ if .Values.service.port }\nkind: Service\n")
    report = helm.lint(broken, helm_values({}), strict=True)
    assert any(m["severity"] == 3 for m in report["messages"]), report
    assert any("templates/service.yaml" in e for e in report["errors"]), report


def test_default_render_is_valid_for_every_kubernetes_version():
    objs = render()
    assert sorted(kinds(objs)) == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "Pod",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    assert validate_all(objs, KUBE_VERSIONS) == len(objs) * len(KUBE_VERSIONS)


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_matrix_render_is_valid_oldest_and_newest(case):
    objs = render(MATRIX[case])
    assert validate_all(objs, [KUBE_VERSIONS[0], KUBE_VERSIONS[-1]]) > 0


def test_strict_validation_catches_a_misspelt_field():
    """kubernetes-validate in strict mode is not a formality: an unknown field fails."""
    import kubernetes_validate

    dep = copy.deepcopy(kinds(render())["Deployment"][0])
    dep["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSIONS[-1], strict=True)


# -- every pod: security, probes, resources -----------------------------------------------------------
@pytest.mark.parametrize("case", ["defaults"] + sorted(MATRIX))
def test_every_pod_is_locked_down(case):
    objs = render(MATRIX.get(case, {}))
    specs = pod_specs(objs)
    assert len(specs) >= 2  # the server Deployment(s) and the helm test Pod
    for name, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        mounts_ok = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
            assert {m["name"] for m in c.get("volumeMounts", [])} <= mounts_ok, name  # writable places are emptyDirs
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), name


@pytest.mark.parametrize("case", ["defaults", "canary", "hpa"])
def test_server_probes_cache_and_rolling_update(case):
    deps = kinds(render(MATRIX.get(case, {})))["Deployment"]
    for d in deps:
        assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
        # the model download fits in the startup probe's window (5 min by default)
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300
        env = {e["name"]: e.get("value") for e in c["env"]}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        cache = next(v for v in spec["volumes"] if v["name"] == "cache")
        assert "emptyDir" in cache and cache["emptyDir"]["sizeLimit"]
        assert env["KUBEDISTILL_CACHE"] == env["HOME"] == mounts["cache"]  # models go to $KUBEDISTILL_CACHE/models
        assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
        args = c["args"]
        assert args[:3] == ["serve", "--model", d["metadata"]["annotations"]["kubedistill.io/model-uri"]]
        assert args[args.index("--host") + 1] == "0.0.0.0" and args[args.index("--name") + 1] == "detector"
        assert spec["terminationGracePeriodSeconds"] > int(args[args.index("--graceful-timeout") + 1])
        assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize("case", ["defaults", "canary", "restricted"])
def test_container_args_parse_with_the_real_command_lines(case):
    """The server's args are `kubedistill serve` options and the test pod's are the smoke program's: parsed, not run."""
    from typer.main import get_command

    from kubedistill.cli import app
    from kubedistill.deploy.smoke import parser

    serve = get_command(app).commands["serve"]
    values = dict(
        MATRIX.get(case, {}),
        server={"threads": None, "accessLog": False, "logLevel": "debug", "maxBatchSize": 8, "maxLatencyMs": 2.5},
    )
    for _, spec in pod_specs(render(values)):
        c = spec["containers"][0]
        if c["name"] == "server":
            assert c["args"][0] == "serve"
            params = serve.make_context("serve", list(c["args"][1:])).params
            assert params["host"] == "0.0.0.0" and params["port"] == 8000 and params["name"] == "detector"
            assert params["access_log"] is False and params["log_level"] == "debug" and params["threads"] is None
            assert params["max_batch_size"] == 8 and params["max_latency_ms"] == 2.5
            assert params["model"] == c["args"][2]
        else:
            args = parser().parse_args(c["args"])
            assert (
                args.model == "detector"
                and args.timeout == 120.0
                and args.url.startswith("http://det-kubedistill.serving.svc:")
            )


def test_default_resources_and_replicas():
    dep = kinds(render())["Deployment"][0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    assert dep["spec"]["replicas"] == 2
    assert c["image"] == kubedistill.images.serve_image()


# -- model pinning and credentials --------------------------------------------------------------------
def test_a_logged_model_id_is_pinned():
    uri = "models:/m-0f3c9a7e21b84d5c9e6a1b2c3d4e5f60"
    dep = kinds(render({"model": {"uri": uri}}))["Deployment"][0]
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][2] == uri


@pytest.mark.parametrize("uri", ["models:/det@champion", "models:/det/latest", "models:/det/Production"])
def test_schema_refuses_a_moving_model(uri):
    for values in ({"model": {"uri": uri}}, {"canary": {"enabled": True, "model": {"uri": uri}}}):
        with pytest.raises(UserError, match="moving alias.*rollout is what moves the model"):
            helm.render(CHART, helm_values(values), release="det", namespace="serving")


def test_empty_model_uri_fails_with_a_clear_message():
    with pytest.raises(UserError, match="model.uri is empty: set it to a pinned model"):
        helm.render(CHART, {}, release="det", namespace="serving")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"modle": {"uri": "x"}}, "additional properties 'modle' not allowed"),
        ({"replicaCount": 0}, "at '/replicaCount': minimum: got 0, want 1"),
        ({"server": {"port": 80}}, "at '/server/port': minimum"),
        ({"server": {"maxBatchSize": 0}}, "at '/server/maxBatchSize': minimum"),
        ({"server": {"maxLatencyMs": 5000}}, "at '/server/maxLatencyMs': maximum"),
        (
            {"image": {"tag": "latest"}},
            "at '/image/tag': value must be 'a fixed tag such as the release version (latest is refused",
        ),
        ({"model": {"uri": "/data/model.onnx"}}, "at '/model/uri': '/data/model.onnx' does not match pattern"),
        (
            {"extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"}]},
            "not a literal: credentials come from credentials.existingSecret",
        ),
        ({"extraEnv": [{"name": "MLFLOW_TRACKING_TOKEN", "value": "t"}]}, "not a literal"),
        ({"credentials": {"secretKeys": {"AWS_ACCESS_KEY_ID": "k"}}}, "at '/credentials/existingSecret': minLength"),
        ({"canary": {"enabled": True}}, "a pinned model URI for the candidate"),
        ({"networkPolicy": {"egress": {"restrict": True}}}, "at '/networkPolicy/egress/to': minItems"),
        (
            {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}},
            "at '/resources/requests/cpu'",
        ),
        ({"ingress": {"enabled": True, "hosts": []}}, "at '/ingress/hosts': minItems"),
    ],
)
def test_schema_rejects_bad_values_naming_them(values, message):
    with pytest.raises(UserError) as e:
        helm.render(CHART, helm_values(values), release="det", namespace="serving")
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)  # one line for the CLI


def test_credentials_come_from_the_existing_secret_only():
    c = kinds(
        render(
            {
                "credentials": {"existingSecret": "det-creds", "secretKeys": {}},
                "extraEnv": [
                    {
                        "name": "MLFLOW_TRACKING_PASSWORD",
                        "valueFrom": {"secretKeyRef": {"name": "det-creds", "key": "pw"}},
                    },
                    {"name": "LOG_FORMAT", "value": "json"},
                ],
            }
        )
    )["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "det-creds"}} in c["envFrom"]
    c2 = kinds(render(MATRIX["restricted"]))["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]
    assert not any("secretRef" in e for e in c2["envFrom"])  # picked keys only
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c2["env"] if "valueFrom" in e}
    assert refs == {
        "AWS_ACCESS_KEY_ID": {"name": "det-creds", "key": "access-key"},
        "AWS_SECRET_ACCESS_KEY": {"name": "det-creds", "key": "secret-key"},
    }
    for objs in (render(), render(MATRIX["restricted"])):  # no literal credential anywhere in the rendered chart
        for o in objs:
            for e in _all_env(o):
                if re.search("SECRET|PASSWORD|TOKEN|ACCESS_KEY", e["name"]):
                    assert "value" not in e, (o["kind"], e)
            if o["kind"] == "ConfigMap":
                assert not any(re.search("SECRET|PASSWORD|TOKEN|ACCESS_KEY", k) for k in o["data"])
    cm = kinds(render(MATRIX["restricted"]))["ConfigMap"][0]["data"]
    assert (
        cm["MLFLOW_TRACKING_URI"] == "http://mlflow.mlops.svc:5000"
        and cm["AWS_ENDPOINT_URL"] == "http://minio.mlops.svc:9000"
    )


def _all_env(o: dict) -> list[dict]:
    spec = (
        o["spec"]["template"]["spec"] if o["kind"] == "Deployment" else o.get("spec", {}) if o["kind"] == "Pod" else {}
    )
    return [e for c in spec.get("containers", []) for e in c.get("env", [])]


def test_config_change_rolls_the_pods():
    def checksum(values):
        return kinds(render(values))["Deployment"][0]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    base = checksum({})
    assert checksum({}) == base  # stable: no roll without a change
    assert checksum({"mlflow": {"trackingUri": "http://mlflow:5000"}}) != base
    assert checksum({"model": {"name": "other"}}) != base


# -- optional parts -----------------------------------------------------------------------------------
def test_canary_is_a_second_deployment_behind_the_same_service():
    objs = kinds(render(MATRIX["canary"]))
    stable, canary = sorted(objs["Deployment"], key=lambda d: d["metadata"]["name"])
    assert (stable["metadata"]["name"], canary["metadata"]["name"]) == ("det-kubedistill", "det-kubedistill-canary")
    assert canary["spec"]["replicas"] == 1 and stable["spec"]["replicas"] == 2
    assert canary["spec"]["template"]["spec"]["containers"][0]["args"][2] == "models:/det/8"
    assert stable["spec"]["template"]["spec"]["containers"][0]["args"][2] == "models:/det/7"
    svc_sel = objs["Service"][0]["spec"]["selector"]
    for d in (stable, canary):
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert svc_sel.items() <= pod_labels.items()  # the Service sends traffic to both
        assert d["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # the two Deployments never adopt each other's pods
    assert stable["spec"]["selector"]["matchLabels"]["kubedistill.io/track"] == "stable"
    assert canary["spec"]["selector"]["matchLabels"]["kubedistill.io/track"] == "canary"
    pdb = objs["PodDisruptionBudget"][0]["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= canary["spec"]["template"]["metadata"]["labels"].items()


def test_hpa_scales_the_stable_deployment_on_cpu_and_a_custom_metric():
    objs = kinds(render(MATRIX["hpa"]))
    hpa = objs["HorizontalPodAutoscaler"][0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "det-kubedistill"}
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 70},
    }
    assert metrics["Pods"]["pods"]["metric"]["name"] == "kubedistill_http_requests_in_flight"
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 300}}
    assert "replicas" not in objs["Deployment"][0]["spec"]  # the HPA owns the count; upgrades do not reset it


def test_gpu_adds_limits_node_selector_and_tolerations():
    spec = kinds(render(MATRIX["gpu"]))["Deployment"][0]["spec"]["template"]["spec"]
    assert (
        spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    )  # a quantity: a string, as the API returns it
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in spec["tolerations"]
    assert (
        "nvidia.com/gpu"
        not in kinds(render())["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )


def test_ingress_routes_to_the_service():
    objs = kinds(render(MATRIX["ingress"]))
    ing = objs["Ingress"][0]["spec"]
    assert ing["ingressClassName"] == "nginx" and ing["tls"] == [
        {"secretName": "det-tls", "hosts": ["det.example.com"]}
    ]
    backend = ing["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": objs["Service"][0]["metadata"]["name"], "port": {"name": "http"}}


def test_servicemonitor_scrapes_the_service_metrics_port():
    """kubernetes-validate has no CRD schemas: check the ServiceMonitor's fields and that it selects the Service."""
    objs = kinds(render(MATRIX["servicemonitor"]))
    sm = objs["ServiceMonitor"][0]
    svc = objs["Service"][0]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "prometheus"
    assert set(sm["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["serving"]}
    ep = sm["spec"]["endpoints"][0]
    assert ep == {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}


def test_network_policy_opens_only_the_serving_port():
    np_default = kinds(render())["NetworkPolicy"][0]["spec"]
    assert np_default["policyTypes"] == ["Ingress"]
    assert np_default["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    np = kinds(render(MATRIX["restricted"]))["NetworkPolicy"][0]["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    peers = np["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}} in peers
    test_pod = kinds(render(MATRIX["restricted"]))["Pod"][0]
    assert any(
        "podSelector" in p and p["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()
        for p in peers
    )
    assert {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]} in np["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]} in np["egress"]


def test_helm_test_pod_waits_then_runs_one_inference():
    objs = kinds(render())
    pod = objs["Pod"][0]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "kubedistill.deploy.smoke"]
    svc = objs["Service"][0]
    url = c["args"][c["args"].index("--url") + 1]
    assert url == f"http://{svc['metadata']['name']}.serving.svc:{svc['spec']['ports'][0]['port']}"
    assert c["args"][c["args"].index("--model") + 1] == "detector"
    assert c["image"] == objs["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["image"]
    labels = pod["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= labels.items()  # the Service never routes to the test pod


def test_notes_tell_how_to_call_the_service():
    notes = helm.render(CHART, helm_values(MATRIX["canary"]), release="det", namespace="serving")[
        "kubedistill/templates/NOTES.txt"
    ]
    assert "kubectl --namespace serving port-forward service/det-kubedistill 8080:80" in notes
    assert "/v1/detect" in notes and "/v2/models/detector" in notes and "helm test det --namespace serving" in notes
    assert "Canary: models:/det/8 on 1 replica(s)" in notes
    ing = helm.render(CHART, helm_values(MATRIX["ingress"]), release="det", namespace="serving")[
        "kubedistill/templates/NOTES.txt"
    ]
    assert "export URL=https://det.example.com" in ing


def test_long_release_names_still_fit():
    objs = render(MATRIX["canary"], release="a" * 53)
    for o in objs:
        assert len(o["metadata"]["name"]) <= 63, o["metadata"]["name"]
    assert validate_all(objs, [KUBE_VERSIONS[-1]]) > 0


# -- images: one source -------------------------------------------------------------------------------
def test_image_refs_come_from_values_yaml_and_match_the_version():
    import kubedistill.images as images

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert images.serve_image() == f"{values['image']['repository']}:{values['image']['tag']}"
    assert images.train_image() == f"{values['trainImage']['repository']}:{values['trainImage']['tag']}"
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert values["image"]["tag"] == values["trainImage"]["tag"] == chart_meta["appVersion"] == kubedistill.__version__
    assert chart_values() == values


def test_image_refs_follow_an_edited_chart(tmp_path, monkeypatch):
    import shutil

    import kubedistill.images as images

    mine = tmp_path / "chart"
    shutil.copytree(CHART, mine)
    values = yaml.safe_load((mine / "values.yaml").read_text())
    values["image"]["repository"] = "registry.example/team/serve"
    values["trainImage"]["digest"] = "sha256:" + "0" * 64
    (mine / "values.yaml").write_text(yaml.safe_dump(values))
    monkeypatch.setenv("KUBEDISTILL_CHART", str(mine))
    assert images.serve_image() == "registry.example/team/serve:0.1.0"
    assert images.train_image() == "kubedistill/train@sha256:" + "0" * 64
    dep = [
        o
        for _, o in helm.split_manifests(helm.render(find_chart(), helm_values({}), release="det", namespace="x"))
        if o["kind"] == "Deployment"
    ][0]
    assert (
        dep["spec"]["template"]["spec"]["containers"][0]["image"] == images.serve_image()
    )  # the chart reads the same block
    assert images.main(["serve"]) == 0


def test_missing_chart_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBEDISTILL_CHART", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"No Helm chart at .*nowhere.*KUBEDISTILL_CHART"):
        find_chart()
    assert find_chart(PACKAGED_CHART) == PACKAGED_CHART
