"""Notebook 05: adapting a start to a new domain with k labelled images, and the forgetting of the source domain.

Three tables from the committed grids (:attr:`~afr.experiments.grids.CommittedGrids.crossdomain_grids`):

* ``crossdomain``: visible -> thermal at k = 1, 2, 4 (grid ``thermal_lr3e4_validated``) and k = all (grid
  ``thermal_kall_lr3e4_validated``, the same starts), stage 2's step count chosen per run and k on the thermal
  validation identities, at the learning rate 3e-4 the validation-only check chose: thermal AUC per pack and the
  visible forgetting. Keys ``crossdomain.<pack>.<metric>.<row>.k<k>`` (``k0``: zero-shot and the starts; ``kall``:
  every labelled image). To the supplement: the same grids at the rate first kept, 1e-3 (``thermal_validated``,
  ``thermal_kall_validated``; keys ``crossdomain-lr1e3...``, and the paired test of the two rates
  ``crossdomain.ttest.<pack>.auc.<row>.lr3e4.vs.lr1e3.k<k>``), the first grids (``thermal``, ``thermal_kall``: 10
  steps fixed in advance; keys ``crossdomain-fixed10...``) and the chosen step counts
  (``crossdomain.chosen-steps...``, ``crossdomain.val-auc...``);
* ``crossdomain_lowquality``: visible -> low quality (stage 1 on ORL + Yale only; grid
  ``lowquality_lr3e4_validated``, the step count chosen on the low-quality validation identities at rate 3e-4):
  low-quality AUC and accuracy, forgetting on the controlled and wild packs. Keys
  ``crossdomain.to-lowquality.<pack>.<metric>.<row>.k<k>``; the grid at 1e-3 (``lowquality_validated``) and the first
  grid (``lowquality``, 10 steps) go to the supplement under ``crossdomain-lr1e3.to-lowquality...`` and
  ``crossdomain-fixed10.to-lowquality...``;
* ``crossdomain_outdoor``: indoor -> outdoor, where the target has no training identity: zero-shot against the two
  starts trained on ORL + Yale only (the low-quality grid's starts), on the wild and controlled packs. Keys
  ``crossdomain.to-outdoor.<pack>.<metric>.<row>``.

Each grid's per-seed values go to the supplement. Paired t-tests over seeds (``...ttest...``) are written for the
comparisons the text makes; zero-shot, which has no seed, enters a paired test with its one value for every seed.
"""
from __future__ import annotations

from afr.experiments.settings.crossdomain import (ALL_SHOTS, METHODS, START_OF, THERMAL_PACKS, VISIBLE_PACKS,
                                                  CrossDomainSettings, forgetting_table, shots_label, shots_order,
                                                  validation_table)
from afr.experiments.grids import REPORTED_THERMAL_GRIDS
from afr.paper.latex import NOT_RUN, Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import PartOutput, key, label, meta_training_costs, stats_cell, unseeded
from afr.paper.sources import PaperSources
from afr.paper.stats import paired_test, record_test

__all__ = ["build"]

STARTS = ("pooled-start", "maml-start")
#: paired comparisons the text discusses: (a, b), tested per k and pack
PAIRS = (("dalora+maml", "lora"), ("dalora", "lora"), ("dalora+maml+contrastive", "dalora+maml"),
         ("dalora+maml+contrastive+semi", "dalora+maml+contrastive"))
#: visible -> low quality: the pairs tested on the target pack per k
LOWQUALITY_PAIRS = (("dalora+maml", "lora"), ("dalora", "lora"), ("lora", "zero-shot"))
#: key prefixes of the other shifts (a prefix of their own: ``crossdomain.lowquality...`` is the visible pack of
#: the thermal grid)
LOWQUALITY, OUTDOOR = "to-lowquality", "to-outdoor"


def _k(shots: int) -> str:
    """The key component of a k: ``k1``, ``k0`` (before adaptation), ``kall``."""
    return f"k{shots_label(shots)}"


