"""The ``precision`` training setting: auto by default (bf16 on CUDA, fp32 on a CPU, as before; the recorded runs' tags
unchanged), fp32 or bf16 autocast on request,
and a bf16 run validates like the fp32 run (issue 18, item 6; speed: ``bench/cpu_training_step.py``)."""
from __future__ import annotations

import json

import pytest
import torch

from afr.experiments.settings.ablations import AblationSettings
from afr.experiments.settings.baseline import BaselineSettings
from afr.experiments.settings.dalora import DaLoraExperimentSettings
from afr.validation import SettingsError

#: largest |AUC(bf16) - AUC(fp32)| accepted per validation pack after one epoch of notebook 02's LoRA recipe (seed 0).
#: A fixed 0.005, below the recipe's seed-to-seed spread on the packs where AUC moves (committed baseline grid, lr 3e-4,
#: 4 epochs, 5 seeds: standard deviation 0.0057 on lowquality, 0.0155 on thermal; controlled sits at 0.9999-1.0):
#: bf16 must change a pack's AUC less than changing the seed does. Not a spread measured at one epoch: two more
#: one-epoch runs did not fit the session (README, "Benchmarks")
AUC_TOLERANCE = 0.005


@pytest.mark.parametrize("settings_class", [BaselineSettings, DaLoraExperimentSettings, AblationSettings])
def test_precision_defaults_to_auto_and_enters_the_tag_only_when_changed(settings_class):
    default = settings_class()
    assert default.precision == "auto"
    assert "precision" not in default.digest_values()  # the committed runs' tags stay valid
    bf16 = settings_class(precision="bf16")
    assert bf16.tag != default.tag
    with pytest.raises(SettingsError, match="precision"):
        settings_class(precision="fp16")


def test_dalora_runs_and_the_trainer_get_the_precision():
    from afr.experiments.training_setup import train_config

    run = DaLoraExperimentSettings(precision="bf16").run_settings()
    assert run.precision == "bf16"
    assert train_config(run, "unused", {}).precision == "bf16"
    config = train_config(BaselineSettings(), "unused", {})
    assert config.precision == "auto"  # the engine's own default: bf16 on CUDA, fp32 on a CPU
    assert config.resolve_precision(torch.device("cpu")) == "fp32"
    assert config.resolve_precision(torch.device("cuda")) == "bf16"


def final_val_aucs(settings: BaselineSettings, data) -> dict[str, float]:
    from afr.experiments.baseline import train_or_reuse

    run = train_or_reuse(settings, data=data, write=False, report=None)
    return {key: value for key, value in run.record["train"]["history"][-1].items() if key.endswith("/auc")}


@pytest.mark.slow
def test_bf16_training_validates_like_fp32(embedded_benchmark, tmp_path):
    """One epoch of notebook 02's LoRA recipe (seed 0, no test packs) in fp32 and in bf16 autocast on the CPU: the
    validation AUC of every pack agrees within :data:`AUC_TOLERANCE`, and the bf16 run did train in bf16."""
    from afr.experiments.benchmark_data import load_embedded_benchmark

    data = load_embedded_benchmark()
    aucs = {}
    for precision in ("fp32", "bf16"):
        settings = BaselineSettings(epochs=1, score_test=False, seed=0, device="cpu", progress=False,
                                    precision=precision, output_dir=str(tmp_path / precision))
        aucs[precision] = final_val_aucs(settings, data)
        config = json.loads((tmp_path / precision / "config.json").read_text())
        assert config["precision"] == precision
    assert aucs["fp32"].keys() == aucs["bf16"].keys() and aucs["fp32"]
    for key, value in aucs["fp32"].items():
        assert abs(aucs["bf16"][key] - value) <= AUC_TOLERANCE, (key, aucs)
