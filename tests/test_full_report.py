"""Full-profile results in the paper and in notebook 07 (issue 17): the paper's full-profile rows and notebook 05's
few-shot table come from the tables, 07 draws what a results folder of full-profile runs holds and says what it
lacks, and ``make paper`` without LaTeX says how to install it.

The slow tests make REAL full-profile records: ``python -m afr baseline --data-profile full`` twice (seeds 0, 1) on
the CASIA-layout pack of real faces and the one-layer DINOv2 of ``tests/test_full_profile.py``'s fixtures.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from afr.analysis.committed import benchmark_summary
from afr.analysis.report import AnalysisSettings, FigureReport
from afr.data.benchmarks import FULL_BENCHMARKS
from afr.experiments.health import committed_health
from afr.paper.generate import build_generated, regenerate_paper
from afr.paths import PROJECT_ROOT, MissingResourceError
from test_paper import cell, table_rows

NOT_RUN_CELL = r"\multicolumn{6}{c}{not run}"


def generate(results: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``python -m afr.paper`` (generation only, no LaTeX) on ``results`` into ``tmp_path/generated``."""
    return subprocess.run([sys.executable, "-m", "afr.paper", "--results", str(results), "--figures",
                           str(tmp_path / "figures"), "--out", str(tmp_path / "generated"), "--no-architecture"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)


def expected_cells(rows: pd.DataFrame, zero_shot: bool) -> list[str]:
    """The five benchmark cells and the average, from the table's rows with pandas alone (the zero-shot backbone's
    copies of one value over seeds are one value)."""
    cells = []
    per_seed = rows.pivot_table(index="seed", columns="domain", values="value")[list(FULL_BENCHMARKS)]
    for values in [per_seed[name] for name in FULL_BENCHMARKS] + [per_seed.mean(axis=1)]:
        if zero_shot and values.nunique() == 1:
            cells.append(cell(values.iloc[0], scale=100, decimals=2))
        else:
            cells.append(cell(values.mean(), values.std(), scale=100, decimals=2))
    return cells


# ---------------------------------------------------------------------------------------------- real full-profile runs
@pytest.fixture(scope="module")
def full_results(full_profile_data, local_hf_models, tmp_path_factory):
    """A results folder holding only two real full-profile baseline runs (DINOv2, 12 CASIA identities, seeds 0, 1;
    a learning rate at which one epoch moves LoRA away from zero-shot)."""
    root = tmp_path_factory.mktemp("full_results")
    env = {**os.environ, "AFR_RESULTS": str(root / "results"), "AFR_RUNS": str(root / "runs")}
    for seed in (0, 1):
        command = [sys.executable, "-m", "afr", "baseline", "--data-profile", "full", "--backbone", "dinov2-vits14",
                   "--weights", str(local_hf_models / "dinov2-small"), "--train-rec", str(full_profile_data / "casia"),
                   "--bins-dir", str(full_profile_data / "bins"), "--num-identities", "12", "--val-identities", "6",
                   "--rank", "2", "--epochs", "1", "--batch-size", "8", "--lr", "0.02", "--seed", str(seed),
                   "--no-progress"]
        finished = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert finished.returncode == 0, finished.stderr[-3000:]
    return root / "results"


@pytest.mark.slow
def test_the_paper_reports_the_measured_full_profile_rows_and_not_run_for_the_rest(full_results, tmp_path):
    finished = generate(full_results, tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    table = pd.read_csv(full_results / "tables" / "baseline.csv")
    test = table[(table["split"] == "test") & (table["metric"] == "accuracy") & (table["data_profile"] == "full")]
    assert sorted(test["seed"].unique()) == [0, 1] and set(test["domain"]) == set(FULL_BENCHMARKS)
    tex = (tmp_path / "generated" / "tables" / "published.tex").read_text()
    rows = {tuple(row[:3]): row[3:] for row in table_rows(tex) if row[3] == "this work"}
    assert rows[("DINOv2 ViT-S/14", "no fine-tuning (zero-shot)", "none")] == \
        ["this work", *expected_cells(test[test["method"] == "zero-shot"], zero_shot=True)]
    numbers = json.loads((tmp_path / "generated" / "numbers.json").read_text())
    # one epoch on 12 identities: runs that did not fit their training data are in no cell (afr.experiments.health)
    flagged = {tag for tag, (_, health) in committed_health(full_results).items() if health.flagged}
    if flagged:
        assert numbers["health.baseline.excluded"]["value"] == len(flagged)
        if set(test.loc[test["method"] == "lora", "run"]) <= flagged:  # every LoRA run flagged: no row of theirs
            assert ("DINOv2 ViT-S/14", "LoRA + CosFace", "CASIA-WebFace 12 ids") not in rows
        test = test[~(test["run"].isin(flagged) & (test["method"] != "zero-shot"))]
    if len(test[test["method"] == "lora"]):
        lora = expected_cells(test[test["method"] == "lora"], zero_shot=False)
        assert rows[("DINOv2 ViT-S/14", "LoRA + CosFace", "CASIA-WebFace 12 ids")] == ["this work", *lora]
    # FRoundation's recipe rows that were not run say so, and only those
    not_run = [line for line in tex.splitlines() if "this work" in line and NOT_RUN_CELL in line]
    assert len(not_run) == 4 and not any("12 ids" in line or "zero-shot" in line and "DINOv2" in line
                                         for line in not_run)
    average = test[test["method"] == "lora"].groupby("seed")["value"].mean()
    if len(average):
        assert numbers["published.full.baseline.dinov2-vits14.ids12.lora.average.accuracy.mean"]["value"] == \
            pytest.approx(average.mean())
        assert numbers["published.full.baseline.dinov2-vits14.ids12.lora.average.accuracy.n"]["value"] == \
            len(average)
    assert numbers["published.full.statement"]["value"].startswith("are the lower rows")


@pytest.mark.slow
def test_notebook_07_on_a_results_folder_of_full_profile_runs_draws_what_exists(full_results, tmp_path, monkeypatch):
    """No published adapter, no DA-LoRA gates: 07 no longer stops (MissingResourceError on the default adapters,
    KeyError 'domain' in the paper it regenerates); the figures it cannot draw say what is missing and what makes
    it; the full-profile benchmark bars are drawn from the rows; an adapter the user names must exist."""
    monkeypatch.setenv("AFR_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "out"))
    settings = AnalysisSettings(results_dir=str(full_results), progress=False, interactive=False)
    report = FigureReport(settings)
    assert settings.adapters == () and settings.adapted is None and settings.models == ("zero-shot",)
    assert "dalora-fitted/dalora-classifier_seed0, dalora-fitted/lora_seed0" in report.missing["adapters"]
    assert "make publish-adapters" in report.missing["adapters"]
    assert "notebook 03" in report.missing["adapters"]
    fig, panels = report.tsne()
    assert fig is None and panels == []
    assert report.save(fig, "tsne").startswith("tsne: not drawn: the default adapters")
    gates, confusion, (means, shares) = report.gates()
    assert gates is None and means.empty and "make dalora-results" in report.save(confusion, "confusion")
    assert report.check_against_records().startswith("no adapter to check")
    fig, summary = report.benchmarks()
    assert report.save(fig, "benchmarks").startswith("fig_benchmarks.pdf and fig_benchmarks.png written")
    table = pd.read_csv(full_results / "tables" / "baseline.csv")
    lora = table[(table["split"] == "test") & (table["metric"] == "accuracy") & (table["method"] == "lora")]
    # the bars average only the runs the health check keeps (one epoch on 12 identities may not fit)
    flagged = {tag for tag, (_, health) in committed_health(full_results).items() if health.flagged}
    lora = lora[~lora["run"].isin(flagged)]
    drawn = summary[summary["method"] == "lora"].set_index("domain")
    assert len(drawn) == lora["domain"].nunique()  # nothing drawn for a flagged run
    if len(lora):
        assert set(drawn["identities"]) == {"12"} and (drawn["seeds"] == lora["seed"].nunique()).all()
    for domain, values in lora.groupby("domain")["value"]:
        assert drawn.loc[domain, "mean"] == pytest.approx(values.mean())
    zero = summary[summary["method"] == "zero-shot"]
    assert len(zero) and set(zero["identities"]) == {"none"}  # the untrained rows are always kept
    fig, _ = report.curves()  # no maml / crossdomain table: the figure says so
    report.save(fig, "curves")
    assert "paper files regenerated" in regenerate_paper(report.results_dir, report.figures_dir, tmp_path / "paper")
    with pytest.raises(MissingResourceError, match="no committed adapter .*lora_seed0"):
        FigureReport(AnalysisSettings(results_dir=str(full_results), adapters=("lora_seed0",), progress=False))


# ---------------------------------------------------------------------------------------------- tables, quickly
def _write_rows(results: Path, experiment: str, rows: list[dict]) -> None:
    (results / "tables").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(results / "tables" / f"{experiment}.csv", index=False)


def _crossdomain_results(results: Path) -> pd.DataFrame:
    """A crossdomain table without a ``data_profile`` column (as notebook 05 writes it): full-profile runs, whose
    records say so (zero-shot, a start at k = 0, an adapted method at k = 10, 50, 100; two seeds), and one embedded
    run whose record does not name a profile."""
    rows = []
    runs = [("crossdomain_zero-shot_full", "zero-shot", [0, 1], [0], "full"),
            *((f"crossdomain_maml_seed{seed}_full", "maml", [seed], [0], "full") for seed in (0, 1)),
            *((f"crossdomain_dalora-maml_seed{seed}_full", "dalora-maml", [seed], [10, 50, 100], "full")
              for seed in (0, 1)),
            ("crossdomain_dalora-maml_seed0_embedded", "dalora-maml", [0], [1], None)]
    for index, (tag, method, seeds, shots, profile) in enumerate(runs):
        settings = {"data_profile": profile, "num_identities": 1000} if profile else {"rank": 8}
        (results / "crossdomain").mkdir(parents=True, exist_ok=True)
        (results / "crossdomain" / f"{tag}.json").write_text(json.dumps({"tag": tag, "settings": settings}))
        for seed in seeds:
            for k in shots:
                for position, pack in enumerate(("thermal", *FULL_BENCHMARKS)):
                    value = 0.5 if method == "zero-shot" else 0.55 + 0.01 * index + 0.003 * k / 10 + 0.02 * seed \
                        + 0.005 * position
                    rows.append({"experiment": "crossdomain", "run": tag, "method": method, "domain": pack,
                                 "metric": "accuracy", "seed": seed, "value": value, "split": "test",
                                 "backbone": "dinov2-vits14", "meta_steps": 60, "shots": k})
    _write_rows(results, "crossdomain", rows)
    return pd.DataFrame(rows)


def test_the_full_profile_few_shot_table_follows_the_crossdomain_rows_whose_records_say_full(tmp_path):
    results = tmp_path / "results"
    rows = _crossdomain_results(results)
    paper = build_generated(results, tmp_path / "figures", tmp_path / "generated")
    body = table_rows(paper.files["tables/full_fewshot.tex"])
    assert [row[1:3] for row in body] == [["no fine-tuning (zero-shot)", "0"], ["MAML", "0"], ["dalora-maml", "10"],
                                          ["dalora-maml", "50"], ["dalora-maml", "100"]]  # not the embedded k = 1
    full = rows[rows["run"].str.endswith("_full")]
    for row in body[1:]:
        method = "maml" if row[1] == "MAML" else row[1]
        chosen = full[(full["method"] == method) & (full["shots"] == int(row[2]))]
        thermal = chosen[chosen["domain"] == "thermal"]["value"]
        benchmarks = chosen[chosen["domain"].isin(FULL_BENCHMARKS)].groupby("seed")["value"].mean()
        assert row[3:] == [cell(thermal.mean(), thermal.std(), 100, 2), cell(benchmarks.mean(), benchmarks.std(),
                                                                               100, 2)]
    assert body[0][3:] == ["50.00", "50.00"]  # zero-shot: one value, written for each seed
    assert paper.numbers["full-fewshot.dinov2-vits14.dalora-maml.k50.thermal.accuracy.n"].value == 2
    # nothing of the five benchmarks in baseline/dalora: every full-profile row of tab:published is "not run"
    assert paper.files["tables/published.tex"].count(NOT_RUN_CELL) == 5
    assert paper.numbers["published.full.statement"].value.startswith("were not run")


def test_a_results_folder_of_only_full_profile_baseline_rows_generates_the_paper_and_07s_bars(tmp_path):
    """The KeyError 'domain' of notebook 07's last cell (the paper regenerated from a folder without the search
    runs or the other tables); rows with an empty ``data_profile`` whose runs have no record are of the embedded
    profile (never full-profile rows)."""
    results = tmp_path / "results"
    rows = [{"experiment": "baseline", "run": f"baseline_full_seed{seed}", "method": method, "domain": pack,
             "metric": "accuracy", "seed": seed, "value": 0.6 + 0.1 * (method == "lora") + 0.01 * seed, "split": "test",
             "data_profile": "full", "backbone": "clip-vitb16", "margin": "arcface", "num_identities": 50}
            for seed in (0, 1) for method in ("zero-shot", "lora") for pack in FULL_BENCHMARKS]
    _write_rows(results, "baseline", rows)
    dalora = [{**row, "run": "dalora_lora_seed0_x", "data_profile": None, "value": 0.99}
              for row in rows if row["method"] == "lora" and row["seed"] == 0]
    dalora += [{**row, "run": "dalora_lora_seed0_full", "margin": "cosface", "value": 0.8}
               for row in rows if row["method"] == "lora" and row["seed"] == 0]
    _write_rows(results, "dalora", dalora)
    assert "paper files regenerated" in regenerate_paper(results, tmp_path / "figures", tmp_path / "generated")
    body = {tuple(row[:3]): row[4:] for row in
            table_rows((tmp_path / "generated" / "tables" / "published.tex").read_text())}
    assert body[("CLIP ViT-B/16", "LoRA + ArcFace", "CASIA-WebFace 50 ids")][-1] == cell(0.705, 0.00707107, 100, 2)
    assert body[("CLIP ViT-B/16", "no fine-tuning (zero-shot)", "none")][-1] == cell(0.605, 0.00707107, 100, 2)
    # notebook 03's own LoRA run is a row of its own, never pooled with notebook 02's
    assert body[("CLIP ViT-B/16", "LoRA + CosFace (notebook 03)", "CASIA-WebFace 50 ids")] == ["80.00"] * 6
    summary = benchmark_summary(results)
    assert set(summary["identities"]) == {"none", "50"}
    assert summary["mean"].max() < 0.99  # the dalora rows without a profile are not full-profile rows


def test_make_paper_without_latex_says_how_to_install_it(tmp_path):
    """``make paper`` where latexmk is not on PATH: the generated files are written, then one message names the
    Debian packages and ``make apt``, and make fails before latexmk."""
    make, bash = shutil.which("make"), shutil.which("bash")
    if make is None or bash is None:
        pytest.fail("make and bash are needed to run the Makefile's paper target", pytrace=False)
    bin_dir = tmp_path / "bin"  # bash only: no latexmk, pdflatex or kpsewhich
    bin_dir.mkdir()
    (bin_dir / "bash").symlink_to(bash)
    (tmp_path / "results").mkdir()
    env = {**os.environ, "PATH": str(bin_dir), "AFR_RESULTS": str(tmp_path / "results"),
           "AFR_FIGURES": str(tmp_path / "figures")}
    finished = subprocess.run([make, "--no-print-directory", "paper", "STAMP=", f"PY={sys.executable}"],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode != 0
    assert "paper:" in finished.stdout and (tmp_path / "paper" / "generated" / "tables" / "published.tex").is_file()
    assert "LaTeX is missing ('command -v latexmk' finds nothing)" in finished.stderr
    assert "make apt" in finished.stderr and "apt-get install texlive-latex-base texlive-publishers latexmk" in \
        finished.stderr
    assert "LaTeX failed" not in finished.stdout + finished.stderr
