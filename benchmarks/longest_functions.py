"""The longest functions of the depthscape package, by line count (a readability check).

    python benchmarks/longest_functions.py [--top 5] [--src src/depthscape]

Every ``def`` (methods and nested functions included) is measured from its ``def`` line
to its last line, docstring included; a nested function also counts within its parent.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "depthscape"


def function_lengths(root: Path) -> list[tuple[int, str]]:
    """(lines, "path:line name") of every function under ``root``, longest first."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                found.append((lines, f"{path.relative_to(root.parent)}:{node.lineno} {node.name}"))
    return sorted(found, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--src", type=Path, default=SRC)
    args = parser.parse_args()
    for lines, where in function_lengths(args.src)[:args.top]:
        print(f"{lines:5d}  {where}")


if __name__ == "__main__":
    main()
