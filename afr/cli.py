"""Command line: ``python -m afr <command>`` (also installed as ``afr``).

Commands
--------
``evaluate``
    Embed a verification set with a backbone (optionally carrying a LoRA adapter) and print one JSON
    object with InsightFace-protocol accuracy, AUC, EER and TAR@FAR. The set is either an InsightFace
    ``.bin`` pack (``--bin``) or a folder with one sub-folder per identity (``--folder``), from which
    every same-identity pair and as many seeded different-identity pairs are formed.

``build-embedded``
    Build (or reuse) the embedded benchmark from the shared face collections, write its statistics to
    ``results/embedded_stats.json`` and ``.md`` (as notebook 01 does) and print them.
``baseline``
    LoRA + CosFace training validated on held-out identities, then the zero-shot and the adapted backbone
    scored on the test packs (the recipe of ``notebooks/02_baseline.ipynb``, options generated from its
    settings); prints the result JSON, which also goes to ``results/``. A run whose record exists is reused, not
    retrained (one line on stderr says so; ``--overwrite`` retrains it), as in notebook 02.
``embed``
    Embeddings of a folder of faces (photos detected and aligned as ``evaluate --folder`` does, or aligned
    chips) with a backbone and optionally an adapter, written to ``FILE.npy`` plus a CSV index ``FILE.csv``
    (row, file, identity sub-folder, status, reason); see :mod:`afr.embed`.
``export``
    Merge an adapter into its backbone (DA-LoRA: one domain's expert) and write the network as ONNX
    (dynamic batch), checked against torch with onnxruntime; see :mod:`afr.export`.
``label-domains``
    Domain labels (controlled / unconstrained / low-quality) for a training pack without any (CASIA-WebFace
    ``train.rec``), measured per image and written to a side-car folder; see :mod:`afr.data.domain_labels`.

Every command reports failures as one line ``error: ...`` on stderr and exits with status 2
(``--debug`` shows the traceback instead). New commands register a sub-parser in
:func:`build_parser` and a handler returning the JSON-ready dict to print.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CommandError", "build_parser", "evaluate_command", "main"]

log = logging.getLogger("afr.cli")

#: exit status of a command that failed with an error
EXIT_ERROR = 2


class CommandError(ValueError):
    """A command cannot run as asked (bad argument, missing input); the message says which."""


# --------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``afr`` argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="python -m afr",
        description="AdaptFace: adapt face-recognition backbones with LoRA and evaluate them.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_evaluate(commands)
    _add_build_embedded(commands)
    _add_baseline(commands)
    _add_embed(commands)
    _add_export(commands)
    _add_label_domains(commands)
    for name in GRID_EXPERIMENTS:
        _add_grid_experiment(commands, name)
    return parser


def _add_debug(command: argparse.ArgumentParser) -> None:
    """``--debug`` after the command name too (SUPPRESS keeps a ``--debug`` given before it)."""
    command.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors"
    )


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="verification metrics of a backbone on a .bin pack or an identity folder (prints JSON)",
        description=(
            "Embed a verification set (flip test: embedding of the chip + of its mirror, L2-normalised) and "
            "print one JSON object: InsightFace 10-fold accuracy (mean, std, per-fold thresholds), ROC AUC, "
            "EER, TAR@FAR, pair counts, backbone, data source (sha256 of a .bin) and seed."
        ),
    )
    evaluate.add_argument("--backbone", required=True, help="backbone name, e.g. dlib-resnet29, dinov2-vits14")
    evaluate.add_argument(
        "--weights", type=Path, help="weights directory (dlib-resnet29: default shared weights/dlib_resnet29; "
        "DINOv2/CLIP: a local Hugging Face directory; timm:<model>: a local checkpoint file or its directory)"
    )
    evaluate.add_argument("--adapter", type=Path, help="adapter directory (afr.adapters.save_adapter): LoRA, or DA-LoRA with classifier gating")
    source = evaluate.add_mutually_exclusive_group(required=True)
    source.add_argument("--folder", type=Path, help="folder with one sub-folder of images per identity")
    source.add_argument("--bin", type=Path, help="InsightFace verification pack (.bin)")
    evaluate.add_argument(
        "--aligned", action="store_true",
        help="with --folder: images are already aligned chips (only resized); otherwise each photo is "
        "detected (MTCNN) and aligned to the backbone's chip geometry",
    )
    evaluate.add_argument("--batch-size", type=int, default=64, help="chips per forward pass (default 64)")
    evaluate.add_argument("--no-flip", action="store_true", help="do not add the mirrored chip's embedding")
    evaluate.add_argument(
        "--n-folds", type=int, default=10,
        help="protocol folds; with --folder also the number of same/different blocks of the pairs (default 10)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the different-identity pairs (default 0)")
    evaluate.add_argument("--device", default="cpu", help="torch device (default cpu)")
    evaluate.add_argument("--progress", action="store_true", help="progress bar on stderr")
    _add_debug(evaluate)
    evaluate.set_defaults(handler=evaluate_command)


# --------------------------------------------------------------------------------------------- evaluate
def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise CommandError(f"{what} {path} not found (not a directory)")
    return path


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CommandError(f"{what} {path} not found (not a file)")
    return path


def _require_weights(args: argparse.Namespace) -> None:
    """``--weights``, when given, exists: a directory, or for a ``timm:`` backbone also a checkpoint file."""
    if args.weights is None:
        return
    if args.backbone.strip().lower().startswith("timm:"):
        if not args.weights.exists():
            raise CommandError(f"weights {args.weights} not found (a timm checkpoint file or a directory holding one)")
        return
    _require_dir(args.weights, "weights directory")


def evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``evaluate``: the JSON-ready dict of metrics and provenance."""
    # check every input before the slow imports and the backbone load
    if args.folder is not None:
        _require_dir(args.folder, "image folder")
    else:
        _require_file(args.bin, "verification pack")
        if args.aligned:
            raise CommandError("--aligned applies to --folder only (a .bin pack always holds aligned chips)")
    _require_weights(args)
    if args.adapter is not None:
        _require_dir(args.adapter, "adapter directory")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.n_folds < 1:
        raise CommandError(f"--n-folds must be at least 1, got {args.n_folds}")

    import torch

    from afr.eval.extract import extract_unique_embeddings
    from afr.eval.verification import evaluate

    torch.manual_seed(args.seed)

    from afr.models.factory import create_backbone

    backbone = create_backbone(args.backbone, weights=args.weights)
    if args.adapter is not None:
        from afr import adapters  # attribute looked up at call time (tests spy on adapters.load_adapter)

        # any registered type (LoRA, DA-LoRA), by the type its settings record; DA-LoRA routes each chip by its
        # router (evaluation packs carry no domain labels for oracle gating)
        backbone = adapters.load_adapter(backbone, args.adapter, gating="classifier")

    data: dict[str, Any]
    if args.bin is not None:
        from afr.data.verification import load_pack

        pack = load_pack(args.bin)  # validates the structure (2 images per pair) and hashes the file
        chips, issame = pack.images, pack.issame
        pair_rows = np.arange(len(chips))
        data = {"kind": "bin", "path": str(args.bin.resolve()), "sha256": pack.sha256, "n_images": len(chips)}
    else:
        from afr.data.folder import ImageFolderDataset, folder_verification_pairs

        dataset = ImageFolderDataset(args.folder)
        labels = np.asarray(dataset.labels)
        # pairs laid out in as many same/different blocks as the protocol has folds: each fold gets both
        pairs, issame = folder_verification_pairs(labels, args.seed, n_folds=args.n_folds)
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        issame = np.asarray(issame, dtype=bool)
        used = np.unique(pairs)  # embed each image once, only those that occur in a pair
        images = [dataset[int(index)][0] for index in used]
        fallbacks = None
        if args.aligned:
            chips = images
        else:
            chips, fallbacks = _align(images, backbone, args.progress)
        pair_rows = np.searchsorted(used, pairs.reshape(-1))
        data = {
            "kind": "folder",
            "path": str(args.folder.resolve()),
            "aligned_input": bool(args.aligned),
            "n_images": len(dataset),
            "n_identities": int(len(np.unique(labels))),
            "n_images_in_pairs": len(used),
            "alignment_fallbacks": fallbacks,
        }

    size = backbone.input_size
    resized = sorted({f"{chip.shape[1]}x{chip.shape[0]}" for chip in chips if chip.shape[:2] != (size, size)})
    if resized:  # recorded so that a geometry mismatch (e.g. 150 px dlib chips into a 112 px ViT) is visible
        data["resized_from"] = resized
        data["resized_to"] = f"{size}x{size}"
    embeddings = extract_unique_embeddings(  # a .bin repeats chips across pairs: embed each once
        backbone, chips, batch_size=args.batch_size, flip=not args.no_flip, device=args.device,
        progress=args.progress,
    )
    result = evaluate(embeddings[pair_rows], issame, n_folds=args.n_folds)
    return {
        "command": "evaluate",
        "backbone": getattr(backbone, "name", args.backbone),
        "weights": str(args.weights.resolve()) if args.weights is not None else None,
        "adapter": str(args.adapter.resolve()) if args.adapter is not None else None,
        "data": data,
        "flip": not args.no_flip,
        "seed": args.seed,
        "device": str(args.device),
        "embedding_dim": int(embeddings.shape[1]),
        **result.to_dict(),
    }


