"""Every number the paper's text quotes, as one keyed, formatted value: ``paper/generated/numbers.tex``.

The text never types a number: it writes ``\\result{dalora.thermal.auc.dalora-classifier.mean}`` and LaTeX looks
the key up in ``numbers.tex``. A key that is not there stops LaTeX with an error naming it (never a silent "??"),
so a paper that builds has no hole. Keys are dotted paths:

* ``<experiment>.<domain>.<metric>.<method>[.k<k>][.s<steps>].{mean,sd,n}`` for a value over seeds;
* ``<experiment>.ttest.<domain>.<metric>.<a>.vs.<b>[...].{diff,p,n}`` for a paired t-test over seeds
  (``diff`` is the mean of ``a - b``);
* other experiment-specific keys (gates, costs, parameter counts, benchmark statistics) listed by their writers.

Metric names are the tables' (``auc``, ``accuracy``, ``eer``); accuracies are shown in per cent. Every value is
formatted once, here, by its :class:`Kind`, so the same quantity reads the same everywhere. ``numbers.json``
beside the ``.tex`` holds the raw values, for the tests and for anyone who wants more digits.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["KEY_PATTERN", "NumberBook", "format_value", "key_part"]

#: what a key may hold: LaTeX reads it inside \csname, where these characters are safe
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+\-]*$")

#: how each kind of number is written (the formatter's name -> one-line description, for the docs)
KINDS = {
    "auc": "4 decimals", "eer": "3 decimals", "accuracy": "per cent, 2 decimals (the value is a fraction)",
    "points": "signed percentage points, 2 decimals (the value is a fraction)",
    "delta": "signed, 4 decimals", "p": "2 decimals; 3 below 0.01; '< 0.001' below that",
    "count": "integer with thousands separators", "seconds": "2 decimals", "ratio": "2 decimals",
    "share": "per cent, 1 decimal (the value is a fraction)", "lr": "a x 10^b", "plain": "as given (text)",
    "value": "4 significant digits", "sd": "4 decimals (a spread, beside its mean)",
}


def key_part(text: object) -> str:
    """One dotted component of a key from a table's name (``thermal_und`` -> ``thermal-und``)."""
    part = re.sub(r"[^A-Za-z0-9+\-]+", "-", str(text)).strip("-")
    if not part:
        raise ValueError(f"{text!r} gives an empty key component")
    return part


def _minus(text: str) -> str:
    """A typographic minus that works in text and math mode."""
    return text.replace("-", r"\ensuremath{-}", 1) if text.startswith("-") else text


def format_value(value: float | int | str, kind: str) -> str:
    """``value`` written as LaTeX text according to ``kind`` (see :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown number kind {kind!r}; choose from {sorted(KINDS)}")
    if kind == "plain":
        return str(value)
    value = float(value)
    if math.isnan(value):
        return "--"
    if kind in ("auc", "sd"):
        return _minus(f"{value:.4f}")
    if kind == "eer":
        return _minus(f"{value:.3f}")
    if kind == "accuracy":
        return _minus(f"{100 * value:.2f}")
    if kind == "points":
        return _minus(f"{100 * value:+.2f}")
    if kind == "delta":
        return _minus(f"{value:+.4f}")
    if kind == "p":
        if value < 0.001:
            return r"\ensuremath{<}\,0.001"
        return f"{value:.3f}" if value < 0.01 else f"{value:.2f}"
    if kind == "count":
        return f"{round(value):,}".replace(",", "{,}")
    if kind in ("seconds", "ratio"):
        return _minus(f"{value:.2f}")
    if kind == "share":
        return f"{100 * value:.1f}"
    if kind == "lr":
        mantissa, exponent = f"{value:.0e}".split("e")
        return rf"\ensuremath{{{mantissa}\times10^{{{int(exponent)}}}}}"
    return _minus(f"{value:.4g}")


@dataclass(frozen=True)
class Number:
    key: str
    value: float | int | str
    kind: str

    @property
    def text(self) -> str:
        return format_value(self.value, self.kind)


class NumberBook:
    """The keyed numbers of one paper build; a key is written once (a second, different value is a bug)."""

    def __init__(self) -> None:
        self._numbers: dict[str, Number] = {}

    def add(self, key: str, value: float | int | str, kind: str) -> str:
        """Record ``value`` under ``key`` and return its formatted text (for a table cell)."""
        if not KEY_PATTERN.match(key):
            raise ValueError(f"invalid result key {key!r} (allowed: letters, digits, '.', '+', '-')")
        number = Number(key, value if isinstance(value, str) else float(value), kind)
        old = self._numbers.get(key)
        if old is not None and old != number and not (_is_nan(old.value) and _is_nan(number.value)):
            raise ValueError(f"result key {key!r} written twice with different values ({old.value} vs {value})")
        self._numbers[key] = number
        return number.text

    def __contains__(self, key: str) -> bool:
        return key in self._numbers

    def __getitem__(self, key: str) -> Number:
        return self._numbers[key]

    def __iter__(self) -> Iterator[Number]:
        return iter(sorted(self._numbers.values(), key=lambda number: number.key))

    def __len__(self) -> int:
        return len(self._numbers)

    def to_tex(self) -> str:
        """``numbers.tex``: the ``\\result`` lookup (an unknown key is a LaTeX error naming it) and every value."""
        lines = [
            "% Generated by `python -m afr.paper` from the committed results: do not edit by hand.",
            "% \\result{key} prints a value; \\resultpm{prefix} prints <prefix>.mean $\\pm$ <prefix>.sd.",
            "% An unknown key stops LaTeX with an error that names it.",
            r"\makeatletter",
            r"\providecommand{\result}[1]{\@ifundefined{afr@result@#1}{\PackageError{afr-numbers}"
            r"{Unknown result key `#1'}{paper/generated/numbers.tex has no key `#1': the text asks for a "
            r"number that the committed results do not hold. Run python -m afr.paper, or fix the key.}"
            r"\textbf{??#1??}}{\@nameuse{afr@result@#1}}}",
            r"\providecommand{\resultpm}[1]{\result{#1.mean}~\ensuremath{\pm}~\result{#1.sd}}",
            r"\providecommand{\defresult}[2]{\@namedef{afr@result@#1}{#2}}",
            r"\makeatother",
        ]
        lines += [rf"\defresult{{{number.key}}}{{{number.text}}}" for number in self]
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        """``numbers.json``: ``{key: {"value": raw, "text": formatted, "kind": kind}}``."""
        payload = {n.key: {"value": None if _is_nan(n.value) else n.value, "text": n.text, "kind": n.kind}
                   for n in self}
        return json.dumps(payload, indent=1, sort_keys=True) + "\n"


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)
