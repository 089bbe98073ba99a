"""Create a TrainJob, follow it to its end, and never leave one behind.

- create: a TrainJob of the same name left by an earlier try of the same step (label `kubedistill.io/run`) is
  followed instead of failing on 409; one that is not ours is an error naming it;
- follow: its conditions (Complete, Failed, Suspended) every `poll` seconds, with node 0's log copied into ours
  (`timestamps=True`, so a line is never printed twice), and the API server's passing failures retried;
- end: Complete returns; Failed raises `TrainJobFailed` with the job's own reason and message; a cancel (Ctrl-C,
  SIGTERM: the pipeline's step is stopped), a failure or a timeout deletes the TrainJob (foreground: its pods go
  with it), so no GPU node is left running for nobody.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from kubedistill.config import make_config
from kubedistill.core.errors import UserError
from kubedistill.core.interrupt import sigterm_as_interrupt
from kubedistill.core.kube import api_client, api_status, short_error, transient
from kubedistill.core.log import LOGGER
from kubedistill.trainjob.manifest import (
    API_GROUP,
    API_VERSION,
    LABEL_RUN,
    NODE_CONTAINER,
    PLURAL,
    LaunchConfig,
    trainjob_manifest,
)

# labels Kubeflow Trainer's JobSet puts on the pods of a TrainJob
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"


class TrainJobFailed(Exception):
    """The TrainJob ended Failed; the message is the job's own reason."""


@dataclass
class TrainJobResult:
    name: str
    namespace: str
    state: str  # Complete, Failed, Cancelled, TimedOut
    reason: str = ""
    seconds: float = 0.0
    log_lines: int = 0
    conditions: list[dict] = field(default_factory=list)


class TrainJobs:
    """The API calls the launcher makes, on one kubernetes ApiClient."""

    def __init__(self, api=None, *, kubeconfig: str | None = None, context: str | None = None):
        from kubernetes import client

        api = api or api_client(kubeconfig, context)
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.default_namespace = _namespace_of(kubeconfig, context)

    def create(self, namespace: str, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, body)

    def get(self, namespace: str, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)

    def delete(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, name, propagation_policy="Foreground"
        )

    def node0_pod(self, namespace: str, name: str) -> str | None:
        selector = f"{JOBSET_LABEL}={name},{REPLICATED_JOB_LABEL}={NODE_CONTAINER},{INDEX_LABEL}=0"
        pods = self.core.list_namespaced_pod(namespace, label_selector=selector).items
        running = [p for p in pods if p.status and p.status.phase in ("Running", "Succeeded", "Failed")]
        pods = sorted(running or pods, key=lambda p: p.metadata.creation_timestamp or 0)
        return pods[-1].metadata.name if pods else None

    def log(self, namespace: str, pod: str, since_seconds: int | None) -> str:
        return self.core.read_namespaced_pod_log(
            pod, namespace, container=NODE_CONTAINER, timestamps=True, since_seconds=since_seconds
        )


