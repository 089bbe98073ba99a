"""Names shared across the layers, each written once: the detection metrics, the pipeline run id's variable, and
the cluster objects the pipeline's steps and TrainJobs use."""

from __future__ import annotations

# The accuracy figures of a validation, in the order tables and logs show them (COCO mAP, size buckets, P/R/F1).
METRIC_NAMES = ("mAP50-95", "mAP50", "mAP75", "AP_small", "AP_medium", "AP_large", "precision", "recall", "f1")
# The metrics a promotion can compare (all of the above; higher is better for each).
PROMOTION_METRICS = METRIC_NAMES
# How a model is served (the chart's serving.mode; `kubedistill deploy --mode`, the pipeline's serving_mode).
SERVING_MODES = ("deployment", "kserve")
# The KFP run id, set on every step's pod from its label (pipeline/dag.py), read by steps and the MLflow callback.
RUN_ID_ENV = "KUBEDISTILL_PIPELINE_RUN_ID"

# Cluster settings every training pod gets (docs/pipeline.md says how to create these): Secrets whose keys become
# environment variables, and the dataset cache volume with where it is mounted.
S3_SECRET = "kubedistill-s3"
MLFLOW_SECRET = "kubedistill-mlflow"
S3_REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL = ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")
MLFLOW_REQUIRED = ("MLFLOW_TRACKING_URI",)
MLFLOW_OPTIONAL = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
SECRET_KEYS = {S3_SECRET: S3_REQUIRED + S3_OPTIONAL, MLFLOW_SECRET: MLFLOW_REQUIRED + MLFLOW_OPTIONAL}
CACHE_PVC = "kubedistill-dataset-cache"
PVC_CACHE = "/var/cache/kubedistill"  # where the cache volume is mounted on a cluster
SHM_SIZE = "2Gi"  # a memory-backed /dev/shm for DataLoader workers (a pod's default is 64 MB)
