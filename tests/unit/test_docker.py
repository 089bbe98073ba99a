"""The container images' sources: hadolint-clean Dockerfiles on the project's own base with non-root users, a
serve image without torch, a build context that holds what they copy, and a wheel that carries the chart.
The images themselves are built and run by the container tests (tests/container/, `make test-container`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILES = {"serve": DOCKER / "Dockerfile.serve", "train": DOCKER / "Dockerfile.train"}
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_hadolint_clean(which):
    res = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILES[which])], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr


def test_hadolint_is_really_checking(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD python app.py\n")
    res = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3025"):  # latest tag, unpinned pip, pip cache, CMD not JSON
        assert rule in res.stdout, res.stdout


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_one_base_non_root_and_entrypoint(which):
    ins = instructions(DOCKERFILES[which])
    bases = [args.split()[0] for w, args in ins if w == "FROM"]
    assert bases == ["${BASE_IMAGE}", "${BASE_IMAGE}"], "multi-stage, the venv built on the Python it runs on"
    # the base is docker/base-image.sh's (Debian packages, no registry); its default name is written alike in
    # the recipe, the build script and both Dockerfiles
    default = re.search(r'^TAG="\$\{1:-([^}]+)\}"$', (DOCKER / "base-image.sh").read_text(), re.M).group(1)
    assert ("ARG", f"BASE_IMAGE={default}") in ins[: ins.index(("FROM", "${BASE_IMAGE} AS build"))]
    assert f'"BASE_IMAGE", "{default}"' in (DOCKER / "build.py").read_text()
    final = final_stage(DOCKERFILES[which])
    users = [args for w, args in final if w == "USER"]
    assert users == ["10001:10001"]  # numeric, so runAsNonRoot can verify it
    labels = " ".join(args for w, args in final if w == "LABEL")
    for key in ("version", "revision", "source", "title"):
        assert f"org.opencontainers.image.{key}=" in labels
    if which == "serve":
        assert ("ENTRYPOINT", '["kubedistill"]') in final
    else:  # a Kubeflow component runs its own `sh -ec ...`, which an ENTRYPOINT would swallow
        assert not any(w == "ENTRYPOINT" for w, _ in final) and ("CMD", '["kubedistill", "--help"]') in final
    assert any(w == "COPY" and "--from=build" in args for w, args in final)
    assert not any(w == "ADD" for w, _ in instructions(DOCKERFILES[which]))


def test_serve_image_installs_only_the_serve_extra_and_checks_its_health():
    ins = instructions(DOCKERFILES["serve"])
    runs = " ".join(args for w, args in ins if w == "RUN")
    assert re.findall(r'pip install [^&]*"(\.\[[a-z,]+\])"', runs) == [".[serve]"]
    assert "torch" not in re.sub(r"(assert|echo|show) [^&]*torch[^&]*", "", runs)  # only the checks mention it
    health = [args for w, args in final_stage(DOCKERFILES["serve"]) if w == "HEALTHCHECK"]
    assert len(health) == 1 and "/v2/health/live" in health[0] and "CMD [" in health[0]
    env = " ".join(args for w, args in final_stage(DOCKERFILES["serve"]) if w == "ENV")
    assert "KUBEDISTILL_CACHE=/var/cache/kubedistill " in env + " "  # the path the chart mounts its emptyDir on
    from kubedistill.deploy.chart import find_chart

    assert (
        '{{- define "kubedistill.cacheDir" -}}/var/cache/kubedistill{{- end }}'
        in (find_chart() / "templates" / "_helpers.tpl").read_text()
    )


def test_train_image_installs_the_pipeline_extra_with_the_tested_torch():
    ins = instructions(DOCKERFILES["train"])
    runs = " ".join(args for w, args in ins if w == "RUN")
    assert '".[pipeline]"' in runs and '"torch==${TORCH_VERSION}"' in runs
    arg = [args for w, args in ins if w == "ARG" and args.startswith("TORCH_VERSION=")]
    makefile = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert arg == [f"TORCH_VERSION={makefile}"]


def _closure(name: str, extras: tuple[str, ...]) -> set[str]:
    """Distribution names the install of name[extras] pulls, from the installed packages' metadata."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, tuple[str, ...]]] = set()
    stack = [(name, extras)]
    while stack:
        dist, ex = stack.pop()
        key = (canonicalize_name(dist), ex)
        if key in seen:
            continue
        seen.add(key)
        try:
            reqs = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, reqs):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ex + ("",)):
                stack.append((r.name, tuple(sorted(r.extras))))
    return {k for k, _ in seen}


def test_serve_extra_pulls_no_torch():
    serve = _closure("kubedistill", ("serve",))
    assert {"onnxruntime", "fastapi", "uvicorn", "numpy"} <= serve  # the walk follows the dependencies
    assert not {d for d in serve if d == "torch" or d.startswith(("torch", "nvidia-"))}, sorted(serve)
    assert "torch" in _closure("kubedistill", ("train",))  # and would see torch if it were pulled


def test_build_context_holds_what_the_dockerfiles_copy():
    from docker.utils.build import exclude_paths  # the docker SDK (dev extra, through mlflow and moto[server])

    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    for which, path in DOCKERFILES.items():
        kept = exclude_paths(str(ROOT), list(patterns), dockerfile=str(path.relative_to(ROOT)))
        for w, args in instructions(path):
            if w == "COPY" and "--from=" not in args:
                for src in args.split()[:-1]:
                    assert src in kept, (which, src)
        assert "src/kubedistill/deploy/chart" in kept and "charts/kubedistill/values.yaml" in kept
        for left_out in (".venv", ".git", "tests", "runs", "datasets", "docs"):
            assert not any(p == left_out or p.startswith(left_out + "/") for p in kept), left_out
        assert not any("__pycache__" in p or p.endswith(".pyc") for p in kept)


def test_wheel_carries_the_chart_and_it_renders(tmp_path):
    """A wheel built from the tree has the chart as package data (the link resolved to files), and Helm renders it."""
    src = tmp_path / "tree"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", src / "src", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "charts", src / "charts", ignore=ignore)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("kubedistill-*.whl"))
    chart_root = ROOT / "charts" / "kubedistill"
    want = {p.relative_to(chart_root).as_posix() for p in chart_root.rglob("*") if p.is_file()}
    prefix = "kubedistill/deploy/chart/"
    with zipfile.ZipFile(wheel) as z:
        have = {n[len(prefix) :] for n in z.namelist() if n.startswith(prefix)}
        assert have == want
        z.extractall(tmp_path / "site", [n for n in z.namelist() if n.startswith(prefix)])
    from kubedistill.deploy import helm

    values = {"model": {"uri": "models:/det/7"}}
    assert helm.render(tmp_path / "site" / prefix, values, release="det", namespace="x") == helm.render(
        chart_root, values, release="det", namespace="x"
    )
