"""The package's floors: no experiment recipe imports another recipe (their shared pieces live one layer down, in
library modules such as ``afr.experiments.benchmark_data`` and ``afr.experiments.dalora_run``). Read with ``ast``:
nothing is imported, so the test is cheap and sees imports inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from afr.cli import GRID_EXPERIMENTS
from afr.paths import PROJECT_ROOT

EXPERIMENTS = PROJECT_ROOT / "afr" / "experiments"
#: the recipe modules of notebooks 02-06 (``python -m afr baseline`` and the grid experiments' commands)
RECIPES = ("baseline", "dalora_vs_lora", "maml_init", "crossdomain", "ablations")


def imported_modules(source: str, package: str = "afr.experiments") -> set[str]:
    """Every module ``source`` imports (``import a.b``, ``from a.b import c`` as ``a.b`` and ``a.b.c``, relative
    imports resolved against ``package``), at any depth: top level, functions, ``if TYPE_CHECKING`` blocks."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def recipe_imports(name: str, source: str) -> set[str]:
    """The other recipes the recipe ``name`` imports."""
    modules = imported_modules(source)
    return {other for other in RECIPES if other != name and f"afr.experiments.{other}" in modules}


def test_the_recipe_list_is_the_clis():
    assert {module.rsplit(".", 1)[1] for module, *_ in GRID_EXPERIMENTS.values()} | {"baseline"} == set(RECIPES)
    assert all((EXPERIMENTS / f"{name}.py").is_file() for name in RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_no_recipe_imports_another_recipe(name):
    assert recipe_imports(name, (EXPERIMENTS / f"{name}.py").read_text()) == set()


@pytest.mark.parametrize("line", [
    "from afr.experiments.baseline import BaselineData",
    "from afr.experiments import dalora_vs_lora as dalora",
    "import afr.experiments.crossdomain",
    "from .maml_init import MamlData",
    "from . import baseline",
    "def f():\n    from afr.experiments.baseline import load_data",
])
def test_the_check_sees_every_spelling_of_a_recipe_import(line):
    source = (EXPERIMENTS / "ablations.py").read_text() + "\n" + line + "\n"
    assert recipe_imports("ablations", source)


def test_library_modules_are_not_recipes():
    """The recipes' shared library pieces import no recipe either (else a recipe would import one through them)."""
    for path in EXPERIMENTS.glob("*.py"):
        if path.stem not in RECIPES:
            assert recipe_imports(path.stem, path.read_text()) == set(), path.name
