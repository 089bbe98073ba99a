"""What `kubedistill deploy` asks the chart for: a pinned model, replica counts, an optional canary.

Pure functions (no Helm, no cluster): `check_pinned_uri`, `split_replicas` (canary weight ->
replica counts) and `make_plan`, which turns a request into the values passed to Helm. In serving mode
`kserve` a canary is KServe's own: the InferenceService's model becomes the candidate with
`canaryTrafficPercent` = the weight, and KServe keeps the rest on the revision rolled out before.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from kubedistill.core.errors import UserError
from kubedistill.core.names import SERVING_MODES

_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>[0-9]+)$")
_MODEL_ID = re.compile(r"^models:/m-[0-9a-f]{8,64}$")  # an MLflow LoggedModel: immutable
_S3 = re.compile(r"^s3://[a-z0-9][a-z0-9.\-]*[a-z0-9]/.+")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_pinned_uri(uri: str, what: str = "--model-uri") -> str:
    """`uri` if it names one fixed model (models:/NAME/VERSION, a LoggedModel's models:/m-..., or s3://bucket/key);
    UserError otherwise."""
    text = (uri or "").strip()
    pin = "Pin a version: models:/NAME/VERSION (a rollout is what moves the served model, so a running Deployment never follows an alias)"
    if text.startswith("models:/"):
        if _VERSION.match(text) or _MODEL_ID.match(text):
            return text
        rest = text[len("models:/") :]
        if "@" in rest:
            raise UserError(f"{what} '{text}' is a registry alias (@{rest.split('@', 1)[1]}), which moves", pin)
        version = rest.partition("/")[2]
        if version.lower() == "latest":
            raise UserError(f"{what} '{text}' follows the latest version, which moves", pin)
        if version:
            raise UserError(f"{what} '{text}': '{version}' is not a version number (stages move)", pin)
        raise UserError(f"{what} '{text}' names no version", pin)
    if _S3.match(text):
        return text
    raise UserError(
        f"{what} '{text}' is not a model URI a Deployment can pin",
        "Use models:/NAME/VERSION (MLflow registry) or s3://bucket/path/model.onnx",
    )


def check_name(value: str, what: str, max_len: int) -> str:
    """A DNS-1123 label (release names: at most 53 characters, namespaces 63)."""
    if not value or len(value) > max_len or not _DNS_LABEL.match(value):
        raise UserError(
            f"{what} '{value}' is not a valid name",
            f"Use at most {max_len} lower-case letters, digits and '-', starting and ending with a letter or digit",
        )
    return value


def check_weight(weight: int) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 99:
        raise UserError(
            f"--canary-weight {weight} is out of range", "Use a whole number 1-99 (percent of requests for the canary)"
        )
    return weight


def split_replicas(weight: int, total: int) -> tuple[int, int]:
    """(stable, canary) replica counts whose ratio is closest to `weight` percent for the canary.

    The Service spreads requests over every ready pod of both Deployments, so the canary's share is
    about canary / (stable + canary). The larger side gets `total` replicas, the smaller side
    round(total * small% / large%), at least 1: 10% of 4 -> (4, 1) = 20%; 10% of 9 -> (9, 1) = 10%;
    50% of 3 -> (3, 3); 75% of 2 -> (1, 2) = 67%. More replicas give a finer share.
    """
    check_weight(weight)
    if total < 1:
        raise UserError(f"replicaCount {total} must be at least 1", "Set replicaCount to 1 or more")
    if weight <= 50:
        return total, max(1, round(total * weight / (100 - weight)))
    return max(1, round(total * (100 - weight) / weight)), total


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in (nested dicts merge; anything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


KNATIVE_MODES = ("Knative", "Serverless")


@dataclass
class Plan:
    release: str
    namespace: str
    model_uri: str
    values: dict  # what is passed to Helm (the chart's defaults fill the rest)
    mode: str = "deployment"
    canary_uri: str | None = None
    canary_weight: int | None = None
    replicas: dict = field(default_factory=dict)  # {"stable": n or "min-max (autoscaled)", "canary": n}
    canary_share: float | None = None  # the canary's expected share of requests, 0-1
    notes: list[str] = field(default_factory=list)


def make_plan(
    release: str,
    namespace: str,
    model_uri: str,
    *,
    canary_uri: str | None = None,
    canary_weight: int | None = None,
    values: dict | None = None,
    defaults: dict | None = None,
    mode: str | None = None,
) -> Plan:
    """The values for one rollout. `values` are the user's own (a values file, --set); `defaults` the chart's;
    `mode` ("deployment" or "kserve") sets serving.mode (default: what the values say)."""
    check_name(release, "Release", 53)
    check_name(namespace, "Namespace", 63)
    vals = copy.deepcopy(values or {})
    if mode is not None:
        if mode not in SERVING_MODES:
            raise UserError(f"--mode '{mode}' is not a serving mode", f"Use one of: {', '.join(SERVING_MODES)}")
        vals = deep_merge(vals, {"serving": {"mode": mode}})
    mode = (deep_merge(defaults or {}, vals).get("serving") or {}).get("mode") or "deployment"
    if mode == "kserve":
        return _kserve_plan(release, namespace, model_uri, canary_uri, canary_weight, vals, defaults or {})
    given = (vals.get("model") or {}).get("uri")
    model_uri = check_pinned_uri(model_uri)
    vals = deep_merge(vals, {"model": {"uri": model_uri}})
    plan = Plan(release, namespace, model_uri, vals)
    if given and given != model_uri:
        plan.notes.append(f"--model-uri {model_uri} replaces model.uri {given} from the values")
    if (canary_uri is None) != (canary_weight is None):
        raise UserError(
            "A canary needs both --canary-uri and --canary-weight",
            "Pass the candidate model with --canary-uri and its share of requests with --canary-weight (1-99)",
        )
    merged = deep_merge(defaults or {}, vals)
    scaling = merged.get("autoscaling") or {}
    if canary_uri is None:
        canary = merged.get("canary") or {}
        if canary.get("enabled"):  # the user's values enable it: their replica counts stand
            plan.canary_uri = (canary.get("model") or {}).get("uri")
            plan.replicas["canary"] = canary.get("replicas")
        plan.replicas["stable"] = _stable_desc(merged)
        return plan
    plan.canary_uri = check_pinned_uri(canary_uri, "--canary-uri")
    plan.canary_weight = check_weight(canary_weight)
    if plan.canary_uri == model_uri:
        plan.notes.append("the canary serves the same model as the stable Deployment")
    if scaling.get("enabled"):
        # the HPA owns the stable count: size the canary against minReplicas; its share falls as the HPA adds pods
        lo, hi = int(scaling.get("minReplicas", 1)), int(scaling.get("maxReplicas", 1))
        stable, canary = lo, min(hi, max(1, round(lo * plan.canary_weight / (100 - plan.canary_weight))))
        plan.replicas["stable"] = f"{lo}-{hi} (autoscaled)"
        plan.notes.append(
            f"autoscaling is on: the canary's {canary} replica(s) are sized against minReplicas {lo}; "
            "its share falls as the autoscaler adds stable pods"
        )
    else:
        stable, canary = split_replicas(plan.canary_weight, int(merged.get("replicaCount", 1)))
        plan.values["replicaCount"] = stable
        plan.replicas["stable"] = stable
    plan.values = deep_merge(
        plan.values, {"canary": {"enabled": True, "model": {"uri": plan.canary_uri}, "replicas": canary}}
    )
    plan.replicas["canary"] = canary
    plan.canary_share = canary / (stable + canary)
    if abs(plan.canary_share * 100 - plan.canary_weight) >= 5:
        plan.notes.append(
            f"with {stable} stable and {canary} canary replica(s) the canary gets about {plan.canary_share:.0%} "
            f"of requests, not {plan.canary_weight}%: raise replicaCount for a finer split"
        )
    return plan


def _kserve_plan(release, namespace, model_uri, canary_uri, canary_weight, vals, defaults) -> Plan:
    """serving.mode kserve: the InferenceService serves the candidate with canaryTrafficPercent, or the model at 100%."""
    model_uri = check_pinned_uri(model_uri)
    if (canary_uri is None) != (canary_weight is None):
        raise UserError(
            "A canary needs both --canary-uri and --canary-weight",
            "Pass the candidate model with --canary-uri and its share of requests with --canary-weight (1-99)",
        )
    given = (vals.get("model") or {}).get("uri")
    k = deep_merge(defaults.get("kserve") or {}, vals.get("kserve") or {})
    scale = f"{k.get('minReplicas')}-{k.get('maxReplicas')} (KServe autoscaled)"
    plan = Plan(release, namespace, model_uri, vals, mode="kserve", replicas={"stable": scale})
    if canary_uri is None:
        if k.get("canaryTrafficPercent") is not None:
            plan.notes.append(
                f"kserve.canaryTrafficPercent {k['canaryTrafficPercent']} from the values is cleared: without "
                "--canary-uri the new spec gets all the traffic"
            )
        served, percent = model_uri, None
    else:
        if k.get("deploymentMode", "Knative") not in KNATIVE_MODES:
            raise UserError(
                f"A KServe canary needs kserve.deploymentMode Knative, not {k.get('deploymentMode')}",
                "KServe splits traffic between revisions only in Knative (serverless) mode: deploy without "
                "--canary-uri, or use a Knative InferenceService",
            )
        plan.canary_uri = check_pinned_uri(canary_uri, "--canary-uri")
        plan.canary_weight = check_weight(canary_weight)
        plan.canary_share = plan.canary_weight / 100
        plan.replicas["canary"] = scale
        if plan.canary_uri == model_uri:
            plan.notes.append("the canary serves the same model as the stable revision")
        served, percent = plan.canary_uri, plan.canary_weight
    if given and given != served:
        plan.notes.append(f"the InferenceService serves {served}, not model.uri {given} from the values")
    plan.values = deep_merge(
        vals,
        {
            "serving": {"mode": "kserve"},
            "model": {"uri": served},
            "kserve": {"canaryTrafficPercent": percent, "stableModelUri": model_uri},
        },
    )
    return plan


def _stable_desc(merged: dict) -> int | str:
    scaling = merged.get("autoscaling") or {}
    if scaling.get("enabled"):
        return f"{scaling.get('minReplicas')}-{scaling.get('maxReplicas')} (autoscaled)"
    return int(merged.get("replicaCount", 1))
