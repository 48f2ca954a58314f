"""The training recipe of notebooks 03 and 06, chosen on the validation packs: ``make recipe-search``.

The first grids trained LoRA and DA-LoRA from random class centres, on uncentred embeddings, under FRoundation's
flip + RandAugment(4, 16); none of their runs fitted its 71 training identities (final CosFace loss at its
uniform-logit value, :mod:`afr.experiments.health`). Two causes were measured before this search (README, "Recipes
that fit"): the pretrained descriptor's embeddings lie in one narrow cone (fixed by centring,
:mod:`afr.models.centring`, and by class-mean centres), and RandAugment(4, 16) on 150-pixel chips of 710 images
keeps the training loss at uniform. The search decides the augmentation on validation.

Fixed in advance (before any candidate ran):

* candidates: centred embeddings + class-mean centres, with augmentation ``randaugment`` (flip + RandAugment(4,
  16), FRoundation's), ``flip`` (flip only) or ``none``;
* each: LoRA r = 8 (notebook 03's ``lora``), lr 3e-4, 4 epochs (notebook 03's grid budget), seeds 0 and 1, test
  packs not scored;
* rule: a candidate with any run that is flagged by the health rules or whose final margin loss is above
  :data:`~afr.experiments.health.FITTED_WELL` (0.5) × its uniform-logit value is out; of the rest, the highest mean
  validation AUC of the last epoch over the validation packs and seeds wins.

``python -m afr.experiments.recipe_search`` measures the frozen backbone's geometry on the training pack
(:func:`embedding_geometry`, written once to ``results/tables/recipe_geometry.json``), runs what is not recorded yet
(recorded runs are reused), writes ``results/tables/recipe_search.csv`` and prints the table and the choice.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CANDIDATES", "SEARCH_SEEDS", "candidate_settings", "choose", "embedding_geometry", "main", "search_rows"]

#: candidate -> its settings over notebook 03's defaults (the recipe's fixed part: centring + class-mean centres)
CANDIDATES: dict[str, dict[str, Any]] = {
    "randaugment": {"augment": True, "randaugment_ops": 4},
    "flip": {"augment": True, "randaugment_ops": 0},
    "none": {"augment": False},
}
SEARCH_SEEDS = (0, 1)
GRID = "recipe-search"


def candidate_settings(name: str, **overrides: Any):
    """Notebook 03's settings of candidate ``name``: LoRA only, the search seeds, 4 epochs, test packs not scored."""
    from afr.experiments.settings.dalora import DaLoraExperimentSettings

    return DaLoraExperimentSettings(methods=("lora",), seeds=SEARCH_SEEDS, epochs=4, lr=3e-4, centre_embeddings=True,
                                    head_init="class-mean", score_test=False, progress=False, grid=GRID,
                                    **{**CANDIDATES[name], **overrides})


def embedding_geometry(settings, data) -> dict[str, Any]:
    """The frozen backbone on the training pack, uncentred and centred (:mod:`afr.models.centring`): the mean cosine
    between images of different identities, the mean cosine to the own class centre and to the nearest other one,
    and the CosFace loss (s = 64, m = 0.35) of class-mean centres as a share of its uniform-logit value; and the
    zero-shot validation AUC per pack both ways (validation packs only)."""
    import torch
    import torch.nn.functional as F

    from afr.eval.packs import evaluate_on_packs
    from afr.experiments.health import uniform_margin_loss
    from afr.experiments.training_setup import class_mean_embeddings, evaluation_device, frozen_backbone
    from afr.losses.margin import CosFaceMargin, MarginLoss
    from afr.models.centring import mean_unit_embedding

    device = evaluation_device(settings)
    plain = frozen_backbone(dataclasses.replace(settings, centre_embeddings=False))
    embeddings, labels = class_mean_embeddings(plain, data.train, 64, device)
    classes = int(labels.max()) + 1
    centre = mean_unit_embedding(embeddings)
    result: dict[str, Any] = {"images": len(labels), "identities": classes,
                              "uniform_margin_loss": uniform_margin_loss("cosface", classes=classes)}
    different = labels[:, None] != labels[None, :]
    for name, vectors in (("uncentred", F.normalize(embeddings, dim=1)),
                          ("centred", F.normalize(F.normalize(embeddings, dim=1) - centre, dim=1))):
        centres = F.normalize(torch.stack([vectors[labels == c].mean(0) for c in range(classes)]), dim=1)
        cosine = vectors @ centres.T
        own = cosine.gather(1, labels[:, None]).squeeze(1)
        others = cosine.scatter(1, labels[:, None], -2.0).max(1).values
        loss = float(MarginLoss(CosFaceMargin(64.0, 0.35))(cosine, labels))
        result[name] = {"mean_cosine_different_identities": float((vectors @ vectors.T)[different].mean()),
                        "cosine_own_centre": float(own.mean()), "cosine_nearest_other_centre": float(others.mean()),
                        "class_mean_margin_loss": loss, "ratio_to_uniform": loss / result["uniform_margin_loss"]}
    for name, backbone in (("uncentred", plain), ("centred", frozen_backbone(settings, centre=centre))):
        result[name]["zero_shot_val_auc"] = {pack: metrics["auc"] for pack, metrics in
                                             evaluate_on_packs(backbone, data.val_packs, device=device).items()}
    return result


