"""Notebook 04: the target's validation AUC against adaptation steps per start and k, the test AUC once at the step
count each run's validation curve chose, paired t-tests, meta-training cost; for the reported grid (one inner step,
keys ``maml.*``, ``tab:maml``) and the grid with three inner steps whose second-order starts mostly diverged (keys
``maml-inner3.*``, supplementary ``tab:supp-maml-inner3``)."""
from __future__ import annotations

from afr.experiments.settings.maml import METHODS
from afr.paper.latex import Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import PartOutput, key, label, meta_training_costs, seed_span, stats_cell, unseeded
from afr.paper.sources import PaperSources
from afr.paper.stats import paired_test, record_test, seed_stats

__all__ = ["build"]

#: ranges the text quotes, on the validation curves (the test pack is scored at the chosen step count only):
#: (tested, other, shots, steps) -> the range's key suffix
VALIDATION_RANGES = {("fomaml", "pooled-lora", (1, 2), (0, 1, 3, 5)): "k1-2.s0-5",
                     ("maml", "pooled-lora", (1, 2), (0, 1, 3, 5)): "k1-2.s0-5"}


def _before_adaptation(values, method: str, steps: int):
    """The random start's values at step 0, the zero-shot backbone's for every seed, kept once (:func:`unseeded`)."""
    return unseeded(values) if method == "random" and steps == 0 else values


def _values(rows, method: str, shots: int, steps: int | None = None, metric: str = "auc"):
    """``value`` by seed of ``method`` at ``shots`` (and ``steps`` where given)."""
    chosen = rows[(rows["method"] == method) & (rows["shots"] == shots) & (rows["metric"] == metric)]
    if steps is not None:
        chosen = chosen[chosen["steps"] == steps]
    values = chosen.set_index("seed")["value"].sort_index()
    return unseeded(values) if method == "zero-shot" else values


def _chosen_steps(rows, method: str, shots: int) -> str:
    steps = rows[(rows["method"] == method) & (rows["shots"] == shots) & (rows["metric"] == "auc")]
    return ", ".join(str(int(n)) for n in steps.sort_values("seed")["steps"]) or "--"


def _main_table(sources: PaperSources, book: NumberBook, grid, prefix: str, label_name: str, validation, test
                ) -> Table:
    target = grid.target
    steps = grid.steps
    seeds = sorted(set(test["seed"])) if len(test) else []
    table = Table(label=label_name, columns="lc" + "c" * len(steps) + "cc", wide=True, size=r"\scriptsize",
                  caption=f"Notebook 04 ({grid.inner_steps} inner step{'s' if grid.inner_steps != 1 else ''}): "
                          f"{label(target)} \\emph{{validation}} AUC after $n$ SGD adaptation steps on "
                          "$k$ labelled images per target training identity (the target's validation identities), "
                          "the step count each run's validation curve chose (per seed), and the \\emph{test} AUC "
                          "scored once, at that step count; mean $\\pm$ sd over the healthy runs of "
                          f"{seed_span(seeds)} (the random start before any step, $n = 0$, is the zero-shot backbone "
                          "for every seed: one value). The target collection is held out from meta-training; a "
                          "flagged start (diverged meta-training) is left out of every cell.",
                  header=[["start", "$k$", *(f"val.\\ {n}" for n in steps), "chosen $n$", "test AUC"]])
    zero = _values(sources.maml_zero_shot_test(), "zero-shot", grid.shots[0], 0)
    stats_cell(book, key(prefix, target, "auc", "zero-shot"), zero, "auc")
    for shots in grid.shots:
        table.rules.add(len(table.rows))
        for method in METHODS:
            # before any step the random start is the zero-shot backbone (B = 0) for every seed: one value, no "± 0"
            cells = [stats_cell(book, key(prefix, "val", target, "auc", method, f"k{shots}", f"s{n}"),
                                _before_adaptation(_values(validation, method, shots, n), method, n), "auc")
                     for n in steps]
            chosen = stats_cell(book, key(prefix, target, "auc", method, f"k{shots}"), _values(test, method, shots),
                                "auc")
            stats_cell(book, key(prefix, target, "accuracy", method, f"k{shots}"),
                       _values(test, method, shots, metric="accuracy"), "accuracy")
            table.rows.append([escape(method), str(shots), *cells, _chosen_steps(test, method, shots), chosen])
    return table


