"""Notebook 03's pieces: the domain-aware training model, optimizer groups, oracle validation, tables, tests."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from afr.adapters.dalora import DaLoraSettings, apply_dalora, dalora_state
from afr.adapters.lora import LoraSettings, apply_lora
from afr.data.verification import load_pack
from afr.experiments.dalora_vs_lora import (DaLoraExperimentSettings, RunOutcome, grid_table, paired_tests, parameter_groups,
                                    validation_evaluators)
from afr.models import create_backbone
from afr.models.domain_aware import DomainAwareRecognitionModel


def _model(gating: str | None, **options) -> DomainAwareRecognitionModel:
    torch.manual_seed(0)
    backbone = create_backbone("tiny-dinov2")
    if gating is None:
        apply_lora(backbone, LoraSettings(r=2, alpha=2.0))
    else:
        apply_dalora(backbone, DaLoraSettings(r=2, alpha=2.0, gating=gating))
    return DomainAwareRecognitionModel(backbone, 4, **options)


BATCH = dict(images=torch.rand(8, 3, 112, 112), labels=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]),
             domains=torch.tensor([0, 3, 0, 3, 2, 2, 2, 2]))


def test_loss_is_the_sum_of_its_named_weighted_terms():
    for gating, expected in ((None, {"margin", "contrastive"}), ("classifier", {"margin", "contrastive", "domain"}),
                             ("oracle", {"margin", "contrastive"}), ("uniform", {"margin", "contrastive"})):
        output = _model(gating)(**BATCH)
        assert set(output.terms) == expected, gating
        torch.testing.assert_close(output.loss, sum(output.terms.values()))
    model = _model("classifier", lambda_contrastive=0.0, lambda_domain=0.5)
    output = model(**BATCH)
    assert set(output.terms) == {"margin", "domain"}
    logits = dalora_state(model.backbone).router_logits
    expected_domain = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2, 0, 2, 1, 1, 1, 1]))
    torch.testing.assert_close(output.terms["domain"], 0.5 * expected_domain)


def test_oracle_training_needs_and_uses_the_domains():
    model = _model("oracle")
    with pytest.raises(ValueError, match="oracle gating needs the domain"):
        model(images=BATCH["images"], labels=BATCH["labels"])
    model(**BATCH)
    gates = dalora_state(model.backbone).gates
    assert gates.argmax(1).tolist() == [0, 2, 0, 2, 1, 1, 1, 1]


def test_router_gets_its_own_learning_rate_and_nothing_is_optimised_twice():
    settings = DaLoraExperimentSettings(lr=3e-4, head_lr=1e-2, router_lr=5e-3)
    model = _model("classifier")
    groups = parameter_groups(model, settings)
    assert [group.get("lr") for group in groups] == [None, 1e-2, 5e-3]  # None: the optimizer's lr (settings.lr)
    ids = [id(p) for group in groups for p in group["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert len(parameter_groups(_model(None), settings)) == 2


def test_oracle_validation_routes_each_pack_to_its_domains_expert(embedded_benchmark):
    packs = {"thermal": load_pack(embedded_benchmark.bin_path("thermal", "val"))}
    model = _model("oracle")
    metrics = validation_evaluators("dalora-oracle", packs)["val/thermal"](model)
    assert 0.0 <= metrics["auc"] <= 1.0
    assert dalora_state(model.backbone).gates.argmax(1).unique().tolist() == [1]  # thermal is expert 1
    with pytest.raises(ValueError, match="oracle gating"):  # without routing, oracle validation cannot run
        validation_evaluators("dalora-classifier", packs)["val/thermal"](_model("oracle"))


def _outcome(method, seed, aucs):
    test = {domain: {"accuracy_mean": auc, "auc": auc, "eer": 1 - auc} for domain, auc in aucs.items()}
    return RunOutcome({"test": test})


def test_grid_table_and_paired_tests_over_seeds():
    outcomes = {}
    for seed, shift in enumerate((0.00, 0.01, 0.02)):
        outcomes["lora", seed] = _outcome("lora", seed, {"thermal": 0.90 + shift, "controlled": 0.99})
        outcomes["dalora-classifier", seed] = _outcome("dalora-classifier", seed,
                                                       {"thermal": 0.93 + shift + 0.001 * seed, "controlled": 0.99})
    table = grid_table(outcomes, {"thermal": {"accuracy_mean": 0.8, "auc": 0.8, "eer": 0.2},
                                  "controlled": {"accuracy_mean": 1.0, "auc": 1.0, "eer": 0.0}})
    assert len(table) == (2 * 3 + 1 * 3) * 2 * 3  # (methods x seeds + zero-shot per seed) x domains x metrics
    tests = paired_tests(table).set_index("domain")
    assert tests.loc["thermal", "mean_difference"] == pytest.approx(0.031)
    assert tests.loc["thermal", "p_value"] < 0.001 and tests.loc["thermal", "seeds"] == 3
    assert np.isnan(tests.loc["controlled", "p_value"])  # identical values: no test statistic
    one_seed = paired_tests(table[table["seed"] == 0]).set_index("domain")
    assert np.isnan(one_seed.loc["thermal", "p_value"])  # one seed: no test
    assert isinstance(table, pd.DataFrame)