def search_rows(records: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (candidate, seed): the run's health, its final margin loss against the uniform value, and its
    last-epoch validation AUC per pack (``records``: candidate -> its runs' records)."""
    from afr.experiments.health import run_health
    from afr.experiments.records import final_validation_metrics

    rows = []
    for name, runs in records.items():
        for record in runs:
            health = run_health(record)
            aucs = {pack: m["auc"] for pack, m in final_validation_metrics(record["train"]["history"]).items()}
            rows.append({"candidate": name, "seed": record["seed"], "tag": record["tag"], "health": health.status,
                         "final_margin": health.final_margin, "uniform_margin": health.uniform_reference,
                         "margin_ratio": health.ratio, **{f"val_auc_{pack}": auc for pack, auc in aucs.items()},
                         "val_auc_mean": float(np.mean(list(aucs.values())))})
    return rows


def choose(rows: Sequence[Mapping[str, Any]]):
    """``(summary table, chosen candidate or None)`` by the rule fixed in advance (module docstring)."""
    import pandas as pd

    from afr.experiments.health import FITTED_WELL

    runs = pd.DataFrame(rows)
    runs["eligible"] = (runs["health"] == "ok") & (runs["margin_ratio"] <= FITTED_WELL)
    metrics = [c for c in runs.columns if c.startswith("val_auc_")]
    table = runs.groupby("candidate", sort=False).agg(
        seeds=("seed", lambda seeds: ",".join(map(str, sorted(seeds)))), margin_ratio_max=("margin_ratio", "max"),
        eligible=("eligible", "all"), **{metric: (metric, "mean") for metric in metrics}).reset_index()
    table = table.sort_values(["eligible", "val_auc_mean"], ascending=False, ignore_index=True)
    eligible = table[table["eligible"]]
    return table, (str(eligible.iloc[0]["candidate"]) if len(eligible) else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afr.experiments.recipe_search",
                                     description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    from afr.experiments.benchmark_data import GRID_DATA_SEED, load_benchmark
    from afr.experiments.dalora_run import run_method
    from afr.io import atomic_write_text
    from afr.paths import tables_root

    first = candidate_settings(next(iter(CANDIDATES)))
    data = load_benchmark(first, with_domains=True, data_seed=GRID_DATA_SEED)  # notebook 03's data
    geometry_path = tables_root() / "recipe_geometry.json"
    if not geometry_path.is_file():
        geometry_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(geometry_path, json.dumps(embedding_geometry(first, data), indent=1) + "\n")
    print(f"the frozen backbone's geometry on the training pack: {geometry_path}")
    # each candidate's LoRA runs, as notebook 03's grid runs them (a recorded run is reused)
    records = {name: [run_method(candidate_settings(name).for_run("lora", seed).run_settings(), data).record
                      for seed in SEARCH_SEEDS] for name in CANDIDATES}
    rows = search_rows(records)
    table, chosen = choose(rows)
    buffer = io.StringIO()
    import pandas as pd

    pd.DataFrame(rows).to_csv(buffer, index=False)
    path = tables_root() / "recipe_search.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
    print(table.round(4).to_string(index=False))
    print(f"\nchosen (every run fitted, margin loss <= 0.5 x uniform; then the highest mean validation AUC): "
          f"{chosen or 'none: no candidate fitted'}\nruns written to {path}")
    return 0 if chosen else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
