"""A run's data: the training set, the validation packs (per-epoch checks, choices) and the test packs (scored once).

Library piece shared by the recipes of notebooks 02, 03 and 06 (:mod:`afr.experiments.baseline`,
:mod:`~afr.experiments.dalora_vs_lora`, :mod:`~afr.experiments.ablations`); not a recipe itself. Two data profiles:

* ``embedded`` (CPU default): the embedded benchmark of notebook 01 (training pack of all training domains,
  identity-disjoint validation packs in ``val/`` and test packs in ``test/``), :func:`load_embedded_benchmark`;
* ``full`` (GPU): CASIA-WebFace ``train.rec`` with a seeded N-identity subset, ``val_identities`` further identities
  held out as the validation pack, and the five InsightFace packs (``lfw.bin`` ...) as the test.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afr.data.domain_labels import DomainLabelledDataset
from afr.data.full_profile import FULL_BENCHMARKS, balanced_pack, load_named_packs, open_casia
from afr.data.recordio import resolve_pack_paths
from afr.data.subsets import dataset_labels, holdout_identities, identity_subset
from afr.data.verification import VerificationPack, load_pack
from afr.paths import MissingResourceError, shown_path

__all__ = ["FULL_BENCHMARKS", "GRID_DATA_SEED", "BenchmarkData", "load_benchmark", "load_embedded_benchmark"]

#: the full profile's data seed of the grids (notebooks 03 and 06): every run of a grid, whatever its seed, trains on
#: the same identity subset and validates on the same held-out identities (notebook 05's folder split is seed 0 too)
GRID_DATA_SEED = 0
#: full profile: at most this many images of each held-out identity enter the validation pack
VAL_IMAGES_PER_IDENTITY = 10
VAL_MAX_PAIRS = 600


@dataclass
class BenchmarkData:
    """A run's data: the training set, validation packs (per-epoch checks, choices), test packs (scored once)."""

    train: Any
    val_packs: dict[str, VerificationPack]
    test_packs: dict[str, VerificationPack]

    def summary(self) -> str:
        lines = [f"training set: {len(self.train)} images of {self.train.num_classes} identities"]
        for split, packs in (("validation", self.val_packs), ("test", self.test_packs)):
            for name, pack in packs.items():
                lines.append(f"{split:<10} {name:<11} pairs {len(pack):>5}  same {int(pack.issame.sum()):>5}")
        return "\n".join(lines)

    def pack_digests(self) -> dict[str, dict[str, Any]]:
        """Every pack's SHA-256, keyed ``"validation/<name>"`` and ``"test/<name>"``: a validation and a test pack
        of one domain share a name (``controlled``), so the split is part of the key and neither hides the other.

        Each value is ``{"sha256", "pairs", "path"}`` (``path`` ``None`` for a pack built in memory).
        """
        return {f"{split}/{name}": {"sha256": pack.sha256, "pairs": len(pack),
                                    "path": str(pack.path) if pack.path is not None else None}
                for split, packs in (("validation", self.val_packs), ("test", self.test_packs))
                for name, pack in packs.items()}

    def pack_listing(self) -> str:
        """One line per validation and test pack: ``split/name``, SHA-256, pair count and file (notebook 02 prints it)."""
        digests = self.pack_digests()
        width = max((len(key) for key in digests), default=0)
        return "\n".join(f"{key:<{width}}  sha256 {entry['sha256']}  pairs {entry['pairs']:>4}  "
                         f"({entry['path'] or 'in memory'})" for key, entry in digests.items())


def load_embedded_benchmark(embedded_root: str | None = None, benchmarks: Sequence[str] = ()) -> BenchmarkData:
    """The embedded benchmark: training pack with domains, validation packs, test packs (``benchmarks``, default all
    test domains); SHA-256 recorded on each pack."""
    from afr.data.embedded import TEST_DOMAINS, load_embedded

    benchmark = load_embedded(embedded_root)
    train = benchmark.train_dataset()
    val_packs = {name: load_pack(path) for name, path in benchmark.val_bins.items()}
    test_packs = {name: load_pack(benchmark.bin_path(name)) for name in benchmarks or TEST_DOMAINS}
    return BenchmarkData(train, val_packs, test_packs)


