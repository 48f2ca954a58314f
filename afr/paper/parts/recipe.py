"""The training recipe of notebooks 03 and 06 (``make recipe-search``): the frozen backbone's geometry on the training
pack (``tables/recipe_geometry.json``) and the validation search that chose the augmentation
(``tables/recipe_search.csv``), both written by :mod:`afr.experiments.recipe_search`."""
from __future__ import annotations

import json

import pandas as pd

from afr.paper.latex import Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import PartOutput, key
from afr.paper.sources import PaperSources

__all__ = ["build"]

DOMAINS = ("controlled", "thermal", "lowquality")


def build(sources: PaperSources, book: NumberBook) -> PartOutput:
    geometry_path = sources.root / "tables" / "recipe_geometry.json"
    if geometry_path.is_file():
        geometry = json.loads(geometry_path.read_text())
        for name in ("uncentred", "centred"):
            entry = geometry[name]
            book.add(key("recipe", "geometry", name, "cosine"), entry["mean_cosine_different_identities"], "delta")
            book.add(key("recipe", "geometry", name, "ratio"), entry["ratio_to_uniform"], "ratio")
            for pack, auc in entry["zero_shot_val_auc"].items():
                book.add(key("recipe", "geometry", name, "val-auc", pack), auc, "auc")
    search_path = sources.root / "tables" / "recipe_search.csv"
    table = Table(label="tab:recipe-search", columns="lcc" + "c" * len(DOMAINS),
                  caption="The recipe of notebooks 03 and 06, chosen on the validation packs (test packs not scored): "
                          "centred embeddings and class-mean centres with each augmentation; LoRA $r = 8$, 4 epochs, "
                          "seeds 0 and 1. Final training margin loss as a share of its uniform-logit value (largest of "
                          "the two seeds) and mean validation AUC; a candidate with a run above 0.5 is out.",
                  header=[["augmentation", "loss / uniform", "eligible", *(f"val. AUC {d}" for d in DOMAINS)]])
    if search_path.is_file():
        runs = pd.read_csv(search_path)
        for candidate, rows in runs.groupby("candidate", sort=False):
            ratio = float(rows["margin_ratio"].max())
            eligible = bool((rows["health"] == "ok").all() and ratio <= 0.5)
            cells = [book.add(key("recipe", "search", candidate, "val-auc", d), float(rows[f"val_auc_{d}"].mean()),
                              "auc") for d in DOMAINS]
            shown_ratio = book.add(key("recipe", "search", candidate, "ratio"), ratio, "ratio")
            table.rows.append([escape(candidate), shown_ratio, "yes" if eligible else "no", *cells])
    else:
        table.rows.append([r"\multicolumn{6}{c}{not run (make recipe-search)}"])
    return PartOutput(tables={"recipe_search": table})
