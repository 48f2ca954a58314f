"""Settings are checked when they are built: a bad value is one error naming its ``--flag``, before any work."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from afr.cli import main
from afr.data.embedded import EmbeddedConfig
from afr.experiments.ablations import AblationSettings
from afr.experiments.crossdomain import CrossDomainSettings
from afr.experiments.dalora_vs_lora import DaLoraExperimentSettings
from afr.experiments.maml_init import MamlExperimentSettings
from afr.experiments.settings import FIELD_RULES, BaselineSettings, SettingsError, _argument_type
from afr.validation import Rule

SETTINGS_CLASSES = (BaselineSettings, DaLoraExperimentSettings, MamlExperimentSettings, CrossDomainSettings,
                    AblationSettings)
NAN, INF = float("nan"), float("inf")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Empty results / runs / data / figures folders: a refused command must leave them empty."""
    folders = {name: tmp_path / name for name in ("results", "runs", "data", "figures")}
    for variable, name in (("AFR_RESULTS", "results"), ("AFR_RUNS", "runs"), ("AFR_DATA", "data"),
                           ("AFR_FIGURES", "figures")):
        monkeypatch.setenv(variable, str(folders[name]))
    return tmp_path


def _written(root) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.mark.parametrize("settings_class", SETTINGS_CLASSES)
def test_every_numeric_setting_has_a_range_rule(settings_class):
    hints = typing.get_type_hints(settings_class)
    rules = {**FIELD_RULES, **settings_class.RULES}
    for spec in dataclasses.fields(settings_class):
        scalar = _argument_type(hints[spec.name])[0]
        if scalar in (int, float) and spec.metadata.get("choices") is None:
            assert spec.name in rules, f"{settings_class.__name__}.{spec.name} has no rule in FIELD_RULES"


@pytest.mark.parametrize("settings_class, changes, message", [
    (DaLoraExperimentSettings, {"lr": NAN}, "--lr (setting lr) must be a finite number > 0, got nan"),
    (DaLoraExperimentSettings, {"images_per_identity": 0}, "--images-per-identity (setting images_per_identity) "
                                                           "must be an integer >= 1, got 0"),
    (DaLoraExperimentSettings, {"search_lrs": (1e-4, INF)}, "--search-lrs"),
    (DaLoraExperimentSettings, {"batch_size": 30}, "multiple of --images-per-identity"),
    (DaLoraExperimentSettings, {"margin": "sphereface"}, "--margin (setting margin) must be one of cosface, arcface"),
    (MamlExperimentSettings, {"steps": (0, -1)}, "--steps (setting steps) must be a non-empty list of integers >= 0"),
    (MamlExperimentSettings, {"inner_lr": NAN}, "--inner-lr"),
    (MamlExperimentSettings, {"meta_steps": -3}, "--meta-steps"),
    (MamlExperimentSettings, {"seeds": ()}, "--seeds (setting seeds) must be a non-empty list"),
    (MamlExperimentSettings, {"shots": (0,)}, "--shots"),
    (MamlExperimentSettings, {"n_way": 1}, "--n-way"),
    (MamlExperimentSettings, {"methods": ()}, "--methods"),
    (CrossDomainSettings, {"adapt_lr": -1e-3}, "--adapt-lr"),
    (CrossDomainSettings, {"shots": (-2,)}, "--shots"),
    (CrossDomainSettings, {"contrastive_weight": NAN}, "--contrastive-weight"),
    (AblationSettings, {"lambda_domain_values": (0.01, NAN)}, "--lambda-domain-values"),
    (AblationSettings, {"ranks": ()}, "--ranks"),
    (AblationSettings, {"epochs": 0}, "--epochs"),
    (BaselineSettings, {"lora_dropout": 1.0}, "--lora-dropout"),
    (BaselineSettings, {"warmup_epochs": -0.5}, "--warmup-epochs"),
    (BaselineSettings, {"seed": -1}, "--seed"),
    (BaselineSettings, {"alpha": INF}, "--alpha"),
    (BaselineSettings, {"epochs": True}, "--epochs"),  # a bool is not a count
    (BaselineSettings, {"resume": True, "overwrite": True}, "resume and overwrite exclude each other"),
])
def test_a_setting_out_of_range_is_refused_when_the_settings_are_built(settings_class, changes, message):
    with pytest.raises(SettingsError) as caught:
        settings_class(**changes)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    # the notebooks build the same settings from their parameters: the same refusal
    with pytest.raises(SettingsError):
        settings_class.from_mapping({**dataclasses.asdict(settings_class()), **changes})


def test_settings_at_the_edges_of_their_ranges_are_accepted():
    MamlExperimentSettings(steps=(0,), shots=(1,), meta_steps=1, inner_lr=1e-6)
    CrossDomainSettings(shots=("all", 1), adapt_batch=None, contrastive_weight=0.0)
    DaLoraExperimentSettings(search_lrs=(), lambda_contrastive=0.0, warmup_epochs=0.0)
    BaselineSettings(alpha=None, m=0.0, lora_dropout=0.0, num_identities=None)


def test_rules_describe_what_they_accept():
    assert Rule(low=0, strict=True).describe() == "a finite number > 0"
    assert Rule(kind="integer", low=0, many=True).describe() == "a non-empty list of integers >= 0"
    assert not Rule().accepts(NAN) and not Rule().accepts("0.1") and Rule().accepts(3)
    assert not Rule(kind="integer").accepts(2.0)


@pytest.mark.parametrize("changes, message", [
    ({"few_shot_k": (1, -1)}, "--few-shot-k (setting few_shot_k) must be a non-empty list of integers >= 1"),
    ({"few_shot_k": ()}, "--few-shot-k"),
    ({"image_size": 0}, "--image-size"),
    ({"seed": -1}, "--seed"),
    ({"test_fraction": NAN}, "--test-fraction"),
])
def test_embedded_config_refuses_impossible_settings(changes, message):
    with pytest.raises(SettingsError) as caught:
        EmbeddedConfig(**changes)
    assert message in str(caught.value)


@pytest.mark.parametrize("argv, flag", [
    (["dalora", "--lr", "nan", "--methods", "lora"], "--lr"),
    (["dalora", "--images-per-identity", "0"], "--images-per-identity"),
    (["maml", "--steps", "-1", "--methods", "random"], "--steps"),
    (["maml", "--inner-lr", "nan"], "--inner-lr"),
    (["crossdomain", "--adapt-steps", "0"], "--adapt-steps"),
    (["ablations", "--lr", "inf"], "--lr"),
    (["baseline", "--epochs", "-1"], "--epochs"),
    (["build-embedded", "--few-shot-k", "-1"], "--few-shot-k"),
    (["build-embedded", "--image-size", "0"], "--image-size"),
])
def test_the_cli_refuses_a_bad_setting_in_one_line_before_writing_anything(scratch, capsys, argv, flag):
    output_dir = scratch / "data" / "embedded"
    if argv[0] == "build-embedded":
        argv = [*argv, "--output-dir", str(output_dir)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} "), captured.err
    assert "Traceback" not in captured.err
    assert _written(scratch) == []  # no record, table row, run folder, subset or benchmark folder
