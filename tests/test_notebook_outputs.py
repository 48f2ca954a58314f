"""The committed notebooks carry no frozen progress bar, widget state or machine path (afr.notebook_outputs), and
their inline figures are readable (drawn at 90 dpi or more)."""
from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from afr.notebook_outputs import clean, problems

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0[1-6]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_committed_notebook_outputs_are_clean(path):
    notebook = json.loads(path.read_text())
    assert problems(notebook) == []
    assert not any("injected-parameters" in cell.get("metadata", {}).get("tags", []) for cell in notebook["cells"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_inline_figures_are_drawn_at_90_dpi_or_more(path):
    for cell in json.loads(path.read_text())["cells"]:
        for output in cell.get("outputs", []):
            png, text = output.get("data", {}).get("image/png"), output.get("data", {}).get("text/plain")
            if png and text and "Figure size" in "".join(text):  # "<Figure size 1100x380 with 2 Axes>"
                width = struct.unpack(">I", base64.b64decode(png)[16:20])[0]
                assert width >= 0.85 * int("".join(text).split("size ")[1].split("x")[0])  # tight bbox trims a little


def test_clean_drops_progress_bars_and_makes_project_paths_relative():
    from afr.paths import PROJECT_ROOT

    notebook = {"metadata": {"widgets": {"state": {}}}, "cells": [{"cell_type": "code", "outputs": [
        {"output_type": "display_data", "data": {"application/vnd.jupyter.widget-view+json": {}, "text/plain": ["x"]}},
        {"output_type": "stream", "name": "stderr", "text": ["epoch 1/4:  40%|####      | 4/10 [00:01<00:02]\r"]},
        {"output_type": "stream", "name": "stdout", "text": [f"result: {PROJECT_ROOT}/results/a.json\n"]}]}]}
    found = problems(notebook)
    assert sum("progress bar" in line for line in found) == 2 and "metadata holds widget state" in found
    cleaned = clean(notebook)
    assert cleaned["cells"][0]["outputs"] == [{"output_type": "stream", "name": "stdout",
                                               "text": ["result: results/a.json\n"]}]
    assert problems(cleaned) == []
