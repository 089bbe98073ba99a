"""The prepare_data step: fetch a dataset, lay it out one way, check it, fingerprint it, store it by fingerprint.

1. Source: `demo` (the built-in synthetic set; `demo?train=160&val=40&imgsz=96&classes=2` sets its size), or
   anything `kubedistill.data.fetch.fetch_dataset` reads (a local folder or data.yaml, an s3:// prefix, a
   local or s3:// .zip/.tar archive). Fetched copies live in the cache (the pipeline's volume at
   /var/cache/kubedistill on a cluster, else `KUBEDISTILL_CACHE` or ~/.cache/kubedistill), so a scheduled run does not
   download an unchanged dataset again.
2. Layout: a fresh copy as `images/<split>/`, `labels/<split>/` and a `data.yaml` with relative paths. When
   only one of train/val is given, a deterministic val_fraction of it (chosen by a hash of each image's
   path) becomes val.
3. The data check (every problem with file and line) and the content fingerprint (`data.check.fingerprint`).
4. Store: the copy goes to `<store>/<fingerprint>/` (a local folder, or s3:// / minio:// through
   `kubedistill.storage`) unless it is already there. The pipeline imports that URI as its Dataset artifact,
   so every later step's cache key follows the data's content, not the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import yaml

from kubedistill.core.atomic import atomic_write_text
from kubedistill.core.cache import cache_dir
from kubedistill.core.errors import DataError, UserError
from kubedistill.core.log import LOGGER, setup_logging
from kubedistill.core.names import PVC_CACHE
from kubedistill.core.yamlfile import YamlFileError, read_yaml_file
from kubedistill.data.check import check_dataset, fingerprint
from kubedistill.data.dataset_yaml import label_path, load_data_yaml
from kubedistill.data.fetch import fetch_dataset
from kubedistill.pipeline.report import data_report
from kubedistill.storage import exists, upload

DEMO = "demo"
# Sized for `kubedistill run` on a CPU (the training tests' easy set): 96 px images, 2 classes, objects of
# 12 px and up, at most 3 per image; yolo26n learns it to mAP50 0.5 in about 24 epochs.
DEMO_DEFAULTS = {"train": 160, "val": 40, "imgsz": 96, "seed": 0, "classes": 2, "min_size": 12, "max_objects": 3}
MARKER = ".kubedistill-dataset.json"  # written last: a store entry without it is incomplete
REMOTE_SCHEMES = ("s3", "minio")


def default_cache() -> Path:
    """The pipeline's cache volume when it is mounted (a cluster), else the user's cache (`kubedistill.core.cache`)."""

    if os.path.ismount(PVC_CACHE):
        if os.access(PVC_CACHE, os.W_OK):
            return Path(PVC_CACHE) / "datasets"

        LOGGER.warning(
            f"prepare_data: the cache volume at {PVC_CACHE} is not writable by this user (uid {os.getuid()}); "
            "using the container's own cache (give the volume fsGroup 10001 to keep fetched data between runs)"
        )
    return cache_dir("datasets")


def parse_demo(uri: str) -> dict | None:
    """`demo` or `demo?train=..&val=..&imgsz=..&seed=..&classes=..&min_size=..&max_objects=..` -> options, else None."""
    parts = urlsplit(uri.strip())
    if parts.scheme or parts.netloc or parts.path != DEMO:
        return None
    opts = dict(DEMO_DEFAULTS)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in opts:
            raise UserError(f"Unknown demo option '{key}' in '{uri}'", f"Use {', '.join(DEMO_DEFAULTS)}")
        try:
            opts[key] = int(value)
        except ValueError:
            raise UserError(f"Demo option {key}={value!r} in '{uri}' is not an integer", "Give whole numbers") from None
    return opts


def _demo(opts: dict, class_names: list[str], cache: Path) -> Path:
    """Make (once per option set) the demo dataset in the cache; returns its data.yaml."""
    from kubedistill.data.synth import SHAPES, make_synth

    names = list(class_names) or list(SHAPES[: opts["classes"]])
    key = hashlib.sha256(json.dumps([opts, names], sort_keys=True).encode()).hexdigest()[:16]
    out = cache / f"demo-{key}"
    if (out / MARKER).is_file():
        return out / "data.yaml"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=cache))
    try:
        make_synth(
            tmp,
            train=opts["train"],
            val=opts["val"],
            imgsz=opts["imgsz"],
            seed=opts["seed"],
            names=names,
            min_size=opts["min_size"],
            max_objects=opts["max_objects"],
        )
    except ValueError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"Cannot make the demo dataset: {e}", "Adjust the demo?... options") from None
    atomic_write_text(tmp / MARKER, json.dumps({"demo": opts, "names": names}))
    try:
        tmp.rename(out)
    except OSError:  # made meanwhile by a concurrent run
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "data.yaml"


def fetch_source(uri: str, cache: Path, class_names: list[str]) -> Path:
    """The data.yaml of `uri`, fetched into `cache/fetch/` (or made, for the demo)."""
    if not uri or not uri.strip():
        raise UserError(
            "No dataset given (dataset_uri is empty)", "Pass a folder, data.yaml, s3:// prefix, archive, or 'demo'"
        )
    opts = parse_demo(uri)
    if opts is not None:
        return _demo(opts, class_names, cache / "demo")

    key = hashlib.sha256(uri.strip().encode()).hexdigest()[:16]
    return Path(fetch_dataset(uri.strip(), cache / "fetch" / key))


def _read_yaml(path: Path) -> dict:
    try:
        cfg = read_yaml_file(path)
    except YamlFileError as e:
        raise DataError(f"{path} {e.reason}", "Fix the file") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{path}: must hold a mapping (path, train, val, names)", "See the dataset docs for the format")
    return cfg


def _in_val(rel: str, val_fraction: float, seed: int) -> bool:
    h = int(hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < val_fraction


def load_splits(yaml_path: Path, *, val_fraction: float = 0.2, seed: int = 0):
    """(DataSpec, note): the dataset's splits, with val split off train when only one of them is given."""

    cfg = _read_yaml(yaml_path)
    has = {k: cfg.get(k) not in (None, "", []) for k in ("train", "val")}
    if all(has.values()):
        return load_data_yaml(yaml_path), ""
    if not any(has.values()):
        raise DataError(
            f"{yaml_path}: neither `train:` nor `val:` is given", "Add `train: images/train` (a folder or .txt list)"
        )
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction {val_fraction} must be between 0 and 1", "e.g. 0.2")
    only = "train" if has["train"] else "val"
    raw_root = cfg.get("path")
    root = yaml_path.parent if raw_root in (None, "") else Path(os.path.expanduser(str(raw_root)))
    if not root.is_absolute():
        root = yaml_path.parent / root
    both = {**cfg, "path": str(root.resolve()), "train": cfg[only], "val": cfg[only]}
    with tempfile.TemporaryDirectory() as tmp:
        view = Path(tmp) / "data.yaml"
        view.write_text(yaml.safe_dump(both, sort_keys=False))
        spec = load_data_yaml(view)
    images = spec.splits["train"]
    val = [p for p in images if _in_val(spec.rel(p), val_fraction, seed)]
    if not val or len(val) == len(images):
        if len(images) < 2:
            raise DataError(
                f"{yaml_path}: split `{only}` has {len(images)} image, too few to split into train and val",
                "Add images or give a val split",
            )
        val = images[-1:] if not val else val[:-1]
    chosen = set(val)
    spec.splits["train"] = [p for p in images if p not in chosen]
    spec.splits["val"] = [p for p in images if p in chosen]
    spec.yaml_path = yaml_path
    note = (
        f"only `{only}` was given: {len(spec.splits['val'])} of its {len(images)} images became val "
        f"(val_fraction {val_fraction}, seed {seed})"
    )
    return spec, note


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def write_layout(spec, out: Path, *, link: bool = False) -> Path:
    """Copy every split of `spec` into `out` as images/<split>/, labels/<split>/ plus data.yaml; returns it.

    File names are kept; a name already used in a split gets `_<n>` appended. `link=True` hard-links
    instead of copying where it can (only for sources nobody edits in place, such as our own cache).
    """

    entry: dict = {"path": "."}
    for split, images in spec.splits.items():
        used: set[str] = set()
        for img in sorted(images, key=spec.rel):
            name, n = img.name, 1
            while name.lower() in used:
                name = f"{img.stem}_{n}{img.suffix}"
                n += 1
            used.add(name.lower())
            _place(img, out / "images" / split / name, link)
            lab = label_path(img)
            if lab.is_file():
                _place(lab, out / "labels" / split / Path(name).with_suffix(".txt"), link)
        entry[split] = f"images/{split}"
    entry["names"] = list(spec.names)
    atomic_write_text(out / "data.yaml", yaml.safe_dump(entry, sort_keys=False))
    return out / "data.yaml"


