"""Notebook 06's ablation grid: expert schemes on the real training pack, cells that change one thing, the
router-only component, stable tags, and the committed records."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch
import yaml

from afr.adapters.dalora import DaLoraSettings, apply_dalora, dalora_state
from afr.cli import build_parser
from afr.data.embedded import load_embedded
from afr.experiments.ablations import (COMPONENTS, EXPERT_SCHEMES, SWEEPS, AblationSettings, adapter_settings,
                                       expert_names, grid_cells, load_data, training_view)
from afr.models import create_backbone
from afr.models.domain_aware import DomainAwareRecognitionModel
from afr.paths import PROJECT_ROOT

# the embedded benchmark (data/processed/embedded) is built once per session, before any test here reads it
pytestmark = pytest.mark.usefixtures("embedded_benchmark")


@pytest.fixture(scope="module")
def data():
    return load_data(AblationSettings())


def committed_grid() -> AblationSettings:
    """The settings of ``make ablations-results``: the notebook's defaults with the Makefile's YAML over them."""
    makefile = (PROJECT_ROOT / "Makefile").read_text().replace("\\\n", " ")
    (text,) = re.findall(r"^ABLATIONS_RESULTS := (.*)$", makefile, flags=re.M)
    return AblationSettings(**yaml.safe_load(text))


# ------------------------------------------------------------------------------------------ expert schemes
def test_every_scheme_puts_each_training_chip_in_exactly_one_of_k_experts_matching_domains_and_collections(data):
    collections = data.collections
    pack = data.baseline.train
    domain_of_chip = np.array(pack.domain_names)[np.asarray(pack.domains)]
    assert len(collections) == len(pack) == 710
    for k in EXPERT_SCHEMES:
        view = training_view(data, k)
        assert len(view) == len(pack)
        codes = np.asarray(view.domains)
        present = sorted(set(codes.tolist()))
        names = np.array(view.domain_names)[codes]  # the expert of every chip, one each
        if k in (1, 3):  # the pack itself: its own domains are the experts (K = 1: what the router classifies)
            assert view is pack and [view.domain_names[c] for c in present] == ["controlled", "thermal", "lowquality"]
        else:
            assert present == list(range(k)) and tuple(view.domain_names) == expert_names(k)
        assert len(set(names)) == (3 if k == 1 else k)
        scheme = EXPERT_SCHEMES[3 if k == 1 else k]
        assert list(names) == [scheme[c] for c in collections]
        if k == 2:
            assert list(names) == ["thermal" if c.startswith("thermal") else "visible" for c in collections]
        if k == 3:  # = domains.json's domain of every record
            assert list(names) == list(domain_of_chip)
        if k == 4:
            assert list(names) == ["thermal" if c.startswith("thermal") else c for c in collections]
        if k == 5:
            assert list(names) == list(collections)
    # an expert view yields the expert code with every sample, as the training engine reads it
    view = training_view(data, 5)
    image, label, code = view[400]
    assert view.domain_names[code] == collections[400] and label == pack[400][1]
    assert json.loads((load_embedded(None).root / "train" / "domains.json").read_text())["names"] == list(
        pack.domain_names)


# ------------------------------------------------------------------------------------------ the grid
def _differences(a: AblationSettings, b: AblationSettings) -> set[str]:
    ignored = set(AblationSettings.EXECUTION_FIELDS)
    return {f.name for f in dataclasses.fields(a) if f.name not in ignored and getattr(a, f.name) != getattr(b, f.name)}


def test_each_cell_differs_from_the_full_model_only_in_its_swept_setting_and_defaults_share_its_run():
    settings = committed_grid()
    cells = grid_cells(settings)
    assert settings.seeds == (0, 1, 2) and settings.meta_steps == 20
    for cell in cells:
        full = settings.full_model(cell.settings.seed)
        changed = _differences(cell.settings, full)
        if cell.group == "component":
            expected = {name for name, value in COMPONENTS[cell.value][1].items() if getattr(full, name) != value}
            assert changed == expected, cell
        elif cell.value == getattr(full, cell.group):  # a sweep's default value is the full model's own run
            assert changed == set() and cell.settings.tag == full.tag
        else:
            assert changed == {cell.group}, cell
    values = {group: {c.value for c in cells if c.group == group} for group in SWEEPS}
    assert values == {"rank": {2, 4, 8, 16, 32}, "experts": {2, 3, 4, 5}, "lambda_contrastive": {0.01, 0.05, 0.1, 0.5},
                      "lambda_domain": {0.01, 0.05, 0.1, 0.5}, "inner_steps": {1, 3, 5, 10}}
    runs = {cell.settings.tag for cell in cells}
    starts = {cell.settings.start_tag for cell in cells if cell.settings.maml_start}
    assert len(cells) == 3 * (6 + 5 + 4 + 4 + 4 + 4) and len(runs) == 3 * 22 and len(starts) == 3 * 8


def test_the_router_only_component_has_one_expert_and_a_router_the_domain_loss_trains_but_cannot_pass(data):
    (cell,) = [c for c in grid_cells(AblationSettings()) if c.group == "component" and c.value == "lora+router"]
    train = training_view(data, cell.settings.experts)
    adapter = adapter_settings(cell.settings, train)
    assert adapter.num_experts == 1 and adapter.gating == "classifier"
    assert adapter.router_classes == ("controlled", "thermal", "lowquality")
    assert cell.settings.lambda_domain > 0 and cell.settings.lambda_contrastive == 0

    codes = np.asarray(train.domains)
    indices = [int(i) for code in sorted(set(codes.tolist())) for i in np.flatnonzero(codes == code)[:2]]
    images = torch.stack([torch.from_numpy(train[i][0]).permute(2, 0, 1) for i in indices]).float() / 255
    labels = torch.tensor([int(train[i][1]) for i in indices])
    domains = torch.tensor([int(train[i][2]) for i in indices])
    assert len(set(domains.tolist())) >= 2
    gradients = {}
    for weight in (cell.settings.lambda_domain, 0.0):
        torch.manual_seed(0)
        backbone = apply_dalora(create_backbone("dlib-resnet29"), adapter)
        model = DomainAwareRecognitionModel(backbone, train.num_classes, lambda_contrastive=0.0, lambda_domain=weight)
        output = model(images, labels, domains)
        output.loss.backward()
        assert dalora_state(backbone).router_logits.shape == (len(indices), 3)
        assert torch.equal(dalora_state(backbone).gates, torch.ones(len(indices), 1))  # one expert, gate 1
        router = {n: p.grad for n, p in backbone.dalora_router.named_parameters()}
        gradients[weight] = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                             for n, p in backbone.named_parameters() if n.endswith(("lora_A.weight", "lora_B.weight"))}
        assert any(float(g.abs().sum()) > 0 for g in gradients[weight].values())  # the expert learns
        if weight > 0:
            assert float(output.terms["domain"].detach()) > 0
            assert any(g is not None and float(g.abs().sum()) > 0 for g in router.values())  # the router learns
        else:
            assert all(g is None or float(g.abs().sum()) == 0 for g in router.values())
    # the domain loss reaches the router only: the expert's gradients are the same with and without it
    assert gradients[0.0].keys() == gradients[cell.settings.lambda_domain].keys() and gradients[0.0]
    for name, gradient in gradients[0.0].items():
        assert torch.equal(gradient, gradients[cell.settings.lambda_domain][name]), name


def test_router_domains_need_a_single_expert_and_known_domains():
    with pytest.raises(ValueError, match="single expert"):
        DaLoraSettings(domains=("controlled", "thermal"), router_domains=("controlled", "thermal", "lowquality"))
    with pytest.raises(ValueError, match="router_domains"):
        DaLoraSettings(domains=("all",), router_domains=("controlled", "infrared"))
    with pytest.raises(ValueError, match="domain_codes"):
        DaLoraSettings(domains=("all",))  # without router_domains an expert must be a domain
    settings = DaLoraSettings(domains=("all",), router_domains=("controlled", "thermal"))
    assert DaLoraSettings.from_dict(settings.to_dict()) == settings and settings.router_classes == ("controlled",
                                                                                                    "thermal")


# ------------------------------------------------------------------------------------------ tags, settings
def test_tags_are_stable_and_tell_apart_only_what_a_run_depends_on():
    full = AblationSettings().full_model(0)
    assert full.tag == "ablations_dalora-k3-r8+maml+contrastive_seed0_" + full.digest()
    assert full.start_tag.startswith("ablations_maml-start-r8-inner3_seed0_")
    for change in ({"groups": ("component",)}, {"seeds": (0, 1, 2)}, {"ranks": (2, 32)}, {"progress": False},
                   {"overwrite": True}, {"output_dir": "/elsewhere"}, {"expert_counts": (5,)}):
        assert dataclasses.replace(full, **change).tag == full.tag, change
    for change in ({"rank": 4}, {"experts": 5}, {"lambda_domain": 0.5}, {"meta_steps": 7}, {"inner_steps": 1},
                   {"epochs": 2}, {"seed": 1}):
        assert dataclasses.replace(full, **change).tag != full.tag, change
    # a run without a MAML start does not depend on the start's settings; LoRA not on the router's
    plain = dataclasses.replace(full, maml_start=False)
    assert dataclasses.replace(plain, meta_steps=20, inner_steps=10).tag == plain.tag
    lora = dataclasses.replace(plain, method="lora")
    assert dataclasses.replace(lora, experts=5, lambda_domain=0.5).tag == lora.tag
    assert {full.start_tag} == {dataclasses.replace(full, experts=5, lambda_contrastive=0.5).start_tag}
    assert dataclasses.replace(full, rank=4).start_tag != full.start_tag


def test_committed_records_keep_their_tags():
    """Every committed run record names the tag its own settings give today (tags never drift under a record)."""
    records = [json.loads(path.read_text()) for path in sorted((PROJECT_ROOT / "results" / "ablations").glob("*.json"))]
    runs = [record for record in records if record.get("method") != "maml-start"]
    assert runs  # the committed grid and the demo's runs
    defaults = {**dataclasses.asdict(AblationSettings()), **AblationSettings.UNRECORDED_VALUES}
    for record in runs:
        # fields added later may only say how a grid runs, or be the full profile's (ADDED_FIELDS: the records ran
        # at their defaults, or at their unrecorded values where a default changed, which leave the tag as it was)
        missing = set(defaults) - set(record["settings"])
        assert missing <= {*AblationSettings.EXECUTION_FIELDS, *AblationSettings.ADDED_FIELDS}, missing
        settings = AblationSettings.from_mapping({**defaults, **record["settings"]})
        assert settings.tag == record["tag"]
        assert record["test"] and record["train"]["history"][-1]["val/thermal/auc"] > 0.5
    router_only = [r for r in runs if r["settings"]["experts"] == 1 and r["settings"]["method"] != "lora"]
    assert router_only and all(r["train"]["history"][-1]["train_domain"] > 0 for r in router_only)


def test_cli_options_are_the_settings_and_bad_values_are_one_clear_error():
    args = build_parser().parse_args(["ablations", "--seeds", "0", "1", "2", "--ranks", "2", "32", "--no-maml-start"])
    assert AblationSettings.from_mapping(vars(args)) == AblationSettings(seeds=(0, 1, 2), ranks=(2, 32),
                                                                         maml_start=False)
    with pytest.raises(ValueError, match="unknown group"):
        AblationSettings(groups=("component", "depth"))
    with pytest.raises(ValueError, match="unknown component"):
        AblationSettings(components=("lora", "dalora+semi"))
    with pytest.raises(ValueError, match="no expert scheme"):
        AblationSettings(expert_counts=(2, 7))
    with pytest.raises(ValueError, match="maml_start needs"):
        AblationSettings(method="lora")


def test_a_grid_of_some_groups_keeps_the_rows_of_the_shared_runs_other_groups(tmp_path, monkeypatch, data):
    """``make ablations-results ABLATION_GROUPS=rank`` after the other groups: the full model's run serves the rank
    sweep's r = 8 cell and the component table's full row; its component rows stay in the table."""
    from afr.experiments import ablations
    from afr.experiments.dalora_run import RunOutcome
    from afr.experiments.records import read_table

    monkeypatch.setenv("AFR_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("AFR_RUNS", str(tmp_path / "runs"))
    history = [{"epoch": 0, "val/thermal/auc": 0.9, "val/thermal/accuracy": 0.8}]
    monkeypatch.setattr(ablations, "check_starts", lambda runs: None)
    monkeypatch.setattr(ablations, "_run", lambda settings, data, retrained: RunOutcome(
        {"tag": settings.tag, "test": {"thermal": {"auc": 0.95}}, "train": {"history": history}}, reused=True))
    settings = AblationSettings(components=("lora", "full"), progress=False)
    ablations.run_grid(dataclasses.replace(settings, groups=("component", "rank")), data, report=None)
    full = settings.full_model(0).tag
    before = read_table("ablations")
    assert set(before.loc[before["run"] == full, "group"]) == {"component", "rank"}
    ablations.run_grid(dataclasses.replace(settings, groups=("rank",)), data, report=None)
    after = read_table("ablations")
    assert len(after) == len(before) and set(after.loc[after["run"] == full, "group"]) == {"component", "rank"}
