"""Training health (:mod:`afr.experiments.health`): the committed grids' runs that did not fit their training data,
collapsed or diverged. They are in no mean of the paper (:meth:`~afr.paper.sources.PaperSources.healthy`); this part,
run after the others, counts what each table left out and lists the runs (``tables/health.tex``); a number of the text
whose runs were all flagged reads "excluded" (:func:`mark_excluded_keys`)."""
from __future__ import annotations

import re
from pathlib import Path

from afr.experiments.health import NOT_FITTED, STATUSES
from afr.paper.latex import NOT_RUN, Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import PartOutput, key
from afr.paper.sources import EXPERIMENT_TABLES, PaperSources

__all__ = ["EXCLUDED_TEXT", "FLAGGED_CELL", "build", "mark_flagged_cells", "mark_excluded_keys", "text_keys"]


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    table = Table(label="tab:health", columns="llll",
                  caption="Runs of the committed grids left out of every mean: not fitted (final training margin loss "
                          f"above {NOT_FITTED:g} $\\times$ its uniform-logit value), collapsed (a test or validation "
                          "accuracy or AUC at chance, $\\le 0.55$) or diverged (meta-loss rising, or at its uniform "
                          "value). Rules of \\texttt{afr.experiments.health}, fixed in advance.",
                  header=[["experiment", "run", "status", "reason"]], size=r"\scriptsize")
    total = 0
    for name in EXPERIMENT_TABLES:
        excluded = sources.excluded.get(name, {})
        total += len(excluded)
        book.add(key("health", name, "excluded"), len(excluded), "count")
        for status in STATUSES[:-1]:
            book.add(key("health", name, status), sum(health.status == status for health in excluded.values()),
                     "count")
        for tag, health in sorted(excluded.items()):
            table.rows.append([escape(name), escape(tag), escape(health.status), escape(health.reasons[0])])
    book.add(key("health", "excluded"), total, "count")
    if not table.rows:
        table.rows.append([r"\multicolumn{4}{c}{no run flagged}"])
    return PartOutput(tables={"health": table})


#: what a number of the text reads when every run behind it is flagged
EXCLUDED_TEXT = r"\textbf{[excluded: flagged runs]}"


def text_keys(paper: Path) -> set[str]:
    """The result keys the paper's own LaTeX (``paper/**/*.tex`` outside ``generated/``) asks for."""
    keys: set[str] = set()
    for path in sorted(paper.rglob("*.tex")) if paper.is_dir() else ():
        if "generated" in path.relative_to(paper).parts:
            continue
        text = re.sub(r"(?<!\\)%.*", "", path.read_text())  # LaTeX comments are not text
        keys |= set(re.findall(r"\\result\{([^}]*)\}", text))
        keys |= {f"{prefix}.{end}" for prefix in re.findall(r"\\resultpm\{([^}]*)\}", text) for end in ("mean", "sd")}
    return keys


def mark_excluded_keys(book: NumberBook, sources: PaperSources, paper: Path) -> list[str]:
    """A number the text quotes that this generation no longer has, because the runs behind it were flagged, reads
    :data:`EXCLUDED_TEXT` (a visible mark in the PDF, not a number): the key's experiment (its first component) left
    flagged runs out. Other unknown keys stay unknown (LaTeX stops on them). Returns the keys so marked."""
    marked = []
    for name in sorted(text_keys(paper)):
        if name not in book and sources.excluded.get(name.split(".", 1)[0]):
            book.add(name, EXCLUDED_TEXT, "plain")
            marked.append(name)
    return marked


#: a cell of a results table whose runs were all flagged (no healthy run left to average)
FLAGGED_CELL = "flagged"


def mark_flagged_cells(name: str, output: PartOutput, sources: PaperSources) -> None:
    """In the tables of the part reading ``tables/<name>.csv``, when that part left flagged runs out, a cell that would
    read "not run" reads :data:`FLAGGED_CELL` (the committed grids are fully recorded — ``tests/test_paper.py`` —
    so an empty cell of theirs is one whose runs were all flagged), and the caption says so."""
    excluded = sources.excluded.get(name)
    if not excluded:
        return
    for table in (*output.tables.values(), *output.supplementary.values()):
        marked = False
        for row in table.rows:
            for index, cell in enumerate(row):
                if cell == NOT_RUN:
                    row[index] = FLAGGED_CELL
                    marked = True
        if marked:
            table.caption += (f" ``{FLAGGED_CELL}'': every run behind the cell failed the training-health rules "
                              r"(Table~\ref{tab:health}); no mean is given.")
