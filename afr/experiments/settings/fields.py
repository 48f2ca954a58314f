"""The settings' field groups: each setting shared by several experiments is declared once, here, with its help.

An experiment's settings class is :class:`~afr.experiments.settings.base.ExperimentSettings` plus the groups it uses
plus its own fields (:mod:`afr.experiments.settings.baseline`, ``.dalora``, ``.maml``, ``.crossdomain``,
``.ablations``). Where an experiment gives a shared name another default or a narrower meaning it redeclares the
field in its own class (a redeclared field keeps its place and takes the new default and help), so every difference
between the experiments is written where it applies.

Field order: a dataclass lists the fields of its bases in reverse method-resolution order, so the group named last
among an experiment's bases comes first in its notebook's ``parameters`` cell and in ``--help``; its own fields
follow the groups'. Module cheap to import (no torch).
"""
from __future__ import annotations

from dataclasses import dataclass

from afr.experiments.settings.base import setting

__all__ = ["FITTED_RECIPE_UNRECORDED", "BackboneFields", "BenchmarkPackFields", "CasiaFields", "DaLoraFields",
           "FittedTrainingFields", "FullProfileFields", "GridFields", "MetaStartFields", "RecordedStartFields",
           "RunFields", "TrainingFields"]

MARGINS = ("cosface", "arcface")
HEAD_INITS = ("random", "class-mean")
DATA_PROFILES = ("embedded", "full")
#: afr.models.domain_aware.ROUTER_VIEWS (this module imports no torch)
ROUTER_VIEWS = ("augmented", "clean")


@dataclass
class BackboneFields:
    """The pretrained backbone, the embedded benchmark it reads and the rank of its adapters (every experiment)."""

    backbone: str = setting("dlib-resnet29", "backbone: dlib-resnet29 (embedded); dinov2-vits14, clip-vitb16 with "
                            "weights (full profile)")
    weights: str | None = setting(None, "backbone weights directory (default: the shared dlib weights)")
    embedded_root: str | None = setting(None, "embedded benchmark folder (default data/processed/embedded)")
    rank: int = setting(8, "rank r of LoRA and of each DA-LoRA expert")


@dataclass
class CasiaFields:
    """The full profile's training data (a GPU box): CASIA-WebFace, a seeded identity subset (notebooks 02-05)."""

    data_profile: str = setting("embedded", "embedded: the CPU benchmark of notebook 01; full: CASIA-WebFace + "
                                "the five InsightFace packs", choices=DATA_PROFILES)
    train_rec: str | None = setting(None, "full profile: CASIA-WebFace folder (train.rec/.idx/property)")
    num_identities: int | None = setting(None, "full profile: seeded CASIA-WebFace identity subset (FRoundation: "
                                         "1000, 10000); default all")


@dataclass
class BenchmarkPackFields:
    """The full profile's test packs: the five InsightFace verification packs (notebooks 02, 03, 05)."""

    bins_dir: str | None = setting(None, "full profile: folder with lfw.bin cfp_fp.bin agedb_30.bin calfw.bin "
                                   "cplfw.bin")
    benchmarks: tuple[str, ...] = setting((), "test packs to score (default: all of the profile)")


@dataclass
class FullProfileFields(BenchmarkPackFields, CasiaFields):
    """The full profile's data (a GPU box): CASIA-WebFace for training, the InsightFace packs to test (notebooks 02,
    03, 05)."""


@dataclass
class GridFields:
    """The seeds of a (method, seed) grid and the seed of one of its runs (notebooks 03-06)."""

    seeds: tuple[int, ...] = setting((0,), "seeds of the grid (the committed results use 0 1 2)")
    seed: int = setting(0, "seed of a single run (the grid sets it per run)")


@dataclass
class TrainingFields:
    """Supervised training of adapters with a margin loss over class centres (notebooks 02, 03, 06)."""

    margin: str = setting("cosface", "margin loss", choices=MARGINS)
    head_init: str = setting("random", "class centres: random N(0, 0.01) (InsightFace), or class-mean: the mean "
                             "unit embedding of each training identity under the frozen backbone", choices=HEAD_INITS)
    centre_embeddings: bool = setting(False, "subtract the mean unit embedding of the training images (frozen backbone, "
                                      "measured once) before the margin loss and at every evaluation: the fitted "
                                      "recipe (README, Recipes that fit); off = how the first grids trained")
    epochs: int = setting(4, "training epochs")
    batch_size: int = setting(32, "images per optimizer step (with identity batches: a multiple of "
                              "images_per_identity)")
    lr: float = setting(3e-4, "AdamW learning rate of the adapters (warm-up + cosine; chosen on validation in "
                        "notebook 02, README)")
    head_lr: float = setting(1e-2, "AdamW learning rate of the class centres")
    weight_decay: float = setting(0.05, "AdamW weight decay")
    warmup_epochs: float = setting(0.5, "linear warm-up length in epochs")
    augment: bool = setting(True, "flip + per-image RandAugment(randaugment_ops, 16) during training")
    randaugment_ops: int = setting(4, "RandAugment operations per training image with augment (FRoundation: 4; 0: "
                                   "flip only)")
    score_test: bool = setting(True, "score the test packs at the end (reported, never used to choose; off for "
                               "runs that only choose settings)")
    num_workers: int = setting(0, "DataLoader worker processes decoding the training pack")
    precision: str = setting("auto", "training arithmetic: auto (bf16 autocast on CUDA, fp32 on a CPU: how every "
                             "recorded run trained), fp32, or bf16 autocast (weights, gradients and AdamW stay fp32). "
                             "bf16 on this project's CPU is slower than fp32 (bench/cpu_training_step.py, README). A "
                             "run's tag changes only when it is not auto", choices=("auto", "fp32", "bf16"))


