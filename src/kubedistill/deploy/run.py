"""`kubedistill deploy`: helm upgrade --install, wait for the rollout, helm test; roll back on failure.

    deploy(release, namespace, model_uri, canary_uri=None, canary_weight=None, values=None,
           dry_run=False, timeout=300, chart=None) -> summary dict (JSON-able)

1. The plan: a pinned model (models:/NAME/VERSION or s3://...), replica counts from the canary
   weight, the user's values; rendered offline with the real Helm engine, so bad values stop here,
   before the cluster is touched. `dry_run` stops after this and returns the manifests.
2. `helm upgrade` (or `install` when the release does not exist yet), without Helm's own wait.
3. Every Deployment the chart rendered rolls out (`rollout.wait_for_rollout`, `timeout` seconds).
4. `helm test`: the chart's test pod waits for the Service and runs one inference.
5. When 2, 3 or 4 fails: `helm rollback` to the revision that was deployed before, wait for that
   rollout too, and say why in `reason`. A first install that fails has nothing to roll back to and
   is left for inspection.

The summary's `status` is "deployed", "rolled-back", "failed" or "dry-run"; `rolled_back` and
`reason` say what happened. Progress goes to the "kubedistill.deploy" logger.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import yaml

from kubedistill.core.errors import UserError
from kubedistill.core.log import setup_logging
from kubedistill.deploy import helm
from kubedistill.deploy.chart import chart_values, find_chart
from kubedistill.deploy.plan import make_plan
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
    dry_run: bool = False,
    timeout: float = 300,
    chart: str | os.PathLike | None = None,
    kubeconfig: str | None = None,
    kube_context: str | None = None,
    engine=None,
    kube=None,
    poll: float = 2.0,
    clock=time.monotonic,
    sleep=time.sleep,
) -> dict:
    """Roll `model_uri` out as Helm release `release` in `namespace`; see the module docstring.

    engine: a `helm.HelmEngine` (default: `helm.HelmSDK` on the kubeconfig); kube: (AppsV1Api,
    CoreV1Api) (default: `rollout.kube_clients`). UserError for a bad request or values.
    """

    if timeout <= 0:
        raise UserError(f"--timeout {timeout} must be positive", "Give the rollout some seconds, e.g. --timeout 300")
    chart_dir = find_chart(chart)
    plan = make_plan(
        release,
        namespace,
        model_uri,
        canary_uri=canary_uri,
        canary_weight=canary_weight,
        values=values,
        defaults=chart_values(chart_dir),
    )
    for note in plan.notes:
        log.warning("note: %s", note)
    rendered = helm.render(chart_dir, plan.values, release=release, namespace=namespace)
    deployments = helm.deployment_names(obj for _, obj in helm.split_manifests(rendered))
    summary = {
        "release": release,
        "namespace": namespace,
        "chart": str(chart_dir),
        "model_uri": plan.model_uri,
        "canary_uri": plan.canary_uri,
        "canary_weight": plan.canary_weight,
        "canary_share": plan.canary_share,
        "replicas": plan.replicas,
        "deployments": deployments,
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
    apps, core = kube if kube is not None else kube_clients(kubeconfig, kube_context)
    history = engine.history(release)
    if history and history[-1].get("status") in PENDING:
        last = history[-1]
        raise UserError(
            f"Release '{release}' has an operation in progress (revision {last.get('revision')} is {last.get('status')})",
            f"Wait for it to finish, or run `helm rollback {release}` if it was interrupted",
        )
    previous = _deployed_revision(history)
    summary["previous_revision"] = previous
    action = "upgrade" if history else "install"
    log.info(
        "helm %s %s in %s: %s%s",
        action,
        release,
        namespace,
        plan.model_uri,
        f" (canary {plan.canary_uri}, {plan.replicas.get('canary')} replica(s))" if plan.canary_uri else "",
    )
    reason = None
    try:
        rel = (engine.upgrade if history else engine.install)(chart_dir, release, plan.values, timeout=timeout)
        summary["revision"] = rel.get("revision")
    except helm.HelmActionError as e:
        reason = str(e)
    if reason is None:
        res = wait_for_rollout(apps, core, namespace, deployments, timeout=timeout, poll=poll, clock=clock, sleep=sleep)
        summary["rollout_seconds"] = round(res.seconds, 1)
        if not res.ok:
            reason = f"rollout of revision {summary['revision']} did not complete: {res.reason}"
        else:
            log.info("rolled out: %s", res.reason)
    if reason is None:
        log.info("helm test %s", release)
        try:
            out = engine.test(release, timeout=timeout)
            summary["test_logs"] = (out or {}).get("logs")
        except helm.HelmActionError as e:
            reason = f"helm test failed: {e}"
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
    try:  # the restored revision's own Deployments (it may have had no canary)
        back_to = helm.deployment_names(helm.split_manifest_text(engine.manifest(release)))
    except helm.HelmActionError as e:
        log.warning("cannot read the restored manifest (%s); waiting for the stable Deployment", e)
        back_to = [n for n in deployments if not n.endswith("-canary")]
    back = wait_for_rollout(apps, core, namespace, back_to, timeout=timeout, poll=poll, clock=clock, sleep=sleep)
    summary["rollback_rollout"] = "complete" if back.ok else f"not complete: {back.reason}"
    log.info("rollback to revision %s: %s", previous, summary["rollback_rollout"])
    return summary


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
