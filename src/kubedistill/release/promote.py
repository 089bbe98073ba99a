"""The promotion gate: move `champion` only to a version that is at least as good, measured now.

`promote(name, version, data)` evaluates the current champion and the candidate on the same validation
data in this process (never the figures stored with their own runs, which may come from other data), and
moves the `champion` alias only if candidate >= champion + min_delta. With no champion yet the candidate
is promoted. Both figures and the decision are recorded as tags on the candidate version; the replaced
champion keeps the alias `previous-champion` so a rollback has a name to go to.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from kubedistill.core.errors import UserError
from kubedistill.core.names import PROMOTION_METRICS
from kubedistill.track.registry import CHAMPION, PREVIOUS, champion, client, fetch_model, resolve_uri, version_info


def evaluate_version(
    name: str,
    version: str,
    data: str | Path,
    *,
    tracking_uri: str = "",
    imgsz: int | None = None,
    batch: int = 16,
    workers: int = 2,
    device: str = "",
    cache: Path | None = None,
) -> dict:
    """COCO metrics of registered version `version` on `data` (its training imgsz unless given)."""
    from kubedistill.eval.run import run_val
    from kubedistill.model.checkpoint import load_model

    pt = fetch_model(f"models:/{name}/{version}", cache, kind="pt", tracking_uri=tracking_uri)
    model, ckpt = load_model(pt)
    size = imgsz or int(ckpt["train_args"]["imgsz"])
    return run_val(model, data, imgsz=size, batch=batch, device=device, workers=workers)


def decide(candidate: float, champion_value: float | None, min_delta: float) -> tuple[bool, str]:
    """The gate itself: (promote?, reason)."""
    if not math.isfinite(candidate):
        return False, f"candidate score is {candidate}"
    if champion_value is None:
        return True, "no champion yet"
    if not math.isfinite(champion_value):
        return True, f"champion score is {champion_value}"
    need = champion_value + min_delta
    if candidate >= need:
        return True, f"candidate {candidate:.4f} >= champion {champion_value:.4f} + min_delta {min_delta:g}"
    return False, f"candidate {candidate:.4f} < champion {champion_value:.4f} + min_delta {min_delta:g}"


def promote(
    model_name: str,
    version: str,
    data: str | Path,
    *,
    metric: str = "mAP50-95",
    min_delta: float = 0.0,
    tracking_uri: str = "",
    imgsz: int | None = None,
    batch: int = 16,
    workers: int = 2,
    device: str = "",
    cache: Path | None = None,
) -> dict:
    """Evaluate candidate and champion now, move `champion` if the candidate passes; returns the decision."""
    if metric not in PROMOTION_METRICS:
        raise UserError(f"Unknown promotion metric '{metric}'", f"Use one of: {', '.join(PROMOTION_METRICS)}")
    uri = resolve_uri(tracking_uri)[0]
    version = str(version)
    version_info(model_name, version, tracking_uri=uri)  # fails clearly when the candidate does not exist
    current = champion(model_name, tracking_uri=uri)
    kw = dict(tracking_uri=uri, imgsz=imgsz, batch=batch, workers=workers, device=device, cache=cache)
    cand = evaluate_version(model_name, version, data, **kw)
    result = {
        "model_name": model_name,
        "metric": metric,
        "min_delta": min_delta,
        "data": str(data),
        "candidate": {"version": version, "value": _num(cand.get(metric))},
        "champion": None,
    }
    if current is not None and current["version"] == version:
        result.update(promoted=False, reason=f"version {version} is already the champion")
        result["champion"] = {"version": version, "value": result["candidate"]["value"]}
        _record(model_name, version, result, uri)
        return result
    champ_value = None
    if current is not None:
        champ = evaluate_version(model_name, current["version"], data, **kw)
        champ_value = _num(champ.get(metric))
        result["champion"] = {"version": current["version"], "value": champ_value}
    promoted, reason = decide(result["candidate"]["value"], champ_value, min_delta)
    result.update(promoted=promoted, reason=reason)
    cl = client(uri)
    if promoted:
        if current is not None:
            cl.set_registered_model_alias(model_name, PREVIOUS, current["version"])
        cl.set_registered_model_alias(model_name, CHAMPION, version)
    _record(model_name, version, result, uri)
    return result


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _record(name: str, version: str, result: dict, uri: str) -> None:
    champ = result["champion"] or {}
    tags = {
        "promotion.decision": "promoted" if result["promoted"] else "rejected",
        "promotion.reason": result["reason"],
        "promotion.metric": result["metric"],
        "promotion.min_delta": str(result["min_delta"]),
        "promotion.candidate_value": f"{result['candidate']['value']:.6f}",
        "promotion.champion_version": str(champ.get("version", "")),
        "promotion.champion_value": "" if champ.get("value") is None else f"{champ['value']:.6f}",
        "promotion.data": result["data"],
        "promotion.date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    cl = client(uri)
    for k, v in tags.items():
        cl.set_model_version_tag(name, version, k, v)
