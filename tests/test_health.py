"""Training health (afr.experiments.health): the uniform-logit reference, the fixed rules, the exclusion of flagged
runs from summaries, and what the rules say of the committed results (read from the records, not hard-coded)."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from afr.experiments.health import (CHANCE, FITTED_WELL, NOT_FITTED, committed_health, healthy_records, healthy_rows, main,
                                    run_health, uniform_margin_loss, with_health)
from afr.losses.margin import MarginLoss, create_margin
from afr.paths import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "results"


@pytest.mark.parametrize("margin", ["cosface", "arcface"])
@pytest.mark.parametrize("classes", [2, 5, 71])
def test_uniform_reference_is_the_margin_loss_of_equal_cosines(margin, classes):
    """Brute force: the project's margin loss (s = 64, default m) on cosines all equal (CosFace: any common value;
    ArcFace: the reference's choice, every cosine 0)."""
    loss = MarginLoss(create_margin(margin))
    labels = torch.arange(classes) % classes
    values = (0.0, 0.3, -0.2) if margin == "cosface" else (0.0,)
    for value in values:
        cosine = torch.full((classes, classes), value, dtype=torch.float64)
        assert uniform_margin_loss(margin, classes=classes) == pytest.approx(float(loss(cosine, labels)), rel=1e-9)
    if margin == "cosface":  # the review's number: s·m + ln(C − 1) for 71 identities
        assert uniform_margin_loss(classes=71) == pytest.approx(64 * 0.35 + math.log(70), abs=1e-6)


def record(margins=(), test=None, val=None, meta=None, n_way=5, classes=71, **extra):
    """A synthetic record: a training history with these final margins, test metrics, a meta-loss history."""
    history = [{"epoch": epoch, "train_margin": value} for epoch, value in enumerate(margins)]
    if history and val:
        history[-1].update(val)
    out = {"experiment": "x", "tag": extra.pop("tag", "x_run"), "method": "m", "seed": 0,
           "settings": {"margin": "cosface", "n_way": n_way}, **extra}
    if history:
        out["train"] = {"history": history, "num_classes": classes}
    if test is not None:
        out["test"] = test
    if meta is not None:
        out["meta_training"] = {"history": [{"step": i + 1, "meta_loss": value} for i, value in enumerate(meta)]}
    return out


def good(accuracy=0.9, auc=0.95):
    return {"accuracy_mean": accuracy, "auc": auc}


def test_rules_on_synthetic_histories():
    reference = uniform_margin_loss(classes=71)
    fitted = run_health(record([40.0, 12.0, 6.0], test={"thermal": good()}))
    assert fitted.status == "ok" and not fitted.reasons and fitted.fitted_well
    assert fitted.uniform_reference == pytest.approx(reference) and fitted.classes_source == "record train.num_classes"

    barely = run_health(record([40.0, 0.6 * reference], test={"thermal": good()}))
    assert barely.status == "ok" and barely.fitted_well is False  # the stricter level is reported, not flagged

    not_fitted = run_health(record([49.0, 31.0, 27.0, 0.97 * reference], test={"thermal": good()}))
    assert not_fitted.status == "not fitted" and not_fitted.ratio == pytest.approx(0.97)
    assert run_health(record([NOT_FITTED * reference * 0.999])).status == "ok"

    collapsed = run_health(record([6.0], test={"thermal": good(accuracy=0.5)}))
    assert collapsed.status == "collapsed" and "test/thermal accuracy 0.500" in collapsed.reason
    assert run_health(record([6.0], test={"thermal": good(auc=CHANCE)})).status == "collapsed"
    by_validation = run_health(record([6.0], val={"val/thermal/accuracy": 0.49, "val/thermal/auc": 0.9}))
    assert by_validation.status == "collapsed" and "last-epoch val/thermal/accuracy" in by_validation.reason
    curves = {"curves": {"1": {"0": good(accuracy=0.5), "5": good()}}}
    assert run_health(record(**curves)).status == "collapsed"  # MAML's curves are test results too
    # a not-fitted run that also collapsed reads "collapsed", with both reasons
    both = run_health(record([26.0], test={"thermal": good(accuracy=0.5)}))
    assert both.status == "collapsed" and len(both.reasons) == 2

    falling = [17.0, 15.0, 14.0, 12.0, 11.0, 9.0, 8.0, 6.0, 5.0, 4.0]
    assert run_health(record(meta=falling)).status == "ok"
    rising = run_health(record(meta=falling[::-1]))
    assert rising.status == "diverged" and "rose" in rising.reason
    at_uniform = run_health(record(meta=[23.7] * 4))  # too short to compare ends, but at s·m + ln(n_way − 1)
    assert at_uniform.status == "diverged" and "uniform value 23.79" in at_uniform.reason


