"""The code has the shape docs/ARCHITECTURE.md draws: every module it names exists and every
module is named; faces reach jobs only through the job service; only the scheduler builds a
runner; modules stay small enough to read in one sitting."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "batchpredict"
#: Modules that are faces: they may not touch storage or output except through the service.
FACES = ("cli", "server")


def package_modules() -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}


def documented_modules() -> set[str]:
    text = (REPO / "docs/ARCHITECTURE.md").read_text()
    table = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_/]+\.py)` \|", table, re.M))


def test_architecture_names_every_module_and_only_real_ones() -> None:
    documented, real = documented_modules(), package_modules()
    assert sorted(documented - real) == [], "named in ARCHITECTURE.md but missing"
    assert sorted(real - documented) == [], "in the package but not in ARCHITECTURE.md"


def imports_of(path: Path) -> set[str]:
    """Every `batchpredict...` module or name a file imports, as dotted paths."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {name for name in found if name.startswith("batchpredict")}


def test_faces_reach_storage_and_output_only_through_the_service() -> None:
    allowed = {"batchpredict.output.OutputReader"}  # the reader type the service hands out
    offenders = {}
    for face in FACES:
        for path in (PACKAGE / face).rglob("*.py"):
            bad = {name for name in imports_of(path) - allowed
                   if re.match(r"batchpredict\.(storage|output|runner\.JobRunner)\b", name)
                   or name in ("batchpredict.storage", "batchpredict.output")}
            if bad:
                offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert offenders == {}


def test_only_the_scheduler_builds_a_runner() -> None:
    builders = sorted(
        str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
        if re.search(r"\bJobRunner\(", p.read_text())
    )
    assert builders == ["batchpredict/scheduler.py"]


def test_modules_and_functions_fit_in_one_sitting() -> None:
    """No module over ~400 lines (450 allowed) and no function over ~60 (70 allowed)."""
    long_modules, long_functions = {}, {}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        name = str(path.relative_to(REPO))
        if text.count("\n") > 450:
            long_modules[name] = text.count("\n")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 70:
                    long_functions[f"{name}:{node.name}"] = length
    assert long_modules == {}
    assert long_functions == {}
