"""Notebook 05: visible -> thermal with k labelled thermal images: thermal AUC per pack and the visible forgetting."""
from __future__ import annotations

from afr.experiments.crossdomain import (METHODS, START_OF, THERMAL_PACKS, VISIBLE_PACKS, CrossDomainSettings,
                                         forgetting_table)
from afr.paper.latex import NOT_RUN, Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import unseeded, PartOutput, key, label, stats_cell
from afr.paper.sources import PaperSources
from afr.paper.stats import paired_test, record_test

__all__ = ["build"]

STARTS = ("pooled-start", "maml-start")
#: paired comparisons the text discusses: (a, b), tested per k and pack
PAIRS = (("dalora+maml", "lora"), ("dalora", "lora"), ("dalora+maml+contrastive", "dalora+maml"),
         ("dalora+maml+contrastive+semi", "dalora+maml+contrastive"))


def _values(rows, method: str, shots: int, domain: str, metric: str = "auc"):
    chosen = rows[(rows["method"] == method) & (rows["shots"] == shots) & (rows["domain"] == domain)
                  & (rows["metric"] == metric)]
    values = chosen.set_index("seed")["value"].sort_index()
    return unseeded(values) if method == "zero-shot" else values


def _row_shots(grid: CrossDomainSettings) -> list[tuple[str, int]]:
    return [("zero-shot", 0), *((start, 0) for start in STARTS),
            *((method, k) for k in grid.shots for method in METHODS if method != "zero-shot")]


def _forgetting(rows):
    """Per (method, seed, k, visible pack): accuracy change vs the method's start and vs zero-shot (05's rule)."""
    if not len(rows):
        return rows
    needed = rows[["method", "seed", "shots", "domain", "metric", "value"]]
    return forgetting_table(needed)


def _table(sources: PaperSources, book: NumberBook, rows, skipped: dict) -> Table:
    grid = sources.grids.crossdomain
    forgetting = _forgetting(rows)
    table = Table(label="tab:crossdomain", columns="lc" + "c" * (len(THERMAL_PACKS) + len(VISIBLE_PACKS)),
                  wide=True, size=r"\scriptsize",
                  caption="Notebook 05, visible $\\rightarrow$ thermal: test AUC on the thermal packs after adapting "
                          "with $k$ labelled images per thermal training identity ($k=0$: before adaptation), and the "
                          "forgetting on the visible packs: accuracy change in points against the row's start. Mean "
                          "$\\pm$ sd over seeds 0--2 (zero-shot: no seed).",
                  header=[["row", "$k$", *(f"AUC {label(p)}" for p in THERMAL_PACKS),
                           *(rf"$\Delta$acc. {label(p)}" for p in VISIBLE_PACKS)]])
    for method, shots in _row_shots(grid):
        if method == "lora" or (method == "zero-shot"):
            table.rules.add(len(table.rows))
        reason = skipped.get((method, shots))
        if reason:
            table.rows.append([escape(method), str(shots), *(["n/a"] * (len(THERMAL_PACKS) + len(VISIBLE_PACKS)))])
            book.add(key("crossdomain", "skipped", method, f"k{shots}"), escape(reason), "plain")
            continue
        cells = []
        for pack in (*THERMAL_PACKS, *VISIBLE_PACKS):
            for metric in ("auc", "accuracy"):
                cell = stats_cell(book, key("crossdomain", pack, metric, method, f"k{shots}"),
                                  _values(rows, method, shots, pack, metric), "auc" if metric == "auc" else "accuracy")
                if metric == "auc" and pack in THERMAL_PACKS:
                    cells.append(cell)
        for pack in VISIBLE_PACKS:
            if method in START_OF:
                change = forgetting[(forgetting["method"] == method) & (forgetting["shots"] == shots)
                                    & (forgetting["domain"] == pack)] if len(forgetting) else forgetting
                cells.append(stats_cell(book, key("crossdomain", "forgetting", pack, method, f"k{shots}", "vs-start"),
                                        change["change_vs_start"] if len(change) else [], "points"))
                if len(change):
                    stats_cell(book, key("crossdomain", "forgetting", pack, method, f"k{shots}", "vs-zero-shot"),
                               change["change_vs_zero_shot"], "points")
            else:
                cells.append("--")
        table.rows.append([escape(method), "--" if method == "zero-shot" else str(shots), *cells])
    if len(forgetting):  # starts against zero-shot, and the mean over the visible packs
        zero = rows[(rows["method"] == "zero-shot") & (rows["metric"] == "accuracy")].groupby("domain")["value"].mean()
        for start in STARTS:
            for pack in VISIBLE_PACKS:
                values = _values(rows, start, 0, pack, "accuracy")
                if len(values) and pack in zero:
                    stats_cell(book, key("crossdomain", "forgetting", pack, start, "k0", "vs-zero-shot"),
                               values - zero[pack], "points")
        mean = forgetting.groupby(["method", "shots", "seed"])[["change_vs_start", "change_vs_zero_shot"]].mean()
        for (method, shots), group in mean.groupby(level=["method", "shots"]):
            stats_cell(book, key("crossdomain", "forgetting", "visible-mean", method, f"k{shots}", "vs-start"),
                       group["change_vs_start"], "points")
    return table


def _tests(sources: PaperSources, book: NumberBook, rows) -> None:
    for first, second in PAIRS:
        for shots in sources.grids.crossdomain.shots:
            for pack in (*THERMAL_PACKS, *VISIBLE_PACKS):
                a, b = _values(rows, first, shots, pack), _values(rows, second, shots, pack)
                if len(a) and len(b):
                    record_test(book, key("crossdomain", "ttest", pack, "auc", first, "vs", second, f"k{shots}"),
                                paired_test(a, b), "delta")


def _per_seed(sources: PaperSources, rows, skipped: dict) -> Table:
    packs = (*THERMAL_PACKS, *VISIBLE_PACKS)
    table = Table(label="tab:supp-crossdomain", columns="lcc" + "c" * len(packs), size=r"\scriptsize",
                  caption="Notebook 05 per seed: test AUC on every pack.",
                  header=[["row", "$k$", "seed", *(label(p) for p in packs)]])
    auc = rows[rows["metric"] == "auc"]
    for method, shots in _row_shots(sources.grids.crossdomain):
        table.rules.add(len(table.rows))
        chosen = auc[(auc["method"] == method) & (auc["shots"] == shots)]
        if (method, shots) in skipped or not len(chosen):
            table.rows.append([escape(method), str(shots), "--", *(["n/a" if (method, shots) in skipped else NOT_RUN]
                                                                    * len(packs))])
            continue
        for seed, group in chosen.groupby("seed"):
            values = group.set_index("domain")["value"]
            table.rows.append([escape(method), str(shots), str(seed),
                               *(f"{values.get(p, float('nan')):.4f}" for p in packs)])
    return table


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    rows = sources.crossdomain_test()
    skipped = {}
    for (method, _), record in sources.crossdomain_records().items():
        for shots, reason in (record.get("skipped") or {}).items():
            skipped[(method, int(shots))] = reason
    table = _table(sources, book, rows, skipped)
    _tests(sources, book, rows)
    starts = {}
    for (method, _), record in sources.crossdomain_records().items():
        if method in STARTS and record.get("meta_training", {}).get("seconds_per_step"):
            starts.setdefault(method, []).append(record["meta_training"]["seconds_per_step"])
    for method, values in starts.items():
        stats_cell(book, key("crossdomain", "cost", method, "seconds-per-step"), values, "seconds")
    return PartOutput(tables={"crossdomain": table}, supplementary={"crossdomain_seeds": _per_seed(sources, rows, skipped)})
