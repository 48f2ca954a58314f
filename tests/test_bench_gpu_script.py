"""``bench/gpu_vit_lora_throughput.py`` on the CPU with its tiny ViT: the record's keys, finite ratios, the peaks."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest

from afr.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "bench" / "gpu_vit_lora_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_vit_lora_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_writes_a_record_with_finite_ratios(bench, tmp_path, capsys):
    out = tmp_path / "record.json"
    bench.main(["--device", "cpu", "--tiny", "--batch-sizes", "2,4", "--steps", "2", "--records", "32",
                "--fused-adamw", "--out", str(out)])
    printed = capsys.readouterr().out
    record = json.loads(out.read_text())
    assert {"script", "created", "torch", "device", "options", "mfu_peak_flops", "models", "seconds"} <= set(record)
    assert record["device"]["type"] == "cpu" and record["device"]["bf16_peak_flops"] is None
    assert record["options"]["tiny"] and record["options"]["fused_adamw"] and record["options"]["precision"] == "fp32"
    model = record["models"]["tiny-vit"]
    assert "built in code" in model["weights"]
    assert model["attention"]["implementation"] == "sdpa" and model["attention"]["sdpa_kernels"]
    assert model["flops_per_image"] > 0 and 0 < model["lora_trainable"] < model["backbone_parameters"]
    assert [entry["batch"] for entry in model["sweep"]] == [2, 4] and model["skipped_batch_sizes"] == []
    for entry in model["sweep"]:
        for key in ("bare_img_per_s", "trainer_img_per_s", "trainer_over_bare"):
            assert math.isfinite(entry[key]) and entry[key] > 0
        assert entry["bare_mfu"] is None and entry["trainer_mfu"] is None  # no peak, no MFU
    loader = model["loader"]
    assert loader["batch"] == 4 and loader["workers"] == 0 and loader["pin_memory"] is False
    for key in ("loader_img_per_s_while_training", "loader_over_trainer", "fed_trainer_img_per_s", "fed_over_trainer"):
        assert math.isfinite(loader[key]) and loader[key] > 0
    assert 0 <= loader["fed_wait_fraction"] < 1
    assert "trainer/bare" in printed and "loader/trainer" in printed and str(out) in printed


@pytest.mark.parametrize(
    "name,variant,peak",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4e12),
        ("NVIDIA H100 SXM5 80GB", "H100 SXM", 989.4e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.5e12),
        ("NVIDIA H100 NVL", "H100 NVL", 835.5e12),
        ("NVIDIA H200", "H200 SXM", 989.4e12),
        ("NVIDIA H200 NVL", "H200 NVL", 835.5e12),
        ("NVIDIA H100", None, None),  # which H100 is not said: not guessed
        ("NVIDIA GeForce RTX 4090", None, None),
    ],
)
def test_the_peak_is_the_cards_own_or_unknown(bench, name, variant, peak):
    assert bench.bf16_peak(name) == (variant, peak)