def _tests(book: NumberBook, grid, prefix: str, validation, test) -> None:
    for tested in ("maml", "fomaml"):
        for other in (m for m in METHODS if m != tested):
            for shots in grid.shots:
                record_test(book, key(prefix, "ttest", grid.target, "auc", tested, "vs", other, f"k{shots}"),
                            paired_test(_values(test, tested, shots), _values(test, other, shots)), "delta")
                for n in grid.steps:  # on the validation curves: where the targets' "within 5 steps" is read
                    record_test(book, key(prefix, "val", "ttest", grid.target, "auc", tested, "vs", other,
                                          f"k{shots}", f"s{n}"),
                                paired_test(_values(validation, tested, shots, n), _values(validation, other, shots, n)),
                                "delta")
    for (tested, other, shots, steps), suffix in VALIDATION_RANGES.items():
        tests = [paired_test(_values(validation, tested, k, n), _values(validation, other, k, n))
                 for k in shots for n in steps]
        tests = [test for test in tests if test.n >= 2]
        if tests:
            at = f"{key(prefix, 'val', 'range', tested, 'vs', other)}.{suffix}"
            book.add(f"{at}.diff-min", min(t.diff for t in tests), "delta")
            book.add(f"{at}.diff-max", max(t.diff for t in tests), "delta")
            book.add(f"{at}.p-min", min(t.p for t in tests), "p")
            book.add(f"{at}.n", min(t.n for t in tests), "count")


def _cost(book: NumberBook, prefix: str, records) -> None:
    """Meta-training seconds per outer step, means over **every** run of the grid: a flagged run is not a result,
    but the time it took is still a measured cost."""
    seconds = meta_training_costs(book, prefix, records)
    for record in records.values():
        if (record.get("meta_training") or {}).get("adapter_parameters"):
            book.add(f"{prefix}.params.lora", record["meta_training"]["adapter_parameters"], "count")
    if "maml" in seconds and "fomaml" in seconds:
        book.add(f"{prefix}.cost.ratio.maml.vs.fomaml",
                 seed_stats(seconds["maml"]).mean / seed_stats(seconds["fomaml"]).mean, "ratio")


def _health(sources: PaperSources, book: NumberBook, prefix: str, grid) -> None:
    """How many of each start's seeds the training-health check keeps (``<prefix>.healthy.<method>``)."""
    for method in METHODS:
        tags = [tag for (name, _), tag in sources.maml_tags(grid).items() if name == method]
        book.add(key(prefix, "healthy", method), sum(tag not in sources.flagged for tag in tags), "count")


def _per_seed(grid, label_name: str, validation, test) -> Table:
    steps = grid.steps
    table = Table(label=label_name, columns="lcc" + "c" * len(steps) + "cc", size=r"\scriptsize",
                  caption=f"Notebook 04 per seed ({grid.inner_steps} inner step{'s' if grid.inner_steps != 1 else ''}):"
                          f" {label(grid.target)} validation AUC after $n$ adaptation steps, the chosen $n$ and the "
                          "test AUC at it (healthy runs).",
                  header=[["start", "$k$", "seed", *(f"$n={n}$" for n in steps), "chosen", "test"]])
    val_auc, test_auc = validation[validation["metric"] == "auc"], test[test["metric"] == "auc"]
    for method in METHODS:
        for shots in grid.shots:
            table.rules.add(len(table.rows))
            chosen = val_auc[(val_auc["method"] == method) & (val_auc["shots"] == shots)]
            for seed, group in chosen.groupby("seed"):
                values = group.set_index("steps")["value"]
                scored = test_auc[(test_auc["method"] == method) & (test_auc["shots"] == shots)
                                  & (test_auc["seed"] == seed)]
                table.rows.append([escape(method), str(shots), str(seed),
                                   *(f"{values.get(n, float('nan')):.4f}" for n in steps),
                                   *((str(int(scored["steps"].iloc[0])), f"{scored['value'].iloc[0]:.4f}")
                                     if len(scored) else ("--", "--"))])
    return table


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    tables, supplementary = {}, {}
    for grid, prefix, main, per_seed, name in (
            (sources.grids.maml, "maml", "tab:maml", "tab:supp-maml", "maml"),
            (sources.grids.maml_clipped, "maml-inner3", "tab:supp-maml-inner3", "tab:supp-maml-inner3-seeds",
             "maml_inner3")):
        validation, test = sources.maml_validation(grid), sources.maml_test(grid)
        table = _main_table(sources, book, grid, prefix, main, validation, test)
        _tests(book, grid, prefix, validation, test)
        _cost(book, prefix, sources.every_record("maml", sources.maml_tags(grid)))
        _health(sources, book, prefix, grid)
        if prefix == "maml":
            tables[name] = table
        else:
            supplementary[name] = table
        supplementary[f"{name}_seeds"] = _per_seed(grid, per_seed, validation, test)
    return PartOutput(tables=tables, supplementary=supplementary)