def _key(prefix: str, *parts: object) -> str:
    """A result key under an already dotted ``prefix`` (``crossdomain.to-lowquality``)."""
    return ".".join((prefix, key(*parts)))


def _values(rows, method: str, shots: int, domain: str, metric: str = "auc", paired: bool = False):
    """``{seed: value}`` of one row and pack; zero-shot's repeated value once, unless ``paired`` (a paired test
    needs it for every seed of the other row)."""
    chosen = rows[(rows["method"] == method) & (rows["shots"] == shots) & (rows["domain"] == domain)
                  & (rows["metric"] == metric)]
    values = chosen.set_index("seed")["value"].sort_index()
    return unseeded(values) if method == "zero-shot" and not paired else values


def _row_shots(methods, shots) -> list[tuple[str, int]]:
    """The rows of a table: zero-shot, the two starts, then each adapted method at each k (grouped by k)."""
    return [("zero-shot", 0), *((start, 0) for start in STARTS),
            *((method, k) for k in shots for method in METHODS if method in methods and method != "zero-shot")]


def _skipped(records) -> dict[tuple[str, int], str]:
    """``{(method, k): reason}`` of every k a record skipped (its ``skipped`` keys are k labels: ``"1"``, ``"all"``)."""
    skipped = {}
    for (method, _), record in records.items():
        for shots, reason in (record.get("skipped") or {}).items():
            skipped[(method, ALL_SHOTS if shots == shots_label(ALL_SHOTS) else int(shots))] = reason
    return skipped


def _forgetting(rows, settings: CrossDomainSettings):
    """Per (method, seed, k, source pack): accuracy change vs the method's start and vs zero-shot (05's rule)."""
    if not len(rows) or not (rows["method"] == "zero-shot").any():
        return rows.iloc[:0]
    return forgetting_table(rows[["method", "seed", "shots", "domain", "metric", "value"]], settings)


def _forgetting_cell(book: NumberBook, prefix: str, forgetting, method: str, shots: int, pack: str) -> str:
    """The row's source-pack accuracy change against its start (the cell), and against zero-shot (a key only)."""
    change = forgetting[(forgetting["method"] == method) & (forgetting["shots"] == shots)
                        & (forgetting["domain"] == pack)] if len(forgetting) else forgetting
    cell = stats_cell(book, _key(prefix, "forgetting", pack, method, _k(shots), "vs-start"),
                      change["change_vs_start"] if len(change) else [], "points")
    if len(change):
        stats_cell(book, _key(prefix, "forgetting", pack, method, _k(shots), "vs-zero-shot"),
                   change["change_vs_zero_shot"], "points")
    return cell


def _start_forgetting(book: NumberBook, prefix: str, rows, forgetting, source_packs, mean_name: str) -> None:
    """The starts' source accuracy against zero-shot, and each row's mean change over the source packs (keyed
    ``<prefix>.forgetting.<mean_name>...``)."""
    if not len(forgetting):
        return
    zero = rows[(rows["method"] == "zero-shot") & (rows["metric"] == "accuracy")].groupby("domain")["value"].mean()
    for start in STARTS:
        for pack in source_packs:
            values = _values(rows, start, 0, pack, "accuracy")
            if len(values) and pack in zero:
                stats_cell(book, _key(prefix, "forgetting", pack, start, "k0", "vs-zero-shot"), values - zero[pack],
                           "points")
    mean = forgetting.groupby(["method", "shots", "seed"])[["change_vs_start", "change_vs_zero_shot"]].mean()
    for (method, shots), group in mean.groupby(level=["method", "shots"]):
        stats_cell(book, _key(prefix, "forgetting", mean_name, method, _k(shots), "vs-start"), group["change_vs_start"],
                   "points")


