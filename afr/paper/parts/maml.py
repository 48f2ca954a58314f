"""Notebook 04: target AUC against adaptation steps per start and k, paired t-tests, meta-training cost."""
from __future__ import annotations

from afr.experiments.settings.maml import METHODS
from afr.paper.latex import Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import unseeded, PartOutput, key, label, stats_cell
from afr.paper.sources import PaperSources
from afr.paper.stats import paired_test, record_test, seed_stats

__all__ = ["build"]

#: ranges the text quotes: (tested, other, shots, steps) -> the range's key suffix
RANGES = {("maml", "pooled-lora", (1, 2), (0, 1, 3, 5)): "k1-2.s0-5", ("maml", "random", (1, 2), (1, 3, 5)): "k1-2.s1-5"}


def _values(rows, method: str, shots: int, steps: int, metric: str = "auc"):
    chosen = rows[(rows["method"] == method) & (rows["shots"] == shots) & (rows["steps"] == steps)
                  & (rows["metric"] == metric)]
    values = chosen.set_index("seed")["value"].sort_index()
    return unseeded(values) if method == "zero-shot" else values


def _curve_table(sources: PaperSources, book: NumberBook, rows) -> Table:
    grid = sources.grids.maml
    target = grid.target
    steps = grid.steps
    table = Table(label="tab:maml", columns="lc" + "c" * len(steps), wide=True, size=r"\scriptsize",
                  caption=f"Notebook 04: {label(target)} test AUC after $n$ SGD adaptation steps on $k$ labelled "
                          "images per target training identity, mean $\\pm$ sd over seeds 0--2, per start. "
                          "The target collection is held out from meta-training.",
                  header=[["start", "$k$", *(f"{n} steps" if n != 1 else "1 step" for n in steps)]])
    for shots in grid.shots:
        table.rules.add(len(table.rows))
        for method in (*METHODS, "zero-shot"):
            if method == "zero-shot":
                values = _values(rows, method, shots, 0)
                stats_cell(book, key("maml", target, "auc", method, f"k{shots}", "s0"), values, "auc")
                continue
            cells = [stats_cell(book, key("maml", target, "auc", method, f"k{shots}", f"s{n}"),
                                _values(rows, method, shots, n), "auc") for n in steps]
            for n in steps:
                stats_cell(book, key("maml", target, "accuracy", method, f"k{shots}", f"s{n}"),
                           _values(rows, method, shots, n, "accuracy"), "accuracy")
            table.rows.append([escape(method), str(shots), *cells])
    return table


def _tests(sources: PaperSources, book: NumberBook, rows) -> None:
    grid = sources.grids.maml
    for tested in ("maml", "fomaml"):
        for other in (m for m in METHODS if m != tested):
            for shots in grid.shots:
                for n in grid.steps:
                    test = paired_test(_values(rows, tested, shots, n), _values(rows, other, shots, n))
                    record_test(book, key("maml", "ttest", grid.target, "auc", tested, "vs", other, f"k{shots}",
                                          f"s{n}"), test, "delta")
    for (tested, other, shots, steps), suffix in RANGES.items():
        tests = [paired_test(_values(rows, tested, k, n), _values(rows, other, k, n)) for k in shots for n in steps]
        tests = [test for test in tests if test.n]
        if tests:
            prefix = f"{key('maml', 'range', tested, 'vs', other)}.{suffix}"
            book.add(f"{prefix}.diff-min", min(t.diff for t in tests), "delta")
            book.add(f"{prefix}.diff-max", max(t.diff for t in tests), "delta")
            book.add(f"{prefix}.p-min", min(t.p for t in tests), "p")


def _cost(book: NumberBook, records) -> None:
    seconds = {}
    for (method, _), record in records.items():
        meta = record.get("meta_training") or {}
        if meta.get("seconds_per_step"):
            seconds.setdefault(method, []).append(meta["seconds_per_step"])
        if meta.get("adapter_parameters"):
            book.add("maml.params.lora", meta["adapter_parameters"], "count")
    for method, values in seconds.items():
        stats_cell(book, key("maml", "cost", method, "seconds-per-step"), values, "seconds")
    if "maml" in seconds and "fomaml" in seconds:
        book.add("maml.cost.ratio.maml.vs.fomaml", seed_stats(seconds["maml"]).mean / seed_stats(seconds["fomaml"]).mean,
                 "ratio")


def _per_seed(sources: PaperSources, rows) -> Table:
    steps = sources.grids.maml.steps
    table = Table(label="tab:supp-maml", columns="lcc" + "c" * len(steps), size=r"\scriptsize",
                  caption=f"Notebook 04 per seed: {label(sources.grids.maml.target)} test AUC after $n$ adaptation "
                          "steps.",
                  header=[["start", "$k$", "seed", *(f"$n={n}$" for n in steps)]])
    auc = rows[rows["metric"] == "auc"]
    for method in METHODS:
        for shots in sources.grids.maml.shots:
            table.rules.add(len(table.rows))
            chosen = auc[(auc["method"] == method) & (auc["shots"] == shots)]
            for seed, group in chosen.groupby("seed"):
                values = group.set_index("steps")["value"]
                table.rows.append([escape(method), str(shots), str(seed),
                                   *(f"{values.get(n, float('nan')):.4f}" for n in steps)])
    return table


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    rows = sources.maml_test()
    table = _curve_table(sources, book, rows)
    _tests(sources, book, rows)
    _cost(book, sources.maml_records())
    return PartOutput(tables={"maml": table}, supplementary={"maml_seeds": _per_seed(sources, rows)})
