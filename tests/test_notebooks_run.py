"""Every numbered notebook runs top to bottom with the small parameter file of ``tests/notebook_parameters/``.

This is the quick tier of the notebook tests (``make test``): each notebook is executed by papermill, as the
Makefile's batch targets do, with a budget of a few tens of seconds of training; a cell error fails the test
with the cell's traceback. The regression tier (``make test-full``) runs the notebooks as shipped under nbval and
compares their checked outputs with the committed ones.

Results, figures and runs go to a scratch folder of the test session, never to the committed ``results/``.
A parameter file may only name parameters of its notebook's ``parameters`` cell (papermill itself only warns).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PARAMETERS_DIR = Path(__file__).resolve().parent / "notebook_parameters"
NOTEBOOKS = sorted(path.name for path in NOTEBOOKS_DIR.glob("0*.ipynb"))


def small_parameters(notebook: str) -> dict:
    path = PARAMETERS_DIR / f"{Path(notebook).stem}.yaml"
    if not path.is_file():
        pytest.fail(f"{path} not found: every notebook needs a small parameter file for the quick tier", pytrace=False)
    return yaml.safe_load(path.read_text()) or {}


def test_every_notebook_has_a_parameter_file_and_no_file_is_orphaned():
    names = {Path(notebook).stem for notebook in NOTEBOOKS}
    files = {path.stem for path in PARAMETERS_DIR.glob("*.yaml")}
    assert len(names) == 7 and names == files


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_parameter_files_name_only_parameters_of_their_notebook(notebook):
    from papermill import inspect_notebook

    unknown = set(small_parameters(notebook)) - set(inspect_notebook(str(NOTEBOOKS_DIR / notebook)))
    assert not unknown, f"{notebook}: parameters not in its parameters cell: {sorted(unknown)}"


@pytest.fixture(scope="session")
def scratch_outputs(tmp_path_factory):
    """AFR_RESULTS / AFR_FIGURES / AFR_RUNS of the kernels: a scratch folder, unless ``make test`` set them."""
    root = tmp_path_factory.mktemp("notebook-outputs")
    saved = {name: os.environ.get(name) for name in ("AFR_RESULTS", "AFR_FIGURES", "AFR_RUNS")}
    for name, folder in (("AFR_RESULTS", "results"), ("AFR_FIGURES", "figures"), ("AFR_RUNS", "runs")):
        os.environ.setdefault(name, str(root / folder))
    yield root
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_runs_with_small_parameters(notebook, scratch_outputs, embedded_benchmark):
    import papermill

    committed_results = (NOTEBOOKS_DIR.parent / "results").resolve()
    assert Path(os.environ["AFR_RESULTS"]).resolve() != committed_results, "the quick tier never writes results/"
    output = scratch_outputs / "executed" / notebook
    output.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(NOTEBOOKS_DIR / notebook), str(output), parameters=small_parameters(notebook),
        cwd=str(NOTEBOOKS_DIR), progress_bar=False, log_output=False, kernel_name="python3",
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_papermill_sees_every_parameter_of_the_parameters_cell(notebook):
    """papermill skips a line it cannot parse (e.g. a comment holding '='), and then `-p name value` is only warned
    about and ignored: every name the parameters cell assigns must be one papermill sees."""
    import ast
    import json

    from papermill import inspect_notebook

    cells = json.loads((NOTEBOOKS_DIR / notebook).read_text())["cells"]
    source = next("".join(cell["source"]) for cell in cells if "parameters" in cell.get("metadata", {}).get("tags", []))
    assigned = {target.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    assert assigned == set(inspect_notebook(str(NOTEBOOKS_DIR / notebook)))