def _adaptation_sizes(book: NumberBook, prefix: str, *grids: dict) -> None:
    """``<prefix>.adaptation.k<k>.{identities,labelled-images}``: the support of each k (target identities with at
    least k training images, and their labelled images), written when every recorded run of ``grids`` (each
    ``{(method, seed): record}``) agrees."""
    sizes: dict[tuple[str, str], set[int]] = {}
    for record in (record for records in grids for record in records.values()):
        for shots, adaptation in (record.get("adaptation") or {}).items():
            for name in ("identities", "labelled_images"):
                sizes.setdefault((shots, name), set()).add(int(adaptation[name]))
    for (shots, name), values in sizes.items():
        if len(values) == 1:
            book.add(_key(prefix, "adaptation", shots, name), values.pop(), "count")


def _skipped_row(book: NumberBook, prefix: str, method: str, shots: int, reason: str, width: int) -> list[str]:
    book.add(_key(prefix, "skipped", method, _k(shots)), escape(reason), "plain")
    return [escape(method), shots_label(shots), *(["n/a"] * width)]


# ------------------------------------------------------------------------------------------ visible -> thermal
def _shift_rows(book: NumberBook, prefix: str, table: Table, rows, settings: CrossDomainSettings, shots,
                skipped: dict, shown) -> Table:
    """Fill ``table`` with one line per (row, k) of a shift's grid: the ``shown`` (pack, metric) cells, then the
    forgetting on each source pack against the row's start. Every (pack, metric) of the direction's target and
    source packs gets its key ``<prefix>.<pack>.<metric>.<row>.k<k>``, shown or not."""
    source_packs = settings.shift.source_packs
    forgetting = _forgetting(rows, settings)
    for method, k in _row_shots(settings.methods, shots):
        if method in ("lora", "zero-shot"):
            table.rules.add(len(table.rows))
        if (method, k) in skipped:
            table.rows.append(_skipped_row(book, prefix, method, k, skipped[method, k], len(shown) + len(source_packs)))
            continue
        cells = {(pack, metric): stats_cell(book, _key(prefix, pack, metric, method, _k(k)),
                                            _values(rows, method, k, pack, metric), metric)
                 for pack in (*settings.shift.target_packs, *source_packs) for metric in ("auc", "accuracy")}
        forgetting_cells = [_forgetting_cell(book, prefix, forgetting, method, k, pack) if method in START_OF
                            else "--" for pack in source_packs]
        table.rows.append([escape(method), "--" if method == "zero-shot" else shots_label(k),
                           *(cells[column] for column in shown), *forgetting_cells])
    _start_forgetting(book, prefix, rows, forgetting, source_packs, "visible-mean")
    return table


def _budget(settings: CrossDomainSettings, target: str) -> str:
    """How the grid set stage 2's step count, in words, from its settings (``target``: the validation identities'
    domain, e.g. ``thermal``)."""
    if not settings.choose_steps_on_validation:
        return (f"stage 2 ran {settings.adapt_steps} SGD steps for every $k$, fixed in advance, and the test packs "
                "were scored after them")
    *counts, last = settings.validation_step_counts
    return (f"stage 2 ran up to {settings.adapt_steps} SGD steps at a learning rate of {_rate(settings.adapt_lr)} "
            "and each run kept, per $k$, the step count "
            f"({', '.join(map(str, counts))} or {last}) with the highest AUC on the {target} validation identities; "
            "the test packs were scored once, with it")


def _rate_key(value: float) -> str:
    """A learning rate as a key component: ``lr3e4`` for 3e-4, ``lr1e3`` for 1e-3."""
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"lr{mantissa}e{-int(exponent)}"


def _rate(value: float) -> str:
    """A learning rate in LaTeX: ``$10^{-3}$``, ``$3\\times10^{-4}$``."""
    mantissa, exponent = f"{value:.0e}".split("e")
    power = f"10^{{{int(exponent)}}}"
    return f"${power}$" if mantissa == "1" else f"${mantissa}\\times{power}$"


