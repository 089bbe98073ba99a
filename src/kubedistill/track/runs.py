"""Runs outside training: the pipeline's parent run and its nested child runs (evaluation, registration).

Training runs become children by setting `mlflow_parent=<parent run id>` in their config.
"""

from __future__ import annotations

import json
from pathlib import Path

from kubedistill.track.logger import dataset_input, flatten, is_number, param_text, read_run_file
from kubedistill.track.settings import client, experiment_id, git_commit, resolve_uri


def run_info(save_dir: str | Path) -> dict | None:
    """{"run_id", "experiment_id", "tracking_uri"} of the MLflow run a training run logged to, or None."""
    info = read_run_file(save_dir)
    return info if info and info.get("run_id") else None


def start_parent_run(
    name: str,
    *,
    experiment: str | None = None,
    tags: dict | None = None,
    tracking_uri: str = "",
    project: str | Path = "runs",
) -> str:
    """Create a run (e.g. one per pipeline run) and return its id; it stays RUNNING until `end_run`."""
    uri, artifacts = resolve_uri(tracking_uri, project)
    cl = client(uri)
    exp = experiment_id(cl, experiment or "", artifacts)
    all_tags = {"git_commit": git_commit(), **{str(k): str(v) for k, v in (tags or {}).items()}}
    run = cl.create_run(exp, run_name=name, tags={k: v for k, v in all_tags.items() if v})
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED", *, tracking_uri: str = "", project: str | Path = "runs") -> None:
    client(resolve_uri(tracking_uri, project)[0]).set_terminated(run_id, status)


def log_child_run(
    parent_run_id: str,
    name: str,
    *,
    params: dict | None = None,
    metrics: dict | None = None,
    artifacts: list[str | Path] = (),
    tags: dict | None = None,
    dataset: dict | None = None,
    tracking_uri: str = "",
    project: str | Path = "runs",
) -> str:
    """A finished child run of `parent_run_id` holding params, metrics (numbers only), artifacts and the dataset it
    measured ({"name", "digest", "source", "context"}, a dataset input)."""
    from mlflow.entities import Metric, Param

    uri = resolve_uri(tracking_uri, project)[0]
    cl = client(uri)
    parent = cl.get_run(parent_run_id)
    all_tags = {"mlflow.parentRunId": parent_run_id, **{str(k): str(v) for k, v in (tags or {}).items()}}
    run = cl.create_run(parent.info.experiment_id, run_name=name, tags=all_tags)
    rid = run.info.run_id
    flat = flatten(metrics or {})
    cl.log_batch(
        rid,
        metrics=[Metric(k, float(v), 0, 0) for k, v in flat.items() if is_number(v)],
        params=[Param(k, param_text(v)) for k, v in flatten(params or {}).items()],
        tags=[],
    )
    if dataset:
        cl.log_inputs(rid, datasets=[dataset_input(**dataset)])
    rest = {k: v for k, v in flat.items() if not is_number(v)}
    if rest:
        cl.log_text(rid, json.dumps(rest, indent=2, default=str), "non_numeric_metrics.json")
    for a in artifacts:
        p = Path(a)
        if p.is_dir():
            cl.log_artifacts(rid, str(p), p.name)
        elif p.exists():
            cl.log_artifact(rid, str(p))
    cl.set_terminated(rid, "FINISHED")
    return rid
