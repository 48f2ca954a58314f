"""Class centres, CosFace/ArcFace margins, the margin loss and FaceRecognitionModel."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from afr.adapters.lora import LoraSettings, apply_lora
from afr.losses import ArcFaceMargin, CosFaceMargin, MarginLoss, create_margin
from afr.models import Backbone, ClassCentres, FaceRecognitionModel, RecognizerOutput, create_backbone


def _cosines(batch: int = 6, classes: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    cosine = torch.rand(batch, classes, generator=generator) * 2 - 1
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return cosine, labels


def test_class_centres_give_clamped_cosines():
    torch.manual_seed(0)
    head = ClassCentres(embedding_dim=8, num_classes=4)
    embeddings = torch.randn(5, 8)
    cosine = head(embeddings)
    e = embeddings.numpy() / np.linalg.norm(embeddings.numpy(), axis=1, keepdims=True)
    w = head.weight.detach().numpy() / np.linalg.norm(head.weight.detach().numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(cosine.detach().numpy(), e @ w.T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head(7.5 * embeddings), cosine)  # only directions matter
    # an embedding equal to a centre has cosine exactly 1 (after the clamp), never above
    aligned = head(head.weight.detach()[:2] * 3)
    assert aligned.max() <= 1.0 and torch.allclose(aligned.diagonal(), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        head(torch.randn(5, 7))


def test_cosface_subtracts_margin_from_target_only():
    cosine, labels = _cosines()
    logits = CosFaceMargin(s=64.0, m=0.35)(cosine, labels)
    target = F.one_hot(labels, 5).bool()
    torch.testing.assert_close(logits[target], 64.0 * (cosine[target] - 0.35))
    torch.testing.assert_close(logits[~target], 64.0 * cosine[~target])


def test_arcface_adds_angle_to_target_only():
    cosine, labels = _cosines()
    cosine = cosine * 0.5 + 0.3  # theta + m stays below pi: cos in [-0.2, 0.8]
    logits = ArcFaceMargin(s=64.0, m=0.5)(cosine, labels)
    target = F.one_hot(labels, 5).bool()
    theta = torch.arccos(cosine[target].double())
    torch.testing.assert_close(logits[target].double(), 64.0 * torch.cos(theta + 0.5), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(logits[~target], 64.0 * cosine[~target])


def test_arcface_beyond_pi_uses_the_insightface_fallback():
    m = 0.5
    threshold = math.cos(math.pi - m)
    cosine = torch.tensor([[threshold - 0.05, 0.2], [threshold + 0.05, 0.1], [-0.3, 0.0]])
    labels = torch.tensor([0, 0, 0])
    logits = ArcFaceMargin(s=10.0, m=m)(cosine, labels)
    # theta + m > pi: cos - m*sin(m) keeps the logit monotone in theta
    assert logits[0, 0].item() == pytest.approx(10.0 * (cosine[0, 0].item() - m * math.sin(m)), rel=1e-5)
    assert logits[1, 0].item() == pytest.approx(10.0 * math.cos(math.acos(cosine[1, 0].item()) + m), rel=1e-4)
    assert logits[0, 0] < logits[1, 0]
    easy = ArcFaceMargin(s=10.0, m=m, easy_margin=True)(cosine, labels)
    assert easy[2, 0].item() == pytest.approx(-3.0)  # cos <= 0 left unchanged
    assert easy[0, 1].item() == pytest.approx(2.0)


def test_arcface_gradients_stay_finite_at_cosine_one():
    cosine = torch.tensor([[1.0, 0.0], [-1.0, 0.5]], requires_grad=True)
    logits = ArcFaceMargin()(cosine, torch.tensor([0, 0]))
    F.cross_entropy(logits, torch.tensor([0, 0])).backward()
    assert torch.isfinite(cosine.grad).all()


def test_margin_inputs_are_checked():
    cosine, _ = _cosines()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        CosFaceMargin()(cosine, torch.tensor([0, 1, 2, 3, 4, 5]))
    with pytest.raises(ValueError, match=r"labels of shape \(6,\)"):
        ArcFaceMargin()(cosine, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer class labels"):
        CosFaceMargin()(cosine, torch.zeros(6))


def test_create_margin_and_loss():
    assert isinstance(create_margin("CosFace"), CosFaceMargin) and create_margin("cosface").m == 0.35
    arc = create_margin("arcface", s=30.0)
    assert isinstance(arc, ArcFaceMargin) and (arc.s, arc.m) == (30.0, 0.5)
    assert create_margin("arcface", m=0.3).m == 0.3
    with pytest.raises(ValueError, match="unknown margin 'sphereface'"):
        create_margin("sphereface")
    cosine, labels = _cosines()
    margin = CosFaceMargin(s=16.0, m=0.2)
    torch.testing.assert_close(MarginLoss(margin)(cosine, labels), F.cross_entropy(margin(cosine, labels), labels))


class _ToyBackbone(Backbone):
    """A linear embedding of 8x8 images: enough to learn a toy identity problem."""

    name = "toy"
    embedding_dim = 6
    input_size = 8
    alignment = "arcface"

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 8, self.embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1))


@pytest.mark.parametrize("margin", ["cosface", "arcface"])
def test_loss_decreases_on_a_toy_problem(margin):
    torch.manual_seed(0)
    prototypes = torch.rand(4, 3, 8, 8)
    labels = torch.arange(4).repeat(8)
    images = (prototypes[labels] + 0.1 * torch.randn(32, 3, 8, 8)).clamp(0, 1)
    model = FaceRecognitionModel(_ToyBackbone(), num_classes=4, margin=margin, s=16.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        output = model(images=images, labels=labels, domains=torch.zeros(32, dtype=torch.long))
        optimiser.zero_grad()
        output.loss.backward()
        optimiser.step()
        losses.append(output.loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        predictions = model(images).logits.argmax(dim=1)
    assert (predictions == labels).float().mean() == 1.0


def test_recognizer_outputs_with_and_without_labels():
    torch.manual_seed(0)
    model = FaceRecognitionModel(create_backbone("tiny-dinov2"), num_classes=3, s=64.0, m=0.35)
    images = torch.rand(4, 3, 112, 112)
    labels = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        plain = model(images)
        trained = model(images, labels=labels)
    assert isinstance(plain, RecognizerOutput) and plain.loss is None
    assert plain.embeddings.shape == (4, 32) and plain.logits.shape == (4, 3)
    cosine = model.head(plain.embeddings)
    torch.testing.assert_close(plain.logits, 64.0 * cosine)
    torch.testing.assert_close(trained.logits, CosFaceMargin(64.0, 0.35)(cosine, labels))
    torch.testing.assert_close(trained.loss, F.cross_entropy(trained.logits, labels))


def test_lora_recognizer_trains_lora_and_centres_only():
    torch.manual_seed(0)
    backbone = apply_lora(create_backbone("tiny-dinov2"), LoraSettings(r=4, alpha=8))
    model = FaceRecognitionModel(backbone, num_classes=3, margin="cosface", s=16.0)
    images = torch.rand(6, 3, 112, 112)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(images=images, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "head.weight" in changed
    assert changed - {"head.weight"} and all("lora_" in n for n in changed - {"head.weight"})