def _thermal_table(book: NumberBook, rows, settings: CrossDomainSettings, shots, skipped: dict,
                   prefix: str = "crossdomain", table_label: str = "tab:crossdomain") -> Table:
    table = Table(label=table_label, columns="lc" + "c" * (len(THERMAL_PACKS) + len(VISIBLE_PACKS)),
                  wide=True, size=r"\scriptsize",
                  caption="Notebook 05, visible $\\rightarrow$ thermal: test AUC on the thermal packs after adapting "
                          "with $k$ labelled images per thermal training identity ($k=0$: before adaptation; "
                          "$k=\\mathrm{all}$: every thermal training image labelled); "
                          f"{_budget(settings, 'thermal')}. Forgetting on the visible packs: accuracy change in "
                          "points against the row's start. Mean $\\pm$ sd over seeds 0--2 (zero-shot: no seed).",
                  header=[["row", "$k$", *(f"AUC {label(p)}" for p in THERMAL_PACKS),
                           *(rf"$\Delta$acc. {label(p)}" for p in VISIBLE_PACKS)]])
    return _shift_rows(book, prefix, table, rows, settings, shots, skipped,
                       [(pack, "auc") for pack in THERMAL_PACKS])


def _chosen_steps_table(book: NumberBook, validation, prefix: str, table_label: str, target: str) -> Table:
    """Stage 2's step counts chosen on the ``target`` validation identities (``validation``:
    :func:`~afr.experiments.settings.crossdomain.validation_table` of the reported grids): per (row, k) each seed's
    choice and the mean validation AUC at step 0 (the start) and at the chosen step count (keys
    ``<prefix>.chosen-steps...`` and ``<prefix>.val-auc...``; ``<prefix>.chosen-steps.at-most.k<k>``: the runs that
    chose the largest candidate, of ``<prefix>.chosen-steps.runs.k<k>``)."""
    table = Table(label=table_label, columns="lcccc", size=r"\scriptsize",
                  caption=f"Notebook 05, visible $\\rightarrow$ {target}, reported grids: the stage-2 step count each "
                          f"run chose on the {target} validation identities (per seed), and the validation AUC before "
                          "adaptation (step 0, the start) and at the chosen step count, mean over seeds.",
                  header=[["row", "$k$", "chosen steps (seeds 0--2)", "val.\\ AUC, step 0", "val.\\ AUC, chosen"]])
    chosen, before = validation[validation["chosen"]], validation[validation["steps"] == 0]
    # per k: how many runs chose the largest candidate (their budget may be short), of how many
    cap = validation.groupby(["method", "seed", "shots"])["steps"].max().rename("cap")
    at_cap = chosen.join(cap, on=["method", "seed", "shots"])
    for shots, part in at_cap.groupby("shots"):
        book.add(_key(prefix, "chosen-steps", "at-most", _k(shots)), int((part["steps"] == part["cap"]).sum()), "count")
        book.add(_key(prefix, "chosen-steps", "runs", _k(shots)), len(part), "count")
    order = [method for method in METHODS if method in START_OF]
    for (method, shots), part in sorted(chosen.groupby(["method", "shots"]),
                                        key=lambda item: (shots_order(item[0][1]), order.index(item[0][0]))):
        part = part.sort_values("seed")
        start = before[(before["method"] == method) & (before["shots"] == shots)].sort_values("seed")
        for seed, steps in zip(part["seed"], part["steps"]):
            book.add(_key(prefix, "chosen-steps", method, _k(shots), f"seed{seed}"), int(steps), "count")
        table.rows.append([escape(method), shots_label(shots), " ".join(str(steps) for steps in part["steps"]),
                           stats_cell(book, _key(prefix, "val-auc", method, _k(shots), "step0"),
                                      list(start["val_auc"]), "auc"),
                           stats_cell(book, _key(prefix, "val-auc", method, _k(shots), "chosen"),
                                      list(part["val_auc"]), "auc")])
    return table


def _validation(sources: PaperSources, names):
    """The validation curves of the runs of grids ``names`` (each (method, seed) once per grid)."""
    import pandas as pd

    return pd.concat([validation_table(sources.crossdomain_records(name)) for name in names], ignore_index=True)


