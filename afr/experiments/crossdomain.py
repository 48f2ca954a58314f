"""The cross-domain experiment (notebook 05): visible -> thermal with a few labelled thermal images, and forgetting.

**Stage 1, a visible start** (per seed). The pretrained backbone gets LoRA of rank r, and its LoRA tensors are
trained on episodes of the *visible* training collections only (ORL, Yale, low quality) with
:func:`afr.meta.meta_train`; no thermal image (Notre Dame or PUJ-T360) is seen in stage 1. Two starts, the same
episodes, outer optimiser and number of outer steps:

* ``pooled``: no inner loop (``inner_steps = 0``): multi-task training on the pooled visible collections;
* ``maml``: first-order MAML with ``inner_steps`` SGD steps per episode (first order to keep the CPU cost down:
  no double backward; notebook 04 compares it with second order).

LoRA adapts the layers DA-LoRA can adapt (the backbone's LoRA targets minus DA-LoRA's router input, the dlib
stem), so that a DA-LoRA expert warm-started from the start computes exactly what the start computes.

**Stage 2, adaptation to thermal.** ``k`` labelled images per thermal *training* identity (both thermal
collections together; :func:`~afr.meta.episodes.few_shot_support` per collection, identities with fewer than
``k`` images left out), ``adapt_steps`` plain SGD steps at ``adapt_lr`` on the whole support, the loss of
notebook 04: CosFace (s 64, m 0.35) against the prototypes of the support's identities. Methods:

* ``zero-shot``: the pretrained backbone, no adapter (no seed, no adaptation: scored once);
* ``lora``: the pooled start's LoRA tensors fine-tuned on the support; nothing protects the visible domain;
* ``dalora``: DA-LoRA with two experts, ``visible`` and ``thermal`` (oracle gating), both warm-started from the
  pooled start's LoRA. Only the thermal expert is trained: the adaptation differentiates only its blocks of the
  stacked A/B matrices, every batch is routed to it (:func:`~afr.adapters.dalora.set_domains`), and the visible
  expert keeps the start's tensors bit for bit. Thermal packs are scored with the thermal expert merged into the
  backbone, visible packs with the visible expert merged, which is the start's own weights, so **the visible
  scores of the DA-LoRA rows are the start's by construction** (forgetting exactly 0). They are therefore not
  computed again: after checking that the visible expert is bit-identical to the start's, the start's visible
  scores are the row's (:func:`score_dalora`). The thermal scores repeat ``lora``'s up to rounding (the same
  start, the same SGD): what the row shows is the forgetting DA-LoRA avoids;
* ``dalora+maml``: the same from the MAML start;
* ``dalora+maml+contrastive``: the adaptation loss adds ``contrastive_weight`` x supervised InfoNCE
  (:func:`afr.losses.contrastive.supervised_info_nce`, ``temperature``) over the support embeddings. Its
  positives are the other support images of the same identity, all thermal: the support holds no visible image,
  so positives stay within thermal. With ``k = 1`` no identity has a second image, the term has no positive, and
  the row is skipped with a reason;
* ``dalora+maml+contrastive+semi``: also the *unlabelled* thermal training images (those not in the support): at
  each step up to ``unlabelled_batch`` of them, two :class:`~afr.data.augment.FaceAugment` views of each, and
  ``unlabelled_weight`` x InfoNCE in which each view's only positive is the other view of its image (SimCLR's
  NT-Xent). Pseudo-labels would need a clusterer reliable on thermal embeddings, which a backbone that has
  never seen thermal is not (its zero-shot thermal accuracy is well below its visible accuracy); two views of one
  image are the same person without any clusterer. Skipped at ``k = 1`` with its supervised twin.

**The step count of stage 2** is chosen per run and k on the target's *validation* identities wherever the target
has them (``choose_steps_on_validation``, the default on the embedded profile with a stage 2, and the reported grids'
recipe; ``val/thermal.bin``, ``val/lowquality.bin``: neither training nor test identities), or else it is
``adapt_steps``, fixed in advance (the first grids: 10): :class:`ValidationChoice` scores the adapter after 0, 1,
3, 5, 10, 25, ... steps up to ``adapt_steps``, keeps the tensors of the best step count (0: the start itself), and the
test packs are scored once, with them; the record keeps the validation curve and the chosen step count.

**Scores** after adaptation, on the test identities: ``thermal_und`` and ``thermal_puj`` (one collection each),
the mixed ``thermal`` pack, and the visible ``controlled``, ``wild``, ``lowquality`` packs. Forgetting is the
visible accuracy after adaptation minus the start's (and minus zero-shot's). The starts are scored as their LoRA
update folded into the backbone, through the warm-started DA-LoRA's visible expert: the very weights the DA-LoRA
rows use on visible packs. Scoring embeds the distinct chips of several packs once, and conv weights are kept
channels-last (:func:`fast_layout`): both only save CPU time.

**Full profile** (``data_profile = "full"``, a GPU box): the same two stages with stage 1 on a seeded CASIA-WebFace
identity subset (``train_rec``, ``num_identities``; collection ``casia``) and stage 2 on a folder of target face crops
(``target_dir``, one sub-folder per identity; collection ``thermal``), whose identities are split once (seed 0) into
training identities and test identities (the ``thermal`` pack); forgetting on the five InsightFace packs
(``bins_dir``), further target packs as ``target_bins``. The k of the paper's few-shot curves are 10, 50 and 100; a
step then takes ``adapt_batch`` identity-balanced images of the support (:func:`support_batch`) rather than all of
it. Data: :func:`afr.data.full_profile.load_full_cross_domain`.

One record per run in ``results/crossdomain/<tag>.json`` (starts and zero-shot included), rows in
``results/tables/crossdomain.csv`` with the column ``shots`` (0 for zero-shot and the starts). The starts are runs
of their own (``runs/<start tag>/``: meta-training checkpoint, TensorBoard, ``adapter/``); a recorded run is
reused unless ``overwrite``, and a start is meta-trained again only when an adaptation needs its adapter and it
is missing.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from afr.adapters.dalora import apply_dalora, merge_dalora, set_domains
from afr.adapters.dalora.experts import expert_blocks, load_parameters, shared_targets, with_expert_blocks
from afr.adapters.lora import load_adapter, merge_lora
from afr.data.augment import FaceAugment
from afr.data.collections import collection_pack
from afr.data.embedded import load_embedded
from afr.data.verification import VerificationPack, load_pack
from afr.eval.extract import extract_unique_embeddings
from afr.eval.curves import StartScore
from afr.eval.verification import evaluate
from afr.experiments.records import (  # noqa: F401 (MissingStartError: importable here)
    GridRuns, MissingStartError, append_rows_unlocked, check_outputs_writable, check_start_adapters,
    check_unfinished_runs, environment_info, grid_metric_values, json_default, label_runs_unlocked, metric_rows,
    missing_start_error, read_table, reuse_note, reuse_record, table_lock, write_record)
# the settings, methods, starts, directions and the tables the paper reads (forgetting, validation curves, chosen
# step counts) live in the torch-free settings module;
# importable here too
from afr.experiments.settings.crossdomain import (  # noqa: F401
    ALL_SHOTS, DATA_PROFILES, DIRECTIONS, EXPERTS, EXTRA_TERMS, FULL_PROFILE_FIELDS, MAML_START_FIELDS, METHODS,
    START_FIELDS, START_OF, STARTS, THERMAL_COLLECTIONS, THERMAL_PACKS, VISIBLE_COLLECTIONS, VISIBLE_PACKS,
    ZERO_SHOT_FIELDS, CrossDomainSettings, Direction, _parse_shots, chosen_steps_table, forgetting_table, shots_label,
    shots_order, validation_table)
from afr.experiments.settings.base import job_settings
from afr.experiments.training_setup import evaluation_device
from afr.io import atomic_write_text
from afr.losses.contrastive import supervised_info_nce
from afr.losses.margin import CosFaceMargin
from afr.meta import adaptation_step, adapter_parameters
from afr.meta.data import MamlData, load_training_chips
from afr.meta.episodes import EpisodeSampler, few_shot_support
from afr.meta.start import meta_learned_start
from afr.models import create_backbone
from afr.models.layout import fast_layout
from afr.paths import results_root
from afr.stats import paired_tests as paired
from afr.train import distributed, seed_everything

__all__ = ["ALL_SHOTS", "DIRECTIONS", "Direction", "EXPERTS", "METHODS", "STARTS", "CrossDomainData",
           "CrossDomainSettings", "ThermalSplit", "ValidationChoice", "adapt", "chosen_steps_table",
           "compare_with_committed", "dalora_from_start", "data_summary", "figure_name", "forgetting_table",
           "grid_table", "load_data", "load_full_data", "paired_tests", "plot_results", "run_experiment", "run_grid",
           "run_method", "run_start", "run_zero_shot", "score_dalora", "score_packs", "shots_label", "skipped_rows",
           "stage1_sampler", "summary_table", "support_batch", "thermal_split", "validation_table",
           "view_contrastive_loss"]

#: how the tensors an adaptation trains become backbone parameters (by name)
ToParameters = Callable[[dict[str, Tensor]], dict[str, Tensor]]


# ------------------------------------------------------------------------------------------ data
@dataclass
class CrossDomainData:
    """The training chips in memory (labels, collections) with the identity name of each, and the test packs."""

    train: MamlData
    identities: np.ndarray
    test_packs: dict[str, VerificationPack]
    #: the target's validation pack (its identities are neither training nor test identities); loaded only when
    #: stage 2's step count is chosen on it (``choose_steps_on_validation``)
    validation_pack: VerificationPack | None = None

    def packs(self, names: Sequence[str]) -> dict[str, VerificationPack]:
        return {name: self.test_packs[name] for name in names}


def load_data(settings: CrossDomainSettings) -> CrossDomainData:
    """Training chips (as notebook 04 holds them), training identity names and the six test packs; for the full
    profile, :func:`load_full_data`."""
    if settings.data_profile == "full":
        return load_full_data(settings)
    train = load_training_chips(settings.embedded_root, "thermal_und")
    benchmark = load_embedded(settings.embedded_root)
    identities = np.empty(len(train.labels), dtype=object)
    for row in benchmark.manifest():
        if row["record"] != "":
            identities[int(row["record"])] = row["identity"]
    packs = {"thermal_und": train.target_pack, "thermal_puj": collection_pack(benchmark, "thermal_puj", "test"),
             **{name: load_pack(benchmark.bin_path(name)) for name in ("thermal", *VISIBLE_PACKS)}}
    validation = (load_pack(benchmark.bin_path(settings.shift.validation_pack, "val"))
                  if settings.choose_steps_on_validation else None)
    return CrossDomainData(train, identities, packs, validation)


def load_full_data(settings: CrossDomainSettings) -> CrossDomainData:
    """The full profile (:func:`afr.data.full_profile.load_full_cross_domain`): collection ``casia`` (the seeded
    CASIA-WebFace identity subset), collection ``thermal`` (the target folder's training identities), decoded when
    used; test packs ``thermal`` (the folder's test identities), the ``target_bins`` and the visible benchmarks."""
    from afr.data.full_profile import load_full_cross_domain

    full = load_full_cross_domain(settings.train_rec, settings.num_identities, settings.target_dir,
                                  settings.target_test_identities, settings.bins_dir, settings.shift.source_packs,
                                  settings.target_bins, target=settings.shift.target[0],
                                  source=settings.shift.source[0])
    train = MamlData(full.chips, full.labels, full.collections, full.target_pack, full.image_size)
    packs = {full.target_pack.name: full.target_pack, **full.extra_target_packs, **full.source_packs}
    return CrossDomainData(train, full.identities, packs)


@dataclass(frozen=True)
class ThermalSplit:
    """The target training images of one (k, seed): the labelled support and the unlabelled remainder."""

    shots: int
    support: dict[int, list[int]]
    unlabelled: tuple[int, ...]

    @property
    def indices(self) -> list[int]:
        return [index for identity in sorted(self.support) for index in self.support[identity]]

    @property
    def labels(self) -> Tensor:
        """The way (``0 .. n-1``) of every support index, in :attr:`indices` order."""
        return torch.as_tensor([way for way, identity in enumerate(sorted(self.support))
                                for _ in self.support[identity]])


def _every_image(labels: np.ndarray, collections: np.ndarray, collection: str) -> dict[int, list[int]]:
    """Every training index of each identity of ``collection`` (k = all)."""
    chosen = np.flatnonzero(collections == collection)
    return {int(label): chosen[labels[chosen] == label].tolist() for label in np.unique(labels[chosen])}


def thermal_split(data: CrossDomainData, shots: int, seed: int,
                  collections: Sequence[str] = THERMAL_COLLECTIONS) -> ThermalSplit:
    """``shots`` images per identity of each target collection (:func:`few_shot_support`; :data:`ALL_SHOTS`:
    every image of every identity) and every other target training image, unlabelled. Only the training pack is
    read: no test identity can enter either."""
    support: dict[int, list[int]] = {}
    for collection in collections:
        part = (_every_image(data.train.labels, data.train.collections, collection) if shots == ALL_SHOTS else
                few_shot_support(data.train.labels, data.train.collections, collection, shots, seed=seed))
        if set(part) & set(support):
            raise ValueError(f"identity labels {sorted(set(part) & set(support))} occur in two target collections")
        support.update(part)
    labelled = {index for indices in support.values() for index in indices}
    target = np.flatnonzero(np.isin(data.train.collections, collections))
    return ThermalSplit(shots, support, tuple(int(index) for index in target if index not in labelled))


def data_summary(data: CrossDomainData, settings: CrossDomainSettings) -> str:
    """Stage-1 collections, the thermal support and unlabelled sets per k, the test packs and the validation pack
    (deterministic)."""
    shift = settings.shift
    lines = [f"direction {settings.direction}: stage 1 on {'+'.join(shift.source)}, stage 2 on "
             f"{'+'.join(shift.target) or 'nothing (no target training identities)'}"]
    for collection in (*shift.source, *shift.target):
        chosen = data.train.collections == collection
        role = "source: stage 1" if collection in shift.source else "target: stage 2"
        lines.append(f"{collection:<12} {role:<17} {len(set(data.train.labels[chosen].tolist())):>3} training "
                     f"identities {int(chosen.sum()):>4} images")
    if not shift.target:
        lines.append(f"adapted methods: {settings.not_applicable('lora', 0)}")
    for shots in settings.shots if shift.target else ():
        split = thermal_split(data, shots, settings.seed, shift.target)
        lines.append(f"k = {shots_label(shots)}: {len(split.support)} target identities, {len(split.indices)} "
                     f"labelled images, {len(split.unlabelled)} unlabelled target training images")
        for method in settings.methods:
            reason = settings.not_applicable(method, shots) if method != "zero-shot" else None
            if reason:
                lines.append(f"  skipped: {reason}")
    for name, pack in data.test_packs.items():
        lines.append(f"test {name:<11} {len(pack.issame):>4} pairs ({int(np.sum(pack.issame))} same identity)")
    if data.validation_pack is not None:  # stage 2's step count is chosen on it
        pack = data.validation_pack
        lines.append(f"validation ({pack.path.parent.name}/{pack.path.name}, chooses stage 2's step count among "
                     f"{', '.join(map(str, settings.validation_step_counts))}) {len(pack.issame):>4} pairs "
                     f"({int(np.sum(pack.issame))} same identity)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ models
def dalora_from_start(settings: CrossDomainSettings, adapter: Path) -> nn.Module:
    """A fresh backbone with the two DA-LoRA experts, both warm-started from the LoRA adapter of a start."""
    return fast_layout(apply_dalora(create_backbone(settings.backbone, settings.weights), settings.dalora_settings(),
                                    warm_start=adapter).to(evaluation_device(settings)))


# ------------------------------------------------------------------------------------------ adaptation
#: images of one identity in an identity-balanced adaptation batch (``adapt_batch``)
IMAGES_PER_IDENTITY = 4


def support_batch(split: ThermalSplit, size: int | None, seed: int, step: int) -> tuple[np.ndarray, Tensor]:
    """The support images of adaptation step ``step``: positions in ``split.indices`` and their ways (``0 .. n-1``
    in batch order). The whole support when ``size`` is None or covers it; otherwise identities in a random order,
    up to :data:`IMAGES_PER_IDENTITY` random images of each (all when it has fewer), until ``size`` images, so
    every prototype of the step averages several images. Draws depend on (seed, k, step) only."""
    if size is None or size >= len(split.indices):
        return np.arange(len(split.indices)), split.labels
    rng = np.random.default_rng((seed, max(split.shots, 0), step, 7))
    ways = split.labels.numpy()
    positions: list[int] = []
    batch_ways: list[int] = []
    for batch_way, way in enumerate(rng.permutation(len(split.support))):
        members = np.flatnonzero(ways == way)
        take = min(IMAGES_PER_IDENTITY, len(members), size - len(positions))
        if take < 1:
            break
        positions += sorted(rng.choice(members, size=take, replace=False).tolist())
        batch_ways += [batch_way] * take
    return np.asarray(positions), torch.as_tensor(batch_ways)


def view_contrastive_loss(first: Tensor, second: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent over two views ``(n, D)`` of ``n`` unlabelled images: view ``i``'s one positive is the other
    view of image ``i``, the other ``2n - 2`` views are its negatives (supervised InfoNCE, the image as label)."""
    images = torch.arange(first.shape[0], device=first.device)
    return supervised_info_nce(torch.cat([first, second]), torch.cat([images, images]), temperature=temperature)


def adapt(backbone: nn.Module, params: dict[str, Tensor], to_parameters: ToParameters, data: CrossDomainData,
          split: ThermalSplit, settings: CrossDomainSettings,
          at_step: Callable[[int, dict[str, Tensor]], None] | None = None) -> tuple[dict[str, Tensor], list[float]]:
    """``settings.adapt_steps`` first-order SGD steps on the thermal support from ``params``; the adapted tensors
    and the loss of every step. ``at_step(steps, tensors)`` is called with the tensors after each step count of
    ``settings.validation_step_counts`` (0: the start's).

    ``to_parameters`` maps the trained tensors to backbone parameters by name (the identity for LoRA; for a
    DA-LoRA expert, its blocks into the stacked matrices); the backbone is called functionally and not changed.
    Without extra terms a step is :func:`afr.meta.inner_adapt`'s (CosFace on the support's prototypes); the
    method's :data:`EXTRA_TERMS` add the supervised InfoNCE over the support and the two-view InfoNCE over up to
    ``unlabelled_batch`` unlabelled images. With ``adapt_batch`` smaller than the support, each step uses an
    identity-balanced part of it (:func:`support_batch`) decoded for that step. Draws (batches, unlabelled
    batches, augmentations) depend on the seed only.
    """
    supervised, unlabelled = EXTRA_TERMS.get(settings.method, (False, False))
    device = next(backbone.parameters()).device
    margin = CosFaceMargin()
    whole = settings.adapt_batch is None or settings.adapt_batch >= len(split.indices)
    if whole:  # decoded once
        images, labels = data.train.images(split.indices).to(device), split.labels.to(device)
    pool = np.asarray(split.unlabelled)
    augment = FaceAugment().train()
    seed_everything(settings.seed)
    losses = []
    checkpoints = set(settings.validation_step_counts) if at_step is not None else set()
    if 0 in checkpoints:
        at_step(0, params)
    for step in tqdm(range(settings.adapt_steps), desc=f"{settings.method} k={shots_label(split.shots)}",
                     disable=not settings.progress, leave=False):
        if not whole:
            positions, labels = support_batch(split, settings.adapt_batch, settings.seed, step)
            images = data.train.images([split.indices[position] for position in positions]).to(device)
            labels = labels.to(device)

        def extra_terms(parameters: dict[str, Tensor], embeddings: Tensor, step: int = step) -> Tensor:
            loss = embeddings.new_zeros(())
            if supervised:
                loss = loss + settings.contrastive_weight * supervised_info_nce(embeddings, labels,
                                                                                temperature=settings.temperature)
            if unlabelled:
                rng = np.random.default_rng((settings.seed, split.shots, step))
                chosen = rng.choice(pool, size=min(settings.unlabelled_batch, len(pool)), replace=False)
                batch = data.train.images(chosen.tolist())
                views = functional_call(backbone, parameters, (torch.cat([augment(batch), augment(batch)]).to(device),),
                                        strict=False)
                loss = loss + settings.unlabelled_weight * view_contrastive_loss(*views.chunk(2), settings.temperature)
            return loss

        params, loss = adaptation_step(backbone, params, images, labels, int(labels.max()) + 1, margin,
                                       settings.adapt_lr, to_parameters=to_parameters,
                                       extra_loss=extra_terms if supervised or unlabelled else None)
        params = {name: tensor.detach() for name, tensor in params.items()}
        losses.append(float(loss.detach()))
        if step + 1 in checkpoints:
            at_step(step + 1, params)
    return params, losses


# ------------------------------------------------------------------------------------------ scoring
def score_packs(backbone: nn.Module, packs: Mapping[str, VerificationPack], device: torch.device | str = "cpu",
                ) -> dict[str, dict[str, Any]]:
    """:func:`~afr.eval.packs.evaluate_on_packs`' protocol (flip test, 10 folds) with the distinct chips
    of all ``packs`` embedded once: the mixed thermal pack repeats the chips of the two thermal collections. The
    backbone's conv weights are put in the channels-last layout (:func:`fast_layout`)."""
    images = [image for pack in packs.values() for image in pack.images]
    embeddings = extract_unique_embeddings(fast_layout(backbone), images, device=device)
    results, offset = {}, 0
    for name, pack in packs.items():
        part = embeddings[offset:offset + len(pack.images)]
        offset += len(pack.images)
        results[name] = {**evaluate(part, pack.issame).to_dict(), "sha256": pack.sha256}
    return results


def score_dalora(backbone: nn.Module, start_visible: Mapping[str, Tensor], start_scores: Mapping[str, Any],
                 data: CrossDomainData, device: torch.device, shift: Direction = DIRECTIONS["visible->thermal"],
                 ) -> dict[str, dict[str, Any]]:
    """Target packs with the target expert merged into the backbone (which the merge consumes); the other packs
    with the source expert merged, which is the start itself: the source expert must still hold
    ``start_visible`` (:func:`expert_blocks` before the adaptation) bit for bit (RuntimeError otherwise), so
    merging it gives exactly the weights the start was scored with (:func:`run_start`) and the start's
    ``start_scores`` are its scores, reused rather than computed again."""
    source, target = shift.experts
    visible = expert_blocks(backbone, source)
    changed = [name for name in visible if not torch.equal(visible[name], start_visible[name])]
    if changed:
        raise RuntimeError(f"the {source} expert changed during the {target} adaptation ({changed[:2]}): its "
                           "scores would not be the start's")
    adapted = score_packs(merge_dalora(backbone, target), data.packs(shift.target_packs), device)
    return {name: adapted[name] if name in adapted else dict(start_scores[name]) for name in data.test_packs}


class ValidationChoice:
    """Stage 2's step count chosen on the target's validation identities: :meth:`score` (``adapt``'s ``at_step``)
    scores the adapted tensors of each step count on ``data.validation_pack``, on a copy of the model with the
    tensors merged as the test packs will see them, and keeps aside the tensors of the step count with the highest
    validation AUC (of equals, the fewest steps: the first seen). ``start``, shared by the choices of one run (every k
    adapts the same start), scores the start's (0 steps) validation metrics once."""

    def __init__(self, backbone: nn.Module, to_parameters: ToParameters, settings: CrossDomainSettings,
                 data: CrossDomainData, start: StartScore | None = None) -> None:
        if data.validation_pack is None:
            raise ValueError("ValidationChoice: the data hold no validation pack (load_data with "
                             "choose_steps_on_validation)")
        self.backbone, self.to_parameters, self.settings, self.data = backbone, to_parameters, settings, data
        self.start = StartScore() if start is None else start
        self.curve: dict[str, dict[str, Any]] = {}
        self.chosen_steps: int | None = None
        self.best_tensors: dict[str, Tensor] = {}

    def _merged(self, tensors: Mapping[str, Tensor]) -> nn.Module:
        model = copy.deepcopy(self.backbone)
        load_parameters(model, self.to_parameters(dict(tensors)))
        if self.settings.method == "lora":
            return merge_lora(model)
        return merge_dalora(model, self.settings.shift.experts[1])

    def _validation_metrics(self, tensors: Mapping[str, Tensor]) -> dict[str, Any]:
        pack = self.data.validation_pack
        return score_packs(self._merged(tensors), {pack.name: pack}, next(self.backbone.parameters()).device)[pack.name]

    def score(self, steps: int, tensors: Mapping[str, Tensor]) -> None:
        metrics = self.start.at(steps, lambda: self._validation_metrics(tensors))
        self.curve[str(steps)] = metrics
        if self.chosen_steps is None or metrics["auc"] > self.curve[str(self.chosen_steps)]["auc"]:
            self.chosen_steps = steps
            self.best_tensors = {name: tensor.detach().clone() for name, tensor in tensors.items()}

    def to_dict(self) -> dict[str, Any]:
        """The record's fields: the validation pack, its curve ``{steps: metrics}`` and the chosen step count."""
        return {"validation_pack": f"val/{self.data.validation_pack.name}", "validation": self.curve,
                "chosen_steps": self.chosen_steps}


# ------------------------------------------------------------------------------------------ runs
def _record_path(tag: str) -> Path:
    return results_root() / CrossDomainSettings.experiment / f"{tag}.json"


def _write_record(record: Mapping[str, Any], rows: list[dict[str, Any]], overwrite: bool = False,
                  grid: str | None = None) -> None:
    write_record(_record_path(record["tag"]), record, CrossDomainSettings.experiment, rows, overwrite=overwrite,
                 grid=grid)


def _tests_by_shots(record: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """``{k: {pack: metrics}}`` of a record: k = 0 for zero-shot and the starts (``test`` is ``{pack: metrics}``),
    each ``test["k<k>"]`` of an adapted method."""
    if record["shots"] == 0:
        return {0: record["test"]}
    return {_parse_shots(key[1:]): metrics for key, metrics in record["test"].items()}


def _rows(record: Mapping[str, Any], settings: CrossDomainSettings, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Tidy rows of a record, with its ``shots`` (:data:`ALL_SHOTS` for k = all) and the collections it was trained
    on for each of ``seeds``: ``source`` (stage 1; empty for zero-shot) and ``target`` (stage 2; empty for the
    starts and zero-shot)."""
    trained = record["method"] != "zero-shot"
    columns = {"split": "test", **settings.table_columns(),
               "source": "+".join(settings.shift.source) if trained else "",
               "target": "+".join(settings.shift.target) if record["method"] in START_OF else ""}
    return [row for seed in seeds for shots, metrics in _tests_by_shots(record).items()
            for row in metric_rows(settings.experiment, record["tag"], record["method"], seed, metrics,
                                   {**columns, "shots": shots})]


def run_zero_shot(settings: CrossDomainSettings, data: CrossDomainData) -> dict[str, Any]:
    """The pretrained backbone on every test pack, scored once (it has no seed); its rows are written for every
    seed of the grid (and every seed they were written for before), so each method has a value per seed. Under
    torchrun rank 0 alone scores and writes; the other ranks get its record."""
    return distributed.on_main(lambda: _zero_shot(settings, data))


def _zero_shot(settings: CrossDomainSettings, data: CrossDomainData) -> dict[str, Any]:
    settings = settings.for_run("zero-shot", 0)
    path = _record_path(settings.tag)
    fresh = settings.overwrite or not path.is_file()
    if fresh:
        started = time.time()
        device = evaluation_device(settings)
        test = score_packs(create_backbone(settings.backbone, settings.weights), data.test_packs, device)
        record = {"experiment": settings.experiment, "tag": settings.tag, "method": "zero-shot", "seed": 0,
                  "shots": 0, "settings": {name: getattr(settings, name) for name in ZERO_SHOT_FIELDS}, "test": test,
                  "environment": environment_info(device), "wall_seconds": round(time.time() - started, 1)}
        _write_record(record, _rows(record, settings, sorted(_seeds_written(settings.tag) | set(settings.seeds))),
                      overwrite=settings.overwrite, grid=settings.grid)
        return record
    record = json.loads(path.read_text())
    with table_lock(settings.experiment):  # a record without the rows of this grid's seeds gets them
        written = _seeds_written(record["tag"])
        if not set(settings.seeds) <= written:
            append_rows_unlocked(settings.experiment, _rows(record, settings, sorted(written | set(settings.seeds))),
                                 grid=settings.grid)
        elif settings.grid:
            label_runs_unlocked(settings.experiment, {record["tag"]: settings.grid})
    return record


def _seeds_written(run: str) -> set[int]:
    table = read_table(CrossDomainSettings.experiment)
    return set(table.loc[table["run"] == run, "seed"].astype(int)) if len(table) else set()


def stage1_sampler(settings: CrossDomainSettings, data: CrossDomainData) -> EpisodeSampler:
    """The stage-1 episodes of ``settings.seed``: drawn from the direction's source collections only (never a
    target collection) with the run's seed."""
    return EpisodeSampler(data.train.labels, data.train.collections, settings.n_way, settings.k_shot,
                          settings.q_query, allowed=settings.shift.source, seed=settings.seed)


#: what needs a start, and where a rebuilt start's scores go (:func:`~afr.experiments.records.missing_start_error`)
_NEEDED_BY = "the adaptation runs"
_REBUILT = "the rebuilt starts' scores go to rebuilt.json there and into the new runs' records"


def start_adapters_needed(settings: CrossDomainSettings) -> list[tuple[str, Path, Path]]:
    """``(start tag, record path, adapter folder)`` of the start each of the grid's unrecorded adaptation runs needs
    (:func:`~afr.experiments.records.check_start_adapters`)."""
    needed = []
    for seed in settings.seeds:
        for method in settings.adapted_methods():
            run = settings.for_run(method, seed)
            if not any(not run.not_applicable(method, shots) for shots in run.shots):
                continue
            if _record_path(run.tag).is_file() and not run.overwrite:
                continue
            start = START_OF[method]
            tag = run.start_tag(start)
            needed.append((tag, _record_path(tag), run.start_dir(start) / "adapter"))
    return needed


def check_starts(settings: CrossDomainSettings) -> None:
    """Refuse, before any work, a grid that would need a recorded start's missing adapter, unless
    ``rebuild_starts`` (or ``overwrite``, which retrains the starts anyway)."""
    if not (settings.rebuild_starts or settings.overwrite):
        check_start_adapters(start_adapters_needed(settings), _NEEDED_BY, _REBUILT)


def _train_start(settings: CrossDomainSettings, data: CrossDomainData, start: str, overwrite_folder: bool):
    """Meta-train a start into its run folder (:func:`afr.meta.start.meta_learned_start`: LoRA on the layers DA-LoRA
    adapts, channels-last; under torchrun every rank takes its share of each outer step's episodes and rank 0 saves
    the adapter): ``(adapter, MetaTrainResult, config)``. Every rank calls it; :func:`_score_start` scores it."""
    config = settings.meta_config(start)
    meta = meta_learned_start(settings.backbone, settings.weights, settings.rank, data.train,
                              stage1_sampler(settings, data), config, settings.start_dir(start), seed=settings.seed,
                              device=evaluation_device(settings), targets=shared_targets, channels_last=True,
                              resume=settings.resume, progress=settings.progress, overwrite=overwrite_folder,
                              data_parallel=True)
    return meta.adapter, meta.result, config


def _score_start(settings: CrossDomainSettings, data: CrossDomainData, adapter: Path) -> dict[str, Any]:
    """A start's test scores: its LoRA through the warm-started DA-LoRA's source expert, merged."""
    return score_packs(merge_dalora(dalora_from_start(settings, adapter), settings.shift.experts[0]),
                       data.test_packs, evaluation_device(settings))


def run_start(settings: CrossDomainSettings, data: CrossDomainData, start: str, need_adapter: bool = True,
              ) -> dict[str, Any]:
    """Stage 1 for ``settings.seed``: meta-train LoRA on the visible collections, save its adapter under
    ``<start dir>/adapter``, score it on every pack, record. A recorded start is reused unless ``overwrite``.
    When ``need_adapter`` and a recorded start's adapter is gone, it is meta-trained again only with
    ``rebuild_starts`` (:class:`MissingStartError` otherwise): its record stays as it is, the rebuilt start's
    scores go to ``<start dir>/rebuilt.json``, and the returned record carries them (``rebuilt: true``)."""
    tag, run_dir = settings.start_tag(start), settings.start_dir(start)
    path = _record_path(tag)

    def decide() -> tuple[str, dict[str, Any] | None]:  # rank 0: reuse (the record), rebuild (the record) or train
        if not path.is_file() or settings.overwrite:
            return "train", None
        record = reuse_record(path, settings.experiment, lambda found: _rows(found, settings, [found["seed"]]),
                              grid=settings.grid)
        if not need_adapter or (run_dir / "adapter").is_dir():
            rebuilt = run_dir / "rebuilt.json"
            return "reuse", {**record, **json.loads(rebuilt.read_text())} if rebuilt.is_file() else record
        if not settings.rebuild_starts:
            raise missing_start_error([f"{tag} ({run_dir / 'adapter'})"], _NEEDED_BY, _REBUILT)
        return "rebuild", record

    # under torchrun rank 0 decides, scores and writes; every rank meta-trains its share of the episodes
    action, record = distributed.on_main(decide)
    if action == "reuse":
        return record
    started = time.time()
    overwrite_folder = not settings.resume if action == "rebuild" else settings.overwrite
    adapter, result, config = _train_start(settings, data, start, overwrite_folder=overwrite_folder)

    def finish() -> dict[str, Any]:
        test = _score_start(settings, data, adapter)
        if action == "rebuild":
            rebuilt = {"rebuilt": True, "test": test, "rebuilt_steps": result.steps}
            atomic_write_text(run_dir / "rebuilt.json", json.dumps(rebuilt, indent=1, default=json_default) + "\n")
            return {**record, **rebuilt}
        fresh = {"experiment": settings.experiment, "tag": tag, "method": f"{start}-start", "seed": settings.seed,
                 "shots": 0, "source": list(settings.shift.source),
                 "settings": {**{name: getattr(settings, name) for name in settings.start_fields(start)},
                              **job_settings()},  # + world_size under torchrun
                 "meta_training": {"steps": result.steps, "history": result.history, "first_order": True,
                                   "inner_steps": config.inner_steps, "seconds_per_step": result.seconds_per_step},
                 "test": test, "environment": environment_info(evaluation_device(settings)),
                 "wall_seconds": round(time.time() - started, 1)}
        _write_record(fresh, _rows(fresh, settings, [settings.seed]), overwrite=settings.overwrite,
                      grid=settings.grid)
        return fresh

    return distributed.on_main(finish)


def _adapted_model(settings: CrossDomainSettings, adapter: Path) -> tuple[nn.Module, dict[str, Tensor], ToParameters]:
    """The start ready for adaptation: the model, the tensors to train, and how they become its parameters."""
    if settings.method == "lora":
        backbone = fast_layout(load_adapter(create_backbone(settings.backbone, settings.weights), adapter))
        backbone.to(evaluation_device(settings))
        params = {name: p.detach().clone() for name, p in adapter_parameters(backbone).items()}
        return backbone, params, lambda tensors: tensors
    backbone = dalora_from_start(settings, adapter)
    target = settings.shift.experts[1]
    set_domains(backbone, [target])  # every adaptation batch goes to the target expert
    return backbone, expert_blocks(backbone, target), lambda blocks: with_expert_blocks(backbone, blocks, target)


def run_method(settings: CrossDomainSettings, data: CrossDomainData) -> dict[str, Any]:
    """Adapt the method's start to thermal for every k and score it (zero-shot: :func:`run_zero_shot`); a k the
    method does not apply to is recorded under ``skipped`` with the reason. Reused when recorded, unless
    overwrite. The start is meta-trained first if it is not recorded; a recorded start whose adapter is missing is
    rebuilt only with ``rebuild_starts`` (:func:`run_start`). Under torchrun the ranks meta-train the start
    together; rank 0 alone decides, adapts (small: one process), scores and writes, the others get its record."""
    if settings.method == "zero-shot":
        return run_zero_shot(settings, data)
    path = _record_path(settings.tag)
    if distributed.on_main(lambda: path.is_file() and not settings.overwrite):
        return distributed.on_main(lambda: reuse_record(
            path, settings.experiment, lambda record: _rows(record, settings, [record["seed"]]), grid=settings.grid))
    started = time.time()
    start = START_OF[settings.method]
    skipped = {shots_label(shots): settings.not_applicable(settings.method, shots) for shots in settings.shots}
    skipped = {shots: reason for shots, reason in skipped.items() if reason}
    applicable = [shots for shots in settings.shots if shots_label(shots) not in skipped]
    start_record = {}
    if applicable:
        start_record = run_start(dataclasses.replace(settings, overwrite=False), data, start, need_adapter=True)
    return distributed.on_main(lambda: _adapt_and_record(settings, data, start, applicable, skipped, start_record,
                                                         started))


def _adapt_and_record(settings: CrossDomainSettings, data: CrossDomainData, start: str, applicable: list[int],
                      skipped: dict[str, str], start_record: Mapping[str, Any], started: float) -> dict[str, Any]:
    """:func:`run_method`'s stage 2 (rank 0): adapt the start for every applicable k, score, record."""
    start_scores = start_record.get("test")
    adapter = settings.start_dir(start) / "adapter"
    device = evaluation_device(settings)
    test, adaptation, start_validation = {}, {}, StartScore()
    for shots in applicable:
        split = thermal_split(data, shots, settings.seed, settings.shift.target)
        backbone, params, to_parameters = _adapted_model(settings, adapter)
        start_visible = None if settings.method == "lora" else expert_blocks(backbone, settings.shift.experts[0])
        choice = ValidationChoice(backbone, to_parameters, settings, data, start_validation) \
            if settings.choose_steps_on_validation else None
        params, losses = adapt(backbone, params, to_parameters, data, split, settings,
                               at_step=choice.score if choice else None)
        load_parameters(backbone, to_parameters(choice.best_tensors if choice else params))
        key = f"k{shots_label(shots)}"
        test[key] = (score_packs(merge_lora(backbone), data.test_packs, device) if start_visible is None
                     else score_dalora(backbone, start_visible, start_scores, data, device, settings.shift))
        adaptation[key] = {"identities": len(split.support), "labelled_images": len(split.indices),
                           **({"adapt_batch": settings.adapt_batch} if settings.adapt_batch else {}),
                           "unlabelled_images": len(split.unlabelled), "losses": losses,
                           **(choice.to_dict() if choice else {})}
    record = {"experiment": settings.experiment, "tag": settings.tag, "method": settings.method,
              "seed": settings.seed, "shots": list(settings.shots), "direction": settings.direction,
              "start": settings.start_tag(start), **({"start_rebuilt": True} if start_record.get("rebuilt") else {}),
              "settings": settings.recorded_settings(), "adaptation": adaptation, "test": test, "skipped": skipped,
              "environment": environment_info(device), "wall_seconds": round(time.time() - started, 1)}
    _write_record(record, _rows(record, settings, [settings.seed]), overwrite=settings.overwrite, grid=settings.grid)
    return record


def run_grid(settings: CrossDomainSettings, data: CrossDomainData, report: Callable[[str], None] | None = print,
             ) -> dict[tuple[str, int], dict[str, Any]]:
    """Every (method, seed) record, plus ``(<start>-start, seed)`` for the starts the methods use (both starts when
    the direction has no target training images) and ``(zero-shot, seed)`` (the same record for every seed) for
    forgetting against zero-shot. Before any work: the results, tables and runs folders must accept files
    (:func:`~afr.experiments.records.check_outputs_writable`), recorded starts must have their adapters
    (:func:`check_starts`) and interrupted starts are refused
    (:func:`~afr.experiments.records.check_unfinished_runs`). Adapted runs recorded already are reused, and one line
    through ``report`` says so and names ``overwrite``."""
    settings.check_world_size()  # a torchrun job of several processes: tasks_per_step splits over them
    check_outputs_writable(settings.experiment, settings.runs_folder)
    adapted = [(method, seed) for seed in settings.seeds for method in settings.adapted_methods()]

    def recorded_runs() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        reused = [] if settings.overwrite else [
            (method, seed) for method, seed in adapted if _record_path(settings.for_run(method, seed).tag).is_file()]
        recorded = [] if settings.overwrite else [  # zero-shot and starts recorded before: reused, not trained now
            *[("zero-shot", seed) for seed in settings.seeds
              if _record_path(settings.for_run("zero-shot", 0).tag).is_file()],
            *[(f"{start}-start", seed) for seed in settings.seeds for start in settings.grid_starts()
              if _record_path(settings.for_run("lora", seed).start_tag(start)).is_file()]]
        return reused, recorded

    # under torchrun rank 0 checks, decides and reports (distributed.on_main); the ranks meta-train the starts together
    reused, recorded = distributed.on_main(recorded_runs)
    distributed.on_main(lambda: check_starts(settings))
    starts = {(start, seed) for seed in settings.seeds for start in settings.grid_starts()}
    starts |= {(START_OF[method], seed) for seed in settings.seeds for method in settings.adapted_methods()}
    distributed.on_main(lambda: check_unfinished_runs(
        [(_record_path(settings.for_run("lora", seed).start_tag(start)), settings.for_run("lora", seed).start_dir(start))
         for start, seed in sorted(starts)], settings.resume, settings.overwrite))
    zero = run_zero_shot(settings, data)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in settings.seeds:
        records[("zero-shot", seed)] = zero
        for start in settings.grid_starts():
            records[(f"{start}-start", seed)] = run_start(dataclasses.replace(settings, seed=seed), data, start,
                                                          need_adapter=False)
        for method in settings.adapted_methods():
            records[(method, seed)] = run_method(settings.for_run(method, seed), data)
    if reused and report is not None and distributed.job_rank() == 0:
        report(reuse_note([_record_path(settings.for_run(method, seed).tag) for method, seed in reused],
                          [seed for _, seed in reused]))
    return GridRuns(records, reused + recorded)


def skipped_rows(records: Mapping[tuple[str, int], Mapping[str, Any]]) -> list[str]:
    """The distinct reasons of every skipped (method, k)."""
    return list(dict.fromkeys(reason for record in records.values() for reason in record.get("skipped", {}).values()))


# ------------------------------------------------------------------------------------------ tables
def grid_table(records: Mapping[tuple[str, int], Mapping[str, Any]]):
    """Long table (method, seed, shots, domain, metric, value) of the grid; shots 0: zero-shot and the starts. Flagged
    runs (:mod:`afr.experiments.health`: not fitted, collapsed, diverged, or adapted from such a start) are left
    out, a line each printed."""
    import pandas as pd

    from afr.experiments.health import healthy_records

    records, _ = healthy_records(records)
    rows = []
    for (method, seed), record in records.items():
        for shots, packs in _tests_by_shots(record).items():
            for domain, metrics in packs.items():
                for metric, value in grid_metric_values(metrics):
                    rows.append({"method": method, "seed": seed, "shots": shots, "domain": domain, "metric": metric,
                                 "value": value})
    return pd.DataFrame(rows, columns=["method", "seed", "shots", "domain", "metric", "value"])


def summary_table(table, metric: str = "auc", settings: CrossDomainSettings | None = None):
    """``mean ± sd`` over seeds: rows (method, k), columns the direction's target packs then its source packs
    (then the other packs)."""
    shift = (settings or CrossDomainSettings()).shift
    chosen = table[table["metric"] == metric]
    stats = chosen.groupby(["method", "shots", "domain"])["value"].agg(["mean", "std"])
    cells = stats.apply(lambda r: f"{r['mean']:.4f}" + ("" if np.isnan(r["std"]) else f" ± {r['std']:.4f}"), axis=1)
    wide = cells.unstack("domain")
    first = [name for name in (*shift.target_packs, *shift.source_packs) if name in wide.columns]
    wide = wide[first + [name for name in wide.columns if name not in first]]
    order = [*(f"{start}-start" for start in STARTS), *METHODS]
    wide = wide.sort_index(key=lambda index: index.map(order.index) if index.name == "method"
                           else index.map(shots_order))
    return wide.rename(index=shots_label, level="shots").rename_axis(index={"shots": "k"})


PAIRS = (("dalora+maml", "lora"), ("dalora+maml+contrastive+semi", "dalora+maml+contrastive"))


def paired_tests(table, settings: CrossDomainSettings, metric: str = "auc"):
    """Paired t-tests over seeds (scipy ``ttest_rel``, :func:`afr.stats.paired_tests`) of ``dalora+maml`` vs
    ``lora`` and of the semi-supervised row vs its supervised twin, per k and test pack (``settings``: kept for the
    callers; every run of the table has its one adaptation step count)."""
    import pandas as pd

    frames = []
    for first, second in PAIRS:
        pair = table[table["method"].isin((first, second)) & (table["shots"] != 0)]
        for domain, part in pair.groupby("domain", sort=False):
            if set(part["method"]) == {first, second}:
                frames.append(paired(part, first, metric, by=("shots",)).assign(domain=domain))
    columns = ["comparison", "shots", "domain", "metric", "seeds", "mean_difference", "p_value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def compare_with_committed(records: Mapping[Any, Mapping[str, Any]]) -> str:
    """Every run's test metrics (``k<k>/<pack>`` for adapted methods) against the committed record of its tag,
    within :data:`afr.experiments.reference.TOLERANCES`; one line."""
    from afr.experiments.reference import compare_grid_with_committed

    unique = {record["tag"]: record for record in records.values()}
    return compare_grid_with_committed({tag: SimpleNamespace(record=record) for tag, record in unique.items()})


def plot_results(table, forgetting, settings: CrossDomainSettings):
    """Notebook 05's figure, drawn by :func:`afr.figures.crossdomain.crossdomain_figure` (this name stays for the
    notebook's import)."""
    from afr.figures.crossdomain import crossdomain_figure

    return crossdomain_figure(table, forgetting, settings)


#: stage 2's learning rate that figure names leave out: the default before the rate check moved it to 3e-4 (the
#: figures drawn at it were named without a rate, and their names stay)
RATE_NAMED_BY_NO_SUFFIX = 1e-3


def figure_name(settings: CrossDomainSettings) -> str:
    """``crossdomain_<backbone>_<n>seed[_full][_<direction>][_k<...>][_validated][_lr<rate>].png``: the profile when
    not embedded, the direction when not the default, the k values when they include ``all`` (its runs are a grid of
    their own), ``_validated`` when stage 2's step count is chosen on validation and stage 2's learning rate when not
    :data:`RATE_NAMED_BY_NO_SUFFIX`, so no grid replaces another's figure."""
    name = f"{settings.experiment}_{settings.backbone}_{len(settings.seeds)}seed"
    if settings.data_profile != CrossDomainSettings.data_profile:
        name += f"_{settings.data_profile}"
    if settings.direction != CrossDomainSettings.direction:
        name += "_" + settings.direction.replace("->", "-to-")
    if ALL_SHOTS in settings.shots:
        name += "_k" + "-".join(shots_label(shots) for shots in settings.shots)
    if settings.choose_steps_on_validation:
        name += "_validated"
    if settings.adapt_lr != RATE_NAMED_BY_NO_SUFFIX:
        name += f"_lr{settings.adapt_lr:.0e}"
    return name + ".png"


def run_experiment(settings: CrossDomainSettings) -> dict[str, Any]:
    """The whole of notebook 05 without its pictures; a JSON-ready summary (mean over seeds)."""
    data = load_data(settings)
    records = run_grid(settings, data)
    table = grid_table(records)
    summary = table.groupby(["method", "shots", "domain", "metric"])["value"].agg(["mean", "std", "count"])
    forgetting = forgetting_table(table, settings).groupby(["method", "shots"])[["change_vs_start", "change_vs_zero_shot"]].mean()
    return {"experiment": settings.experiment,
            "runs": {f"{method}/seed{seed}": record["tag"] for (method, seed), record in records.items()},
            "skipped": skipped_rows(records),
            "summary": summary.reset_index().to_dict(orient="records"),
            "forgetting": forgetting.reset_index().to_dict(orient="records")}
