"""The generated paper (afr/paper): its tables equal the committed tables, it follows the results, and the LaTeX
cannot have a hole (every \\result key and \\cite key the text uses exists). No LaTeX needed."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from afr.experiments.health import flagged_runs
from afr.paper.generate import build_generated, regenerate_paper, write_generated
from afr.paper.numbers import NumberBook
from afr.paper.parts.ablations import GROUP_LABELS
from afr.paper.sources import load_sources
from afr.paths import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "results"  # the committed results (make test points AFR_RESULTS elsewhere)
PAPER = PROJECT_ROOT / "paper"
DOMAINS = ("controlled", "wild", "thermal", "lowquality")
#: the committed runs the training-health rules flag (afr.experiments.health): in no cell or mean of the paper
FLAGGED = set(flagged_runs(RESULTS))


def healthy(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` without the flagged runs' rows (zero-shot rows stay: they train nothing)."""
    return table[~(table["run"].isin(FLAGGED) & (table["method"] != "zero-shot"))]


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
    """Notebook 03's committed grid computed with pandas alone: the rows whose grid cell names ``dalora-fitted``; the
    learning rate per family is the one with the best mean validation AUC of the search runs (seed 0, test packs not
    scored); 4 epochs, seeds 0-4."""
    table = table[table["grid"].fillna("").astype(str).str.split(";").apply(lambda names: "dalora-fitted" in names)]
    search = table[(table["split"] == "val") & ~table["score_test"] & (table["seed"] == 0) & (table["epochs"] == 4)
                   & (table["metric"] == "auc") & table["method"].isin(["lora", "dalora-classifier"])]
    best = search.groupby(["method", "lr"])["value"].mean().groupby(level=0).idxmax()
    lr_of = {m: best["dalora-classifier" if m.startswith("dalora") else "lora"][1] for m in table["method"].unique()}
    test = table[(table["split"] == "test") & table["score_test"] & (table["epochs"] == 4) & (table["metric"] == metric)
                 & table["seed"].isin([0, 1, 2, 3, 4])]
    test = test[(test["lr"] == test["method"].map(lr_of)) | (test["method"] == "zero-shot")]
    kept = healthy(test)
    expected = {(method, domain): "flagged" for method, domain in zip(test["method"], test["domain"])}
    test = kept
    scale = 100 if metric == "accuracy" else 1
    decimals = 2 if metric == "accuracy" else 4
    for (method, domain), values in test.groupby(["method", "domain"])["value"]:
        if method == "zero-shot":
            assert values.nunique() == 1
            expected[method, domain] = cell(values.iloc[0], scale=scale, decimals=decimals)
        else:
            expected[method, domain] = cell(values.mean(), values.std(), scale, decimals) if len(values) > 1 \
                else cell(values.mean(), scale=scale, decimals=decimals)
    return expected


