"""LoRA through peft: target resolution (both transformers naming schemes), identity at start, trainable
counts, merging, saving/loading adapters — on tiny ViTs, a small conv net and the dlib ResNet-29."""
from __future__ import annotations

import copy
import json
from typing import ClassVar

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from torch import nn

from afr.adapters.lora import (
    ADAPTER_SETTINGS_NAME,
    ADAPTER_WEIGHTS_NAME,
    AdapterMismatchError,
    LoraSettings,
    NoTargetMatchedError,
    apply_lora,
    has_lora,
    load_adapter,
    merge_lora,
    resolve_targets,
    save_adapter,
    trainable_parameters,
    trainable_report,
)
from afr.models import Backbone, create_backbone
from afr.paths import MissingResourceError


# ---------------------------------------------------------------------------------------------- fixtures
class _Block(nn.Module):
    """One transformer-like block whose attention projections follow a given naming scheme."""

    def __init__(self, width: int, old_names: bool) -> None:
        super().__init__()
        attention = nn.Module()
        if old_names:  # transformers 4.x Dinov2: attention.attention.{query,key,value}, attention.output.dense
            inner = nn.Module()
            inner.query, inner.key, inner.value = (nn.Linear(width, width) for _ in range(3))
            attention.attention = inner
            attention.output = nn.Module()
            attention.output.dense = nn.Linear(width, width)
        else:  # transformers 5.x: attention.{q,k,v,o}_proj
            attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj = (
                nn.Linear(width, width) for _ in range(4)
            )
        self.attention = attention


class _FakeEncoder(nn.Module):
    def __init__(self, old_names: bool, layers: int = 3, width: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Block(width, old_names) for _ in range(layers))


class SmallConvNet(Backbone):
    """A tiny conv backbone: strided and padded convs, like the dlib ResNet's."""

    name = "small-conv"
    embedding_dim = 8
    input_size = 16
    alignment = "dlib"
    default_lora_targets: ClassVar[tuple[str, ...]] = ("conv1", "conv2")

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, stride=2, padding=0)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(images))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def _faces(size: int, count: int = 3) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))


