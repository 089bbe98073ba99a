"""check_unchanged: the data gate of scheduled retraining (`kubedistill.pipeline.steps.check_unchanged`)."""

from kfp import dsl
from kfp.dsl import HTML, Input, Markdown, Output

from kubedistill.images import train_image


@dsl.component(base_image=train_image(), install_kfp_package=False)
def check_unchanged(
    fingerprint: str,
    dataset_uri: str,
    data_report: Input[HTML],
    decision: Output[Markdown],
    registered_model_name: str,
    skip_if_unchanged: bool = False,
    mlflow_experiment: str = "kubedistill",
) -> bool:
    """True (train) unless skip_if_unchanged is on and the champion was trained on data with this very
    fingerprint; then the run ends here and says so. Opens the pipeline run's MLflow parent run."""
    from pathlib import Path

    from kubedistill.pipeline.steps import check_unchanged as check
    from kubedistill.pipeline.steps import run

    res = run(
        check,
        fingerprint,
        registered_model_name,
        skip_if_unchanged=skip_if_unchanged,
        experiment=mlflow_experiment,
        dataset_uri=dataset_uri,
        reports=[Path(data_report.path)],
        out_md=Path(decision.path),
    )
    decision.metadata.update({"proceed": res["proceed"], "reason": res["reason"]})
    return bool(res["proceed"])
