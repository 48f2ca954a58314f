"""Supervised InfoNCE (hand-computed), the router's domain loss, and their combination with the margin loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from afr.losses import (
    DomainClassificationLoss,
    LossWeights,
    SupervisedInfoNCE,
    combine_losses,
    domain_classification_loss,
    positive_mask,
    supervised_info_nce,
)

# Four unit vectors in 2-D: identity 0 has images 0, 1 (domain 0) and 2 (domain 1); image 3 is identity 1.
POINTS = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (-1.0, 0.0)]
LABELS = [0, 0, 0, 1]
DOMAINS = [0, 0, 1, 0]
TAU = 0.5


def _dot(i: int, j: int) -> float:
    return POINTS[i][0] * POINTS[j][0] + POINTS[i][1] * POINTS[j][1]


def _anchor_loss(i: int, positives: list[int]) -> float:
    """-mean_p log(exp(s_ip / tau) / sum_{a != i} exp(s_ia / tau)), written out."""
    denominator = sum(math.exp(_dot(i, a) / TAU) for a in range(len(POINTS)) if a != i)
    return -sum(math.log(math.exp(_dot(i, p) / TAU) / denominator) for p in positives) / len(positives)


def _tensors(scale: float = 1.0):
    return (torch.tensor(POINTS, dtype=torch.float64) * scale, torch.tensor(LABELS), torch.tensor(DOMAINS))


def test_info_nce_equals_the_hand_computed_value():
    embeddings, labels, domains = _tensors()
    # without domains every other image of the identity is a positive; image 3 has none and is skipped
    expected_all = (_anchor_loss(0, [1, 2]) + _anchor_loss(1, [0, 2]) + _anchor_loss(2, [0, 1])) / 3
    got = supervised_info_nce(embeddings, labels, temperature=TAU)
    assert got.item() == pytest.approx(expected_all, rel=1e-12)
    assert supervised_info_nce(embeddings, labels, domains, TAU, prefer_cross_domain=False).item() == pytest.approx(
        expected_all, rel=1e-12)


def test_cross_domain_positives_are_preferred_when_the_anchor_has_them():
    embeddings, labels, domains = _tensors()
    # anchors 0 and 1 (domain 0) have the cross-domain image 2: it alone is their positive;
    # anchor 2 (domain 1) sees only domain-0 images of its identity: both count
    expected = (_anchor_loss(0, [2]) + _anchor_loss(1, [2]) + _anchor_loss(2, [0, 1])) / 3
    expected_all = (_anchor_loss(0, [1, 2]) + _anchor_loss(1, [0, 2]) + _anchor_loss(2, [0, 1])) / 3
    assert expected != pytest.approx(expected_all, rel=1e-3)
    got = supervised_info_nce(embeddings, labels, domains, temperature=TAU)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert SupervisedInfoNCE(temperature=TAU)(embeddings, labels, domains).item() == pytest.approx(expected, rel=1e-12)
    assert positive_mask(labels, domains).tolist() == [
        [False, False, True, False],
        [False, False, True, False],
        [True, True, False, False],
        [False, False, False, False],
    ]


def test_only_directions_count():
    embeddings, labels, domains = _tensors()
    scales = torch.tensor([[3.0], [0.01], [250.0], [7.0]], dtype=torch.float64)
    reference = supervised_info_nce(embeddings, labels, domains, TAU)
    assert supervised_info_nce(embeddings * scales, labels, domains, TAU).item() == pytest.approx(
        reference.item(), rel=1e-12)
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(12, 8, generator=generator)
    labels12 = torch.arange(12) % 4
    row_scales = torch.rand(12, 1, generator=generator) * 50 + 0.1
    assert supervised_info_nce(points * row_scales, labels12).item() == pytest.approx(
        supervised_info_nce(points, labels12).item(), rel=1e-5)


def test_no_positive_gives_a_zero_that_backpropagates():
    embeddings = torch.randn(5, 4, requires_grad=True)
    loss = supervised_info_nce(embeddings, torch.arange(5))
    assert loss.item() == 0.0 and loss.shape == () and loss.grad_fn is not None
    loss.backward()
    assert embeddings.grad is not None and torch.equal(embeddings.grad, torch.zeros(5, 4))
    single = torch.randn(1, 4, requires_grad=True)
    supervised_info_nce(single, torch.tensor([3])).backward()
    assert torch.equal(single.grad, torch.zeros(1, 4))


def test_gradients_flow_and_match_finite_differences():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(6, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    labels, domains = torch.tensor([0, 0, 1, 1, 1, 2]), torch.tensor([0, 1, 0, 0, 1, 0])
    loss = supervised_info_nce(embeddings, labels, domains, temperature=0.2)
    loss.backward()
    # image 5 has no positive but sits in every other anchor's denominator, so it gets a gradient too
    assert torch.isfinite(embeddings.grad).all() and (embeddings.grad.norm(dim=1) > 0).all()
    assert torch.autograd.gradcheck(
        lambda e: supervised_info_nce(e, labels, domains, temperature=0.2), (embeddings.detach().requires_grad_(),))
    # pulling positives together lowers the loss: one gradient step helps
    with torch.no_grad():
        stepped = embeddings - 0.05 * embeddings.grad
    assert supervised_info_nce(stepped, labels, domains, temperature=0.2) < loss


def test_small_temperature_is_stable():
    embeddings, labels, domains = _tensors()
    loss = supervised_info_nce(embeddings.float(), labels, domains, temperature=1e-3)
    assert torch.isfinite(loss)
    # as tau -> 0, log p_ip -> (s_ip - max_{a != i} s_ia) / tau: anchors 0 and 1 have their best match (image 2)
    # as positive (loss -> 0); anchor 2's positives are 0 (s = 0.6) and 1 (s = 0.8, its best match)
    assert loss.item() == pytest.approx((0.0 + 0.0 + (0.8 - 0.6) / 2 / 1e-3) / 3, rel=1e-4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="embeddings"):
        supervised_info_nce(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        supervised_info_nce(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="domains"):
        supervised_info_nce(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        SupervisedInfoNCE(temperature=0.0)


# ------------------------------------------------------------------------------ domain loss
def test_domain_loss_is_cross_entropy_on_the_mapped_samples():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(7, 3, generator=generator, requires_grad=True)
    domains = torch.tensor([0, 1, 2, 3, 2, 0, 1])  # 1 (wild) has no expert
    mapping = {0: 0, 2: 1, 3: 2}
    keep = torch.tensor([0, 2, 3, 4, 5])
    expected = F.cross_entropy(logits[keep], torch.tensor([0, 1, 2, 1, 0]))
    got = domain_classification_loss(logits, domains, mapping)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert DomainClassificationLoss(mapping)(logits, domains).item() == pytest.approx(expected.item(), rel=1e-6)
    got.backward()
    assert torch.equal(logits.grad[1], torch.zeros(3)) and torch.equal(logits.grad[6], torch.zeros(3))
    assert logits.grad[0].abs().sum() > 0


def test_domain_loss_without_mapped_samples_is_a_zero_that_backpropagates():
    logits = torch.randn(3, 2, requires_grad=True)
    loss = domain_classification_loss(logits, torch.tensor([1, 1, 5]), {0: 0, 2: 1})
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 2))


def test_domain_loss_rejects_experts_outside_the_router():
    with pytest.raises(ValueError, match="expert 3"):
        domain_classification_loss(torch.zeros(2, 3), torch.tensor([0, 1]), {0: 0, 1: 3})
    with pytest.raises(ValueError, match="domains"):
        domain_classification_loss(torch.zeros(2, 3), torch.tensor([0, 1, 1]), {0: 0})


# ------------------------------------------------------------------------------ combination
def test_combine_losses_weights_and_names_the_terms():
    margin, contrastive, domain = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    total, terms = combine_losses(margin, contrastive, domain)
    assert total.item() == pytest.approx(2.0 + 0.1 * 3.0 + 0.01 * 5.0)
    assert {name: value.item() for name, value in terms.items()} == pytest.approx(
        {"margin": 2.0, "contrastive": 0.3, "domain": 0.05})
    assert sum(terms.values()).item() == pytest.approx(total.item())
    total, terms = combine_losses(margin, contrastive, lambda_contrastive=0.5)
    assert set(terms) == {"margin", "contrastive"} and total.item() == pytest.approx(3.5)
    total, terms = combine_losses(margin, domain=domain, lambda_domain=0.2)
    assert set(terms) == {"margin", "domain"} and total.item() == pytest.approx(3.0)
    total, terms = combine_losses(margin)
    assert terms == {"margin": margin} and total.item() == 2.0
    assert LossWeights().combine(margin, contrastive, domain)[0].item() == pytest.approx(2.35)
    with pytest.raises(ValueError, match="domain"):
        LossWeights(domain=-1.0)


def test_combined_loss_backpropagates_into_each_part():
    a, b, c = (torch.tensor(1.0, requires_grad=True) for _ in range(3))
    total, _ = combine_losses(a * 2, b * 3, c * 4, lambda_contrastive=0.1, lambda_domain=0.01)
    total.backward()
    assert (a.grad.item(), b.grad.item(), c.grad.item()) == pytest.approx((2.0, 0.3, 0.04))
