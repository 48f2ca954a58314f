"""The results layer loses nothing: locked table appends, a record and its rows together, repaired rows on reuse,
``--resume`` never over a finished record, no committed record retrained over on a fresh clone (no runs/)."""
from __future__ import annotations

import dataclasses
import errno
import json
import multiprocessing
import shutil

import pandas as pd
import pytest

from afr.experiments import records
from afr.experiments.records import (ResultExistsError, append_rows, read_table, reuse_record, table_path,
                                     write_record)
from afr.io import FolderInUseError, claim_folder
from afr.paths import PROJECT_ROOT, results_root

COMMITTED = PROJECT_ROOT / "results"


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Empty results and runs folders (a fresh clone's runs/, a results/ we may write)."""
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("AFR_RUNS", str(tmp_path / "runs"))
    return tmp_path


def _row(run: str, value: float = 0.5) -> dict:
    return {"experiment": "demo", "run": run, "method": "lora", "domain": "orl", "metric": "auc", "seed": 0,
            "value": value}


def _append_many(results: str, writer: int, count: int) -> None:
    import os

    os.environ["AFR_RESULTS"] = results
    for index in range(count):
        append_rows("demo", [_row(f"w{writer}-{index}")])


def test_concurrent_appends_keep_every_row(scratch):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(str(scratch / "results"), writer, 40)) for writer in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    table = read_table("demo")
    assert sorted(table["run"]) == sorted(f"w{w}-{i}" for w in (0, 1) for i in range(40))


def test_a_record_and_its_rows_land_together_or_not_at_all(scratch, monkeypatch):
    path = scratch / "results" / "demo" / "run-a.json"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(records, "append_rows_unlocked", disk_full)
        with pytest.raises(OSError):
            write_record(path, {"tag": "run-a", "value": 1}, "demo", [_row("run-a")])
    assert not path.exists()  # the record was taken back with its rows
    write_record(path, {"tag": "run-a", "value": 1}, "demo", [_row("run-a", 0.5)])
    with monkeypatch.context() as patch:  # a replacement that fails puts the earlier record back
        patch.setattr(records, "append_rows_unlocked", disk_full)
        with pytest.raises(OSError):
            write_record(path, {"tag": "run-a", "value": 2}, "demo", [_row("run-a", 0.9)], overwrite=True)
    assert json.loads(path.read_text())["value"] == 1
    assert read_table("demo")["value"].tolist() == [0.5]
    with pytest.raises(ResultExistsError, match="--overwrite"):
        write_record(path, {"tag": "run-a", "value": 3}, "demo", [_row("run-a")])
    assert json.loads(path.read_text())["value"] == 1


def test_reusing_a_record_without_rows_repairs_the_table(scratch):
    path = scratch / "results" / "demo" / "run-b.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"tag": "run-b", "value": 0.7}))  # a run killed between record and rows
    record = reuse_record(path, "demo", lambda found: [_row(found["tag"], found["value"])])
    assert record["value"] == 0.7
    assert read_table("demo")[["run", "value"]].values.tolist() == [["run-b", 0.7]]
    reuse_record(path, "demo", lambda found: pytest.fail("rows present: nothing to repair"))


def _committed_settings(settings_class, record_path):
    record = json.loads(record_path.read_text())
    names = {f.name for f in dataclasses.fields(settings_class)}
    settings = settings_class(**{k: v for k, v in record["settings"].items() if k in names})
    assert settings.tag == record["tag"]
    return settings, record


def test_a_reused_maml_record_gets_its_committed_rows_back(scratch):
    from afr.experiments import maml_init as maml

    source = sorted((COMMITTED / "maml").glob("maml_maml_seed1_*.json"))[0]
    settings, record = _committed_settings(maml.MamlExperimentSettings, source)
    target = maml.record_path(settings)
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    assert maml.run_method(settings, data=None)["tag"] == record["tag"]  # reused: no data needed
    committed = pd.read_csv(COMMITTED / "tables" / "maml.csv")
    key = ["run", "method", "domain", "metric", "seed", "shots", "steps"]
    expected = committed[committed["run"] == record["tag"]].sort_values(key).reset_index(drop=True)
    repaired = read_table("maml").sort_values(key).reset_index(drop=True)
    assert len(repaired) == len(expected) > 0
    pd.testing.assert_frame_equal(repaired[key + ["value"]], expected[key + ["value"]], check_dtype=False)


