"""Measure the shape of the package: lines per module, long function bodies.

Usage: python scripts/code_shape.py [--over-lines 700] [--over-body 100] [--long 60]

A function body is measured from its first statement to its last line (docstring
included when it is the first statement), as issue 12 measures it.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "dvdexit_cli"


def measure(root: Path = ROOT) -> tuple[dict[str, int], list[tuple[int, str]]]:
    modules: dict[str, int] = {}
    bodies: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        rel = str(path.relative_to(root.parent))
        modules[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = node.body[0].lineno
                last = node.end_lineno or first
                bodies.append((last - first + 1, f"{rel}:{node.lineno} {node.name}"))
    return modules, sorted(bodies, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--over-lines", type=int, default=700)
    parser.add_argument("--over-body", type=int, default=100)
    parser.add_argument("--long", type=int, default=60)
    args = parser.parse_args()
    modules, bodies = measure()
    print(f"{sum(modules.values())} lines in {len(modules)} modules")
    big = sorted(((n, m) for m, n in modules.items() if n > args.over_lines), reverse=True)
    print(f"modules over {args.over_lines} lines: {len(big)}")
    for n, m in big:
        print(f"  {n:5d} {m}")
    long = [(n, f) for n, f in bodies if n > args.long]
    print(
        f"function bodies over {args.long} lines: {len(long)}; "
        f"over {args.over_body}: {sum(1 for n, _ in long if n > args.over_body)}"
    )
    for n, f in long:
        print(f"  {n:5d} {f}")


if __name__ == "__main__":
    main()