def test_dalora_table_equals_the_committed_csv(committed):
    table = pd.read_csv(RESULTS / "tables" / "dalora.csv")
    tex = committed.files["tables/dalora.tex"]
    fitted = table[table["grid"].fillna("").astype(str).str.contains("dalora-fitted") & (table["method"] != "zero-shot")]
    seeds = sorted(fitted["seed"].unique())
    assert f"over seeds {seeds[0]}--{seeds[-1]}" in tex and seeds == list(range(len(seeds)))  # the caption's seeds
    assert f"{len(seeds) - 1} degrees of freedom" in committed.files["tables/dalora_tests.tex"]
    rows = table_rows(tex)
    auc_rows, accuracy_rows = rows[:len(rows) // 2], rows[len(rows) // 2:]
    for rows_of_metric, metric in ((auc_rows, "auc"), (accuracy_rows, "accuracy")):
        expected = dalora_expected(table, metric)
        assert len(rows_of_metric) == len({m for m, _ in expected})
        for row in rows_of_metric:
            method = row[0]
            for domain, got in zip(DOMAINS, row[2:]):
                assert got == expected[method, domain], (metric, method, domain)


def test_baseline_and_maml_tables_equal_the_committed_csv(committed):
    baseline = pd.read_csv(RESULTS / "tables" / "baseline.csv")
    # the reported run: the grid cell names baseline-fitted (the first run, grid baseline, did not fit)
    baseline = baseline[baseline["grid"].fillna("").str.split(";").apply(lambda names: "baseline-fitted" in names)]
    test = baseline[(baseline["split"] == "test") & (baseline["metric"] == "auc")]
    assert test["run"].nunique() == 1
    lora_flagged = set(test.loc[test["method"] == "lora", "run"]) <= FLAGGED
    test = test.set_index(["method", "domain"])["value"]
    for row in table_rows(committed.files["tables/baseline.tex"]):
        domain = {"thermal (mixed)": "thermal", "low quality": "lowquality"}.get(row[0], row[0])
        assert row[3:5] == [cell(test["zero-shot", domain]), "flagged" if lora_flagged else cell(test["lora", domain])]

    # notebook 04: validation AUC per step count, the chosen step counts by seed, the test AUC scored once at them;
    # healthy runs of the committed grid only
    maml = pd.read_csv(RESULTS / "tables" / "maml.csv")
    maml = healthy(maml[(maml["grid"] == "maml-inner1") & (maml["metric"] == "auc")])
    validation = maml[maml["split"] == "val"].groupby(["method", "shots", "steps"])["value"].agg(["mean", "std", "count"])
    test_rows = maml[maml["split"] == "test"]
    rows = table_rows(committed.files["tables/maml.tex"])
    assert len(rows) == 12
    for row in rows:
        method, shots = row[0], int(row[1])
        for steps, got in zip((0, 1, 3, 5, 10, 25), row[2:8]):
            mean, sd, count = validation.loc[(method, shots, steps)]
            if method == "random" and steps == 0:  # B = 0: the zero-shot backbone for every seed, shown once
                assert sd == 0 and got == cell(mean), (method, shots)
                continue
            assert got == (cell(mean, sd) if count > 1 else cell(mean)), (method, shots, steps)
        scored = test_rows[(test_rows["method"] == method) & (test_rows["shots"] == shots)].sort_values("seed")
        assert row[8] == ", ".join(str(int(n)) for n in scored["steps"]), (method, shots)
        values = scored["value"]
        assert row[9] == (cell(values.mean(), values.std()) if len(values) > 1 else cell(values.mean())), (method, shots)


# ------------------------------------------------------------------------------------------ notebook 05
#: the start each adapted row of notebook 05 begins from (its forgetting is measured against it)
START_OF = {"lora": "pooled-start", "dalora": "pooled-start"}
THERMAL_METHODS = ("lora", "dalora", "dalora+maml", "dalora+maml+contrastive", "dalora+maml+contrastive+semi")


def crossdomain_runs(direction: str, shots: list, source: tuple[str, ...], validated: bool = False,
                     adapt_lr: float = 1e-3) -> set[str]:
    """Run tags of one committed grid of notebook 05, read from its records (not through afr.paper): the zero-shot
    run, the starts meta-trained 60 outer steps on ``source``, and the runs adapted along ``direction`` with these
    ``shots`` (-1: k = all) at 60 outer steps over seeds 0-2, their step count chosen on validation or not
    (``validated``), at stage-2 learning rate ``adapt_lr``. Records older than the directions name none: they are visible -> thermal, from ORL + Yale + low
    quality."""
    tags = set()
    for path in (RESULTS / "crossdomain").glob("*.json"):
        record = json.loads(path.read_text())
        if record["method"] == "zero-shot":
            tags.add(record["tag"])
        elif record["settings"]["meta_steps"] != 60:
            continue
        elif record["method"].endswith("-start"):
            if tuple(record.get("source") or ("orl", "yale", "lowquality")) == source:
                tags.add(record["tag"])
        elif ((record.get("direction") or "visible->thermal") == direction and record["shots"] == shots
              and record["seed"] in (0, 1, 2)  # the grids' seeds (a grid may run in several processes, seed by seed)
              and bool(record["settings"].get("choose_steps_on_validation")) == validated
              and record["settings"]["adapt_lr"] == adapt_lr):
            tags.add(record["tag"])
    return tags


def crossdomain_frame(*grids: str) -> pd.DataFrame:
    """The test rows of ``results/tables/crossdomain.csv`` of the runs of ``grids``, filtered by run tag."""
    table = pd.read_csv(RESULTS / "tables" / "crossdomain.csv")
    return healthy(table[table["run"].isin(grid_runs(*grids)) & (table["split"] == "test")])


#: each grid of ``make crossdomain-results``: (direction, shots of its adapted runs, source of its starts)
GRIDS = {"thermal": ("visible->thermal", [1, 2, 4], ("orl", "yale", "lowquality")),
         "thermal_kall": ("visible->thermal", [-1], ("orl", "yale", "lowquality")),
         "thermal_validated": ("visible->thermal", [1, 2, 4], ("orl", "yale", "lowquality"), True),
         "thermal_kall_validated": ("visible->thermal", [-1], ("orl", "yale", "lowquality"), True),
         "thermal_lr3e4_validated": ("visible->thermal", [1, 2, 4], ("orl", "yale", "lowquality"), True, 3e-4),
         "thermal_kall_lr3e4_validated": ("visible->thermal", [-1], ("orl", "yale", "lowquality"), True, 3e-4),
         "lowquality": ("visible->lowquality", [1, 4], ("orl", "yale")),
         "lowquality_validated": ("visible->lowquality", [1, 4], ("orl", "yale"), True),
         "lowquality_lr3e4_validated": ("visible->lowquality", [1, 4], ("orl", "yale"), True, 3e-4),
         "outdoor": ("indoor->outdoor", [], ("orl", "yale"))}


def grid_runs(*names: str) -> set[str]:
    return set().union(*(crossdomain_runs(*GRIDS[name]) for name in names))


def per_seed(frame: pd.DataFrame, method: str, shots: int, domain: str, metric: str) -> pd.Series:
    chosen = frame[(frame["method"] == method) & (frame["shots"] == shots) & (frame["domain"] == domain)
                   & (frame["metric"] == metric)]
    return chosen.set_index("seed")["value"].sort_index()


def expected_cell(values: pd.Series, kind: str, zero_shot: bool = False) -> str:
    """A table cell as the paper writes it: mean (± sd with two seeds or more) over seeds; ``not run`` if none.
    Zero-shot's value, repeated per seed, is shown once."""
    if not len(values):
        return "not run"
    if zero_shot:
        assert values.nunique() == 1
        values = values.iloc[:1]
    scale, decimals = (100, 2) if kind in ("accuracy", "points") else (1, 4)
    mean = f"{scale * values.mean():{'+' if kind == 'points' else ''}.{decimals}f}".replace("-", r"\ensuremath{-}", 1)
    return mean if len(values) == 1 else rf"{mean} $\pm$ {scale * values.std():.{decimals}f}"


def forgetting(frame: pd.DataFrame, method: str, shots: int, pack: str) -> pd.Series:
    """Source-pack accuracy after adapting minus the start's, per seed (notebook 05's forgetting)."""
    start = START_OF.get(method, "maml-start")
    after, before = per_seed(frame, method, shots, pack, "accuracy"), per_seed(frame, start, 0, pack, "accuracy")
    return (after - before).dropna()


@pytest.mark.parametrize("grids, file", [
    (("thermal_lr3e4_validated", "thermal_kall_lr3e4_validated"), "tables/crossdomain.tex"),
    (("thermal_validated", "thermal_kall_validated"), "supplementary/crossdomain_lr1e3.tex"),
    (("thermal", "thermal_kall"), "supplementary/crossdomain_fixed10.tex")])
def test_crossdomain_table_with_k_all_equals_the_committed_csv(committed, grids, file):
    """Visible -> thermal, k = 1, 2, 4 and k = all (its own grid, the same starts): every AUC and forgetting cell is
    the mean ± sd over seeds of the committed rows of those runs; k = all rows are labelled "all". The paper's table
    holds the grids whose step count was chosen on validation at the rate 3e-4, the supplement the same grids at 1e-3
    and the first ones (10 fixed steps)."""
    frame = crossdomain_frame(*grids)
    rows = table_rows(committed.files[file])
    assert [row[1] for row in rows] == ["--", "0", "0", *(k for k in ("1", "2", "4", "all") for _ in THERMAL_METHODS)]
    not_applicable = {("dalora+maml+contrastive", "1"), ("dalora+maml+contrastive+semi", "1"),
                      ("dalora+maml+contrastive+semi", "all")}
    checked = 0
    for row in rows:
        method, label = row[0], row[1]
        shots = {"--": 0, "all": -1}.get(label, None)
        shots = int(label) if shots is None else shots
        if (method, label) in not_applicable:
            assert row[2:] == ["n/a"] * 6 and not len(per_seed(frame, method, shots, "thermal", "auc"))
            continue
        for domain, got in zip(("thermal_und", "thermal_puj", "thermal"), row[2:5]):
            values = per_seed(frame, method, shots, domain, "auc")  # healthy runs: 3 seeds less the flagged
            assert 1 <= len(values) <= 3 and got == expected_cell(values, "auc", method == "zero-shot"), (method, label)
            checked += 1
        for pack, got in zip(("controlled", "wild", "lowquality"), row[5:]):
            expected = "--" if shots == 0 else expected_cell(forgetting(frame, method, shots, pack), "points")
            assert got == expected, (method, label, pack)
    assert checked == 3 * (3 + 5 * 4 - 3)  # zero-shot, 2 starts, 5 methods x 4 k less the 3 not applicable


@pytest.mark.parametrize("grids, file, count", [
    (("thermal_lr3e4_validated", "thermal_kall_lr3e4_validated"), "crossdomain_chosen", 17),  # 5 rows x k = 1, 2, 4
    # less the 2 contrastive rows at k = 1; 4 at k = all
    (("lowquality_lr3e4_validated",), "crossdomain_lowquality_chosen", 6)])  # 3 rows x k = 1, 4
def test_the_chosen_step_counts_of_the_supplement_are_the_records(committed, grids, file, count):
    """Notebook 05's reported grids chose stage 2's step count on validation: the supplement lists, per (row, k), each
    seed's choice as its record holds it, read here from the records of those grids."""
    chosen: dict[tuple[str, str], dict[int, int]] = {}
    for tag in grid_runs(*grids) - FLAGGED:
        record = json.loads((RESULTS / "crossdomain" / f"{tag}.json").read_text())
        for key, adaptation in (record.get("adaptation") or {}).items():
            chosen.setdefault((record["method"], key[1:]), {})[record["seed"]] = adaptation["chosen_steps"]
    rows = table_rows(committed.files[f"supplementary/{file}.tex"])
    assert len(rows) == len(chosen) == count
    for row in rows:
        by_seed = chosen[row[0], row[1]]
        assert row[2] == " ".join(str(by_seed[seed]) for seed in sorted(by_seed)), row


@pytest.mark.parametrize("grid, file", [("lowquality_lr3e4_validated", "tables/crossdomain_lowquality.tex"),
                                        ("lowquality_validated", "supplementary/crossdomain_lowquality_lr1e3.tex"),
                                        ("lowquality", "supplementary/crossdomain_lowquality_fixed10.tex")])
def test_other_shifts_tables_equal_the_committed_csv(committed, grid, file):
    """Visible -> low quality (k = 1, 4; the paper's table the grid whose step count was chosen on validation at 3e-4,
    the supplement the same grid at 1e-3 and the first one) and indoor -> outdoor (zero-shot against the starts trained on ORL + Yale only): every
    cell from the committed rows of those runs (a run not recorded yet reads "not run")."""
    frame = crossdomain_frame(grid)
    rows = table_rows(committed.files[file])
    methods = ("lora", "dalora", "dalora+maml")
    assert [(row[0], row[1]) for row in rows] == [("zero-shot", "--"), ("pooled-start", "0"), ("maml-start", "0"),
                                                  *((m, k) for k in ("1", "4") for m in methods)]
    starts = frame[frame["method"].str.endswith("-start")]
    assert len(starts) and set(starts["source"]) == {"orl+yale"}  # not the thermal grids' starts
    for row in rows:
        method, shots = row[0], 0 if row[1] == "--" else int(row[1])
        zero = method == "zero-shot"
        assert row[2] == expected_cell(per_seed(frame, method, shots, "lowquality", "auc"), "auc", zero), row
        assert row[3] == expected_cell(per_seed(frame, method, shots, "lowquality", "accuracy"), "accuracy", zero), row
        for pack, got in zip(("controlled", "wild"), row[4:]):
            expected = "--" if shots == 0 else expected_cell(forgetting(frame, method, shots, pack), "points")
            if method == "dalora" and expected != "not run":  # the visible expert is the start's: no forgetting
                assert set(forgetting(frame, method, shots, pack)) == {0.0}
            assert got == expected, (method, shots, pack)

    frame = crossdomain_frame("outdoor")
    rows = table_rows(committed.files["tables/crossdomain_outdoor.tex"])
    assert [row[0] for row in rows] == ["zero-shot", "pooled-start", "maml-start"]
    for row in rows:
        for (pack, metric), got in zip((("wild", "auc"), ("wild", "accuracy"), ("controlled", "auc"),
                                        ("controlled", "accuracy")), row[1:]):
            values = per_seed(frame, row[0], 0, pack, metric)
            assert got == expected_cell(values, metric, row[0] == "zero-shot"), (row[0], pack, metric)


def test_crossdomain_numbers_and_per_seed_supplement_follow_the_committed_csv(committed):
    """The keys the text quotes for the new grids, and one supplementary line per (row, k, seed) of each grid."""
    thermal = crossdomain_frame("thermal_lr3e4_validated", "thermal_kall_lr3e4_validated")
    numbers = committed.numbers
    lora_all, lora_4 = per_seed(thermal, "lora", -1, "thermal", "auc"), per_seed(thermal, "lora", 4, "thermal", "auc")
    assert numbers["crossdomain.thermal.auc.lora.kall.mean"].value == pytest.approx(lora_all.mean())
    assert numbers["crossdomain.ttest.thermal.auc.lora.kall.vs.k4.diff"].value == pytest.approx(
        (lora_all - lora_4).mean())
    from scipy.stats import ttest_rel

    assert numbers["crossdomain.ttest.thermal.auc.lora.kall.vs.k4.p"].value == pytest.approx(
        ttest_rel(lora_all, lora_4).pvalue)
    zero = per_seed(thermal, "zero-shot", 0, "thermal", "auc")
    assert numbers["crossdomain.ttest.thermal.auc.lora.vs.zero-shot.kall.diff"].value == pytest.approx(
        (lora_all - zero).mean())

    for name, frame, packs in (("crossdomain_seeds", thermal, [(p, "auc") for p in (
            "thermal_und", "thermal_puj", "thermal", "controlled", "wild", "lowquality")]),
            ("crossdomain_lowquality_seeds", crossdomain_frame("lowquality_lr3e4_validated"),
             [(p, m) for p in ("lowquality", "controlled", "wild") for m in ("auc", "accuracy")]),
            ("crossdomain_outdoor_seeds", crossdomain_frame("outdoor"),
             [(p, m) for p in ("wild", "controlled") for m in ("auc", "accuracy")])):
        lines = [row for row in table_rows(committed.files[f"supplementary/{name}.tex"]) if "--" not in row[:3]]
        with_k = name != "crossdomain_outdoor_seeds"
        expected = frame.set_index(["method", "shots", "seed", "domain", "metric"])["value"]
        assert len(lines) == len(frame.groupby(["method", "shots", "seed"])), name
        for line in lines:
            method, shots = line[0], ({"all": -1}.get(line[1]) or int(line[1])) if with_k else 0
            seed, cells = int(line[1 + with_k]), line[2 + with_k:]
            for (pack, metric), got in zip(packs, cells):
                value = expected[method, shots, seed, pack, metric]
                assert got == (f"{100 * value:.2f}" if metric == "accuracy" else f"{value:.4f}"), (name, line)
        if name == "crossdomain_seeds":
            # 4 methods at k = all x 3 seeds, less the flagged runs
            assert sum(line[1] == "all" for line in lines) == len(frame[frame["shots"] == -1].groupby(["method", "seed"]))
            assert 4 * 3 - len(FLAGGED) <= sum(line[1] == "all" for line in lines) <= 4 * 3


def test_the_paper_grids_are_the_makefiles():
    """CommittedGrids holds the settings the Makefile's committed grids run: the notebook's defaults with the YAML of
    ``MAML_RESULTS``, ``DALORA_RESULTS`` and each ``CROSSDOMAIN_<name>`` over them."""
    import yaml

    from afr.experiments.ablations import AblationSettings
    from afr.experiments.crossdomain import CrossDomainSettings
    from afr.experiments.dalora_vs_lora import DaLoraExperimentSettings
    from afr.experiments.grids import CommittedGrids
    from afr.experiments.maml_init import MamlExperimentSettings

    text = (PROJECT_ROOT / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+) := (.*)$", text, flags=re.M))

    def expand(value: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda match: expand(variables[match.group(1)]), value)

    grids = CommittedGrids()
    names = expand(variables["CROSSDOMAIN_GRIDS"]).split()
    assert names == list(grids.crossdomain_grids)
    for name in names:
        values = yaml.safe_load(expand(variables[f"CROSSDOMAIN_{name}"]))
        assert grids.crossdomain_grids[name] == CrossDomainSettings(**values), name
    assert grids.maml_clipped == MamlExperimentSettings(**yaml.safe_load(variables["MAML_RESULTS"]))
    assert grids.maml == MamlExperimentSettings(**{**yaml.safe_load(variables["MAML_RESULTS"]),
                                                   **yaml.safe_load(variables["MAML_INNER1"])})
    assert grids.dalora == DaLoraExperimentSettings(**yaml.safe_load(variables["DALORA_RESULTS"]))
    assert grids.ablations == AblationSettings(**yaml.safe_load(variables["ABLATIONS_RESULTS"]))
    assert grids.ablations_inner1 == AblationSettings(**{**yaml.safe_load(variables["ABLATIONS_RESULTS"]),
                                                         **yaml.safe_load(variables["ABLATIONS_INNER1"])})
    assert grids.ablations_inner1_meta60 == AblationSettings(**{
        **yaml.safe_load(variables["ABLATIONS_RESULTS"]), **yaml.safe_load(variables["ABLATIONS_INNER1_META60"])})
    assert grids.ablations_meta60 == AblationSettings(**{
        **yaml.safe_load(variables["ABLATIONS_RESULTS"]), **yaml.safe_load(variables["ABLATIONS_META60"])})
    assert grids.ablations_rank_inner_meta60 == AblationSettings(**{
        **yaml.safe_load(variables["ABLATIONS_RESULTS"]), **yaml.safe_load(variables["ABLATIONS_RANK_INNER_META60"])})


def test_the_paper_grids_are_fully_recorded():
    """Every run of the committed grids has test rows: the paper's run tags are the experiments' own tags."""
    sources = load_sources(RESULTS)
    checks = [("dalora", sources.dalora_tags()), ("maml", sources.maml_tags()),
              *(("crossdomain", sources.crossdomain_tags(grid)) for grid in sources.grids.crossdomain_grids)]
    for name, tags in checks:
        table = sources.tables[name]
        # a run whose record skipped every k (k = all leaves the semi-supervised row no unlabelled image) has no rows
        expected = {tag for tag in tags.values() if (record := sources.record(name, tag)) is None
                    or not record.get("skipped")
                    or set(record["skipped"]) != {"all" if k == -1 else str(k) for k in record["shots"]}}
        missing = sorted(expected - set(table.loc[table["split"] == "test", "run"]))
        assert not missing, (name, missing)
    for grid in sources.grids.crossdomain_grids:  # the paper's tags are the records' own
        assert set(sources.crossdomain_tags(grid).values()) == grid_runs(grid), grid
    assert sources.baseline_tag in set(sources.tables["baseline"]["run"])
    assert sources.dalora_learning_rates() == {"lora": 3e-4, "dalora": 3e-4}  # README "DA-LoRA": the search's choice


def _copy_results(target: Path) -> Path:
    shutil.copytree(RESULTS, target, ignore=shutil.ignore_patterns("adapters", "notebooks", "*.md"))
    return target


def test_changing_a_committed_number_changes_the_generated_tex(tmp_path, committed):
    """A committed number of a healthy run (first-order MAML, seed 0: notebook 04) moves the generated mean."""
    results = _copy_results(tmp_path / "results")
    path = results / "tables" / "maml.csv"
    table = pd.read_csv(path)
    tag = load_sources(results).maml_tags()["fomaml", 0]
    assert tag not in FLAGGED
    # the test AUC at k = 1, scored once per run at its chosen step count
    point = (table["domain"] == "thermal_und") & (table["metric"] == "auc") & (table["split"] == "test") \
        & (table["shots"] == 1)
    chosen = (table["run"] == tag) & point
    assert chosen.sum() == 1
    table.loc[chosen, "value"] = 0.5
    table.to_csv(path, index=False)
    paper = write_generated(results, tmp_path / "figures", tmp_path / "generated", architecture=False)
    values = table[table["run"].isin(set(load_sources(results).maml_tags().values())) & point
                   & (table["method"] == "fomaml")]["value"]
    assert len(values) == 3
    expected = cell(values.mean())
    key = "maml.thermal-und.auc.fomaml.k1.mean"
    assert committed.numbers[key].text != expected
    assert paper.numbers[key].text == expected
    assert rf"\defresult{{{key}}}{{{expected}}}" in (tmp_path / "generated" / "numbers.tex").read_text()
    assert (tmp_path / "generated" / "tables" / "maml.tex").read_text() != committed.files["tables/maml.tex"]
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


def test_regenerating_from_a_scratch_run_leaves_the_project_paper_alone(tmp_path, monkeypatch, committed):
    """Notebook 07 under make test (results written to a scratch folder) puts the paper's files beside that folder's
    results, never into paper/generated; the files are the committed generation."""
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    before = {path: path.stat().st_mtime_ns for path in (PROJECT_ROOT / "paper" / "generated").rglob("*.tex")}
    message = regenerate_paper(PROJECT_ROOT / "results", tmp_path / "figures")
    assert message == f"paper files regenerated into {tmp_path / 'results' / 'paper_generated'}"
    numbers = (tmp_path / "results" / "paper_generated" / "numbers.tex").read_text()
    assert numbers == committed.files["numbers.tex"]
    assert before == {path: path.stat().st_mtime_ns for path in (PROJECT_ROOT / "paper" / "generated").rglob("*.tex")}


def test_the_analysis_package_does_not_import_the_paper():
    import subprocess
    import sys

    code = "import sys, afr.analysis.report; print(sorted(m for m in sys.modules if m.startswith('afr.paper')))"
    finished = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True)
    assert finished.stdout.strip() == "[]"


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
    for name in ("architecture.pdf", "dalora_dlib-resnet29_5seed.png", "fig_tsne.pdf", "fig_saliency.pdf"):
        assert f"../figures/{name}" in figures
    style = (PAPER / "adaptface.sty").read_text()
    assert r"\IfFileExists{#1}" in style and "figure not generated" in style


