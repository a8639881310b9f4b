"""The shape of the code, read from its source (AST), function-local imports included:

* no import cycle among mqepi's modules (the library, ``analysis/``, ``flows/``, ``schemas/``);
* no module over 500 lines (pure data tables excepted, listed by name below), no function over 60;
* every module has a docstring;
* flows import only the public library API (``from mqepi import ...``, names of ``mqepi.API``);
* imports sit at the top of a module; a function-local import is only for a heavy library
  (``HEAVY``) and says why on its line.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import mqepi

ROOT = Path(__file__).resolve().parent.parent
#: Where each installed package's source lives (pyproject.toml's package-dir).
PACKAGES = {"mqepi": ROOT / "mqepi", "mqepi.analysis": ROOT / "analysis", "mqepi.flows": ROOT / "flows",
            "mqepi.schemas": ROOT / "schemas"}
MAX_LINES = 500
MAX_FUNCTION_LINES = 60
#: Modules allowed over MAX_LINES because they are pure data tables (none today).
DATA_TABLES: dict[str, str] = {}
#: Libraries slow to import or optional at run time: the only function-local imports allowed.
HEAVY = ("prefect", "matplotlib", "adjustText", "duckdb", "pynvml", "mqepi.flows", "statsmodels", "scipy", "llama_cpp",
         "boto3", "botocore")


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    lines: int
    imports: list[tuple[ast.stmt, bool]] = field(default_factory=list)  # (import node, at module top)


def _modules() -> dict[str, Module]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            if name.endswith(".__init__"):
                name = name[: -len(".__init__")]
            text = path.read_text()
            tree = ast.parse(text, filename=str(path))
            module = Module(name, path, tree, text.count("\n") + (not text.endswith("\n")))
            top = set(map(id, tree.body))
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    module.imports.append((node, id(node) in top))
            out[name] = module
    return out


MODULES = _modules()


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.name.split(".")
    is_package = module.path.name == "__init__.py"
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: Module, node: ast.stmt) -> list[str]:
    """The mqepi modules an import statement loads (a name of ``mqepi.API`` counts as its module)."""
    found = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            found += [name] if name else []
        return found
    source = _absolute(module, node)
    for alias in node.names:
        if f"{source}.{alias.name}" in MODULES:
            found.append(f"{source}.{alias.name}")
        elif source == "mqepi" and alias.name in mqepi.API:
            found.append(mqepi.API[alias.name])
        elif source in MODULES and source != "mqepi":
            found.append(source)
    return found


def _graph() -> dict[str, set[str]]:
    return {name: {t for node, _ in m.imports for t in _targets(m, node) if t != name} for name, m in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_source_was_found():
    assert {"mqepi", "mqepi.cli", "mqepi.lake.store", "mqepi.flows.sweep", "mqepi.analysis", "mqepi.schemas"} <= set(MODULES)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size_and_docstring(name):
    module = MODULES[name]
    assert ast.get_docstring(module.tree), f"{module.path}: no module docstring"
    if name not in DATA_TABLES:
        assert module.lines <= MAX_LINES, f"{module.path}: {module.lines} lines (at most {MAX_LINES})"


def test_public_api_resolves():
    for name, where in mqepi.API.items():
        assert where in MODULES, f"mqepi.API[{name!r}] names {where}, not a module"
        assert getattr(mqepi, name).__module__ == where, name
    assert set(mqepi.__all__) >= set(mqepi.API)


def test_flows_import_only_the_public_api():
    bad = []
    for name, module in MODULES.items():
        if not name.startswith("mqepi.flows"):
            continue
        for node, _ in module.imports:
            if isinstance(node, ast.ImportFrom) and _absolute(module, node) == "mqepi":
                bad += [f"{module.path.name}:{node.lineno} {a.name}" for a in node.names if a.name not in mqepi.API]
            else:
                bad += [f"{module.path.name}:{node.lineno} {t}" for t in _targets(module, node)
                        if not t.startswith("mqepi.flows")]
    assert not bad, "flows import beside the public API (from mqepi import ...): " + ", ".join(bad)


def _import_names(module: Module, node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [_absolute(module, node)]


def test_imports_are_at_the_top_unless_heavy_with_a_reason():
    bad = []
    for module in MODULES.values():
        lines = module.path.read_text().splitlines()
        for node, at_top in module.imports:
            if at_top or (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                continue
            names = _import_names(module, node)
            heavy = all(any(n == h or n.startswith(h + ".") for h in HEAVY) for n in names)
            reason = "#" in lines[node.end_lineno - 1]
            if not (heavy and reason):
                bad.append(f"{module.path.relative_to(ROOT)}:{node.lineno} {', '.join(names)}"
                           + ("" if heavy else " (not a heavy library)") + ("" if reason else " (no reason given)"))
    assert not bad, "function-local imports:\n" + "\n".join(bad)


def test_every_package_is_installed():
    """pyproject.toml lists packages by name: a new package missing there would be absent from a
    non-editable install (the tests run from an editable one and would not notice)."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, m in MODULES.items() if m.path.name == "__init__.py"}
    assert found == listed


def test_functions_are_short():
    """A function over MAX_FUNCTION_LINES is a list of steps waiting for names."""
    long = [f"{m.path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for m in MODULES.values() for node in ast.walk(m.tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "long functions:\n" + "\n".join(long)
