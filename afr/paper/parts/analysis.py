"""Notebook 07's numbers (``results/analysis/*.json``, flat dicts): each becomes ``analysis.<file>.<key>``, a
standard deviation over seeds (``*.sd``) written to 4 decimals, other values to 4 significant digits."""
from __future__ import annotations

import math
import numbers

from afr.paper.numbers import NumberBook, key_part
from afr.paper.parts.common import PartOutput

__all__ = ["build"]


def build(sources, book: NumberBook) -> PartOutput:
    for stem, values in sources.analysis.items():
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue  # text and nested values are the notebook's, not quotable numbers
            kind = "count" if isinstance(value, numbers.Integral) else "sd" if name.endswith(".sd") else "value"
            if isinstance(value, float) and math.isnan(value):
                continue
            book.add(f"analysis.{key_part(stem)}.{key_part(name)}", value, kind)
    book.add("analysis.status", "run" if sources.analysis else "not run", "plain")
    return PartOutput()
