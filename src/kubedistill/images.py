"""Container image references, read from the ONE place they are written: the chart's values.yaml.

`image` there is the inference server (docker/Dockerfile.serve), `trainImage` the pipeline steps'
image (docker/Dockerfile.train). The chart deploys `image`; the Kubeflow pipeline calls
`train_image()` when it compiles its components. `python -m kubedistill.images serve|train` prints
one reference (for `docker build -t`).
"""

from __future__ import annotations

import os
import sys

from kubedistill.core.errors import UserError
from kubedistill.deploy.chart import chart_values


def image_ref(block: dict, what: str = "image") -> str:
    """repository:tag, or repository@digest when a digest is set."""
    repo = str(block.get("repository") or "").strip()
    tag = str(block.get("tag") or "").strip()
    digest = str(block.get("digest") or "").strip()
    if not repo or not (tag or digest):
        raise UserError(
            f"The chart's values.yaml has no {what}.repository/{what}.tag",
            f"Set {what}.repository and {what}.tag in values.yaml",
        )
    return f"{repo}@{digest}" if digest else f"{repo}:{tag}"


def _block(key: str, chart: str | os.PathLike | None) -> dict:

    block = chart_values(chart).get(key)
    if not isinstance(block, dict):
        raise UserError(
            f"The chart's values.yaml has no '{key}' block", f"Add {key}: {{repository: ..., tag: ...}} to values.yaml"
        )
    return block


def serve_image(chart: str | os.PathLike | None = None) -> str:
    """The inference server's image reference ("repo:tag")."""
    return image_ref(_block("image", chart), "image")


def train_image(chart: str | os.PathLike | None = None) -> str:
    """The pipeline steps' image reference ("repo:tag"): torch with CUDA and kubedistill[pipeline]."""
    return image_ref(_block("trainImage", chart), "trainImage")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    which = {"serve": serve_image, "train": train_image}
    if len(args) != 1 or args[0] not in which:
        print("usage: python -m kubedistill.images serve|train", file=sys.stderr)
        return 2
    try:
        print(which[args[0]]())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