def _is_remote(uri: str) -> bool:
    return urlsplit(uri).scheme in REMOTE_SCHEMES


def _s3(uri: str) -> str:
    """minio://bucket/key (KFP's name for its MinIO store) -> s3://bucket/key for the S3 client."""
    return "s3://" + uri[len("minio://") :] if uri.startswith("minio://") else uri


def _local_store_path(store: str) -> Path:
    return Path(urlsplit(store).path if store.startswith("file://") else store).expanduser().resolve()


def _remote_has(uri: str) -> bool:

    return exists(_s3(f"{uri}/{MARKER}"))


def store_dataset(local_dir: Path, store: str, fp: str, marker: dict) -> tuple[str, bool]:
    """Put `local_dir` at `<store>/<fp>` unless it is there; returns (its URI, whether it was written now)."""
    store = store.rstrip("/")
    if _is_remote(store):
        uri = f"{store}/{fp}"
        if _remote_has(uri):
            return uri, False

        atomic_write_text(local_dir / MARKER, json.dumps(marker, indent=2))
        upload(local_dir, _s3(uri))  # the marker goes last, so a half upload never counts as stored
        return uri, True
    root = _local_store_path(store)
    final = root / fp
    if (final / MARKER).is_file():
        return str(final), False
    if final.exists():  # an interrupted earlier attempt: replace it
        shutil.rmtree(final)
    atomic_write_text(local_dir / MARKER, json.dumps(marker, indent=2))
    local_dir.rename(final)
    return str(final), True


