"""The package's import graph, read from the source (nothing is imported): no cycles, not even
through imports inside functions; the daemon's alert path and the pure core import no UI,
hardware or storage library (docs/STYLE.md)."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "dockd"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


@functools.cache
def _tree(mod: str) -> ast.Module:
    return ast.parse(MODULES[mod].read_text(encoding="utf-8"))


@functools.cache
def _imports(mod: str, *, nested: bool) -> tuple[str, ...]:
    return tuple(_walk_imports(mod, nested=nested))


def _walk_imports(mod: str, *, nested: bool) -> Iterator[str]:
    """Modules ``mod`` imports (dockd's own resolved to modules, others by top-level name);
    with ``nested``, imports inside functions count too. ``if TYPE_CHECKING:`` never does."""
    path = MODULES[mod]
    package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]

    def walk(body: list[ast.stmt], in_function: bool) -> Iterator[str]:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import) and (nested or not in_function):
                yield from (a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and (nested or not in_function):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1]
                                    + ([node.module] if node.module else []))
                for a in node.names:
                    yield f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
            inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for field in ("body", "orelse", "finalbody", "handlers"):
                sub = getattr(node, field, None)
                if isinstance(sub, list):
                    yield from walk(sub, inner)

    yield from walk(_tree(mod).body, False)


def _graph(nested: bool) -> dict[str, set[str]]:
    return {m: {t for t in _imports(m, nested=nested) if t in MODULES and t != m}
            for m in MODULES}


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
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _function_imports(mod: str, function: str) -> list[str]:
    """What the function ``function`` of ``mod`` imports when it runs (dockd's own resolved
    to modules)."""
    (fn,) = [n for n in _tree(mod).body if isinstance(n, ast.FunctionDef) and n.name == function]
    package = mod.split(".")[:-1]
    out = []
    for node in ast.walk(fn):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]) \
                if node.level else node.module or ""
            out += [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                    for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _loaded_by(*mods: str) -> set[str]:
    """Every module importing ``mods`` loads (module-level imports, transitively), by name."""
    seen: set[str] = set()
    todo = list(mods)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m in MODULES:
            todo.extend(_imports(m, nested=False))
            parent = m.rpartition(".")[0]
            if parent:
                todo.append(parent)  # importing a.b runs a/__init__.py first
    return seen


def test_the_graph_is_read() -> None:
    g = _graph(nested=True)
    assert "dockd.config" in g["dockd.delivery.schedule"] or \
        "dockd.config_types" in g["dockd.delivery.schedule"]
    assert "dockd.store" in g["dockd.alerts"]


def test_no_import_cycles_not_even_through_imports_inside_functions() -> None:
    assert _cycles(_graph(nested=True)) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _third_party(loaded: set[str]) -> set[str]:
    return {m.split(".")[0] for m in loaded if not m.startswith("dockd")}


def test_the_alert_path_imports_no_rich() -> None:
    """The daemon raises deadline alerts through dockd.alerts and the queue's data part:
    the terminal UI library stays out of the daemon."""
    assert "rich" not in _third_party(_loaded_by("dockd.alerts"))
    assert "rich" in _third_party(_loaded_by("dockd.status.queue_view"))  # the check bites


@pytest.mark.parametrize("core", ["dockd.lifecycle", "dockd.delivery.schedule", "dockd.config",
                                  "dockd.integrity.continuity", "dockd.devices.udev_core"])
def test_the_pure_core_imports_no_ui_hardware_or_storage_library(core: str) -> None:
    banned = {"rich", "pyudev", "boto3", "botocore", "asyncssh", "sqlite3", "sqlite_utils",
              "starlette", "uvicorn", "faster_whisper"}
    assert _third_party(_loaded_by(core)) & banned == set()


def test_dockd_verify_needs_only_cryptography_rich_and_sqlite_utils() -> None:
    """A reviewer installs dockd with just these three (tests/e2e/test_custody.py does it for
    real): every command's parser is built on each run, so what the parsers' modules import
    counts, and so does what ``dockd verify`` imports."""
    run = ["dockd.cli", *_function_imports("dockd.cli", "build_parser"),
           *_function_imports("dockd.cli", "cmd_verify")]
    assert "dockd.devices.ports_cli" in run and "dockd.integrity.verify" in run
    import sys

    third_party = _third_party(_loaded_by(*run)) - set(sys.stdlib_module_names) - {"dockd"}
    assert third_party <= {"cryptography", "rich", "sqlite_utils"}
