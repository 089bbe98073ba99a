"""`kubedistill pipeline compile | upload | submit`: the pipeline on a Kubeflow Pipelines endpoint.

- compile: `dag.training_pipeline` -> a YAML package (default pipelines/compiled/training.yaml);
- upload: creates the pipeline (once) and a pipeline version named after the package's content
  (`v<kubedistill version>-<sha256[:12]>`), so uploading the same YAML twice is a no-op and a changed one
  is a new version in the dashboard;
- submit: a run of a version (the latest by default) or of a package, in an experiment made on first use.

Connection: host (or KF_PIPELINES_ENDPOINT; in a pod, the in-cluster service), namespace (multi-user
Kubeflow), and a bearer token or a service-account token file (projected token, refreshed on each call).
Reads are retried with backoff when the server is unreachable or answers 5xx; creates are not (a retried
create could make a second run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubedistill.core.atomic import atomic_write_bytes
from kubedistill.core.errors import UserError
from kubedistill.core.version import __version__
from kubedistill.pipeline import PIPELINE_NAME
from kubedistill.pipeline.params import load_spec

DEFAULT_EXPERIMENT = "kubedistill"
DEFAULT_PACKAGE = Path("pipelines/compiled/training.yaml")
SHA_MARK = "kubedistill-sha256:"
_EQUALS = 1  # filter.proto Predicate.Operation EQUALS
log = logging.getLogger("kubedistill")


@dataclass
class Endpoint:
    """Where KFP is and how to authenticate."""

    host: str | None = None
    namespace: str | None = None
    token: str | None = None
    sa_token_path: str | None = None
    ssl_ca_cert: str | None = None
    verify_ssl: bool = True


def compile_pipeline(out: str | Path = DEFAULT_PACKAGE) -> Path:
    """Compile the pipeline to `out` (written atomically); returns it."""

    from kfp import compiler

    from kubedistill.pipeline.dag import training_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(training_pipeline, str(path))
        return atomic_write_bytes(out, path.read_bytes())


def compile_components(out_dir: str | Path) -> list[Path]:
    """Each step's component spec as `<out_dir>/<step>.yaml` (loadable with kfp.components.load_component_from_file)."""

    from kfp import compiler

    from kubedistill.pipeline.components import COMPONENTS

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, comp in COMPONENTS.items():
            path = Path(tmp) / f"{name}.yaml"
            compiler.Compiler().compile(comp, str(path))
            written.append(atomic_write_bytes(Path(out_dir) / f"{name}.yaml", path.read_bytes()))
    return written


def package_digest(package: str | Path) -> str:
    return hashlib.sha256(Path(package).read_bytes()).hexdigest()


def connect(ep: Endpoint):
    """A kfp.Client for `ep`; UserError when it cannot be reached or refuses the credentials."""
    import kfp

    host = ep.host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not host and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise UserError(
            "No Kubeflow Pipelines endpoint given",
            "Pass --host (e.g. http://localhost:8080 after "
            "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`) or set KF_PIPELINES_ENDPOINT",
        )
    creds = None
    if ep.sa_token_path:
        if not Path(ep.sa_token_path).is_file():
            raise UserError(f"Service-account token file '{ep.sa_token_path}' does not exist", "Check --sa-token")
        from kfp.client import ServiceAccountTokenVolumeCredentials

        creds = ServiceAccountTokenVolumeCredentials(path=ep.sa_token_path)
    if host:
        token = ep.token or (Path(ep.sa_token_path).read_text().strip() if ep.sa_token_path else None)
        probe(host, token, ssl_ca_cert=ep.ssl_ca_cert, verify_ssl=ep.verify_ssl)
    kwargs: dict[str, Any] = dict(
        host=host,
        existing_token=ep.token or None,
        credentials=creds,
        ssl_ca_cert=ep.ssl_ca_cert,
        verify_ssl=ep.verify_ssl,
    )
    if ep.namespace:
        kwargs["namespace"] = ep.namespace
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return call(lambda: kfp.Client(**kwargs), f"connecting to {host or 'the in-cluster endpoint'}", retry=True)


