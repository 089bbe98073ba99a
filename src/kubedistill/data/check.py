"""Dataset check: one pass over every image and label file, every problem reported with file and line.

Severity "error" means the sample (image + its labels) is skipped; "warning" means something was fixed
(coordinates clipped, a degenerate or duplicate box dropped) or is merely worth knowing (the same
image in two splits), and the sample is kept.

Label format: one object per line, ``class cx cy w h``, class an integer id in 0..nc-1, coordinates
fractions of the image width/height. Rules:
  * wrong column count, a non-number, a non-integer or out-of-range class id, a non-finite value, or
    values far outside [0, 1] (any of cx, cy, w, h above 1.5 or cx, cy below -0.5: pixel
    coordinates, most likely) are errors;
  * a box reaching outside [0, 1] is clipped to the image (warning ``coord_clipped``);
  * a box with width or height <= 1e-6 after clipping is dropped (warning ``box_degenerate``);
  * a line repeating an earlier one (same five numbers) is dropped (warning ``box_duplicate``);
  * no label file, or an empty one, makes a background image (fine, counted).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.core.atomic import atomic_write_text
from kubedistill.core.errors import DataError
from kubedistill.data.dataset_yaml import DataSpec, label_path
from kubedistill.data.images import IMG_FORMATS, ImageReadError, read_regular, verify_image

MAX_LABEL_BYTES = 64 * 2**20  # a label file is text: a few KB; a larger one is not a label file

ERROR = "error"
WARNING = "warning"

MIN_WH = 1e-6  # normalised; smaller boxes are dropped
CLIP_TOL = 1e-6  # clipping by less than this is silent rounding, not a warning
PIXEL_LIKE_MAX = 1.5  # cx, cy, w or h above this: not normalised
PIXEL_LIKE_MIN = -0.5  # cx or cy below this: not normalised


@dataclass(frozen=True)
class Problem:
    split: str
    file: str
    line: int | None
    kind: str
    message: str
    severity: str  # "error" (sample skipped) or "warning" (fixed / kept)

    def where(self, root: Path | None = None) -> str:
        f = self.file
        if root is not None:
            try:
                f = Path(f).relative_to(root).as_posix()
            except ValueError:
                pass
        return f"{f}:{self.line}" if self.line is not None else f

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "file": self.file,
            "line": self.line,
            "kind": self.kind,
            "message": self.message,
            "severity": self.severity,
        }


@dataclass
class Sample:
    """A usable image: its file, (h, w) after EXIF orientation, labels float32 [n,5] cls,cx,cy,w,h."""

    im_file: Path
    shape: tuple[int, int]
    labels: np.ndarray


@dataclass
class SplitCounts:
    listed: int = 0
    usable: int = 0
    skipped: int = 0
    backgrounds: int = 0
    boxes: int = 0
    per_class: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "usable": self.usable,
            "skipped": self.skipped,
            "backgrounds": self.backgrounds,
            "boxes": self.boxes,
            "per_class": list(self.per_class),
        }


@dataclass
class CheckReport:
    data: str
    root: Path
    names: list[str]
    problems: list[Problem]
    samples: dict[str, list[Sample]]
    counts: dict[str, SplitCounts]
    min_usable: float = 0.5
    report_path: Path | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def summary(self, max_problems: int = 5) -> str:
        lines = [
            f"Dataset {self.data}: {len(self.names)} classes ({', '.join(self.names[:8])}"
            + (", ..." if len(self.names) > 8 else "")
            + ")"
        ]
        for split, c in self.counts.items():
            lines.append(
                f"  {split}: {c.usable} of {c.listed} images usable ({c.backgrounds} backgrounds), "
                f"{c.skipped} skipped, {c.boxes} boxes"
            )
        if self.problems:
            kinds = Counter((p.severity, p.kind) for p in self.problems)
            detail = ", ".join(f"{n} {k}" for (_, k), n in sorted(kinds.items()))
            lines.append(
                f"  {len(self.errors)} errors (samples skipped), {len(self.warnings)} warnings (fixed/kept): {detail}"
            )
            shown = sorted(self.problems, key=lambda p: p.severity != ERROR)[:max_problems]
            for p in shown:
                lines.append(f"    {p.severity}: {p.where(self.root)}: {p.message}")
            if len(self.problems) > len(shown):
                where = f" in {self.report_path}" if self.report_path else ""
                lines.append(f"    ... {len(self.problems) - len(shown)} more{where}")
        else:
            lines.append("  no problems found")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "root": str(self.root),
            "names": list(self.names),
            "min_usable": self.min_usable,
            "counts": {s: c.to_dict() for s, c in self.counts.items()},
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "problems": [p.to_dict() for p in self.problems],
        }

    def write(self, path: str | Path) -> Path:
        """Write `to_dict()` as JSON, atomically (temporary file, then rename)."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")
        self.report_path = path
        return path

    def raise_if_unusable(self, min_usable: float | None = None) -> None:
        """DataError when a split has fewer than max(1, min_usable * listed) usable images."""
        frac = self.min_usable if min_usable is None else min_usable
        for split, c in self.counts.items():
            need = max(1.0, frac * c.listed)
            if c.usable < need:
                errs = sum(1 for p in self.errors if p.split == split)
                report = f" (full report: {self.report_path})" if self.report_path else ""
                raise DataError(
                    f"Only {c.usable} of {c.listed} images in split '{split}' are usable "
                    f"({c.skipped} skipped, {errs} errors; min_usable={frac:g} needs {math.ceil(need)})",
                    f"Run `kubedistill data check {self.data}` to list every problem with file and line{report}, "
                    "then fix them or lower min_usable",
                )


