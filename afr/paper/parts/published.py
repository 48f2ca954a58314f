"""FRoundation's published numbers, quoted (never measured here), beside this work's full-profile runs.

The quoted values come from :data:`afr.experiments.baseline.PUBLISHED_FROUNDATION` (Chettaoui, Damer and Boutros,
arXiv:2410.23831), the same constant notebook 02 shows as reference rows. The full-profile rows (CASIA-WebFace
training, the five InsightFace packs) are read from the tables' full-profile test rows
(:meth:`~afr.paper.sources.PaperSources.full_profile_test`): verification accuracy per benchmark and their average,
mean ± sd over seeds, one row per (backbone, method, CASIA-WebFace identities). The rows of FRoundation's recipe
(:data:`FULL_PROFILE_ROWS`) are always listed and read "not run" where no run is recorded; any other measured
combination is listed after them. Notebook 05's full profile (k = 10, 50, 100 on the thermal target, forgetting on
the five packs) gives a second table, ``full_fewshot``, written only when such runs are recorded.
"""
from __future__ import annotations

import math

from afr.analysis.committed import BENCHMARK_TABLES
from afr.data.benchmarks import FULL_BENCHMARKS
from afr.experiments.settings.baseline import PUBLISHED_FROUNDATION
from afr.paper.latex import NOT_RUN, Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import PartOutput, key, stats_cell, unseeded

__all__ = ["FULL_PROFILE_ROWS", "build"]

SOURCE = r"quoted: Chettaoui et al.~\cite{chettaoui2024froundation}"
#: the full-profile rows always listed (FRoundation's recipe): (experiment, backbone, method, CASIA-WebFace
#: identities; None: no training data)
FULL_PROFILE_ROWS = (("baseline", "dinov2-vits14", "zero-shot", None), ("baseline", "dinov2-vits14", "lora", 1000),
                     ("baseline", "clip-vitb16", "zero-shot", None), ("baseline", "clip-vitb16", "lora", 1000),
                     ("dalora", "dinov2-vits14", "dalora-classifier", 1000))
BACKBONE_LABELS = {"dinov2-vits14": "DINOv2 ViT-S/14", "clip-vitb16": "CLIP ViT-B/16"}
METHOD_LABELS = {"zero-shot": "no fine-tuning (zero-shot)", "lora": "LoRA", "lora-matched": "LoRA (matched)",
                 "dalora-classifier": "DA-LoRA", "dalora-unsupervised": "DA-LoRA (unsupervised router)",
                 "maml": "MAML"}
MARGIN_LABELS = {"cosface": "CosFace", "arcface": "ArcFace"}
BENCHMARK_LABELS = {"lfw": "LFW", "cfp_fp": "CFP-FP", "agedb_30": "AgeDB-30", "calfw": "CALFW", "cplfw": "CPLFW"}
#: what the text says of this work's full-profile rows (``\\result{published.full.statement}``)
STATEMENT_NOT_RUN = "were not run, so we make no claim about them"
STATEMENT_MEASURED = (r"are the lower rows of Table~\ref{tab:published} where recorded (mean $\pm$ sd over seeds; "
                      r"``not run'' elsewhere)")
#: the margin of a run whose table and record do not name one (the default of every experiment's settings)
DEFAULT_MARGIN = "cosface"


def _setting(experiment: str, method: str, margin: str) -> str:
    """``LoRA + CosFace``; notebook 03's own zero-shot and LoRA rows (its DA-LoRA comparison) say so."""
    text = METHOD_LABELS.get(method, method)
    text = text if method == "zero-shot" else f"{text} + {MARGIN_LABELS.get(margin, margin)}"
    return text + (" (notebook 03)" if experiment == "dalora" and not method.startswith("dalora") else "")


def _identities_part(identities: float | None) -> str:
    """A row's identities as a key component: ``none`` (zero-shot), ``all`` (every identity), ``ids<n>``."""
    return "none" if identities is None else "all" if math.isnan(identities) else f"ids{int(identities)}"


