"""DA-LoRA: equivalence with LoRA for one expert, batched mixing vs a naive loop, oracle gradients, merging,
saving/loading, the router input and gate statistics, warm start, and ``evaluate --adapter`` on a saved
adapter -- on tiny DINOv2/CLIP models and the real dlib ResNet-29."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import afr.adapters
from afr.adapters import load_adapter as load_any_type
from afr.adapters.dalora import (
    DALORA_SETTINGS_NAME,
    DaLoraLayer,
    DaLoraSettings,
    DomainRouter,
    GateState,
    apply_dalora,
    dalora_state,
    gate_statistics,
    has_dalora,
    load_dalora,
    merge_dalora,
    save_dalora,
    set_domains,
    set_gating,
    trainable_parameters,
)
from afr.adapters.dalora.layer import wrap_layer
from afr.adapters.lora import AdapterMismatchError, LoraSettings, apply_lora, has_lora, save_adapter
from afr.cli import main
from afr.data.images import read_image
from afr.data.verification import write_bin
from afr.models import create_backbone
from afr.paths import shared_root

ROUTER_INPUTS = {
    "dlib-resnet29": "conv32_down",
    "tiny-dinov2": "model.embeddings",
    "tiny-clip": "model.vision_model.embeddings",
}


@pytest.fixture(scope="module")
def dlib():
    """The pretrained dlib ResNet-29 (loaded once; tests adapt deep copies)."""
    return create_backbone("dlib-resnet29")


def backbone(name: str, dlib_model: nn.Module) -> nn.Module:
    """A fresh copy of the named backbone (tiny ViTs seeded, so two calls give the same weights)."""
    if name == "dlib-resnet29":
        return copy.deepcopy(dlib_model)
    torch.manual_seed(0)
    return create_backbone(name)


def images(model: nn.Module, count: int = 3, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, model.input_size, model.input_size, generator=generator)


def randomise_experts(model: nn.Module, std: float = 0.05, seed: int = 2) -> None:
    """Non-zero B (and fresh A) everywhere, so that every expert changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DaLoraLayer):
                for weight in (module.lora_A.weight, module.lora_B.weight):
                    weight.copy_(torch.randn(weight.shape, generator=generator) * std)


# ---------------------------------------------------------------------------------------------- 1
@pytest.mark.parametrize("name", ["tiny-dinov2", "dlib-resnet29"])
def test_one_expert_with_uniform_gating_is_plain_lora(name, dlib):
    """K = 1, uniform gating: outputs and the gradients of A and B equal peft LoRA's with the same A/B."""
    settings = DaLoraSettings(r=4, alpha=8.0, domains=("controlled",), gating="uniform")
    model = apply_dalora(backbone(name, dlib), settings)
    randomise_experts(model)
    lora = apply_lora(backbone(name, dlib), LoraSettings(r=4, alpha=8.0, target_modules=model.dalora_module_names))
    for layer_name in model.dalora_module_names:
        ours, theirs = model.get_submodule(layer_name), lora.get_submodule(layer_name)
        with torch.no_grad():
            theirs.lora_A["default"].weight.copy_(ours.lora_A.weight)
            theirs.lora_B["default"].weight.copy_(ours.lora_B.weight)
    x = images(model)
    out_ours, out_lora = model(x), lora(x)
    torch.testing.assert_close(out_ours, out_lora)
    weights = torch.randn(out_ours.shape, generator=torch.Generator().manual_seed(3))
    (out_ours * weights).sum().backward()
    (out_lora * weights).sum().backward()
    for layer_name in model.dalora_module_names:
        ours, theirs = model.get_submodule(layer_name), lora.get_submodule(layer_name)
        torch.testing.assert_close(ours.lora_A.weight.grad, theirs.lora_A["default"].weight.grad)
        torch.testing.assert_close(ours.lora_B.weight.grad, theirs.lora_B["default"].weight.grad)


