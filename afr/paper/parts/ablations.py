"""Notebook 06: the component ablation and the sensitivity sweeps (``results/tables/ablations.csv``, columns
``group`` and ``cell`` beside the usual ones). Before the grid is run, the table lists every planned row as
"not run" — never a number that was not measured."""
from __future__ import annotations

from typing import TYPE_CHECKING

from afr.paper.latex import NOT_RUN, Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import PartOutput, key, label, stats_cell
from afr.paper.sources import PaperSources
from afr.paper.stats import paired_test, record_stats, record_test, seed_stats

if TYPE_CHECKING:
    from afr.experiments.settings.ablations import AblationSettings

__all__ = ["PLANNED", "RECIPES", "build"]

#: the planned rows of notebook 06 (issue 9, item 1): group -> cells
PLANNED = {
    "component": ("standard LoRA", "+ domain classifier only", "+ domain experts", "+ MAML initialisation",
                  "+ contrastive loss", "full DA-LoRA"),
    "rank": ("2", "4", "8", "16", "32"),
    "experts": ("2", "3", "4", "5"),
    "lambda_contrastive": ("0.01", "0.05", "0.1", "0.5"),
    "lambda_domain": ("0.01", "0.05", "0.1", "0.5"),
    "inner_steps": ("1", "3", "5", "10"),
}
GROUP_LABELS = {"component": "component", "rank": "rank $r$", "experts": "experts $K$",
                "lambda_contrastive": r"$\lambda_1$", "lambda_domain": r"$\lambda_2$", "inner_steps": "MAML inner steps"}
DOMAINS = ("controlled", "wild", "thermal", "lowquality")


def _planned_table() -> Table:
    table = Table(label="tab:ablations", columns="ll" + "c" * len(DOMAINS),
                  caption="Notebook 06 (planned): component ablation and sensitivity, test AUC. The grid has not "
                          "been run for this version of the paper: every cell says so.",
                  header=[["group", "cell", *(f"AUC {label(d)}" for d in DOMAINS)]])
    for group, cells in PLANNED.items():
        table.rules.add(len(table.rows))
        for cell in cells:
            table.rows.append([GROUP_LABELS[group], escape(cell), *([NOT_RUN] * len(DOMAINS))])
    return table


#: the recipe column of a group's rows: from the fitted grid (notebook 03's recipe and budget) or the first one
RECIPES = {True: "fitted, 4 ep.", False: "first, 1 ep."}


MEASURED_CAPTION = ("Notebook 06: component ablation and sensitivity, test AUC, mean $\\pm$ sd over seeds. "
                    "Recipe: \\emph{fitted}, notebook 03's (centred embeddings, class-mean centres, no "
                    "augmentation, 4 epochs, its learning rate chosen on validation); \\emph{first}, the first "
                    "grid's (random centres, RandAugment, 1 epoch), whose runs did not fit their training "
                    "identities, reported until the group is re-run. The other settings were fixed in advance; "
                    "the test packs were scored once per run.")
META60_CAPTION = ("Notebook 06's cells whose experts start from a MAML start meta-trained 60 outer steps (not 20) with "
                  "its meta-gradient clipped to norm 1, both fixed before these runs (grids ablations-fitted-meta60 "
                  "and ablations-rank-inner-meta60; fitted recipe, 4 epochs): test AUC, mean $\\pm$ sd over seeds "
                  "0--2. The rows without a MAML start are those of the paper's ablation table.")