def _align(images: Sequence[np.ndarray], backbone: Any, progress: bool) -> tuple[list[np.ndarray], int]:
    """Detect and align every photo into the backbone's chip geometry; return chips and fallback count."""
    from afr.align import align_photos

    faces = align_photos(images, geometry=backbone.alignment, size=backbone.input_size, progress=progress)
    return [face.chip for face in faces], sum(not face.detected for face in faces)


# --------------------------------------------------------------------------------------------- build-embedded
def _add_build_embedded(commands: argparse._SubParsersAction) -> None:
    build = commands.add_parser("build-embedded", help="build the embedded benchmark; writes results/embedded_stats"
                                ".json and .md (prints the statistics)")
    build.add_argument("--faces-root", type=Path, help="folder with orl/ yale/ deepface/ thermal/ "
                       "(default: $AFR_SHARED/data/faces)")
    build.add_argument("--output-dir", type=Path, help="default data/processed/embedded")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--geometry", choices=("dlib", "arcface"), default="dlib")
    build.add_argument("--image-size", type=int, default=150)
    build.add_argument("--few-shot-k", type=int, nargs="+", default=[1, 2, 4])
    build.add_argument("--rebuild", action="store_true", help="rebuild even if built with the same settings")
    _add_debug(build)
    build.set_defaults(handler=build_embedded_command)


