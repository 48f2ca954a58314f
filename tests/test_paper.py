"""The generated paper (afr/paper): its tables equal the committed tables, it follows the results, and the LaTeX
cannot have a hole (every \\result key and \\cite key the text uses exists). No LaTeX needed."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from afr.paper.generate import build_generated, write_generated
from afr.paper.numbers import NumberBook
from afr.paper.sources import load_sources
from afr.paths import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "results"  # the committed results (make test points AFR_RESULTS elsewhere)
PAPER = PROJECT_ROOT / "paper"
DOMAINS = ("controlled", "wild", "thermal", "lowquality")


@pytest.fixture(scope="module")
def committed():
    """The generation from the committed results, in memory."""
    return build_generated(RESULTS, PROJECT_ROOT / "figures", PAPER / "generated")


def table_rows(tex: str) -> list[list[str]]:
    """The body rows of a generated tabular, as lists of cell strings (header and \\multicolumn rows dropped)."""
    body = tex.split(r"\begin{tabular}", 1)[1].split(r"\end{tabular}", 1)[0]
    rows = [line[:-2].strip() for line in body.splitlines() if line.endswith(r"\\")]
    return [[cell.strip() for cell in row.split(" & ")] for row in rows[1:] if not row.startswith(r"\multicolumn")]


def cell(mean: float, sd: float | None = None, scale: float = 1, decimals: int = 4) -> str:
    text = f"{scale * mean:.{decimals}f}"
    return text if sd is None else rf"{text} $\pm$ {scale * sd:.{decimals}f}"


def dalora_expected(table: pd.DataFrame, metric: str) -> dict[tuple[str, str], str]:
    """Notebook 03's committed grid computed with pandas alone: the learning rate per family is the one with the
    best mean validation AUC of the search runs (seed 0, test packs not scored); 4 epochs, seeds 0-2."""
    search = table[(table["split"] == "val") & ~table["score_test"] & (table["seed"] == 0) & (table["epochs"] == 4)
                   & (table["metric"] == "auc") & table["method"].isin(["lora", "dalora-classifier"])]
    best = search.groupby(["method", "lr"])["value"].mean().groupby(level=0).idxmax()
    lr_of = {m: best["dalora-classifier" if m.startswith("dalora") else "lora"][1] for m in table["method"].unique()}
    test = table[(table["split"] == "test") & table["score_test"] & (table["epochs"] == 4) & (table["metric"] == metric)
                 & table["seed"].isin([0, 1, 2])]
    test = test[(test["lr"] == test["method"].map(lr_of)) | (test["method"] == "zero-shot")]
    expected = {}
    scale = 100 if metric == "accuracy" else 1
    decimals = 2 if metric == "accuracy" else 4
    for (method, domain), values in test.groupby(["method", "domain"])["value"]:
        if method == "zero-shot":
            assert values.nunique() == 1
            expected[method, domain] = cell(values.iloc[0], scale=scale, decimals=decimals)
        else:
            assert len(values) == 3, (method, domain)
            expected[method, domain] = cell(values.mean(), values.std(), scale, decimals)
    return expected


def test_dalora_table_equals_the_committed_csv(committed):
    table = pd.read_csv(RESULTS / "tables" / "dalora.csv")
    tex = committed.files["tables/dalora.tex"]
    rows = table_rows(tex)
    auc_rows, accuracy_rows = rows[:6], rows[6:]
    for rows_of_metric, metric in ((auc_rows, "auc"), (accuracy_rows, "accuracy")):
        expected = dalora_expected(table, metric)
        assert len(rows_of_metric) == len({m for m, _ in expected})
        for row in rows_of_metric:
            method = row[0]
            for domain, got in zip(DOMAINS, row[2:]):
                assert got == expected[method, domain], (metric, method, domain)


def test_baseline_maml_and_crossdomain_tables_equal_the_committed_csv(committed):
    baseline = pd.read_csv(RESULTS / "tables" / "baseline.csv")
    test = baseline[(baseline["split"] == "test") & (baseline["metric"] == "auc")].set_index(["method", "domain"])["value"]
    for row in table_rows(committed.files["tables/baseline.tex"]):
        domain = {"thermal (mixed)": "thermal", "low quality": "lowquality"}.get(row[0], row[0])
        assert row[3:5] == [cell(test["zero-shot", domain]), cell(test["lora", domain])]

    maml = pd.read_csv(RESULTS / "tables" / "maml.csv")
    maml = maml[(maml["meta_steps"] == 60) & (maml["metric"] == "auc") & (maml["split"] == "test")]
    stats = maml.groupby(["method", "shots", "steps"])["value"].agg(["mean", "std", "count"])
    rows = table_rows(committed.files["tables/maml.tex"])
    assert len(rows) == 12
    for row in rows:
        method, shots = row[0], int(row[1])
        for steps, got in zip((0, 1, 3, 5, 10, 25), row[2:]):
            mean, sd, count = stats.loc[(method, shots, steps)]
            assert count == 3 and got == cell(mean, sd), (method, shots, steps)

    cross = pd.read_csv(RESULTS / "tables" / "crossdomain.csv")
    cross = cross[(cross["meta_steps"] == 60) & (cross["metric"] == "auc")]
    stats = cross.groupby(["method", "shots", "domain"])["value"].agg(["mean", "std", "count"])
    checked = 0
    for row in table_rows(committed.files["tables/crossdomain.tex"]):
        method, shots = row[0].replace(r"\_", "_"), 0 if row[1] == "--" else int(row[1])
        for domain, got in zip(("thermal_und", "thermal_puj", "thermal"), row[2:5]):
            if got == "n/a":
                assert (method, shots, domain) not in stats.index
                continue
            mean, sd, count = stats.loc[(method, shots, domain)]
            expected = cell(mean) if method == "zero-shot" else cell(mean, sd)
            assert got == expected and count == 3, (method, shots, domain)
            checked += 1
    assert checked == 3 * (3 + 5 * 3 - 2)  # zero-shot, 2 starts, 5 methods x 3 k less the 2 not applicable at k=1


def test_the_paper_grids_are_fully_recorded():
    """Every run of the committed grids has test rows: the paper's run tags are the experiments' own tags."""
    sources = load_sources(RESULTS)
    checks = (("dalora", sources.dalora_tags()), ("maml", sources.maml_tags()),
              ("crossdomain", sources.crossdomain_tags()))
    for name, tags in checks:
        table = sources.tables[name]
        missing = sorted(set(tags.values()) - set(table.loc[table["split"] == "test", "run"]))
        assert not missing, (name, missing)
    assert sources.baseline_tag in set(sources.tables["baseline"]["run"])
    assert sources.dalora_learning_rates() == {"lora": 1e-4, "dalora": 3e-4}  # README "DA-LoRA": the search's choice


def _copy_results(target: Path) -> Path:
    shutil.copytree(RESULTS, target, ignore=shutil.ignore_patterns("adapters", "notebooks", "*.md"))
    return target


def test_changing_a_committed_number_changes_the_generated_tex(tmp_path, committed):
    results = _copy_results(tmp_path / "results")
    path = results / "tables" / "dalora.csv"
    table = pd.read_csv(path)
    tag = load_sources(results).dalora_tags()["dalora-classifier", 0]
    chosen = (table["run"] == tag) & (table["domain"] == "thermal") & (table["metric"] == "auc") & (table["split"] == "test")
    assert chosen.sum() == 1
    table.loc[chosen, "value"] = 0.5
    table.to_csv(path, index=False)
    paper = write_generated(results, tmp_path / "figures", tmp_path / "generated", architecture=False)
    values = table[(table["run"].str.startswith("dalora_dalora-classifier_seed")) & (table["domain"] == "thermal")
                   & (table["metric"] == "auc") & (table["split"] == "test") & table["score_test"]
                   & (table["epochs"] == 4)]["value"]
    expected = cell(values.mean())
    key = "dalora.thermal.auc.dalora-classifier.mean"
    assert committed.numbers[key].text != expected
    assert paper.numbers[key].text == expected
    assert rf"\defresult{{{key}}}{{{expected}}}" in (tmp_path / "generated" / "numbers.tex").read_text()
    assert (tmp_path / "generated" / "tables" / "dalora.tex").read_text() != committed.files["tables/dalora.tex"]
    assert json.loads((tmp_path / "generated" / "numbers.json").read_text())[key]["value"] == pytest.approx(values.mean())


def _paper_sources() -> list[Path]:
    return [path for path in PAPER.rglob("*.tex") if "generated" not in path.parts]


def _used_keys(paths) -> set[str]:
    keys = set()
    for path in paths:
        text = re.sub(r"(?<!\\)%.*", "", path.read_text())  # LaTeX comments are not text
        keys |= set(re.findall(r"\\result\{([^}]*)\}", text))
        for prefix in re.findall(r"\\resultpm\{([^}]*)\}", text):
            keys |= {f"{prefix}.mean", f"{prefix}.sd"}
    return keys


def test_every_result_key_the_paper_uses_exists(committed):
    used = _used_keys(_paper_sources())
    assert len(used) > 50
    committed_keys = set(re.findall(r"\\defresult\{([^}]*)\}", (PAPER / "generated" / "numbers.tex").read_text()))
    assert not used - committed_keys, sorted(used - committed_keys)
    assert not used - {number.key for number in committed.numbers}


def test_the_committed_generated_files_are_current(committed):
    """paper/generated/ is what the committed results give now (run `python -m afr.paper` after new results)."""
    stale = [name for name, text in committed.files.items()
             if not (PAPER / "generated" / name).is_file() or (PAPER / "generated" / name).read_text() != text]
    assert not stale, f"regenerate with python -m afr.paper: {stale}"


def test_every_citation_exists_in_refs_bib(committed):
    bib = set(re.findall(r"^@\w+\{([^,]+),", (PAPER / "refs.bib").read_text(), flags=re.M))
    texts = [re.sub(r"(?<!\\)%.*", "", path.read_text()) for path in _paper_sources()] + list(committed.files.values())
    cited = {key.strip() for text in texts for group in re.findall(r"\\cite[pt]?\{([^}]*)\}", text)
             for key in group.split(",")}
    assert len(cited) > 20
    assert not cited - bib, sorted(cited - bib)


def test_figures_tex_names_every_figure_and_a_missing_one_is_boxed(committed):
    figures = committed.files["figures.tex"]
    for name in ("architecture.pdf", "dalora_dlib-resnet29_3seed.png", "fig_tsne.pdf", "fig_saliency.pdf"):
        assert f"../figures/{name}" in figures
    style = (PAPER / "adaptface.sty").read_text()
    assert r"\IfFileExists{#1}" in style and "figure not generated" in style


def test_ablations_and_analysis_numbers_follow_their_files(tmp_path, committed):
    """Without ablations.csv every planned row says "not run"; with one, its cells are mean ± sd over seeds; notebook
    07's flat JSON numbers become keys."""
    rows = table_rows(committed.files["tables/ablations.tex"]) if not (RESULTS / "tables" / "ablations.csv").is_file() \
        else None
    if rows is not None:
        assert rows and all(row[2:] == ["not run"] * 4 for row in rows)
    results = _copy_results(tmp_path / "results")
    (results / "tables" / "ablations.csv").unlink(missing_ok=True)
    dalora = pd.read_csv(results / "tables" / "dalora.csv")
    part = dalora[(dalora["split"] == "test") & (dalora["epochs"] == 2)].copy()  # real rows relabelled as two cells
    part["experiment"], part["group"], part["cell"] = "ablations", "component", part["method"]
    part.to_csv(results / "tables" / "ablations.csv", index=False)
    (results / "analysis").mkdir(exist_ok=True)
    (results / "analysis" / "figures.json").write_text(json.dumps({"roc_auc/thermal zero_shot": 0.91234, "note": "x"}))
    paper = build_generated(results, tmp_path / "figures", tmp_path / "generated")
    got = {row[1]: row[2:] for row in table_rows(paper.files["tables/ablations.tex"])}
    auc = part[part["metric"] == "auc"]
    for method, values in auc.groupby("method"):
        thermal = values[values["domain"] == "thermal"]["value"]
        expected = cell(thermal.iloc[0]) if len(thermal) == 1 else cell(thermal.mean(), thermal.std())
        assert got[method][DOMAINS.index("thermal")] == expected
    assert paper.numbers["analysis.figures.roc-auc-thermal-zero-shot"].value == pytest.approx(0.91234)
    assert "analysis.figures.note" not in paper.numbers


def test_number_book_rejects_a_key_written_twice_and_an_unsafe_key():
    book = NumberBook()
    assert book.add("a.b", 0.91234, "auc") == "0.9123"
    book.add("a.b", 0.91234, "auc")  # the same value again is fine
    with pytest.raises(ValueError, match="written twice"):
        book.add("a.b", 0.5, "auc")
    with pytest.raises(ValueError, match="invalid result key"):
        book.add("a#b", 1, "count")
    assert book.add("p", 0.004, "p") == "0.004" and book.add("q", 0.0004, "p") == r"\ensuremath{<}\,0.001"
    assert book.add("d", -0.0096, "delta") == r"\ensuremath{-}0.0096"
    assert r"\PackageError{afr-numbers}{Unknown result key `#1'}" in book.to_tex()


def test_cli_reports_a_missing_results_folder(tmp_path, capsys):
    from afr.paper.__main__ import main

    assert main(["--results", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()
