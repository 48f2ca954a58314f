"""Notebook 03: the DA-LoRA grid (mean ± sd over seeds per method and test domain), paired t-tests, router gates."""
from __future__ import annotations

from afr.experiments.settings.dalora import METHODS
from afr.paper.latex import NOT_RUN, Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import KIND_OF_METRIC, PartOutput, key, label, seed_span, stats_cell, unseeded
from afr.paper.sources import PaperSources
from afr.paper.stats import paired_test, record_test, seed_stats

__all__ = ["build"]

TEST_DOMAINS = ("controlled", "wild", "thermal", "lowquality")
ROWS = ("zero-shot", *METHODS)
#: the rows every other trained row is compared with (paired over seeds)
TESTED = ("dalora-classifier", "dalora-oracle")
METRICS = ("auc", "accuracy", "eer")


def _values(rows, method: str, domain: str, metric: str):
    chosen = rows[(rows["method"] == method) & (rows["domain"] == domain) & (rows["metric"] == metric)]
    values = chosen.set_index("seed")["value"].sort_index()
    return unseeded(values) if method == "zero-shot" else values


def _trained_seeds(rows) -> list[int]:
    return sorted(rows.loc[rows["method"] != "zero-shot", "seed"].unique()) if len(rows) else []


def _grid_table(sources: PaperSources, book: NumberBook, rows, parameters: dict[str, int]) -> Table:
    table = Table(label="tab:dalora", columns="lr" + "c" * len(TEST_DOMAINS), wide=True,
                  caption=f"Notebook 03, test packs: mean $\\pm$ sd over {seed_span(_trained_seeds(rows))} "
                          "(zero-shot: no seed). Top: AUC; "
                          "bottom: accuracy in \\% (10-fold protocol). All rows train 4 epochs on the same data "
                          "with the same losses and sampler and differ in the adapter only.",
                  header=[["row", "adapter params", *(label(d) for d in TEST_DOMAINS)]])
    for block, metric in enumerate(("auc", "accuracy")):
        table.rules.add(len(table.rows))
        table.rows.append([r"\multicolumn{" + str(2 + len(TEST_DOMAINS)) + r"}{l}{\emph{" +
                           ("AUC" if metric == "auc" else "accuracy (\\%)") + "}}"])
        for method in ROWS:
            cells = [stats_cell(book, key("dalora", domain, metric, method), _values(rows, method, domain, metric),
                                KIND_OF_METRIC[metric]) for domain in TEST_DOMAINS]
            params = parameters.get(method)
            table.rows.append([escape(method), book.add(key("dalora", "params", method), params, "count")
                               if params is not None else NOT_RUN, *cells])
    for method in ROWS:  # numbers the text may quote but the table does not show
        for domain in TEST_DOMAINS:
            stats_cell(book, key("dalora", domain, "eer", method), _values(rows, method, domain, "eer"), "eer")
    return table


def _tests(book: NumberBook, rows) -> Table:
    """Paired t-tests over seeds: each TESTED row against every other trained row; differences vs zero-shot."""
    seeds = _trained_seeds(rows)
    table = Table(label="tab:dalora-tests", columns="ll" + "c" * len(TEST_DOMAINS),
                  caption=f"Notebook 03: paired t-tests over {seed_span(seeds)} (scipy \\texttt{{ttest\\_rel}}, "
                          f"{max(len(seeds) - 1, 0)} degrees of freedom): mean difference (AUC; accuracy in points) and "
                          "two-sided $p$.",
                  header=[["comparison", "metric", *(label(d) for d in TEST_DOMAINS)]])
    for tested in TESTED:
        for other in (m for m in METHODS if m != tested):
            for metric in ("auc", "accuracy"):
                cells = []
                for domain in TEST_DOMAINS:
                    test = paired_test(_values(rows, tested, domain, metric), _values(rows, other, domain, metric))
                    prefix = key("dalora", "ttest", domain, metric, tested, "vs", other)
                    record_test(book, prefix, test, "delta" if metric == "auc" else "points")
                    cells.append(f"{book[prefix + '.diff'].text} ($p$ {book[prefix + '.p'].text})"
                                 if test.n else NOT_RUN)
                if tested == "dalora-classifier" and other in ("lora", "lora-matched", "lora-distill"):
                    table.rows.append([f"{escape(tested)} $-$ {escape(other)}", metric, *cells])
    for method in METHODS:
        for metric in METRICS:
            for domain in TEST_DOMAINS:
                zero, values = _values(rows, "zero-shot", domain, metric), _values(rows, method, domain, metric)
                if len(zero) and len(values):
                    book.add(key("dalora", "delta", domain, metric, method, "vs", "zero-shot"),
                             seed_stats(values).mean - seed_stats(zero).mean,
                             "points" if metric == "accuracy" else "delta")
    return table


