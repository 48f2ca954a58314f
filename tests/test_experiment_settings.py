"""One recipe, one list of parameters: the settings dataclass, the CLI built from it, the notebooks' cells."""
from __future__ import annotations

import ast
import dataclasses
import json

import pytest

from afr.cli import GRID_EXPERIMENTS, build_parser
from afr.experiments.ablations import AblationSettings
from afr.experiments.crossdomain import CrossDomainSettings
from afr.experiments.dalora_vs_lora import DaLoraExperimentSettings
from afr.experiments.maml_init import MamlExperimentSettings
from afr.experiments.settings import BaselineSettings
from afr.paths import PROJECT_ROOT


def _parameters_cell(notebook: str) -> dict[str, object]:
    """Name -> literal value of every assignment in a notebook's papermill ``parameters`` cell."""
    cells = json.loads((PROJECT_ROOT / "notebooks" / notebook).read_text())["cells"]
    (cell,) = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    tree = ast.parse("".join(cell["source"]))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


#: every experiment's notebook and settings class: notebook 02's and those the CLI registers (GRID_EXPERIMENTS), so a
#: new experiment is checked without an edit here
NOTEBOOK_SETTINGS = [("02_baseline", "baseline", "BaselineSettings"),
                     *((notebook, command, settings_name)
                       for command, (_, settings_name, notebook, _) in GRID_EXPERIMENTS.items())]


@pytest.mark.parametrize("notebook, command, settings_name", NOTEBOOK_SETTINGS)
def test_notebook_parameters_are_exactly_the_settings_fields_with_their_defaults(notebook, command, settings_name):
    import importlib

    settings_class = getattr(importlib.import_module(f"afr.experiments.settings.{command}"), settings_name)
    cell = _parameters_cell(f"{notebook}.ipynb")
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
        "--data-profile", "full", "--train-rec", "/data/casia", "--num-identities", "1000", "--overwrite"])
    settings = BaselineSettings.from_mapping(vars(args))
    assert (settings.lr, settings.head_init, settings.augment, settings.benchmarks, settings.num_identities,
            settings.overwrite) == (1e-3, "class-mean", False, ("lfw", "cplfw"), 1000, True)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["baseline", "--head-init", "zeros"])


