"""Supervised InfoNCE (SupCon) over a batch of face embeddings, preferring cross-domain positives.

For a batch of embeddings ``z_i`` (L2-normalised here, so only their directions count) with identity
labels ``y_i``, the similarity of two images is ``s_ij = z_i . z_j`` and the loss of anchor ``i`` is
Khosla et al.'s (2020) ``L_out``:

    L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip / tau) / sum_{a != i} exp(s_ia / tau) )

where ``P(i)`` holds the other images of the anchor's identity in the batch. With ``domains`` and
``prefer_cross_domain=True`` an anchor that has same-identity images from *another* domain in the
batch takes only those as positives (the loss then pulls, say, a low-quality image towards the
controlled images of the same person rather than towards its low-quality siblings); an anchor
without such images keeps all its same-identity images. The denominator always runs over every
other image of the batch, whatever its domain. The loss is the mean of ``L_i`` over the anchors
that have at least one positive; anchors without positives are skipped, and a batch where no anchor
has one gives a zero that is still connected to ``embeddings`` (``backward`` works, gradients are 0).

On the embedded benchmark the controlled and low-quality images show the same identities (the
low-quality chips are degraded copies of controlled and wild ones), so those anchors find
cross-domain positives; the thermal identities have no visible images, so their positives stay
within thermal. Batches with several images per identity (see
:class:`afr.train.sampler.IdentityBatchSampler`) are needed for any positive to exist.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["SupervisedInfoNCE", "positive_mask", "supervised_info_nce"]


def _check(embeddings: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor | None, temperature: float) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"supervised_info_nce expects embeddings of shape (B, D), got {tuple(embeddings.shape)}")
    batch = embeddings.shape[0]
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise ValueError(f"supervised_info_nce expects labels of shape ({batch},), got {tuple(labels.shape)}")
    if domains is not None and (domains.ndim != 1 or domains.shape[0] != batch):
        raise ValueError(f"supervised_info_nce expects domains of shape ({batch},), got {tuple(domains.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def positive_mask(
    labels: torch.Tensor, domains: torch.Tensor | None = None, prefer_cross_domain: bool = True
) -> torch.Tensor:
    """``(B, B)`` bool mask: ``[i, p]`` is True when ``p`` is a positive of anchor ``i``.

    Positives are the other samples with the anchor's label; with ``domains`` and
    ``prefer_cross_domain``, only those from another domain when the anchor has any.
    """
    labels = labels.reshape(-1)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    positives = (labels[:, None] == labels[None, :]) & ~eye
    if prefer_cross_domain and domains is not None:
        domains = domains.reshape(-1).to(labels.device)
        cross = positives & (domains[:, None] != domains[None, :])
        positives = torch.where(cross.any(dim=1, keepdim=True), cross, positives)
    return positives


def supervised_info_nce(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    domains: torch.Tensor | None = None,
    temperature: float = 0.1,
    prefer_cross_domain: bool = True,
) -> torch.Tensor:
    """Supervised InfoNCE (SupCon ``L_out``) of ``embeddings`` ``(B, D)`` with identity ``labels``
    ``(B,)`` and optional ``domains`` ``(B,)``; a scalar tensor. See the module docstring.

    The embeddings are L2-normalised first, in float32 (float64 for float64 input; also under
    autocast); the denominator uses ``logsumexp``, so a small ``temperature`` does not overflow.
    """
    _check(embeddings, labels, domains, temperature)
    dtype = torch.promote_types(embeddings.dtype, torch.float32)  # float32, or float64 for float64 input
    positives = positive_mask(labels.to(embeddings.device), domains, prefer_cross_domain)
    counts = positives.sum(dim=1)
    has_positive = counts > 0
    if not bool(has_positive.any()):
        return embeddings.to(dtype).sum() * 0.0  # zero, but backward still reaches the embeddings
    with torch.autocast(device_type=embeddings.device.type, enabled=False):  # the matmul in float32 too
        z = F.normalize(embeddings.to(dtype), dim=1)
        similarity = (z @ z.T) / temperature
    eye = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    log_denominator = torch.logsumexp(similarity.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    log_prob = similarity - log_denominator
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(dim=1)[has_positive] / counts[has_positive])
    return per_anchor.mean()


class SupervisedInfoNCE(nn.Module):
    """:func:`supervised_info_nce` as a module: ``loss(embeddings, labels, domains=None)``."""

    def __init__(self, temperature: float = 0.1, prefer_cross_domain: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.prefer_cross_domain = bool(prefer_cross_domain)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, domains: torch.Tensor | None = None
    ) -> torch.Tensor:
        return supervised_info_nce(embeddings, labels, domains, self.temperature, self.prefer_cross_domain)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, prefer_cross_domain={self.prefer_cross_domain}"
