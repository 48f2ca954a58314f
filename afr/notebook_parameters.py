"""A notebook refuses a parameter it does not use: papermill's "Passed unknown parameter" warning is not enough.

``papermill -p train_rec ... notebooks/04_maml.ipynb`` injects a cell ``# Parameters`` after the notebook's own
``parameters`` cell and runs the notebook; a name the notebook never reads is only warned about, and the run goes on
with the notebook's defaults (e.g. the embedded benchmark instead of the CASIA-WebFace the user meant). A user
editing the parameters cell in JupyterLab can make the same mistake (``epoch = 2`` for ``epochs``).

The kernel keeps the source of every cell it ran in IPython's input history (``In`` in the notebook's globals), so
the first cell after the parameters reads it back: the latest shipped parameters cell (its first line starts
``# Parameters (``) and the latest papermill-injected one (first line exactly ``# Parameters``); every name they
assign must be one of the notebook's parameters, or :func:`check_notebook_parameters` raises one
:class:`~afr.validation.SettingsError` naming the unknown ones (and the closest known names) before any work. A
mapping without that history (the command line's options) is not checked here: argparse refuses unknown options.
This module is cheap to import (no torch).
"""
from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from afr.validation import SettingsError

__all__ = ["INJECTED_HEADER", "SHIPPED_HEADER", "assigned_names", "check_notebook_parameters", "parameter_cells"]

#: first line of the cell papermill injects (``papermill.translators.PythonTranslator.codify``)
INJECTED_HEADER = "# Parameters"
#: how every shipped notebook's ``parameters`` cell begins
SHIPPED_HEADER = "# Parameters ("


def _first_line(source: str) -> str:
    return source.lstrip().split("\n", 1)[0].rstrip()


def parameter_cells(history: Sequence[str]) -> dict[str, str]:
    """The latest shipped parameters cell (key ``"shipped"``) and the latest papermill-injected cell (``"injected"``)
    in a kernel's input history, where it ran them."""
    cells: dict[str, str] = {}
    for source in history:
        if not isinstance(source, str):
            continue
        first = _first_line(source)
        if first == INJECTED_HEADER:
            cells["injected"] = source
        elif first.startswith(SHIPPED_HEADER):
            cells["shipped"] = source
    return cells


def assigned_names(source: str) -> list[str]:
    """The names a cell assigns at its top level (``name = ...``, ``a = b = ...``, ``name: T = ...``), in order."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics and the like: the kernel already said what is wrong with the cell
        return []
    names: list[str] = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            names.extend(element.id for element in ast.walk(target) if isinstance(element, ast.Name))
    return list(dict.fromkeys(names))


def check_notebook_parameters(namespace: Mapping[str, Any], known: Iterable[str] | None = None,
                              notebook: str = "this notebook") -> None:
    """Raise :class:`~afr.validation.SettingsError` when the parameters cells that ran in ``namespace``'s kernel
    (its ``In`` history) assign a name outside ``known`` (default: the names the shipped parameters cell assigns);
    do nothing when ``namespace`` has no such history."""
    history = namespace.get("In")
    if not isinstance(history, list):
        return
    cells = parameter_cells(history)
    known = set(assigned_names(cells.get("shipped", "")) if known is None else known)
    problems = []
    for kind, where in (("injected", "passed to papermill"), ("shipped", "set in the parameters cell")):
        unknown = [name for name in assigned_names(cells.get(kind, "")) if name not in known]
        if unknown:
            problems.append(f"{', '.join(unknown)} ({where})")
    if problems:
        unknown_names = [name for problem in problems for name in problem.split(" (", 1)[0].split(", ")]
        hints = [f"{name} -> {close[0]}" for name in unknown_names
                 if (close := difflib.get_close_matches(name, known, n=1, cutoff=0.75))]
        raise SettingsError(
            f"{notebook} does not use the parameter(s) {'; '.join(problems)}: nothing was run. "
            + (f"Did you mean {', '.join(hints)}? " if hints else "")
            + f"Its parameters: {', '.join(sorted(known))}", *unknown_names)
