"""The package's layers import only downwards: core < training < analysis < study < cli < api.

(``depthscape.api``, the Python API, is the top layer beside the CLI: nothing imports it but
the package's lazy re-export.)

Every import of a ``depthscape`` module, at module level or inside a function, is read
with ``ast``; a lower layer naming a higher one fails, as does any import cycle between
modules (which would make the order in which they load matter).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "depthscape"
LAYERS = ["core", "training", "analysis", "study", "cli", "api"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every depthscape module ``path`` imports, resolved to the module (not the name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("depthscape")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("depthscape"):
            found.add(node.module)
            for alias in node.names:  # ``from depthscape.cli import train`` names a module
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").exists():
                    found.add(candidate)
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_sits_in_a_layer():
    loose = [m for m in MODULES if _layer(m) is None and m not in
             ("depthscape", "depthscape.__main__")]
    assert loose == [], f"modules outside the layers {LAYERS}: {loose}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    own = _layer(module)
    if own is None:
        return
    upward = sorted(t for t in _imports(MODULES[module]) if (_layer(t) or 0) > own)
    assert upward == [], f"{module} ({LAYERS[own]}) imports a higher layer: {upward}"


def test_no_import_cycles():
    graph = {m: {t for t in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ importing its own submodules is how packages re-export: not a cycle
    for m in graph:
        graph[m] = {t for t in graph[m] if not (t.startswith(m + ".") and MODULES[m].name == "__init__.py")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
