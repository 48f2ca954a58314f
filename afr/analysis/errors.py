"""The worst verification errors and what they have in common, counted from the files behind the images.

An error here is a pair the 10-fold protocol decides wrongly (:mod:`afr.analysis.decisions`): a **false
accept** (different identities, distance below its fold's threshold; the worst is the one with the smallest
distance) or a **false reject** (same identity, distance at or above the threshold; the worst has the largest).

What the errors share is read off the manifest row and the file name of each image, never guessed:

* ``collection``: ORL, Yale, deepface, Notre Dame (``thermal_und``), PUJ-T360 (``thermal_puj``); a low-quality
  chip is ``lowquality<-source>`` (the collection it was degraded from);
* ``condition``: Yale's lighting / expression / glasses condition (the file suffix: ``leftlight``,
  ``glasses``, ...); the thermal subset the capture comes from (``gallery``, ``probe``, ``probeN`` folders of
  both thermal collections); ORL and deepface file names carry no condition;
* ``downsample`` and ``jpeg``: how hard a low-quality chip was degraded (the strengths
  :func:`afr.data.degrade.degradation_strengths` drew for its file), in three equal bins each;
* ``detected``: whether MTCNN found the face (visible-light images; a miss falls back to the centred crop).

:func:`error_analysis` counts, per domain and kind of error, how many error-pair images carry each value and
compares that share with the share among all pairs of the same kind (different pairs for false accepts, same
pairs for false rejects): the ``lift`` says how over-represented a value is among the errors.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from afr.analysis.decisions import ProtocolDecisions
from afr.analysis.packs import LabelledPack
from afr.data.degrade import DegradeSettings, degradation_strengths

__all__ = ["FALSE_ACCEPT", "FALSE_REJECT", "PairError", "common_traits", "error_analysis", "image_attributes",
           "worst_errors"]

FALSE_ACCEPT = "false accept"
FALSE_REJECT = "false reject"
_THERMAL_SUBSETS = {"GalleryPristine": "gallery", "ProbePristine": "probe", "ProbeNPristine": "probeN"}


@dataclass
class PairError:
    """One wrongly decided pair: which, how far from its threshold, and the manifest rows of its images."""

    kind: str
    domain: str
    model: str
    pair: int
    distance: float
    threshold: float
    row_a: dict
    row_b: dict

    @property
    def margin(self) -> float:
        """How far past the threshold the pair lies (positive for every error)."""
        return self.threshold - self.distance if self.kind == FALSE_ACCEPT else self.distance - self.threshold


def worst_errors(decisions: ProtocolDecisions, pack: LabelledPack, model: str, n: int = 3) -> list[PairError]:
    """The ``n`` worst false accepts (smallest distance first) then the ``n`` worst false rejects (largest first)."""
    accepts = decisions.false_accepts[np.argsort(decisions.distances[decisions.false_accepts], kind="stable")]
    rejects = decisions.false_rejects[np.argsort(-decisions.distances[decisions.false_rejects], kind="stable")]
    errors = []
    for kind, indices in ((FALSE_ACCEPT, accepts[:n]), (FALSE_REJECT, rejects[:n])):
        for pair in indices.tolist():
            row_a, row_b = pack.pair(pair)
            errors.append(PairError(kind, pack.domain, model, pair, float(decisions.distances[pair]),
                                    float(decisions.thresholds[pair]), row_a, row_b))
    return errors


def _bin(value: float, low: float, high: float, unit: str, bins: int = 3) -> str:
    edges = np.linspace(low, high, bins + 1)
    index = min(int(np.searchsorted(edges, value, side="right")) - 1, bins - 1)
    return f"{edges[index]:g}-{edges[index + 1]:g} {unit}".strip()


def image_attributes(row: Mapping[str, str], seed: int = 0,
                     degrade_settings: DegradeSettings = DegradeSettings()) -> dict[str, str]:
    """The countable traits of one image (module docstring), from its manifest row and file name."""
    path = PurePosixPath(row["file"])
    source, domain = row["source"], row["domain"]
    traits = {"collection": f"lowquality<-{source}" if domain == "lowquality" else source}
    if source == "yale":
        traits["condition"] = path.name.split(".", 1)[1]
    elif source.startswith("thermal"):
        traits["condition"] = _THERMAL_SUBSETS.get(path.parent.name, path.parent.name)
    if domain == "lowquality":
        side, _, quality = degradation_strengths(seed, row["file"], degrade_settings)
        traits["downsample"] = _bin(side, *degrade_settings.downsample_side, "px")
        traits["jpeg"] = _bin(quality, *degrade_settings.jpeg_quality, "quality")
    if source not in ("thermal_und", "thermal_puj"):
        traits["detected"] = "MTCNN face" if row["detected"] == "1" else "no detection (centred crop)"
    return traits


def error_analysis(decisions: Mapping[str, ProtocolDecisions], packs: Mapping[str, LabelledPack],
                   seed: int = 0) -> pd.DataFrame:
    """Counts of each trait value among the images of wrongly decided pairs against all pairs of that kind.

    One row per (domain, kind, attribute, value) with ``error_images`` (images of error pairs carrying the
    value), ``error_share`` (of all error-pair images of that domain and kind), ``base_share`` (the same share
    over every pair of that kind in the pack: different pairs for false accepts, same pairs for false rejects),
    ``lift`` = error_share / base_share, and ``error_pairs`` (the number of such errors in that domain).
    """
    rows = []
    for domain, decision in decisions.items():
        pack = packs[domain]
        traits = [image_attributes(row, seed) for row in pack.rows]
        for kind, errors, population in ((FALSE_ACCEPT, decision.false_accepts, np.flatnonzero(~decision.issame)),
                                         (FALSE_REJECT, decision.false_rejects, np.flatnonzero(decision.issame))):
            def count(pairs: np.ndarray) -> dict[str, Counter]:
                counters: dict[str, Counter] = {}
                for pair in pairs.tolist():
                    for image in (2 * pair, 2 * pair + 1):
                        for attribute, value in traits[image].items():
                            counters.setdefault(attribute, Counter())[value] += 1
                return counters

            error_counts, base_counts = count(errors), count(population)
            for attribute, base in base_counts.items():
                seen = error_counts.get(attribute, Counter())
                error_total, base_total = 2 * len(errors), 2 * len(population)
                for value, base_n in sorted(base.items()):
                    error_n = seen.get(value, 0)
                    error_share = error_n / error_total if error_total else float("nan")
                    base_share = base_n / base_total
                    rows.append(dict(domain=domain, kind=kind, attribute=attribute, value=value,
                                     error_images=error_n, error_share=error_share, base_share=base_share,
                                     lift=error_share / base_share if base_share else float("nan"),
                                     error_pairs=len(errors)))
    return pd.DataFrame(rows)


def common_traits(analysis: pd.DataFrame, min_lift: float = 1.5, min_images: int = 4) -> pd.DataFrame:
    """The over-represented trait values: ``lift >= min_lift`` on at least ``min_images`` error images."""
    chosen = analysis[(analysis["lift"] >= min_lift) & (analysis["error_images"] >= min_images)]
    return chosen.sort_values(["domain", "kind", "lift"], ascending=[True, True, False]).reset_index(drop=True)