def _thermal_tests(book: NumberBook, rows, shots, prefix: str = "crossdomain") -> None:
    """The methods' pairs per k; LoRA against zero-shot per k; k = all against k = 4 per method (paired by seed:
    the same start)."""
    for k in shots:
        for pack in (*THERMAL_PACKS, *VISIBLE_PACKS):
            for first, second in (*PAIRS, ("lora", "zero-shot")):
                a, b = _values(rows, first, k, pack), _values(rows, second, 0 if second == "zero-shot" else k, pack,
                                                              paired=True)
                if len(a) and len(b):
                    record_test(book, _key(prefix, "ttest", pack, "auc", first, "vs", second, _k(k)),
                                paired_test(a, b), "delta")
    if ALL_SHOTS in shots and 4 in shots:
        for method in METHODS[1:]:
            for pack in THERMAL_PACKS:
                a, b = _values(rows, method, ALL_SHOTS, pack), _values(rows, method, 4, pack)
                if len(a) and len(b):
                    record_test(book, _key(prefix, "ttest", pack, "auc", method, "kall", "vs", "k4"),
                                paired_test(a, b), "delta")


def _rate_tests(book: NumberBook, rows, earlier_rows, shots, rates: tuple[float, float]) -> None:
    """Each adapted row at the reported rate against the same row at the earlier one (``rates``: the two), per k
    and thermal pack: ``crossdomain.ttest.<pack>.auc.<row>.lr3e4.vs.lr1e3.k<k>`` (paired by seed: the same
    starts)."""
    for k in shots:
        for method in METHODS[1:]:
            for pack in THERMAL_PACKS:
                a, b = _values(rows, method, k, pack), _values(earlier_rows, method, k, pack)
                if len(a) and len(b):
                    record_test(book, _key("crossdomain", "ttest", pack, "auc", method, _rate_key(rates[0]), "vs",
                                           _rate_key(rates[1]), _k(k)),
                                paired_test(a, b), "delta")


def _rate_check(book: NumberBook, summaries, rates: tuple[float, float]) -> None:
    """The validation-only check that chose stage 2's rate: per rate, the mean over (seed, k) of the best validation
    AUC (``crossdomain.lr-check.val-auc.lr<rate>``, with its number of seeds ``...seeds``), and the paired test of
    the reported rate against the earlier one (``rates``) over their common (seed, k)
    (``crossdomain.lr-check.ttest.lr3e4.vs.lr1e3``)."""
    import pandas as pd

    from afr.experiments.crossdomain_lr_check import best_validation_auc

    best = best_validation_auc(summaries)
    for rate, values in best.items():
        stats_cell(book, key("crossdomain", "lr-check", "val-auc", _rate_key(rate)), list(values.values()), "auc")
        book.add(key("crossdomain", "lr-check", "seeds", _rate_key(rate)), len({seed for seed, _ in values}), "count")
    if all(rate in best for rate in rates):
        first, second = (pd.Series({f"{seed}{shots}": value for (seed, shots), value in best[rate].items()})
                         for rate in rates)
        record_test(book, key("crossdomain", "lr-check", "ttest", _rate_key(rates[0]), "vs", _rate_key(rates[1])),
                    paired_test(first, second), "delta")