def _measured_table(book: NumberBook, rows, kept, fitted_groups, prefix: str = "ablations",
                    table_label: str = "tab:ablations", caption: str = MEASURED_CAPTION,
                    health_table: str = r"Table~\ref{tab:health}") -> Table:
    """The reported cells as ``rows`` (every run) lays them out; their means over ``kept`` (the healthy runs' rows)
    as ``<prefix>.<domain>.auc.<group>.<cell>``; ``fitted_groups``: the groups whose rows are the fitted grid's (the
    others are the first grid's); ``health_table``: how the caption points at the health rules' table."""
    domains = [d for d in DOMAINS if d in set(rows["domain"])] or sorted(set(rows["domain"]))
    table = Table(label=table_label, columns="lll" + "c" * len(domains), wide=True, size=r"\scriptsize",
                  caption=caption, header=[["group", "recipe", "cell", *(f"AUC {label(d)}" for d in domains)]])
    auc = rows[rows["metric"] == "auc"]
    partial = False
    order = {group: index for index, group in enumerate(PLANNED)}
    for group in sorted(auc["group"].astype(str).unique(), key=lambda g: (order.get(g, len(order)), g)):
        table.rules.add(len(table.rows))
        part = auc[auc["group"].astype(str) == group]
        for cell in _cell_order(part["cell"].astype(str)):
            chosen = kept[(kept["metric"] == "auc") & (kept["group"].astype(str) == group)
                          & (kept["cell"].astype(str) == cell)]
            means = [stats_cell(book, key(prefix, domain, "auc", group, cell),
                                chosen[chosen["domain"] == domain].groupby("seed")["value"].mean(), "auc")
                     for domain in domains]
            run, healthy = part.loc[part["cell"].astype(str) == cell, "seed"].nunique(), chosen["seed"].nunique()
            shown = escape(cell)
            if 0 < healthy < run:
                shown += f" ({healthy}/{run} seeds)"
                partial = True
            table.rows.append([GROUP_LABELS.get(group, escape(group)), RECIPES[group in fitted_groups], shown, *means])
    if partial:
        table.caption += (" ``($n$/$N$ seeds)'': $N - n$ of the cell's runs failed the training-health rules "
                          f"({health_table}); the mean is over the other $n$.")
    return table


def _cell_order(cells) -> list[str]:
    """A group's cells in their order of appearance; a sweep's (every cell a number) in ascending order."""
    cells = list(dict.fromkeys(cells))
    try:
        return sorted(cells, key=float)
    except ValueError:
        return cells


def _values(rows, domain: str):
    """``{seed: value}`` of one run's test AUC rows on ``domain``."""
    chosen = rows[(rows["domain"] == domain) & (rows["metric"] == "auc")]
    return chosen.groupby("seed")["value"].mean()


def inner_step_comparison(sources: PaperSources, book: NumberBook, grid: AblationSettings, name: str) -> None:
    """One MAML inner step (the fitted grid's validation choice) against notebook 03's parameter-matched LoRA and
    against the full model's three inner steps, paired by seed over the healthy runs of both sides, the seeds of
    ``grid`` planned (:attr:`~afr.experiments.grids.CommittedGrids.ablations_inner1` and its twin with longer
    MAML starts): ``ablations.<name>.*``, with the number of healthy runs of each side."""
    from afr.experiments.settings.ablations import grid_cells

    frame = sources.tables["ablations"]
    tags = {}
    for cell in grid_cells(grid):
        tags.setdefault(str(cell.value), set()).add(cell.settings.tag)
    if not len(frame) or not set(frame["run"]) & tags["1"]:
        book.add(f"ablations.{name}.status", "not run", "plain")
        return
    book.add(f"ablations.{name}.status", "run", "plain")
    test = frame[(frame["split"] == "test") & (frame["group"] == "inner_steps")]
    one = sources.healthy("ablations", test[test["run"].isin(tags["1"])])
    three = sources.healthy("ablations", test[test["run"].isin(tags["3"])])
    matched = sources.dalora_test()
    matched = sources.healthy("dalora", matched[matched["method"] == "lora-matched"])
    book.add(f"ablations.{name}.planned", len(tags["1"]), "count")
    for side, rows in (("inner-steps-1", one), ("inner-steps-3", three)):
        book.add(key("ablations", name, "healthy", side), rows["run"].nunique(), "count")
    for domain in DOMAINS:
        a, b, c = _values(one, domain), _values(matched, domain), _values(three, domain)
        record_stats(book, key("ablations", name, domain, "auc", "inner-steps-1"), seed_stats(a), "auc")
        record_stats(book, key("ablations", name, domain, "auc", "inner-steps-3"), seed_stats(c), "auc")
        record_stats(book, key("ablations", name, domain, "auc", "lora-matched"), seed_stats(b), "auc")
        record_test(book, key("ablations", name, "ttest", domain, "auc", "inner-steps-1", "vs", "lora-matched"),
                    paired_test(a, b), "delta")
        record_test(book, key("ablations", name, "ttest", domain, "auc", "inner-steps-3", "vs", "lora-matched"),
                    paired_test(c, b), "delta")
        record_test(book, key("ablations", name, "ttest", domain, "auc", "inner-steps-1", "vs", "inner-steps-3"),
                    paired_test(a, c), "delta")


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    rows = sources.ablations_test(healthy=False)
    if not len(rows) or not {"group", "cell"} <= set(rows.columns):
        book.add("ablations.status", "not run", "plain")
        return PartOutput(tables={"ablations": _planned_table()})
    book.add("ablations.status", "run", "plain")
    fitted = sources.fitted_ablation_groups()
    grids = sources.grids
    inner_step_comparison(sources, book, grids.ablations_inner1, "inner1")
    inner_step_comparison(sources, book, grids.ablations_inner1_meta60, "inner1-meta60")
    return PartOutput(tables={"ablations": _measured_table(book, rows, sources.ablations_test(), fitted)},
                      supplementary={"ablations_meta60": _meta60_table(sources, book)})