def _perturb_lora(model: nn.Module, seed: int = 0, scale: float = 0.5) -> None:
    """Make every LoRA branch non-trivial (B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))


def _expected_lora_params(model: nn.Module, names: list[str], r: int) -> int:
    total = 0
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear):
            total += r * (module.in_features + module.out_features)
        else:
            kh, kw = module.kernel_size
            total += r * module.in_channels * kh * kw + module.out_channels * r
    return total


# ---------------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("request_names", [("query", "value"), ("q_proj", "v_proj")])
def test_targets_resolve_on_both_naming_schemes(request_names):
    old, new = _FakeEncoder(old_names=True), _FakeEncoder(old_names=False)
    assert resolve_targets(old, request_names) == [
        f"encoder.layer.{i}.attention.attention.{leaf}" for i in range(3) for leaf in ("query", "value")
    ]
    assert resolve_targets(new, request_names) == [
        f"encoder.layer.{i}.attention.{leaf}" for i in range(3) for leaf in ("q_proj", "v_proj")
    ]


def test_dotted_targets_translate_their_last_component():
    new = _FakeEncoder(old_names=False)
    assert resolve_targets(new, ["attention.query"]) == [f"encoder.layer.{i}.attention.q_proj" for i in range(3)]
    assert resolve_targets(new, "layer.1.attention.value") == ["encoder.layer.1.attention.v_proj"]


def test_targets_on_a_real_transformers_dinov2():
    backbone = create_backbone("tiny-dinov2")
    from_old = resolve_targets(backbone, ("query", "value"))
    from_new = resolve_targets(backbone, ("q_proj", "v_proj"))
    assert from_old == from_new
    assert len(from_old) == 4  # 2 layers x (query, value)
    assert all(isinstance(backbone.get_submodule(name), nn.Linear) for name in from_old)


def test_every_requested_target_must_match():
    new = _FakeEncoder(old_names=False)
    with pytest.raises(NoTargetMatchedError) as info:
        resolve_targets(new, ("query", "nonexistent"))
    message = str(info.value)
    assert message.startswith("LoRA target(s) ['nonexistent'] match no nn.Linear/nn.Conv2d module")
    assert "encoder.layer.*.attention.q_proj" in message  # lists what exists
    assert isinstance(info.value, ValueError)
    # suffixes match whole name components only
    with pytest.raises(NoTargetMatchedError, match=r"\['proj'\]"):
        resolve_targets(new, ["proj"])
    # a layer that is not Linear/Conv2d cannot be a target
    with pytest.raises(NoTargetMatchedError, match=r"\['attention'\]"):
        resolve_targets(new, ["attention"])


# ---------------------------------------------------------------------------------------------- inject
def test_lora_starts_as_identity_and_only_lora_trains():
    torch.manual_seed(0)
    backbone = create_backbone("tiny-dinov2")
    base = copy.deepcopy(backbone)
    images = _faces(112)
    settings = LoraSettings(r=4, alpha=8)
    model = apply_lora(backbone, settings)
    assert model is backbone and isinstance(model, Backbone)
    assert (model.name, model.embedding_dim, model.input_size) == ("tiny-dinov2", 32, 112)
    assert model.lora_settings.target_modules == ("q_proj", "v_proj")
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)
    lora_a = [p for n, p in model.named_parameters() if "lora_A" in n]
    assert all(p.abs().sum() > 0 for p in lora_a)
    with torch.no_grad():
        torch.testing.assert_close(model(images), base(images))

    trainable, total = trainable_parameters(model)
    base_total = sum(p.numel() for p in base.parameters())
    expected = _expected_lora_params(base, list(model.lora_module_names), r=4)
    assert expected == 4 * 4 * (32 + 32)  # 4 adapted 32x32 projections, rank 4
    assert (trainable, total) == (expected, base_total + expected)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert f"trainable params: {expected:,} || all params: {base_total + expected:,}" in trainable_report(model)

    # one optimiser step changes the LoRA weights and nothing else
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(images).pow(2).sum().backward()
    optimiser.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)


def test_conv_net_trainable_counts_and_rslora_scaling():
    torch.manual_seed(0)
    backbone = SmallConvNet()
    base = copy.deepcopy(backbone)
    model = apply_lora(backbone, LoraSettings(r=2, alpha=4, use_rslora=True))
    assert list(model.lora_module_names) == ["conv1", "conv2"]
    trainable, _ = trainable_parameters(model)
    assert trainable == (2 * 3 * 9 + 6 * 2) + (2 * 6 * 9 + 8 * 2)
    assert trainable == _expected_lora_params(base, ["conv1", "conv2"], r=2)
    expected_scaling = LoraSettings(r=2, alpha=4, use_rslora=True).scaling
    assert model.conv1.scaling["default"] == pytest.approx(4 / 2**0.5) == expected_scaling
    with torch.no_grad():
        torch.testing.assert_close(model(_faces(16)), base(_faces(16)))


def test_dropout_reaches_the_injected_layers_and_acts_in_train_mode_only():
    torch.manual_seed(0)
    model = apply_lora(SmallConvNet(), LoraSettings(r=2, alpha=2, dropout=0.5))
    for name in model.lora_module_names:
        dropout = model.get_submodule(name).lora_dropout["default"]
        assert isinstance(dropout, nn.Dropout) and dropout.p == 0.5, f"{name}: lora_dropout is {dropout!r}, expected p=0.5"

    images = _faces(16)
    model.train()
    with torch.no_grad():
        # B = 0: the dropout sits on the LoRA branch only, so it cannot change anything yet
        torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)
        _perturb_lora(model)
        first, second = model(images), model(images)
    assert not torch.allclose(first, second), "two train-mode passes with dropout 0.5 and B != 0 agree"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), model(images), rtol=0, atol=0)


def test_apply_twice_and_missing_defaults_are_errors():
    model = apply_lora(SmallConvNet(), LoraSettings(r=2))
    with pytest.raises(ValueError, match="already carries LoRA"):
        apply_lora(model, LoraSettings(r=2))
    with pytest.raises(NoTargetMatchedError, match="no default_lora_targets"):
        apply_lora(_FakeEncoder(old_names=False), LoraSettings(r=2))


def test_settings_validation_and_json_round_trip():
    settings = LoraSettings(r=8, alpha=16, dropout=0.1, use_rslora=True, target_modules=["query", "value"])
    assert settings.target_modules == ("query", "value")
    assert LoraSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert LoraSettings().scaling == 1.0 and settings.scaling == pytest.approx(16 / 8**0.5)
    for bad in ({"r": 0}, {"alpha": 0}, {"dropout": 1.0}, {"target_modules": []}):
        with pytest.raises(ValueError):
            LoraSettings(**bad)
    with pytest.raises(ValueError, match="unknown LoRA settings"):
        LoraSettings.from_dict({"rank": 4})


# ---------------------------------------------------------------------------------------------- merge
def _check_merge(
    backbone: nn.Module, settings: LoraSettings, images: torch.Tensor, atol: float, scale: float = 0.5
) -> None:
    base = copy.deepcopy(backbone)
    model = apply_lora(backbone, settings)
    _perturb_lora(model, scale=scale)
    with torch.no_grad():
        base_out = base(images)
        adapted = model(images)
    assert not torch.allclose(adapted, base_out, atol=10 * atol)  # the adapter does something
    merged = merge_lora(model)
    assert merged is backbone and not has_lora(merged)
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert set(merged.state_dict()) == set(base.state_dict())  # a plain backbone again
    assert not hasattr(merged, "peft_config")
    with torch.no_grad():
        torch.testing.assert_close(merged(images), adapted, rtol=1e-4, atol=atol)


def test_merge_matches_unmerged_tiny_vits():
    torch.manual_seed(0)
    _check_merge(create_backbone("tiny-dinov2"), LoraSettings(r=4, alpha=8), _faces(112), atol=1e-5)
    _check_merge(create_backbone("tiny-clip"), LoraSettings(r=4, alpha=8, use_rslora=True), _faces(112), atol=1e-5)


def test_merge_matches_unmerged_with_new_projection():
    torch.manual_seed(0)
    backbone = create_backbone("tiny-dinov2", embedding_dim=16)
    model = apply_lora(backbone, LoraSettings(r=4))
    trainable, _ = trainable_parameters(model)
    assert trainable == 4 * 4 * 64 + 32 * 16  # LoRA + the new projection, nothing else
    assert {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n} == {"projection.weight"}
    with torch.no_grad():
        model.projection.weight.mul_(-2.0)
    _perturb_lora(model)
    with torch.no_grad():
        adapted = model(_faces(112))
    merged = merge_lora(model)
    assert isinstance(merged.projection, nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(merged(_faces(112)), adapted, rtol=1e-4, atol=1e-5)


def test_merge_matches_unmerged_conv_net():
    torch.manual_seed(0)
    _check_merge(SmallConvNet(), LoraSettings(r=3, alpha=6), _faces(17), atol=1e-5)


@pytest.mark.shared("weights/dlib_resnet29")
def test_merge_matches_unmerged_dlib_resnet29():
    backbone = create_backbone("dlib-resnet29")
    images = _faces(150, count=2)
    settings = LoraSettings(r=2, alpha=2)
    assert len(resolve_targets(backbone, backbone.default_lora_targets)) == 29
    # 29 stacked adapted convs: a small B keeps activations in float32's comfortable range
    _check_merge(backbone, settings, images, atol=1e-5, scale=0.05)


# ---------------------------------------------------------------------------------------------- save/load
def test_save_load_round_trip_tiny_dinov2(tmp_path):
    torch.manual_seed(0)
    backbone = create_backbone("tiny-dinov2", embedding_dim=16)
    fresh = copy.deepcopy(backbone)
    model = apply_lora(backbone, LoraSettings(r=4, alpha=8, target_modules=("query", "value")))
    _perturb_lora(model, seed=3)
    with torch.no_grad():
        model.projection.weight.add_(1.0)
        expected = model(_faces(112))
    save_adapter(model, tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ADAPTER_SETTINGS_NAME, ADAPTER_WEIGHTS_NAME])
    tensors = load_file(str(tmp_path / ADAPTER_WEIGHTS_NAME))
    assert all("lora_" in key or key.startswith("projection.") for key in tensors)
    assert sum(t.numel() for t in tensors.values()) == trainable_parameters(model)[0]
    meta = json.loads((tmp_path / ADAPTER_SETTINGS_NAME).read_text())
    assert meta["settings"]["r"] == 4 and meta["settings"]["target_modules"] == ["query", "value"]
    assert meta["module_names"] == list(model.lora_module_names)

    loaded = load_adapter(fresh, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_faces(112)), expected, rtol=0, atol=0)
    assert trainable_parameters(loaded) == trainable_parameters(model)


def test_save_load_round_trip_conv_net(tmp_path):
    torch.manual_seed(0)
    backbone = SmallConvNet()
    fresh = copy.deepcopy(backbone)
    model = apply_lora(backbone, LoraSettings(r=2))
    _perturb_lora(model)
    with torch.no_grad():
        expected = model(_faces(16))
    save_adapter(model, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(fresh, tmp_path / "adapter")(_faces(16)), expected, rtol=0, atol=0)


def test_load_adapter_errors(tmp_path):
    with pytest.raises(MissingResourceError, match=str(tmp_path / ADAPTER_SETTINGS_NAME)):
        load_adapter(SmallConvNet(), tmp_path)
    torch.manual_seed(0)
    save_adapter(apply_lora(create_backbone("tiny-dinov2"), LoraSettings(r=2)), tmp_path)
    with pytest.raises(AdapterMismatchError, match="adapts"):
        load_adapter(create_backbone("tiny-clip"), tmp_path)  # same leaf names, other modules
    with pytest.raises(NoTargetMatchedError):
        load_adapter(SmallConvNet(), tmp_path)
    with pytest.raises(ValueError, match="apply_lora"):
        save_adapter(SmallConvNet(), tmp_path / "plain")
