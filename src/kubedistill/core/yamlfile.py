"""Users' YAML files (configs, data.yaml, parameters, values) read so that no file can hang, flood or crash us.

- only a regular file of at most 16 MB is read: a FIFO would block for ever, /dev/zero would never end;
- UTF-8 (a BOM is fine); anything else is "not UTF-8 text", not a UnicodeDecodeError;
- YAML's safe loader, and a cap on the document's size once aliases are expanded: a "billion laughs" file of a
  few hundred bytes expands to 9^9 items, which anything walking it (pydantic, our own checks) would not survive.
Every failure is a `YamlFileError` with a short `reason` that callers turn into their own one-line error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_YAML_BYTES = 16 * 2**20
MAX_NODES = 1_000_000  # scalars, sequences and mappings after alias expansion


class YamlFileError(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts the nodes a document has with every alias expanded."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent, index):
        node = super().compose_node(parent, index)
        key = id(node)
        if key not in self._sizes:
            if isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes.get(id(c), 1) for c in node.value)
            elif isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value)
            else:
                size = 1
            if size > MAX_NODES:
                raise YamlFileError(f"expands to more than {MAX_NODES:,} items through its aliases")
            self._sizes[key] = size
        return node


def load_yaml_text(text: str, *, all_documents: bool = False) -> Any:
    """The (first, or every) document of YAML `text`, safely; YamlFileError when it is not valid YAML."""
    try:
        if all_documents:
            return list(yaml.load_all(text, Loader=_BoundedLoader))  # noqa: S506 (a SafeLoader subclass)
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        raise YamlFileError(f"is not valid YAML{where}" + (f" ({problem})" if problem else "")) from None


def read_yaml_file(path: str | Path, *, all_documents: bool = False) -> Any:
    """The YAML in the file at `path`; YamlFileError (with a reason such as 'does not exist') otherwise."""
    p = Path(path)
    try:
        st = os.stat(p)
        if stat.S_ISDIR(st.st_mode):
            raise YamlFileError("is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise YamlFileError("is not a regular file (a pipe, socket or device)")
        if st.st_size > MAX_YAML_BYTES:
            raise YamlFileError(f"is {st.st_size / 2**20:.0f} MB, more than {MAX_YAML_BYTES // 2**20} MB of YAML")
        with open(p, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise YamlFileError("does not exist") from None
    except YamlFileError:
        raise
    except OSError as e:
        raise YamlFileError(f"cannot be read ({e.strerror or e.__class__.__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise YamlFileError(f"is not UTF-8 text (byte {e.start})") from None
    return load_yaml_text(text, all_documents=all_documents)
