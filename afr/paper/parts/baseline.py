"""Notebook 02: zero-shot vs LoRA on the test packs (one seed) and the validation search that chose the recipe."""
from __future__ import annotations

from afr.paper.latex import NOT_RUN, Table
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import KIND_OF_METRIC, PartOutput, key, label, stats_cell
from afr.paper.sources import PaperSources
from afr.paper.stats import seed_stats

__all__ = ["build"]

TEST_DOMAINS = ("controlled", "wild", "thermal", "lowquality")
METHODS = ("zero-shot", "lora")


def _test_table(sources: PaperSources, book: NumberBook) -> Table:
    rows = sources.baseline_test()
    table = Table(label="tab:baseline", columns="lcccccc",
                  caption="Notebook 02, test packs scored once (one seed): the pretrained dlib ResNet-29 without "
                          "adaptation (zero-shot) and with LoRA ($r=8$) trained 4 epochs on the embedded training "
                          "pack with the fitted recipe (centred embeddings, class-mean centres, no augmentation) at "
                          "the learning rate chosen on validation (Table~\\ref{tab:baseline-search}). Accuracy in "
                          "\\% (mean $\\pm$ sd over the 10 folds of the InsightFace protocol).",
                  header=[["test domain", "acc. zero-shot", "acc. LoRA", "AUC zero-shot", "AUC LoRA",
                           "EER zero-shot", "EER LoRA"]])
    for domain in TEST_DOMAINS:
        cells = {}
        for method in METHODS:
            chosen = rows[(rows["method"] == method) & (rows["domain"] == domain)]
            for metric in ("accuracy", "accuracy_std", "auc", "eer"):
                values = chosen.loc[chosen["metric"] == metric, "value"]
                cells[method, metric] = stats_cell(book, key("baseline", domain, metric, method), values,
                                                   KIND_OF_METRIC[metric])
            if (method, "accuracy") in cells and cells[method, "accuracy"] != NOT_RUN:
                cells[method, "accuracy"] += rf" $\pm$ {cells[method, 'accuracy_std']}"
        for metric in ("auc", "accuracy", "eer"):
            gain = [rows[(rows["method"] == "lora") & (rows["domain"] == domain) & (rows["metric"] == metric)]["value"],
                    rows[(rows["method"] == "zero-shot") & (rows["domain"] == domain) & (rows["metric"] == metric)]["value"]]
            if all(len(values) == 1 for values in gain):
                book.add(key("baseline", "delta", domain, metric, "lora", "vs", "zero-shot"),
                         float(gain[0].iloc[0] - gain[1].iloc[0]), "points" if metric == "accuracy" else "delta")
        table.rows.append([label(domain), *(cells[m, "accuracy"] for m in METHODS), *(cells[m, "auc"] for m in METHODS),
                           *(cells[m, "eer"] for m in METHODS)])
    record = sources.record("", sources.baseline_tag)
    if record is not None:
        trainable, backbone = record["train"]["lora_trainable_parameters"], record["train"]["backbone_parameters"]
        book.add("baseline.params.lora", trainable, "count")
        book.add("baseline.params.backbone", backbone, "count")
        book.add("baseline.params.lora-share", trainable / backbone, "accuracy")
        book.add("baseline.train.records", record["train"]["records"], "count")
        book.add("baseline.train.identities", record["train"]["identities"], "count")
        book.add("baseline.wall-seconds", record["wall_seconds"], "count")
    return table


def _search_table(sources: PaperSources, book: NumberBook) -> Table:
    rows = sources.baseline_search()
    domains = ("controlled", "thermal", "lowquality")
    table = Table(label="tab:baseline-search", columns="llcccc",
                  caption="Notebook 02's validation search on the fitted recipe (test packs not scored): validation "
                          "AUC of the last epoch, mean over seeds 0 and 1; the last column is the mean over the three "
                          "validation packs ($\\pm$ sd over seeds). Rule fixed before the runs: the highest mean.",
                  header=[["class centres", "LoRA lr", *(f"val. AUC {label(d)}" for d in domains), "mean"]])
    means = {}
    for init, lr in sources.grids.baseline_search:
        # astype(bool): on a table without search rows the mask is an empty object Series, which pandas would take
        # for a list of columns (and then KeyError: 'domain')
        chosen = rows[rows["candidate"].map(lambda candidate: candidate == (init, lr)).astype(bool)]
        prefix = ("baseline", "search", init, f"{lr:.0e}")
        cells = [stats_cell(book, key(*prefix, domain), chosen.loc[chosen["domain"] == domain, "value"], "auc")
                 for domain in domains]
        per_seed = chosen.groupby("seed")["value"].mean()
        cells.append(stats_cell(book, key(*prefix, "mean"), per_seed, "auc"))
        if len(per_seed):
            means[init, lr] = seed_stats(per_seed).mean
        table.rows.append([init, book.add(key(*prefix, "lr"), lr, "lr"), *cells])
    if means:
        (init, lr), _ = max(means.items(), key=lambda item: item[1])
        book.add("baseline.search.chosen.head-init", init, "plain")
        book.add("baseline.search.chosen.lr", lr, "lr")
        ranked = sorted(means.values(), reverse=True)
        if len(ranked) > 1:
            book.add("baseline.search.chosen.margin", ranked[0] - ranked[1], "delta")
    return table


def _search_supplement(sources: PaperSources) -> Table:
    rows = sources.baseline_search()
    table = Table(label="tab:supp-baseline-search", columns="llccccc",
                  caption="Notebook 02's validation search per seed: validation AUC of the last epoch.",
                  header=[["class centres", "LoRA lr", "seed", "controlled", "thermal", "low quality", "mean"]])
    for (init, lr), group in rows.groupby("candidate", sort=False):
        for seed, runs in group.groupby("seed"):
            values = runs.set_index("domain")["value"]
            table.rows.append([init, f"{lr:g}", str(seed), *(f"{values.get(d, float('nan')):.4f}" for d in
                                                            ("controlled", "thermal", "lowquality")),
                               f"{values.mean():.4f}"])
    return table


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    return PartOutput(tables={"baseline": _test_table(sources, book), "baseline_search": _search_table(sources, book)},
                      supplementary={"baseline_search_seeds": _search_supplement(sources)})
