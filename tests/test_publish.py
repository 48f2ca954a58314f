"""``make publish-adapters``: the adapters notebook 07 draws are the committed fitted grid's runs, and a request the
grid cannot serve is refused before anything is copied."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from afr.experiments.grids import CommittedGrids
from afr.experiments.publish import PUBLISHED_METHODS, PUBLISHED_SEEDS, publish
from afr.paths import PROJECT_ROOT
from afr.validation import SettingsError

COMMITTED = PROJECT_ROOT / "results"


def test_the_published_adapters_are_the_committed_grids_runs_at_the_learning_rates_it_chose():
    grids = CommittedGrids()
    tags = grids.dalora_tags(pd.read_csv(COMMITTED / "tables" / "dalora.csv"))
    folder = COMMITTED / "adapters" / grids.dalora.grid
    published = {path.parent.name: json.loads(path.read_text()) for path in folder.glob("*/source.json")}
    assert set(published) == {f"{method}_seed{seed}" for method in PUBLISHED_METHODS for seed in PUBLISHED_SEEDS}
    for source in published.values():
        assert source["tag"] == tags[source["method"], source["seed"]]
        assert (PROJECT_ROOT / source["record"]).is_file()


def test_a_method_or_seed_outside_the_grid_or_a_missing_record_is_refused_before_any_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    with pytest.raises(SettingsError, match="method lora-wide, seed 9: not in notebook 03's committed grid"):
        publish(methods=("lora", "lora-wide"), seeds=(0, 9))
    with pytest.raises(FileNotFoundError, match="make dalora-results"):
        publish()  # a results folder without the grid's records
    assert not (tmp_path / "results" / "adapters").exists()


def test_the_command_says_what_is_wrong_in_one_line(tmp_path, monkeypatch, capsys):
    from afr.experiments.publish import main

    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    with pytest.raises(SystemExit) as stopped:
        main(["--seeds", "9"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().endswith("seeds 0, 1, 2, 3, 4)")