def test_ablations_and_analysis_numbers_follow_their_files(tmp_path, committed):
    """Without ablations.csv every planned row says "not run"; with the committed one, its cells are mean ± sd over
    the grid's seeds — the demo's run with a 5-step MAML start is not a fourth seed; notebook 07's flat JSON numbers
    become keys."""
    results = _copy_results(tmp_path / "results")
    (results / "tables" / "ablations.csv").unlink()
    planned = build_generated(results, tmp_path / "figures", tmp_path / "planned")
    rows = table_rows(planned.files["tables/ablations.tex"])
    assert rows and all(row[2:] == ["not run"] * 4 for row in rows)

    table = pd.read_csv(RESULTS / "tables" / "ablations.csv")
    grids = table["grid"].fillna("").astype(str).str.split(";")
    first, fitted = (table[grids.apply(lambda names: name in names)] for name in ("ablations", "ablations-fitted"))
    assert len(first) + len(fitted) < len(table)  # the demo's runs are in the table, and must be left out
    # a group from the fitted grid once it has every run (3 seeds), else from the first grid, never mixed
    fitted_groups = {group for group, rows in fitted.groupby("group") if rows["seed"].nunique() == 3 and len(
        rows[["run", "cell"]].drop_duplicates()) == 3 * first[first["group"] == group]["cell"].nunique()}
    assert "component" in fitted_groups  # the fitted grid's component table is committed
    grid = pd.concat([fitted[fitted["group"].isin(fitted_groups)], first[~first["group"].isin(fitted_groups)]])
    rows = table_rows(committed.files["tables/ablations.tex"])
    got = {(row[0], row[2].split(" (")[0]): row[3:] for row in rows}  # a cell's label may add "(n/3 seeds)"
    recipes = {(row[0], row[2].split(" (")[0]): row[1] for row in rows}
    auc = grid[(grid["metric"] == "auc") & (grid["split"] == "test") & (grid["domain"] == "thermal")]
    checked = 0
    for (group, value), values in auc.groupby(["group", "cell"]):
        matches = [cells for (label, name), cells in got.items() if name == str(value).replace("_", r"\_")]
        assert len(values) == 3 and matches, (group, value)
        assert recipes[GROUP_LABELS[group], str(value).replace("_", r"\_")] == (
            "fitted, 4 ep." if group in fitted_groups else "first, 1 ep."), (group, value)
        values = healthy(values)  # a flagged run is in no cell; a cell without a healthy run reads "flagged"
        expected = "flagged" if not len(values) else cell(values["value"].mean()) if len(values) == 1 else \
            cell(values["value"].mean(), values["value"].std())
        assert expected in [cells[DOMAINS.index("thermal")] for cells in matches], (group, value)
        checked += 1
    assert checked >= 20

    (results / "analysis").mkdir(exist_ok=True)
    (results / "analysis" / "figures.json").write_text(json.dumps({
        "roc_auc/thermal zero_shot": 0.91234, "note": "x", "seeds.lora.cosine.mean": 0.48437,
        "seeds.lora.cosine.sd": 0.009017}))
    paper = build_generated(results, tmp_path / "figures", tmp_path / "generated")
    assert paper.numbers["analysis.figures.roc-auc-thermal-zero-shot"].value == pytest.approx(0.91234)
    # a spread over seeds is written to the decimals of the mean it goes with, not to 4 significant digits
    assert paper.numbers["analysis.figures.seeds-lora-cosine-mean"].text == "0.4844"
    assert paper.numbers["analysis.figures.seeds-lora-cosine-sd"].text == "0.0090"
    assert "analysis.figures.note" not in paper.numbers


