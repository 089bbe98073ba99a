"""Parse an Ultralytics-style data.yaml into a `DataSpec` (root, class names, image list per split).

Accepted layout::

    path: ../datasets/coco8      # dataset root; relative to this yaml's folder; default: that folder
    train: images/train          # a folder (searched recursively for images), relative to `path`,
    val: val.txt                 #   or a .txt listing one image per line (relative lines are taken
    test:                        #   relative to the .txt's folder), or a list of those. test: optional
      - images/test
    names: [person, car]         # or {0: person, 1: car}

Labels of `.../images/<split>/x.jpg` live at `.../labels/<split>/x.txt` (the last `images` folder in
the path becomes `labels`; with no `images` folder, the label sits next to the image).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubedistill.core.errors import DataError
from kubedistill.core.log import LOGGER
from kubedistill.core.yamlfile import YamlFileError, read_yaml_file
from kubedistill.data.images import IMG_FORMATS

SPLIT_KEYS = ("train", "val", "test")


def label_path(img: str | Path) -> Path:
    """Label file of an image: the last `images` path component becomes `labels`, suffix `.txt`."""
    p = Path(img)
    parts = list(p.parts)
    for i in range(len(parts) - 2, -1, -1):  # parent folders only, never the file name itself
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return p.with_suffix(".txt")


@dataclass
class DataSpec:
    """A parsed data.yaml: where the data is, the class names and every split's image files."""

    yaml_path: Path
    root: Path
    names: list[str]
    splits: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return len(self.names)

    def label_path(self, img: str | Path) -> Path:
        return label_path(img)

    def rel(self, p: str | Path) -> str:
        """`p` relative to the dataset root when inside it (POSIX separators), else absolute."""
        p = Path(p)
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return p.as_posix()


def _fail(yaml_path: Path, cause: str, fix: str) -> DataError:
    return DataError(f"{yaml_path}: {cause}", fix)


def _parse_names(raw: Any, yaml_path: Path) -> list[str]:
    fix_names = "Give `names:` as a list (names: [cat, dog]) or a mapping {0: cat, 1: dog}"
    if raw is None:
        raise _fail(yaml_path, "no class names (`names:` is missing or empty)", fix_names)
    if isinstance(raw, (list, tuple)):
        names = list(raw)
    elif isinstance(raw, dict):
        ids: dict[int, Any] = {}
        for k, v in raw.items():
            try:
                ik = int(k)
                if isinstance(k, float) and k != ik or isinstance(k, bool):
                    raise ValueError
            except (TypeError, ValueError):
                raise _fail(yaml_path, f"class id {k!r} in `names:` is not an integer", fix_names) from None
            if ik in ids:
                raise _fail(yaml_path, f"class id {ik} appears twice in `names:`", fix_names)
            ids[ik] = v
        if sorted(ids) != list(range(len(ids))):
            missing = sorted(set(range(max(ids) + 1 if ids else 0)) - set(ids))
            cause = f"class ids in `names:` must be 0..{len(ids) - 1}" + (
                f" (missing {missing[:5]})" if missing else ""
            )
            raise _fail(yaml_path, cause, "Number the classes 0, 1, 2, ... without gaps")
        names = [ids[i] for i in range(len(ids))]
    else:
        raise _fail(yaml_path, f"`names:` must be a list or a mapping, not {type(raw).__name__}", fix_names)
    if not names:
        raise _fail(yaml_path, "no class names (`names:` is empty)", fix_names)
    out = []
    for i, n in enumerate(names):
        if n is None or (isinstance(n, str) and not n.strip()) or isinstance(n, (list, dict)):
            raise _fail(yaml_path, f"class {i} has no usable name ({n!r})", "Give every class a non-empty name")
        out.append(str(n))
    return out


def _images_in_dir(d: Path) -> list[Path]:
    """The images below folder `d`, each real file once, in a scan that always ends.

    Folder links are followed only to folders inside `d` that are not its ancestors; a folder reached twice (a
    loop, or a second link) is walked once, and a file reached under two names (links) is listed once. A FIFO,
    socket or device with an image's name (also through a link, e.g. to /dev/zero) is left out. What is left
    out is said in one warning, with the first names."""
    root = d.resolve()
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    found: list[Path] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        keep = []
        for x in sorted(dirnames):
            if x.startswith("."):
                continue
            full = Path(dirpath) / x
            if full.is_symlink():
                target = full.resolve()
                if root.is_relative_to(target) or Path(dirpath).resolve().is_relative_to(target):
                    skipped.append(f"{full} (a folder link back to an enclosing folder)")
                    continue
                if not target.is_relative_to(root):
                    skipped.append(f"{full} (a folder link out of {d})")
                    continue
            keep.append(x)
        dirnames[:] = keep
        for f in filenames:
            if f.startswith(".") or os.path.splitext(f)[1].lower() not in IMG_FORMATS:
                continue
            full = Path(dirpath) / f
            try:
                fst = os.stat(full)
            except OSError:  # a dangling link: listed, and the data check reports it missing
                found.append(full)
                continue
            if not stat.S_ISREG(fst.st_mode):
                skipped.append(f"{full} (not a regular file)")
                continue
            if (fst.st_dev, fst.st_ino) not in seen_files:
                seen_files.add((fst.st_dev, fst.st_ino))
                found.append(full)
    if skipped:
        LOGGER.warning(
            f"{d}: left out {len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'}: "
            + "; ".join(skipped[:5])
            + (" ..." if len(skipped) > 5 else "")
        )
    return sorted(found)


