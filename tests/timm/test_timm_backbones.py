"""timm ViT backbones (``timm:<model>``, afr.models.timm_vit) against the Hugging Face path, same weights.

Needs the optional timm extra (`make test-timm` runs this folder in .venv-timm: torch 2.14.1 + torchvision 0.29.1 +
timm). tests/conftest.py leaves the folder out where timm is not installed; run explicitly there, the module is
skipped with that reason. A timm that is installed but does not import fails the module, it is not skipped.

Every comparison builds a tiny random DINOv2 / CLIP in transformers, perturbs every tensor (so a bias or a layer
scale mapped to the wrong place cannot hide behind an initial 0 or 1), writes its weights in timm's layout to a
local .safetensors file and builds the timm backbone from that file through the factory.
"""
from __future__ import annotations

import importlib.util
import re

import pytest

_spec = importlib.util.find_spec("timm")  # this folder is a namespace package "timm" itself: it has no origin
if _spec is None or _spec.origin is None:
    pytest.skip("timm is not installed (optional extra: pip install .[timm]; `make test-timm` builds .venv-timm)",
                allow_module_level=True)

import timm  # noqa: E402

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from afr.adapters import apply_adapter, load_adapter, merge_adapter, save_adapter  # noqa: E402
from afr.adapters.dalora import DaLoraSettings  # noqa: E402
from afr.adapters.lora import LoraSettings, trainable_parameters  # noqa: E402
from afr.models import MissingWeightsError, UnknownBackboneError, create_backbone  # noqa: E402
from afr.models.factory import tiny_clip_config, tiny_dinov2_config  # noqa: E402
from afr.models.timm_vit import SplitQKV, TimmViTBackbone  # noqa: E402
from afr.models.vit import HFViTBackbone  # noqa: E402

ATOL = 1e-5
#: timm's DINOv2 ViT-S/14 narrowed to the tiny transformers config (hidden 32, 2 layers, 2 heads, patch 7)
TINY_DINOV2 = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, patch_size=7)
#: timm's OpenAI CLIP ViT-B/16 (QuickGELU) narrowed to tiny_clip_config (hidden 32, 2 layers, patch 8, proj 24)
TINY_CLIP = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, patch_size=8, num_classes=24)


@pytest.fixture
def chips() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(3, 3, 112, 112, generator=generator)


def _perturbed(backbone: HFViTBackbone, seed: int) -> HFViTBackbone:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in backbone.model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return backbone


def _hf_dinov2(image_size: int | None = None) -> HFViTBackbone:
    torch.manual_seed(0)
    return _perturbed(HFViTBackbone.from_config(tiny_dinov2_config(), name="tiny-dinov2", image_size=image_size), 0)


def _hf_clip(clip_projection: bool = True) -> HFViTBackbone:
    torch.manual_seed(0)
    return _perturbed(HFViTBackbone.from_config(tiny_clip_config(), name="tiny-clip",
                                                clip_projection=clip_projection), 0)


def _qkv(state: dict, prefix: str, part: str) -> torch.Tensor:
    return torch.cat([state[f"{prefix}.{name}.{part}"] for name in ("q_proj", "k_proj", "v_proj")])


def dinov2_to_timm(model) -> dict[str, torch.Tensor]:
    """A transformers ``Dinov2Model``'s weights in timm's VisionTransformer layout."""
    hf = model.state_dict()
    out = {
        "cls_token": hf["embeddings.cls_token"],
        "pos_embed": hf["embeddings.position_embeddings"],
        "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf["layernorm.weight"],
        "norm.bias": hf["layernorm.bias"],
    }
    for i in range(model.config.num_hidden_layers):
        src, dst = f"encoder.layer.{i}", f"blocks.{i}"
        for part in ("weight", "bias"):
            out[f"{dst}.attn.qkv.{part}"] = _qkv(hf, f"{src}.attention", part)
            out[f"{dst}.attn.proj.{part}"] = hf[f"{src}.attention.o_proj.{part}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{dst}.{name}.{part}"] = hf[f"{src}.{name}.{part}"]
        out[f"{dst}.ls1.gamma"] = hf[f"{src}.layer_scale1.lambda1"]
        out[f"{dst}.ls2.gamma"] = hf[f"{src}.layer_scale2.lambda1"]
    return out


