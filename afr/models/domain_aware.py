"""The training model of the domain-aware experiments: margin loss + contrastive term + router's domain loss.

``L = L_margin + λ1 · L_contrastive + λ2 · L_domain`` (:func:`afr.losses.combine_losses`):

* ``L_margin``: CosFace/ArcFace over the class centres, as :class:`~afr.models.FaceRecognitionModel`;
* ``L_contrastive``: supervised InfoNCE over the batch's L2-normalised embeddings, positives = other
  images of the same identity, preferring another domain when the batch has one
  (:func:`afr.losses.supervised_info_nce`);
* ``L_domain``: cross-entropy of the DA-LoRA router's logits against each image's domain (only when the
  backbone carries DA-LoRA with classifier gating: oracle and uniform gating have no router to train);
* ``L_distill`` (``lambda_distill > 0``, notebook 03's ``lora-distill``, the regularised fine-tuning baseline of
  heterogeneous face recognition): the mean squared distance between the adapted and the frozen backbone's unit
  embeddings of the batch's images from ``distill_domains`` (visible light), the frozen ones computed with LoRA
  switched off (:func:`afr.adapters.lora.lora_disabled`), so the adapter learns the other domains while it keeps
  what the pretrained network does on visible faces.

With oracle gating the batch's domain codes are handed to the backbone before its forward pass.

Which view the router reads in training (``router_view``): ``"augmented"`` (the default, the committed runs'
behaviour) routes each training image by the stem statistics of the image the experts see, augmented by flip +
RandAugment(4, 16); ``"clean"`` routes it by its flip-only view (``clean_images``, which the trainer hands over
when :attr:`DomainAwareRecognitionModel.needs_clean_view`: :meth:`afr.data.augment.FaceAugment.views`, the same
flip, no RandAugment). Test images are never augmented, so a router trained on augmented statistics routes
another distribution than it learnt on; with ``"clean"`` both the domain loss's logits *and* the gates of the
recognition forward come from the clean view (:func:`afr.adapters.dalora.route_by`: one extra pass through the
frozen stem), so the experts are trained under the gates test images get, while they still see the augmented
pixels. A plain
(LoRA) backbone trains with the same margin and contrastive terms, so that a comparison of LoRA and
DA-LoRA rows differs in the adapter only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from afr.adapters.dalora import dalora_state, has_dalora, route_by, set_domains
from afr.losses import combine_losses, domain_classification_loss, supervised_info_nce
from afr.models.recognizer import FaceRecognitionModel, RecognizerOutput

__all__ = ["ROUTER_VIEWS", "DomainAwareRecognitionModel"]

#: the view of a training image the classifier router reads (see the module docstring)
ROUTER_VIEWS = ("augmented", "clean")


class DomainAwareRecognitionModel(FaceRecognitionModel):
    """:class:`FaceRecognitionModel` plus the contrastive and domain terms (see the module docstring).

    Args (beyond the parent's):
        lambda_contrastive: λ1 (0 switches the term off).
        lambda_domain: λ2 (0 switches the term off; ignored without a classifier-gated router).
        temperature: InfoNCE temperature.
        router_view: ``"augmented"`` or ``"clean"``: the view of each training image the classifier router reads
            (see the module docstring); test-time forwards (no ``clean_images``) route by their own images.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, margin: str | nn.Module = "cosface", s: float = 64.0,
                 m: float | None = None, lambda_contrastive: float = 0.1, lambda_domain: float = 0.01,
                 temperature: float = 0.1, router_view: str = "augmented", lambda_distill: float = 0.0,
                 distill_domains: tuple[int, ...] = ()) -> None:
        super().__init__(backbone, num_classes, margin=margin, s=s, m=m)
        if router_view not in ROUTER_VIEWS:
            raise ValueError(f"router_view must be one of {ROUTER_VIEWS}, got {router_view!r}")
        self.router_view = router_view
        if lambda_contrastive < 0 or lambda_domain < 0 or temperature <= 0:
            raise ValueError("lambda_contrastive and lambda_domain must be >= 0 and temperature > 0, got "
                             f"{lambda_contrastive}, {lambda_domain}, {temperature}")
        if lambda_distill < 0 or (lambda_distill > 0 and not distill_domains):
            raise ValueError(f"lambda_distill must be >= 0 and needs distill_domains (domain codes), got "
                             f"{lambda_distill}, {distill_domains}")
        self.lambda_distill = float(lambda_distill)
        self.distill_domains = tuple(int(code) for code in distill_domains)
        self.lambda_contrastive = float(lambda_contrastive)
        self.lambda_domain = float(lambda_domain)
        self.temperature = float(temperature)

    @property
    def needs_clean_view(self) -> bool:
        """Whether the trainer should hand the flip-only view of each batch as ``clean_images``."""
        return self.router_view == "clean"

    def _distill_loss(self, images: torch.Tensor, embeddings: torch.Tensor,
                      domains: torch.Tensor | None) -> torch.Tensor:
        """``L_distill`` over the batch's images of :attr:`distill_domains` (0 when it has none)."""
        from afr.adapters.lora import lora_disabled

        if domains is None:
            raise ValueError("lambda_distill needs the domain of every image (domains=...)")
        visible = torch.isin(domains.to(images.device), torch.tensor(self.distill_domains, device=images.device))
        if not bool(visible.any()):
            return embeddings.sum() * 0.0
        with torch.no_grad(), lora_disabled(self.backbone):
            frozen = F.normalize(self.backbone(images[visible]).float(), dim=1)
        adapted = F.normalize(embeddings[visible].float(), dim=1)
        return (adapted - frozen).pow(2).sum(dim=1).mean()

    def _gating(self) -> str | None:
        return dalora_state(self.backbone).mode if has_dalora(self.backbone) else None

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                domains: torch.Tensor | None = None, clean_images: torch.Tensor | None = None) -> RecognizerOutput:
        gating = self._gating()
        if gating == "oracle":
            if domains is None:
                raise ValueError("oracle gating needs the domain of every image (domains=...)")
            set_domains(self.backbone, domains)
        if clean_images is not None and self.router_view == "clean" and gating == "classifier":
            if clean_images.shape != images.shape:
                raise ValueError(f"clean_images {tuple(clean_images.shape)} must match images {tuple(images.shape)}")
            with route_by(self.backbone, clean_images):
                embeddings = self.backbone(images)
        else:
            embeddings = self.backbone(images)
        if labels is None:
            return RecognizerOutput(loss=None, logits=self.head(embeddings) * self.s, embeddings=embeddings)
        logits, margin_loss = self.margin_loss(embeddings, labels)
        contrastive = domain = None
        if self.lambda_contrastive > 0:
            contrastive = supervised_info_nce(embeddings, labels, domains, temperature=self.temperature)
        if self.lambda_domain > 0 and gating == "classifier" and domains is not None:
            settings = self.backbone.dalora_settings
            classes = settings.router_classes
            mapping = {code: classes.index(name) for code, name in enumerate(settings.domain_codes) if name in classes}
            domain = domain_classification_loss(dalora_state(self.backbone).router_logits, domains, mapping)
        distill = self._distill_loss(images, embeddings, domains) if self.lambda_distill > 0 else None
        loss, terms = combine_losses(margin_loss, contrastive, domain, lambda_contrastive=self.lambda_contrastive,
                                     lambda_domain=self.lambda_domain, distill=distill,
                                     lambda_distill=self.lambda_distill)
        return RecognizerOutput(loss=loss, logits=logits, embeddings=embeddings, terms=terms)