def _namespace_of(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the kubeconfig's context, or inside a pod its own, else 'default'."""
    if not kubeconfig and not context and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                return f.read().strip() or "default"
        except OSError:
            return "default"
    try:
        from kubernetes import config

        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
        return (chosen or {}).get("context", {}).get("namespace") or "default"
    except Exception:  # no kubeconfig: the default namespace
        return "default"


def condition(job: dict, kind: str) -> dict | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and str(c.get("status")) == "True":
            return c
    return None


def describe(c: dict) -> str:
    return " ".join(x for x in (c.get("reason") or "", f"({c['message']})" if c.get("message") else "") if x)


def run_trainjob(
    manifest: dict,
    jobs: TrainJobs,
    *,
    namespace: str = "",
    poll: float = 10.0,
    timeout: float | None = None,
    follow_logs: bool = True,
    echo: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> TrainJobResult:
    """Create the TrainJob in `manifest` and follow it to its end (see the module docstring)."""
    namespace = namespace or manifest["metadata"].get("namespace") or jobs.default_namespace
    name = manifest["metadata"]["name"]
    start = clock()
    _create(jobs, namespace, manifest)
    echo(f"TrainJob {namespace}/{name} created: {manifest['spec']['trainer']['numNodes']} nodes")
    logs = _LogFollower(jobs, namespace, name, echo) if follow_logs else None
    last_state, api_error = "", ""
    try:
        while True:
            try:
                job = jobs.get(namespace, name)
                api_error = ""
            except Exception as e:
                if api_status(e) == 404:
                    raise TrainJobFailed(f"TrainJob {namespace}/{name} was deleted by someone else") from None
                if not transient(e):
                    raise UserError(f"Cannot read TrainJob {namespace}/{name}: {short_error(e)}", _RBAC_FIX) from None
                api_error = short_error(e)
                job = None
            if logs is not None:
                logs.poll()
            if job is not None:
                done = condition(job, "Complete")
                failed = condition(job, "Failed")
                conds = (job.get("status") or {}).get("conditions") or []
                if done:
                    echo(f"TrainJob {name}: Complete {describe(done)}".rstrip())
                    return TrainJobResult(name, namespace, "Complete", describe(done), clock() - start, _n(logs), conds)
                if failed:
                    raise TrainJobFailed(f"TrainJob {namespace}/{name} failed: {describe(failed)}")
                state = "; ".join(f"{c.get('type')}={c.get('status')}" for c in conds) or "created, not started yet"
                if state != last_state:
                    echo(f"TrainJob {name}: {state}")
                    last_state = state
            if timeout is not None and clock() - start >= timeout:
                why = f"; last API error: {api_error}" if api_error else ""
                raise TrainJobFailed(f"TrainJob {namespace}/{name} not done after {timeout:.0f} s{why}")
            sleep(poll)
    except BaseException as e:  # failed, timed out, cancelled (KeyboardInterrupt: Ctrl-C or SIGTERM), or a bug
        what = "cancelled" if isinstance(e, KeyboardInterrupt) else "stopped"
        if logs is not None and not isinstance(e, KeyboardInterrupt):
            try:
                logs.poll()  # the last lines node 0 wrote, often the reason, before its pod goes
            except Exception:  # noqa: S110 - best effort: the job's own reason is in the error already
                pass
        _delete(jobs, namespace, name, echo, what)
        raise


_RBAC_FIX = (
    "The pipeline's service account needs get/create/delete on trainjobs.trainer.kubeflow.org and get/list on "
    "pods and pods/log (docs/pipeline.md, 'Multi-node training')"
)


def _create(jobs: TrainJobs, namespace: str, manifest: dict) -> None:
    name = manifest["metadata"]["name"]
    try:
        jobs.create(namespace, manifest)
        return
    except Exception as e:
        status = api_status(e)
        if status == 404:
            raise UserError(
                f"The TrainJob API ({API_GROUP}/{API_VERSION}) is not installed in the cluster",
                "Install Kubeflow Trainer and its torch-distributed runtime (docs/pipeline.md)",
            ) from None
        if status != 409:
            raise UserError(f"Cannot create TrainJob {namespace}/{name}: {short_error(e)}", _RBAC_FIX) from None
    existing = jobs.get(namespace, name)  # 409: a job of that name exists
    labels = existing.get("metadata", {}).get("labels") or {}
    if labels.get(LABEL_RUN) != name:
        raise UserError(
            f"A TrainJob named {namespace}/{name} exists and is not kubedistill's", "Delete it or pick another name"
        )
    LOGGER.info(f"TrainJob {namespace}/{name} exists (an earlier try of this step): following it")


def _delete(jobs: TrainJobs, namespace: str, name: str, echo: Callable[[str], None], what: str) -> None:
    for attempt in range(3):
        try:
            jobs.delete(namespace, name)
            echo(f"TrainJob {namespace}/{name} {what}: deleted (its pods go with it)")
            return
        except Exception as e:
            if api_status(e) == 404:
                return
            if attempt == 2 or not transient(e):
                echo(
                    f"TrainJob {namespace}/{name} {what} but could not be deleted ({short_error(e)}): delete it by hand"
                )
                return
            time.sleep(1.0 * 2**attempt)


class _LogFollower:
    """Node 0's log, copied line by line; `timestamps=True` lets a re-read skip what was already printed."""

    def __init__(self, jobs: TrainJobs, namespace: str, name: str, echo: Callable[[str], None]):
        self.jobs, self.namespace, self.name, self.echo = jobs, namespace, name, echo
        self.pod: str | None = None
        self.last = ""  # RFC 3339 timestamp of the last line printed
        self.read_at: float | None = None
        self.lines = 0

    def poll(self) -> None:
        try:
            pod = self.jobs.node0_pod(self.namespace, self.name)
            if pod is None:
                return
            if pod != self.pod:  # a new pod (node 0 restarted): its log from the start
                self.pod, self.last, self.read_at = pod, "", None
            since = None if self.read_at is None else int(time.monotonic() - self.read_at) + 5
            text = self.jobs.log(self.namespace, pod, since)
            self.read_at = time.monotonic()
        except Exception as e:  # no pod yet, container not started, a passing API error: next time
            if api_status(e) not in (None, 400, 404) and not transient(e):
                LOGGER.warning(f"cannot read node 0's log: {short_error(e)}")
            return
        for line in (text or "").splitlines():
            stamp, _, rest = line.partition(" ")
            if self.last and stamp <= self.last:
                continue
            self.last = stamp
            self.echo(f"[node 0] {rest}")
            self.lines += 1


def _n(logs: _LogFollower | None) -> int:
    return logs.lines if logs is not None else 0


def job_summary(result: TrainJobResult) -> dict[str, Any]:
    return {
        "trainjob": f"{result.namespace}/{result.name}",
        "state": result.state,
        "reason": result.reason,
        "seconds": round(result.seconds, 1),
        "log_lines": result.log_lines,
    }


def submit_training(
    cfg,
    *,
    submit: bool = False,
    dry_run: bool = False,
    kubeconfig: str | None = None,
    kube_context: str | None = None,
    env: dict[str, str] | None = None,
    echo: Callable[[str], None] = print,
    **launch: Any,
) -> TrainJobResult | dict:
    """`kubedistill train ... --nodes N --submit | --dry-run`: the TrainJob printed (dry run, as YAML) or created and
    followed to its end. `launch`: LaunchConfig's options (a wrong one is a ConfigError naming it)."""
    opts = make_config(LaunchConfig, None, "launch option", **launch)
    if not (submit or dry_run):
        raise UserError(
            f"--nodes {opts.nodes} trains on a cluster, as a Kubeflow Trainer TrainJob",
            "Add --submit to create it, or --dry-run to print it",
        )
    manifest = trainjob_manifest(cfg, opts, env=env)
    if dry_run:
        echo(yaml.safe_dump(manifest, sort_keys=False).rstrip())
        return manifest
    jobs = TrainJobs(kubeconfig=kubeconfig, context=kube_context)
    with sigterm_as_interrupt():
        return run_trainjob(manifest, jobs, namespace=opts.namespace, echo=echo)