def _images_in_txt(txt: Path, root: Path, yaml_path: Path) -> list[Path]:
    try:
        lines = txt.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(
            yaml_path, f"image list '{txt}' cannot be read ({e.__class__.__name__})", "Check that file"
        ) from None
    out = []
    for line in lines:
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        p = Path(s)
        if not p.is_absolute():
            near = txt.parent / p
            p = near if near.exists() or not (root / p).exists() else root / p
        out.append(Path(os.path.normpath(p)))
    return out


def _resolve_split(name: str, raw: Any, root: Path, yaml_path: Path) -> list[Path]:
    entries = raw if isinstance(raw, (list, tuple)) else [raw]
    images: list[Path] = []
    for e in entries:
        if not isinstance(e, (str, os.PathLike)) or not str(e).strip():
            raise _fail(
                yaml_path, f"`{name}:` entry {e!r} is not a path", f"Set `{name}:` to a folder such as images/{name}"
            )
        p = Path(os.path.expanduser(str(e).strip()))
        if not p.is_absolute():
            p = root / p
        p = Path(os.path.normpath(p))
        if p.is_dir():
            images += _images_in_dir(p)
        elif p.is_file() and p.suffix.lower() == ".txt":
            images += _images_in_txt(p, root, yaml_path)
        elif p.is_file() and p.suffix.lower() in IMG_FORMATS:
            images.append(p)
        elif p.exists():
            raise _fail(
                yaml_path,
                f"`{name}:` path '{p}' is neither a folder nor a .txt image list",
                f"Point `{name}:` at a folder of images or a .txt file listing them",
            )
        else:
            raise _fail(
                yaml_path,
                f"`{name}:` path '{p}' does not exist (dataset root is '{root}')",
                "Fix the path, or `path:` (the root the split paths are relative to)",
            )
    seen: set[Path] = set()
    unique = []
    for p in images:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    if not unique:
        raise _fail(
            yaml_path,
            f"split `{name}` holds no images (looked for {', '.join(IMG_FORMATS)} under {entries})",
            "Put the images there or fix the path",
        )
    return unique


def load_data_yaml(path: str | Path) -> DataSpec:
    """Read and check a data.yaml; raise `DataError` (cause, fix) for anything unusable."""
    yaml_path = Path(path).expanduser()
    if yaml_path.is_dir() and (yaml_path / "data.yaml").is_file():
        yaml_path = yaml_path / "data.yaml"
    if not yaml_path.exists():
        raise DataError(f"Dataset file '{yaml_path}' does not exist", "Pass the path of your data.yaml")
    yaml_path = yaml_path.resolve()
    try:
        cfg = read_yaml_file(yaml_path)
    except YamlFileError as e:
        raise _fail(
            yaml_path, e.reason.removeprefix("is "), "Fix the file, or pass the path of your data.yaml"
        ) from None
    if not isinstance(cfg, dict):
        raise _fail(yaml_path, "must hold a mapping (path, train, val, names)", "See the dataset docs for the format")

    raw_root = cfg.get("path")
    if raw_root is None or str(raw_root).strip() == "":
        root = yaml_path.parent
    else:
        root = Path(os.path.expanduser(str(raw_root)))
        if not root.is_absolute():
            root = yaml_path.parent / root
    root = Path(os.path.normpath(root))
    if not root.is_dir():
        raise _fail(yaml_path, f"dataset root `path: {raw_root}` -> '{root}' is not a folder", "Fix `path:`")

    names = _parse_names(cfg.get("names"), yaml_path)
    nc = cfg.get("nc")
    if nc is not None and (not isinstance(nc, int) or nc != len(names)):
        raise _fail(yaml_path, f"`nc: {nc}` does not match the {len(names)} names given", "Remove `nc:` or fix it")

    splits: dict[str, list[Path]] = {}
    for key in SPLIT_KEYS:
        raw = cfg.get(key)
        if raw is None or (isinstance(raw, (str, list)) and len(raw) == 0):
            if key in ("train", "val"):
                raise _fail(yaml_path, f"no `{key}:` split", f"Add `{key}: images/{key}` (a folder or .txt list)")
            continue
        splits[key] = _resolve_split(key, raw, root, yaml_path)
    return DataSpec(yaml_path=yaml_path, root=root, names=names, splits=splits)
