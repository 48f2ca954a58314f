"""The embedded benchmark (notebook 01): its statistics table and numbers, from ``results/embedded_stats.json``."""
from __future__ import annotations

from afr.paper.latex import NOT_RUN, Table
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import PartOutput, key, label
from afr.paper.sources import PaperSources

__all__ = ["build"]

#: the collections behind each domain (descriptive text; the counts come from the statistics file)
DOMAIN_SOURCES = {
    "controlled": "ORL, Yale",
    "wild": "deepface photos",
    "thermal": "Notre Dame X1 LWIR, PUJ-T360 LWIR",
    "lowquality": "degraded controlled and wild chips",
}


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    stats = sources.embedded_stats
    table = Table(label="tab:benchmark", columns="llccc",
                  caption="The embedded benchmark (identity-disjoint splits per collection, seed 0). Identities / "
                          "images per split; verification pairs of the balanced packs in parentheses.",
                  header=[["domain", "sources", "train", "validation", "test"]])
    if stats is None:
        table.rows.append([r"\multicolumn{5}{c}{" + NOT_RUN + " (results/embedded\\_stats.json missing)}"])
        return PartOutput(tables={"benchmark": table})
    for name in ("train_records", "train_identities", "val_identities"):
        book.add(key("benchmark", name), stats[name], "count")
    book.add(key("benchmark", "seed"), stats["seed"], "count")
    book.add(key("benchmark", "chip-size"), stats["chip"]["size"], "count")
    for shots, records in stats["few_shot_records"].items():
        book.add(key("benchmark", "few-shot", f"k{shots}", "records"), records, "count")
    for collection, detection in stats["detection"].items():
        for field in ("images", "detected", "center_crop"):
            book.add(key("benchmark", "detection", collection, field), detection[field], "count")
    pairs = stats["verification_pairs"]
    for domain, splits in stats["domains"].items():
        cells = []
        for split in ("train", "val", "test"):
            counts = splits[split]
            ids = book.add(key("benchmark", domain, split, "identities"), counts["identities"], "count")
            images = book.add(key("benchmark", domain, split, "images"), counts["images"], "count")
            cell = "--" if not counts["identities"] else f"{ids} / {images}"
            if domain in pairs.get(split, {}):
                pack = pairs[split][domain]
                n_pairs = book.add(key("benchmark", domain, split, "pairs"), pack["pairs"], "count")
                book.add(key("benchmark", domain, split, "pack-images"), pack["images"], "count")
                cell += f" ({n_pairs})"
            cells.append(cell)
        table.rows.append([label(domain), DOMAIN_SOURCES.get(domain, ""), *cells])
    return PartOutput(tables={"benchmark": table})
