"""Wait for Deployments to roll out, with the Kubernetes Python client; say why when they do not.

A Deployment is rolled out when its controller has seen the newest spec (observedGeneration), every
replica runs the new pod template (updatedReplicas), no old replica is left (replicas) and the new
ones are ready and available (readyReplicas, availableReplicas): the checks `kubectl rollout
status` makes. It has failed when its Progressing condition says ProgressDeadlineExceeded, when a
pod cannot start for a reason that does not go away by itself (a bad image name, a missing
Secret), when a container keeps crashing, or when an image cannot be pulled for `pull_grace`
seconds. The pods' own words (waiting reasons, the last lines a crashed container wrote) go into
the reason.

`apps` is a `kubernetes.client.AppsV1Api` (read_namespaced_deployment_status) and `core` a
`CoreV1Api` (list_namespaced_pod); tests pass objects that answer with recorded API responses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kubedistill.core.kube import RETRY_STATUS as RETRY_ANY
from kubedistill.core.kube import api_client, short_error, transient

log = logging.getLogger("kubedistill.deploy")

FATAL_WAITING = {"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
PULL_WAITING = {"ErrImagePull", "ImagePullBackOff"}
CRASH_WAITING = {"CrashLoopBackOff"}
RETRY_STATUS = RETRY_ANY | {404}  # 404: the Deployment may not be visible yet


@dataclass
class RolloutResult:
    ok: bool
    reason: str
    states: dict[str, str] = field(default_factory=dict)  # Deployment name -> last progress message
    seconds: float = 0.0


def deployment_progress(dep) -> tuple[str, str]:
    """("done" | "waiting" | "failed", message) for a V1Deployment."""
    meta, spec, st = dep.metadata, dep.spec, dep.status
    name = meta.name
    if st is None or (st.observed_generation or 0) < (meta.generation or 0):
        return "waiting", f"{name}: waiting for the controller to see generation {meta.generation}"
    for c in st.conditions or []:
        if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded":
            return "failed", f"{name}: {c.message or 'progress deadline exceeded'}"
    want = 1 if spec.replicas is None else spec.replicas
    updated, total = st.updated_replicas or 0, st.replicas or 0
    ready, available = st.ready_replicas or 0, st.available_replicas or 0
    if updated < want:
        return "waiting", f"{name}: {updated} of {want} replicas updated"
    if total > updated:
        return "waiting", f"{name}: {total - updated} old replica(s) still running"
    if ready < want or available < want:
        return "waiting", f"{name}: {min(ready, available)} of {want} updated replicas ready and available"
    return "done", f"{name}: {want} of {want} replicas updated, ready and available"


@dataclass
class PodProblem:
    pod: str
    container: str
    reason: str
    message: str
    restarts: int = 0

    def __str__(self) -> str:
        extra = f" after {self.restarts} restart{'s' if self.restarts != 1 else ''}" if self.restarts else ""
        msg = " ".join(self.message.split())[-300:] if self.message else ""
        return f"pod {self.pod}: {self.container}: {self.reason}{extra}" + (f": {msg}" if msg else "")


def pod_problems(pods) -> list[PodProblem]:
    """What keeps the pods of a V1PodList from running: waiting reasons, crashes, scheduling."""
    out = []
    for pod in pods.items or []:
        name = pod.metadata.name
        st = pod.status
        if st is None:
            continue
        for c in st.conditions or []:
            if c.type == "PodScheduled" and c.status == "False" and c.reason:
                out.append(PodProblem(name, "-", c.reason, c.message or ""))
        for cs in list(st.init_container_statuses or []) + list(st.container_statuses or []):
            waiting = cs.state.waiting if cs.state else None
            if waiting is None or not waiting.reason or waiting.reason in ("ContainerCreating", "PodInitializing"):
                continue
            msg = waiting.message or ""
            last = cs.last_state.terminated if cs.last_state else None
            if last is not None:  # the crashed run: exit code and the last lines it wrote (FallbackToLogsOnError)
                said = (last.message or "").strip()
                msg = f"last exit code {last.exit_code} ({last.reason or 'terminated'})" + (f": {said}" if said else "")
            out.append(PodProblem(name, cs.name, waiting.reason, msg, cs.restart_count or 0))
    return out


def blocking_problem(
    problems: list[PodProblem], pull_seen: dict, now: float, *, crash_restarts: int, pull_grace: float
) -> str | None:
    """The first problem that will not pass by itself: a bad image name or a missing Secret at once, a crash loop
    after `crash_restarts` restarts, an image pull failing for `pull_grace` s (first seen times kept in
    `pull_seen`)."""
    for p in problems:
        if p.reason in FATAL_WAITING or (p.reason in CRASH_WAITING and p.restarts >= crash_restarts):
            return str(p)
        if p.reason in PULL_WAITING:
            first = pull_seen.setdefault((p.pod, p.container), now)
            if now - first >= pull_grace:
                return f"{p} (for {now - first:.0f} s)"
    return None


def selector_string(dep) -> str:
    labels = (dep.spec.selector.match_labels or {}) if dep.spec and dep.spec.selector else {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def wait_for_rollout(
    apps,
    core,
    namespace: str,
    names: list[str],
    *,
    timeout: float = 300.0,
    poll: float = 2.0,
    crash_restarts: int = 3,
    pull_grace: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RolloutResult:
    """Poll every `poll` seconds until all `names` are rolled out, one has failed, or `timeout` passes."""
    start = clock()
    deadline = start + timeout
    states: dict[str, str] = {n: "not read yet" for n in names}
    pull_seen: dict[tuple[str, str], float] = {}
    last_error = ""
    last_logged = ""
    while True:
        now = clock()
        done, problems = 0, []
        for name in names:
            try:
                dep = apps.read_namespaced_deployment_status(name, namespace)
                pods = core.list_namespaced_pod(namespace, label_selector=selector_string(dep))
            except Exception as e:  # the API server: retry what may pass, stop on the rest (e.g. 403)
                if not transient(e, RETRY_STATUS):
                    return RolloutResult(False, f"cannot read Deployment {name}: {short_error(e)}", states, now - start)
                last_error = f"reading {name}: {short_error(e)}"
                states[name] = f"{name}: not readable ({short_error(e)})"
                continue
            state, msg = deployment_progress(dep)
            states[name] = msg
            if state == "failed":
                return RolloutResult(
                    False, "; ".join([msg] + [str(p) for p in pod_problems(pods)][:3]), states, now - start
                )
            if state == "done":
                done += 1
                continue
            found = pod_problems(pods)
            problems += found
            stuck = blocking_problem(found, pull_seen, now, crash_restarts=crash_restarts, pull_grace=pull_grace)
            if stuck:
                return RolloutResult(False, f"{msg}; {stuck}", states, now - start)
        if done == len(names):
            return RolloutResult(True, "; ".join(states[n] for n in names), states, now - start)
        line = "; ".join(states[n] for n in names)
        if line != last_logged:
            log.info("rollout: %s", line)
            last_logged = line
        if now >= deadline:
            why = [f"timed out after {timeout:.0f} s", line] + [str(p) for p in problems[:3]]
            if last_error:
                why.append(f"last API error: {last_error}")
            return RolloutResult(False, "; ".join(why), states, now - start)
        sleep(max(0.0, min(poll, deadline - now)))


def kube_clients(kubeconfig: str | None = None, context: str | None = None):
    """(AppsV1Api, CoreV1Api) from a kubeconfig (KUBECONFIG, ~/.kube/config) or, inside a pod, its service account."""
    from kubernetes import client

    api = api_client(kubeconfig, context)
    return client.AppsV1Api(api), client.CoreV1Api(api)
