"""`kubedistill run --runner docker`: every step in the train image, as a cluster runs it, through kfp.local's
DockerRunner: the same image, the same command (the component's `sh -ec ...`), artifacts through the pipeline
root. What this module adds around kfp.local, and why:

- the step's settings reach the container as task environment variables (`dag.make_pipeline(env=...)`): the
  pipeline run id, MLFLOW_TRACKING_URI and the S3/MLflow credentials this shell has (the cluster takes them
  from Secrets); kfp.local's DockerRunner passes only a task's own variables;
- host networking, so that a tracking server or S3 endpoint on this machine's loopback is reachable;
- the container runs as the image's user (10001) with a read-only root filesystem, all capabilities dropped,
  tmpfs on HOME and /tmp, and /dev/shm as large as the cluster's Memory emptyDir (`core.names.SHM_SIZE`);
- `--out` (pipeline root, sqlite MLflow, datasets, logs) is bind-mounted at the same path, and so are local
  `dataset_uri` / `teacher_uri` paths (read-only), a local `dataset_store` and the folder of a sqlite or file
  MLFLOW_TRACKING_URI outside `--out`. When this shell is root, those
  folders are handed to uid 10001 first; any other user runs the containers under their own uid instead;
- kfp.local's container loop is replaced for the run (`step_containers()`): kfp 2.17.0 starts each container
  with auto-remove and reports SUCCESS when the container is gone before its exit code is read (so a failed
  step passed), and its client's 60 s read timeout ends the log stream of a step that is quiet for a minute;
- an interrupt stops the run's containers (labelled with its run id), as it stops subprocess steps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubedistill.core.errors import UserError
from kubedistill.core.names import MLFLOW_OPTIONAL, MLFLOW_REQUIRED, RUN_ID_ENV, S3_OPTIONAL, S3_REQUIRED, SHM_SIZE

IMAGE_UID = 10001  # docker/Dockerfile.train's USER
IMAGE_HOME = "/home/kubedistill"
RUN_LABEL = "org.kubedistill.run"
# Passed from this shell to the steps when set (the cluster reads the same names from the Secrets).
PASS_ENV = S3_REQUIRED + S3_OPTIONAL + MLFLOW_REQUIRED + MLFLOW_OPTIONAL + ("KUBEDISTILL_GIT_COMMIT",)
# Parameters that may name a local path the steps read (mounted read-only) or write (mounted read-write).
READ_PATHS = ("dataset_uri", "teacher_uri")
WRITE_PATHS = ("dataset_store",)


def docker_client():
    """A docker-py client whose engine answers, or a UserError saying how to get one."""
    try:
        import docker
    except ImportError:
        raise UserError(
            "`--runner docker` needs the Python docker package", "pip install 'kubedistill[pipeline]'"
        ) from None
    try:
        client = docker.from_env(timeout=None)
        client.ping()
    except Exception as e:  # no socket, no permission, engine down: all mean "no engine here"
        raise UserError(
            f"No docker engine answers ({e.__class__.__name__}: {str(e)[:160]})",
            "Start one (dockerd), or run with --runner subprocess",
        ) from None
    return client


def check_image(client, ref: str) -> None:
    import docker

    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        raise UserError(
            f"The train image {ref} is not on this machine", "Build it with `make images` (docs/deploy.md)"
        ) from None


def _docker_size(k8s: str) -> str:
    """'2Gi' -> '2g' (docker's units are powers of 1024 too)."""
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    return k8s[:-2] + units[k8s[-2:]]


def _local_path(value: str) -> Path | None:
    if not value or "://" in value or value == "demo" or value.startswith("demo?"):
        return None
    p = Path(value).expanduser()
    return p.resolve() if p.exists() else None


def host_paths(params: dict[str, Any], out: Path) -> tuple[dict[str, Any], list[tuple[Path, bool]]]:
    """params with local paths made absolute, and the (path, writable) mounts the steps need besides `out`."""
    params = dict(params)
    mounts: list[tuple[Path, bool]] = []
    for name in READ_PATHS + WRITE_PATHS:
        p = _local_path(str(params.get(name) or ""))
        if p is None:
            if name in WRITE_PATHS and params.get(name) and "://" not in str(params[name]):
                p = Path(str(params[name])).expanduser().resolve()  # a store to be made
                p.mkdir(parents=True, exist_ok=True)
            else:
                continue
        params[name] = str(p)
        if not p.is_relative_to(out):
            mounts.append((p, name in WRITE_PATHS))
    return params, mounts


def tracking_mount(tracking_uri: str | None, out: Path) -> list[tuple[Path, bool]]:
    """A sqlite or file MLflow store outside `out` is mounted read-write at the same path (its folder: sqlite
    writes a journal beside the file, and the artifacts go to `mlartifacts/` there)."""
    uri = tracking_uri or ""
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            path = Path(uri[len(prefix) :]).resolve()
            folder = path.parent if prefix == "sqlite:///" else path
            folder.mkdir(parents=True, exist_ok=True)
            return [] if folder.is_relative_to(out) else [(folder, True)]
    return []


def step_env(run_id: str, tracking_uri: str | None) -> dict[str, str]:
    env = {k: os.environ[k] for k in PASS_ENV if os.environ.get(k)}
    env[RUN_ID_ENV] = run_id
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def _hand_over(paths: list[Path]) -> None:
    """Root runs the containers as uid 10001: give it the folders the steps write (kfp.local and we, as root,
    make some of them)."""
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in dirnames + filenames)]:
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(name, IMAGE_UID, IMAGE_UID)