def build_embedded_command(args: argparse.Namespace) -> dict[str, Any]:
    from afr.data.embedded import EmbeddedConfig, build_embedded_benchmark
    from afr.data.embedded_stats import write_embedded_stats

    # EmbeddedConfig checks the settings (--seed, --image-size, --few-shot-k, ...) before any work
    config = EmbeddedConfig(output_dir=str(args.output_dir or ""), faces_root=str(args.faces_root or ""),
                            seed=args.seed, image_size=args.image_size, geometry=args.geometry,
                            few_shot_k=tuple(args.few_shot_k))
    benchmark = build_embedded_benchmark(config, rebuild=args.rebuild)
    stats_json, stats_markdown = write_embedded_stats(benchmark.stats)  # what the paper and the model card read
    return {"root": str(benchmark.root), "stats_files": [str(stats_json), str(stats_markdown)], **benchmark.stats}


# --------------------------------------------------------------------------------------------- baseline
def _add_baseline(commands: argparse._SubParsersAction) -> None:
    from afr.experiments.settings import BaselineSettings, add_arguments

    baseline = commands.add_parser(
        "baseline", help="zero-shot vs LoRA + CosFace on the embedded benchmark or CASIA-WebFace (prints JSON)",
        description="The recipe of notebooks/02_baseline.ipynb: the options are BaselineSettings' fields, with "
        "the same defaults as the notebook's parameters cell.")
    add_arguments(baseline, BaselineSettings)
    _add_debug(baseline)
    baseline.set_defaults(handler=baseline_command)


def baseline_command(args: argparse.Namespace) -> dict[str, Any]:
    from afr.experiments.settings import BaselineSettings, settings_from_arguments

    settings = settings_from_arguments(args, BaselineSettings)  # checked before the recipe (and torch) is imported
    from afr.experiments.baseline import run_baseline

    # a run recorded already is reused, not retrained: one line on stderr says so (stdout is the JSON record)
    return run_baseline(settings, report=lambda line: print(line, file=sys.stderr))