@dataclass
class FittedTrainingFields(TrainingFields):
    """:class:`TrainingFields` whose defaults are the fitted recipe notebook 03's validation search chose (``make
    recipe-search``; README, Recipes that fit): centred embeddings, class-mean centres, no augmentation (notebooks
    03, 06). The first grids trained with random centres and RandAugment(4, 16) and none of their runs fitted; they
    name those values explicitly (:mod:`afr.experiments.grids`). Experiments using these fields leave
    ``centre_embeddings`` out of their digests at its first value, off (:data:`FITTED_RECIPE_UNRECORDED`)."""

    head_init: str = setting("class-mean", "class centres: class-mean, the mean unit embedding of each training "
                             "identity under the frozen backbone (the fitted recipe), or random N(0, 0.01) "
                             "(InsightFace; the first grids)", choices=HEAD_INITS)
    centre_embeddings: bool = setting(True, "subtract the mean unit embedding of the training images (frozen backbone, "
                                      "measured once) before the margin loss and at every evaluation: the fitted "
                                      "recipe (README, Recipes that fit); off = how the first grids trained")
    augment: bool = setting(False, "flip + per-image RandAugment(randaugment_ops, 16) during training (off: the fitted "
                            "recipe; FRoundation and the first grids: on)")


#: ``centre_embeddings`` was added at off and its default is now on: runs recorded before it keep their tags and rows
FITTED_RECIPE_UNRECORDED = {"centre_embeddings": False}


@dataclass
class DaLoraFields:
    """DA-LoRA's router and the losses of its training: L_margin + λ1·L_contrastive + λ2·L_domain (notebooks 03, 06)."""

    router_hidden: int = setting(64, "DA-LoRA router MLP width")
    router_lr: float = setting(1e-2, "AdamW learning rate of the DA-LoRA router (trained by the domain loss only)")
    router_view: str = setting("augmented", "the view of each training image the DA-LoRA router reads: augmented "
                               "(the image the experts see), or clean (its flip-only view, as test images are "
                               "clean: the domain loss and the experts' gates come from it)", choices=ROUTER_VIEWS)
    lambda_contrastive: float = setting(0.1, "λ1: weight of the supervised InfoNCE term")
    lambda_domain: float = setting(0.01, "λ2: weight of the router's domain cross-entropy")
    temperature: float = setting(0.1, "InfoNCE temperature")
    images_per_identity: int = setting(4, "M of the P identities x M images batches")


@dataclass
class MetaStartFields:
    """Meta-training of LoRA tensors over episodes (:func:`afr.meta.meta_train`): the MAML experiment's starts,
    the cross-domain stage 1 and the ablations' MAML start (notebooks 04, 05, 06)."""

    n_way: int = setting(5, "identities per meta-training episode")
    k_shot: int = setting(2, "support images per identity in a meta-training episode")
    q_query: int = setting(2, "query images per identity in a meta-training episode")
    inner_steps: int = setting(3, "SGD steps of the inner loop per episode")
    inner_lr: float = setting(1e-3, "SGD learning rate of the inner loop")
    meta_steps: int = setting(10, "outer steps (10: the demo budget; make results runs 60)")
    tasks_per_step: int = setting(2, "episodes per outer step")
    meta_lr: float = setting(1e-3, "AdamW learning rate of the outer loop")
    meta_grad_clip: float | None = setting(None, "clip the meta-gradient to this L2 norm before each outer step "
                                           "(none: no clipping, how the first grids trained)")
    stop_on_divergence: bool = setting(False, "stop a meta-training whose meta-loss rises or sits at its uniform "
                                       "value (checked at each checkpoint) with an error, saving no start")


@dataclass
class RecordedStartFields:
    """Experiments whose runs start from recorded meta-trained starts (notebooks 05, 06)."""

    rebuild_starts: bool = setting(False, "meta-train again a recorded start whose adapter is not on this machine (a "
                                   "fresh clone has records, not runs/); its record is kept, the rebuilt start's "
                                   "history and scores go to <start run folder>/rebuilt.json")


@dataclass
class RunFields:
    """How a run executes, not what it computes (every experiment): all are execution fields, out of the tags."""

    device: str = setting("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    output_dir: str | None = setting(None, "runs folder (default runs/)")
    resume: bool = setting(False, "continue unfinished runs from their last checkpoint")
    overwrite: bool = setting(False, "run again when a run's record exists instead of reusing it (its run folder "
                              "is started again)")
    progress: bool = setting(True, "progress bars")
    grid: str | None = setting(None, "the committed grid this run belongs to (set by the Makefile's results "
                               "targets); written in the rows' grid column")
