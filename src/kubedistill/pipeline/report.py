"""The pipeline's reports: self-contained HTML (images inline) for the KFP dashboard, and Markdown summaries.

- `data_report`: class counts per split, box sizes (COCO small/medium/large and a histogram), every problem
  the data check found;
- `eval_report`: teacher vs student (mAP, AP by size, params, GFLOPs, latency, file size), per-class AP, PR
  curves and sample predictions.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.eval.plots import plot_labels

SMALL_PX, MEDIUM_PX = 32.0, 96.0  # COCO's sqrt(area) edges
MAX_PROBLEMS_SHOWN = 200

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.4em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.bad{color:#b00020}.good{color:#0b6e2e}.note{color:#555}code{background:#f4f4f4;padding:0 3px}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{_esc(title)}</h1>{body}</body></html>\n"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else _esc(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


class _Raw(str):
    """Table cell holding HTML already."""


def _img(path: str | Path | None, alt: str) -> str:
    if not path or not Path(path).is_file():
        return f"<p class='note'>({_esc(alt)}: not available)</p>"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"<img alt='{_esc(alt)}' src='data:image/png;base64,{data}'>"


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "-" if math.isnan(f) else f"{f:.{digits}f}"


# ------------------------------------------------------------------------------------------ data


def box_sizes(samples: Sequence[Any]) -> np.ndarray:
    """sqrt(w*h) in original-image pixels of every box of `samples` (data.check.Sample)."""
    parts = []
    for s in samples:
        lab = np.asarray(s.labels, dtype=np.float64).reshape(-1, 5)
        if len(lab):
            h, w = s.shape
            parts.append(np.sqrt(lab[:, 3] * w * lab[:, 4] * h))
    return np.concatenate(parts) if parts else np.zeros(0)


def size_buckets(sizes: np.ndarray) -> dict[str, int]:
    return {
        "small": int((sizes < SMALL_PX).sum()),
        "medium": int(((sizes >= SMALL_PX) & (sizes < MEDIUM_PX)).sum()),
        "large": int((sizes >= MEDIUM_PX).sum()),
    }


def data_report(report, *, fingerprint: str, source: str, note: str = "") -> tuple[str, str]:
    """(HTML, Markdown) for a `data.check.CheckReport` of the laid-out dataset."""

    names = list(report.names)
    splits = list(report.counts)
    count_rows = [[s, c.listed, c.usable, c.skipped, c.backgrounds, c.boxes] for s, c in report.counts.items()]
    class_rows = [
        [n] + [report.counts[s].per_class[i] if i < len(report.counts[s].per_class) else 0 for s in splits]
        for i, n in enumerate(names)
    ]
    size_rows = []
    for s in splits:
        b = size_buckets(box_sizes(report.samples.get(s, [])))
        size_rows.append([s, b["small"], b["medium"], b["large"]])
    kinds = Counter((p.severity, p.kind) for p in report.problems)
    kind_rows = [[k, sev, n] for (sev, k), n in sorted(kinds.items(), key=lambda x: (x[0][0] != "error", -x[1]))]
    shown = sorted(report.problems, key=lambda p: p.severity != "error")[:MAX_PROBLEMS_SHOWN]
    prob_rows = [[p.severity, p.split, p.where(report.root), p.kind, p.message] for p in shown]

    with tempfile.TemporaryDirectory() as tmp:
        all_samples = [x for s in splits for x in report.samples.get(s, [])]
        png = Path(tmp) / "labels.png"
        try:
            plot_labels(all_samples, names, png)
        except Exception:  # a figure must never fail the step
            png = None
        figure = _img(png, "class counts and box sizes")

    head = (
        f"<p>Source <code>{_esc(source)}</code>; fingerprint <code>{_esc(fingerprint)}</code>; "
        f"{len(names)} classes.</p>" + (f"<p class='note'>{_esc(note)}.</p>" if note else "")
    )
    problems_html = (
        "<p class='good'>No problems found.</p>"
        if not report.problems
        else _table(["kind", "severity", "count"], kind_rows)
        + (
            f"<p class='note'>First {len(shown)} of {len(report.problems)}:</p>"
            if len(shown) < len(report.problems)
            else ""
        )
        + _table(["severity", "split", "where", "kind", "message"], prob_rows)
    )
    body = (
        head
        + "<h2>Images and boxes</h2>"
        + _table(["split", "images", "usable", "skipped", "backgrounds", "boxes"], count_rows)
        + "<h2>Objects per class</h2>"
        + _table(["class", *splits], class_rows)
        + "<h2>Box sizes</h2><p class='note'>sqrt(width x height) in original pixels; COCO small &lt; 32 px, "
        "medium &lt; 96 px, large above.</p>"
        + _table(["split", "small", "medium", "large"], size_rows)
        + figure
        + "<h2>Problems</h2><p class='note'>errors: the sample is skipped in training; warnings: fixed or kept.</p>"
        + problems_html
    )
    page = _page("Dataset report", body)

    md = ["# Dataset report", "", f"Source `{source}`, fingerprint `{fingerprint}`, {len(names)} classes."]
    if note:
        md += ["", f"_{note}._"]
    md += [
        "",
        _md_table(["split", "images", "usable", "skipped", "backgrounds", "boxes"], count_rows),
        "",
        "## Objects per class",
        "",
        _md_table(["class", *splits], class_rows),
        "",
        "## Box sizes (sqrt(w*h) px)",
        "",
        _md_table(["split", "small <32", "medium <96", "large"], size_rows),
        "",
        "## Problems",
        "",
    ]
    if report.problems:
        md += [_md_table(["kind", "severity", "count"], kind_rows), ""]
        md += [f"- {p.severity} {p.split} `{p.where(report.root)}`: {p.kind}: {p.message}" for p in shown[:20]]
        if len(report.problems) > 20:
            md.append(f"- ... {len(report.problems) - 20} more in the HTML report")
    else:
        md.append("No problems found.")
    return page, "\n".join(md) + "\n"


# ------------------------------------------------------------------------------------------ evaluation

ROW_KEYS = (
    ("mAP50-95", "mAP50-95", 3),
    ("mAP50", "mAP50", 3),
    ("AP_small", "AP small", 3),
    ("AP_medium", "AP medium", 3),
    ("AP_large", "AP large", 3),
    ("params_M", "params (M)", 2),
    ("gflops", "GFLOPs", 2),
    ("latency_ms", "latency (ms/img)", 1),
    ("file_mb", "file (MB)", 2),
)


def eval_report(
    results: dict[str, dict], *, names: Sequence[str], images: dict[str, str | Path] | None = None, note: str = ""
) -> tuple[str, str]:
    """(HTML, Markdown) comparing models; `results` maps a label ("teacher", "student") to its figures:
    the ROW_KEYS, `per_class` ({name: {"AP50-95", "AP50", "n_gt"}}), `model` and optionally `onnx_mb`,
    `onnx_latency_ms`. `images` maps a caption to a PNG (PR curves, sample predictions)."""
    labels = list(results)
    cols = [f"{lab} ({results[lab].get('model', '?')})" for lab in labels]
    show_delta = len(labels) == 2
    rows = []
    for key, title, digits in ROW_KEYS:
        vals = [results[lab].get(key) for lab in labels]
        row = [title] + [fmt(v, digits) for v in vals]
        if show_delta:
            a, b = vals
            row.append(fmt(None if a is None or b is None else float(b) - float(a), digits))
        rows.append(row)
    extra = [
        (k, t)
        for k, t in (("onnx_mb", "ONNX file (MB)"), ("onnx_latency_ms", "ONNX latency (ms/img, CPU)"))
        if any(results[lab].get(k) is not None for lab in labels)
    ]
    for key, title in extra:
        rows.append([title] + [fmt(results[lab].get(key), 2) for lab in labels] + ([""] if show_delta else []))
    header = ["", *cols] + (
        ["student - teacher" if labels == ["teacher", "student"] else f"{labels[1]} - {labels[0]}"]
        if show_delta
        else []
    )
    class_rows = []
    for n in names:
        pcs = [results[lab].get("per_class", {}).get(str(n), {}) for lab in labels]
        class_rows.append(
            [n, pcs[0].get("n_gt", "-")] + [fmt(pc.get("AP50-95")) for pc in pcs] + [fmt(pc.get("AP50")) for pc in pcs]
        )
    class_header = ["class", "objects"] + [f"AP50-95 {lab}" for lab in labels] + [f"AP50 {lab}" for lab in labels]
    figures = "".join(f"<h3>{_esc(cap)}</h3>{_img(p, cap)}" for cap, p in (images or {}).items())
    body = (
        (f"<p class='note'>{_esc(note)}</p>" if note else "")
        + _table(header, rows)
        + "<h2>Per-class AP</h2>"
        + _table(class_header, class_rows)
        + "<h2>Figures</h2>"
        + figures
    )
    page = _page("Teacher vs student", body)
    md = (
        ["# Teacher vs student", ""]
        + ([note, ""] if note else [])
        + [_md_table(header, rows), "", "## Per-class AP", "", _md_table(class_header, class_rows)]
    )
    return page, "\n".join(md) + "\n"