def test_an_ablation_group_is_reported_from_the_fitted_grid_only_once_every_run_of_it_is_recorded():
    """Notebook 06's groups: the first grid's runs until the fitted grid has recorded a whole group, never a mix."""
    from afr.experiments.grids import CommittedGrids
    from afr.experiments.settings.ablations import GROUPS, grid_cells

    grids = CommittedGrids()

    def tags(grid, group):
        return sorted({cell.settings.tag for cell in grid_cells(grid) if cell.group == group})

    first = {group: tags(grids.ablations_first, group) for group in GROUPS}
    fitted = {group: tags(grids.ablations, group) for group in GROUPS}
    assert all(first[group] and fitted[group] and not set(first[group]) & set(fitted[group]) for group in GROUPS)
    recorded = [tag for group in GROUPS for tag in first[group]] + fitted["component"][:-1]
    reported = grids.reported_ablation_runs(pd.DataFrame({"run": recorded}))
    assert {group: sorted(runs) for group, runs in reported.items()} == first  # one component run missing
    assert grids.fitted_ablation_groups(pd.DataFrame({"run": recorded})) == ()
    recorded.append(fitted["component"][-1])
    reported = grids.reported_ablation_runs(pd.DataFrame({"run": recorded}))
    assert sorted(reported["component"]) == fitted["component"]
    assert all(sorted(reported[group]) == first[group] for group in GROUPS if group != "component")
    assert grids.fitted_ablation_groups(pd.DataFrame({"run": recorded})) == ("component",)


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


