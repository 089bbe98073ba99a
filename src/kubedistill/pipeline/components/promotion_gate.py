"""promotion_gate: move the champion alias only to a version that is not worse (`steps.gate_step`)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from kubedistill.images import train_image


@dsl.component(base_image=train_image(), install_kfp_package=False)
def promotion_gate(
    dataset: Input[Dataset],
    version: str,
    decision: Output[Markdown],
    registered_model_name: str,
    promotion_metric: str = "mAP50-95",
    promotion_min_delta: float = 0.0,
    mlflow_experiment: str = "kubedistill",
) -> bool:
    """Score the champion and this version now on the same val data; promote (alias champion) when the version
    reaches champion + min_delta, or when there is no champion yet. True when promoted."""
    from pathlib import Path

    from kubedistill.pipeline.steps import gate_step, run

    res = run(
        gate_step,
        registered_model_name,
        version,
        dataset.path,
        metric=promotion_metric,
        min_delta=promotion_min_delta,
        experiment=mlflow_experiment,
        out_md=Path(decision.path),
    )
    decision.metadata.update({"promoted": bool(res["promoted"]), "reason": res["reason"]})
    return bool(res["promoted"])
