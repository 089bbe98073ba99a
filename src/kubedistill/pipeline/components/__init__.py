"""The pipeline's steps as KFP v2 lightweight Python components, one module per step.

Each body imports kubedistill inside the function and calls one function of `kubedistill.pipeline`
with plain arguments (artifact `.path`s and values), so the step's logic is tested without KFP. They run
on the train image (`kubedistill.images.train_image()`, kubedistill[pipeline] installed: no packages are
installed at run time). Their compiled specs are committed under `components/` at the repository root,
for anyone composing their own pipeline (`kfp.components.load_component_from_file`).

Note: these modules must not use `from __future__ import annotations`: KFP reads the real annotations.
"""

from kubedistill.pipeline.components.check_unchanged import check_unchanged
from kubedistill.pipeline.components.deploy import deploy
from kubedistill.pipeline.components.distill_student import distill_student
from kubedistill.pipeline.components.evaluate import evaluate
from kubedistill.pipeline.components.finish_tracking import finish_tracking
from kubedistill.pipeline.components.prepare_data import prepare_data
from kubedistill.pipeline.components.promotion_gate import promotion_gate
from kubedistill.pipeline.components.register import register
from kubedistill.pipeline.components.train_teacher import train_teacher

# In pipeline order (finish_tracking is the exit step).
COMPONENTS = {
    c.name: c
    for c in (
        prepare_data,
        check_unchanged,
        train_teacher,
        distill_student,
        evaluate,
        register,
        promotion_gate,
        deploy,
        finish_tracking,
    )
}

__all__ = [
    "COMPONENTS",
    "check_unchanged",
    "deploy",
    "distill_student",
    "evaluate",
    "finish_tracking",
    "prepare_data",
    "promotion_gate",
    "register",
    "train_teacher",
]
