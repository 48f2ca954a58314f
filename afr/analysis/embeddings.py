"""Embeddings of the labelled test packs under the zero-shot backbone and under committed adapters.

Notebook 07 trains nothing: an "adapted model" is the pretrained backbone plus an adapter published in
``results/adapters/<method>_seed<k>/`` (with ``source.json`` naming the run whose record holds its test
metrics). Each adapter is evaluated the way its experiment scored it (:func:`afr.experiments.dalora_vs_lora.evaluate_adapted`),
so the numbers computed here can be checked against the committed records:

* LoRA: merged into the backbone (equal to the unmerged model up to ~3e-7);
* DA-LoRA ``oracle``: the expert of the pack's domain merged (the wild photos go to the ``controlled`` expert,
  :data:`afr.experiments.dalora_run.ORACLE_EXPERT_OF`);
* DA-LoRA ``classifier`` / ``uniform``: unmerged, with the adapter's own gating (per-image router gates).

The adapters of a grid that centred its embeddings (notebook 03's fitted grid, ``results/adapters/dalora-fitted/``)
carry the centre their runs subtracted (:mod:`afr.models.centring`); the zero-shot reference beside them subtracts
the same centre (``zero_shot_centre``), as notebook 03's zero-shot row did, so the two differ in the adapter only.

Embeddings are InsightFace's flip-test embeddings (:func:`afr.eval.extract.extract_embeddings`) of each
pack's distinct chips, computed once per (model, pack) and kept for the run (:class:`PackEmbedder`).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from afr.adapters import adapter_type_of, load_adapter, merge_adapter, read_adapter_settings
from afr.adapters.registry import CENTRE_NAME
from afr.analysis.packs import LabelledPack
from afr.eval.extract import extract_embeddings
from afr.eval.verification import pair_distances
from afr.experiments.dalora_run import ORACLE_EXPERT_OF
from afr.models import create_backbone
from afr.models.centring import centre_embeddings
from afr.models.layout import fast_layout
from afr.paths import MissingResourceError

__all__ = ["ZERO_SHOT", "ModelChoice", "PackEmbedder", "adapter_centre", "published_seeds", "resolve_model"]

#: the name of the pretrained backbone without any adapter
ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class ModelChoice:
    """One model to analyse: ``zero-shot`` or a committed adapter folder (``name`` = its folder name)."""

    name: str
    adapter_dir: Path | None = None
    method: str = ZERO_SHOT  # lora, lora-matched, dalora-classifier, dalora-oracle, dalora-uniform
    seed: int | None = None
    record: Path | None = None  # the run record holding the adapter's committed test metrics

    @property
    def gating(self) -> str | None:
        """The DA-LoRA gating mode (None for LoRA and zero-shot)."""
        if self.adapter_dir is None:
            return None
        return getattr(read_adapter_settings(self.adapter_dir), "gating", None)  # only DA-LoRA's settings gate


def resolve_model(name: str, results_dir: str | Path) -> ModelChoice:
    """``zero-shot`` or the adapter ``results_dir/adapters/<name>`` (with its ``source.json`` provenance; ``name`` may
    name a grid's folder, e.g. ``dalora-fitted/lora_seed0``)."""
    if name == ZERO_SHOT:
        return ModelChoice(ZERO_SHOT)
    results_dir = Path(results_dir)
    directory = results_dir / "adapters" / name
    source_path = directory / "source.json"
    if not source_path.is_file():
        available = sorted(path.parent.relative_to(results_dir / "adapters").as_posix()
                           for path in (results_dir / "adapters").rglob("source.json"))
        raise MissingResourceError(f"no committed adapter {directory} (source.json missing); available: "
                                   f"{', '.join(available) or 'none'}")
    source = json.loads(source_path.read_text())
    # source.json names the record relative to the project root ("results/dalora/<tag>.json")
    record = results_dir / Path(source["record"]).relative_to("results") if "record" in source else None
    return ModelChoice(name, directory, source["method"], int(source["seed"]), record)


def published_seeds(name: str, results_dir: str | Path) -> list[str]:
    """Every published seed of adapter ``name``'s row, by seed: ``<grid>/<method>_seed<k>`` for each ``k`` published
    beside ``name`` (``name`` itself included); ``[name]`` for a name without a seed."""
    folder = Path(name)
    method, marker, _ = folder.name.rpartition("_seed")
    if not marker:
        return [name]
    root = Path(results_dir) / "adapters" / folder.parent
    seeds = sorted(int(path.parent.name.rpartition("_seed")[2]) for path in root.glob(f"{method}_seed*/source.json")
                   if path.parent.name.rpartition("_seed")[2].isdigit())
    return [(folder.parent / f"{method}_seed{seed}").as_posix() for seed in seeds] or [name]


def adapter_centre(choice: ModelChoice) -> torch.Tensor | None:
    """The embedding centre a committed adapter's run subtracted (its ``embedding_centre.safetensors``), or None."""
    if choice.adapter_dir is None or not (choice.adapter_dir / CENTRE_NAME).is_file():
        return None
    from safetensors.torch import load_file

    return load_file(str(choice.adapter_dir / CENTRE_NAME))["centre"]


class PackEmbedder:
    """Flip-test embeddings of labelled packs' distinct chips per model, computed once and cached.

    ``backbone``/``weights`` name the pretrained network every model starts from (the committed adapters were
    trained on ``dlib-resnet29`` with the shared weights). ``device`` and ``batch_size`` go to
    :func:`afr.eval.extract.extract_embeddings`.
    """

    def __init__(self, packs: Mapping[str, LabelledPack], results_dir: str | Path, backbone: str = "dlib-resnet29",
                 weights: str | Path | None = None, device: str = "cpu", batch_size: int = 64,
                 progress: bool = False, zero_shot_centre: torch.Tensor | None = None) -> None:
        self.packs = dict(packs)
        #: the embedding centre the zero-shot backbone subtracts (None: the backbone as pretrained)
        self.zero_shot_centre = zero_shot_centre
        self.results_dir = Path(results_dir)
        self.backbone_name = backbone
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self._base: nn.Module | None = None
        self._models: dict[tuple[str, str], nn.Module] = {}
        self._chips: dict[tuple[str, str], np.ndarray] = {}

    def choice(self, name: str) -> ModelChoice:
        return resolve_model(name, self.results_dir)

    def _pretrained(self) -> nn.Module:
        if self._base is None:
            self._base = create_backbone(self.backbone_name, self.weights).eval()
        return self._base

    def model(self, name: str, domain: str) -> nn.Module:
        """The network that embeds ``domain``'s pack for model ``name`` (eval mode, cached)."""
        choice = self.choice(name)
        per_domain = choice.method == "dalora-oracle"
        key = (name, domain if per_domain else "*")
        if key not in self._models:
            model = copy.deepcopy(self._pretrained())
            if choice.adapter_dir is None and self.zero_shot_centre is not None:
                model = centre_embeddings(model, self.zero_shot_centre)
            if choice.adapter_dir is not None:
                model = load_adapter(model, choice.adapter_dir)  # any registered type, by its saved type
                if not adapter_type_of(model).per_domain:
                    model = merge_adapter(model)
                elif per_domain:
                    model = merge_adapter(model, ORACLE_EXPERT_OF.get(domain, domain))
            self._models[key] = fast_layout(model.eval())  # channels-last: the same function, a fifth faster
        return self._models[key]

    def chip_embeddings(self, name: str, domain: str) -> np.ndarray:
        """``(n_chips, D)`` unit embeddings of ``domain``'s distinct chips (order of ``packs[domain].chip_rows``)."""
        key = (name, domain)
        if key not in self._chips:
            self._chips[key] = extract_embeddings(self.model(name, domain), self.packs[domain].chips,
                                                  batch_size=self.batch_size, device=self.device,
                                                  progress=self.progress)
        return self._chips[key]

    def image_embeddings(self, name: str, domain: str) -> np.ndarray:
        """``(2N, D)`` embeddings of the pack's images in pair order (pair ``p`` = rows ``2p``, ``2p + 1``)."""
        return self.chip_embeddings(name, domain)[self.packs[domain].chip_of_image]

    def distances(self, name: str, domain: str) -> np.ndarray:
        """Squared L2 distance of every pair's unit embeddings (the protocol's score)."""
        return pair_distances(self.image_embeddings(name, domain))
