"""``python -m afr build-embedded`` writes the statistics documents the paper and the model card read, with the
library function notebook 01 calls: from the current benchmark they equal the committed files byte for byte."""
from __future__ import annotations

import json

import pytest

from afr.cli import main
from afr.data.embedded_stats import STATS_JSON, STATS_MARKDOWN, write_embedded_stats
from afr.paths import PROJECT_ROOT

COMMITTED = PROJECT_ROOT / "results"


@pytest.mark.shared("data/faces")
def test_build_embedded_writes_the_committed_statistics(embedded_benchmark, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    monkeypatch.setenv("AFR_RESULTS", str(results))
    # the benchmark the session fixture built (default settings): build-embedded reuses it and writes the stats
    assert main(["build-embedded", "--output-dir", str(embedded_benchmark.root)]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["stats_files"] == [str(results / STATS_JSON), str(results / STATS_MARKDOWN)]
    for name in (STATS_JSON, STATS_MARKDOWN):
        assert (results / name).read_bytes() == (COMMITTED / name).read_bytes(), name


def test_notebook_01_writes_the_statistics_with_the_library_function():
    cells = json.loads((PROJECT_ROOT / "notebooks" / "01_data.ipynb").read_text())["cells"]
    sources = ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]
    assert any("write_embedded_stats(stats)" in source for source in sources)
    assert not any('"embedded_stats.json"' in source for source in sources)  # no second copy of the computation


def test_statistics_files_are_written_into_the_given_folder(tmp_path):
    stats = json.loads((COMMITTED / STATS_JSON).read_text())
    data, markdown = write_embedded_stats(stats, tmp_path / "out")
    assert data.read_bytes() == (COMMITTED / STATS_JSON).read_bytes()
    assert markdown.read_bytes() == (COMMITTED / STATS_MARKDOWN).read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [STATS_JSON, STATS_MARKDOWN]  # no temporary files
