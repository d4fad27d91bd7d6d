"""`make lint`: minisoup/ imports the standard library only, and protocol modules no I/O."""

import ast
import pathlib
import sys

PROTOCOL_MODULES = {"http", "frames", "handshake", "extensions", "deflate", "message"}
IO_MODULES = {"socket", "selectors", "os"}


def imports(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def main():
    stdlib = set(getattr(sys, "stdlib_module_names", ())) | {"minisoup", "__future__"}
    problems = []
    for path in sorted(pathlib.Path("minisoup").glob("*.py")):
        for lineno, name in imports(path):
            if stdlib and name not in stdlib:
                problems.append("%s:%d imports %s (not stdlib)" % (path, lineno, name))
            if path.stem in PROTOCOL_MODULES and name in IO_MODULES:
                problems.append("%s:%d: protocol module imports %s" % (path, lineno, name))
    for line in problems:
        print(line)
    print("stdlib-only check: %s" % ("FAILED" if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