def test_resume_never_replaces_a_finished_baseline_record(scratch):
    from afr.experiments.baseline import claim_run
    from afr.experiments.settings import BaselineSettings

    settings = BaselineSettings(resume=True)
    path = records.result_path(settings.tag)
    path.parent.mkdir(parents=True)
    path.write_text('{"finished": true}\n')
    with pytest.raises(ResultExistsError, match="--resume continues only an unfinished run"):
        claim_run(settings)
    assert claim_run(dataclasses.replace(settings, resume=False, overwrite=True))  # told to: allowed
    assert path.read_text() == '{"finished": true}\n'


def test_a_fresh_clone_never_retrains_over_a_committed_start(scratch):
    """runs/ empty, results/ with a committed start record: an adaptation with new settings needs the start's
    adapter; it is refused before any work, naming the flag, and the committed record stays byte for byte."""
    from afr.experiments import crossdomain

    source = sorted((COMMITTED / "crossdomain").glob("crossdomain_pooled-start_seed0_*.json"))[0]
    committed = json.loads(source.read_text())
    settings = crossdomain.CrossDomainSettings(methods=("lora",), seeds=(0,), shots=(3,), adapt_steps=1,
                                               progress=False)
    assert settings.for_run("lora", 0).start_tag("pooled") == committed["tag"]
    target = crossdomain.results_root() / "crossdomain" / source.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    with pytest.raises(crossdomain.MissingStartError, match="--rebuild-starts"):
        crossdomain.run_grid(settings, data=None)  # refused before the data is touched
    with pytest.raises(crossdomain.MissingStartError, match="--rebuild-starts"):
        crossdomain.run_method(settings.for_run("lora", 0), data=None)
    assert target.read_bytes() == source.read_bytes()
    crossdomain.check_starts(dataclasses.replace(settings, rebuild_starts=True))  # the flag lets it through


def test_a_fresh_clone_never_retrains_over_a_committed_ablation_start(scratch):
    """The ablations refuse, by the same check as the cross-domain grid's, a run still to train whose committed MAML
    start has no adapter on this machine; ``--rebuild-starts`` lets it through."""
    from afr.experiments import ablations

    source = sorted((COMMITTED / "ablations").glob("ablations_maml-start-*.json"))[0]
    committed = json.loads(source.read_text())
    run = ablations.AblationSettings(**{name: committed["settings"][name] for name in ablations.START_FIELDS},
                                     progress=False)
    assert run.start_tag == committed["tag"]
    target = ablations.results_root() / "ablations" / source.name
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    with pytest.raises(records.MissingStartError, match=f"{committed['tag']}.*--rebuild-starts"):
        ablations.check_starts([run])
    with pytest.raises(records.MissingStartError, match="--rebuild-starts"):
        ablations.run_start(run, data=None)
    assert target.read_bytes() == source.read_bytes()
    ablations.check_starts([dataclasses.replace(run, rebuild_starts=True)])  # the flag lets it through


def test_a_run_folder_in_use_is_refused(tmp_path):
    folder = tmp_path / "runs" / "tag"
    with claim_folder(folder):
        with pytest.raises(FolderInUseError, match="in use by another process"):
            with claim_folder(folder):
                pass
    with claim_folder(folder):  # released with the first holder
        pass


