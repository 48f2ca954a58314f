"""Embedding centring: a backbone's unit embeddings with their mean over the training images taken away.

Every face a pretrained descriptor sees lies in a narrow cone: on the embedded benchmark's training pack the dlib
ResNet-29's unit embeddings of *different* identities have a mean cosine of 0.88, and an image's nearest other
class centre sits at 0.948 against 0.975 for its own. A CosFace margin of 0.35 in that cone is unreachable, so the
margin loss stays at its uniform-logit value however long LoRA trains. Subtracting the mean unit embedding of the
training images (measured once, under the frozen backbone, before any adaptation) opens the cone: the mean
cosine between identities drops to -0.01, the class-mean start puts the CosFace loss at 0.29 of its uniform value,
and zero-shot validation AUC rises on thermal and low-quality faces (0.899 -> 0.910, 0.955 -> 0.966;
``results/tables/recipe_geometry.json``, README "Recipes that fit").

:func:`centre_embeddings` keeps the centre as the backbone's ``embedding_centre`` buffer and a forward hook, so
everything that calls the backbone (training, validation, test scoring, export) sees ``normalize(f(x)) - centre``;
a model without it is unchanged. Saved adapters carry the centre (:mod:`afr.adapters.registry`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CENTRE_BUFFER", "centre_embeddings", "embedding_centre", "mean_unit_embedding"]

#: the name of the buffer holding the centre on a centred backbone
CENTRE_BUFFER = "embedding_centre"


def mean_unit_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """The mean of the L2-normalised rows of ``embeddings`` ``(N, D)``: the centre of :func:`centre_embeddings`."""
    if embeddings.ndim != 2 or not len(embeddings):
        raise ValueError(f"expected a non-empty (N, D) batch of embeddings, got shape {tuple(embeddings.shape)}")
    return F.normalize(embeddings.float(), dim=1).mean(dim=0)


def _subtract_centre(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    centre = getattr(module, CENTRE_BUFFER)
    return F.normalize(output, dim=-1) - centre.to(output.dtype)


def centre_embeddings(backbone: nn.Module, centre: torch.Tensor) -> nn.Module:
    """Make ``backbone`` return ``normalize(embedding) - centre`` (in place; returns it). Centring a centred backbone
    replaces its centre."""
    dim = getattr(backbone, "embedding_dim", None)
    centre = torch.as_tensor(centre, dtype=torch.float32).detach().flatten()
    if dim is not None and centre.numel() != int(dim):
        raise ValueError(f"the centre has {centre.numel()} values, the backbone's embeddings {dim}")
    if not torch.isfinite(centre).all():
        raise ValueError("the embedding centre holds non-finite values")
    reference = next(iter(backbone.parameters()), None)
    centre = centre.to(reference.device) if reference is not None else centre
    if embedding_centre(backbone) is None:
        backbone.register_buffer(CENTRE_BUFFER, centre)
        backbone.register_forward_hook(_subtract_centre)
    else:
        getattr(backbone, CENTRE_BUFFER).copy_(centre)
    return backbone


def embedding_centre(backbone: nn.Module) -> torch.Tensor | None:
    """The centre ``backbone`` subtracts, or None for a backbone that is not centred."""
    return getattr(backbone, CENTRE_BUFFER, None) if CENTRE_BUFFER in dict(backbone.named_buffers(recurse=False)) \
        else None
