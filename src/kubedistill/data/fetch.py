"""Get a dataset onto local disk: `fetch_dataset(uri, dest)` -> the path of its data.yaml.

`uri` may be a local data.yaml or a folder holding one (used where it is, nothing copied), an
`s3://` prefix holding a dataset (downloaded into dest; unchanged files are reused on the next fetch),
or a local or `s3://` archive (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz) with data.yaml at its root or
in its single top folder (extracted into dest; an unchanged archive is not fetched or extracted again).

Archives are extracted safely: a member with an absolute path or "..", a link pointing outside the
archive, or a device/FIFO refuses the whole archive (tar additionally goes through tarfile's "data"
filter). Extraction goes to a temporary folder beside dest that replaces dest only when complete.
Integrity is checked while extracting: zip members by their CRC, a compressed tar by reading its stream to
the end (gzip's CRC and length, bzip2's and xz's checks), so a corrupt or cut archive is refused, naming the
member where it was found, instead of leaving files missing or altered. Limits against decompression bombs
(`ArchiveLimits`, environment variables KUBEDISTILL_ARCHIVE_MAX_GB / _MAX_MEMBERS / _MAX_RATIO): total
uncompressed size, member count, and uncompressed size over archive size. A member the OS cannot create (a
name too long, a file where a folder is) and one zipfile cannot read (encrypted, an unsupported compression)
is refused in one line.

A data.yaml whose `path:` is absolute or leads outside the fetched tree (the author's own machine) is
written as `data.fetched.yaml` beside it with `path:` pointing at the fetched copy; the original is kept.
"""

from __future__ import annotations

import errno
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import yaml

from kubedistill.core.atomic import atomic_write_text
from kubedistill.core.cache import cache_dir
from kubedistill.core.env import env_number
from kubedistill.core.errors import DataError, UserError
from kubedistill.core.yamlfile import YamlFileError, read_yaml_file
from kubedistill.storage import LOGGER, MANIFEST, StorageError, download, file_lock, head, is_remote

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
YAML_NAMES = ("data.yaml", "data.yml")
FETCHED_YAML = "data.fetched.yaml"
_FIX_ARCHIVE = "Rebuild the archive with plain files and relative paths inside one folder"
_FIX_CORRUPT = "The archive is damaged or cut short: fetch or build it again"


class ArchiveLimits:
    """Caps on what one archive may unpack to. The defaults fit real datasets (COCO 2017 with labels is about
    20 GB in 250,000 files; images do not compress, so its ratio is about 1) and stop bombs (ratios of 1,000
    and more). Each can be set with an environment variable."""

    def __init__(self) -> None:
        self.max_bytes = int(env_number("KUBEDISTILL_ARCHIVE_MAX_GB", 200, strict=True) * 1e9)
        self.max_members = int(env_number("KUBEDISTILL_ARCHIVE_MAX_MEMBERS", 5_000_000, strict=True))
        self.max_ratio = env_number("KUBEDISTILL_ARCHIVE_MAX_RATIO", 100, strict=True)

    def check(self, archive: str, members: int, total: int, packed: int, name: str) -> None:
        fix = "If the archive is genuine, raise the limit: "
        if members > self.max_members:
            raise DataError(
                f"Archive '{archive}' has more than {self.max_members} members (at '{name}')",
                fix + "KUBEDISTILL_ARCHIVE_MAX_MEMBERS",
            )
        if total > self.max_bytes:
            raise DataError(
                f"Archive '{archive}' unpacks to more than {self.max_bytes / 1e9:g} GB (at '{name}')",
                fix + "KUBEDISTILL_ARCHIVE_MAX_GB",
            )
        if total > 1_000_000 and total > self.max_ratio * max(packed, 1):
            raise DataError(
                f"Archive '{archive}' unpacks to {total / max(packed, 1):.0f}x its size (at '{name}'), more than "
                f"{self.max_ratio:g}x: a decompression bomb?",
                fix + "KUBEDISTILL_ARCHIVE_MAX_RATIO",
            )


