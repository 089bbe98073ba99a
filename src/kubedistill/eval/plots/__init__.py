"""Training plots, by family (`curves`, `diagnostics`, `labels`, `mosaic`; `figure` holds what they share,
`run` writes them all): loss/metric curves, PR curves, confusion matrix, calibration, label statistics,
and a ground-truth | prediction mosaic of validation images.

Every ``plot_*`` function writes one PNG atomically (temporary file in the same folder, then
``os.replace``) and returns its path. Empty inputs give an informative "no data" figure, never an
exception. :func:`write_run_plots` writes them all and never raises for a plotting failure (it logs
a warning on the ``kubedistill`` logger), so a plot can never fail a training run.

Importing this module is cheap: it needs numpy only. matplotlib, OpenCV and Pillow are imported
inside the functions. Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg
canvas directly, without pyplot: no GUI backend, no global figure registry, nothing to leak, safe
from a worker thread, and the user's own pyplot backend is left alone.

The confusion matrix and the calibration plot match detections to ground truth with
:func:`kubedistill.eval.matching.match_detections`.
"""

from kubedistill.eval.plots.curves import plot_pr_curves, plot_results
from kubedistill.eval.plots.diagnostics import ConfidenceResult, plot_confidence, plot_confusion_matrix
from kubedistill.eval.plots.labels import plot_labels
from kubedistill.eval.plots.mosaic import plot_val_mosaic
from kubedistill.eval.plots.run import write_run_plots

__all__ = [
    "ConfidenceResult",
    "plot_confidence",
    "plot_confusion_matrix",
    "plot_labels",
    "plot_pr_curves",
    "plot_results",
    "plot_val_mosaic",
    "write_run_plots",
]
