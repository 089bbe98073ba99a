"""Limits set by environment variables, read when they are used (a typo is a one-line ConfigError, not an import
failure)."""

from __future__ import annotations

import math
import os

from kubedistill.core.errors import ConfigError


def env_number(name: str, default: float) -> float:
    """A positive, finite number from the environment variable `name`, or `default` when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"{name}={raw!r} is not a positive number", f"Set {name} to a number such as {default:g}, or unset it"
        )
    return value
