"""Build the container images from Debian packages and PyPI only: `make images` runs this.

    python docker/build.py [base|serve|train ...] [--force]

1. The base (docker/base-image.sh: mmdebstrap + docker import) when it is missing or its recipe changed.
2. The torch wheel for the train image into build/wheels (TORCH_VERSION; TORCH_INDEX picks the index,
   for example PyTorch's CPU index, so that pip never chooses a multi-GB CUDA build by itself).
3. Each image with BuildKit, tagged with the reference in charts/kubedistill/values.yaml and labelled
   with the version, the git commit and a hash of everything it is built from. An image whose hash is
   unchanged is reused, not rebuilt (--force rebuilds).

Environment: DOCKER (the client), BASE_IMAGE, TORCH_VERSION, TORCH_INDEX, SOURCE (the source URL label).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = ROOT / "docker"
WHEELS = ROOT / "build" / "wheels"
BASE_IMAGE = os.environ.get("BASE_IMAGE", "kubedistill/base:bookworm")
TORCH_VERSION = os.environ.get("TORCH_VERSION", "2.13.0")
HASH_LABEL = "org.kubedistill.source-hash"
REVISION = "org.opencontainers.image.revision"
# what each image is built from (besides its Dockerfile and the base); .dockerignore lets only these in
INPUTS = ("pyproject.toml", "README.md", "src", "charts", ".dockerignore")


class BuildError(Exception):
    """A one-line cause and fix."""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, **kw)


def docker_client() -> list[str]:
    """A docker client that builds with BuildKit: DOCKER if set; else `docker` with the buildx plugin, else a
    client older than 23 (BuildKit built in, DOCKER_BUILDKIT=1), as Debian bookworm's docker.io."""
    candidates = [os.environ["DOCKER"]] if os.environ.get("DOCKER") else ["docker", "/usr/bin/docker"]
    for c in candidates:
        exe = shutil.which(c)
        if not exe:
            continue
        if _run([exe, "buildx", "version"], capture_output=True).returncode == 0:
            return [exe]
        ver = _run([exe, "version", "--format", "{{.Client.Version}}"], capture_output=True).stdout.strip()
        if ver and ver.split(".")[0].isdigit() and int(ver.split(".")[0]) < 23:
            return [exe]
    raise BuildError(
        "no docker client that builds with BuildKit (tried: " + ", ".join(candidates) + "). "
        "Fix: install the buildx plugin, or Debian's docker.io, or set DOCKER to such a client"
    )


def check_engine(docker: list[str]) -> None:
    res = _run(docker + ["info", "--format", "{{.ServerVersion}}"], capture_output=True)
    if res.returncode != 0:
        raise BuildError(
            "the docker engine does not answer (" + (res.stderr.strip().splitlines() or ["?"])[-1] + "). "
            "Fix: start it, e.g. `dockerd --storage-driver=overlay2 &` as root"
        )


def image_labels(docker: list[str], ref: str) -> dict | None:
    res = _run(docker + ["image", "inspect", "--format", "{{json .Config.Labels}}", ref], capture_output=True)
    if res.returncode != 0:
        return None
    return json.loads(res.stdout or "null") or {}


def image_id(docker: list[str], ref: str) -> str:
    return _run(docker + ["image", "inspect", "--format", "{{.Id}}", ref], capture_output=True).stdout.strip()


def image_size_mb(docker: list[str], ref: str) -> float:
    out = _run(docker + ["image", "inspect", "--format", "{{.Size}}", ref], capture_output=True).stdout.strip()
    return int(out) / 1e6


def _tracked(paths: tuple[str, ...]) -> list[Path]:
    """Files under paths that git tracks or would track (untracked but not ignored), sorted."""
    res = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *paths],
        capture_output=True,
        cwd=ROOT,
    )
    if res.returncode != 0:  # not a git checkout: every file
        files = [p for x in paths for p in ([ROOT / x] if (ROOT / x).is_file() else (ROOT / x).rglob("*"))]
    else:
        files = [ROOT / n for n in res.stdout.split("\0") if n]
    return sorted(p for p in files if p.is_file() and "__pycache__" not in p.parts)


def source_hash(which: str, base_id: str, extra: list[Path] = ()) -> str:
    h = hashlib.sha256()
    h.update(base_id.encode())
    for p in [DOCKER_DIR / f"Dockerfile.{which}", *_tracked(INPUTS), *extra]:
        h.update(str(p.relative_to(ROOT)).encode() + b"\0")
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def git_commit() -> str:
    head = _run(["git", "rev-parse", "HEAD"], capture_output=True, cwd=ROOT)
    if head.returncode != 0:
        return ""
    dirty = _run(["git", "status", "--porcelain", "--", *INPUTS, "docker"], capture_output=True, cwd=ROOT).stdout
    return head.stdout.strip() + ("-dirty" if dirty.strip() else "")


