"""Range rules of settings: one table per settings class says what each numeric setting accepts.

A settings object (an experiment's dataclass, :class:`~afr.data.embedded.EmbeddedConfig`) checks its fields
against its rules when it is constructed, so the command line and the notebooks, which both build these
objects, refuse a bad value before any work (no record, table row, run folder or subset is written). The
error names the setting and its command-line flag, e.g. ``--lr (setting lr) must be a finite number > 0,
got nan``. This module is cheap to import (no torch, no numpy).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Rule", "SettingsError", "check_choices", "check_rules", "flag_of"]


def flag_of(name: str) -> str:
    """The command-line flag of a setting: ``images_per_identity`` -> ``--images-per-identity``."""
    return "--" + name.replace("_", "-")


class SettingsError(ValueError):
    """A setting holds a value it cannot take, or two settings contradict each other.

    ``names`` are the settings concerned; the message names each with its command-line flag.
    """

    def __init__(self, message: str, *names: str) -> None:
        super().__init__(message)
        self.names = names

    @classmethod
    def for_setting(cls, name: str, problem: str) -> SettingsError:
        """``--flag (setting name) <problem>``."""
        return cls(f"{flag_of(name)} (setting {name}) {problem}", name)


@dataclass(frozen=True)
class Rule:
    """What one setting accepts.

    Attributes:
        kind: ``"number"`` (a finite real; an int is fine), ``"integer"`` or ``"name"`` (a non-blank string).
        low: lower bound of a number or integer (None: unbounded); ``strict``: the bound itself is excluded.
        high: upper bound, excluded (None: unbounded).
        optional: None is also accepted (the setting's "default/automatic" value).
        many: the setting is a list of such values; ``empty``: the empty list is accepted too.
    """

    kind: str = "number"
    low: float | None = None
    strict: bool = False
    high: float | None = None
    optional: bool = False
    many: bool = False
    empty: bool = False

    def describe(self) -> str:
        """E.g. ``a finite number > 0``, ``a non-empty list of integers >= 0``."""
        single, plural = {"number": ("a finite number", "finite numbers"), "integer": ("an integer", "integers"),
                          "name": ("a non-blank name", "non-blank names")}[self.kind]
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.strict else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"< {self.high:g}")
        bound = (" " + " and ".join(bounds)) if bounds else ""
        text = (f"{'a' if self.empty else 'a non-empty'} list of {plural}{bound}" if self.many
                else f"{single}{bound}")
        return f"{text} (or None)" if self.optional else text

    def accepts_one(self, value: Any) -> bool:
        if self.kind == "name":
            return isinstance(value, str) and bool(value.strip())
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.kind == "integer" and not isinstance(value, numbers.Integral):
            return False
        value = float(value)
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.strict else value < self.low):
            return False
        return self.high is None or value < self.high

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.optional
        if not self.many:
            return self.accepts_one(value)
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            return False
        values = list(value)
        return (bool(values) or self.empty) and all(self.accepts_one(item) for item in values)

    def check(self, name: str, value: Any) -> None:
        """Raise :class:`SettingsError` naming ``name`` and its flag unless ``value`` is accepted."""
        if not self.accepts(value):
            shown = list(value) if self.many and isinstance(value, Iterable) and not isinstance(value, str) else value
            raise SettingsError.for_setting(name, f"must be {self.describe()}, got {shown!r}")


def check_rules(values: Mapping[str, Any], rules: Mapping[str, Rule | None]) -> None:
    """Check every setting in ``values`` that has a rule (a None rule: the setting is checked elsewhere)."""
    for name, value in values.items():
        rule = rules.get(name)
        if rule is not None:
            rule.check(name, value)


def check_choices(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`SettingsError` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise SettingsError.for_setting(name, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
