"""kubedistill.track: MLflow tracking and reading the registry (mlflow is imported only when these are used).

- training runs: `mlflow=True` or MLFLOW_TRACKING_URI (see `track.callback`), resilient to a slow or down
  server (`track.logger`); `track.runs.run_info(save_dir)` gives the run a training run logged to;
- pipeline runs: `start_parent_run`, `log_child_run`, `end_run` (`track.runs`);
- registry: `track.registry` (model URIs, champion, fetch_model); registering and the promotion gate are
  `kubedistill.release`.
"""
