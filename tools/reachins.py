#!/usr/bin/env python3
"""Count private reach-ins in ``minisoup/``: ``x._name`` where ``x`` is not ``self``/``cls``.

An object's underscore fields belong to its own class; another object that needs them
should call a method with a name (STYLE.md, "Seams"). The few reach-ins that remain on
purpose carry a comment containing ``reach-in:`` on the same line or the line above,
saying why. Attributes of imported modules (``os._exit``, ``sys._getframe``) are the
standard library's public API and do not count, nor do dunder names.

    python3 tools/reachins.py            # list every reach-in, then the totals
    python3 tools/reachins.py --max 10   # exit 1 if more than 10, or any lacks a reason
"""

import argparse
import ast
import collections
import pathlib
import sys
from typing import Iterator, List, NamedTuple

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARK = "reach-in:"


class ReachIn(NamedTuple):
    path: str
    line: int
    text: str
    explained: bool


def _module_names(tree: ast.AST) -> set:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names.add((alias.asname or alias.name).split(".")[0])
    return names


def find(package: pathlib.Path) -> Iterator[ReachIn]:
    """Yield every reach-in below ``package`` (a folder of ``.py`` files)."""
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        tree = ast.parse(source, str(path))
        modules = _module_names(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ({"self", "cls"} | modules):
                continue
            line = node.lineno
            near = lines[line - 1] + (lines[line - 2] if line >= 2 else "")
            yield ReachIn(str(path.relative_to(package.parent)), line,
                          ast.get_source_segment(source, node) or name, MARK in near)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=None,
                        help="exit 1 if there are more than this, or any has no reason")
    parser.add_argument("package", nargs="?", default=str(ROOT / "minisoup"))
    args = parser.parse_args(argv)
    found = list(find(pathlib.Path(args.package)))
    per_file = collections.Counter(r.path for r in found)
    for r in found:
        print("%s:%d: %s%s" % (r.path, r.line, r.text, "" if r.explained else "   (no reason)"))
    print("%d reach-in(s): %s" % (len(found), ", ".join("%s %d" % kv for kv in
                                                        sorted(per_file.items()))))
    unexplained = [r for r in found if not r.explained]
    if args.max is not None and (len(found) > args.max or unexplained):
        print("over the limit of %d, or %d without a 'reach-in:' reason"
              % (args.max, len(unexplained)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