def _row_name(experiment: str, backbone: str, method: str, identities: float | None,
              margin: str = DEFAULT_MARGIN) -> str:
    """One row of the table: runs of another experiment (notebook 02 or 03), backbone, method, identity count or
    margin are never pooled."""
    return f"{experiment}|{backbone}|{method}|{_identities_part(identities)}|{'' if method == 'zero-shot' else margin}"


def _row_of(name: str) -> tuple[str, str, str, float | None, str]:
    experiment, backbone, method, part, margin = name.split("|")
    identities = None if part == "none" else math.nan if part == "all" else float(part[3:])
    return experiment, backbone, method, identities, margin


def _full_rows(sources):
    """The accuracy rows of the five benchmarks from full-profile runs, with ``identities`` (None for zero-shot:
    it has no training data) and ``margin``; a seed recorded twice in one row keeps its last run."""
    import pandas as pd

    frames = []
    for table in BENCHMARK_TABLES:
        rows = sources.full_profile_test(table, from_records=("num_identities", "margin"))
        rows = rows[(rows["metric"] == "accuracy") & rows["domain"].isin(FULL_BENCHMARKS)]
        if len(rows):
            frames.append(rows.assign(experiment=table))  # the table says which notebook ran it
    if not frames:
        return None
    rows = pd.concat(frames, ignore_index=True)
    rows["margin"] = rows["margin"].fillna(DEFAULT_MARGIN)
    rows["group"] = [_row_name(experiment, backbone, method, None if method == "zero-shot" else identities, margin)
                     for experiment, backbone, method, identities, margin in
                     zip(rows["experiment"], rows["backbone"], rows["method"], rows["num_identities"], rows["margin"])]
    return rows.drop_duplicates(["group", "seed", "domain"], keep="last")


def _benchmark_average(rows):
    """Per seed, the mean over the five benchmarks (a seed without all five has none)."""
    complete = rows.groupby("seed").filter(lambda seed: set(seed["domain"]) >= set(FULL_BENCHMARKS))
    return complete[complete["domain"].isin(FULL_BENCHMARKS)].groupby("seed")["value"].mean()


def _full_cells(book: NumberBook, prefix: tuple, rows, zero_shot: bool) -> list[str]:
    """The five benchmark cells and their average (mean over the benchmarks per seed, then over seeds); the
    zero-shot backbone's copies of one value are one value (:func:`~afr.paper.parts.common.unseeded`)."""
    chosen = unseeded if zero_shot else (lambda values: values)
    cells = [stats_cell(book, key(*prefix, benchmark, "accuracy"),
                        chosen(rows.loc[rows["domain"] == benchmark, "value"]), "accuracy")
             for benchmark in FULL_BENCHMARKS]
    cells.append(stats_cell(book, key(*prefix, "average", "accuracy"), chosen(_benchmark_average(rows)), "accuracy"))
    return cells