def clip_to_timm(model) -> dict[str, torch.Tensor]:
    """A transformers CLIP vision tower's weights (with its projection, if any) in timm's layout."""
    hf = model.state_dict()
    # CLIPVisionModelWithProjection nests the tower under vision_model; CLIPVisionModel's keys start at it
    v = "vision_model" if "vision_model.embeddings.class_embedding" in hf else ""
    hf = {key if v else f"vision_model.{key}": value for key, value in hf.items()}
    v = "vision_model"
    width = hf[f"{v}.embeddings.class_embedding"].shape[0]
    out = {
        "cls_token": hf[f"{v}.embeddings.class_embedding"].view(1, 1, width),
        "pos_embed": hf[f"{v}.embeddings.position_embedding.weight"][None],
        "patch_embed.proj.weight": hf[f"{v}.embeddings.patch_embedding.weight"],
    }
    for part in ("weight", "bias"):
        out[f"norm_pre.{part}"] = hf[f"{v}.pre_layrnorm.{part}"]
        out[f"norm.{part}"] = hf[f"{v}.post_layernorm.{part}"]
    for i in range(model.config.num_hidden_layers):
        src, dst = f"{v}.encoder.layers.{i}", f"blocks.{i}"
        for part in ("weight", "bias"):
            out[f"{dst}.attn.qkv.{part}"] = _qkv(hf, f"{src}.self_attn", part)
            out[f"{dst}.attn.proj.{part}"] = hf[f"{src}.self_attn.out_proj.{part}"]
            out[f"{dst}.norm1.{part}"] = hf[f"{src}.layer_norm1.{part}"]
            out[f"{dst}.norm2.{part}"] = hf[f"{src}.layer_norm2.{part}"]
            out[f"{dst}.mlp.fc1.{part}"] = hf[f"{src}.mlp.fc1.{part}"]
            out[f"{dst}.mlp.fc2.{part}"] = hf[f"{src}.mlp.fc2.{part}"]
    if "visual_projection.weight" in hf:
        out["head.weight"] = hf["visual_projection.weight"]
        out["head.bias"] = torch.zeros(hf["visual_projection.weight"].shape[0])
    return out


def _write(state: dict[str, torch.Tensor], path) -> str:
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    return str(path)


def _timm_dinov2(tmp_path, hf: HFViTBackbone, **options) -> TimmViTBackbone:
    weights = _write(dinov2_to_timm(hf.model), tmp_path / "dinov2.safetensors")
    return create_backbone("timm:vit_small_patch14_dinov2", weights=weights, image_size=hf.image_size,
                           **TINY_DINOV2, **options)


def _timm_clip(tmp_path, hf: HFViTBackbone, **options) -> TimmViTBackbone:
    weights = _write(clip_to_timm(hf.model), tmp_path / "clip.safetensors")
    size = dict(TINY_CLIP, num_classes=hf.embedding_dim if hf.uses_clip_projection else 0)
    return create_backbone("timm:vit_base_patch16_clip_quickgelu_224", weights=weights, image_size=hf.image_size,
                           **size, **options)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=ATOL, rtol=0), f"max |difference| {float((a - b).abs().max()):.3g}"


