"""The package's layers import only downwards: core < training < analysis < study < cli < api.

(``depthscape.api``, the Python API, is the top layer beside the CLI: nothing imports it but
the package's lazy re-export.)

Every import of a ``depthscape`` module, at module level or inside a function, is read
with ``ast``; a lower layer naming a higher one fails, as does any import cycle between
modules (which would make the order in which they load matter).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "depthscape"
LAYERS = ["core", "training", "analysis", "study", "cli", "api"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module_level: bool = False) -> set[str]:
    """Every depthscape module ``path`` imports, resolved to the module (not the name);
    where ``module_level``, only the imports outside functions."""
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    nodes = ast.walk(tree)
    if module_level:
        nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef,
                                                                ast.AsyncFunctionDef))
                 and not (isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test))
                 for n in ast.walk(top)]
    for node in nodes:
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
    # package __init__s count like any module: one that imports its submodules (to
    # re-export them, or to register model families) is in a cycle with any submodule that
    # imports the package back, e.g. core.models -> resnet -> recipes -> core.models
    graph = {m: {t for t in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # one exemption: the root package's lazy re-export (``depthscape.__getattr__`` loads
    # depthscape.api on the first access of a public name, which api's __init__ lists by
    # importing the package's __all__): only module-level imports of the root count
    if "depthscape" in MODULES:
        graph["depthscape"] = {t for t in _imports(MODULES["depthscape"], module_level=True)
                               if t in MODULES}
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


def test_the_cycle_check_sees_package_inits(tmp_path, monkeypatch):
    """A package's __init__ importing a submodule that imports the package back is a cycle."""
    package = tmp_path / "depthscape" / "core" / "fake"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from depthscape.core.fake import member\n")
    (package / "member.py").write_text("from depthscape.core.fake import thing\n")
    modules = {"depthscape.core.fake": package / "__init__.py",
               "depthscape.core.fake.member": package / "member.py"}
    monkeypatch.setitem(globals(), "MODULES", modules)
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "depthscape")
    with pytest.raises(AssertionError, match="import cycle: depthscape.core.fake -> "
                                             "depthscape.core.fake.member -> depthscape.core.fake"):
        test_no_import_cycles()


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_the_command_list_and_version_load_no_torch(argv):
    """Issue 30: ``depthscape --help`` and ``--version`` read the commands from their
    modules' source and import none of them (nor torch); a command's own help does."""
    probe = ("import sys\nfrom depthscape.cli import main\ntry:\n    main(%r)\nexcept SystemExit:\n"
             "    pass\nprint(sorted(m for m in sys.modules if m == 'torch' or "
             "m.startswith('depthscape.cli.') or m.startswith('depthscape.analysis')))")
    found = subprocess.run([sys.executable, "-c", probe % (argv,)], capture_output=True,
                           text=True, check=True, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert found.stdout.strip().splitlines()[-1] == "[]", found.stdout
    listed = subprocess.run([sys.executable, "-c", probe % (["train", "--help"],)],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert "'torch'" in listed.stdout.strip().splitlines()[-1]


def test_every_command_is_listed_from_its_source():
    from depthscape.cli import _command_modules, commands

    listed = commands()
    modules = _command_modules()
    assert [c.name for c in listed] == [m.NAME for m in modules]
    assert [c.help for c in listed] == [m.HELP for m in modules]
    assert [c.order for c in listed] == sorted(c.order for c in listed)
