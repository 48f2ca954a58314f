"""lora-distill (notebook 03's regularised fine-tuning baseline): LoRA plus the distance of the visible images'
embeddings to the frozen backbone's, the frozen ones computed with LoRA switched off."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afr.adapters.lora import LoraSettings, apply_lora, lora_disabled
from afr.experiments.dalora_run import distill_codes
from afr.models import create_backbone
from afr.models.domain_aware import DomainAwareRecognitionModel


def _trained_looking_lora(seed: int = 0):
    torch.manual_seed(seed)
    backbone = apply_lora(create_backbone("tiny-dinov2"), LoraSettings(r=2, alpha=2.0))
    with torch.no_grad():
        for name, parameter in backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.3)
    return backbone.eval()


def test_lora_disabled_gives_the_frozen_backbone_and_restores_the_adapter():
    images = torch.rand(3, 3, 112, 112)
    torch.manual_seed(0)
    frozen = create_backbone("tiny-dinov2").eval()
    adapted = _trained_looking_lora()
    with torch.no_grad():
        plain, before = frozen(images), adapted(images)
        with lora_disabled(adapted):
            inside = adapted(images)
        after = adapted(images)
    torch.testing.assert_close(inside, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(before, plain, atol=1e-3)
    torch.testing.assert_close(after, before)


def test_the_distill_term_counts_visible_images_only_and_trains_the_adapter():
    backbone = _trained_looking_lora()
    model = DomainAwareRecognitionModel(backbone, 4, lambda_contrastive=0.0, lambda_domain=0.0, lambda_distill=2.0,
                                        distill_domains=(0,))
    images, labels = torch.rand(4, 3, 112, 112), torch.tensor([0, 1, 2, 3])
    domains = torch.tensor([0, 0, 2, 2])  # two visible, two thermal
    out = model(images, labels, domains)
    with torch.no_grad():
        with lora_disabled(backbone):
            frozen = F.normalize(backbone(images[:2]), dim=1)
        expected = (F.normalize(backbone(images[:2]), dim=1) - frozen).pow(2).sum(1).mean()
    assert float(out.terms["distill"].detach()) == pytest.approx(2.0 * float(expected), rel=1e-4)
    assert float(expected) > 1e-4
    out.terms["distill"].backward()
    grads = [p.grad for name, p in backbone.named_parameters() if "lora_" in name]
    assert grads and any(g is not None and float(g.abs().sum()) > 0 for g in grads)

    thermal_only = model(images, labels, torch.tensor([2, 2, 2, 2]))
    assert float(thermal_only.terms["distill"].detach()) == 0.0
    plain = DomainAwareRecognitionModel(_trained_looking_lora(), 4, lambda_contrastive=0.0, lambda_domain=0.0)
    assert "distill" not in plain(images, labels, domains).terms  # off unless lambda_distill > 0
    with pytest.raises(ValueError, match="distill_domains"):
        DomainAwareRecognitionModel(_trained_looking_lora(), 4, lambda_distill=1.0)


def test_distill_codes_are_the_visible_domains_of_the_training_pack():
    pack = SimpleNamespace(domain_names=("controlled", "wild", "thermal", "lowquality"),
                           domains=np.array([0, 0, 2, 3]))
    assert distill_codes(pack) == (0,)
    with pytest.raises(ValueError, match="visible-light"):
        distill_codes(SimpleNamespace(domain_names=pack.domain_names, domains=np.array([2, 3])))