def test_an_ablation_cell_whose_runs_were_partly_flagged_says_how_many_seeds_its_mean_has():
    """r = 32 of the fitted grid: 2 of its 3 runs collapsed, so its mean is one seed's, and the cell says (1/3 seeds)."""
    from afr.paper.parts.ablations import _measured_table

    rows = pd.DataFrame([{"metric": "auc", "group": "rank", "cell": cell, "domain": "thermal", "seed": seed,
                          "value": 0.94 + 0.001 * seed} for cell in ("8", "32") for seed in (0, 1, 2)])
    kept = rows[~((rows["cell"] == "32") & (rows["seed"] > 0))]
    table = _measured_table(NumberBook(), rows, kept, ("rank",))
    assert [row[2] for row in table.rows] == ["8", "32 (1/3 seeds)"]
    assert table.rows[1][3] == "0.9400" and "$\\pm$" in table.rows[0][3]
    assert "($n$/$N$ seeds)" in table.caption
    assert "seeds)" not in _measured_table(NumberBook(), rows, rows, ("rank",)).caption


@pytest.mark.parametrize("grid, name", [("ablations_inner1", "inner1"), ("ablations_inner1_meta60", "inner1-meta60")])
def test_one_inner_step_is_compared_with_the_matched_lora_paired_by_healthy_seed(grid, name):
    """ablations.<name>.*: notebook 06's one-inner-step DA-LoRA (MAML starts of 20 outer steps, then of 60) against
    notebook 03's parameter-matched LoRA, paired by seed over the runs both keep; recomputed here from the records
    (test section), not from the tables."""
    from scipy.stats import ttest_rel

    from afr.experiments.settings.ablations import grid_cells
    from afr.paper.parts.ablations import inner_step_comparison

    sources = load_sources(RESULTS)
    book = NumberBook()
    inner_step_comparison(sources, book, getattr(sources.grids, grid), name)
    flagged = set(flagged_runs(RESULTS))
    one = {cell.settings.seed: cell.settings.tag for cell in grid_cells(getattr(sources.grids, grid))
           if cell.value == 1}
    matched = {seed: tag for (method, seed), tag in sources.dalora_tags().items() if method == "lora-matched"}

    def auc(folder, tag):
        path = RESULTS / folder / f"{tag}.json"
        return json.loads(path.read_text())["test"]["thermal"]["auc"] if path.is_file() and tag not in flagged else None

    pairs = [(auc("ablations", one[seed]), auc("dalora", matched[seed])) for seed in sorted(one) if seed in matched]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    prefix = f"ablations.{name}.ttest.thermal.auc.inner-steps-1.vs.lora-matched"
    assert book[f"{prefix}.n"].value == len(pairs) >= 3
    assert book[f"ablations.{name}.healthy.inner-steps-1"].value == len([seed for seed in one if auc(
        "ablations", one[seed]) is not None])
    assert book[f"{prefix}.diff"].value == pytest.approx(sum(a - b for a, b in pairs) / len(pairs))
    assert book[f"{prefix}.p"].value == pytest.approx(ttest_rel(*zip(*pairs)).pvalue)


