"""Notebook 04's pieces: adaptation to the held-out target, its rows and its paired tests."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import ttest_rel

from afr.adapters.lora import LoraSettings, apply_lora
from afr.experiments.baseline import evaluate_on_packs
from afr.experiments.maml_init import (MamlExperimentSettings, adaptation_curves, curve_rows, load_data, paired_tests,
                                       validation_chosen_adaptation)
from afr.validation import SettingsError
from afr.models import create_backbone, fast_layout


@pytest.mark.shared("weights/dlib_resnet29", "data/faces/thermal")
def test_adaptation_leaves_the_start_unchanged_and_step_zero_is_the_start(embedded_benchmark, monkeypatch):
    import afr.experiments.maml_init as maml_init

    settings = MamlExperimentSettings(method="random", shots=(1, 2), steps=(0, 2), inner_lr=1e-3, progress=False,
                                      embedded_root=str(embedded_benchmark.root))
    data = load_data(settings)
    assert set(data.collections) == {"orl", "yale", "lowquality", "thermal_und", "thermal_puj"}
    backbone = apply_lora(create_backbone("dlib-resnet29"), LoraSettings(r=8, alpha=8.0))
    torch.manual_seed(0)
    for name, parameter in backbone.named_parameters():  # a non-zero B: the start is not the plain backbone
        if parameter.requires_grad and "lora_B" in name:
            parameter.data.normal_(0, 1e-3)
    start = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    scored = []
    score = maml_init._score
    monkeypatch.setattr(maml_init, "_score", lambda model, name, pack: scored.append(pack) or score(model, name, pack))
    curves = adaptation_curves(backbone, data, settings)
    for name, parameter in backbone.named_parameters():
        assert torch.equal(parameter, start[name]), name
    assert len(scored) == 3  # the start once (the same weights for k = 1 and 2), two steps once per k
    # the start in the channels-last layout the adaptation uses (the same function: within float rounding)
    before = evaluate_on_packs(fast_layout(copy.deepcopy(backbone)).eval(),
                               {settings.target: data.target_pack})[settings.target]
    plain = evaluate_on_packs(backbone.eval(), {settings.target: data.target_pack})[settings.target]
    assert plain["auc"] == pytest.approx(before["auc"], abs=1e-4)
    for curve in curves.values():
        assert curve["0"]["auc"] == before["auc"] and curve["0"]["accuracy_mean"] == before["accuracy_mean"]
        assert curve["2"]["auc"] != curve["0"]["auc"]  # two SGD steps on the k-shot support move the target metrics


@pytest.mark.shared("weights/dlib_resnet29", "data/faces/thermal")
def test_the_step_count_is_chosen_on_validation_and_the_test_pack_is_scored_once_at_it(embedded_benchmark, monkeypatch):
    import afr.experiments.maml_init as maml_init

    settings = MamlExperimentSettings(method="random", shots=(1,), steps=(0, 1, 3), progress=False,
                                      choose_steps_on_validation=True, embedded_root=str(embedded_benchmark.root))
    data = load_data(settings)
    assert data.target_val_pack is not None
    val_images = {np.asarray(image).tobytes() for image in data.target_val_pack.images}
    test_images = {np.asarray(image).tobytes() for image in data.target_pack.images}
    assert not val_images & test_images  # the validation identities are not the test identities
    backbone = apply_lora(create_backbone("dlib-resnet29"), LoraSettings(r=8, alpha=8.0))
    scored = []
    score = maml_init._score
    monkeypatch.setattr(maml_init, "_score", lambda model, name, pack: scored.append(pack) or score(model, name, pack))
    chosen = validation_chosen_adaptation(backbone, data, settings)
    assert [pack is data.target_pack for pack in scored].count(True) == 1  # the test pack, once
    curve = chosen.curves["1"]
    assert list(curve) == ["0", "1", "3"]
    best = max(curve, key=lambda n: (curve[n]["auc"], -int(n)))
    assert chosen.chosen_steps["1"] == int(best)
    # the test metrics are those of the adapter at the chosen step count (the curve's own pass, scored on test)
    test_curve = adaptation_curves(backbone, data, settings)["1"]
    assert chosen.test["1"]["auc"] == pytest.approx(test_curve[best]["auc"], abs=1e-6)
    # rows: validation rows at every step count, test rows at the chosen one only
    record = {"tag": "t", "seed": 0, "method": "pooled-lora", "curves": chosen.curves, "curves_split": "val",
              "chosen_steps": chosen.chosen_steps, "test": chosen.test}
    rows = pd.DataFrame(curve_rows(record, settings))
    assert sorted(set(rows[rows["split"] == "val"]["steps"])) == [0, 1, 3]
    assert set(rows[rows["split"] == "test"]["steps"]) == {int(best)}


def test_the_full_profile_refuses_a_step_count_chosen_on_validation_before_any_work():
    with pytest.raises(SettingsError, match="no validation identities"):
        MamlExperimentSettings(data_profile="full", target_dir="/nonexistent", choose_steps_on_validation=True)


def test_random_start_at_step_zero_is_also_the_zero_shot_row():
    settings = MamlExperimentSettings()
    metrics = {"accuracy_mean": 0.8, "accuracy_std": 0.01, "auc": 0.85, "eer": 0.2}
    record = {"tag": "t", "seed": 1, "curves": {"1": {"0": metrics, "3": metrics}, "4": {"0": metrics}}}
    rows = pd.DataFrame(curve_rows({**record, "method": "random"}, settings))
    zero = rows[rows["method"] == "zero-shot"]
    assert sorted(set(zip(zero["shots"], zero["steps"]))) == [(1, 0), (4, 0)]
    assert set(rows["domain"]) == {"thermal_und"} and set(rows["metric"]) == {"accuracy", "accuracy_std", "auc", "eer"}
    assert "zero-shot" not in set(pd.DataFrame(curve_rows({**record, "method": "maml"}, settings))["method"])


def test_paired_tests_pair_the_same_seeds_at_each_point():
    rng = np.random.default_rng(0)
    rows = []
    for method, shift in (("maml", 0.02), ("random", 0.0)):
        for seed in (0, 1, 2):
            for steps in (0, 5):
                rows.append({"method": method, "seed": seed, "shots": 1, "steps": steps, "metric": "auc",
                             "value": 0.8 + shift * (steps > 0) + 0.01 * seed + 0.001 * rng.standard_normal()})
    table = pd.DataFrame(rows)
    tests = paired_tests(table).set_index("steps")
    a = table[(table.method == "maml") & (table.steps == 5)].sort_values("seed")["value"].to_numpy()
    b = table[(table.method == "random") & (table.steps == 5)].sort_values("seed")["value"].to_numpy()
    assert tests.loc[5, "p_value"] == pytest.approx(ttest_rel(a, b).pvalue)
    assert tests.loc[5, "mean_difference"] == pytest.approx((a - b).mean())
    assert tests.loc[5, "seeds"] == 3 and tests.loc[5, "comparison"] == "maml - random"


def test_the_target_is_never_a_source():
    with pytest.raises(ValueError, match="cannot also be a source"):
        MamlExperimentSettings(target="thermal_puj")