def probe(
    host: str,
    token: str | None = None,
    *,
    ssl_ca_cert: str | None = None,
    verify_ssl: bool = True,
    attempts: int = 3,
    backoff: float = 1.0,
) -> dict:
    """GET /apis/v2beta1/healthz first, so a wrong host or token fails at once with a clear message (kfp.Client
    itself retries healthz for 25 s and then reports any failure as a timeout)."""
    import urllib3

    url = (host if host.startswith("http") else f"https://{host}").rstrip("/") + "/apis/v2beta1/healthz"
    kw: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED" if verify_ssl else "CERT_NONE"}
    if ssl_ca_cert:
        kw["ca_certs"] = ssl_ca_cert
    http = urllib3.PoolManager(**kw)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for i in range(attempts):
        try:
            r = http.request("GET", url, headers=headers, timeout=urllib3.Timeout(connect=5, read=30), retries=False)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if i + 1 < attempts:
                time.sleep(backoff * 2**i)
                continue
            raise UserError(
                f"Cannot reach Kubeflow Pipelines at {host} ({getattr(e, 'reason', None) or e})",
                "Check --host and that the endpoint is up (port-forward running?)",
            ) from None
        if r.status in (401, 403):
            raise UserError(
                f"Kubeflow Pipelines at {host} refused the credentials ({r.status})",
                "Pass a valid --token or --sa-token, and --namespace for multi-user Kubeflow",
            )
        if r.status >= 500 and i + 1 < attempts:
            time.sleep(backoff * 2**i)
            continue
        if r.status != 200:
            raise UserError(
                f"{url} answered {r.status}, not the KFP API", "Check --host: it should be the KFP API or UI endpoint"
            )
        try:
            return json.loads(r.data or b"{}")
        except ValueError:
            raise UserError(f"{url} did not answer JSON: not a KFP endpoint", "Check --host") from None
    return {}


def _status(e: BaseException) -> int | None:
    return getattr(e, "status", None)