def _gates(book: NumberBook, records) -> Table | None:
    """Share of each test pack's images whose largest gate is each expert (classifier gating), mean over seeds."""
    gates = {seed: record["gates"]["argmax"] for (method, seed), record in records.items()
             if method == "dalora-classifier" and record.get("gates")}
    if not gates:
        return None
    packs = list(next(iter(gates.values())))
    experts = list(next(iter(gates.values()))[packs[0]])
    table = Table(label="tab:dalora-gates", columns="l" + "c" * len(experts),
                  caption="Notebook 03, DA-LoRA with the learned router: share (\\%) of each test pack's images whose "
                          f"largest gate is each expert, mean $\\pm$ sd over {seed_span(gates)}.",
                  header=[["test pack", *(f"{escape(e)} expert" for e in experts)]])
    for pack in packs:
        table.rows.append([label(pack), *(stats_cell(book, key("dalora", "gates", "argmax", pack, expert),
                                                     [gates[seed][pack][expert] for seed in sorted(gates)], "share")
                                          for expert in experts)])
    return table


def _search(sources: PaperSources, book: NumberBook) -> None:
    search = sources.dalora_search()
    for _, row in search.iterrows():
        book.add(key("dalora", "search", row["family"], f"{row['lr']:.0e}", "val-auc"), row["val_auc_mean"], "auc")
    for name, lr in sources.dalora_learning_rates().items():
        book.add(key("dalora", "lr", name), lr, "lr")


def _per_seed(rows) -> Table:
    table = Table(label="tab:supp-dalora", columns="lc" + "c" * 2 * len(TEST_DOMAINS), size=r"\scriptsize",
                  caption="Notebook 03 per seed: test AUC and accuracy (\\%) of every row.",
                  header=[["row", "seed", *(f"AUC {label(d)}" for d in TEST_DOMAINS),
                           *(f"acc. {label(d)}" for d in TEST_DOMAINS)]])
    for method in ROWS:
        table.rules.add(len(table.rows))
        for seed in sorted(rows.loc[rows["method"] == method, "seed"].unique()):
            chosen = rows[(rows["method"] == method) & (rows["seed"] == seed)]
            values = chosen.set_index(["metric", "domain"])["value"]
            table.rows.append([escape(method), str(seed),
                               *(f"{values.get(('auc', d), float('nan')):.4f}" for d in TEST_DOMAINS),
                               *(f"{100 * values.get(('accuracy', d), float('nan')):.2f}" for d in TEST_DOMAINS)])
    return table


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    rows = sources.dalora_test()
    records = sources.dalora_records()
    parameters = {"zero-shot": 0}
    for (method, _), record in records.items():
        parameters[method] = record["train"]["adapter_parameters"]
        book.add("dalora.params.backbone", record["train"]["backbone_parameters"], "count")
    _search(sources, book)
    book.add("dalora.seeds", len(_trained_seeds(rows)), "count")
    tables = {"dalora": _grid_table(sources, book, rows, parameters), "dalora_tests": _tests(book, rows)}
    gates = _gates(book, records)
    if gates is None and sources.excluded.get("dalora"):  # every gated run flagged (afr.experiments.health)
        gates = Table(label="tab:dalora-gates", columns="l",
                      caption="Notebook 03, DA-LoRA with the learned router: gates of the test packs.",
                      header=[["gates"]], rows=[["flagged: every DA-LoRA classifier run failed the training-health "
                                                 r"rules (Table~\ref{tab:health})"]])
    if gates is not None:
        tables["dalora_gates"] = gates
    return PartOutput(tables=tables, supplementary={"dalora_seeds": _per_seed(rows)})
