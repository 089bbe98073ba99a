"""The hostile-input suite (issue 17): generated cases per class of input (archives, image folders, options and
paths, tracking spools, server requests), each ending either refused with a one-line message or survived (the
input handled correctly, nothing lost). Every case is recorded; the run ends with a table of cases tried, refused
and survived per class, and `KUBEDISTILL_HOSTILE_REPORT=FILE` writes it as JSON (docs/reliability.md quotes it).
A case that ends any other way (a traceback, a hang, a wrong result, a write outside its target) fails its test."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

import pytest

OUTCOMES = ("refused", "survived")
_RECORDS: list[tuple[str, str, str]] = []


class Hostile:
    def record(self, kind: str, case: str, outcome: str) -> str:
        assert outcome in OUTCOMES, f"{kind} / {case}: {outcome}"
        _RECORDS.append((kind, case, outcome))
        return outcome


@pytest.fixture(scope="session")
def hostile() -> Hostile:
    return Hostile()


def table() -> dict[str, dict[str, int]]:
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for kind, _case, outcome in _RECORDS:
        by_kind[kind][outcome] += 1
    return {k: {"tried": sum(c.values()), **{o: c[o] for o in OUTCOMES}} for k, c in sorted(by_kind.items())}


def pytest_terminal_summary(terminalreporter):
    rows = table()
    if not rows:
        return
    tr = terminalreporter
    tr.section("hostile input")
    tr.write_line(f"{'class':<16}{'tried':>7}{'refused':>9}{'survived':>10}")
    for kind, r in rows.items():
        tr.write_line(f"{kind:<16}{r['tried']:>7}{r['refused']:>9}{r['survived']:>10}")
    total = {k: sum(r[k] for r in rows.values()) for k in ("tried", *OUTCOMES)}
    tr.write_line(f"{'all':<16}{total['tried']:>7}{total['refused']:>9}{total['survived']:>10}")
    out = os.environ.get("KUBEDISTILL_HOSTILE_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump({"classes": rows, "all": total, "cases": _RECORDS}, f, indent=1)
