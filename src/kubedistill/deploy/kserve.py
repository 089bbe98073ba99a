"""Wait for a KServe InferenceService to take its new spec, with the Kubernetes client; say why when it does not.

An InferenceService has taken its spec when KServe has seen the newest generation (status.observedGeneration),
its Ready condition is True and, in Knative (serverless) mode, the newest revision is the newest ready one and
gets the share of requests asked for (status.components.predictor.traffic: `canary` percent, or 100). It has
failed when KServe says the model cannot load (modelStatus.transitionStatus BlockedByFailedLoad or InvalidSpec,
with lastFailureInfo), when a condition turns False for a reason that does not pass (a failed revision, a
missed progress deadline, an image that cannot be fetched), or when the predictor's pods cannot start
(`rollout.pod_problems`: a bad image, a missing Secret, a crash loop).

`custom` is a `kubernetes.client.CustomObjectsApi` and `core` a `CoreV1Api`; tests pass clients whose API server
answers with recorded responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kubedistill.core.errors import UserError
from kubedistill.core.kube import api_client, short_error, transient
from kubedistill.deploy.plan import KNATIVE_MODES
from kubedistill.deploy.rollout import RETRY_STATUS, blocking_problem, pod_problems

log = logging.getLogger("kubedistill.deploy")

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODEL_ANNOTATION = "kubedistill.io/model-uri"
STABLE_ANNOTATION = "kubedistill.io/stable-model-uri"
# condition reasons after which the revision will not become ready by itself
FAILED_REASONS = {"RevisionFailed", "ProgressDeadlineExceeded", "ContainerMissing", "ReplicaFailure"}
FAILED_TRANSITIONS = {"BlockedByFailedLoad", "InvalidSpec"}
WATCHED_CONDITIONS = ("LatestDeploymentReady", "PredictorConfigurationReady", "PredictorReady", "Ready")


@dataclass
class ServiceResult:
    ok: bool
    reason: str
    url: str | None = None  # where one inference checks the new spec: its own revision's URL, else status.url
    traffic: list[dict] = field(default_factory=list)  # [{revision, percent, latest, tag}]
    seconds: float = 0.0


def _condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def _url(value) -> str | None:
    """status URLs are strings (apis.URL); an Addressable is {url: ...}."""
    if isinstance(value, dict):
        value = value.get("url")
    return value or None


def traffic_of(obj: dict) -> list[dict]:
    pred = ((obj.get("status") or {}).get("components") or {}).get("predictor") or {}
    return [
        {
            "revision": t.get("revisionName"),
            "percent": t.get("percent"),
            "latest": bool(t.get("latestRevision")),
            "tag": t.get("tag"),
            "url": t.get("url"),
        }
        for t in pred.get("traffic") or []
    ]


def knative(obj: dict) -> bool:
    mode = (obj.get("status") or {}).get("deploymentMode") or (obj["metadata"].get("annotations") or {}).get(
        "serving.kserve.io/deploymentMode", "Knative"
    )
    return mode in KNATIVE_MODES


def service_progress(obj: dict, canary: int | None = None) -> tuple[str, str, str | None]:
    """("done" | "waiting" | "failed", message, URL to check the new spec through) for an InferenceService."""
    meta, status = obj["metadata"], obj.get("status") or {}
    name = meta["name"]
    generation, observed = meta.get("generation") or 0, status.get("observedGeneration") or 0
    if not status or observed < generation:
        return "waiting", f"{name}: waiting for KServe to see generation {generation}", None
    model = status.get("modelStatus") or {}
    if model.get("transitionStatus") in FAILED_TRANSITIONS:
        info = model.get("lastFailureInfo") or {}
        said = " ".join(str(info.get("message") or "").split())[-300:]
        code = f" (exit code {info['exitCode']})" if info.get("exitCode") else ""
        where = f" in {info['location']}" if info.get("location") else ""
        return (
            "failed",
            f"{name}: the model did not load{where}: {info.get('reason') or model['transitionStatus']}{code}"
            + (f": {said}" if said else ""),
            None,
        )
    for kind in WATCHED_CONDITIONS:
        c = _condition(status, kind)
        if c.get("status") == "False" and c.get("reason") in FAILED_REASONS:
            msg = " ".join(str(c.get("message") or "").split())[-300:]
            return "failed", f"{name}: {kind} is False ({c['reason']})" + (f": {msg}" if msg else ""), None
    ready = _condition(status, "Ready")
    if ready.get("status") != "True":
        why = ready.get("reason") or ready.get("message") or "no Ready condition yet"
        return "waiting", f"{name}: not ready ({why})", None
    if not knative(obj):
        return "done", f"{name}: ready", _url(status.get("url")) or _url(status.get("address"))
    pred = (status.get("components") or {}).get("predictor") or {}
    created, ready_rev = pred.get("latestCreatedRevision"), pred.get("latestReadyRevision")
    if not created or created != ready_rev:
        return "waiting", f"{name}: revision {created or '?'} is not ready yet (ready: {ready_rev or 'none'})", None
    want = 100 if canary is None else canary
    latest = next((t for t in traffic_of(obj) if t["latest"]), None)
    if latest is None or latest["percent"] != want or latest["revision"] not in (None, created):
        got = f"{latest['percent']}%" if latest else "none"
        return "waiting", f"{name}: revision {created} has {got} of the traffic, want {want}%", None
    split = ", ".join(f"{t['revision']} {t['percent']}%" for t in traffic_of(obj) if t["percent"])
    url = (latest.get("url") if canary is not None else None) or _url(status.get("url"))
    return "done", f"{name}: revision {created} ready; traffic {split}", url


def wait_for_service(
    custom,
    core,
    namespace: str,
    name: str,
    *,
    canary: int | None = None,
    timeout: float = 300.0,
    poll: float = 2.0,
    crash_restarts: int = 3,
    pull_grace: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ServiceResult:
    """Poll every `poll` seconds until InferenceService `name` has taken its spec, has failed, or `timeout` passes."""
    start = clock()
    deadline = start + timeout
    pull_seen: dict[tuple[str, str], float] = {}
    last_logged, last_error, msg = "", "", f"{name}: not read yet"
    problems: list = []
    while True:
        now = clock()
        try:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            pods = core.list_namespaced_pod(namespace, label_selector=f"{GROUP}/inferenceservice={name}")
        except Exception as e:  # the API server: retry what may pass, stop on the rest (e.g. 403)
            if not transient(e, RETRY_STATUS):
                return ServiceResult(
                    False, f"cannot read InferenceService {name}: {short_error(e)}", seconds=now - start
                )
            last_error = f"reading {name}: {short_error(e)}"
        else:
            state, msg, url = service_progress(obj, canary)
            traffic = [{k: v for k, v in t.items() if k != "url"} for t in traffic_of(obj)]
            if state == "done":
                return ServiceResult(True, msg, url, traffic, now - start)
            problems = pod_problems(pods)
            if state == "failed":
                return ServiceResult(
                    False, "; ".join([msg] + [str(p) for p in problems][:2]), None, traffic, now - start
                )
            stuck = blocking_problem(problems, pull_seen, now, crash_restarts=crash_restarts, pull_grace=pull_grace)
            if stuck:
                return ServiceResult(False, f"{msg}; {stuck}", None, traffic, now - start)
        if msg != last_logged:
            log.info("kserve: %s", msg)
            last_logged = msg
        if now >= deadline:
            why = [f"timed out after {timeout:.0f} s", msg] + [str(p) for p in problems[:3]]
            if last_error:
                why.append(f"last API error: {last_error}")
            return ServiceResult(False, "; ".join(why), seconds=now - start)
        sleep(max(0.0, min(poll, deadline - now)))


def read_service(custom, namespace: str, name: str) -> dict | None:
    """The live InferenceService, or None when there is none."""
    try:
        return custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except Exception as e:
        if getattr(e, "status", None) == 404:
            return None
        raise UserError(
            f"Cannot read InferenceService {name} in {namespace}: {short_error(e)}",
            "Check that KServe is installed and that your identity may get inferenceservices.serving.kserve.io there",
        ) from None


def stable_model(obj: dict) -> str | None:
    """The model of the revision that has the rest of the traffic: the spec's model, or during a canary the one
    it was started against (the chart records both as annotations)."""
    ann = obj["metadata"].get("annotations") or {}
    return ann.get(STABLE_ANNOTATION) or ann.get(MODEL_ANNOTATION)


def kserve_clients(kubeconfig: str | None = None, context: str | None = None):
    """(CustomObjectsApi, CoreV1Api) from a kubeconfig (KUBECONFIG, ~/.kube/config) or, inside a pod, its service account."""
    from kubernetes import client

    api = api_client(kubeconfig, context)
    return client.CustomObjectsApi(api), client.CoreV1Api(api)
