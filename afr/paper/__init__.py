"""The paper, generated from the committed results: ``python -m afr.paper`` writes ``paper/generated/`` (every
quoted number as ``\\result{key}``, the tables, the supplementary per-seed tables, the figure macros) and the
architecture figure; ``make paper`` builds ``paper/main.pdf`` and ``paper/supplementary.pdf`` with LaTeX."""