# ------------------------------------------------------------------------------------------ other shifts
def _lowquality_table(book: NumberBook, rows, settings: CrossDomainSettings, skipped: dict,
                      prefix: str = _key("crossdomain", LOWQUALITY), table_label: str = "tab:crossdomain-lowquality",
                      ) -> Table:
    """Visible -> low quality: AUC and accuracy on the target pack, forgetting on the source packs."""
    (target,), sources = settings.shift.target_packs, settings.shift.source_packs
    table = Table(label=table_label, columns="lc" + "c" * (2 + len(sources)), size=r"\scriptsize",
                  caption="Notebook 05, other shifts: visible $\\rightarrow$ low quality. Stage 1 on ORL + Yale "
                          "only; stage 2 on $k$ labelled low-quality images per low-quality training identity "
                          f"($k=0$: before adaptation); {_budget(settings, 'low-quality')}. Test AUC and accuracy "
                          "(\\%) on the low-quality pack, and the forgetting on the visible packs: accuracy change in "
                          "points against the row's start. Mean $\\pm$ sd over seeds 0--2 (zero-shot: no seed).",
                  header=[["row", "$k$", f"AUC {label(target)}", f"acc. {label(target)}",
                           *(rf"$\Delta$acc. {label(p)}" for p in sources)]])
    _shift_rows(book, prefix, table, rows, settings, settings.shots, skipped, [(target, "auc"), (target, "accuracy")])
    for k in settings.shots:
        for first, second in LOWQUALITY_PAIRS:
            a, b = _values(rows, first, k, target), _values(rows, second, 0 if second == "zero-shot" else k, target,
                                                            paired=True)
            if len(a) and len(b):
                record_test(book, _key(prefix, "ttest", target, "auc", first, "vs", second, _k(k)), paired_test(a, b),
                            "delta")
    for start in STARTS:  # what stage 1 on the source alone does to the target
        a, b = _values(rows, start, 0, target), _values(rows, "zero-shot", 0, target, paired=True)
        if len(a) and len(b):
            record_test(book, _key(prefix, "ttest", target, "auc", start, "vs", "zero-shot", "k0"), paired_test(a, b),
                        "delta")
    low, high = min(settings.shots), max(settings.shots)
    for method in settings.methods:
        a, b = _values(rows, method, high, target), _values(rows, method, low, target)
        if method in START_OF and low != high and len(a) and len(b):
            record_test(book, _key(prefix, "ttest", target, "auc", method, _k(high), "vs", _k(low)), paired_test(a, b),
                        "delta")
    return table


OUTDOOR_COLUMNS = (("wild", "auc"), ("wild", "accuracy"), ("controlled", "auc"), ("controlled", "accuracy"))
OUTDOOR_PAIRS = (("pooled-start", "zero-shot"), ("maml-start", "zero-shot"), ("maml-start", "pooled-start"))


def _outdoor_table(book: NumberBook, rows, settings: CrossDomainSettings) -> Table:
    """Indoor -> outdoor: no target training identity, so only zero-shot and the two starts (ORL + Yale only)."""
    table = Table(label="tab:crossdomain-outdoor", columns="l" + "c" * len(OUTDOOR_COLUMNS), size=r"\scriptsize",
                  caption="Notebook 05, other shifts: indoor $\\rightarrow$ outdoor. The wild (outdoor) photographs "
                          "have no training identity, so nothing is adapted: the two starts, meta-trained on the "
                          "indoor collections ORL + Yale only, are compared with the zero-shot network on the wild "
                          "(target) and controlled (source) packs. Test AUC and accuracy (\\%), mean $\\pm$ sd over "
                          "seeds 0--2 (zero-shot: no seed).",
                  header=[["row", *(f"{'AUC' if metric == 'auc' else 'acc.'} {label(pack)}"
                                    for pack, metric in OUTDOOR_COLUMNS)]])
    prefix = _key("crossdomain", OUTDOOR)
    for method in ("zero-shot", *STARTS):
        table.rows.append([escape(method), *(stats_cell(book, _key(prefix, pack, metric, method),
                                                        _values(rows, method, 0, pack, metric), metric)
                                             for pack, metric in OUTDOOR_COLUMNS)])
    table.rules.add(1)
    for pack, metric in OUTDOOR_COLUMNS:
        for first, second in OUTDOOR_PAIRS:
            a, b = _values(rows, first, 0, pack, metric), _values(rows, second, 0, pack, metric, paired=True)
            if len(a) and len(b):
                record_test(book, _key(prefix, "ttest", pack, metric, first, "vs", second), paired_test(a, b),
                            "delta" if metric == "auc" else "points")
    return table