def _member_error(archive: str, name: str, e: BaseException) -> DataError:
    """A member that cannot be written or read, in one line."""
    if isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG:
        return DataError(
            f"Archive '{archive}' member '{name[:80]}...' has a name too long for this file system", _FIX_ARCHIVE
        )
    if isinstance(e, (IsADirectoryError, NotADirectoryError, FileExistsError)):
        return DataError(
            f"Archive '{archive}' member '{name}' clashes with a file or folder of the same name", _FIX_ARCHIVE
        )
    if isinstance(e, RuntimeError) and "encrypted" in str(e):
        return DataError(f"Archive '{archive}' member '{name}' is encrypted", "Store the dataset without a password")
    if isinstance(e, NotImplementedError):
        return DataError(
            f"Archive '{archive}' member '{name}' uses a compression this Python cannot read ({e})",
            "Rebuild the archive with deflate (zip) or as .tar.gz",
        )
    return DataError(f"Archive '{archive}' is corrupt at member '{name}' ({_one_line(e)})", _FIX_CORRUPT)


def _one_line(e: BaseException, n: int = 160) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text if len(text) <= n else text[: n - 3] + "..."


def is_archive(uri: str | os.PathLike) -> bool:
    """Whether a URI or path names an archive this module extracts (by its suffix)."""
    return str(uri).strip().lower().rstrip("/").endswith(ARCHIVE_SUFFIXES)


def _archive_stem(name: str) -> str:
    low = name.lower()
    for suf in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def default_dest(uri: str) -> Path:
    """Where `resolve_data` fetches a URI: the cache's datasets folder, one folder per URI."""
    name = _archive_stem(PurePosixPath(str(uri).rstrip("/")).name) or "dataset"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]
    return cache_dir("datasets") / f"{name}-{hashlib.sha256(str(uri).encode()).hexdigest()[:12]}"


def resolve_data(uri: str | os.PathLike, dest: Path | None = None) -> Path:
    """A `data=` value -> a local data.yaml path. Local paths pass through unchanged (load_data_yaml checks
    them); s3:// URIs and archives are fetched into dest (default: `default_dest(uri)`, in the cache)."""
    text = str(uri).strip()
    if not is_remote(text) and not is_archive(text):
        return Path(text)
    return fetch_dataset(text, dest if dest is not None else default_dest(text))


# ----------------------------------------------------------------------------- finding and fixing data.yaml


def find_data_yaml(root: Path, uri: str) -> Path:
    """data.yaml at root or in root's single top folder; DataError (saying what is there) otherwise."""
    candidates = [root]
    entries = [p for p in root.iterdir() if not p.name.startswith(".")] if root.is_dir() else []
    dirs = [p for p in entries if p.is_dir()]
    if len(entries) == 1 and len(dirs) == 1:
        candidates.append(dirs[0])
    for folder in candidates:
        for name in YAML_NAMES:
            if (folder / name).is_file():
                return folder / name
    if any((folder / sub).is_dir() for folder in candidates for sub in ("images", "labels")):
        raise DataError(
            f"'{uri}' holds images/labels but no data.yaml",
            "Add a data.yaml (path: ., train: images/train, val: images/val, names: [...]) at the dataset's root",
        )
    if not entries:
        raise DataError(f"'{uri}' holds no files", "Check the URI")
    shown = ", ".join(sorted(p.name for p in entries)[:5])
    raise DataError(
        f"'{uri}' holds no data.yaml at its root or in a single top folder (found: {shown})",
        "Point at the folder that holds data.yaml, or add one",
    )


def _inside(p: Path, root: Path) -> bool:
    try:
        Path(os.path.normpath(p)).relative_to(os.path.normpath(root))
        return True
    except ValueError:
        return False


def _splits_found(cfg: dict, root: Path) -> bool:
    """Whether the relative train/val entries of a data.yaml exist under root."""
    for key in ("train", "val"):
        raw = cfg.get(key)
        for e in raw if isinstance(raw, list) else [raw]:
            if isinstance(e, str) and e.strip() and not os.path.isabs(e) and not (root / e.strip()).exists():
                return False
    return True


