"""The Kubernetes API client as every kubedistill command that talks to a cluster uses it (deploy, TrainJobs):
configuration from a kubeconfig or a pod's service account, and API errors told apart and put in one line.
The kubernetes package is imported only when a cluster is used."""

from __future__ import annotations

import json
import os

from kubedistill.core.errors import UserError

# What may pass when tried again: no response (0), conflicts, throttling and the server's own failures
RETRY_STATUS = frozenset({0, 408, 409, 429, 500, 502, 503, 504})


def api_client(kubeconfig: str | None = None, context: str | None = None):
    """A kubernetes ApiClient from a kubeconfig (KUBECONFIG, ~/.kube/config) or, inside a pod, its service account."""
    from kubernetes import client, config

    try:
        if kubeconfig or context or not os.environ.get("KUBERNETES_SERVICE_HOST"):
            return config.new_client_from_config(config_file=kubeconfig, context=context)
        config.load_incluster_config()
        return client.ApiClient()
    except (config.ConfigException, OSError) as e:
        raise UserError(
            f"No usable Kubernetes configuration: {e}", "Set KUBECONFIG or pass --kubeconfig / --kube-context"
        ) from None


def api_status(e: BaseException) -> int | None:
    """The HTTP status of a kubernetes ApiException (0 for no response), None for anything else."""
    try:
        from kubernetes.client.exceptions import ApiException
    except ImportError:  # pragma: no cover - installed with the deploy and pipeline extras
        return None
    return (e.status or 0) if isinstance(e, ApiException) else None


def transient(e: BaseException, retry: frozenset[int] | set[int] = RETRY_STATUS) -> bool:
    """Whether an API call that raised `e` may pass when tried again (a status in `retry`, a lost connection)."""
    status = api_status(e)
    if status is not None:
        return status in retry
    try:
        import urllib3

        if isinstance(e, urllib3.exceptions.HTTPError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(e, (OSError, TimeoutError))


def short_error(e: BaseException) -> str:
    """ "403 Forbidden (deployments.apps ... is forbidden: ...)" from an ApiException and its Status body."""
    status = api_status(e)
    if status is None:
        return f"{type(e).__name__}: {e}"
    said = ""
    try:
        said = json.loads(e.body or "{}").get("message", "")
    except (ValueError, TypeError, AttributeError):
        pass
    return " ".join(x for x in (str(status), getattr(e, "reason", "") or "", f"({said})" if said else "") if x)
