"""Write everything the paper's LaTeX reads from the committed results: ``paper/generated/``.

``write_generated(results=..., figures=..., out=...)`` reads only ``results`` (tables, records, benchmark
statistics, notebook 07's ``analysis/*.json``) — it trains and scores nothing — and writes, atomically:

* ``numbers.tex`` (+ ``numbers.json``): every number the text quotes, as ``\\result{key}``;
* ``tables/<name>.tex``: the paper's tables; ``supplementary/<name>.tex``: the per-seed tables;
* ``figures.tex``: one macro per figure of ``figures`` (a missing file renders a framed note);
* ``figures/architecture.pdf`` and ``.png``: the method's diagram (matplotlib).

Defaults resolve the project's folders (``$AFR_RESULTS`` / ``$AFR_FIGURES`` override them); the output defaults to
``paper/generated`` beside the results folder, so a scratch results folder (``make test``) never writes into the
committed paper. Files whose content did not change are not rewritten.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from afr.experiments.grids import CommittedGrids
from afr.io import atomic_write_text
from afr.paper.architecture import save_architecture
from afr.paper.figures import figures_tex
from afr.paper.numbers import NumberBook
from afr.paper.parts import (ablations, analysis, baseline, benchmark, crossdomain, dalora, health, maml, published,
                             recipe)
from afr.paper.sources import load_sources
from afr.paths import PROJECT_ROOT, figures_root, results_root, shown_path

__all__ = ["GeneratedPaper", "PARTS", "build_generated", "default_output", "regenerate_paper", "write_generated"]

#: the parts in the paper's order (``health`` last: it counts the flagged runs the others left out)
PARTS = (benchmark, baseline, recipe, dalora, maml, crossdomain, ablations, published, analysis, health)


@dataclass
class GeneratedPaper:
    """What one generation produced: the numbers and the text of every generated file (relative path -> text)."""

    numbers: NumberBook
    files: dict[str, str] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)


def default_output(results: Path) -> Path:
    """``paper/generated`` beside the results folder (the project's own paper for the project's results)."""
    return results.resolve().parent / "paper" / "generated"


def build_generated(results: str | Path, figures: str | Path, out: str | Path,
                    grids: CommittedGrids | None = None) -> GeneratedPaper:
    """Every generated file's text, in memory (nothing written)."""
    sources = load_sources(results, grids)
    book = NumberBook()
    paper = GeneratedPaper(book)
    for part in PARTS:
        output = part.build(sources, book)
        health.mark_flagged_cells(part.__name__.rsplit(".", 1)[1], output, sources)
        for name, table in output.tables.items():
            paper.files[f"tables/{name}.tex"] = table.to_tex()
        for name, table in output.supplementary.items():
            paper.files[f"supplementary/{name}.tex"] = table.to_tex()
    health.mark_excluded_keys(book, sources, PROJECT_ROOT / "paper")  # the text these numbers serve
    paper.files["numbers.tex"] = book.to_tex()
    paper.files["numbers.json"] = book.to_json()
    paper.files["figures.tex"] = figures_tex(Path(figures).resolve(), Path(out).resolve().parent)
    return paper


def write_generated(results: str | Path | None = None, figures: str | Path | None = None,
                    out: str | Path | None = None, architecture: bool = True) -> GeneratedPaper:
    """Generate the paper's numbers, tables and figure macros from ``results`` into ``out`` (see the module doc).

    A generated file left from an earlier generation that this one no longer produces (e.g. a table of a part that
    is gone) is removed, so ``out`` holds exactly one generation.
    """
    results = Path(results) if results is not None else results_root()
    figures = Path(figures) if figures is not None else figures_root()
    out = Path(out) if out is not None else default_output(results)
    paper = build_generated(results, figures, out)
    for relative, text in paper.files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
            paper.written.append(path)
    for folder in ("tables", "supplementary"):
        for stale in (out / folder).glob("*.tex"):
            if f"{folder}/{stale.name}" not in paper.files:
                stale.unlink()
    if architecture:
        paper.written += save_architecture(figures)
    return paper


def regenerate_paper(read_results: str | Path, figures: str | Path | None = None, out: str | Path | None = None) -> str:
    """:func:`write_generated` for a notebook that read ``read_results`` (notebook 07); one line saying where.

    ``out`` given (notebook 07 without ``overwrite``: its scratch folder) is where the files go. Otherwise a run that
    writes into the results it read (``make demo``: the project's own ``results/``) regenerates ``paper/generated``
    beside them; a run that writes elsewhere (``make test``: ``$AFR_RESULTS`` is a scratch folder) sends the paper's
    files to ``results_root()/paper_generated``, so that the work tree is not touched. The line shows the folder
    relative to the project root when it is inside it.
    """
    read_results = Path(read_results)
    if out is None and results_root().resolve() != read_results.resolve():
        out = results_root() / "paper_generated"
    write_generated(read_results, figures, out)
    return f"paper files regenerated into {shown_path(Path(out) if out is not None else default_output(read_results))}"

