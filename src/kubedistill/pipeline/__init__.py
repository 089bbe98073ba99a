"""kubedistill.pipeline: the Kubeflow pipeline (teacher -> distilled student -> evaluate -> register -> gate -> deploy).

- `prepare`, `steps`, `report`: what each step does, as plain functions (no KFP needed to run or test them);
- `components/`: one KFP lightweight component per step, each calling one of those functions;
- `dag`: the pipeline itself (`training_pipeline`), compiled to `pipelines/compiled/training.yaml`;
- `params`: the pipeline's parameters, read from its spec, and typed values for them;
- `local`: `kubedistill run`, the same pipeline run here through `kfp.local`;
- `kfp_client`, `schedule`: compile, upload, submit and recurring runs against a KFP endpoint.

Importing this package is cheap; kfp, torch and mlflow load only in the modules that need them.
"""

from __future__ import annotations

PIPELINE_NAME = "kubedistill-training"