def load_benchmark(settings: Any, with_domains: bool = False, data_seed: int | None = None) -> BenchmarkData:
    """The profile's training set, validation packs and test packs (SHA-256 recorded on each file pack), by the
    settings' ``data_profile`` and its fields (:class:`~afr.experiments.settings.fields.FullProfileFields`);
    ``with_domains``: the full profile's training images carry CASIA-WebFace's domain labels (``domain_labels``).

    The full profile's identity subset and validation identities are drawn with ``data_seed``, default the run's
    ``seed`` (notebook 02: one run, its seed in its tag); a grid whose runs share one data set passes a fixed one
    (:data:`GRID_DATA_SEED`), so the runs' data never depends on a setting outside their tags."""
    if settings.data_profile == "embedded":
        return load_embedded_benchmark(settings.embedded_root, settings.benchmarks)
    train, val_pack = _full_training_data(settings, with_domains, settings.seed if data_seed is None else data_seed)
    return BenchmarkData(train, {"holdout": val_pack}, _full_test_packs(settings))


def domain_labels_folder(settings: Any) -> Path:
    """The folder of CASIA-WebFace's domain labels: ``domain_labels``, else ``<train_rec>/domain_labels`` (where
    ``python -m afr label-domains`` writes by default)."""
    if settings.domain_labels:
        return Path(settings.domain_labels)
    return resolve_pack_paths(settings.train_rec).rec.parent / "domain_labels"


def checked_domain_labels_folder(settings: Any) -> Path:
    """:func:`domain_labels_folder`, or a MissingResourceError that names it and the command that writes it."""
    folder = domain_labels_folder(settings)
    if not folder.is_dir():
        raise MissingResourceError(
            f"domain_labels: {shown_path(folder)} not found; the full profile's domain experts and tasks need the "
            f"domain of every training image: python -m afr label-domains --train-rec {settings.train_rec} "
            f"--out {folder}")
    return folder


def open_domain_labels(settings: Any):
    """The :class:`~afr.data.domain_labels.DomainLabelling` of CASIA-WebFace (checked against the pack)."""
    from afr.data.domain_labels import load_domain_labels

    return load_domain_labels(checked_domain_labels_folder(settings), open_casia(settings.train_rec))


def _full_training_data(settings: Any, with_domains: bool = False, seed: int | None = None):
    """CASIA-WebFace: ``val_identities`` held-out identities as a validation pack, a subset of the rest to train
    (both drawn with ``seed``, default the settings'); ``with_domains``: every image carries its domain
    (:func:`domain_labels_folder`), kept by the identity subset."""
    dataset = open_casia(settings.train_rec)
    if with_domains:
        dataset = DomainLabelledDataset.from_folder(dataset, checked_domain_labels_folder(settings))
    labels = dataset_labels(dataset)
    seed = settings.seed if seed is None else seed
    held_out = holdout_identities(labels, settings.val_identities, seed)
    train = identity_subset(dataset, settings.num_identities, seed, exclude=held_out)
    return train, _holdout_pack(dataset, labels, held_out, seed)


def _holdout_pack(dataset, labels: np.ndarray, identities: np.ndarray, seed: int) -> VerificationPack:
    """Balanced, fold-ordered pairs over (up to 10) images of each held-out identity, decoded in memory."""
    rng = np.random.default_rng([seed, 2])
    chosen = []
    for identity in identities:
        members = np.flatnonzero(labels == identity)
        chosen.extend(rng.permutation(members)[:VAL_IMAGES_PER_IDENTITY].tolist())
    return balanced_pack(dataset, chosen, "holdout", max_pairs=VAL_MAX_PAIRS, seed=seed)


def _full_test_packs(settings: Any) -> dict[str, VerificationPack]:
    return load_named_packs(settings.bins_dir, settings.benchmarks or FULL_BENCHMARKS, "bins_dir")
