"""Progress output: a tqdm bar in a terminal, plain periodic log lines when stdout is not a terminal
(pipeline logs, CI), so logs stay readable."""

from __future__ import annotations

import logging
import sys
import time

LOGGER = logging.getLogger("kubedistill")


def setup_logging(level: int = logging.INFO, *, logger: logging.Logger = LOGGER, stream=None) -> None:
    """Plain 'message' lines for `logger` (default: the kubedistill logger, on stdout), set up once."""
    if not logger.handlers:
        h = logging.StreamHandler(stream or sys.stdout)
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
        logger.propagate = False
    logger.setLevel(level)


def _fmt(postfix: dict) -> str:
    parts = []
    for k, v in postfix.items():
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return " ".join(parts)


class Progress:
    """update(n, **postfix) per batch; close() at the end. Disabled -> no output at all."""

    def __init__(self, total: int, desc: str, enabled: bool = True, interval_s: float = 30.0, tty: bool | None = None):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.interval_s = interval_s
        self.n = 0
        self.postfix: dict = {}
        self._last_log = time.monotonic()
        self._bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, **postfix) -> None:
        if not self.enabled:
            return
        self.n += n
        self.postfix = postfix
        if self._bar is not None:
            self._bar.set_postfix_str(_fmt(postfix), refresh=False)
            self._bar.update(n)
        elif time.monotonic() - self._last_log >= self.interval_s and self.n < self.total:
            self._last_log = time.monotonic()
            LOGGER.info(f"{self.desc} {self.n}/{self.total} {_fmt(postfix)}")

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            LOGGER.info(f"{self.desc} {self.n}/{self.total} {_fmt(self.postfix)}")