# --------------------------------------------------------------------------------------------- embed / export
def _add_backbone_and_adapter(command: argparse.ArgumentParser, domain_help: str) -> None:
    command.add_argument("--backbone", default="dlib-resnet29", help="backbone name (default dlib-resnet29)")
    command.add_argument("--weights", type=Path, help="weights directory (dlib-resnet29: default shared weights)")
    command.add_argument("--domain", help=domain_help)


def _check_model_inputs(args: argparse.Namespace) -> None:
    """The model inputs of ``embed`` and ``export``, before any slow import: the adapter directory, then the
    weights directory, each when given."""
    if args.adapter is not None:
        _require_dir(args.adapter, "adapter directory")
    _require_weights(args)


def _add_embed(commands: argparse._SubParsersAction) -> None:
    embed = commands.add_parser(
        "embed", help="embeddings of a folder of faces to FILE.npy + a CSV index FILE.csv (prints JSON)",
        description="Embed every image under FOLDER (sub-folders = identities) with the flip test and write the "
        "L2-normalised embeddings to OUT (.npy) and one CSV line per file (row, file, identity, status, reason) beside "
        "it. A file that cannot be decoded, an image too large to decode or a photo without a detected face is a "
        "line with its status and reason (and no row of OUT); the other files are embedded.")
    embed.add_argument("folder", type=Path, help="folder of images (any depth; sub-folder = identity)")
    embed.add_argument("--out", type=Path, required=True, help="embeddings file FILE.npy (index: FILE.csv)")
    _add_backbone_and_adapter(embed, "DA-LoRA only: merge this domain's expert (default: the router gates the "
                              "experts per image)")
    embed.add_argument("--adapter", type=Path, help="adapter directory: LoRA (merged) or DA-LoRA")
    embed.add_argument("--aligned", action="store_true",
                       help="images are aligned chips (only resized); otherwise photos are detected (MTCNN) and aligned")
    embed.add_argument("--skip-undetected", action="store_true",
                       help="leave photos without a detected face out (default: embed their centred crop)")
    embed.add_argument("--overwrite", action="store_true", help="replace existing FILE.npy / FILE.csv")
    embed.add_argument("--batch-size", type=int, default=64, help="chips per forward pass (default 64)")
    embed.add_argument("--no-flip", action="store_true", help="do not add the mirrored chip's embedding")
    embed.add_argument("--device", default="cpu", help="torch device (default cpu)")
    embed.add_argument("--progress", action="store_true", help="progress bars on stderr")
    _add_debug(embed)
    embed.set_defaults(handler=embed_command)


