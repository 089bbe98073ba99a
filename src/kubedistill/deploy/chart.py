"""Where the Helm chart is, and its values.yaml: the one place image names and tags are written.

The chart lives in the repository at charts/kubedistill. The package reaches it as
`kubedistill/deploy/chart`: a link in a checkout (and so in an editable install), real files in a
built wheel (package data). `KUBEDISTILL_CHART` or an explicit path wins over both.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from kubedistill.core.errors import UserError

ENV_CHART = "KUBEDISTILL_CHART"
PACKAGED_CHART = Path(__file__).resolve().parent / "chart"


def find_chart(chart: str | os.PathLike | None = None) -> Path:
    """The chart folder: `chart` if given, else $KUBEDISTILL_CHART, else the one shipped with the package."""
    given = chart if chart is not None else os.environ.get(ENV_CHART) or None
    path = Path(given).expanduser() if given else PACKAGED_CHART
    if not (path / "Chart.yaml").is_file():
        where = f"'{path}'" + (f" (from ${ENV_CHART})" if chart is None and given else "")
        raise UserError(
            f"No Helm chart at {where}: Chart.yaml is missing",
            f"Pass --chart path/to/charts/kubedistill or set {ENV_CHART}",
        )
    return path


def chart_values(chart: str | os.PathLike | None = None) -> dict:
    """The chart's default values (values.yaml) as a dict."""

    path = find_chart(chart) / "values.yaml"
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"Cannot read {path}: {e}", "Restore the chart's values.yaml") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} is not a YAML mapping", "Restore the chart's values.yaml")
    return values
