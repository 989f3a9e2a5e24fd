"""The package's shape: no import cycles, a core that never reaches up into the app or the CLI,
and package-internal imports at module level (a lazy one hides a cycle or a slow import)."""

from __future__ import annotations

import ast
from pathlib import Path

from cnndemo.attribution import METHODS
from cnndemo.cli.common import COMMANDS

PACKAGE = Path(__file__).resolve().parents[1] / "cnndemo"
MAX_LOCAL_IMPORTS = 12


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _internal_imports(mods: dict[str, Path]) -> list[tuple[str, str, bool]]:
    """(importer, imported module, inside a function) for every import of a cnndemo module."""
    found = []
    for mod, f in mods.items():
        package = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        tree = ast.parse(f.read_text())
        local = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for n in ast.walk(fn)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                name = ".".join(p for p in (base, node.module) if p)
                targets = [f"{name}.{a.name}" if f"{name}.{a.name}" in mods else name for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                if t.startswith("cnndemo") and t != mod:
                    while t not in mods and "." in t:
                        t = t.rsplit(".", 1)[0]
                    found.append((mod, t, id(node) in local))
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_and_the_core_never_imports_the_app_or_the_cli():
    mods = _modules()
    imports = _internal_imports(mods)
    assert len({m for m, _, _ in imports}) > 20  # the scan sees the package
    edges: dict[str, set[str]] = {}
    for src, dst, _local in imports:  # function-local imports count: they are cycles too
        edges.setdefault(src, set()).add(dst)
    assert _cycles(edges) == []
    upward = [(s, d) for s, d, _ in imports
              if not s.startswith(("cnndemo.ui", "cnndemo.cli", "cnndemo.__main__"))
              and d.startswith(("cnndemo.ui", "cnndemo.cli"))]
    assert upward == []


def test_package_internal_imports_sit_at_module_level():
    local = [(s, d) for s, d, is_local in _internal_imports(_modules()) if is_local]
    assert len(local) <= MAX_LOCAL_IMPORTS, local


def test_a_method_and_a_command_are_each_defined_in_one_place():
    for key, m in METHODS.items():
        assert m.key == key and callable(m.run) and callable(m.passes) and m.name and m.explain
    # Every command is registered by the module of its view (or the diagnostics/space modules).
    for name, (setup, run, _help) in COMMANDS.items():
        assert run.__module__.startswith("cnndemo.cli.") and run.__module__ == setup.__module__, name