# ------------------------------------------------------------------------------------------------ embeddings
@pytest.mark.parametrize("image_size", [28, 21], ids=["native-grid", "resampled-grid"])
def test_dinov2_embeddings_equal_the_hugging_face_path(tmp_path, chips, image_size):
    hf = _hf_dinov2(image_size)
    backbone = _timm_dinov2(tmp_path, hf)
    assert isinstance(backbone, TimmViTBackbone)
    assert (backbone.name, backbone.embedding_dim, backbone.input_size, backbone.alignment) == (
        "timm:vit_small_patch14_dinov2", 32, 112, "arcface")
    assert backbone.model.pos_embed.shape[1] == 1 + (image_size // 7) ** 2  # resampled once, at load
    assert torch.equal(backbone.pixel_mean, hf.pixel_mean) and torch.equal(backbone.pixel_std, hf.pixel_std)
    with torch.no_grad():
        _close(backbone(chips), hf(chips))


@pytest.mark.parametrize("clip_projection", [True, False], ids=["projected", "cls"])
def test_clip_embeddings_equal_the_hugging_face_path(tmp_path, chips, clip_projection):
    hf = _hf_clip(clip_projection)
    backbone = _timm_clip(tmp_path, hf)
    assert backbone.embedding_dim == hf.embedding_dim == (24 if clip_projection else 32)
    assert torch.allclose(backbone.pixel_mean, hf.pixel_mean) and torch.allclose(backbone.pixel_std, hf.pixel_std)
    with torch.no_grad():
        _close(backbone(chips), hf(chips))


def test_splitting_qkv_keeps_timm_s_function(tmp_path, chips):
    hf = _hf_dinov2()
    backbone = _timm_dinov2(tmp_path, hf)
    plain = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, **TINY_DINOV2)
    plain.load_state_dict(dinov2_to_timm(hf.model))
    plain.eval()
    attention = backbone.model.blocks[0].attn
    assert isinstance(attention.qkv, SplitQKV)
    assert torch.equal(attention.qkv.fused().weight, plain.blocks[0].attn.qkv.weight)
    with torch.no_grad():
        _close(backbone(chips), plain(backbone.preprocess(chips)))


def test_checkpoint_as_directory_or_torch_file(tmp_path, chips):
    hf = _hf_dinov2()
    state = dinov2_to_timm(hf.model)
    (tmp_path / "hub").mkdir()
    _write(state, tmp_path / "hub" / "model.safetensors")
    torch.save(state, tmp_path / "dinov2.pth")
    with torch.no_grad():
        expected = hf(chips)
        for weights in (tmp_path / "hub", tmp_path / "dinov2.pth"):
            backbone = create_backbone("timm:vit_small_patch14_dinov2", weights=weights, image_size=28, **TINY_DINOV2)
            _close(backbone(chips), expected)


def test_published_dinov2_vits14_layout_at_224(tmp_path, chips):
    """ViT-S/14 as published (12 layers, width 384, 518 px: a 37 x 37 grid), random weights, run on 112 px chips
    resized to 224: the grid resampled once to 16 x 16 at load equals transformers' resampling at every forward."""
    from afr.models.factory import architecture_config

    torch.manual_seed(0)
    hf = _perturbed(HFViTBackbone.from_config(architecture_config("dinov2-vits14", image_size=518),
                                              name="dinov2-vits14", image_size=224), 0)
    weights = _write(dinov2_to_timm(hf.model), tmp_path / "dinov2_vits14.safetensors")
    backbone = create_backbone("timm:vit_small_patch14_dinov2", weights=weights)
    assert (backbone.image_size, backbone.embedding_dim) == (224, 384)
    assert backbone.model.pos_embed.shape == (1, 1 + 16 * 16, 384)
    with torch.no_grad():
        _close(backbone(chips[:2]), hf(chips[:2]))


