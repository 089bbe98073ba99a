"""The house rules for imports: packages in layers (pyproject's import-linter contract), no import cycles between
modules, and imports at module top except where they defer a heavy optional extra.

A function-level import is allowed only when what it imports is heavy: an external package from HEAVY, or a
kubedistill module that imports one (directly or through other kubedistill modules) when it is loaded. Anything
else belongs at the top of the module, where a reader sees what the module depends on.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "kubedistill"
# The optional extras and big libraries that `import kubedistill` and the serving path must not pay for.
HEAVY = {
    "torch",
    "mlflow",
    "kfp",
    "kfp_server_api",
    "boto3",
    "botocore",
    "onnxruntime",
    "onnx",
    "onnxscript",
    "helm_python",
    "kubernetes",
    "cv2",
    "matplotlib",
    "fastapi",
    "uvicorn",
    "starlette",
    "faster_coco_eval",
    "pycocotools",
    "pandas",
    "aiohttp",
    "httpx",
    "prometheus_client",
    "docker",
    "urllib3",
    "google",
    "tqdm",
    "multipart",
}

COMPONENTS = "kubedistill.pipeline.components."


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _imports(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        # `from kubedistill.core import device` imports the submodule kubedistill.core.device
        subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
        return subs or [node.module]
    return []


def _top_level_imports(tree: ast.Module) -> list[str]:
    """Imports that run when the module loads: module body, including under if/try (not inside def/class bodies'
    functions, and not under `if TYPE_CHECKING`)."""
    found: list[str] = []

    def visit(stmts):
        for s in stmts:
            if isinstance(s, ast.If) and "TYPE_CHECKING" in ast.unparse(s.test):
                continue
            found.extend(_imports(s))
            if isinstance(s, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(s, block, []))
                for h in getattr(s, "handlers", []):
                    visit(h.body)
            elif isinstance(s, ast.ClassDef):
                visit(s.body)

    visit(tree.body)
    return found


def _nested_imports(tree: ast.Module) -> list[tuple[int, str]]:
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                out.extend((node.lineno, name) for name in _imports(node))
    return out


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text())


@cache
def is_heavy(module: str, _seen: frozenset = frozenset()) -> bool:
    """True when loading `module` loads a HEAVY package."""
    top = module.split(".")[0]
    if top != "kubedistill":
        return top in HEAVY
    if module not in MODULES or module in _seen:
        return False
    seen = _seen | {module}
    return any(is_heavy(name, seen) for name in _top_level_imports(_tree(module)))


def test_layers_contract_holds():
    """pyproject's [tool.importlinter] contract: each package imports only from the layers below it."""
    exe = Path(sys.executable).with_name("lint-imports")
    res = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("kubedistill")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != module and graph.chain_exists(imported, module):
                cycles.append(" -> ".join(graph.find_shortest_chain(imported, module) or ()) + f" -> {imported}")
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles))[:20])


def test_imports_sit_at_module_top_unless_they_defer_something_heavy():
    late = []
    for module in sorted(MODULES):
        if module.startswith(COMPONENTS):  # a KFP component's body runs alone in the step's container
            continue
        if (
            module == "kubedistill"
        ):  # its __getattr__ loads the Python API on first use: `import kubedistill` stays cheap
            continue
        for line, name in _nested_imports(_tree(module)):
            if not is_heavy(name):
                late.append(f"{MODULES[module].relative_to(ROOT)}:{line} imports {name} inside a function")
    assert not late, "\n".join(late)


def test_import_kubedistill_loads_only_the_ground_floor():
    code = "import sys, kubedistill; print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubedistill', 'numpy', 'yaml')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(["kubedistill", "kubedistill.core", "kubedistill.core.errors", "kubedistill.core.version"]), out


def test_import_kubedistill_cli_loads_nothing_heavy():
    code = (
        "import sys, kubedistill, kubedistill.cli; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out


def test_the_checker_sees_a_light_late_import_and_a_heavy_one():
    assert not is_heavy("kubedistill.core.errors")
    assert is_heavy("kubedistill.core.device")  # imports torch
    assert is_heavy("kubedistill.train.trainer")  # through its own imports
    assert is_heavy("mlflow") and not is_heavy("json")