# ------------------------------------------------------------------------------------------ supplement
def _per_seed(rows, row_shots, skipped: dict, columns, label_: str, caption: str, with_k: bool = True) -> Table:
    """One line per (row, k, seed): the value of every ``(pack, metric)`` column (AUC 4 decimals, accuracy %)."""
    table = Table(label=label_, columns="l" + "c" * (1 + with_k) + "c" * len(columns), size=r"\scriptsize",
                  caption=caption,
                  header=[["row", *(["$k$"] if with_k else []), "seed",
                           *(f"{label(p)}" if m == "auc" and all(c[1] == "auc" for c in columns)
                             else f"{'AUC' if m == 'auc' else 'acc.'} {label(p)}" for p, m in columns)]])
    for method, k in row_shots:
        table.rules.add(len(table.rows))
        chosen = rows[(rows["method"] == method) & (rows["shots"] == k)]
        head = [escape(method), *([shots_label(k)] if with_k else [])]
        if (method, k) in skipped or not len(chosen):
            table.rows.append([*head, "--", *(["n/a" if (method, k) in skipped else NOT_RUN] * len(columns))])
            continue
        for seed, group in chosen.groupby("seed"):
            values = group.set_index(["domain", "metric"])["value"]
            cells = (_seed_cell(values.get((pack, metric), float("nan")), metric) for pack, metric in columns)
            table.rows.append([*head, str(seed), *cells])
    return table


def _seed_cell(value: float, metric: str) -> str:
    return f"{100 * value:.2f}" if metric == "accuracy" else f"{value:.4f}"


#: the reported visible -> thermal grids (step count chosen on validation, learning rate 3e-4), the same grids at
#: the rate first kept (1e-3; supplementary, keys under :data:`EARLIER_RATE`) and the first ones (10 steps, fixed in
#: advance; supplementary, keys under :data:`FIXED`)
REPORTED = REPORTED_THERMAL_GRIDS
AT_EARLIER_RATE, FIRST = ("thermal_validated", "thermal_kall_validated"), ("thermal", "thermal_kall")
EARLIER_RATE, FIXED = "crossdomain-lr1e3", "crossdomain-fixed10"
#: the reported visible -> low quality grid (step count chosen on validation at 3e-4), the same grid at 1e-3 and the
#: first one (10 steps; supplementary, keys under ``crossdomain-lr1e3.to-lowquality``, ``crossdomain-fixed10...``)
LOWQUALITY_REPORTED, LOWQUALITY_AT_EARLIER_RATE, LOWQUALITY_FIRST = ("lowquality_lr3e4_validated",
                                                                     "lowquality_validated", "lowquality")


