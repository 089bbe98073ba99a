"""finish_tracking: the exit step; ends the pipeline's MLflow run with the run's final state."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from kubedistill.images import train_image


@dsl.component(base_image=train_image(), install_kfp_package=False)
def finish_tracking(status: PipelineTaskFinalStatus, mlflow_experiment: str = "kubedistill"):
    """Runs last, also after a failure: marks the pipeline's MLflow parent run FINISHED, FAILED or KILLED."""
    from kubedistill.pipeline.steps import run
    from kubedistill.pipeline.tracking import finish_tracking as finish

    run(finish, status.state, experiment=mlflow_experiment, error=status.error_message or "")