def test_the_learning_rate_numbers_are_the_check_summaries_and_the_paired_grids(committed):
    """The check that chose stage 2's rate: per rate, the mean over (seed, k) of the best validation AUC of its
    summaries, read here from the JSON files; the reported grid against the grid at 1e-3, paired by seed."""
    from scipy.stats import ttest_rel

    best: dict[float, dict[str, float]] = {}
    for path in sorted((RESULTS / "analysis" / "crossdomain_lr").glob("*.json")):
        summary = json.loads(path.read_text())
        assert "test" not in json.dumps(summary["adaptation"])  # validation curves only
        for k, entry in summary["adaptation"].items():
            best.setdefault(summary["adapt_lr"], {})[f"{summary['seed']}{k}"] = max(entry["validation_auc"].values())
    assert len(best[3e-4]) == len(best[1e-3]) == 6
    numbers = committed.numbers
    for rate, name in ((3e-4, "lr3e4"), (1e-3, "lr1e3")):
        assert numbers[f"crossdomain.lr-check.val-auc.{name}.mean"].value == pytest.approx(
            np.mean(list(best[rate].values())))
    pairs = sorted(best[3e-4])
    assert numbers["crossdomain.lr-check.ttest.lr3e4.vs.lr1e3.p"].value == pytest.approx(
        ttest_rel([best[3e-4][p] for p in pairs], [best[1e-3][p] for p in pairs]).pvalue)

    now, before = (per_seed(crossdomain_frame(grid), "lora", 4, "thermal", "auc")
                   for grid in ("thermal_lr3e4_validated", "thermal_validated"))
    assert len(now) == len(before) == 3
    assert numbers["crossdomain.ttest.thermal.auc.lora.lr3e4.vs.lr1e3.k4.diff"].value == pytest.approx(
        (now - before).mean())
    assert numbers["crossdomain.ttest.thermal.auc.lora.lr3e4.vs.lr1e3.k4.p"].value == pytest.approx(
        ttest_rel(now, before).pvalue)


