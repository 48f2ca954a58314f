"""Notebook 05's pieces: the thermal expert's adaptation, the unlabelled views' positives, the thermal split, the
rows a grid leaves and the rows it skips."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from afr.adapters.dalora import merge_dalora
from afr.adapters.dalora.experts import expert_blocks, load_parameters, shared_targets, with_expert_blocks
from afr.adapters.lora import LoraSettings, apply_lora, merge_lora, save_adapter
from afr.data.collections import collection_identities
from afr.eval.curves import StartScore
from afr.data.verification import VerificationPack
from afr.experiments.settings.base import SettingsError
from afr.experiments import crossdomain
from afr.experiments.crossdomain import (ALL_SHOTS, METHODS, CrossDomainData, CrossDomainSettings, ThermalSplit, adapt,
                                         dalora_from_start, forgetting_table, grid_table, load_data, run_method,
                                         score_dalora, thermal_split, shots_label, view_contrastive_loss)
from afr.meta.data import MamlData
from afr.losses.margin import CosFaceMargin
from afr.meta import inner_adapt
from afr.models import create_backbone

TINY = dict(backbone="tiny-dinov2", rank=2, adapt_steps=3, adapt_lr=0.05, unlabelled_batch=4, device="cpu",
            progress=False)


def _tiny_start(tmp_path):
    """A tiny-DINOv2 LoRA start with a non-zero update, saved as the adapter a start leaves."""
    torch.manual_seed(0)
    backbone = create_backbone("tiny-dinov2")
    lora = apply_lora(backbone, LoraSettings(r=2, alpha=2.0, target_modules=tuple(shared_targets(backbone))))
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.1)
    return lora, save_adapter(lora, tmp_path / "adapter")


def _fresh(settings, adapter):
    """The start's DA-LoRA on the same random tiny backbone (created under the same seed)."""
    torch.manual_seed(0)
    return dalora_from_start(settings, adapter)


