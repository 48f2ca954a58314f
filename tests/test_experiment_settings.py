"""One recipe, one list of parameters: the settings dataclass, the CLI built from it, the notebooks' cells."""
from __future__ import annotations

import ast
import dataclasses
import json

import pytest

from afr.cli import build_parser
from afr.experiments.ablations import AblationSettings
from afr.experiments.crossdomain import CrossDomainSettings
from afr.experiments.dalora import DaLoraExperimentSettings
from afr.experiments.maml import MamlExperimentSettings
from afr.experiments.settings import BaselineSettings
from afr.paths import PROJECT_ROOT


def _parameters_cell(notebook: str) -> dict[str, object]:
    """Name -> literal value of every assignment in a notebook's papermill ``parameters`` cell."""
    cells = json.loads((PROJECT_ROOT / "notebooks" / notebook).read_text())["cells"]
    (cell,) = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    tree = ast.parse("".join(cell["source"]))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


@pytest.mark.parametrize("notebook, settings_class", [("02_baseline.ipynb", BaselineSettings),
                                                      ("03_dalora.ipynb", DaLoraExperimentSettings),
                                                      ("04_maml.ipynb", MamlExperimentSettings),
                                                      ("05_crossdomain.ipynb", CrossDomainSettings),
                                                      ("06_ablations.ipynb", AblationSettings)])
def test_notebook_parameters_are_exactly_the_settings_fields_with_their_defaults(notebook, settings_class):
    cell = _parameters_cell(notebook)
    defaults = dataclasses.asdict(settings_class())
    assert list(cell) == list(defaults)  # same names, same order
    assert settings_class.from_mapping(cell) == settings_class()  # same values once normalised


def test_cli_options_are_generated_from_the_settings_with_the_same_defaults():
    args = build_parser().parse_args(["baseline"])
    assert BaselineSettings.from_mapping(vars(args)) == BaselineSettings()
    args = build_parser().parse_args(["dalora", "--seeds", "0", "1", "2", "--search-lrs", "1e-4", "3e-4"])
    assert DaLoraExperimentSettings.from_mapping(vars(args)) == DaLoraExperimentSettings(seeds=(0, 1, 2),
                                                                                         search_lrs=(1e-4, 3e-4))
    args = build_parser().parse_args([
        "baseline", "--lr", "1e-3", "--head-init", "class-mean", "--no-augment", "--benchmarks", "lfw", "cplfw",
        "--num-identities", "1000", "--overwrite"])
    settings = BaselineSettings.from_mapping(vars(args))
    assert (settings.lr, settings.head_init, settings.augment, settings.benchmarks, settings.num_identities,
            settings.overwrite) == (1e-3, "class-mean", False, ("lfw", "cplfw"), 1000, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["baseline", "--head-init", "zeros"])


def test_run_tags_tell_apart_every_result_relevant_setting_and_nothing_else():
    base = BaselineSettings()
    for change in ({"lr": 1e-3}, {"epochs": 5}, {"head_lr": 1e-3}, {"seed": 1}, {"head_init": "class-mean"},
                   {"benchmarks": ("thermal",)}, {"score_test": False}):
        assert dataclasses.replace(base, **change).tag != base.tag, change
    for change in ({"num_workers": 4}, {"device": "cpu"}, {"progress": False}, {"overwrite": True},
                   {"output_dir": "/somewhere"}):
        assert dataclasses.replace(base, **change).tag == base.tag, change
    assert base.tag.startswith("baseline_embedded_dlib-resnet29_r8_seed0_")


def test_contradictory_or_unknown_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="resume and overwrite"):
        BaselineSettings(resume=True, overwrite=True)
    with pytest.raises(ValueError, match="head_init"):
        BaselineSettings(head_init="zeros")
    with pytest.raises(TypeError, match="no value for"):
        BaselineSettings.from_mapping({"lr": 1e-3})
    # a notebook import that rebinds a parameter's name (e.g. a function called score_test) is refused
    with pytest.raises(TypeError, match="score_test is a function"):
        BaselineSettings.from_mapping({**dataclasses.asdict(BaselineSettings()), "score_test": print})


def _search_record(path, head_init, lr, seed, aucs, score_test=False):
    settings = {**dataclasses.asdict(BaselineSettings(head_init=head_init, lr=lr, seed=seed, score_test=score_test))}
    history = [{"epoch": 0, "val/thermal/auc": 0.5, "val/controlled/auc": 0.5},
               {"epoch": 1, "val/thermal/auc": aucs[0], "val/controlled/auc": aucs[1]}]
    record = {"experiment": "baseline", "settings": settings, "seed": seed, "train": {"history": history}}
    path.joinpath(f"baseline_{head_init}_{lr}_{seed}.json").write_text(json.dumps(record))


def test_search_ranks_candidates_by_last_epoch_validation_auc_over_domains_and_seeds(tmp_path, monkeypatch):
    from afr.experiments.search import search_table

    monkeypatch.setenv("AFR_RESULTS", str(tmp_path))
    _search_record(tmp_path, "random", 1e-4, 0, (0.90, 1.0))
    _search_record(tmp_path, "random", 1e-4, 1, (0.94, 1.0))  # mean 0.96
    _search_record(tmp_path, "random", 3e-4, 0, (0.99, 1.0))
    _search_record(tmp_path, "random", 3e-4, 1, (0.89, 1.0))  # mean 0.97: the best mean, not the best single run
    _search_record(tmp_path, "class-mean", 1e-4, 0, (0.96, 0.96))  # mean 0.96
    _search_record(tmp_path, "class-mean", 1e-4, 1, (1.0, 1.0), score_test=True)  # not a search run: ignored
    table = search_table("baseline")
    assert list(table[["head_init", "lr"]].itertuples(index=False, name=None))[0] == ("random", 3e-4)
    assert table.iloc[0]["val_auc_mean"] == pytest.approx(0.97) and table.iloc[0]["seeds"] == "0,1"
    assert table.set_index(["head_init", "lr"]).loc[("class-mean", 1e-4), "seeds"] == "0"
