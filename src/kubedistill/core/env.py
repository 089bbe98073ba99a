"""Settings and limits read from environment variables when they are used: a bad value is a one-line ConfigError
naming the variable, never an import failure. One helper for every such number (S3 transfer settings, archive and
image limits)."""

from __future__ import annotations

import math
import os
from typing import Any

from kubedistill.core.errors import ConfigError


def env_number(name: str, default: float, *, kind: type = float, low: float = 0, strict: bool = False) -> Any:
    """The number in environment variable `name` (`kind` int or float), or `default` when it is unset or empty.
    It must be finite and at least `low` (above `low` when `strict`)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except (ValueError, OverflowError):
        value = None
    if value is None or not math.isfinite(value) or value < low or (strict and value == low):
        what = "positive number" if strict and low == 0 else f"number {'>' if strict else '>='} {low:g}"
        raise ConfigError(
            f"{name}={raw!r} is not a {'whole ' if kind is int else ''}{what}",
            f"Set {name} to a number such as {default:g}, or unset it",
        )
    return value