@dataclass
class _Result:
    problems: list[Problem]
    sample: Sample | None
    digest: str | None
    resolved: Path | None


def _parse_labels(split: str, lf: Path, text: str, nc: int) -> tuple[np.ndarray | None, list[Problem]]:
    """Parse a label file's text. Returns (labels or None when an error skips the sample, problems)."""
    problems: list[Problem] = []
    f = str(lf)

    def add(line: int, kind: str, msg: str, sev: str) -> None:
        problems.append(Problem(split, f, line, kind, msg, sev))

    rows: list[list[float]] = []
    seen: dict[tuple[float, ...], int] = {}
    bad = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) != 5:
            hint = ""
            if len(parts) > 5 and len(parts) % 2 == 1:
                hint = " (a segmentation polygon? detection labels are boxes)"
            add(lineno, "label_columns", f"expected 5 values (class cx cy w h), got {len(parts)}{hint}", ERROR)
            bad = True
            continue
        try:
            vals = [float(x) for x in parts]
        except ValueError:
            col = next(i for i, x in enumerate(parts) if not _is_float(x))
            add(lineno, "label_value", f"value {col + 1} {parts[col]!r} is not a number", ERROR)
            bad = True
            continue
        c, cx, cy, w, h = vals
        if not math.isfinite(c) or c != int(c):
            add(lineno, "class_id", f"class id {parts[0]!r} is not an integer", ERROR)
            bad = True
            continue
        if not 0 <= int(c) < nc:
            add(
                lineno,
                "class_range",
                f"class id {int(c)} is out of range 0..{nc - 1} (data.yaml has {nc} names)",
                ERROR,
            )
            bad = True
            continue
        if not all(math.isfinite(v) for v in (cx, cy, w, h)):
            add(lineno, "coord_nonfinite", f"non-finite coordinate in {' '.join(parts[1:])!r}", ERROR)
            bad = True
            continue
        if max(cx, cy, w, h) > PIXEL_LIKE_MAX or min(cx, cy) < PIXEL_LIKE_MIN:
            add(
                lineno,
                "coord_range",
                f"coordinates {' '.join(parts[1:])} are far outside 0..1 (pixel values? YOLO labels are "
                "fractions of the image size)",
                ERROR,
            )
            bad = True
            continue
        key = (c, cx, cy, w, h)
        if key in seen:
            add(lineno, "box_duplicate", f"same box as line {seen[key]}; kept once", WARNING)
            continue
        seen[key] = lineno
        e = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in e)
        bw, bh = x2 - x1, y2 - y1
        if bw <= MIN_WH or bh <= MIN_WH:
            add(
                lineno,
                "box_degenerate",
                f"box {' '.join(parts[1:])} has no area inside the image (w={bw:.3g}, h={bh:.3g}); dropped",
                WARNING,
            )
            continue
        if min(e[0], e[1]) < -CLIP_TOL or max(e[2], e[3]) > 1 + CLIP_TOL:
            add(lineno, "coord_clipped", f"box {' '.join(parts[1:])} reaches outside the image; clipped", WARNING)
        rows.append([float(int(c)), (x1 + x2) / 2, (y1 + y2) / 2, bw, bh])
    if bad:
        return None, problems
    labels = np.array(rows, dtype=np.float32).reshape(-1, 5)
    return labels, problems


