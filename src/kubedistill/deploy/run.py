"""`kubedistill deploy`: helm upgrade --install, wait for the rollout, helm test; roll back on failure.

    deploy(release, namespace, model_uri, canary_uri=None, canary_weight=None, values=None, mode=None,
           dry_run=False, timeout=300, chart=None) -> summary dict (JSON-able)

1. The plan: a pinned model (models:/NAME/VERSION or s3://...), replica counts from the canary
   weight, the user's values; rendered offline with the real Helm engine, so bad values stop here,
   before the cluster is touched. `dry_run` stops after this and returns the manifests.
2. `helm upgrade` (or `install` when the release does not exist yet), without Helm's own wait.
3. Mode deployment: every Deployment the chart rendered rolls out (`rollout.wait_for_rollout`,
   `timeout` seconds), then `helm test` (the chart's test pod runs one inference through the Service).
   Mode kserve: the InferenceService is Ready with the traffic split asked for (`kserve.wait_for_service`),
   then one inference goes through its URL (a canary's own revision URL), from where deploy runs.
4. When 2 or 3 fails: `helm rollback` to the revision that was deployed before (in kserve mode: the
   InferenceService's previous spec), wait for that too, and say why in `reason`. A first install that
   fails has nothing to roll back to and is left for inspection.

The summary's `status` is "deployed", "rolled-back", "failed" or "dry-run"; `rolled_back` and
`reason` say what happened. Progress goes to the "kubedistill.deploy" logger.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from urllib.parse import urlsplit

import yaml

from kubedistill.core.errors import UserError
from kubedistill.core.log import setup_logging
from kubedistill.deploy import helm, smoke
from kubedistill.deploy.chart import chart_values, find_chart
from kubedistill.deploy.kserve import kserve_clients, read_service, stable_model, wait_for_service
from kubedistill.deploy.plan import deep_merge, make_plan
from kubedistill.deploy.rollout import kube_clients, wait_for_rollout

log = logging.getLogger("kubedistill.deploy")

PENDING = ("pending-install", "pending-upgrade", "pending-rollback", "uninstalling")


def _deployed_revision(history: list[dict]) -> int | None:
    """The revision serving now: the newest with status "deployed"."""
    deployed = [int(h["revision"]) for h in history if h.get("status") == "deployed"]
    return max(deployed) if deployed else None


def deploy(
    release: str,
    namespace: str,
    model_uri: str,
    *,
    canary_uri: str | None = None,
    canary_weight: int | None = None,
    values: dict | None = None,
    mode: str | None = None,
    dry_run: bool = False,
    timeout: float = 300,
    chart: str | os.PathLike | None = None,
    kubeconfig: str | None = None,
    kube_context: str | None = None,
    ingress: str | None = None,
    engine=None,
    kube=None,
    check=None,
    poll: float = 2.0,
    clock=time.monotonic,
    sleep=time.sleep,
) -> dict:
    """Roll `model_uri` out as Helm release `release` in `namespace`; see the module docstring.

    mode: "deployment" or "kserve" (default: serving.mode of the values). engine: a `helm.HelmEngine` (default:
    `helm.HelmSDK` on the kubeconfig); kube: (AppsV1Api, CoreV1Api), or (CustomObjectsApi, CoreV1Api) in kserve
    mode (default: from the kubeconfig); check(url, model, host): the inference through the InferenceService's
    URL (default: `smoke.run`); ingress: send that inference to this address with the service's Host header.
    UserError for a bad request or values.
    """

    if timeout <= 0:
        raise UserError(f"--timeout {timeout} must be positive", "Give the rollout some seconds, e.g. --timeout 300")
    if ingress is not None and not (urlsplit(ingress).scheme in ("http", "https") and urlsplit(ingress).netloc):
        raise UserError(
            f"--ingress '{ingress}' is not an address", "Give the gateway's base URL, e.g. --ingress http://10.0.0.5:80"
        )
    chart_dir = find_chart(chart)
    defaults = chart_values(chart_dir)
    plan = make_plan(
        release,
        namespace,
        model_uri,
        canary_uri=canary_uri,
        canary_weight=canary_weight,
        values=values,
        defaults=defaults,
        mode=mode,
    )
    for note in plan.notes:
        log.warning("note: %s", note)
    rendered = helm.render(chart_dir, plan.values, release=release, namespace=namespace)
    objects = [obj for _, obj in helm.split_manifests(rendered)]
    deployments = helm.deployment_names(objects)
    services = [o["metadata"]["name"] for o in objects if o.get("kind") == "InferenceService"]
    summary = {
        "release": release,
        "namespace": namespace,
        "mode": plan.mode,
        "chart": str(chart_dir),
        "model_uri": plan.model_uri,
        "model_name": (deep_merge(defaults, plan.values).get("model") or {}).get("name"),
        "canary_uri": plan.canary_uri,
        "canary_weight": plan.canary_weight,
        "canary_share": plan.canary_share,
        "replicas": plan.replicas,
        "deployments": deployments,
        "inference_service": services[0] if services else None,
        "values": plan.values,
        "notes": plan.notes,
        "revision": None,
        "previous_revision": None,
        "status": None,
        "rolled_back": False,
        "reason": None,
    }
    if dry_run:
        summary.update(status="dry-run", manifests=helm.manifest_text(rendered))
        return summary

    engine = engine if engine is not None else helm.HelmSDK(namespace, kubeconfig=kubeconfig, context=kube_context)
    if kube is None:
        kube = (kserve_clients if plan.mode == "kserve" else kube_clients)(kubeconfig, kube_context)
    history = engine.history(release)
    if history and history[-1].get("status") in PENDING:
        last = history[-1]
        raise UserError(
            f"Release '{release}' has an operation in progress (revision {last.get('revision')} is {last.get('status')})",
            f"Wait for it to finish, or run `helm rollback {release}` if it was interrupted",
        )
    if plan.mode == "kserve" and plan.canary_uri:
        _check_canary_base(kube[0], namespace, summary["inference_service"], plan.model_uri, release)
    previous = _deployed_revision(history)
    summary["previous_revision"] = previous
    action = "upgrade" if history else "install"
    log.info(
        "helm %s %s in %s (%s): %s%s",
        action,
        release,
        namespace,
        plan.mode,
        plan.model_uri,
        f" (canary {plan.canary_uri}, {plan.canary_weight}%)" if plan.canary_uri else "",
    )
    wait = dict(timeout=timeout, poll=poll, clock=clock, sleep=sleep)
    reason = None
    try:
        rel = (engine.upgrade if history else engine.install)(chart_dir, release, plan.values, timeout=timeout)
        summary["revision"] = rel.get("revision")
    except helm.HelmActionError as e:
        reason = str(e)
    if reason is None and plan.mode == "kserve":
        reason = _verify_service(kube, namespace, summary, plan, ingress, check or smoke.run, wait)
    elif reason is None:
        reason = _verify_deployments(engine, kube, namespace, summary, release, wait)
    if reason is None:
        summary.update(status="deployed")
        log.info("deployed %s revision %s", release, summary["revision"])
        return summary

    summary["reason"] = reason
    log.error("%s", reason)
    if previous is None:
        summary.update(
            status="failed",
            reason=f"{reason}; no earlier deployed revision to roll back to: the release is left "
            f"as it is for inspection (`helm uninstall {release} -n {namespace}` removes it)",
        )
        return summary
    log.warning("rolling %s back to revision %s", release, previous)
    try:
        engine.rollback(release, previous, timeout=timeout)
    except helm.HelmActionError as e:
        summary.update(status="failed", reason=f"{reason}; the rollback to revision {previous} failed too: {e}")
        return summary
    summary.update(status="rolled-back", rolled_back=True)
    try:  # what the restored revision has (it may have had no canary)
        restored = helm.split_manifest_text(engine.manifest(release))
    except helm.HelmActionError as e:
        log.warning("cannot read the restored manifest (%s)", e)
        restored = None
    if plan.mode == "kserve":
        isvc = next((o for o in restored or [] if o.get("kind") == "InferenceService"), None)
        percent = ((isvc or {}).get("spec") or {}).get("predictor", {}).get("canaryTrafficPercent")
        back = wait_for_service(*kube, namespace, summary["inference_service"], canary=percent, **wait)
    else:
        back_to = (
            helm.deployment_names(restored)
            if restored is not None
            else [n for n in deployments if not n.endswith("-canary")]
        )
        back = wait_for_rollout(*kube, namespace, back_to, **wait)
    summary["rollback_rollout"] = "complete" if back.ok else f"not complete: {back.reason}"
    log.info("rollback to revision %s: %s", previous, summary["rollback_rollout"])
    return summary


def _verify_deployments(engine, kube, namespace: str, summary: dict, release: str, wait: dict) -> str | None:
    """Every Deployment rolled out, then `helm test`; the reason when not."""
    res = wait_for_rollout(*kube, namespace, summary["deployments"], **wait)
    summary["rollout_seconds"] = round(res.seconds, 1)
    if not res.ok:
        return f"rollout of revision {summary['revision']} did not complete: {res.reason}"
    log.info("rolled out: %s", res.reason)
    log.info("helm test %s", release)
    try:
        out = engine.test(release, timeout=wait["timeout"])
        summary["test_logs"] = (out or {}).get("logs")
    except helm.HelmActionError as e:
        return f"helm test failed: {e}"
    return None


def _verify_service(kube, namespace: str, summary: dict, plan, ingress, check, wait: dict) -> str | None:
    """The InferenceService Ready with the traffic split asked for, then one inference through its URL."""
    name = summary["inference_service"]
    res = wait_for_service(*kube, namespace, name, canary=plan.canary_weight, **wait)
    summary["rollout_seconds"] = round(res.seconds, 1)
    summary["traffic"] = res.traffic
    if not res.ok:
        return f"InferenceService {name} did not take revision {summary['revision']}: {res.reason}"
    log.info("ready: %s", res.reason)
    if not res.url:
        return f"InferenceService {name} is ready but reports no URL to check it through"
    base, host = res.url, None
    if ingress:  # e.g. an ingress gateway's address: the service is picked by its host name
        host = urlsplit(res.url).netloc
        base = ingress
    summary["checked_url"] = res.url
    log.info("one inference through %s%s", res.url, f" (sent to {ingress})" if ingress else "")
    lines: list[str] = []
    try:
        check(base, summary["model_name"], host=host, echo=lines.append)
    except smoke.SmokeError as e:
        return f"the inference through {res.url} failed: {e}"
    summary["test_logs"] = "\n".join(lines)
    return None


def _check_canary_base(custom, namespace: str, name: str, model_uri: str, release: str) -> None:
    """A KServe canary splits traffic with the revision rolled out before: it must serve --model-uri."""
    live = read_service(custom, namespace, name)
    if live is None:
        raise UserError(
            f"InferenceService {name} does not exist yet: a KServe canary splits traffic with the revision rolled "
            "out before, and there is none",
            f"Deploy the stable model first (kubedistill deploy --release {release} --mode kserve --model-uri "
            f"{model_uri}), then the canary",
        )
    serving = stable_model(live)
    if serving and serving != model_uri:
        raise UserError(
            f"InferenceService {name} has its traffic on {serving}, not --model-uri {model_uri}: KServe would split "
            f"the canary's traffic with {serving}",
            f"Pass --model-uri {serving}, or deploy {model_uri} without a canary first",
        )


def log_to_stderr(level: int = logging.INFO) -> None:
    """Plain progress lines on stderr (stdout carries the summary or the manifests)."""

    setup_logging(level, logger=log, stream=sys.stderr)


def dry_run_text(summary: dict) -> str:
    """What --dry-run prints: the values it would set (as YAML comments) and then the manifests."""

    head = [
        f"# kubedistill deploy --dry-run: release {summary['release']} in namespace {summary['namespace']}, chart {summary['chart']}",
        f"# replicas: {summary['replicas']}"
        + (f", canary share ~{summary['canary_share']:.0%}" if summary.get("canary_share") else ""),
        "# values it would set (the chart's defaults fill the rest):",
    ]
    head += [f"#   {line}" for line in yaml.safe_dump(summary["values"], sort_keys=True).splitlines()]
    head += [f"# note: {n}" for n in summary.get("notes") or []]
    return "\n".join(head) + "\n" + summary["manifests"]