def embed_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``embed``: write the embeddings and their index, return counts and provenance."""
    from afr.embed import check_output_paths, list_face_files

    _require_dir(args.folder, "image folder")
    _check_model_inputs(args)
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.aligned and args.skip_undetected:
        raise CommandError("--skip-undetected applies to photos; --aligned chips are not searched for faces")
    out, csv_path = check_output_paths(args.out, args.overwrite)  # before any work
    list_face_files(args.folder)  # a folder without images fails here, before the backbone loads

    from afr.embed import embed_folder, write_embeddings
    from afr.inference import FaceEmbedder

    embedder = FaceEmbedder.load(args.backbone, args.weights, args.adapter, args.domain, aligned=args.aligned,
                                 flip=not args.no_flip, batch_size=args.batch_size, device=args.device)
    result = embed_folder(embedder, args.folder, skip_undetected=args.skip_undetected, progress=args.progress)
    write_embeddings(result, out, overwrite=args.overwrite)
    return {
        "command": "embed",
        "backbone": getattr(embedder.backbone, "name", args.backbone),
        "adapter": str(args.adapter.resolve()) if args.adapter is not None else None,
        "domain": args.domain,
        "folder": str(args.folder.resolve()),
        "embeddings": str(out.resolve()),
        "index": str(csv_path.resolve()),
        "n_files": len(result.index),
        "n_embedded": int(result.embeddings.shape[0]),
        "embedding_dim": int(result.embeddings.shape[1]),
        "statuses": result.status_counts(),
        "aligned_input": bool(args.aligned),
        "flip": not args.no_flip,
    }


def _add_export(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="merge an adapter into its backbone and write ONNX (prints JSON)",
        description="Merge the adapter (LoRA; DA-LoRA: the --domain expert) into the backbone and write it as an "
        "ONNX model: input 'chips' float32 (batch, 3, S, S) RGB in [0, 1] aligned as the backbone expects, output "
        "'embedding' (batch, D) raw. onnxruntime is checked against torch on a random batch.")
    export.add_argument("--adapter", type=Path, required=True, help="adapter directory: LoRA or DA-LoRA")
    export.add_argument("--onnx", type=Path, required=True, help="ONNX file to write")
    _add_backbone_and_adapter(export, "DA-LoRA: the domain whose expert is merged (required for DA-LoRA)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing ONNX file")
    _add_debug(export)
    export.set_defaults(handler=export_command)


def export_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``export``: write the merged network as ONNX, return where and how well it matches torch."""
    _check_model_inputs(args)  # --adapter is required here
    from afr.io import check_output_file

    check_output_file(args.onnx, "ONNX file", args.overwrite)  # exists, a directory, not writable: before any work

    from afr.export import export_onnx
    from afr.inference import load_adapted_backbone

    backbone = load_adapted_backbone(args.backbone, args.weights, args.adapter, args.domain, require_merge=True)
    metadata = {"afr.adapter": args.adapter.resolve().name, "afr.domain": args.domain or ""}
    exported = export_onnx(backbone, args.onnx, overwrite=args.overwrite, metadata=metadata)
    return {
        "command": "export",
        "backbone": getattr(backbone, "name", args.backbone),
        "adapter": str(args.adapter.resolve()),
        "domain": args.domain,
        "onnx": str(exported.path.resolve()),
        "opset": exported.opset,
        "input": {"name": "chips", "shape": list(exported.input_shape)},
        "output": {"name": "embedding", "shape": list(exported.output_shape)},
        "onnxruntime_max_abs_difference": exported.max_abs_difference,
    }


# --------------------------------------------------------------------------------------------- label-domains
def _add_label_domains(commands: argparse._SubParsersAction) -> None:
    label = commands.add_parser(
        "label-domains", help="domain labels (controlled / unconstrained / low-quality) for a training pack, written "
        "to a side-car folder (prints JSON)",
        description="Measure every image of an InsightFace pack (sharpness, JPEG blockiness, colour, asymmetry), fit "
        "the rule's quantiles on the fitting identities and write codes.npy (int8, pack index order), features.npy, "
        "domains.json and one samples_<domain>.png per domain to --out. The pack itself is not touched.")
    label.add_argument("--train-rec", type=Path, required=True,
                       help="the pack: a folder with train.rec/.idx/property, or a .rec prefix")
    label.add_argument("--out", type=Path, help="side-car folder to write (default: <pack folder>/domain_labels)")
    label.add_argument("--identities", type=int, help="fit the thresholds on N identities drawn with --seed, as "
                       "identity_subset draws a training subset (default: all identities)")
    label.add_argument("--seed", type=int, default=0, help="seed of the --identities draw (default 0)")
    label.add_argument("--synthetic-low-quality", type=float, default=0.0, metavar="FRACTION",
                       help="also label this fraction of all identities low-quality, their images degraded on the fly "
                       "by DomainLabelledDataset (downscale, blur, JPEG as the embedded benchmark; default 0: none)")
    label.add_argument("--synthetic-seed", type=int, default=0, help="seed of that draw and degradation (default 0)")
    label.add_argument("--overwrite", action="store_true", help="replace a labelling already in --out")
    label.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_debug(label)
    label.set_defaults(handler=label_domains_command)


