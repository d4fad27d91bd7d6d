"""The layout promises of issue 10 and STYLE.md, checked on the source itself.

- At most ``MAX_REACH_INS`` private reach-ins (``x._name`` where ``x`` is not ``self``)
  in minisoup/, each with a ``# reach-in: why`` comment (tools/reachins.py counts them).
- Nothing inside the package imports the package's ``__init__``.
- The sans-I/O protocol modules import no socket, selectors or os.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "minisoup"
sys.path.insert(0, str(ROOT / "tools"))

import reachins  # noqa: E402  (tools/ is on the path above)

MAX_REACH_INS = 10
SANS_IO = ("http", "grammar", "handshake", "frames", "extensions", "deflate", "errors",
           "interfaces", "_version", "headers")


def _tree(name: str) -> ast.AST:
    return ast.parse((PACKAGE / (name + ".py")).read_text(encoding="utf-8"))


def test_private_reach_ins_are_few_and_explained():
    found = list(reachins.find(PACKAGE))
    unexplained = ["%s:%d %s" % (r.path, r.line, r.text) for r in found if not r.explained]
    assert not unexplained, "reach-ins without a '# reach-in:' reason: %s" % unexplained
    assert len(found) <= MAX_REACH_INS, ["%s:%d %s" % r[:3] for r in found]


def test_reach_in_counter_sees_one(tmp_path):
    # The counter itself: one reach-in, one on self (not counted), one on a module.
    (tmp_path / "m.py").write_text("import os\nclass A:\n    def f(self, b):\n"
                                   "        self._x = b._y\n        os._exit\n")
    found = list(reachins.find(tmp_path))
    assert [(r.line, r.text) for r in found] == [(4, "b._y")]


def test_no_module_imports_the_package_init():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
                offenders.append("%s:%d" % (path.name, node.lineno))
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "minisoup":
                offenders.append("%s:%d" % (path.name, node.lineno))
    assert not offenders


@pytest.mark.parametrize("name", [n for n in SANS_IO if (PACKAGE / (n + ".py")).exists()])
def test_protocol_modules_do_no_io(name):
    imported = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"socket", "selectors", "os", "select"}