def test_two_trainers_never_train_in_one_folder(tmp_path):
    from afr.train import TrainConfig, Trainer
    from afr.train.smoke import SyntheticFaces, TinyClassifier

    config = TrainConfig(epochs=1, batch_size=8, output_dir=str(tmp_path / "run"), progress=False, tensorboard=False,
                         device="cpu")
    with claim_folder(tmp_path / "run"):  # another process's run holds the folder
        with pytest.raises(FolderInUseError):
            Trainer(TinyClassifier(), SyntheticFaces(8), config).fit()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_publishing_never_replaces_another_runs_adapter(scratch):
    from afr.experiments import dalora_vs_lora as dalora

    run_dir = scratch / "runs" / "new"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "weights.bin").write_bytes(b"new")
    published = results_root() / "adapters" / "lora_seed0"
    published.mkdir(parents=True)
    (published / "weights.bin").write_bytes(b"committed")
    (published / "source.json").write_text(json.dumps({"tag": "dalora_lora_seed0_old"}))
    outcome = dalora.RunOutcome({"tag": "dalora_lora_seed0_new", "experiment": "dalora",
                                 "train": {"run_dir": str(run_dir)}})
    with pytest.raises(ResultExistsError, match="dalora_lora_seed0_old"):
        dalora.export_adapters({("lora", 0): outcome})
    assert (published / "weights.bin").read_bytes() == b"committed"
    dalora.export_adapters({("lora", 0): outcome}, overwrite=True)
    assert (published / "weights.bin").read_bytes() == b"new"
    # a grid publishes in a folder of its own: the adapters published before stay
    fitted = dalora.adapters_folder("dalora-fitted")
    assert fitted == results_root() / "adapters" / "dalora-fitted"
    gone = dalora.RunOutcome({"tag": "dalora_lora_seed1_gone", "experiment": "dalora",
                              "train": {"run_dir": str(scratch / "runs" / "elsewhere")}})
    with pytest.raises(FileNotFoundError, match="dalora_lora_seed1_gone"):  # required: refused before any copy
        dalora.export_adapters({("lora", 0): outcome, ("lora", 1): gone}, folder=fitted, required=True)
    assert not fitted.exists()
    dalora.export_adapters({("lora", 0): outcome}, folder=fitted)
    assert (fitted / "lora_seed0" / "weights.bin").read_bytes() == b"new"
    assert json.loads((published / "source.json").read_text())["tag"] == "dalora_lora_seed0_new"


@pytest.mark.parametrize("experiment", ["dalora", "maml", "crossdomain", "ablations", "baseline"])
def test_every_committed_record_has_its_rows_so_a_rerun_repairs_nothing(experiment):
    """Reusing a committed record writes rows only when its table has none of them: on the committed results this
    must never happen (a fresh clone's rerun changes no committed table). Records without rows by design: the
    ablations' MAML starts (not scored) and runs whose every k was skipped (no test metrics)."""
    table = pd.read_csv(COMMITTED / "tables" / f"{experiment}.csv")
    folder = COMMITTED if experiment == "baseline" else COMMITTED / experiment
    found = [json.loads(path.read_text()) for path in folder.glob(f"{experiment}_*.json")]
    assert found
    without = [record["tag"] for record in found if record["tag"] not in set(table["run"])
               and record.get("method") != "maml-start" and record.get("test") not in ({},)]
    assert without == []


def _with_grid(table: pd.DataFrame, name: str) -> set[str]:
    cells = table["grid"].fillna("").astype(str).str.split(";")
    return set(table.loc[cells.apply(lambda names: name in names), "run"])


