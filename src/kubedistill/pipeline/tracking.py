"""The pipeline run's MLflow run: when `MLFLOW_TRACKING_URI` is set, a pipeline run gets one parent MLflow run, found by
the tag `pipeline_run_id` (`KUBEDISTILL_PIPELINE_RUN_ID`: the KFP run id, set from the pod label on a cluster and by
`kubedistill run` locally). Steps log child runs under it, and the exit step (`finish_tracking`) ends it with the
run's final state.
"""

from __future__ import annotations

import os
from pathlib import Path

from kubedistill.core.errors import UserError
from kubedistill.core.log import LOGGER, setup_logging
from kubedistill.core.names import RUN_ID_ENV
from kubedistill.track.runs import end_run, start_parent_run
from kubedistill.track.settings import client, experiment_id, resolve_uri

KIND_TAG = "kubedistill_kind"
FINAL_STATES = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELED": "KILLED", "CANCELLED": "KILLED"}


def tracking_on() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


def need_tracking(what: str) -> None:
    if not tracking_on():
        raise UserError(
            f"{what} needs the MLflow model registry, but MLFLOW_TRACKING_URI is not set",
            "Set it (on a cluster: the kubedistill-mlflow Secret; `kubedistill run` sets a local one)",
        )


def parent_run(experiment: str = "", *, create: bool = True, tags: dict | None = None) -> str | None:
    """The MLflow run of this pipeline run (made on first use), or None when tracking is off or no run id is known."""
    rid = os.environ.get(RUN_ID_ENV, "")
    if not rid or not tracking_on():
        return None

    uri, artifacts = resolve_uri()
    cl = client(uri)
    exp = experiment_id(cl, experiment, artifacts)
    safe = rid.replace("'", "")
    found = cl.search_runs(
        [exp], filter_string=f"tags.{KIND_TAG} = 'pipeline' and tags.pipeline_run_id = '{safe}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    if not create:
        return None
    all_tags = {KIND_TAG: "pipeline", "pipeline_run_id": rid, **{k: str(v) for k, v in (tags or {}).items()}}
    return start_parent_run(f"pipeline-{rid[:12]}", experiment=experiment or None, tags=all_tags)


def parent_tags(parent: str | None, tags: dict) -> None:
    if not parent:
        return

    cl = client(resolve_uri()[0])
    for k, v in tags.items():
        cl.set_tag(parent, k, str(v))


def parent_artifacts(parent: str | None, paths: list[Path], folder: str) -> None:
    if not parent:
        return

    cl = client(resolve_uri()[0])
    for p in paths:
        if Path(p).is_file():
            cl.log_artifact(parent, str(p), folder)


def finish_tracking(state: str, *, experiment: str = "", error: str = "") -> dict:
    """The exit step: end the pipeline's MLflow run (if still running) with the KFP run's final state."""
    parent = parent_run(experiment, create=False)
    if parent is None:
        return {"parent_run_id": None, "status": None}

    cl = client(resolve_uri()[0])
    run_ = cl.get_run(parent)
    status = FINAL_STATES.get(state.upper(), "FAILED")
    if run_.info.status == "RUNNING":
        if error:
            cl.set_tag(parent, "pipeline_error", error[:5000])
        cl.set_tag(parent, "pipeline_state", state)
        end_run(parent, status)
    else:
        status = run_.info.status
    setup_logging()
    LOGGER.info(f"MLflow pipeline run {parent}: {status}")
    return {"parent_run_id": parent, "status": status}