def _tiny_data(n_images: int = 10) -> CrossDomainData:
    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(n_images)]
    labels = np.repeat(np.arange(n_images // 2), 2)
    train = MamlData(chips, labels, np.array(["thermal_und"] * n_images), target_pack=None, image_size=28)
    return CrossDomainData(train, np.array([f"id{label}" for label in labels], dtype=object), {})


def test_adapting_the_thermal_expert_leaves_the_visible_expert_and_its_merged_outputs_as_the_start(tmp_path):
    lora, adapter = _tiny_start(tmp_path)
    settings = CrossDomainSettings(**TINY, method="dalora+maml+contrastive+semi")
    data = _tiny_data()
    split = ThermalSplit(2, {0: [0, 1], 1: [2, 3], 2: [4, 5]}, (6, 7, 8, 9))
    torch.manual_seed(0)  # the same random tiny backbone as the start's
    backbone, params, to_parameters = crossdomain._adapted_model(settings, adapter)
    start = {name: p.detach().clone() for name, p in backbone.named_parameters()}
    params, losses = adapt(backbone, params, to_parameters, data, split, settings)
    load_parameters(backbone, to_parameters(params))

    visible, thermal = expert_blocks(backbone, "visible"), expert_blocks(backbone, "thermal")
    started = expert_blocks(_fresh(settings, adapter), "visible")
    assert all(torch.equal(visible[name], started[name]) for name in visible)  # bit-identical
    assert any(not torch.equal(thermal[name], started[name]) for name in thermal)  # the thermal expert moved
    assert all(torch.equal(p, start[name]) for name, p in backbone.named_parameters() if "lora" not in name)
    assert len(losses) == settings.adapt_steps and all(math.isfinite(loss) for loss in losses)

    images = torch.rand(4, 3, 28, 28)
    with torch.no_grad():
        adapted_visible = merge_dalora(copy.deepcopy(backbone), "visible").eval()(images)
        start_visible = merge_dalora(_fresh(settings, adapter), "visible").eval()(images)
        adapted_thermal = merge_dalora(copy.deepcopy(backbone), "thermal").eval()(images)
        lora_start = merge_lora(copy.deepcopy(lora)).eval()(images)
    assert torch.equal(adapted_visible, start_visible)  # the visible scores are the start's by construction
    torch.testing.assert_close(start_visible, lora_start)  # and the start is the LoRA start (up to rounding)
    assert not torch.allclose(adapted_thermal, start_visible)


def test_dalora_rows_take_the_start_visible_scores_only_while_the_visible_expert_is_the_start(tmp_path):
    _, adapter = _tiny_start(tmp_path)
    settings = CrossDomainSettings(**TINY, method="dalora+maml")
    rng = np.random.default_rng(1)
    packs = {name: VerificationPack(name, [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(40)],
                                    np.arange(20) % 2 == 0, name)
             for name in ("thermal_und", "thermal_puj", "thermal", "controlled", "wild", "lowquality")}
    data = CrossDomainData(_tiny_data().train, np.array([]), packs)
    start_scores = {name: {"auc": 0.5 + i / 100} for i, name in enumerate(packs)}
    backbone = _fresh(settings, adapter)
    start_visible = expert_blocks(backbone, "visible")
    load_parameters(backbone, with_expert_blocks(
        backbone, {n: t + 0.1 for n, t in expert_blocks(backbone, "thermal").items()}, "thermal"))
    scores = score_dalora(copy.deepcopy(backbone), start_visible, start_scores, data, "cpu")
    assert all(scores[name] == start_scores[name] for name in ("controlled", "wild", "lowquality"))
    assert all(scores[name]["sha256"] == name for name in ("thermal_und", "thermal_puj", "thermal"))  # scored
    load_parameters(backbone, with_expert_blocks(
        backbone, {n: t + 0.1 for n, t in expert_blocks(backbone, "visible").items()}, "visible"))
    with pytest.raises(RuntimeError, match="visible expert changed"):
        score_dalora(backbone, start_visible, start_scores, data, "cpu")


def test_without_extra_terms_an_adaptation_step_is_inner_adapt(tmp_path):
    lora, _ = _tiny_start(tmp_path)
    settings = CrossDomainSettings(**TINY, method="lora")
    data = _tiny_data()
    split = ThermalSplit(2, {0: [0, 1], 1: [2, 3], 2: [4, 5]}, ())
    params = {name: p.detach().clone() for name, p in lora.named_parameters() if p.requires_grad}
    ours, _ = adapt(lora, params, lambda tensors: tensors, data, split, settings)
    theirs = inner_adapt(lora, params, data.train.images(split.indices), split.labels, 3, CosFaceMargin(),
                         steps=settings.adapt_steps, lr=settings.adapt_lr, first_order=True)
    for name in params:
        torch.testing.assert_close(ours[name], theirs[name].detach(), rtol=1e-6, atol=1e-7)


def _support_pack(data: CrossDomainData) -> VerificationPack:
    """Pairs of the support's own chips (identities 0-2): a pack the adaptation must improve, so the curve moves."""
    same = [(0, 1), (2, 3), (4, 5)] * 4
    different = [(0, 2), (0, 4), (1, 3), (1, 5), (2, 4), (3, 5)] * 2
    pairs = [pair for both in zip(same, different) for pair in both]
    images = [data.train.chips[index] for pair in pairs for index in pair]
    return VerificationPack("thermal", images, np.array([pair in same for pair in pairs]), "0" * 64)


@pytest.mark.parametrize("method", ["lora", "dalora"])
def test_stage2_step_count_is_chosen_on_validation_and_the_kept_tensors_are_that_step_counts(tmp_path, method,
                                                                                             monkeypatch):
    _, adapter = _tiny_start(tmp_path)
    settings = CrossDomainSettings(**{**TINY, "adapt_steps": 4}, method=method, choose_steps_on_validation=True)
    assert settings.validation_step_counts == (0, 1, 3, 4)
    data = _tiny_data()
    data = dataclasses.replace(data, validation_pack=_support_pack(data))
    split = ThermalSplit(2, {0: [0, 1], 1: [2, 3], 2: [4, 5]}, ())
    torch.manual_seed(0)
    backbone, params, to_parameters = crossdomain._adapted_model(settings, adapter)
    start_score = StartScore()
    choice = crossdomain.ValidationChoice(backbone, to_parameters, settings, data, start_score)
    start = {name: tensor.clone() for name, tensor in params.items()}
    adapt(backbone, params, to_parameters, data, split, settings, at_step=choice.score)
    assert start_score.metrics == choice.curve["0"]  # the start's validation metrics, kept for the run's other k

    assert list(choice.curve) == ["0", "1", "3", "4"]
    aucs = {int(steps): metrics["auc"] for steps, metrics in choice.curve.items()}
    assert len(set(aucs.values())) > 1  # the choice is not a tie of equal curves
    assert choice.chosen_steps == min(steps for steps, auc in aucs.items() if auc == max(aucs.values()))
    # the kept tensors are those after the chosen step count: the same adaptation stopped there
    again = start if choice.chosen_steps == 0 else adapt(
        backbone, start, to_parameters, data, split,
        dataclasses.replace(settings, adapt_steps=choice.chosen_steps, choose_steps_on_validation=False))[0]
    for name in start:
        torch.testing.assert_close(choice.best_tensors[name], again[name], rtol=0, atol=0)
    # the validation score of the chosen step is the merged model's on the validation pack
    model = choice._merged(choice.best_tensors)
    assert crossdomain.score_packs(model, {"thermal": data.validation_pack})["thermal"]["auc"] == \
        aucs[choice.chosen_steps]
    assert choice.to_dict()["validation_pack"] == "val/thermal"
    # another k of the same run adapts the same start: its 0-step metrics are the shared ones, not scored again
    scored = []
    score_packs = crossdomain.score_packs
    monkeypatch.setattr(crossdomain, "score_packs", lambda *a, **k: scored.append(1) or score_packs(*a, **k))
    other = crossdomain.ValidationChoice(backbone, to_parameters, settings, data, start_score)
    adapt(backbone, dict(start), to_parameters, data, ThermalSplit(1, {0: [0], 1: [2], 2: [4]}, ()), settings,
          at_step=other.score)
    assert len(scored) == 3 and other.curve["0"] == choice.curve["0"]  # 1, 3 and 4 steps scored; 0 shared


def test_choosing_stage2_steps_on_validation_is_refused_where_there_is_no_validation_or_no_stage2():
    with pytest.raises(SettingsError, match="no validation identities"):
        CrossDomainSettings(data_profile="full", train_rec="/x", target_dir="/y", bins_dir="/z",
                            choose_steps_on_validation=True)
    with pytest.raises(SettingsError, match="no stage 2"):
        CrossDomainSettings(direction="indoor->outdoor", choose_steps_on_validation=True)
    plain = CrossDomainSettings(choose_steps_on_validation=False)
    assert plain.validation_step_counts == () and plain.adapt_steps == 10  # the first grids' fixed budget
    assert CrossDomainSettings(adapt_steps=30, choose_steps_on_validation=True).validation_step_counts == \
        (0, 1, 3, 5, 10, 25, 30)
    # an added field: in the digest only when set (runs recorded before it keep their tags)
    assert "choose_steps_on_validation" not in plain.digest_values()
    assert CrossDomainSettings(choose_steps_on_validation=True).tag != plain.tag


@pytest.mark.parametrize("given, chooses", [
    ({}, True),  # embedded, visible -> thermal: val/thermal.bin
    ({"direction": "visible->lowquality"}, True),  # val/lowquality.bin
    ({"direction": "indoor->outdoor"}, False),  # no stage 2
    ({"data_profile": "full", "train_rec": "/x", "target_dir": "/y", "bins_dir": "/z"}, False)])  # no validation
def test_stage2_chooses_its_step_count_on_validation_by_default_wherever_the_target_has_validation_identities(
        given, chooses):
    """The default of ``choose_steps_on_validation`` is the reported grids' recipe where it can run, and off (never
    refused) where it cannot."""
    settings = CrossDomainSettings(**given)
    assert settings.choose_steps_on_validation is chooses
    assert settings.validation_step_counts == ((0, 1, 3, 5, 10) if chooses else ())
    assert ("choose_steps_on_validation" in settings.digest_values()) is chooses


def test_the_contrastive_rows_add_their_terms_to_the_adaptation_loss(tmp_path):
    from torch.func import functional_call

    from afr.losses.contrastive import supervised_info_nce
    from afr.meta import prototype_margin_loss, prototypes

    lora, _ = _tiny_start(tmp_path)
    data = _tiny_data(12)
    split = ThermalSplit(2, {0: [0, 1], 1: [2, 3], 2: [4, 5]}, (6, 7, 8, 9, 10, 11))
    params = {name: p.detach().clone() for name, p in lora.named_parameters() if p.requires_grad}
    losses = {}
    for method in ("lora", "dalora+maml+contrastive", "dalora+maml+contrastive+semi"):
        settings = CrossDomainSettings(**{**TINY, "adapt_steps": 1}, method=method)
        losses[method] = adapt(lora, params, lambda tensors: tensors, data, split, settings)[1][0]
    with torch.no_grad():
        embeddings = functional_call(lora, params, (data.train.images(split.indices),), strict=False)
        margin = prototype_margin_loss(embeddings, split.labels, prototypes(embeddings, split.labels, 3), CosFaceMargin())
        contrastive = supervised_info_nce(embeddings, split.labels, temperature=0.1)
    assert losses["lora"] == pytest.approx(float(margin), rel=1e-5)
    assert losses["dalora+maml+contrastive"] == pytest.approx(float(margin + 0.1 * contrastive), rel=1e-5)
    assert abs(losses["dalora+maml+contrastive+semi"] - losses["dalora+maml+contrastive"]) > 1e-4  # the views' term


def test_the_unlabelled_term_takes_the_other_view_of_the_same_image_as_the_only_positive():
    torch.manual_seed(0)
    first, second = torch.randn(3, 5), torch.randn(3, 5)
    tau = 0.5
    z = torch.nn.functional.normalize(torch.cat([first, second]), dim=1)
    expected = []
    for anchor in range(6):  # NT-Xent by hand: the positive of view i of image j is the other view of image j
        positive = (anchor + 3) % 6
        others = [a for a in range(6) if a != anchor]
        logits = torch.stack([z[anchor] @ z[a] / tau for a in others])
        expected.append(-(z[anchor] @ z[positive] / tau - torch.logsumexp(logits, 0)))
    torch.testing.assert_close(view_contrastive_loss(first, second, tau), torch.stack(expected).mean())
    views = torch.randn(8, 16)
    same = view_contrastive_loss(views, views + 0.01 * torch.randn(8, 16), 0.1)
    shuffled = view_contrastive_loss(views, views[torch.randperm(8, generator=torch.Generator().manual_seed(1))], 0.1)
    assert same < shuffled


@pytest.mark.shared("data/faces/thermal")
def test_support_and_unlabelled_images_are_disjoint_thermal_training_images(embedded_benchmark):
    data = load_data(CrossDomainSettings(embedded_root=str(embedded_benchmark.root)))
    thermal = set(np.flatnonzero(np.isin(data.train.collections, ("thermal_und", "thermal_puj"))).tolist())
    test_identities = {name for collection in ("thermal_und", "thermal_puj")
                       for name in collection_identities(embedded_benchmark, collection, "test")}
    for shots in (1, 4):
        split = thermal_split(data, shots, seed=0)
        labelled, unlabelled = set(split.indices), set(split.unlabelled)
        assert not labelled & unlabelled and labelled | unlabelled == thermal
        assert all(len(indices) == shots for indices in split.support.values())
        assert not {data.identities[i] for i in unlabelled} & test_identities
        assert len(unlabelled) == len(split.unlabelled)


def test_the_validation_pack_holds_no_training_or_test_chip(embedded_benchmark):
    """Stage 2's step count is chosen on val/thermal.bin: none of its chips is a thermal training chip (support or
    unlabelled) or a chip of the thermal test packs."""
    data = load_data(CrossDomainSettings(embedded_root=str(embedded_benchmark.root), choose_steps_on_validation=True))
    assert data.validation_pack is not None and data.validation_pack.path.parent.name == "val"
    digest = lambda image: hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()  # noqa: E731
    validation = {digest(image) for image in data.validation_pack.images}
    thermal = np.flatnonzero(np.isin(data.train.collections, ("thermal_und", "thermal_puj")))
    training = {digest(data.train.chips[index]) for index in thermal}
    test = {digest(image) for name in ("thermal_und", "thermal_puj", "thermal") for image in data.test_packs[name].images}
    assert validation and not validation & training and not validation & test
    assert load_data(CrossDomainSettings(embedded_root=str(embedded_benchmark.root),
                                         choose_steps_on_validation=False)).validation_pack is None


@pytest.mark.parametrize("grid", ["thermal_validated", "thermal_kall_validated"])
def test_the_committed_validated_grids_kept_the_validation_best_step_count(grid):
    """Every adapted run of the reported thermal grids scored 0 1 3 5 10 25 steps on validation, chose the first
    best, and its table rows are its record's test scores at that choice; the chosen-steps table reads them back."""
    from afr.experiments.grids import CommittedGrids
    from afr.paths import PROJECT_ROOT

    committed = PROJECT_ROOT / "results"  # the committed results (make test points AFR_RESULTS at a scratch folder)
    settings = CommittedGrids().crossdomain_grids[grid]
    records, table = {}, pd.read_csv(committed / "tables" / "crossdomain.csv")
    for method in settings.adapted_methods():
        for seed in settings.seeds:
            record = json.loads((committed / "crossdomain" / f"{settings.for_run(method, seed).tag}.json").read_text())
            records[(method, seed)] = record
            for key, adaptation in record["adaptation"].items():
                aucs = {int(steps): metrics["auc"] for steps, metrics in adaptation["validation"].items()}
                assert list(aucs) == [0, 1, 3, 5, 10, 25] and adaptation["validation_pack"] == "val/thermal"
                assert adaptation["chosen_steps"] == min(steps for steps, auc in aucs.items() if auc == max(aucs.values()))
                rows = table[(table["run"] == record["tag"]) & (table["metric"] == "auc") & (table["domain"] == "thermal")
                             & (table["shots"] == (ALL_SHOTS if key == "kall" else int(key[1:])))]
                assert rows["value"].tolist() == [record["test"][key]["thermal"]["auc"]]
    validation = crossdomain.validation_table(records)
    chosen = validation[validation["chosen"]]
    assert len(chosen) == len(validation) // 6 == len(chosen.groupby(["method", "seed", "shots"]))
    summary = crossdomain.chosen_steps_table(validation)
    assert len(summary) == len(chosen.groupby(["method", "shots"]))
    assert all(len(cell.split()) == len(settings.seeds) for cell in summary["chosen steps (per seed)"])


def test_contrastive_rows_at_k1_are_skipped_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    settings = CrossDomainSettings()
    for method in ("dalora+maml+contrastive", "dalora+maml+contrastive+semi"):
        assert "no positive" in settings.not_applicable(method, 1)
        assert settings.not_applicable(method, 2) is None
        record = run_method(CrossDomainSettings(method=method, shots=(1,), progress=False), data=None)
        assert record["test"] == {} and "no positive" in record["skipped"]["1"]
    assert all(settings.not_applicable(method, 1) is None for method in METHODS[:4])
    # k = all leaves no unlabelled image: the semi row alone is skipped there
    assert "none is left" in settings.not_applicable("dalora+maml+contrastive+semi", ALL_SHOTS)
    assert settings.not_applicable("dalora+maml+contrastive", ALL_SHOTS) is None
    # a direction without target training identities has only its starts (and zero-shot)
    outdoor = CrossDomainSettings(direction="indoor->outdoor")
    assert all("no labelled target" in outdoor.not_applicable(method, 4) for method in METHODS[1:])
    assert "no labelled target" in crossdomain.data_summary(load_data(outdoor), outdoor)
    assert not (tmp_path / "results" / "tables" / "crossdomain.csv").exists()  # no rows, no meta-training


def test_shots_all_is_every_target_training_image():
    settings = CrossDomainSettings(shots=("all", 4, "1"))
    assert settings.shots == (1, 4, ALL_SHOTS) and shots_label(ALL_SHOTS) == "all"
    assert dataclasses.replace(settings, seed=1).shots == settings.shots  # parsed values parse again as themselves
    with pytest.raises(ValueError, match="at least 1"):
        CrossDomainSettings(shots=(0,))
    data = load_data(settings)
    split = thermal_split(data, ALL_SHOTS, seed=0)
    thermal = np.flatnonzero(np.isin(data.train.collections, ("thermal_und", "thermal_puj")))
    assert sorted(split.indices) == thermal.tolist() and split.unlabelled == ()
    assert len(split.support) == len(set(data.train.labels[thermal].tolist()))
    # another direction draws its support from its own target collection only
    lowquality = thermal_split(data, 2, seed=0, collections=("lowquality",))
    assert set(data.train.collections[lowquality.indices]) == {"lowquality"}
    assert all(len(indices) == 2 for indices in lowquality.support.values())


def test_directions_name_their_sources_and_keep_the_default_tags():
    base = CrossDomainSettings(choose_steps_on_validation=False)  # as the runs recorded before directions existed
    assert base.tag == dataclasses.replace(base, direction="visible->thermal").tag
    # the default's digest does not name the direction: tags recorded before directions existed stay valid
    assert "direction" not in base.digest_values()
    lowquality = dataclasses.replace(base, direction="visible->lowquality")
    outdoor = dataclasses.replace(base, direction="indoor->outdoor")
    assert lowquality.tag != base.tag != outdoor.tag
    # the starts depend on the source collections: two directions from ORL + Yale share them
    assert lowquality.start_tag("maml") == outdoor.start_tag("maml") != base.start_tag("maml")
    assert lowquality.dalora_settings().domains == ("visible", "lowquality")
    assert base.for_run("zero-shot", 0).tag == lowquality.for_run("zero-shot", 0).tag  # scores every pack anyway


def test_tags_follow_what_each_run_depends_on():
    base = CrossDomainSettings()
    adapted = dataclasses.replace(base, adapt_lr=1e-2)
    assert adapted.tag != base.tag and adapted.start_tag("maml") == base.start_tag("maml")
    assert base.start_tag("pooled") == dataclasses.replace(base, inner_steps=5).start_tag("pooled")
    assert base.start_tag("maml") != dataclasses.replace(base, inner_steps=5).start_tag("maml")
    assert base.for_run("zero-shot", 2).tag == base.for_run("zero-shot", 0).tag == \
        dataclasses.replace(base, meta_steps=60).for_run("zero-shot", 1).tag
    assert dataclasses.replace(base, progress=False, overwrite=True).tag == base.tag


def _metrics(accuracy: float) -> dict[str, float]:
    return {"accuracy_mean": accuracy, "accuracy_std": 0.01, "auc": accuracy, "eer": 1 - accuracy}


def test_grid_rows_and_forgetting_against_the_start_and_zero_shot():
    packs = ("thermal_und", "thermal_puj", "thermal", "controlled", "wild", "lowquality")
    zero = {"tag": "z", "method": "zero-shot", "shots": 0, "test": {p: _metrics(0.80) for p in packs}}
    start = {"tag": "s", "method": "pooled-start", "shots": 0, "test": {p: _metrics(0.90) for p in packs}}
    lora = {"tag": "l", "method": "lora", "shots": [4], "test": {"k4": {p: _metrics(0.85) for p in packs}}}
    dalora = {"tag": "d", "method": "dalora", "shots": [4],
              "test": {"k4": {p: _metrics(0.95 if p.startswith("thermal") else 0.90) for p in packs}}}
    records = {("zero-shot", 0): zero, ("pooled-start", 0): start, ("lora", 0): lora, ("dalora", 0): dalora}
    table = grid_table(records)
    assert set(table["domain"]) == set(packs) and set(table["metric"]) == {"accuracy", "auc", "eer"}
    assert sorted(set(zip(table["method"], table["shots"]))) == [
        ("dalora", 4), ("lora", 4), ("pooled-start", 0), ("zero-shot", 0)]
    forgetting = forgetting_table(table).set_index(["method", "domain"])
    assert forgetting.loc[("dalora", "wild"), "change_vs_start"] == 0.0
    assert forgetting.loc[("lora", "wild"), "change_vs_start"] == pytest.approx(-0.05)
    assert forgetting.loc[("lora", "wild"), "change_vs_zero_shot"] == pytest.approx(0.05)
    assert forgetting.loc[("zero-shot", "wild"), "change_vs_start"] == 0.0
    rows = pd.DataFrame(crossdomain._rows(lora, CrossDomainSettings(), [0, 1]))
    assert set(rows["shots"]) == {4} and set(rows["seed"]) == {0, 1} and set(rows["method"]) == {"lora"}


def test_zero_shot_is_scored_once_and_has_rows_for_every_seed_of_the_grids(tmp_path, monkeypatch):
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    settings = CrossDomainSettings(seeds=(0, 1))
    packs = ("thermal_und", "thermal_puj", "thermal", "controlled", "wild", "lowquality")
    record = {"experiment": "crossdomain", "tag": settings.for_run("zero-shot", 0).tag, "method": "zero-shot",
              "seed": 0, "shots": 0, "test": {p: _metrics(0.8) for p in packs}}
    crossdomain._write_record(record, [])
    assert crossdomain.run_zero_shot(settings, data=None)["test"] == record["test"]  # reused, not scored
    crossdomain.run_zero_shot(dataclasses.replace(settings, seeds=(2,)), data=None)
    table = pd.read_csv(tmp_path / "results" / "tables" / "crossdomain.csv")
    assert sorted(set(table["seed"])) == [0, 1, 2] and set(table["shots"]) == {0}
    assert set(table["method"]) == {"zero-shot"} and set(table["domain"]) == set(packs)


def test_the_regression_check_compares_every_k_and_pack_with_the_committed_record(tmp_path, monkeypatch):
    from afr.experiments import reference

    monkeypatch.setattr(reference, "PROJECT_ROOT", tmp_path)
    packs = ("thermal", "wild")
    record = {"experiment": "crossdomain", "tag": "crossdomain_lora_seed0_x", "method": "lora", "shots": [1, 4],
              "test": {f"k{k}": {p: _metrics(0.9) for p in packs} for k in (1, 4)}}
    assert crossdomain.compare_with_committed({("lora", 0): record}).startswith("no committed runs")
    (tmp_path / "results" / "crossdomain").mkdir(parents=True)
    (tmp_path / "results" / "crossdomain" / f"{record['tag']}.json").write_text(json.dumps(record))
    assert crossdomain.compare_with_committed({("lora", 0): record, ("lora", 1): record}).startswith("1 run(s) agree")
    moved = copy.deepcopy(record)
    moved["test"]["k4"]["wild"]["auc"] = 0.8
    with pytest.raises(AssertionError, match="k4/wild/auc"):
        crossdomain.compare_with_committed({("lora", 0): moved})
