"""Names shared across the layers, each written once: the detection metrics and the pipeline run id's variable."""

from __future__ import annotations

# The accuracy figures of a validation, in the order tables and logs show them (COCO mAP, size buckets, P/R/F1).
METRIC_NAMES = ("mAP50-95", "mAP50", "mAP75", "AP_small", "AP_medium", "AP_large", "precision", "recall", "f1")
# The metrics a promotion can compare (all of the above; higher is better for each).
PROMOTION_METRICS = METRIC_NAMES
# The KFP run id, set on every step's pod from its label (pipeline/dag.py), read by steps and the MLflow callback.
RUN_ID_ENV = "KUBEDISTILL_PIPELINE_RUN_ID"
