"""ONNX export of every backbone family (dlib ResNet, DINOv2, CLIP), each run by onnxruntime against torch.

The ViTs are the ``local_hf_models`` folders (published widths, one layer, random weights); dlib is the shared
weights. The CLI test exports a CLIP LoRA adapter end to end (``python -m afr export``), which failed before the
graph's interface was named by :func:`afr.export._name_interface` ("'embedding' has been used as output names
multiple times": CLIP's position-embedding lookup is folded into an initializer the exporter names ``embedding``).
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from afr.adapters import apply_adapter, save_adapter
from afr.adapters.lora import LoraSettings
from afr.cli import main
from afr.export import INPUT_NAME, OUTPUT_NAME, export_onnx, onnx_session
from afr.models.factory import create_backbone

TOLERANCE = 1e-4  # float32 through different kernels; the observed differences are ~1e-6

#: pytest id -> (factory name, local_hf_models folder or None for the shared dlib weights, input side, width)
BACKBONES = {
    "dlib": ("dlib-resnet29", None, 150, 128),
    "dinov2": ("dinov2-vits14", "dinov2-small", 112, 384),
    "clip": ("clip-vitb16", "clip-vit-base-patch16", 112, 64),
}


def chips(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def value_names(model: onnx.ModelProto) -> list[str]:
    """Every name the graph defines: its inputs, its initializers, its nodes' outputs (SSA: each once)."""
    graph = model.graph
    return ([value.name for value in graph.input] + [tensor.name for tensor in graph.initializer]
            + [name for node in graph.node for name in node.output if name])


def torch_embeddings(backbone: nn.Module, batch: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return backbone.eval()(batch).numpy()


@pytest.mark.parametrize(
    "family",
    [pytest.param("dlib", marks=pytest.mark.shared("weights/dlib_resnet29")), "dinov2", "clip"],
)
def test_every_backbone_exports_to_onnx_that_onnxruntime_runs_like_torch(family, local_hf_models, tmp_path):
    name, folder, size, width = BACKBONES[family]
    torch.manual_seed(0)
    backbone = create_backbone(name, weights=None if folder is None else local_hf_models / folder)
    exported = export_onnx(backbone, tmp_path / f"{family}.onnx")
    assert exported.max_abs_difference < TOLERANCE
    assert exported.input_shape == ("batch", 3, size, size) and exported.output_shape == ("batch", width)

    model = onnx.load(exported.path)
    onnx.checker.check_model(model)
    names = value_names(model)
    assert len(names) == len(set(names))
    assert [v.name for v in model.graph.input] == [INPUT_NAME] and [v.name for v in model.graph.output] == [OUTPUT_NAME]

    session = onnx_session(exported.path)
    for batch in (1, 4):  # neither is the export's example batch (2): the batch dimension is dynamic
        inputs = chips(batch, size, seed=10 + batch)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
        assert got.shape == (batch, width)
        np.testing.assert_allclose(got, torch_embeddings(backbone, inputs), atol=TOLERANCE, rtol=0)


class ConstantLookup(nn.Module):
    """The CLIP failure in miniature: a position table looked up with a constant index buffer (``aten.embedding``
    on constants, which the exporter folds into an initializer named ``embedding``), added to the projected
    input."""

    alignment = "arcface"
    input_size = 4
    embedding_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 3)
        self.table = nn.Embedding(1, 3)
        self.register_buffer("index", torch.zeros(1, dtype=torch.long), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1)) + self.table(self.index)


def test_an_output_name_held_by_a_folded_constant_is_freed_first(tmp_path):
    torch.manual_seed(0)
    module = ConstantLookup()
    exported = export_onnx(module, tmp_path / "lookup.onnx")
    assert exported.max_abs_difference < 1e-6
    model = onnx.load(exported.path)
    names = value_names(model)
    assert len(names) == len(set(names)) and [v.name for v in model.graph.output] == [OUTPUT_NAME]
    # the folded lookup is still there, under another name
    assert any(tensor.name.startswith(f"{OUTPUT_NAME}_") for tensor in model.graph.initializer)


def test_cli_exports_a_clip_lora_adapter_end_to_end(local_hf_models, tmp_path, capsys):
    weights = local_hf_models / "clip-vit-base-patch16"
    torch.manual_seed(0)
    adapted = apply_adapter(create_backbone("clip-vitb16", weights=weights),
                            LoraSettings(r=2, alpha=4.0, target_modules=("q_proj", "v_proj")))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero: give the adapter an effect worth merging
        for parameter in adapted.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    adapter = save_adapter(adapted, tmp_path / "adapter")
    path = tmp_path / "clip.onnx"

    status = main(["export", "--backbone", "clip-vitb16", "--weights", str(weights), "--adapter", str(adapter),
                   "--onnx", str(path)])
    out, err = capsys.readouterr()
    assert status == 0, err
    output = json.loads(out)
    assert output["input"] == {"name": INPUT_NAME, "shape": ["batch", 3, 112, 112]}
    assert output["output"] == {"name": OUTPUT_NAME, "shape": ["batch", 64]}
    assert output["onnxruntime_max_abs_difference"] < TOLERANCE

    # against the adapter unmerged (LoRA branches), so merging is checked too
    session = onnx_session(path)
    for batch in (1, 3):
        inputs = chips(batch, 112, seed=20 + batch)
        got = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.numpy()})[0]
        np.testing.assert_allclose(got, torch_embeddings(adapted, inputs), atol=TOLERANCE, rtol=0)
    assert session.get_modelmeta().custom_metadata_map["afr.adapter"] == "adapter"