def test_the_grid_column_selects_exactly_the_runs_the_paper_reports():
    """Without the package: rows whose grid cell names a grid are that grid's runs, as the paper finds them by tag."""
    from afr.paper.sources import load_sources

    sources = load_sources(COMMITTED)
    sources.flagged = {}  # the selection by tag alone: the paper then leaves flagged runs out (tests/test_health.py)
    tables = {name: pd.read_csv(COMMITTED / "tables" / f"{name}.csv") for name in
              ("baseline", "dalora", "maml", "crossdomain", "ablations")}
    assert _with_grid(tables["baseline"], "baseline-fitted") == {sources.baseline_tag}
    assert _with_grid(tables["baseline"], "baseline-search-fitted") == set(sources.baseline_search()["run"])
    assert _with_grid(tables["baseline"], "baseline") == {sources.grids.baseline_first.tag}
    assert _with_grid(tables["baseline"], "baseline-search") == set(sources.grids.baseline_search_tags(first=True))
    assert _with_grid(tables["maml"], sources.grids.maml.grid) == set(sources.maml_test()["run"]) \
        == set(sources.maml_tags().values())
    assert _with_grid(tables["maml"], "maml") == set(sources.grids.maml_tags(sources.grids.maml_first).values())
    dalora = _with_grid(tables["dalora"], sources.grids.dalora.grid)
    assert set(sources.dalora_test()["run"]) <= dalora
    assert dalora - set(sources.dalora_test()["run"]) == {
        sources.grids.dalora.for_run(method, 0, lr=lr, score_test=False).tag
        for lr in sources.grids.dalora.search_lrs for method in ("lora", "dalora-classifier")}  # the lr search
    for name in sources.grids.crossdomain_grids:
        assert _with_grid(tables["crossdomain"], f"crossdomain-{name}") == set(sources.crossdomain_test(name)["run"])
    ablations = tables["ablations"]
    first, fitted = _with_grid(ablations, "ablations"), _with_grid(ablations, "ablations-fitted")
    assert len(first) == 66 and not first & fitted and fitted
    reported = sources.ablations_test()
    for group, rows in ablations[ablations["run"].isin(fitted | first)].groupby("group"):
        in_fitted = rows[rows["run"].isin(fitted)]
        cells = rows.loc[rows["run"].isin(first), "cell"].nunique()
        complete = len(in_fitted[["run", "cell"]].drop_duplicates()) == 3 * cells
        # a group comes whole from the fitted grid once it has every cell's 3 seeds, else whole from the first grid
        assert set(reported.loc[reported["group"] == group, "run"]) == set(
            (in_fitted if complete else rows[rows["run"].isin(first)])["run"]), group


def test_rows_keep_their_grids_when_a_run_is_rewritten_or_reused(scratch):
    append_rows("demo", [_row("run-c")], grid="crossdomain-thermal")
    append_rows("demo", [_row("run-d")])
    append_rows("demo", [_row("run-c", 0.6)], grid="crossdomain-thermal_kall")  # rewritten by a second grid
    table = read_table("demo").set_index("run")
    assert table.loc["run-c", "grid"] == "crossdomain-thermal;crossdomain-thermal_kall"
    assert pd.isna(table.loc["run-d", "grid"])  # a demo run: empty
    path = scratch / "results" / "demo" / "run-d.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"tag": "run-d"}))
    reuse_record(path, "demo", lambda record: pytest.fail("rows present"), grid="ablations")
    assert read_table("demo").set_index("run").loc["run-d", "grid"] == "ablations"
    before = table_path("demo").read_bytes()
    records.label_runs("demo", {"run-d": "ablations"})  # already named: the file is not rewritten
    assert table_path("demo").read_bytes() == before
    # a grid defined after the run was labelled, but listed earlier in the given order, sorts before: the column
    # reads the same whichever grid was labelled first
    records.label_runs("demo", {"run-c": "crossdomain-thermal_validated"},
                       order=("crossdomain-thermal", "crossdomain-thermal_validated", "crossdomain-thermal_kall"))
    assert read_table("demo").set_index("run").loc["run-c", "grid"] == \
        "crossdomain-thermal;crossdomain-thermal_validated;crossdomain-thermal_kall"


def test_the_committed_grid_column_is_what_the_grids_give():
    from afr.experiments.grids import CommittedGrids, grid_labels

    tables = {name: pd.read_csv(COMMITTED / "tables" / f"{name}.csv") for name in
              ("baseline", "dalora", "maml", "crossdomain", "ablations")}
    labels = grid_labels(CommittedGrids(), tables)
    for name, table in tables.items():
        written = dict(zip(table["run"], table["grid"].fillna("")))
        assert written == {run: labels[name].get(run, "") for run in written}, name