def container_user(writable: list[Path]) -> str:
    if os.getuid() == 0:
        _hand_over(writable)
        return f"{IMAGE_UID}:{IMAGE_UID}"
    return f"{os.getuid()}:{os.getgid()}"


def make_runner(out: Path, params: dict[str, Any], run_id: str, image: str, tracking_uri: str | None = None):
    """(kfp.local.DockerRunner, params with absolute local paths); raises UserError when docker is not usable."""
    from docker.types import Mount
    from kfp import local

    client = docker_client()
    try:
        check_image(client, image)
    finally:
        client.close()
    params, extra = host_paths(params, out)
    extra += tracking_mount(tracking_uri, out)
    user = container_user([out] + [p for p, writable in extra if writable])
    uid, gid = user.split(":")
    tmpfs_opts = f"rw,exec,uid={uid},gid={gid},mode=0700"  # docker ignores `mode` on a path the image has
    mounts = [Mount(target=str(out), source=str(out), type="bind")]
    mounts += [Mount(target=str(p), source=str(p), type="bind", read_only=not w) for p, w in extra]
    runner = local.DockerRunner(
        network_mode="host",
        user=user,
        read_only=True,
        tmpfs={"/tmp": tmpfs_opts, IMAGE_HOME: tmpfs_opts},
        shm_size=_docker_size(SHM_SIZE),
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mounts=mounts,
        labels={RUN_LABEL: run_id},
        working_dir=IMAGE_HOME,
    )
    return runner, params


def run_step_container(client, image: str, command: list[str], volumes: dict, **run_args) -> int:
    """kfp.local's `run_docker_container`, with the step's real exit code: the container is removed only after
    its status is read, and logs stream with no read timeout. The image must be here (checked before the run):
    nothing is pulled."""
    import docker

    own = docker.from_env(timeout=None)
    container = own.containers.run(
        image=image, command=command, detach=True, stdout=True, stderr=True, volumes=volumes, **run_args
    )
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)
        own.close()


@contextlib.contextmanager
def step_containers() -> Iterator[None]:
    """Run kfp.local's Docker steps through `run_step_container` while the pipeline runs (kfp 2.17.0 has no
    hook for it; the pin in pyproject keeps this in step with kfp's code)."""
    from kfp.local import docker_task_handler

    old = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_step_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = old


def stop_containers(run_id: str) -> None:
    """Stop (SIGTERM, then SIGKILL after 10 s) the run's containers: called on an interrupt."""
    with contextlib.suppress(Exception):
        client = docker_client()
        for c in client.containers.list(filters={"label": f"{RUN_LABEL}={run_id}"}):
            with contextlib.suppress(Exception):
                c.stop(timeout=10)
        client.close()