def localize_data_yaml(yaml_path: Path, tree: Path) -> Path:
    """Make a fetched data.yaml usable where it now lies: see the module docstring. Returns the yaml to use."""
    try:
        cfg = read_yaml_file(yaml_path)
    except YamlFileError:
        return yaml_path  # load_data_yaml reports it
    raw = cfg.get("path") if isinstance(cfg, dict) else None
    if raw is None or str(raw).strip() == "":
        return yaml_path
    given = Path(os.path.expanduser(str(raw).strip()))
    root = given if given.is_absolute() else yaml_path.parent / given
    if _inside(root, tree) and root.is_dir():
        return yaml_path
    name = PurePosixPath(str(raw).strip().replace("\\", "/").rstrip("/")).name
    for cand in (yaml_path.parent, yaml_path.parent / name if name not in ("", ".", "..") else None):
        if cand is not None and cand.is_dir() and _splits_found(cfg, cand):
            cfg["path"] = os.path.relpath(cand, yaml_path.parent)
            out = yaml_path.with_name(FETCHED_YAML)
            atomic_write_text(out, yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
            LOGGER.info(
                f"{yaml_path.name}: `path: {raw}` is not inside the fetched copy; using `path: {cfg['path']}` in {out}"
            )
            return out
    raise DataError(
        f"{yaml_path}: `path: {raw}` points outside the fetched dataset",
        "Make `path:` relative to data.yaml (e.g. `path: .`) or leave it out",
    )


# ----------------------------------------------------------------------------- safe extraction


def _check_name(name: str, archive: str) -> None:
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        raise DataError(f"Archive '{archive}' member '{name}' has an absolute path", _FIX_ARCHIVE)
    if ".." in n.split("/"):
        raise DataError(f"Archive '{archive}' member '{name}' has '..' in its path (path traversal)", _FIX_ARCHIVE)


def _check_link(name: str, target: str, archive: str, hard: bool) -> None:
    t = target.replace("\\", "/")
    base = "" if hard else str(PurePosixPath(name.replace("\\", "/")).parent)
    resolved = os.path.normpath(os.path.join(base, t)) if not t.startswith("/") else t
    if t.startswith("/") or re.match(r"^[A-Za-z]:", t) or resolved == ".." or resolved.startswith("../"):
        kind = "hard link" if hard else "symbolic link"
        raise DataError(
            f"Archive '{archive}' member '{name}' is a {kind} pointing outside the archive ('{target}')", _FIX_ARCHIVE
        )


def _tar_filter(archive: str):
    data_filter = getattr(tarfile, "data_filter", None)

    def check(member: tarfile.TarInfo, path: str):
        _check_name(member.name, archive)
        if member.issym() or member.islnk():
            _check_link(member.name, member.linkname, archive, hard=member.islnk())
        elif member.ischr() or member.isblk() or member.isfifo() or member.isdev():
            raise DataError(f"Archive '{archive}' member '{member.name}' is a device or FIFO", _FIX_ARCHIVE)
        elif not (member.isfile() or member.isdir()):
            raise DataError(f"Archive '{archive}' member '{member.name}' is not a plain file or folder", _FIX_ARCHIVE)
        return data_filter(member, path) if data_filter else member

    return check


def _extract_tar(path: Path, out: Path, archive: str, limits: ArchiveLimits) -> None:
    packed = path.stat().st_size
    check = _tar_filter(archive)
    name, count, total = "(header)", 0, 0
    try:
        with tarfile.open(path) as tf:
            for member in tf:
                name = member.name
                count += 1
                total += member.size
                limits.check(archive, count, total, packed, name)
                tf.extract(member, out, filter=check)
            name = "(end of archive)"
            # the members are read; the compressed stream's own check (gzip CRC and length, bzip2, xz) is at its end
            while tf.fileobj.read(1 << 20):
                pass
    except tarfile.FilterError as e:  # what the "data" filter refuses beyond our own checks
        raise DataError(f"Archive '{archive}' member '{e.tarinfo.name}' is refused ({e})", _FIX_ARCHIVE) from None
    except DataError:
        raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        raise _member_error(archive, name, e) from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
        if count == 0:
            raise DataError(f"'{archive}' is not a readable tar archive ({_one_line(e)})", _FIX_CORRUPT) from None
        raise _member_error(archive, name, e) from None


def _extract_zip(path: Path, out: Path, archive: str, limits: ArchiveLimits) -> None:
    name = "(directory)"
    packed = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = 0
            for n, info in enumerate(infos, 1):
                name = info.filename
                _check_name(info.filename, archive)
                total += info.file_size
                limits.check(archive, n, total, packed, name)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    target = zf.read(info).decode("utf-8", "replace")
                    _check_link(info.filename, target, archive, hard=False)
                    raise DataError(
                        f"Archive '{archive}' member '{info.filename}' is a symbolic link (zip links are not supported)",
                        "Store the file itself in the archive",
                    )
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                    raise DataError(f"Archive '{archive}' member '{info.filename}' is a device or FIFO", _FIX_ARCHIVE)
            free = shutil.disk_usage(out).free
            if total > free:
                raise UserError(
                    f"Archive '{archive}' needs {total / 2**30:.1f} GiB but {out.parent} has {free / 2**30:.1f} GiB free",
                    "Free disk space or fetch into another folder",
                )
            for info in infos:  # zipfile checks each member's CRC and size as it is read
                name = info.filename
                zf.extract(info, out)
    except DataError:
        raise
    except zipfile.BadZipFile as e:
        if name == "(directory)":
            raise DataError(f"'{archive}' is not a readable zip archive ({_one_line(e)})", _FIX_CORRUPT) from None
        raise _member_error(archive, name, e) from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        raise _member_error(archive, name, e) from None
    except (RuntimeError, NotImplementedError, EOFError, zlib.error, lzma.LZMAError, ValueError) as e:
        raise _member_error(archive, name, e) from None


def extract_archive(path: Path, out: Path, archive: str | None = None, limits: ArchiveLimits | None = None) -> None:
    """Extract a .zip or tar archive into the folder `out`, refusing unsafe, corrupt and oversized archives (see
    the module docstring). On a refusal `out` holds a partial tree: callers extract into a temporary folder."""
    archive = archive or str(path)
    limits = limits or ArchiveLimits()
    out.mkdir(parents=True, exist_ok=True)
    try:
        if str(archive).lower().rstrip("/").endswith(".zip") or (
            not tarfile.is_tarfile(path) and zipfile.is_zipfile(path)
        ):
            _extract_zip(path, out, archive, limits)
        else:
            _extract_tar(path, out, archive, limits)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StorageError(
                f"No space left on the device extracting '{archive}'", "Free disk space or fetch into another folder"
            ) from None
        raise


# ----------------------------------------------------------------------------- fetching


def _read_record(dest: Path) -> dict:
    try:
        rec = json.loads((dest / MANIFEST).read_text())
        return rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        return {}


def _fetch_archive(uri: str, dest: Path) -> Path:
    if is_remote(uri):
        info = head(uri)
        identity = {"etag": info.etag, "size": info.size}
    else:
        src = Path(uri).expanduser()
        if not src.is_file():
            raise DataError(f"Dataset archive '{src}' does not exist", "Check the path")
        st = src.stat()
        identity = {"path": str(src.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    rec = _read_record(dest)
    if rec.get("source") == uri and rec.get("archive") == identity and (dest / str(rec.get("yaml", ""))).is_file():
        LOGGER.info(f"{uri}: unchanged, using {dest}")
        return dest / rec["yaml"]
    if dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not (dest / MANIFEST).exists())):
        raise UserError(
            f"'{dest}' already exists and was not written by `kubedistill data fetch`",
            "Fetch into an empty or new folder",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
    try:
        if is_remote(uri):
            local = download(uri, work / "archive" / PurePosixPath(uri).name)
        else:
            local = Path(uri).expanduser()
        tree = work / "tree"
        extract_archive(local, tree, uri)
        yml = find_data_yaml(tree, uri)
        yml = localize_data_yaml(yml, tree)
        rel = yml.relative_to(tree).as_posix()
        atomic_write_text(tree / MANIFEST, json.dumps({"source": uri, "archive": identity, "yaml": rel}, indent=1))
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(tree, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    LOGGER.info(f"{uri}: extracted into {dest}")
    return dest / rel


def fetch_dataset(uri: str, dest: Path) -> Path:
    """A dataset URI -> the path of its data.yaml on local disk (see the module docstring)."""
    text = str(uri).strip()
    dest = Path(dest).expanduser()
    if not text:
        raise DataError("No dataset given", "Pass a data.yaml, a folder, an s3:// prefix or an archive")
    if is_archive(text):
        with file_lock(dest):
            return _fetch_archive(text, dest)
    if is_remote(text):
        prefix = text
        if text.lower().endswith((".yaml", ".yml")):  # s3://b/ds/data.yaml: the dataset is its folder
            prefix = text.rsplit("/", 1)[0]
        prefix = prefix.rstrip("/") + "/"
        with file_lock(dest):
            download(prefix, dest)
            return localize_data_yaml(find_data_yaml(dest, text), dest)
    p = Path(text).expanduser()
    if p.is_file():
        return p.resolve()
    if p.is_dir():
        return find_data_yaml(p, text).resolve()
    raise DataError(
        f"Dataset '{p}' does not exist", "Pass a data.yaml, a folder holding one, an s3:// prefix or an archive"
    )
