"""The parts of the optional timm backbones (afr.models.timm_vit) that need no timm: they run in the default venv.

The comparisons with the Hugging Face path need timm and live in tests/timm (`make test-timm`).
"""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from afr.adapters import apply_adapter, merge_adapter
from afr.adapters.lora import LoraSettings
from afr.models import MissingWeightsError, UnknownBackboneError, create_backbone
from afr.models.timm_vit import SplitQKV, TimmNotInstalledError, split_qkv


class _Attention(nn.Module):
    """timm's attention input step in miniature: one fused qkv layer, split by the caller."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qkv(x)


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Attention(), _Attention()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([block(x) for block in self.blocks])


def test_split_qkv_is_the_fused_layer_and_lora_adapts_q_and_v_only():
    torch.manual_seed(0)
    model = _Blocks()
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        expected = model(x)
    fused = model.blocks[0].qkv
    assert split_qkv(model) == 2
    split = model.blocks[0].qkv
    assert isinstance(split, SplitQKV)
    assert torch.equal(split.fused().weight, fused.weight) and torch.equal(split.fused().bias, fused.bias)
    with torch.no_grad():
        before = model(x)
    assert torch.allclose(before, expected, atol=1e-6, rtol=0)

    model.name, model.default_lora_targets = "toy", ("q_proj", "v_proj")
    apply_adapter(model, LoraSettings.square(2))
    assert model.lora_module_names == tuple(f"blocks.{i}.qkv.{p}" for i in (0, 1) for p in ("q_proj", "v_proj"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
        adapted = model(x)
    assert torch.equal(adapted[..., 8:16], before[..., 8:16])  # k: no LoRA
    assert not torch.allclose(adapted[..., :8], before[..., :8])
    assert not torch.allclose(adapted[..., 16:], before[..., 16:])
    merged = merge_adapter(model)
    with torch.no_grad():
        assert torch.allclose(merged(x), adapted, atol=1e-5, rtol=0)


def test_without_timm_the_error_names_the_extra(tmp_path, monkeypatch):
    checkpoint = tmp_path / "vit_small_patch14_dinov2.safetensors"
    checkpoint.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "timm", None)  # as where timm is not installed
    with pytest.raises(TimmNotInstalledError, match=r"pip install \.\[timm\]"):
        create_backbone("timm:vit_small_patch14_dinov2", weights=checkpoint)


def test_a_missing_checkpoint_is_named_before_timm_is_needed(tmp_path):
    absent = tmp_path / "absent.safetensors"
    with pytest.raises(MissingWeightsError, match=f"checkpoint {absent} not found"):
        create_backbone("timm:vit_small_patch14_dinov2", weights=absent)
    with pytest.raises(MissingWeightsError, match="needs a local checkpoint and none was given"):
        create_backbone("timm:vit_base_patch16_clip_quickgelu_224")
    with pytest.raises(MissingWeightsError, match=f"{tmp_path} holds none of model.safetensors"):
        create_backbone("timm:vit_small_patch14_dinov2", weights=tmp_path)
    with pytest.raises(UnknownBackboneError, match="timm:<timm model name>"):
        create_backbone("timm:")


def test_the_cli_takes_a_timm_checkpoint_file_and_names_a_missing_one(tmp_path, capsys, monkeypatch):
    from afr.cli import main

    absent = tmp_path / "absent.safetensors"
    assert main(["evaluate", "--backbone", "timm:vit_small_patch14_dinov2", "--weights", str(absent),
                 "--folder", str(tmp_path)]) == 2
    assert f"weights {absent} not found (a timm checkpoint file" in capsys.readouterr().err
    checkpoint = tmp_path / "vit.safetensors"
    checkpoint.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "timm", None)  # a file passes the check; the backbone then needs timm
    assert main(["evaluate", "--backbone", "timm:vit_small_patch14_dinov2", "--weights", str(checkpoint),
                 "--folder", str(tmp_path)]) == 2
    assert "pip install .[timm]" in capsys.readouterr().err