def _meta60_table(sources: PaperSources, book: NumberBook) -> Table:
    """The cells of the grids with 60-step clipped MAML starts (:attr:`~afr.experiments.grids.CommittedGrids.
    ablations_meta60` and :attr:`~afr.experiments.grids.CommittedGrids.ablations_rank_inner_meta60`) as the main
    table lays them out, keys ``ablations-meta60.*``; a grid only once every run of it is recorded (a grid being run
    adds nothing), "no run recorded" before either is."""
    from afr.experiments.settings.ablations import grid_runs

    frame = sources.tables["ablations"]
    recorded = set(frame["run"]) if len(frame) else set()
    grids = [grid for grid in (sources.grids.ablations_meta60, sources.grids.ablations_rank_inner_meta60)
             if set(grid_runs(grid)) <= recorded]
    runs = {run for grid in grids for run in grid_runs(grid)}
    groups = tuple(dict.fromkeys(group for grid in grids for group in grid.groups))
    rows = frame[frame["run"].isin(runs) & frame["group"].isin(groups) & (frame["split"] == "test")] \
        if grids else frame.iloc[:0]
    if not len(rows):
        book.add("ablations-meta60.status", "not run", "plain")
        table = Table(label="tab:supp-ablations-meta60", columns="ll", caption=META60_CAPTION,
                      header=[["grid", "status"]])
        table.rows.append([escape(sources.grids.ablations_meta60.grid), "no run recorded"])
        return table
    book.add("ablations-meta60.status", "run", "plain")
    book.add("ablations-meta60.grids", len(grids), "count")
    book.add("ablations-meta60.runs", rows["run"].nunique(), "count")
    kept = sources.healthy("ablations", rows)
    book.add("ablations-meta60.healthy", kept["run"].nunique(), "count")
    _maml_start_effect(book, kept, sources.ablations_test())
    return _measured_table(book, rows, kept, groups, "ablations-meta60", "tab:supp-ablations-meta60", META60_CAPTION,
                           health_table="the paper's training-health table")


#: (cell with the 60-step MAML start, the reported cell that differs from it only by having no MAML start)
MAML_START_PAIRS = (("full", "dalora+contrastive"), ("dalora+maml", "dalora"))


def _maml_start_effect(book: NumberBook, meta60, reported) -> None:
    """What the 60-step MAML start adds: each of :data:`MAML_START_PAIRS`, paired by seed over the healthy runs of
    both (``meta60``: the grid's healthy test rows; ``reported``: the paper table's), per pack,
    ``ablations-meta60.ttest.<domain>.auc.<with>.vs.<without>``."""
    def component(rows, cell):
        return rows[(rows["group"].astype(str) == "component") & (rows["cell"].astype(str) == cell)]

    for with_start, without in MAML_START_PAIRS:
        for domain in DOMAINS:
            record_test(book, key("ablations-meta60", "ttest", domain, "auc", with_start, "vs", without),
                        paired_test(_values(component(meta60, with_start), domain),
                                    _values(component(reported, without), domain)), "delta")