def prepare_dataset(
    uri: str,
    store: str,
    *,
    class_names: list[str] | tuple[str, ...] = (),
    val_fraction: float = 0.2,
    seed: int = 0,
    min_usable: float = 0.5,
    cache: Path | None = None,
    report_html: Path | None = None,
    report_md: Path | None = None,
) -> dict:
    """Run the whole step; returns {"dataset_uri", "fingerprint", "names", "counts", "problems", "stored", "note", ...}."""

    setup_logging()
    names = [n.strip() for n in class_names if n and n.strip()]
    cache = Path(cache) if cache else default_cache()
    if not store:
        raise UserError("No dataset store given", "Set dataset_store (a folder, s3:// or minio:// prefix)")
    src_yaml = fetch_source(uri, cache, names)
    spec, note = load_splits(src_yaml, val_fraction=val_fraction, seed=seed)
    if names and list(spec.names) != names:
        raise DataError(
            f"class_names {names} differ from the dataset's classes {list(spec.names)} ({src_yaml})",
            "Leave class_names empty or make it match the dataset's names:",
        )
    if note:
        LOGGER.info(f"prepare_data: {note}")
    remote = _is_remote(store)
    work_root = cache / "prepared" if remote else _local_store_path(store)
    work_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=work_root))
    try:
        ours = str(src_yaml.resolve()).startswith(str(cache.resolve()) + os.sep)
        data_yaml = write_layout(spec, work, link=ours)
        laid_out = load_data_yaml(data_yaml)
        report = check_dataset(laid_out, splits=tuple(laid_out.splits), min_usable=min_usable)
        fp = fingerprint(laid_out)
        counts = {s: c.to_dict() for s, c in report.counts.items()}
        LOGGER.info(report.summary())
        if report_html or report_md:
            html, md = data_report(report, fingerprint=fp, source=uri, note=note)
            if report_html:
                atomic_write_text(report_html, html)
            if report_md:
                atomic_write_text(report_md, md)
        if parse_demo(uri) is None:
            report.data = uri  # name the user's dataset in the message, not our temporary copy
        report.raise_if_unusable()
        marker = {"fingerprint": fp, "names": list(laid_out.names), "counts": counts, "source": uri}
        dataset_uri, stored = store_dataset(work, store, fp, marker)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    LOGGER.info(f"prepare_data: fingerprint {fp} -> {dataset_uri} ({'stored now' if stored else 'already stored'})")
    return {
        "dataset_uri": dataset_uri,
        "fingerprint": fp,
        "names": list(laid_out.names),
        "counts": counts,
        "problems": len(report.problems),
        "errors": len(report.errors),
        "stored": stored,
        "note": note,
        "source": uri,
    }