def call(fn: Callable[[], Any], what: str, *, retry: bool = False, attempts: int = 3, backoff: float = 1.0) -> Any:
    """Run one KFP API call; unreachable/5xx are retried (reads only), and failures become one-line UserErrors."""
    import kfp_server_api
    import urllib3

    for i in range(attempts if retry else 1):
        try:
            return fn()
        except kfp_server_api.ApiException as e:
            status = _status(e)
            body = getattr(e, "body", "") or ""
            if isinstance(body, bytes):
                body = body.decode(errors="replace")
            try:
                detail = json.loads(body).get("message") or body
            except (ValueError, AttributeError):
                detail = body or str(e)
            detail = " ".join(str(detail).split())[:300]
            if status in (401, 403):
                raise UserError(
                    f"Kubeflow Pipelines refused {what} ({status}: {detail})",
                    "Pass a valid --token or --sa-token, and --namespace for multi-user Kubeflow",
                ) from None
            if status == 404:
                raise UserError(f"{what}: not found ({detail})", "Check the names and --host") from None
            if status is not None and status >= 500 and retry and i + 1 < attempts:
                time.sleep(backoff * 2**i)
                continue
            raise UserError(
                f"Kubeflow Pipelines failed {what} ({status}: {detail})", "See the KFP API server's log"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if retry and i + 1 < attempts:
                time.sleep(backoff * 2**i)
                continue
            reason = getattr(e, "reason", None) or e
            raise UserError(
                f"Cannot reach Kubeflow Pipelines {what} ({reason})",
                "Check --host and that the endpoint is up (port-forward running?)",
            ) from None


def _filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": _EQUALS, "key": "display_name", "stringValue": name}]})


def pipeline_id(client, name: str) -> str | None:
    return call(lambda: client.get_pipeline_id(name), f"looking up pipeline '{name}'", retry=True)


def find_version(client, pid: str, version: str | None = None):
    """The pipeline version named `version`, or the newest one when None (None when there is none)."""
    if version:
        res = call(
            lambda: client.list_pipeline_versions(pid, page_size=2, filter=_filter(version)),
            f"looking up version '{version}'",
            retry=True,
        )
    else:
        res = call(
            lambda: client.list_pipeline_versions(pid, page_size=1, sort_by="created_at desc"),
            "listing versions",
            retry=True,
        )
    found = res.pipeline_versions or []
    return found[0] if found else None


def require_version(client, name: str, version: str | None, fix: str) -> tuple[str, object]:
    """(pipeline id, version) of pipeline `name` (its newest version when `version` is empty); a UserError
    when either is missing, ending with `fix` for a missing version."""
    pid = pipeline_id(client, name)
    if pid is None:
        raise UserError(f"No pipeline '{name}' on this endpoint", "Upload it first: `kubedistill pipeline upload`")
    v = find_version(client, pid, version)
    if v is None:
        raise UserError(f"Pipeline '{name}' has no version {repr(version) if version else 'at all'}", fix)
    return pid, v


def upload(
    client,
    package: str | Path = DEFAULT_PACKAGE,
    *,
    name: str = PIPELINE_NAME,
    version: str | None = None,
    description: str = "",
    namespace: str | None = None,
) -> dict:
    """Create pipeline `name` if needed, then a version holding `package` unless the same content is there."""
    import kfp_server_api

    package = Path(package)
    if not package.is_file():
        raise UserError(f"Pipeline package '{package}' does not exist", "Run `kubedistill pipeline compile` first")
    digest = package_digest(package)
    version = version or f"v{__version__}-{digest[:12]}"
    pid = pipeline_id(client, name)
    created_pipeline = False
    if pid is None:
        body = kfp_server_api.V2beta1Pipeline(
            display_name=name, description=description or _description(package), namespace=namespace
        )
        pid = call(
            lambda: client.pipelines.pipeline_service_create_pipeline(pipeline=body), f"creating pipeline '{name}'"
        ).pipeline_id
        created_pipeline = True
    existing = find_version(client, pid, version)
    if existing is not None:
        same = SHA_MARK + digest in (existing.description or "")
        if not same:
            raise UserError(
                f"Pipeline '{name}' already has a version '{version}' with other content",
                "Pick another --version, or leave --version out (default names carry the content hash)",
            )
        return {
            "pipeline_id": pid,
            "version_id": existing.pipeline_version_id,
            "version": version,
            "created": False,
            "created_pipeline": created_pipeline,
            "sha256": digest,
        }
    desc = f"{description or _description(package)} {SHA_MARK}{digest}".strip()
    v = call(
        lambda: client.upload_pipeline_version(str(package), version, pipeline_id=pid, description=desc),
        f"uploading version '{version}' of '{name}'",
    )
    return {
        "pipeline_id": pid,
        "version_id": v.pipeline_version_id,
        "version": version,
        "created": True,
        "created_pipeline": created_pipeline,
        "sha256": digest,
    }


def _description(package: Path) -> str:

    return str(load_spec(package).get("pipelineInfo", {}).get("description", ""))[:900]


def experiment_id(client, name: str, namespace: str | None = None) -> str:
    """The id of experiment `name`, created when missing."""
    exp = call(lambda: client.create_experiment(name, namespace=namespace), f"getting or creating experiment '{name}'")
    return exp.experiment_id


def submit(
    client,
    *,
    params: dict,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    pipeline_name: str = PIPELINE_NAME,
    version: str | None = None,
    package: str | Path | None = None,
    namespace: str | None = None,
    enable_caching: bool | None = None,
    service_account: str | None = None,
) -> dict:
    """Start a run: of `package` when given, else of version `version` (default: the newest) of `pipeline_name`."""
    exp_id = experiment_id(client, experiment, namespace)
    run_name = run_name or f"{pipeline_name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    if package is not None:
        run = call(
            lambda: client.run_pipeline(
                exp_id,
                run_name,
                pipeline_package_path=str(package),
                params=params,
                enable_caching=enable_caching,
                service_account=service_account,
            ),
            f"starting run '{run_name}'",
        )
        ref = {"package": str(package)}
    else:
        pid, v = require_version(
            client, pipeline_name, version, "Upload one with `kubedistill pipeline upload` or check --version"
        )
        run = call(
            lambda: client.run_pipeline(
                exp_id,
                run_name,
                pipeline_id=pid,
                version_id=v.pipeline_version_id,
                params=params,
                enable_caching=enable_caching,
                service_account=service_account,
            ),
            f"starting run '{run_name}'",
        )
        ref = {"pipeline_id": pid, "version_id": v.pipeline_version_id, "version": v.display_name}
    return {
        "run_id": run.run_id,
        "run_name": run_name,
        "experiment_id": exp_id,
        "experiment": experiment,
        **ref,
        "url": f"{client._get_url_prefix()}/#/runs/details/{run.run_id}",
    }
