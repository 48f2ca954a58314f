"""The embedded benchmark's statistics documents: ``results/embedded_stats.json`` (read by the paper and the model
card) and ``results/embedded_stats.md`` (the same numbers as tables).

Both ``python -m afr build-embedded`` and ``notebooks/01_data.ipynb`` write them with :func:`write_embedded_stats`
from the built benchmark's :attr:`~afr.data.embedded.EmbeddedBenchmark.stats`, so either regenerates the committed
files byte for byte.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from afr.io import atomic_write_text
from afr.paths import results_root

__all__ = ["STATS_JSON", "STATS_MARKDOWN", "statistics_json", "statistics_markdown", "write_embedded_stats"]

STATS_JSON = "embedded_stats.json"
STATS_MARKDOWN = "embedded_stats.md"


def statistics_json(stats: dict[str, Any]) -> str:
    """The text of ``embedded_stats.json``."""
    return json.dumps(stats, indent=1) + "\n"


def statistics_markdown(stats: dict[str, Any]) -> str:
    """The text of ``embedded_stats.md``: identities and images per domain and split, detection per collection
    (with the commonest raw sizes), and the validation and test packs."""
    lines = ["# Embedded benchmark: statistics", "",
             f"Built by `notebooks/01_data.ipynb` (seed {stats['seed']}, {stats['chip']['geometry']} chips of "
             f"{stats['chip']['size']} px). Regenerate with `make demo`.", "",
             "| domain | train identities / images | validation identities / images | test identities / images |",
             "|---|---|---|---|"]
    lines += [f"| {d} | " + " | ".join(f"{s[split]['identities']} / {s[split]['images']}"
                                       for split in ("train", "val", "test")) + " |"
              for d, s in stats["domains"].items()]
    lines += ["", "| collection | detector | images | detected | centre crop | raw sizes (w x h: count) |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {src} | {r['detector']} | {r['images']} | {r['detected']} | {r['center_crop']} | "
              + ", ".join(f"{k}: {v}" for k, v in list(stats["raw_image_sizes"][src].items())[:4])
              + (" …" if len(stats["raw_image_sizes"][src]) > 4 else "") + " |"
              for src, r in stats["detection"].items()]
    lines += ["", "| pack | pairs | same | different | distinct images |", "|---|---|---|---|---|"]
    lines += [f"| {split}/{d} | {c['pairs']} | {c['same']} | {c['pairs'] - c['same']} | {c['images']} |"
              for split in ("val", "test") for d, c in stats["verification_pairs"][split].items()]
    return "\n".join(lines) + "\n"


def write_embedded_stats(stats: dict[str, Any], folder: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``embedded_stats.json`` and ``embedded_stats.md`` into ``folder`` (default ``results/``, i.e.
    ``$AFR_RESULTS``), each atomically; returns their paths (json, markdown)."""
    folder = Path(folder) if folder is not None else results_root()
    folder.mkdir(parents=True, exist_ok=True)
    markdown = atomic_write_text(folder / STATS_MARKDOWN, statistics_markdown(stats))
    data = atomic_write_text(folder / STATS_JSON, statistics_json(stats))
    return data, markdown