def _published_table(sources, book: NumberBook) -> Table:
    benchmarks = [BENCHMARK_LABELS[name] for name in FULL_BENCHMARKS]
    table = Table(label="tab:published", columns="llll" + "c" * (len(FULL_BENCHMARKS) + 1), wide=True,
                  caption="Foundation models for face recognition on the standard benchmarks: verification accuracy "
                          "(\\%) on LFW, CFP-FP, AgeDB-30, CALFW and CPLFW and their average. The upper rows are "
                          "\\emph{published numbers, quoted} from FRoundation (averages only), not measured in this "
                          "work; the lower rows are this work's full profile (CASIA-WebFace training), mean $\\pm$ sd "
                          "over seeds where recorded, \\emph{not run} where no run is recorded.",
                  header=[["model", "setting", "training data", "source", *benchmarks, "avg. acc."]])
    for index, row in enumerate(PUBLISHED_FROUNDATION):
        value = book.add(key("published", "froundation", index, "average"), row["average"] / 100, "accuracy")
        book.add(key("published", "froundation", index, "model"), escape(row["model"]), "plain")
        table.rows.append([escape(row["model"]), escape(row["setting"]), escape(row["training_data"]), SOURCE,
                           *["--"] * len(FULL_BENCHMARKS), value])
    table.rules.add(len(table.rows))
    rows = _full_rows(sources)
    measured = {} if rows is None else {name: group for name, group in rows.groupby("group", sort=False)}
    listed = [_row_name(*row) for row in FULL_PROFILE_ROWS]
    for name in listed + sorted(set(measured) - set(listed)):
        experiment, backbone, method, identities, margin = _row_of(name)
        group = measured.get(name)
        prefix = ("published", "full", experiment, backbone, _identities_part(identities), method,
                  *((margin,) if margin not in ("", DEFAULT_MARGIN) else ()))
        if identities is None:
            data = "none"
        elif math.isnan(identities):
            data = "CASIA-WebFace, all ids"
        else:
            data = f"CASIA-WebFace {book.add(key(*prefix, 'identities'), identities, 'count')} ids"
        cells = [rf"\multicolumn{{{len(FULL_BENCHMARKS) + 1}}}{{c}}{{{NOT_RUN}}}"] if group is None else \
            _full_cells(book, prefix, group, zero_shot=identities is None)
        table.rows.append([escape(BACKBONE_LABELS.get(backbone, backbone)),
                           escape(_setting(experiment, method, margin)), data, "this work", *cells])
    book.add("published.full-benchmarks.count", len(FULL_BENCHMARKS), "count")
    book.add("published.full.statement", STATEMENT_MEASURED if measured else STATEMENT_NOT_RUN, "plain")
    return table


def _fewshot_table(sources, book: NumberBook) -> Table | None:
    """Notebook 05's full profile: accuracy on the target packs and the mean over the five benchmarks (forgetting)
    per (backbone, method, k), mean ± sd over seeds; None when no full-profile run is recorded."""
    rows = sources.full_profile_test("crossdomain")
    rows = rows[rows["metric"] == "accuracy"] if len(rows) else rows
    if not len(rows):
        return None
    targets = sorted(set(rows["domain"]) - set(FULL_BENCHMARKS))
    table = Table(label="tab:full-fewshot", columns="lll" + "c" * (len(targets) + 1),
                  caption="Notebook 05's full profile: a DINOv2/CLIP backbone trained on CASIA-WebFace (stage 1), "
                          "then adapted with $k$ labelled target images per identity (stage 2). Verification accuracy "
                          "(\\%) on the target packs and averaged over the five benchmarks (forgetting), mean $\\pm$ "
                          "sd over seeds; $k$ = 0: before adaptation.",
                  header=[["model", "method", "$k$", *(f"acc. {escape(name)}" for name in targets),
                           "avg. acc. 5 benchmarks"]])
    rows = rows.drop_duplicates(["backbone", "method", "shots", "seed", "domain"], keep="last")
    # zero-shot, then the starts (k = 0), then each adapted method over its k ("all" last)
    groups = sorted(rows.groupby(["backbone", "method", "shots"]),
                    key=lambda item: (item[0][0], item[0][1] != "zero-shot", item[0][2] != 0, item[0][1],
                                      math.inf if item[0][2] < 0 else item[0][2]))
    for (backbone, method, shots), group in groups:
        shots_text = "all" if shots < 0 else str(int(shots))
        prefix = ("full-fewshot", backbone, method, "kall" if shots < 0 else f"k{int(shots)}")
        chosen = unseeded if method == "zero-shot" else (lambda values: values)
        cells = [stats_cell(book, key(*prefix, target, "accuracy"),
                            chosen(group.loc[group["domain"] == target, "value"]), "accuracy") for target in targets]
        cells.append(stats_cell(book, key(*prefix, "benchmarks", "accuracy"), chosen(_benchmark_average(group)),
                                "accuracy"))
        table.rows.append([escape(BACKBONE_LABELS.get(backbone, backbone)), escape(METHOD_LABELS.get(method, method)),
                           shots_text, *cells])
    return table


def build(sources, book: NumberBook) -> PartOutput:
    tables = {"published": _published_table(sources, book)}
    fewshot = _fewshot_table(sources, book)
    if fewshot is not None:
        tables["full_fewshot"] = fewshot
    return PartOutput(tables=tables)