@pytest.mark.parametrize("experiment", ["dalora", "maml", "crossdomain", "ablations", "baseline"])
def test_an_unwritable_results_folder_is_refused_before_any_work(tmp_path, monkeypatch, experiment):
    """(As root, permission bits do not stop writes: a results folder under a file stands for one that cannot be
    written.) The refusal comes from the first step of each recipe's run (the grid's ``run_grid``, the baseline's
    ``claim_run``), before any data is read (``data=None``), and from the CLI before the recipe is imported."""
    import importlib

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "file" / "results"))
    monkeypatch.setenv("AFR_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("AFR_DATA", str(tmp_path / "no-data"))  # reading data would fail differently
    recipe = importlib.import_module("afr.experiments." + {"dalora": "dalora_vs_lora", "maml": "maml_init"}.get(
        experiment, experiment))
    if experiment == "baseline":
        from afr.experiments.settings import BaselineSettings

        with pytest.raises(NotADirectoryError, match="results folder"):
            recipe.claim_run(BaselineSettings())
        return
    from afr.cli import GRID_EXPERIMENTS, build_parser, grid_experiment_command

    settings_class = GRID_EXPERIMENTS[experiment][1]
    with pytest.raises(NotADirectoryError, match="results folder"):
        recipe.run_grid(getattr(recipe, settings_class)(progress=False), data=None)
    with pytest.raises(NotADirectoryError, match="results folder"):
        grid_experiment_command(build_parser().parse_args([experiment]))
    assert not (tmp_path / "runs").exists()


def test_a_grid_with_an_interrupted_run_is_refused_before_any_work(scratch):
    """The third run of a grid was killed: the grid is refused at once (data not even read), naming its folder and
    both flags, instead of training the first two runs and failing at the third."""
    from afr.experiments import dalora_vs_lora as dalora, maml_init as maml

    settings = maml.MamlExperimentSettings(seeds=(0, 1), progress=False)
    interrupted = settings.for_run(settings.methods[0], 1).run_dir / "checkpoints"
    interrupted.mkdir(parents=True)
    (interrupted / "last.pt").write_bytes(b"")
    with pytest.raises(records.UnfinishedRunError, match=r"--resume.*--overwrite") as refused:
        maml.run_grid(settings, data=None)
    assert str(interrupted.parent) in str(refused.value)
    grid = dalora.DaLoraExperimentSettings(seeds=(0,), progress=False)
    killed = grid.for_run("dalora-oracle", 0, lr=grid.lr).run_dir / "checkpoints"
    killed.mkdir(parents=True)
    (killed / "checkpoint-00000010.pt").write_bytes(b"")
    with pytest.raises(records.UnfinishedRunError, match="dalora-oracle"):
        dalora.run_grid(grid, data=None)
    assert not (scratch / "results" / "tables").exists()


def test_each_committed_grid_writes_the_name_its_runs_are_labelled_with():
    from afr.experiments.grids import GRID_NAMES, CommittedGrids

    grids = CommittedGrids()
    tables = {name: pd.read_csv(COMMITTED / "tables" / f"{name}.csv") for name in
              ("baseline", "dalora", "maml", "crossdomain", "ablations")}
    by_grid = grids.runs_by_grid(tables)
    for settings in (grids.dalora, grids.maml, *grids.crossdomain_grids.values(), grids.ablations,
                     grids.ablations_inner1, grids.ablations_inner1_meta60, grids.ablations_meta60,
                     grids.ablations_rank_inner_meta60):
        assert settings.grid in GRID_NAMES and settings.grid in by_grid[settings.experiment], settings.grid


def test_a_regression_check_across_two_builds_of_the_benchmark_is_reported_not_compared(monkeypatch, tmp_path):
    """Same packs, another result: a regression (raises). Other packs (SHA-256 differ): said in the line, not
    compared (a comparison across two builds of the benchmark tests nothing)."""
    from types import SimpleNamespace

    from afr.experiments import reference

    committed = {"tag": "dalora_lora_seed0_x", "experiment": "dalora",
                 "test": {"thermal": {"auc": 0.93, "accuracy_mean": 0.81, "eer": 0.1, "sha256": "aa"}}}
    folder = tmp_path / "results" / "dalora"
    folder.mkdir(parents=True)
    (folder / "dalora_lora_seed0_x.json").write_text(json.dumps(committed))
    monkeypatch.setattr(reference, "PROJECT_ROOT", tmp_path)
    moved = json.loads(json.dumps(committed))
    moved["test"]["thermal"]["auc"] = 0.99
    with pytest.raises(AssertionError, match="auc"):
        reference.compare_grid_with_committed({0: SimpleNamespace(record=moved)})
    moved["test"]["thermal"]["sha256"] = "bb"
    line = reference.compare_grid_with_committed({0: SimpleNamespace(record=moved)})
    assert "another build of the embedded benchmark" in line and "thermal" in line and line.startswith("0 run(s)")
    assert "build-embedded --rebuild" in line and "git checkout -- results/" in line  # what to do about it


def test_cli_baseline_reuses_a_recorded_run_and_says_so(scratch, capsys):
    """`python -m afr baseline` without --overwrite on a recorded run: the record is reused (its JSON on stdout), one
    line on stderr names the parameter that retrains, nothing is trained or written (notebook 02 does the same)."""
    from afr.cli import main
    from afr.experiments.settings import BaselineSettings

    settings = BaselineSettings()
    path = records.result_path(settings.tag)
    path.parent.mkdir(parents=True)
    record = {"experiment": "baseline", "tag": settings.tag, "test": None, "train": {"history": []}}
    path.write_text(json.dumps(record))
    assert main(["baseline"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == record
    assert err.strip() == (f"reusing the recorded run {settings.tag} (seed 0): {path}; "  # outside the project: absolute
                           "set overwrite = True (CLI: --overwrite) to retrain")
    written = sorted(p.name for p in scratch.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    assert written == [path.name]  # no rows, no run folder


def test_rows_written_again_unchanged_leave_the_table_as_it_is(scratch):
    """A reused run's rows appended again (notebook 03's zero-shot rows on every Run All): the file keeps its bytes
    and its row order, instead of the run's rows moving to the end."""
    append_rows("demo", [_row("a"), _row("b", 0.7)])
    append_rows("demo", [_row("c", 0.9)])
    before = table_path("demo").read_bytes()
    append_rows("demo", [_row("a")])
    assert table_path("demo").read_bytes() == before
    append_rows("demo", [_row("a", 0.6)])  # a new value: the run's rows are replaced
    assert read_table("demo").set_index("run").loc["a", "value"] == 0.6


def test_rows_replace_only_the_rows_that_share_their_key(scratch):
    """Notebook 06's full model is a cell of every group: a grid of the rank group alone rewrites that run's rank rows
    and keeps its component rows (key run, group, cell); by default a run's new rows replace all of its rows."""
    from afr.experiments.ablations import ROW_KEY

    def cell_row(group, cell, value=0.5):
        return {**_row("full", value), "group": group, "cell": cell}

    append_rows("demo", [cell_row("component", "full"), cell_row("rank", 8)], replaces=ROW_KEY)
    append_rows("demo", [cell_row("rank", 8, 0.6)], replaces=ROW_KEY)  # the rank group run again
    table = read_table("demo").set_index("group")
    assert len(table) == 2 and table.loc["component", "value"] == 0.5 and table.loc["rank", "value"] == 0.6
    before = table_path("demo").read_bytes()
    append_rows("demo", [cell_row("rank", 8, 0.6)], replaces=ROW_KEY)  # written again unchanged: the file stays
    assert table_path("demo").read_bytes() == before
    append_rows("demo", [cell_row("rank", 8.0, 0.6)], replaces=ROW_KEY)  # 8 and 8.0: one cell, never two rows
    assert len(read_table("demo")) == 2
    append_rows("demo", [cell_row("rank", 8, 0.7)])  # the default key: the run's rows, all of them
    assert read_table("demo")[["group", "value"]].values.tolist() == [["rank", 0.7]]
