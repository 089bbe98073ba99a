"""The Helm engine, in-process (helm-python-sdk, module `helm_python`: Helm's Go SDK through a C ABI).

Offline helpers: `render` (templates + values.schema.json, as `helm template`), `lint`,
`split_manifests`. Cluster actions go through `HelmSDK`, the one class that holds a
`helm_python.Config`; `kubedistill deploy` only needs the five methods of `HelmEngine`, so tests
pass their own engine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import yaml

from kubedistill.core.errors import UserError
from kubedistill.core.yamlfile import YamlFileError, read_yaml_file
from kubedistill.deploy.plan import deep_merge

NOTES = "NOTES.txt"


class HelmActionError(RuntimeError):
    """A Helm action failed (the message is Helm's own detail)."""


class HelmEngine(Protocol):
    def history(self, release: str) -> list[dict]: ...  # oldest first; [] when the release does not exist

    def install(self, chart: Path, release: str, values: dict, *, timeout: float) -> dict: ...  # release summary

    def upgrade(self, chart: Path, release: str, values: dict, *, timeout: float) -> dict: ...

    def rollback(self, release: str, revision: int, *, timeout: float) -> None: ...

    def test(self, release: str, *, timeout: float) -> dict: ...  # {"logs": ...}; HelmActionError when a test fails

    def manifest(self, release: str) -> str: ...  # the current revision's rendered manifest (hooks left out)


def schema_problems(e: Exception) -> list[str]:
    """Helm's schema report ("kubedistill:\n- at '/server/port': minimum: got 80, want 1,024") as one line per problem."""
    lines = [ln.strip().lstrip("-").strip() for ln in str(e).splitlines()]
    return [ln for ln in lines if ln and not ln.endswith(":") and not ln.endswith("failed")]


def _values_error(e: Exception) -> UserError:
    problems = "; ".join(schema_problems(e)) or str(e).strip()
    return UserError(
        f"The chart refused the values: {problems}",
        "Fix the value named (charts/kubedistill/values.yaml documents each)",
    )


def render(
    chart: str | os.PathLike, values: dict | None, *, release: str, namespace: str, upgrade: bool = False
) -> dict[str, str]:
    """Template path -> rendered text, offline. Checks values.schema.json first, as an install does."""
    import helm_python as helm

    try:
        with helm.Chart.load(chart) as c:
            return c.render(values or {}, name=release, namespace=namespace, is_install=not upgrade, is_upgrade=upgrade)
    except helm.HelmValuesError as e:
        raise _values_error(e) from None
    except helm.HelmRenderError as e:
        raise UserError(f"The chart cannot be rendered: {_render_detail(e)}", "Fix the value named") from None
    except helm.HelmChartLoadError as e:
        raise UserError(f"Cannot load the chart at '{chart}': {e}", "Pass --chart path/to/charts/kubedistill") from None


def _render_detail(e: Exception) -> str:
    text = str(e).strip()
    # "execution error at (kubedistill/templates/deployment.yaml:2:50): model.uri is empty: ..." -> the message
    return text.split("): ", 1)[1] if text.startswith("execution error at (") and "): " in text else text


def lint(
    chart: str | os.PathLike, values: dict | None = None, *, strict: bool = True, kube_version: str | None = None
) -> dict:
    """`helm lint [--strict]`: {"messages": [{"severity", "path", "error"}], "errors": [...]}; severity 3 is an error."""
    import helm_python as helm

    return helm.lint(os.fspath(chart), values, strict=strict, kube_version=kube_version)


def split_manifests(rendered: dict[str, str]) -> list[tuple[str, dict]]:
    """(template path, object) for every non-empty YAML document, NOTES.txt left out."""

    out = []
    for path in sorted(rendered):
        if path.endswith(NOTES):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                out.append((path, doc))
    return out


def split_manifest_text(text: str) -> list[dict]:
    """The objects of a YAML stream (a release's manifest)."""

    return [doc for doc in yaml.safe_load_all(text or "") if doc]


def deployment_names(objects) -> list[str]:
    """Names of the Deployments among rendered objects (hooks left out)."""
    return [o["metadata"]["name"] for o in objects if o.get("kind") == "Deployment" and not is_hook(o)]


def manifest_text(rendered: dict[str, str]) -> str:
    """The rendered chart as one YAML stream with `# Source:` lines, like `helm template`."""
    parts = []
    for path in sorted(rendered):
        if path.endswith(NOTES) or not rendered[path].strip():
            continue
        for doc in rendered[path].split("\n---"):
            if doc.strip().strip("-").strip():
                parts.append(f"---\n# Source: {path}\n{doc.strip().removeprefix('---').strip()}\n")
    return "".join(parts)


def is_hook(obj: dict) -> bool:
    return "helm.sh/hook" in ((obj.get("metadata") or {}).get("annotations") or {})


class HelmSDK:
    """HelmEngine over helm_python.Config: the kubeconfig (or in-cluster account) of the caller."""

    def __init__(self, namespace: str, *, kubeconfig: str | None = None, context: str | None = None) -> None:
        import helm_python as helm

        self._helm = helm
        self.namespace = namespace
        try:
            self._cfg = helm.Config(namespace=namespace, kubeconfig_path=kubeconfig, kube_context=context)
            self._cfg.check_reachable()
        except helm.HelmError as e:
            raise UserError(
                f"Cannot reach the Kubernetes API server: {e}",
                "Check KUBECONFIG, --kubeconfig and --kube-context (in a pod: its service account)",
            ) from None

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self._helm.HelmValuesError as e:
            raise _values_error(e) from None
        except self._helm.HelmError as e:
            raise HelmActionError(f"helm {what}: {str(e).strip()}") from None

    def history(self, release: str) -> list[dict]:
        try:
            return list(self._cfg.history(release))
        except self._helm.HelmNotFoundError:
            return []
        except self._helm.HelmError as e:
            raise HelmActionError(f"helm history: {str(e).strip()}") from None

    def install(self, chart: Path, release: str, values: dict, *, timeout: float) -> dict:
        return self._call(
            "install",
            self._cfg.install,
            os.fspath(chart),
            release,
            values,
            namespace=self.namespace,
            timeout=int(timeout),
            description="kubedistill deploy",
        )

    def upgrade(self, chart: Path, release: str, values: dict, *, timeout: float) -> dict:
        return self._call(
            "upgrade",
            self._cfg.upgrade,
            os.fspath(chart),
            release,
            values,
            namespace=self.namespace,
            timeout=int(timeout),
            max_history=20,
            reset_values=True,
            description="kubedistill deploy",
        )

    def rollback(self, release: str, revision: int, *, timeout: float) -> None:
        self._call("rollback", self._cfg.rollback, release, version=revision, timeout=int(timeout))

    def test(self, release: str, *, timeout: float) -> dict:
        return self._call("test", self._cfg.test, release, timeout=int(timeout), logs=True)

    def manifest(self, release: str) -> str:
        return self._call("status", self._cfg.status, release).get("manifest") or ""


def user_values(files: list[str | os.PathLike] = (), sets: list[str] = ()) -> dict:
    """Values from YAML files (later ones win) then `--set` expressions (Helm's own parser), merged like `helm -f ... --set ...`."""

    out: dict = {}
    for f in files:
        try:
            doc = read_yaml_file(f) or {}
        except YamlFileError as e:
            raise UserError(
                f"Values file '{f}' {e.reason}", "Check the path given to --values, or fix the file"
            ) from None
        if not isinstance(doc, dict):
            raise UserError(
                f"Values file '{f}' is not a YAML mapping",
                "Write it as name: value lines, like the chart's values.yaml",
            )
        out = deep_merge(out, doc)
    if sets:
        import helm_python as helm

        for expr in sets:
            try:
                out = deep_merge(out, helm.parse_set_string(expr))
            except helm.HelmError as e:
                raise UserError(
                    f"--set '{expr}' cannot be parsed: {e}", "Write --set name=value, e.g. --set replicaCount=3"
                ) from None
    return out