def test_original_dinov2_and_openai_clip_layouts_load(tmp_path, chips):
    """timm's checkpoint filter converts the original releases: DINOv2's (timm's names plus ``mask_token``) and
    OpenAI CLIP's (``visual.*``, fused ``in_proj``, ``proj`` transposed)."""
    hf = _hf_dinov2()
    original = dict(dinov2_to_timm(hf.model), mask_token=torch.zeros(1, 32))
    weights = _write(original, tmp_path / "dinov2_pretrain.safetensors")
    with torch.no_grad():
        _close(create_backbone("timm:vit_small_patch14_dinov2", weights=weights, image_size=28, **TINY_DINOV2)(chips),
               hf(chips))

    hf = _hf_clip()
    timm_state = clip_to_timm(hf.model)
    renames = [("cls_token", "class_embedding"), ("pos_embed", "positional_embedding"), ("patch_embed.proj", "conv1"),
               ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."), ("attn.qkv.", "attn.in_proj_"),
               ("attn.proj", "attn.out_proj"), ("norm1", "ln_1"), ("norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
               ("mlp.fc2", "mlp.c_proj"), ("norm.", "ln_post.")]
    openai = {}
    for key, value in timm_state.items():
        if key.startswith("head."):
            continue
        for old, new in renames:
            key = key.replace(old, new)
        openai["visual." + key] = value
    openai["visual.class_embedding"] = openai["visual.class_embedding"].flatten()
    openai["visual.positional_embedding"] = openai["visual.positional_embedding"][0]
    openai["visual.proj"] = timm_state["head.weight"].t()
    weights = _write(openai, tmp_path / "openai_clip.safetensors")
    with torch.no_grad():
        _close(create_backbone("timm:vit_base_patch16_clip_quickgelu_224", weights=weights, image_size=32,
                               **TINY_CLIP)(chips), hf(chips))


# ------------------------------------------------------------------------------------------------ adapters
def _role(name: str) -> tuple | str:
    """What a trainable tensor is, whatever the path: (layer, projection, tensor) for an adapter tensor (CLIP's
    transformers attention lists k, v, q; timm's split q, k, v), the name itself otherwise (the router)."""
    found = re.search(r"\.(\d+)\..*?\b(q_proj|k_proj|v_proj)\.(.+)$", name)
    return (int(found[1]), found[2], found[3]) if found else name


def _copy_trainable(source: torch.nn.Module, target: torch.nn.Module, seed: int) -> None:
    """Random values in every trainable tensor of ``source`` (B included), copied to the same tensor of ``target``."""
    ours = {_role(name): p for name, p in source.named_parameters() if p.requires_grad}
    theirs = {_role(name): p for name, p in target.named_parameters() if p.requires_grad}
    assert sorted(ours, key=str) == sorted(theirs, key=str)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for role, a in ours.items():
            b = theirs[role]
            assert a.shape == b.shape
            a.copy_(0.1 * torch.randn(a.shape, generator=generator))
            b.copy_(a)


@pytest.mark.parametrize("family", ["dinov2", "clip"])
def test_lora_on_q_and_v_equals_the_hugging_face_lora(tmp_path, chips, family):
    hf = _hf_dinov2() if family == "dinov2" else _hf_clip()
    backbone = _timm_dinov2(tmp_path, hf) if family == "dinov2" else _timm_clip(tmp_path, hf)
    settings = LoraSettings.square(4)
    with torch.no_grad():
        base = hf(chips)
    apply_adapter(hf, settings)
    apply_adapter(backbone, settings)
    assert [name.rsplit(".", 1)[-1] for name in backbone.lora_module_names] == ["q_proj", "v_proj"] * 2
    assert all(".attn.qkv." in name for name in backbone.lora_module_names)
    assert trainable_parameters(backbone)[0] == trainable_parameters(hf)[0]  # the same q/v LoRA, k untouched
    _copy_trainable(hf, backbone, seed=2)
    with torch.no_grad():
        adapted = hf(chips)
        _close(backbone(chips), adapted)
        assert not torch.allclose(adapted, base, atol=1e-3)  # the LoRA (B random, not 0) changes the embedding

    save_adapter(backbone, tmp_path / "adapter")
    reloaded = load_adapter(_timm_dinov2(tmp_path, _hf_dinov2()) if family == "dinov2"
                            else _timm_clip(tmp_path, _hf_clip()), tmp_path / "adapter")
    merged = merge_adapter(backbone)
    assert isinstance(merged.model.blocks[0].attn.qkv.q_proj, torch.nn.Linear)
    with torch.no_grad():
        _close(reloaded(chips), adapted)
        _close(merged(chips), adapted)
        _close(merge_adapter(hf)(chips), adapted)


def test_dalora_on_q_and_v_equals_the_hugging_face_dalora(tmp_path, chips):
    hf = _hf_dinov2()
    backbone = _timm_dinov2(tmp_path, hf)
    settings = DaLoraSettings(r=2, alpha=2.0, router_hidden=8)
    apply_adapter(hf, settings)
    apply_adapter(backbone, settings)
    assert backbone.dalora_settings.router_input == "model.pos_drop"
    assert [name.rsplit(".", 1)[-1] for name in backbone.dalora_module_names] == ["q_proj", "v_proj"] * 2
    _copy_trainable(hf, backbone, seed=3)  # experts and router
    with torch.no_grad():
        _close(backbone(chips), hf(chips))  # classifier gating: the router reads the same tokens on both paths
        _close(merge_adapter(backbone, "thermal")(chips), merge_adapter(hf, "thermal")(chips))


# ------------------------------------------------------------------------------------------------ errors
def test_missing_checkpoint_and_unknown_model_are_one_clear_error(tmp_path):
    absent = tmp_path / "absent.safetensors"
    with pytest.raises(MissingWeightsError, match=str(absent)):
        create_backbone("timm:vit_small_patch14_dinov2", weights=absent)
    with pytest.raises(MissingWeightsError, match="needs a local checkpoint"):
        create_backbone("timm:vit_small_patch14_dinov2")
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        create_backbone("timm:vit_small_patch14_dinov2", weights=tmp_path)
    weights = _write(dinov2_to_timm(_hf_dinov2().model), tmp_path / "dinov2.safetensors")
    with pytest.raises(UnknownBackboneError, match="no model 'vit_tiny_patch14_nonesuch'"):
        create_backbone("timm:vit_tiny_patch14_nonesuch", weights=weights)


def test_a_checkpoint_of_another_model_names_the_file(tmp_path):
    weights = _write(dinov2_to_timm(_hf_dinov2().model), tmp_path / "dinov2.safetensors")
    with pytest.raises(ValueError, match="dinov2.safetensors does not fit"):
        create_backbone("timm:vit_small_patch14_dinov2", weights=weights, image_size=28,
                        **dict(TINY_DINOV2, depth=3))
    clip_vision_only = _write(clip_to_timm(_hf_clip(clip_projection=False).model), tmp_path / "clip.safetensors")
    with pytest.raises(ValueError, match="pass num_classes=0"):
        create_backbone("timm:vit_base_patch16_clip_quickgelu_224", weights=clip_vision_only, image_size=32,
                        **TINY_CLIP)


def test_lora_trains_only_q_and_v_and_the_merged_backbone_exports_to_onnx(tmp_path, chips):
    from afr.export import export_onnx

    backbone = _timm_dinov2(tmp_path, _hf_dinov2())
    apply_adapter(backbone, LoraSettings.square(4))
    backbone.train()
    backbone(chips).square().sum().backward()
    with_grad = {name for name, p in backbone.named_parameters() if p.grad is not None}
    assert with_grad == {name for name, p in backbone.named_parameters() if p.requires_grad}
    assert with_grad and all(".qkv.q_proj.lora_" in name or ".qkv.v_proj.lora_" in name for name in with_grad)
    # B starts at 0, so only B gets a gradient on the first step
    assert all(p.grad.abs().sum() > 0 for name, p in backbone.named_parameters() if ".lora_B." in name)

    with torch.no_grad():
        for name, parameter in backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    backbone.eval()
    with torch.no_grad():
        adapted = backbone(chips)
    exported = export_onnx(merge_adapter(backbone), tmp_path / "backbone.onnx")
    assert exported.input_shape == ("batch", 3, 112, 112) and exported.output_shape == ("batch", 32)
    assert exported.max_abs_difference < 1e-4  # onnxruntime against torch, checked by export_onnx
    with torch.no_grad():
        _close(backbone(chips), adapted)
