"""What a committed notebook may carry in its outputs, and the cleaning that makes it so.

An executed notebook is committed without progress bars frozen mid-way (tqdm widgets, or the text bars tqdm writes
on stderr), without the widget state that came with them, and without absolute paths of the machine that ran it
(project paths become relative: ``/…/AdaptFace/results/x.json`` -> ``results/x.json``). Run after executing a notebook
that is to be committed: ``python -m afr.notebook_outputs notebooks/02_baseline.ipynb [...]``;
``tests/test_notebook_outputs.py`` checks the committed ones with :func:`problems`.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from afr.io import atomic_write_text
from afr.paths import PROJECT_ROOT, processed_root

__all__ = ["MACHINE_PATH", "clean", "clean_file", "problems"]

#: an absolute path of a machine: what no committed output may hold
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:work|home|root|tmp|Users|mnt|scratch)/[^\s'\"]*")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: a tqdm text bar: "desc:  40%|####      | 4/10 [00:01<00:02, ...]"
TEXT_BAR = re.compile(r"\d+%\|.*\|\s*\d+/\d+|\|\s*\d+/\d+ \[")


def _is_progress(output: dict[str, Any]) -> bool:
    if WIDGET_VIEW in output.get("data", {}):
        return True
    return output.get("output_type") == "stream" and bool(TEXT_BAR.search("".join(output.get("text", ""))))


def _relative(text: str) -> str:
    """Absolute project / data paths made relative to the project (the data folder as ``data/processed``)."""
    for root, name in ((str(processed_root()), "data/processed"), (str(PROJECT_ROOT), "")):
        text = text.replace(root + "/", (name + "/") if name else "").replace(root, name or ".")
    return text


def clean(notebook: dict[str, Any]) -> dict[str, Any]:
    """``notebook`` (nbformat JSON) without progress-bar outputs and widget state, its project paths relative."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if _is_progress(output):
                continue
            if output.get("output_type") == "stream":
                output["text"] = _relative("".join(output["text"])).splitlines(keepends=True)
            for kind, value in output.get("data", {}).items():
                if kind.startswith("text/"):
                    output["data"][kind] = _relative("".join(value)).splitlines(keepends=True)
            kept.append(output)
        cell["outputs"] = kept
    notebook.get("metadata", {}).pop("widgets", None)
    return notebook


def clean_file(path: str | Path) -> Path:
    """:func:`clean` a notebook file in place (atomically; nbformat's layout: indent 1, a final newline)."""
    path = Path(path)
    notebook = clean(json.loads(path.read_text()))
    atomic_write_text(path, json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return path


def problems(notebook: dict[str, Any]) -> list[str]:
    """What a committed notebook must not carry: progress bars, widget state, machine paths (one line each)."""
    found = []
    if "widgets" in notebook.get("metadata", {}):
        found.append("metadata holds widget state")
    for index, cell in enumerate(notebook.get("cells", [])):
        for output in cell.get("outputs", []):
            if _is_progress(output):
                found.append(f"cell {index}: a progress bar")
            texts = ["".join(output.get("text", ""))] + ["".join(value) for kind, value in output.get("data", {}).items()
                                                        if kind.startswith("text/")]
            for text in texts:
                for match in MACHINE_PATH.findall(text):
                    found.append(f"cell {index}: machine path {match}")
    return found


if __name__ == "__main__":
    for name in sys.argv[1:]:
        clean_file(name)
        left = problems(json.loads(Path(name).read_text()))
        print(f"{name}: cleaned" + (f"; left: {'; '.join(left)}" if left else ""))
