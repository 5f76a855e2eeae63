#!/usr/bin/env python3
"""Longest function and largest module per source directory.

    python bench/code_size.py            # the working tree
    python bench/code_size.py --ref REF  # a git ref, read with `git show`

A measure for reviews, not a gate: a function is counted from its ``def`` line
to its last line (decorators and docstring included), a module by its lines.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIRECTORIES = ("ml_stacks", "constructs_lib", "lambda", "node_agent", "delivery", "ml_runs")


def _python_files(ref: str | None) -> dict[str, str]:
    """{path: source} of every .py file under DIRECTORIES, at ``ref`` or on disk."""
    if ref is None:
        return {str(p.relative_to(ROOT)): p.read_text()
                for d in DIRECTORIES for p in sorted((ROOT / d).rglob("*.py"))}
    listing = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", ref, "--",
                              *DIRECTORIES], check=True, capture_output=True, text=True).stdout
    return {path: subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{path}"], check=True,
                                 capture_output=True, text=True).stdout
            for path in listing.split() if path.endswith(".py")}


def _functions(source: str) -> list[tuple[str, int]]:
    """(qualified name, length in lines) of every function in ``source``."""
    result: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                result.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return result


def report(files: dict[str, str]) -> list[str]:
    lines = [f"{'directory':<16} {'largest module':<52} {'lines':>5}   "
             f"{'longest function':<60} {'lines':>5}   >80"]
    for directory in DIRECTORIES:
        mine = {p: s for p, s in files.items() if p.split("/")[0] == directory}
        if not mine:
            continue
        module = max(mine, key=lambda p: len(mine[p].splitlines()))
        functions = [(f"{p}:{name}", n) for p, s in mine.items() for name, n in _functions(s)]
        name, length = max(functions, key=lambda f: f[1])
        over = sum(1 for _, n in functions if n > 80)
        lines.append(f"{directory:<16} {module:<52} {len(mine[module].splitlines()):>5}   "
                     f"{name[-60:]:<60} {length:>5}   {over:>3}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", help="a git ref instead of the working tree")
    args = parser.parse_args()
    print("\n".join(report(_python_files(args.ref))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
