"""prepare_data: fetch, lay out, check, fingerprint and store the dataset (`kubedistill.pipeline.prepare`)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Markdown, Output

from kubedistill.images import train_image


@dsl.component(base_image=train_image(), install_kfp_package=False)
def prepare_data(
    dataset_uri: str,
    report: Output[HTML],
    summary: Output[Markdown],
    class_names: str = "",
    dataset_store: str = "",
    val_fraction: float = 0.2,
    seed: int = 0,
    min_usable: float = 0.5,
) -> NamedTuple("PreparedData", [("dataset_uri", str), ("fingerprint", str)]):
    """Fetch the dataset (folder, data.yaml, s3:// prefix, archive or 'demo'), check every image and label,
    split off val when only one split is given, fingerprint the content and store it under the fingerprint.
    The report shows class counts, box sizes and every problem found."""
    from collections import namedtuple

    from kubedistill.pipeline.prepare import prepare_dataset
    from kubedistill.pipeline.steps import default_store, run

    res = run(
        prepare_dataset,
        dataset_uri,
        dataset_store or default_store(report.uri),
        class_names=class_names.split(","),
        val_fraction=val_fraction,
        seed=seed,
        min_usable=min_usable,
        report_html=report.path,
        report_md=summary.path,
    )
    report.metadata.update({"fingerprint": res["fingerprint"], "source": dataset_uri})
    return namedtuple("PreparedData", ["dataset_uri", "fingerprint"])(res["dataset_uri"], res["fingerprint"])