# ---------------------------------------------------------------------------------------------- 2
def naive_output(layer: DaLoraLayer, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Sample by sample, expert by expert: ``W x_i + sum_k g_ik s B_k A_k x_i`` (+ the shared expert)."""
    base, r = layer.base_layer, layer.r
    conv = isinstance(base, nn.Conv2d)
    outputs = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        yi = base(xi)
        weights = list(gates[i]) + ([torch.tensor(1.0)] if layer.shared_expert else [])
        for k, gate in enumerate(weights):
            a = layer.lora_A.weight[k * r:(k + 1) * r]
            b = layer.lora_B.weight[:, k * r:(k + 1) * r]
            if conv:
                hidden = F.conv2d(xi, a, stride=base.stride, padding=base.padding, dilation=base.dilation)
                update = F.conv2d(hidden, b)
            else:
                update = F.linear(F.linear(xi, a), b)
            yi = yi + gate * layer.scaling * update
        outputs.append(yi)
    return torch.cat(outputs)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_batched_mixing_equals_a_per_sample_per_expert_loop(kind, shared):
    torch.manual_seed(0)
    if kind == "linear":
        base, x = nn.Linear(6, 5), torch.randn(4, 7, 6)  # (B, tokens, in)
    else:
        base, x = nn.Conv2d(3, 5, 3, stride=2, padding=1, dilation=2), torch.randn(4, 3, 11, 11)
    state = GateState(num_experts=3, r=2, shared_expert=shared, mode="classifier")
    layer = wrap_layer(base, r=2, num_experts=3, shared_expert=shared, scaling=1.5, dropout=0.0, state=state)
    nn.init.normal_(layer.lora_B.weight)
    gates = torch.softmax(torch.randn(4, 3) * 2, dim=1)
    state.update(gates.log(), gates)
    torch.testing.assert_close(layer(x), naive_output(layer, x, gates))


# ---------------------------------------------------------------------------------------------- 3
def test_oracle_gating_trains_only_the_selected_experts():
    """Codes 0 and 3 (controlled, lowquality): experts 0 and 2 get gradients, expert 1 (thermal) exactly
    none, and the router none from the recognition loss (nor in classifier mode); a wild image (code 1)
    has no expert."""
    model = apply_dalora(backbone("tiny-dinov2", None), DaLoraSettings(r=2, gating="oracle"))
    randomise_experts(model)
    x = images(model, count=4)
    with pytest.raises(ValueError, match="set_domains"):
        model(x)
    set_domains(model, torch.tensor([0.0, 3.0, 0.0, 3.0]))  # RecordIO domain labels come as floats
    model(x).square().sum().backward()
    r = 2
    for layer_name in model.dalora_module_names:
        layer = model.get_submodule(layer_name)
        grad_a, grad_b = layer.lora_A.weight.grad, layer.lora_B.weight.grad
        for expert in range(3):
            block_a, block_b = grad_a[expert * r:(expert + 1) * r], grad_b[:, expert * r:(expert + 1) * r]
            if expert == 1:
                assert torch.count_nonzero(block_a) == 0 and torch.count_nonzero(block_b) == 0
            else:
                assert block_a.abs().sum() > 0 and block_b.abs().sum() > 0
    assert all(p.grad is None for p in model.dalora_router.parameters())
    set_gating(model, "classifier")  # soft gates, detached: the router still learns only from its own loss
    model(x).square().sum().backward()
    assert all(p.grad is None for p in model.dalora_router.parameters())
    with pytest.raises(ValueError, match="'wild' has no DA-LoRA expert"):
        set_domains(model, [0, 1])


# ---------------------------------------------------------------------------------------------- 4
def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", ["tiny-dinov2", "dlib-resnet29"])
def test_merging_an_expert_equals_oracle_gating_and_leaves_the_plain_backbone(name, dlib):
    plain = backbone(name, dlib)
    model = apply_dalora(copy.deepcopy(plain), DaLoraSettings(r=4, shared_expert=True, gating="oracle"))
    randomise_experts(model, std=0.02)
    x = images(model)
    set_domains(model, ["thermal"] * len(x))
    with torch.no_grad():
        expected = model(x)
        assert not torch.allclose(expected, plain(x), atol=1e-4)  # the experts do change the output
        merged = merge_dalora(model, "thermal")
        torch.testing.assert_close(merged(x), expected, atol=1e-5, rtol=1e-5)
    assert merged is model and not has_dalora(merged) and not hasattr(merged, "dalora_router")
    assert not any(isinstance(m, (DaLoraLayer, DomainRouter)) for m in merged.modules())
    assert hook_count(merged) == hook_count(plain)
    assert trainable_parameters(merged)[1] == trainable_parameters(plain)[1]
    assert merged.state_dict().keys() == plain.state_dict().keys()
    assert (merged.name, merged.embedding_dim, merged.input_size) == (plain.name, plain.embedding_dim, plain.input_size)


# ---------------------------------------------------------------------------------------------- 5
def test_save_then_load_gives_identical_outputs_in_every_gating_mode(tmp_path):
    plain = backbone("tiny-clip", None)
    model = apply_dalora(copy.deepcopy(plain), DaLoraSettings(r=2, shared_expert=True, gating="oracle"))
    randomise_experts(model)
    save_dalora(model, tmp_path / "adapter")
    meta = json.loads((tmp_path / "adapter" / DALORA_SETTINGS_NAME).read_text())
    assert meta["settings"]["router_input"] == "model.vision_model.embeddings"
    assert meta["settings"]["gating"] == "oracle"
    loaded = load_dalora(copy.deepcopy(plain), tmp_path / "adapter")
    x = images(model, count=4)
    for mode in ("classifier", "oracle", "uniform"):
        for net in (model, loaded):
            set_gating(net, mode)
            set_domains(net, ["controlled", "thermal", "lowquality", "thermal"])
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    model(x).sum().backward()  # the gate state now holds graph tensors; a copy must drop them, not fail
    clone = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    reloaded = load_any_type(copy.deepcopy(plain), tmp_path / "adapter", gating="uniform")
    assert dalora_state(reloaded).mode == reloaded.dalora_settings.gating == "uniform"
    with pytest.raises(AdapterMismatchError):
        load_dalora(backbone("tiny-dinov2", None), tmp_path / "adapter")


def test_the_registry_also_loads_plain_lora(tmp_path):
    lora = apply_lora(backbone("tiny-dinov2", None), LoraSettings(r=2, init_lora_weights=False))
    save_adapter(lora, tmp_path / "lora")
    loaded = load_any_type(backbone("tiny-dinov2", None), tmp_path / "lora", gating="uniform")  # no gating: dropped
    x = images(lora)
    assert has_lora(loaded) and not has_dalora(loaded)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), lora(x))
    with pytest.raises(FileNotFoundError, match="no adapter in .*neither adapter_config.json"):
        load_any_type(backbone("tiny-dinov2", None), tmp_path)


# ---------------------------------------------------------------------------------------------- 6
@pytest.mark.parametrize("name", list(ROUTER_INPUTS))
def test_fresh_dalora_is_the_plain_backbone_and_the_router_reads_its_input(name, dlib):
    plain = backbone(name, dlib)
    model = apply_dalora(copy.deepcopy(plain), DaLoraSettings(r=4))
    assert model.dalora_settings.router_input == ROUTER_INPUTS[name]
    assert not any(n.startswith(ROUTER_INPUTS[name] + ".") for n in model.dalora_module_names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n or n.startswith("dalora_router.") for n in trainable)
    seen = {}
    model.get_submodule(ROUTER_INPUTS[name]).register_forward_hook(lambda m, a, out: seen.update(out=out))
    x = images(model, count=4)
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
        torch.testing.assert_close(dalora_state(model).router_logits, model.dalora_router(seen["out"]))
    stats = gate_statistics(model)
    usage = [stats[f"gate_usage/{d}"] for d in ("controlled", "thermal", "lowquality")]
    assert len(stats) == 4 and 0 <= stats["gate_entropy"] <= math.log(3) + 1e-6
    assert all(0 <= u <= 1 for u in usage) and sum(usage) == pytest.approx(1.0)
    for mode, entropy in (("uniform", math.log(3)), ("oracle", 0.0)):
        set_gating(model, mode)
        set_domains(model, [0, 2, 3, 2])
        with torch.no_grad():
            model(x)
        stats = gate_statistics(model)
        assert stats["gate_entropy"] == pytest.approx(entropy, abs=1e-6)
    assert stats["gate_usage/thermal"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------- warm start
@pytest.mark.parametrize("shared", [False, True])
def test_warm_start_computes_the_lora_model_in_every_gating_mode(shared, tmp_path):
    lora = apply_lora(backbone("tiny-dinov2", None), LoraSettings(r=4, alpha=16.0, init_lora_weights=False))
    save_adapter(lora, tmp_path / "lora")
    model = apply_dalora(backbone("tiny-dinov2", None), DaLoraSettings(r=4, alpha=4.0, shared_expert=shared),
                         warm_start=tmp_path / "lora")
    x = images(model)
    with torch.no_grad():
        expected = lora(x)
        for mode in ("classifier", "uniform", "oracle"):
            set_gating(model, mode)
            set_domains(model, [0, 2, 3])
            torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(AdapterMismatchError, match="rank r=8"):
        apply_dalora(backbone("tiny-dinov2", None), DaLoraSettings(r=8), warm_start=tmp_path / "lora")


# ---------------------------------------------------------------------------------------------- settings
def test_settings_round_trip_and_reject_bad_values():
    settings = DaLoraSettings(r=4, domains=("thermal", "controlled"), target_modules=("q_proj",), shared_expert=True)
    assert DaLoraSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert settings.num_experts == 2 and settings.expert_index(2) == 0 and settings.expert_index("controlled") == 1
    for bad, message in (
        (dict(r=0), "r must be a positive integer"),
        (dict(domains=("thermal", "thermal")), "must not repeat"),
        (dict(domains=("infrared",)), "not among the domain_codes"),
        (dict(gating="hard"), "gating must be one of"),
    ):
        with pytest.raises(ValueError, match=message):
            DaLoraSettings(**bad)
    with pytest.raises(ValueError, match="inside the DA-LoRA router input"):
        apply_dalora(create_backbone("tiny-dinov2"), DaLoraSettings(target_modules=("projection",)))


# ---------------------------------------------------------------------------------------------- 7
@pytest.mark.shared("data/faces/orl")
def test_cli_evaluates_a_saved_dalora_adapter_with_classifier_gating(dlib, tmp_path, capsys, monkeypatch):
    """A pack of 12 pairs of real ORL chips (150x150); the adapter was saved in oracle mode, the command
    routes by the router (no domain labels at evaluation)."""
    model = apply_dalora(copy.deepcopy(dlib), DaLoraSettings(r=2, gating="oracle"))
    randomise_experts(model, std=0.01)
    adapter = save_dalora(model, tmp_path / "adapter")
    orl = shared_root() / "data" / "faces" / "orl"
    chips = {(s, n): np.asarray(Image.fromarray(read_image(orl / f"s{s}" / f"{n}.pgm")).resize((150, 150)))
             for s in (1, 2, 3) for n in (1, 2, 3)}
    same = [((s, 1), (s, n)) for s in (1, 2, 3) for n in (2, 3)]
    different = [((s, 1), (t, 2)) for s in (1, 2, 3) for t in (1, 2, 3) if s != t]
    pairs = [pair for block in zip(same, different) for pair in block]
    write_bin(tmp_path / "orl.bin", [chips[key] for pair in pairs for key in pair], [p in same for p in pairs])
    loaded = []
    load = afr.adapters.load_adapter
    monkeypatch.setattr(afr.adapters, "load_adapter", lambda *a, **k: loaded.append(load(*a, **k)) or loaded[-1])
    argv = ["evaluate", "--backbone", "dlib-resnet29", "--bin", str(tmp_path / "orl.bin"), "--adapter", str(adapter),
            "--n-folds", "2"]
    assert main(argv) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["adapter"] == str(adapter.resolve()) and output["n_pairs"] == 12
    assert 0.0 <= output["accuracy_mean"] <= 1.0 and 0.0 <= output["auc"] <= 1.0
    (used,) = loaded
    assert dalora_state(used).mode == "classifier" and dalora_state(used).gates is not None
