"""t-SNE of the test chips' embeddings and the same-identity cosine across domains it is read with.

A t-SNE picture alone says little (its distances are not the model's); the number that says whether an
adapter pulls the domains of one person together is the mean cosine similarity of same-identity chips taken
from *different* domains. In the embedded benchmark the controlled and low-quality packs share identities
(low quality is a degraded copy of the controlled and wild photos) and so do wild and low quality; thermal
identities have no visible images. :func:`identity_cosines` therefore reports the cross-domain number over
the identities that appear in more than one domain, the within-domain number beside it, and how many
identities each covers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.manifold import TSNE

from afr.analysis.embeddings import PackEmbedder
from afr.analysis.packs import LabelledPack

__all__ = ["EmbeddedPoints", "IdentityCosines", "collect_points", "identity_cosines", "tsne_coordinates"]


@dataclass
class EmbeddedPoints:
    """Distinct chips of several packs with their embeddings and labels, aligned row by row."""

    embeddings: np.ndarray  # (n, D) unit vectors
    identities: np.ndarray  # (n,) identity names
    domains: np.ndarray  # (n,) pack domain of each chip
    files: np.ndarray  # (n,) manifest file of each chip

    def __len__(self) -> int:
        return len(self.identities)


def collect_points(embedder: PackEmbedder, model: str, domains: Sequence[str] | None = None) -> EmbeddedPoints:
    """Every distinct chip of the given packs (default: all the embedder holds) under ``model``."""
    domains = list(domains or embedder.packs)
    packs: Mapping[str, LabelledPack] = embedder.packs
    embeddings = np.concatenate([embedder.chip_embeddings(model, domain) for domain in domains])
    rows = [(domain, row) for domain in domains for row in packs[domain].chip_rows]
    return EmbeddedPoints(embeddings, np.array([row["identity"] for _, row in rows]),
                          np.array([domain for domain, _ in rows]), np.array([row["file"] for _, row in rows]))


@dataclass
class IdentityCosines:
    """Mean cosine similarities between chips (unit embeddings), per kind of pair.

    ``cross_domain``: same identity, different domains, over the ``n_cross_identities`` identities that appear
    in more than one domain (NaN when there are none); ``within_domain``: same identity, same domain;
    ``different``: different identities (any domains). ``n_*_pairs`` count the chip pairs averaged.
    """

    cross_domain: float
    within_domain: float
    different: float
    n_cross_identities: int
    n_cross_pairs: int
    n_within_pairs: int
    n_different_pairs: int


def identity_cosines(points: EmbeddedPoints) -> IdentityCosines:
    """Mean cosine of same-identity chip pairs across and within domains, and of different identities."""
    unit = points.embeddings / np.linalg.norm(points.embeddings, axis=1, keepdims=True)
    cosine = unit @ unit.T
    upper = np.triu(np.ones_like(cosine, dtype=bool), k=1)
    same_identity = points.identities[:, None] == points.identities[None, :]
    same_domain = points.domains[:, None] == points.domains[None, :]
    cross = upper & same_identity & ~same_domain
    within = upper & same_identity & same_domain
    different = upper & ~same_identity
    spanning = {identity for identity in np.unique(points.identities)
                if len(np.unique(points.domains[points.identities == identity])) > 1}

    def mean(mask: np.ndarray) -> float:
        return float(cosine[mask].mean()) if mask.any() else float("nan")

    return IdentityCosines(mean(cross), mean(within), mean(different), len(spanning), int(cross.sum()),
                           int(within.sum()), int(different.sum()))


def tsne_coordinates(points: EmbeddedPoints, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, cosine metric, PCA start) of the points' embeddings, row-aligned with them."""
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(points) - 1) / 3), metric="cosine", init="pca",
                random_state=seed)
    return tsne.fit_transform(points.embeddings.astype(np.float64))