def test_a_run_from_a_flagged_start_is_flagged_with_it():
    start = record(meta=[10, 11, 12, 13, 14, 15, 16, 17, 18, 19], tag="start_a")
    run = record(test={"thermal": good()}, start="start_a", tag="run_a")
    kept, excluded = healthy_records({("start", 0): start, ("run", 0): run}, show=False)
    assert kept == {} and excluded["run_a"].status == "diverged" and "start_a" in excluded["run_a"].reason


def test_flagged_runs_are_not_in_a_summary_mean(capsys):
    """dalora_vs_lora.grid_table (what notebook 03's summary and t-tests read) leaves a flagged run out and says so;
    healthy_rows does the same on a tidy table, keeping the untrained zero-shot rows."""
    from afr.experiments.dalora_vs_lora import grid_table, summary_table

    outcomes = {("lora", seed): SimpleNamespace(record=record([40.0, 5.0], test={"thermal": good(auc=0.9 + seed / 100)},
                                                              tag=f"lora_{seed}"))
                for seed in (0, 1)}
    outcomes["lora", 2] = SimpleNamespace(record=record([40.0, 26.0], test={"thermal": good(auc=0.6)}, tag="lora_2"))
    table = grid_table(outcomes, {"thermal": good(auc=0.8)})
    assert "lora_2: not fitted" in capsys.readouterr().out
    assert sorted(table.loc[table["method"] == "lora", "seed"].unique()) == [0, 1]
    assert set(table.loc[table["method"] == "zero-shot", "seed"]) == {0, 1, 2}
    assert summary_table(table, ["lora"], metrics=("auc",)).loc[("auc", "lora"), "thermal"] == "0.9050 ± 0.0071"

    tidy = pd.DataFrame({"run": ["a", "a", "b", "c"], "method": ["zero-shot", "lora", "lora", "lora"],
                         "value": [0.7, 0.5, 0.9, 0.8]})
    flagged = {"a": run_health(record([26.0]))}
    kept, excluded = healthy_rows(tidy, flagged=flagged, report=True)
    assert list(kept["value"]) == [0.7, 0.9, 0.8] and list(excluded) == ["a"]


def test_new_records_store_their_health(tmp_path, monkeypatch):
    from afr.experiments.records import write_record

    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    run = record([40.0, 26.0], test={"thermal": good()})
    path = write_record(tmp_path / "results" / "x" / "x_run.json", run, "x")
    stored = json.loads(path.read_text())["health"]
    assert stored["status"] == "not fitted" and run["health"] == stored
    assert with_health(run) is run  # computed once


# ------------------------------------------------------------------------------------------ the committed results
@pytest.fixture(scope="module")
def committed():
    return committed_health(RESULTS)


def test_the_committed_4_epoch_runs_of_notebook_03_did_not_fit_and_the_fitted_recipe_does(committed):
    """Every 4-epoch run of the first 03 grid (random centres, RandAugment, uncentred) ends its training with a margin
    loss near the uniform-logit value; every run of the fitted recipe (centred, class-mean, no augmentation) ends well
    under half of it."""
    paths = sorted((RESULTS / "dalora").glob("*.json"))
    runs = [json.loads(path.read_text()) for path in paths]
    runs = [run for run in runs if run["settings"]["epochs"] == 4]
    first = [run for run in runs if not run["settings"].get("centre_embeddings")]
    fitted = [run for run in runs if run["settings"].get("centre_embeddings") and not run["settings"]["augment"]]
    assert len(first) >= 15 and len(fitted) >= 2
    for run in fitted:
        _, health = committed[run["tag"]]
        assert health.status == "ok" and health.fitted_well and health.ratio < FITTED_WELL, run["tag"]
    for run in first:
        _, health = committed[run["tag"]]
        final = run["train"]["history"][-1]["train_margin"]
        assert health.final_margin == final and health.classes == 71
        assert final > NOT_FITTED * uniform_margin_loss(classes=71), run["tag"]
        assert health.status in ("not fitted", "collapsed") and "final train_margin" in health.reasons[0], run["tag"]


