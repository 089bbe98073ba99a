"""Run a container of a rendered Kubernetes pod spec with `docker run`, as the kubelet would run it: the same
image, command and args, environment (ConfigMaps resolved), security context (user, read-only root, dropped
capabilities, no privilege escalation), emptyDirs as tmpfs of their size, CPU and memory limits. Host
networking: the test's servers listen on 127.0.0.1. Used by the container tests (tests/container/)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from tests.servers import http_get

ROOT = Path(__file__).resolve().parents[2]


def docker_bin() -> str:
    """Debian's client talks to Debian's engine; a newer client without buildx works for run/inspect too."""
    for c in ("docker", "/usr/bin/docker"):
        if shutil.which(c):
            return shutil.which(c)
    raise RuntimeError("no docker client: install docker.io")


def docker(*args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([docker_bin(), *args], capture_output=True, text=True, timeout=timeout, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} ... failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res


def _size(k8s: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    return k8s[:-2] + units[k8s[-2:]] if k8s[-2:] in units else k8s


def _cpus(k8s: str) -> str:
    return str(int(k8s[:-1]) / 1000) if k8s.endswith("m") else k8s


def run_args(
    pod: dict, container: str, configmaps: dict[str, dict], secrets: dict[str, dict] | None = None
) -> list[str]:
    """`docker run` options, "{image}" and the command for one container of a pod spec; `secrets`: the content
    of the Secrets it references (what the user would have created in the namespace)."""
    spec = pod["spec"] if "spec" in pod else pod
    c = next(x for x in spec["containers"] if x["name"] == container)
    sc = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
    args: list[str] = []
    uid, gid = sc.get("runAsUser"), sc.get("runAsGroup", sc.get("runAsUser"))
    if uid is not None:
        args += ["--user", f"{uid}:{gid}"]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for cap in sc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v = volumes[m["name"]]
        assert "emptyDir" in v, f"only emptyDir volumes are run here, not {v}"
        opts = ["rw", "exec"]
        if v["emptyDir"].get("sizeLimit"):
            opts.append("size=" + _size(v["emptyDir"]["sizeLimit"]))
        if uid is not None:  # Kubernetes makes an emptyDir group-writable for fsGroup; a tmpfs owned by the user
            opts += [f"uid={uid}", f"gid={spec.get('securityContext', {}).get('fsGroup', gid)}"]
        args += ["--tmpfs", f"{m['mountPath']}:{','.join(opts)}"]
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps[src["configMapRef"]["name"]])
        if "secretRef" in src:
            env.update((secrets or {})[src["secretRef"]["name"]])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
    for k, v in env.items():
        args += ["-e", f"{k}={v}"]
    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        args += ["--memory", _size(limits["memory"])]
    if "cpu" in limits:
        args += ["--cpus", _cpus(str(limits["cpu"]))]
    command = list(c.get("command") or [])
    if command:
        args += ["--entrypoint", command[0]]
    args.append("{image}")
    args += command[1:] + [str(a) for a in c.get("args", [])]
    return args


def chart_objects(values: dict, release: str = "det", namespace: str = "ml") -> list[dict]:
    from kubedistill.deploy import helm
    from kubedistill.deploy.chart import find_chart

    return [
        obj for _, obj in helm.split_manifests(helm.render(find_chart(), values, release=release, namespace=namespace))
    ]


def configmaps(objects: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}


def wait_probe(base: str, probe: dict, name: str, container_id: str) -> float:
    """Poll an httpGet probe as the kubelet does (period x failureThreshold); seconds until it passed."""
    t0 = time.monotonic()
    deadline = t0 + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
    while time.monotonic() < deadline:
        state = json.loads(docker("inspect", "--format", "{{json .State}}", container_id).stdout)
        assert state["Running"], f"container exited ({state['ExitCode']}):\n" + logs(container_id)
        try:
            if http_get(base + probe["httpGet"]["path"], probe.get("timeoutSeconds", 1))[0] == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{name} probe {probe['httpGet']['path']} did not pass in time:\n" + logs(container_id))


def logs(container_id: str) -> str:
    res = docker("logs", container_id, check=False)
    return (res.stdout + res.stderr)[-4000:]
