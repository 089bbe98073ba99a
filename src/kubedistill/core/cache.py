"""The local cache for fetched models and datasets: $KUBEDISTILL_CACHE, else ~/.cache/kubedistill."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str = "") -> Path:
    root = Path(os.environ.get("KUBEDISTILL_CACHE") or Path.home() / ".cache" / "kubedistill").expanduser()
    return root / kind if kind else root