def _is_float(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _check_one(split: str, img: Path, nc: int) -> _Result:
    f = str(img)
    if img.suffix.lower() not in IMG_FORMATS:
        msg = f"unsupported image format '{img.suffix}' (use {', '.join(IMG_FORMATS)})"
        return _Result([Problem(split, f, None, "image_format", msg, ERROR)], None, None, None)
    try:
        data = read_regular(img)  # refuses FIFOs, devices and oversized files before reading them
    except ImageReadError as e:
        if e.reason == "missing":
            return _Result(
                [Problem(split, f, None, "image_missing", "image file does not exist", ERROR)], None, None, None
            )
        msg = f"image cannot be read ({e.reason})"
        return _Result([Problem(split, f, None, "image_unreadable", msg, ERROR)], None, None, None)
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    resolved = img.resolve()
    try:
        w, h = verify_image(img, data)
    except ImageReadError as e:
        msg = f"image cannot be decoded: {e.reason or e.cause}"
        return _Result([Problem(split, f, None, "image_corrupt", msg, ERROR)], None, digest, resolved)
    del data
    lf = label_path(img)
    try:
        raw = read_regular(lf, MAX_LABEL_BYTES, "Label file")
    except ImageReadError as e:
        if e.reason != "missing":
            msg = f"label file cannot be read ({e.reason})"
            return _Result([Problem(split, str(lf), None, "label_unreadable", msg, ERROR)], None, digest, resolved)
        raw = None
    if raw is None:
        labels, problems = np.zeros((0, 5), np.float32), []
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            msg = "label file is not UTF-8 text"
            return _Result([Problem(split, str(lf), line, "label_unreadable", msg, ERROR)], None, digest, resolved)
        labels, problems = _parse_labels(split, lf, text, nc)
    sample = Sample(img, (h, w), labels) if labels is not None else None
    return _Result(problems, sample, digest, resolved)


def check_dataset(
    spec: DataSpec,
    splits: Iterable[str] = ("train", "val"),
    min_usable: float = 0.5,
    workers: int | None = None,
    progress: bool = False,
) -> CheckReport:
    """Check every image (full decode) and label file of `splits`; see the module docstring."""
    splits = [s for s in splits if s in spec.splits]
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    problems: list[Problem] = []
    samples: dict[str, list[Sample]] = {}
    counts: dict[str, SplitCounts] = {}
    by_path: dict[Path, tuple[str, Path]] = {}
    by_hash: dict[str, tuple[str, Path]] = {}
    nc = spec.nc
    pool = ThreadPoolExecutor(max_workers=max(1, workers)) if workers > 1 else None
    try:
        for split in splits:
            imgs = spec.splits[split]
            it = (
                pool.map(_check_one, [split] * len(imgs), imgs, [nc] * len(imgs), chunksize=16)
                if pool
                else (_check_one(split, im, nc) for im in imgs)
            )
            if progress:
                from tqdm import tqdm

                it = tqdm(it, total=len(imgs), desc=f"checking {split}", unit="img", leave=False)
            c = SplitCounts(listed=len(imgs), per_class=[0] * nc)
            good: list[Sample] = []
            overlaps: dict[str, tuple[str, Path, str]] = {}
            for img, r in zip(imgs, it):
                problems += r.problems
                if r.resolved is not None:
                    hit = by_path.get(r.resolved)
                    if hit is not None and hit[0] != split:
                        overlaps[str(img)] = (hit[0], hit[1], "the same file")
                    elif r.digest is not None:
                        hit = by_hash.get(r.digest)
                        if hit is not None and hit[0] != split:
                            overlaps[str(img)] = (hit[0], hit[1], "the same content")
                    by_path.setdefault(r.resolved, (split, img))
                    if r.digest is not None:
                        by_hash.setdefault(r.digest, (split, img))
                if r.sample is None:
                    c.skipped += 1
                    continue
                good.append(r.sample)
                n = len(r.sample.labels)
                c.usable += 1
                c.boxes += n
                if n == 0:
                    c.backgrounds += 1
                for k, v in zip(*np.unique(r.sample.labels[:, 0].astype(np.int64), return_counts=True)):
                    c.per_class[int(k)] += int(v)
            for f, (other_split, other, how) in overlaps.items():
                problems.append(
                    Problem(
                        split,
                        f,
                        None,
                        "split_overlap",
                        f"{how} as {other} in split '{other_split}' (evaluation on training images inflates scores)",
                        WARNING,
                    )
                )
            samples[split] = good
            counts[split] = c
    finally:
        if pool is not None:
            pool.shutdown()
    return CheckReport(
        data=str(spec.yaml_path),
        root=spec.root,
        names=list(spec.names),
        problems=problems,
        samples=samples,
        counts=counts,
        min_usable=min_usable,
    )


def fingerprint(spec: DataSpec) -> str:
    """sha256 over class names, each split's sorted relative image paths and sizes, and label contents.

    Stable across machines and copies (no absolute paths, no mtimes); changes when an image is added,
    removed, renamed or resized on disk, or when any label file changes.
    """
    h = hashlib.sha256()
    h.update(json.dumps(spec.names).encode())
    for split in sorted(spec.splits):
        h.update(f"\x00split\x00{split}\n".encode())
        for rel, img in sorted((spec.rel(p), p) for p in spec.splits[split]):
            try:
                size = img.stat().st_size
            except OSError:
                size = -1
            h.update(f"{rel}\x00{size}\n".encode())
            try:
                h.update(label_path(img).read_bytes())
                h.update(b"\x00label-end\n")
            except OSError:
                h.update(b"\x00no-label\n")
    return h.hexdigest()