def _thermal_grids(sources: PaperSources, names: tuple[str, str]):
    """The rows, k values and skipped (row, k) of a pair of thermal grids (k = 1, 2, 4 and k = all)."""
    grids = sources.grids.crossdomain_grids
    shots = tuple(dict.fromkeys(k for name in names for k in grids[name].shots))
    skipped = {key_: reason for name in names for key_, reason in _skipped(sources.crossdomain_records(name)).items()}
    return sources.crossdomain_test(*names), grids[names[0]], shots, skipped


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    grids = sources.grids
    thermal_rows, thermal, thermal_shots, thermal_skipped = _thermal_grids(sources, REPORTED)
    earlier_rows, earlier, earlier_shots, earlier_skipped = _thermal_grids(sources, AT_EARLIER_RATE)
    first_rows, first, first_shots, first_skipped = _thermal_grids(sources, FIRST)
    lowquality_names = (LOWQUALITY_REPORTED, LOWQUALITY_AT_EARLIER_RATE, LOWQUALITY_FIRST)
    lowquality, earlier_lowquality, first_lowquality = (grids.crossdomain_grids[name] for name in lowquality_names)
    lowquality_rows, earlier_lowquality_rows, first_lowquality_rows = (sources.crossdomain_test(name)
                                                                       for name in lowquality_names)
    lowquality_skipped, earlier_lowquality_skipped, first_lowquality_skipped = (
        _skipped(sources.crossdomain_records(name)) for name in lowquality_names)
    outdoor, outdoor_rows = grids.crossdomain_outdoor, sources.crossdomain_test("outdoor")

    tables = {"crossdomain": _thermal_table(book, thermal_rows, thermal, thermal_shots, thermal_skipped),
              "crossdomain_lowquality": _lowquality_table(book, lowquality_rows, lowquality, lowquality_skipped),
              "crossdomain_outdoor": _outdoor_table(book, outdoor_rows, outdoor)}
    _thermal_tests(book, thermal_rows, thermal_shots)
    _thermal_tests(book, earlier_rows, earlier_shots, EARLIER_RATE)
    _thermal_tests(book, first_rows, first_shots, FIXED)
    rates = (thermal.adapt_lr, earlier.adapt_lr)
    _rate_tests(book, thermal_rows, earlier_rows, thermal_shots, rates)
    _rate_check(book, sources.crossdomain_lr_check, rates)
    _adaptation_sizes(book, "crossdomain", *(sources.crossdomain_records(name) for name in REPORTED))
    _adaptation_sizes(book, _key("crossdomain", LOWQUALITY), sources.crossdomain_records(LOWQUALITY_REPORTED))
    starts = {run: tag for run, tag in sources.crossdomain_tags(REPORTED[0]).items() if run[0] in STARTS}
    meta_training_costs(book, "crossdomain", sources.every_record("crossdomain", starts))

    packs = (*THERMAL_PACKS, *VISIBLE_PACKS)
    shift_packs = (*lowquality.shift.target_packs, *lowquality.shift.source_packs)
    supplementary = {
        "crossdomain_seeds": _per_seed(
            thermal_rows, _row_shots(METHODS, thermal_shots), thermal_skipped, [(p, "auc") for p in packs],
            "tab:supp-crossdomain", "Notebook 05, visible $\\rightarrow$ thermal, per seed: test AUC on every pack "
            "($k$ = all: every thermal training image labelled; stage-2 step count chosen on validation)."),
        "crossdomain_chosen": _chosen_steps_table(book, _validation(sources, REPORTED), "crossdomain",
                                                  "tab:supp-crossdomain-chosen", "thermal"),
        "crossdomain_lr1e3": _thermal_table(book, earlier_rows, earlier, earlier_shots, earlier_skipped,
                                            EARLIER_RATE, "tab:supp-crossdomain-lr1e3"),
        "crossdomain_fixed10": _thermal_table(book, first_rows, first, first_shots, first_skipped, FIXED,
                                              "tab:supp-crossdomain-fixed10"),
        "crossdomain_lowquality_seeds": _per_seed(
            lowquality_rows, _row_shots(lowquality.methods, lowquality.shots), lowquality_skipped,
            [(p, m) for p in shift_packs for m in ("auc", "accuracy")], "tab:supp-crossdomain-lowquality",
            "Notebook 05, visible $\\rightarrow$ low quality (stage 1 on ORL + Yale only), per seed: test AUC and "
            "accuracy (\\%) on the low-quality pack and the visible packs (stage-2 step count chosen on "
            "validation)."),
        "crossdomain_lowquality_chosen": _chosen_steps_table(
            book, _validation(sources, (LOWQUALITY_REPORTED,)), _key("crossdomain", LOWQUALITY),
            "tab:supp-crossdomain-lowquality-chosen", "low quality"),
        "crossdomain_lowquality_lr1e3": _lowquality_table(
            book, earlier_lowquality_rows, earlier_lowquality, earlier_lowquality_skipped,
            _key(EARLIER_RATE, LOWQUALITY), "tab:supp-crossdomain-lowquality-lr1e3"),
        "crossdomain_lowquality_fixed10": _lowquality_table(
            book, first_lowquality_rows, first_lowquality, first_lowquality_skipped, _key(FIXED, LOWQUALITY),
            "tab:supp-crossdomain-lowquality-fixed10"),
        "crossdomain_outdoor_seeds": _per_seed(
            outdoor_rows, [("zero-shot", 0), *((start, 0) for start in STARTS)], {}, OUTDOOR_COLUMNS,
            "tab:supp-crossdomain-outdoor", "Notebook 05, indoor $\\rightarrow$ outdoor (starts meta-trained on "
            "ORL + Yale only), per seed: test AUC and accuracy (\\%) on the wild and controlled packs.",
            with_k=False),
    }
    return PartOutput(tables=tables, supplementary=supplementary)
