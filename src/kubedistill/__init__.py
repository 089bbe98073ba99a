"""kubedistill: YOLO26-style detector training, distillation and serving.

Importing the package is cheap: torch and the engine load only when `Detector` is first used.
"""

from __future__ import annotations

__all__ = ["Detector", "UserError", "__version__"]

from kubedistill.core.errors import UserError
from kubedistill.core.version import __version__


def __getattr__(name: str):
    if name == "Detector":
        from kubedistill.detector import Detector

        return Detector
    raise AttributeError(f"module 'kubedistill' has no attribute {name!r}")