def label_domains_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``label-domains``: label the pack, return the summary (counts, thresholds, files)."""
    from afr.data.domain_labels import check_output_folder, label_domains
    from afr.data.recordio import RecordIODataset, resolve_pack_paths

    paths = resolve_pack_paths(args.train_rec)
    for path, what in ((paths.rec, "pack file"), (paths.idx, "pack index"), (paths.property, "pack property file")):
        _require_file(path, what)
    if args.identities is not None and args.identities < 1:
        raise CommandError(f"--identities must be at least 1, got {args.identities}")
    if not 0.0 <= args.synthetic_low_quality < 1.0:
        raise CommandError(f"--synthetic-low-quality must be a fraction in [0, 1), got {args.synthetic_low_quality}")
    out = args.out if args.out is not None else paths.rec.parent / "domain_labels"
    check_output_folder(out, args.overwrite)  # an existing labelling or an unwritable folder: before any work
    dataset = RecordIODataset(args.train_rec)
    identities = np.unique(dataset.labels)
    if args.identities is not None:
        if args.identities > len(identities):
            raise CommandError(f"--identities {args.identities} but the pack has {len(identities)} identities")
        identities = np.sort(np.random.default_rng(args.seed).choice(identities, size=args.identities, replace=False))
    labelling = label_domains(dataset, out, fit_identities=identities, overwrite=args.overwrite,
                              progress=not args.no_progress, synthetic_low_quality=args.synthetic_low_quality,
                              synthetic_seed=args.synthetic_seed)
    return {"command": "label-domains", "pack": str(paths.rec.resolve()), "fit_identities": int(len(identities)),
            "seed": args.seed if args.identities is not None else None, **labelling.summary()}


# --------------------------------------------------------------------------------------------- grid experiments
#: command -> (experiment module, its settings class, its notebook, help); each module has ``run_experiment``; the
#: settings class lives in the torch-free ``afr.experiments.settings.<command>`` (the parser is built from it, the
#: recipe is imported only to run)
GRID_EXPERIMENTS = {
    "dalora": ("afr.experiments.dalora_vs_lora", "DaLoraExperimentSettings", "03_dalora",
               "LoRA vs parameter-matched LoRA vs DA-LoRA (classifier/oracle/uniform) on the embedded benchmark"),
    "maml": ("afr.experiments.maml_init", "MamlExperimentSettings", "04_maml",
             "MAML / first-order MAML / pooled-LoRA / random LoRA initialisations adapted to a held-out collection"),
    "crossdomain": ("afr.experiments.crossdomain", "CrossDomainSettings", "05_crossdomain",
                    "visible -> thermal with k labelled thermal images: LoRA / DA-LoRA / MAML starts, contrastive and "
                    "semi-supervised terms, forgetting of the visible domain"),
    "ablations": ("afr.experiments.ablations", "AblationSettings", "06_ablations",
                  "DA-LoRA component ablation (LoRA, router only, experts, MAML start, contrastive term) and "
                  "sensitivity to rank, K, λ1, λ2 and MAML inner steps"),
}


def _add_grid_experiment(commands: argparse._SubParsersAction, name: str) -> None:
    import importlib

    from afr.experiments.settings import add_arguments

    _, settings_name, notebook, summary = GRID_EXPERIMENTS[name]
    command = commands.add_parser(
        name, help=f"{summary} (prints a JSON summary)",
        description=f"The recipe of notebooks/{notebook}.ipynb; the options are its settings, with the same defaults.")
    add_arguments(command, getattr(importlib.import_module(f"afr.experiments.settings.{name}"), settings_name))
    _add_debug(command)
    command.set_defaults(handler=grid_experiment_command)


def grid_experiment_command(args: argparse.Namespace) -> dict[str, Any]:
    import importlib

    from afr.experiments.records import check_outputs_writable
    from afr.experiments.settings import settings_from_arguments

    module, settings_name, _, _ = GRID_EXPERIMENTS[args.command]
    settings_class = getattr(importlib.import_module(f"afr.experiments.settings.{args.command}"), settings_name)
    settings = settings_from_arguments(args, settings_class)  # checked before the recipe (and torch) is imported
    check_outputs_writable(settings.experiment, settings.runs_folder)  # before any work (the recipe's run_grid too)
    return importlib.import_module(module).run_experiment(settings)


# --------------------------------------------------------------------------------------------- main
def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split()) or type(error).__name__
    return f"error: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the command, print its JSON on stdout; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    handler: Callable[[argparse.Namespace], dict[str, Any]] = args.handler
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON only: what a command prints goes to stderr
            output = handler(args)
    except Exception as error:  # one clear line for the user; the traceback only with --debug
        if args.debug:
            raise
        print(_one_line(error), file=sys.stderr)
        return EXIT_ERROR
    if "torch" in sys.modules:  # a torchrun (DDP) run: every rank finishes before the process group goes
        from afr.train import distributed

        rank = distributed.job_rank()
        distributed.finish()
        if rank != 0:  # the other ranks return rank 0's result (on_main); rank 0 alone prints it
            return 0
    print(json.dumps(output, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