def test_the_sentence_comparing_the_two_rates_holds_for_the_committed_numbers(committed):
    """Results, "The learning rate, and a correction": on the test packs the lower rate reads higher at k = 1, 2, 4
    for LoRA, DA-LoRA and DA-LoRA+MAML and lower for every row at k = all, no difference significant."""
    numbers = committed.numbers
    tests = {number.key[len("crossdomain.ttest.thermal.auc."):-len(".diff")]: number.value for number in numbers
             if number.key.startswith("crossdomain.ttest.thermal.auc.") and ".lr3e4.vs.lr1e3." in number.key
             and number.key.endswith(".diff")}
    assert len(tests) == 17  # 5 rows x 4 k, less the 2 contrastive rows at k = 1 and the unlabelled row at k = all
    for method in ("lora", "dalora", "dalora+maml"):
        for k in ("k1", "k2", "k4"):
            assert tests[f"{method}.lr3e4.vs.lr1e3.{k}"] > 0, (method, k)
    assert all(value < 0 for name, value in tests.items() if name.endswith(".kall"))
    assert all(numbers[f"crossdomain.ttest.thermal.auc.{name}.p"].value > 0.05 for name in tests)


def test_the_crossdomain_budget_sentence_follows_the_grid_settings():
    """The tables' captions say how stage 2's step count was set, from the grid's own settings."""
    import dataclasses

    from afr.experiments.grids import CommittedGrids
    from afr.paper.parts.crossdomain import _budget

    grids = CommittedGrids()
    validated = _budget(grids.crossdomain_validated, "thermal")
    assert "up to 25 SGD steps at a learning rate of $10^{-3}$" in validated and "(0, 1, 3, 5, 10 or 25)" in validated
    assert "at a learning rate of $3\\times10^{-4}$" in _budget(grids.crossdomain_validated_lr3e4, "thermal")
    assert "thermal validation identities" in validated
    longer = _budget(dataclasses.replace(grids.crossdomain_lowquality_validated, adapt_steps=50), "low-quality")
    assert "up to 50 SGD steps" in longer and "(0, 1, 3, 5, 10, 25 or 50)" in longer
    assert _budget(grids.crossdomain, "thermal").startswith("stage 2 ran 10 SGD steps for every $k$, fixed in advance")


