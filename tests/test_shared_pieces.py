"""The pieces the experiment recipes share, one layer below them: the square LoRA settings, the paired tests over
seeds, the long-table metrics, the DA-LoRA expert blocks and the meta-learned LoRA start."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from afr.adapters.dalora import DaLoraSettings, apply_dalora
from afr.adapters.dalora.experts import expert_blocks, load_parameters, shared_targets, with_expert_blocks
from afr.adapters.lora import LoraSettings
from afr.data.verification import VerificationPack
from afr.experiments.records import grid_metric_values
from afr.meta import MetaConfig, adapter_parameters
from afr.meta.data import MamlData
from afr.meta.episodes import EpisodeSampler
from afr.meta.start import lora_backbone, meta_learned_start
from afr.models import create_backbone
from afr.stats import paired_test, paired_tests


def test_square_lora_settings_have_alpha_equal_to_the_rank():
    assert LoraSettings.square(8) == LoraSettings(r=8, alpha=8.0)
    assert LoraSettings.square(4, ["a", "b"]) == LoraSettings(r=4, alpha=4.0, target_modules=("a", "b"))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy on (nearly) constant differences
def test_paired_test_on_common_seeds_and_constant_differences():
    a = pd.Series([0.9, 0.8, 0.7], index=[0, 1, 2])
    b = pd.Series([0.5, 0.5, 0.6, 0.1], index=[0, 1, 2, 3])
    test = paired_test(a, b)
    assert test.n == 3 and test.diff == pytest.approx(0.2667, abs=1e-4) and 0 < test.p < 1
    constant = pd.Series([0.7, 0.6, 0.5], index=[0, 1, 2])
    assert math.isnan(paired_test(a, constant).p)  # the paper's reading: t undefined
    assert not math.isnan(paired_test(a, constant, undefined_when_constant=False).p)  # scipy's, as the notebooks
    assert paired_test(a, pd.Series([0.1], index=[5])).n == 0


def test_paired_tests_per_group_of_a_long_table():
    rows = [{"method": method, "seed": seed, "domain": domain, "metric": "auc", "value": value + step * seed}
            for method, value, step in (("x", 0.9, 0.01), ("y", 0.8, 0.02), ("zero-shot", 0.5, 0.0))
            for seed in (0, 1, 2) for domain in ("thermal", "controlled")]
    table = pd.DataFrame(rows)
    tests = paired_tests(table, "x", "auc", by=("domain",), exclude=("zero-shot",), sort=False)
    assert list(tests.columns) == ["comparison", "domain", "metric", "seeds", "mean_difference", "p_value"]
    assert list(tests["domain"]) == ["thermal", "controlled"] and set(tests["comparison"]) == {"x - y"}
    assert tests["mean_difference"].to_numpy() == pytest.approx([0.09, 0.09])
    assert (tests["seeds"] == 3).all() and tests["p_value"].between(0, 1).all()
    assert paired_tests(table, "x", "auc", by=("domain",))["comparison"].nunique() == 2  # zero-shot tested too


def test_grid_metric_values_are_accuracy_auc_eer():
    metrics = {"accuracy_mean": 0.9, "accuracy_std": 0.01, "auc": 0.95, "eer": 0.1, "sha256": "x"}
    assert list(grid_metric_values(metrics)) == [("accuracy", 0.9), ("auc", 0.95), ("eer", 0.1)]
    assert list(grid_metric_values({"auc": 0.5})) == [("auc", 0.5)]


def test_expert_blocks_round_trip_and_leave_the_other_expert():
    torch.manual_seed(0)
    backbone = create_backbone("tiny-dinov2")
    model = apply_dalora(backbone, DaLoraSettings(r=2, alpha=2.0, domains=("visible", "thermal"),
                                                  domain_codes=("visible", "thermal"), gating="oracle"))
    visible = expert_blocks(model, "visible")
    changed = {name: tensor + 1.0 for name, tensor in expert_blocks(model, "thermal").items()}
    load_parameters(model, with_expert_blocks(model, changed, "thermal"))
    for name, tensor in expert_blocks(model, "thermal").items():
        torch.testing.assert_close(tensor, changed[name], rtol=0, atol=0)
    for name, tensor in expert_blocks(model, "visible").items():
        assert torch.equal(tensor, visible[name])
    assert shared_targets(create_backbone("tiny-dinov2"))


def _episode_data() -> MamlData:
    labels = np.repeat(np.arange(6), 4)
    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in labels]
    pack = VerificationPack("a", chips[:4], np.array([True, False]), "")
    return MamlData(chips, labels, np.array(["a"] * len(labels)), pack, image_size=28)


def test_meta_learned_start_is_the_same_for_the_same_seed(tmp_path):
    data = _episode_data()
    sampler = EpisodeSampler(data.labels, data.collections, 3, 2, 2, seed=0)
    config = MetaConfig(inner_steps=1, first_order=True, meta_steps=2, tasks_per_step=1, seed=0)
    runs = [meta_learned_start("tiny-dinov2", None, 2, data, sampler, config, tmp_path / f"run{i}", seed=0,
                               targets=shared_targets, channels_last=True, progress=False) for i in range(2)]
    assert runs[0].result.steps == 2 and (tmp_path / "run0" / "adapter").is_dir() and runs[0].adapter is not None
    first, second = (adapter_parameters(run.backbone) for run in runs)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name])
    untrained = meta_learned_start("tiny-dinov2", None, 2, data, None, None, tmp_path / "random", seed=0)
    assert untrained.result is None and untrained.adapter is None and not (tmp_path / "random").exists()
    seeded = lora_backbone("tiny-dinov2", None, 2)
    assert (seeded.lora_settings.r, seeded.lora_settings.alpha) == (2, 2.0)