def test_the_committed_second_order_maml_seeds_that_diverged_are_flagged(committed):
    for path in sorted((RESULTS / "maml").glob("maml_maml_seed*.json")):
        run = json.loads(path.read_text())
        losses = [step["meta_loss"] for step in run["meta_training"]["history"]]
        rose = len(losses) >= 10 and sum(losses[-5:]) > sum(losses[:5])
        _, health = committed[run["tag"]]
        assert health.flagged == rose or health.status == "collapsed", run["tag"]
        if rose:
            assert any("meta-loss rose" in reason for reason in health.reasons), run["tag"]


def test_the_committed_oracle_thermal_collapse_is_flagged(committed):
    for path in sorted((RESULTS / "dalora").glob("dalora_dalora-oracle_*.json")):
        run = json.loads(path.read_text())
        accuracy = (run.get("test") or {}).get("thermal", {}).get("accuracy_mean")
        if accuracy is not None and accuracy <= CHANCE:
            assert committed[run["tag"]][1].status == "collapsed", run["tag"]


def test_cli_prints_every_record_and_the_counts(capsys):
    assert main(["--results", str(RESULTS)]) == 0
    out = capsys.readouterr().out
    assert "not fitted" in out and "total" in out
    assert out.count("\n") > len(list((RESULTS / "dalora").glob("*.json")))


def test_a_notebook_06_run_inherits_the_health_of_the_maml_start_its_settings_determine(committed):
    """Notebook 06's records name no ``start``: the start is the one their settings determine (start_of). Every
    committed 06 run whose start's meta-loss rose is flagged with it, and a run without a MAML start names none."""
    from afr.experiments.health import start_of

    runs = [json.loads(path.read_text()) for path in sorted((RESULTS / "ablations").glob("*.json"))]
    starts = {run["tag"]: committed[run["tag"]][1] for run in runs if run["method"] == "maml-start"}
    inherited = 0
    for run in runs:
        if run["method"] == "maml-start":
            assert start_of(run) is None
            continue
        start = start_of(run)
        assert (start is not None) == bool(run["settings"].get("maml_start")), run["tag"]
        if start is None:
            continue
        assert start in starts, (run["tag"], start)  # every run's start is recorded
        if starts[start].flagged:
            health = committed[run["tag"]][1]
            assert health.flagged and any(start in reason for reason in health.reasons), run["tag"]
            inherited += 1
    assert inherited > 0  # the committed grids hold runs from diverged starts (rank 32, the seed-1 starts)


def test_notebook_06_lists_a_flagged_start_apart_from_the_runs_left_out_of_its_means(tmp_path, monkeypatch, capsys):
    """ablations.grid_table: the diverged start is read from its record, its run is left out of the table and named
    among the excluded runs; the start itself is named under the starts (it is no row of any mean)."""
    from afr.experiments import ablations

    monkeypatch.setenv("AFR_RESULTS", str(tmp_path))
    start = record(meta=[10, 11, 12, 13, 14, 15, 16, 17, 18, 19], tag="start_a", experiment="ablations")
    (tmp_path / "ablations").mkdir()
    (tmp_path / "ablations" / "start_a.json").write_text(json.dumps(start))

    def cell(tag, start_tag):
        settings = SimpleNamespace(tag=tag, start_tag=start_tag, maml_start=start_tag is not None, seed=0)
        return SimpleNamespace(settings=settings, group="component", value=tag, method="dalora")

    cells = [cell("run_from_a", "start_a"), cell("run_plain", None)]
    outcomes = {"run_from_a": SimpleNamespace(record=record([40.0, 5.0], test={"thermal": good()}, tag="run_from_a",
                                                            start="start_a")),
                "run_plain": SimpleNamespace(record=record([40.0, 5.0], test={"thermal": good()}, tag="run_plain"))}
    table = ablations.grid_table(cells, outcomes)
    assert set(table["tag"]) == {"run_plain"}
    out = capsys.readouterr().out
    runs, starts = out.split("flagged start(s)")
    assert "1 flagged run(s) excluded from the means" in runs and "run_from_a: diverged" in runs
    assert "  start_a:" not in runs  # the start is no excluded run
    assert "start_a: diverged" in starts and "run_from_a" not in starts