def test_a_meta_training_cost_is_the_mean_over_every_run_of_the_grid_flagged_ones_included(committed):
    """A flagged run is in no result, but the time it took is a measured cost: the seconds per outer step of
    notebook 04's three-inner-step grid (two flagged second-order runs) average all three seeds."""
    sources = load_sources(RESULTS)
    tags = sources.maml_tags(sources.grids.maml_clipped)
    flagged = {method for (method, _), tag in tags.items() if tag in FLAGGED}
    assert "maml" in flagged  # the case this test is about
    seconds: dict[str, list[float]] = {}
    for (method, _), tag in tags.items():
        meta = sources.record("maml", tag).get("meta_training") or {}
        if "seconds_per_step" in meta:
            seconds.setdefault(method, []).append(meta["seconds_per_step"])
    assert {"maml", "fomaml"} <= set(seconds)
    for method, values in seconds.items():
        assert committed.numbers[f"maml-inner3.cost.{method}.seconds-per-step.n"].value == len(values) == 3
        assert committed.numbers[f"maml-inner3.cost.{method}.seconds-per-step.mean"].value == \
            pytest.approx(sum(values) / 3, abs=0.01)


def test_the_60_step_start_table_reads_a_grid_only_once_every_run_of_it_is_recorded(tmp_path, committed):
    """The supplementary table of the 60-step MAML starts: its cells are the healthy runs' means, the start's effect
    is scipy's paired t-test of those runs against the main table's; with one run of the grid missing, the grid adds
    nothing (no mean over the seeds that happen to be done)."""
    from scipy.stats import ttest_rel

    from afr.experiments.settings.ablations import grid_runs

    sources = load_sources(RESULTS)
    grid = sources.grids.ablations_meta60
    table = sources.tables["ablations"]
    test = table[table["run"].isin(grid_runs(grid)) & (table["split"] == "test") & (table["metric"] == "auc")
                 & ~table["run"].isin(FLAGGED)]
    rows = {(row[0], row[2]): row for row in table_rows(committed.files["supplementary/ablations_meta60.tex"])}
    for (group, value), part in test[test["group"].isin(grid.groups)].groupby(["group", "cell"]):
        per_seed = part[part["domain"] == "thermal"].groupby("seed")["value"].mean()
        thermal = rows[GROUP_LABELS[group], str(value)][3 + 2]  # group, recipe, cell, controlled, wild, thermal
        assert thermal.startswith(cell(per_seed.mean(), per_seed.std()).split(" $")[0]), (group, value)
    with_start = test[(test["group"] == "component") & (test["cell"] == "full") & (test["domain"] == "thermal")]
    reported = sources.ablations_test()
    without = reported[(reported["group"] == "component") & (reported["cell"] == "dalora+contrastive")
                       & (reported["domain"] == "thermal") & (reported["metric"] == "auc")]
    a, b = with_start.groupby("seed")["value"].mean(), without.groupby("seed")["value"].mean()
    seeds = sorted(set(a.index) & set(b.index))
    assert len(seeds) == 3
    key = "ablations-meta60.ttest.thermal.auc.full.vs.dalora+contrastive"
    assert committed.numbers[f"{key}.p"].value == pytest.approx(ttest_rel(a[seeds], b[seeds]).pvalue, abs=0.005)
    assert committed.numbers[f"{key}.diff"].value == pytest.approx((a[seeds] - b[seeds]).mean(), abs=5e-5)

    results = _copy_results(tmp_path / "results")
    path = results / "tables" / "ablations.csv"
    frame = pd.read_csv(path)
    shared = set(grid_runs(sources.grids.ablations_inner1_meta60))  # the full model's runs, in every such grid
    other = sources.grids.ablations_rank_inner_meta60
    one_of = {name: sorted(set(grid_runs(each)) - shared)[0] for name, each in (("lambda", grid), ("rank", other))}
    frame[frame["run"] != one_of["lambda"]].to_csv(path, index=False)
    paper = build_generated(results, tmp_path / "figures", tmp_path / "generated")
    tex = paper.files["supplementary/ablations_meta60.tex"]
    assert r"$\lambda_1$" not in tex and "rank $r$" in tex  # the incomplete grid left out, the complete one kept
    assert paper.numbers["ablations-meta60.grids"].value == 1
    frame[~frame["run"].isin(one_of.values())].to_csv(path, index=False)
    paper = build_generated(results, tmp_path / "figures", tmp_path / "generated")
    assert "no run recorded" in paper.files["supplementary/ablations_meta60.tex"]
    assert paper.numbers["ablations-meta60.status"].text == "not run"
