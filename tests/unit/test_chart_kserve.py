"""serving.mode kserve: the chart renders one KServe InferenceService (real Helm engine), checked against the API
models the kserve package publishes on PyPI (tests/kserve_schema.py), and the rest of what it renders against the
Kubernetes schemas."""

from __future__ import annotations

import copy

import pytest

from kubedistill.core.errors import UserError
from kubedistill.deploy import helm
from tests.kserve_schema import problems
from tests.unit.test_chart import CHART, KUBE_VERSIONS, helm_values, kinds, render, validate_all

KSERVE = {"serving": {"mode": "kserve"}}
CASES = {
    "knative": {},
    "knative-canary": {"kserve": {"canaryTrafficPercent": 10, "containerConcurrency": 8, "minReplicas": 0}},
    "standard-gpu": {
        "kserve": {"deploymentMode": "Standard", "scaleMetric": "cpu", "scaleTarget": 70},
        "gpu": {"enabled": True, "count": 1},
        "affinity": {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 50,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "det"}},
                        },
                    }
                ]
            }
        },
    },
    "legacy-names": {"kserve": {"deploymentMode": "RawDeployment", "scaleMetric": "memory"}},
    "credentials": {
        "credentials": {"existingSecret": "det-creds", "secretKeys": {"AWS_ACCESS_KEY_ID": "access-key"}},
        "extraEnv": [{"name": "LOG_FORMAT", "value": "json"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "podLabels": {"team": "vision"},
        "podAnnotations": {"sidecar.istio.io/inject": "true"},
    },
}


def kserve(values: dict | None = None) -> list[dict]:
    from kubedistill.deploy.plan import deep_merge

    return render(deep_merge(KSERVE, values or {}))


def isvc_of(objs: list[dict]) -> dict:
    (isvc,) = kinds(objs)["InferenceService"]
    return isvc


@pytest.mark.parametrize("case", sorted(CASES))
def test_inference_service_fits_kserves_published_models(case):
    objs = kserve(CASES[case])
    assert problems(isvc_of(objs)) == []
    # everything else the mode renders is plain Kubernetes, valid for the oldest and newest version
    rest = [o for o in objs if o["kind"] != "InferenceService"]
    assert sorted(o["kind"] for o in rest) == ["ConfigMap", "Pod", "ServiceAccount"]
    assert validate_all(rest, [KUBE_VERSIONS[0], KUBE_VERSIONS[-1]]) == 6


def test_the_schema_check_is_real():
    """The published models catch a misspelt field, a wrong type and a missing required field."""
    isvc = isvc_of(kserve())
    bad = copy.deepcopy(isvc)
    pred = bad["spec"]["predictor"]
    pred["canaryTraficPercent"] = 10
    pred["minReplicas"] = "1"
    pred["containers"][0]["ports"] = [{"protocol": "TCP"}]
    found = problems(bad)
    assert "$.spec.predictor.canaryTraficPercent: unknown field of V1beta1PredictorSpec" in found
    assert "$.spec.predictor.minReplicas: '1' is not int" in found
    assert any("ports[0]: V1ContainerPort" in p and "container_port" in p for p in found), found
    no_predictor = copy.deepcopy(isvc)
    no_predictor["spec"] = {}
    assert any("predictor" in p for p in problems(no_predictor))


def test_custom_predictor_runs_the_serve_image_like_the_deployment():
    objs = kserve()
    isvc = isvc_of(objs)
    assert "Deployment" not in kinds(objs) and "Service" not in kinds(objs)
    meta, pred = isvc["metadata"], isvc["spec"]["predictor"]
    assert meta["name"] == "det-kubedistill" and meta["namespace"] == "serving"
    assert meta["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    assert meta["annotations"]["serving.kserve.io/enable-tag-routing"] == "true"
    assert meta["annotations"]["kubedistill.io/model-uri"] == "models:/det/7"
    assert (pred["minReplicas"], pred["maxReplicas"], pred["scaleMetric"], pred["scaleTarget"]) == (
        1,
        3,
        "concurrency",
        4,
    )
    assert "canaryTrafficPercent" not in pred and pred["timeout"] == 60
    (c,) = pred["containers"]
    assert c["name"] == "kserve-container"  # the name KServe looks for
    assert c["image"] == "kubedistill/serve:0.1.0"
    assert c["args"][:3] == ["serve", "--model", "models:/det/7"]
    assert c["ports"] == [{"containerPort": 8000, "protocol": "TCP"}]  # Knative allows no other port name
    for probe, path in [("startupProbe", "/v2/health/live"), ("readinessProbe", "/v2/health/ready")]:
        assert c[probe]["httpGet"] == {"path": path, "port": 8000}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["runAsUser"] == 10001 and sc["capabilities"] == {"drop": ["ALL"]} and "privileged" not in sc
    assert "securityContext" not in pred  # Knative takes pod-level settings only behind a feature flag
    assert c["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/var/cache/kubedistill", "/tmp"}
    assert pred["serviceAccountName"] == "det-kubedistill" and pred["automountServiceAccountToken"] is False
    assert pred["labels"]["app.kubernetes.io/instance"] == "det"
    assert pred["annotations"]["kubedistill.io/model-uri"] == "models:/det/7"
    assert "checksum/config" in pred["annotations"]


def test_container_args_parse_with_the_real_command_line():
    from typer.main import get_command

    from kubedistill.cli import app

    (c,) = isvc_of(kserve())["spec"]["predictor"]["containers"]
    params = get_command(app).commands["serve"].make_context("serve", list(c["args"][1:])).params
    assert params["model"] == "models:/det/7" and params["port"] == 8000 and params["host"] == "0.0.0.0"


def test_canary_percent_and_standard_mode_with_gpu():
    pred = isvc_of(kserve(CASES["knative-canary"]))["spec"]["predictor"]
    assert pred["canaryTrafficPercent"] == 10 and pred["containerConcurrency"] == 8 and pred["minReplicas"] == 0
    isvc = isvc_of(kserve(CASES["standard-gpu"]))
    pred = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "hpa"
    assert "serving.kserve.io/enable-tag-routing" not in isvc["metadata"]["annotations"]
    assert pred["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pred["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pred["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pred["securityContext"]["fsGroup"] == 10001 and pred["terminationGracePeriodSeconds"] == 45
    assert "containerConcurrency" not in pred


def test_helm_test_pod_calls_the_predictor():
    from kubedistill.deploy.smoke import parser

    (pod,) = kinds(kserve())["Pod"]
    args = parser().parse_args(pod["spec"]["containers"][0]["args"])
    assert args.url == "http://det-kubedistill-predictor.serving.svc.cluster.local" and args.model == "detector"


def test_notes_tell_how_to_call_the_inference_service():
    notes = helm.render(CHART, helm_values(KSERVE), release="det", namespace="serving")[
        "kubedistill/templates/NOTES.txt"
    ]
    assert "InferenceService\ndet-kubedistill (Knative, 1-3 replicas)" in notes
    assert "get inferenceservice det-kubedistill -o jsonpath='{.status.url}'" in notes


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"kserve": {"deploymentMode": "Standard", "scaleMetric": "cpu", "canaryTrafficPercent": 10}},
            "kserve.canaryTrafficPercent needs kserve.deploymentMode Knative",
        ),
        (
            {"canary": {"enabled": True, "model": {"uri": "models:/det/8"}}},
            "canary.enabled is for serving.mode deployment",
        ),
        ({"autoscaling": {"enabled": True}}, "set kserve.minReplicas, maxReplicas, scaleMetric and scaleTarget"),
        ({"ingress": {"enabled": True}}, "KServe exposes the InferenceService through its own ingress"),
        ({"serviceMonitor": {"enabled": True}}, "scrape the predictor pods' /metrics"),
        ({"kserve": {"minReplicas": 4, "maxReplicas": 2}}, "kserve.minReplicas 4 is above kserve.maxReplicas 2"),
        ({"kserve": {"scaleMetric": "cpu"}}, "kserve.scaleMetric cpu needs deploymentMode Standard"),
        ({"kserve": {"deploymentMode": "Standard"}}, "kserve.scaleMetric concurrency needs deploymentMode Knative"),
        ({"kserve": {"deploymentMode": "Serverles"}}, "at '/kserve/deploymentMode'"),
        ({"kserve": {"canaryTrafficPercent": 100}}, "at '/kserve/canaryTrafficPercent': maximum"),
        ({"serving": {"mode": "kfserving"}}, "at '/serving/mode'"),
        ({"model": {"uri": "models:/det@champion"}}, "moving"),
    ],
)
def test_values_that_do_not_fit_kserve_are_refused_naming_them(values, message):
    from kubedistill.deploy.plan import deep_merge

    with pytest.raises(UserError) as e:
        helm.render(CHART, helm_values(deep_merge(KSERVE, values)), release="det", namespace="serving")
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_lint_strict_passes_in_kserve_mode():
    for name, values in CASES.items():
        from kubedistill.deploy.plan import deep_merge

        report = helm.lint(CHART, helm_values(deep_merge(KSERVE, values)), strict=True, kube_version="v1.30.0")
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        assert not bad and not report["errors"], (name, report)