def test_run_tags_tell_apart_every_result_relevant_setting_and_nothing_else():
    base = BaselineSettings()
    for change in ({"lr": 1e-3}, {"epochs": 5}, {"head_lr": 1e-3}, {"seed": 1}, {"head_init": "random"},
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


# ------------------------------------------------------------------------------------------ composition, torch-free
_SETTINGS_CLASSES = (BaselineSettings, DaLoraExperimentSettings, MamlExperimentSettings, CrossDomainSettings,
                     AblationSettings)
_RECORD_FOLDERS = {"": BaselineSettings, "dalora": DaLoraExperimentSettings, "maml": MamlExperimentSettings,
                   "crossdomain": CrossDomainSettings, "ablations": AblationSettings}


def test_settings_modules_grids_paper_and_cli_help_do_not_import_torch():
    """The settings are torch-free modules: the grids, the paper and every ``--help`` import in well under a second."""
    import subprocess
    import sys

    script = """
import contextlib, io, sys
import afr.paper, afr.paper.generate, afr.paper.sources, afr.experiments.grids, afr.experiments.settings
import afr.experiments.settings.ablations, afr.experiments.settings.crossdomain, afr.experiments.settings.dalora
import afr.experiments.settings.maml, afr.experiments.settings.baseline
from afr.cli import GRID_EXPERIMENTS, build_parser
from afr.experiments.grids import CommittedGrids
from afr.experiments.settings.ablations import grid_runs
grid_runs(CommittedGrids().ablations)
for command in ("baseline", *GRID_EXPERIMENTS):
    build_parser().parse_args([command])
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
        build_parser().parse_args([command, "--help"])
with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
    build_parser().parse_args(["--help"])
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision", "cv2", "matplotlib"))
print(heavy)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_recipes_re_export_their_settings():
    from afr.experiments import ablations, baseline, crossdomain, settings
    from afr.experiments import dalora_vs_lora as dalora
    from afr.experiments import maml_init as maml

    assert dalora.DaLoraExperimentSettings is DaLoraExperimentSettings and maml.MamlExperimentSettings is \
        MamlExperimentSettings and crossdomain.CrossDomainSettings is CrossDomainSettings and \
        ablations.AblationSettings is AblationSettings and baseline.BaselineSettings is BaselineSettings is \
        settings.BaselineSettings
    assert dalora.FAMILY_REPRESENTATIVE and ablations.grid_runs and crossdomain.START_FIELDS and maml.METHODS


@pytest.mark.parametrize("settings_class", _SETTINGS_CLASSES)
def test_grid_is_an_execution_field_of_every_experiment(settings_class):
    """``grid`` says which committed grid a run belongs to: it never changes a tag."""
    base = settings_class()
    assert base.grid is None and "grid" in settings_class.EXECUTION_FIELDS
    assert dataclasses.replace(base, grid="dalora-results").tag == base.tag


#: settings an experiment declares itself although a group it does not use has the name: the meaning differs
_OWN_MEANING = {BaselineSettings: {"seed"},  # the seed of the one run (no grid)
                CrossDomainSettings: {"temperature"}}  # of both InfoNCE terms of the adaptation, not DA-LoRA training's


def test_field_groups_declare_each_shared_setting_once():
    """A setting used by several experiments comes from one field group (its help written once); an experiment,
    or a variant of a group (its subclass, e.g. FittedTrainingFields), redeclares it only to change its default or
    narrow its help."""
    from afr.experiments.settings import fields as groups

    group_classes = [value for value in map(groups.__dict__.get, groups.__all__) if isinstance(value, type)]
    declared = {}
    for group in group_classes:
        inherited = {name for base in group.__mro__[1:] for name in vars(base).get("__annotations__", {})}
        for name in vars(group).get("__annotations__", {}):  # its own fields (a group may combine others)
            if name in inherited:  # a variant's new default: the field stays its base group's
                continue
            assert name not in declared, (name, group, declared.get(name))
            declared[name] = group
    for settings_class in _SETTINGS_CLASSES:
        names = set(settings_class.field_names())
        used = [group for group in group_classes if issubclass(settings_class, group)]
        assert used and all({f.name for f in dataclasses.fields(group)} <= names for group in used)
        # a field of a group the class does not use is declared by the class only where its meaning differs
        copied = {name for name, group in declared.items() if group not in used} & names
        assert copied <= _OWN_MEANING.get(settings_class, set()), (settings_class.__name__, copied)


def test_each_experiment_builds_an_explicit_dalora_run():
    """``dalora_run.run_method`` is handed a :class:`DaLoraRunSettings` built explicitly from notebook 03's or the
    ablations' settings: every training field is the experiment's, the naming (tag, run folder, table columns) and the
    recorded settings are the experiment's own, so no tag, record or row changes."""
    from afr.experiments.settings.dalora import DaLoraRunSettings

    experiments = (AblationSettings(), AblationSettings(method="lora", maml_start=False, rank=4),
                   AblationSettings(experts=5, lambda_domain=0.5), DaLoraExperimentSettings(),
                   DaLoraExperimentSettings(shared_expert=True).for_run("dalora-oracle", 2, lr=1e-3))
    for settings in experiments:
        run = settings.run_settings()
        assert isinstance(run, DaLoraRunSettings)
        assert all(getattr(run, name) == getattr(settings, name) for name in DaLoraRunSettings.COPIED)
        assert (run.experiment, run.tag, run.run_dir) == (settings.experiment, settings.tag, settings.run_dir)
        assert run.table_columns() == settings.table_columns()
        assert run.recorded == dataclasses.asdict(settings)
        assert run.shared_expert == getattr(settings, "shared_expert", False)
    assert set(DaLoraRunSettings.COPIED) <= set(AblationSettings.field_names()) & set(
        DaLoraExperimentSettings.field_names())


def _recomputed_tag(settings_class, record):
    """The tag a committed record's settings give today (starts and zero-shot: their own tags). A record made
    before a field was added lacks it: that run had the field's unrecorded value (e.g. ``centre_embeddings`` off)."""
    names = set(settings_class.field_names())
    before = {name: value for name, value in settings_class.unrecorded_values().items()
              if name in settings_class.ADDED_FIELDS}
    settings = settings_class(**{**before, **{name: value for name, value in record["settings"].items()
                                              if name in names}})
    method = record.get("method")
    if settings_class is CrossDomainSettings and method == "zero-shot":
        return {settings.for_run("zero-shot", 0).tag}
    if settings_class is CrossDomainSettings and method.endswith("-start"):  # a start's record omits the direction
        return {dataclasses.replace(settings, direction=direction).start_tag(method.split("-")[0])
                for direction in ("visible->thermal", "visible->lowquality")}
    if settings_class is AblationSettings and method == "maml-start":
        return {settings.start_tag}
    return {settings.tag}


def test_every_committed_record_keeps_its_tag():
    """Every committed record (runs, zero-shot rows, meta-trained starts) names the tag its settings give today."""
    count = 0
    for folder, settings_class in _RECORD_FOLDERS.items():
        for path in sorted((PROJECT_ROOT / "results" / folder).glob("*.json")):
            record = json.loads(path.read_text())
            if not record.get("settings"):
                continue  # not a run record (embedded_stats.json)
            assert record["tag"] in _recomputed_tag(settings_class, record), path.name
            assert path.stem == record["tag"]
            count += 1
    assert count > 190


def test_no_two_committed_crossdomain_grids_share_a_figure():
    """Notebook 05 writes its figure under a name built from the grid's settings: the stage-2 learning rate is part
    of it, so the 3e-4 re-run never replaces the 1e-3 grid's committed figure."""
    from afr.experiments.crossdomain import figure_name
    from afr.experiments.grids import CommittedGrids

    grids = CommittedGrids().crossdomain_grids
    names = {name: figure_name(grid) for name, grid in grids.items()}
    assert len(set(names.values())) == len(names), names
    assert names["thermal_lr3e4_validated"] == "crossdomain_dlib-resnet29_3seed_validated_lr3e-04.png"
