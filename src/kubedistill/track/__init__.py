"""kubedistill.track: MLflow tracking and registry (mlflow is imported only when these are used).

- training runs: `mlflow=True` or MLFLOW_TRACKING_URI (see `track.callback`), resilient to a slow or down
  server (`track.logger`); `run_info(save_dir)` gives the run a training run logged to;
- pipeline runs: `start_parent_run`, `log_child_run`, `end_run` (`track.runs`);
- registry: `track.registry` (register_student, champion, fetch_model), `track.promote` (the gate).
"""

from __future__ import annotations


def run_info(save_dir):
    from kubedistill.track.runs import run_info as f

    return f(save_dir)


def start_parent_run(name, **kw):
    from kubedistill.track.runs import start_parent_run as f

    return f(name, **kw)


def end_run(run_id, status="FINISHED", **kw):
    from kubedistill.track.runs import end_run as f

    return f(run_id, status, **kw)


def log_child_run(parent_run_id, name, **kw):
    from kubedistill.track.runs import log_child_run as f

    return f(parent_run_id, name, **kw)