def source_url() -> str:
    if os.environ.get("SOURCE"):
        return os.environ["SOURCE"]
    url = _run(["git", "config", "--get", "remote.origin.url"], capture_output=True, cwd=ROOT).stdout.strip()
    return url if "@" not in url.split("://")[-1].split("/")[0] else ""  # never a URL with credentials


def build_base(docker: list[str], force: bool) -> str:
    recipe = DOCKER_DIR / "base-image.sh"
    want = hashlib.sha256(recipe.read_bytes()).hexdigest()[:16]
    labels = image_labels(docker, BASE_IMAGE)
    if labels is not None and labels.get("org.kubedistill.recipe") == want and not force:
        print(f"base: reusing {BASE_IMAGE}")
        return image_id(docker, BASE_IMAGE)
    if labels is not None and "org.kubedistill.recipe" not in labels and not force:
        print(f"base: using {BASE_IMAGE} (not made by docker/base-image.sh)")
        return image_id(docker, BASE_IMAGE)
    t = time.monotonic()
    env = dict(os.environ, DOCKER=docker[0])
    if _run(["bash", str(recipe), BASE_IMAGE], env=env).returncode != 0:
        raise BuildError("docker/base-image.sh failed (its output is above). Fix what it names, then rerun")
    print(f"base: built {BASE_IMAGE} in {time.monotonic() - t:.0f} s")
    return image_id(docker, BASE_IMAGE)


def torch_wheel() -> Path:
    """The torch wheel the train image installs, downloaded once into build/wheels (without its dependencies,
    which pip resolves inside the build)."""
    have = sorted(WHEELS.glob(f"torch-{TORCH_VERSION}[-+]*cp311*.whl"))
    if have:
        return have[-1]
    WHEELS.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(WHEELS)]
    cmd += ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", f"torch=={TORCH_VERSION}"]
    if os.environ.get("TORCH_INDEX"):
        cmd += ["--index-url", os.environ["TORCH_INDEX"]]
    if _run(cmd).returncode != 0:
        raise BuildError(
            f"could not download torch=={TORCH_VERSION} for the train image. "
            "Fix: put its wheel in build/wheels, or set TORCH_INDEX to an index that has it"
        )
    have = sorted(WHEELS.glob(f"torch-{TORCH_VERSION}[-+]*cp311*.whl"))
    if not have:
        raise BuildError(f"pip downloaded no torch {TORCH_VERSION} wheel for CPython 3.11 into build/wheels")
    if "+cpu" not in have[-1].name:
        print(
            f"note: {have[-1].name} is PyPI's default build, which pulls the CUDA runtime (several GB) into the "
            "train image; TORCH_INDEX=<PyTorch's CPU wheel index> gives a CPU-only image",
            file=sys.stderr,
        )
    return have[-1]


def build_image(docker: list[str], which: str, base_id: str, force: bool) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from kubedistill.core.version import __version__
    from kubedistill.images import serve_image, train_image

    ref = {"serve": serve_image, "train": train_image}[which]()
    extra = [torch_wheel()] if which == "train" else []
    digest = source_hash(which, base_id, extra)
    commit = git_commit()
    labels = image_labels(docker, ref)
    # reused only when built from the same sources at the same commit: its revision label (and the git_commit tag
    # of every MLflow run made in it) must name this commit; a rebuild then comes from BuildKit's layer cache
    if labels is not None and not force and labels.get(HASH_LABEL) == digest and labels.get(REVISION) == commit:
        print(f"{which}: reusing {ref} (sources unchanged, {image_size_mb(docker, ref):.0f} MB)")
        return
    cmd = docker + ["build", "--network", "host", "-f", str(DOCKER_DIR / f"Dockerfile.{which}"), "-t", ref]
    args = {"BASE_IMAGE": BASE_IMAGE, "VERSION": __version__, "GIT_COMMIT": commit, "SOURCE": source_url()}
    if which == "train":
        args["TORCH_VERSION"] = TORCH_VERSION
    for k, v in args.items():
        cmd += ["--build-arg", f"{k}={v}"]
    cmd += ["--label", f"{HASH_LABEL}={digest}", str(ROOT)]
    t = time.monotonic()
    if _run(cmd, env=dict(os.environ, DOCKER_BUILDKIT="1")).returncode != 0:
        raise BuildError(f"building {ref} failed (the build output is above)")
    print(f"{which}: built {ref} in {time.monotonic() - t:.0f} s, {image_size_mb(docker, ref):.0f} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="*", help="base, serve and/or train (default: all)")
    ap.add_argument("--force", action="store_true", help="rebuild even when the sources are unchanged")
    a = ap.parse_args(argv)
    which = a.which or ["base", "serve", "train"]
    if set(which) - {"base", "serve", "train"}:
        ap.error(f"unknown image(s) {sorted(set(which) - {'base', 'serve', 'train'})}: choose base, serve, train")
    try:
        docker = docker_client()
        check_engine(docker)
        base_id = build_base(docker, a.force and "base" in which)
        for w in ("serve", "train"):
            if w in which:
                build_image(docker, w, base_id, a.force)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
