"""The model card of the committed adapters, generated from their records: ``python -m afr.model_card``.

Every adapter folder under ``results/adapters/`` holds a ``source.json`` naming the experiment record it was
published from (``results/dalora/<tag>.json``: settings, training summary, test metrics, environment). The
card's tables are rendered from those records and from the benchmark statistics (``results/embedded_stats.json``),
never typed by hand, so ``tests/test_model_card.py`` can check that the committed card says what the records
say. The prose (intended use, out-of-scope uses, limits, data licences) is part of the template below.

    python -m afr.model_card            # write results/adapters/MODEL_CARD.md (refuses to replace a different one)
    python -m afr.model_card --check    # exit 1 if the committed card differs from the records
    python -m afr.model_card --overwrite
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afr.adapters.registry import read_adapter_config
from afr.data.benchmarks import OTHER_BUILD_HINT
from afr.analysis.committed import dalora_grid_tags, dalora_zero_shot_test, read_table
from afr.io import atomic_write_text
from afr.paths import PROJECT_ROOT, shown_path

__all__ = ["AdapterRecord", "DOMAINS", "ZERO_SHOT_RECORD", "load_adapter_records", "main", "render_model_card"]

#: test packs of the embedded benchmark, in the card's column order
DOMAINS = ("controlled", "wild", "thermal", "lowquality")
#: the record whose ``test["zero-shot"]`` scores the frozen network without adapter on the same test packs
ZERO_SHOT_RECORD = "results/baseline_embedded_dlib-resnet29_r8_seed0_48dc7d93.json"
#: (record key, table title, format) of the metric tables
METRICS = (
    ("auc", "Test ROC AUC", "{:.4f}"),
    ("accuracy_mean", "Test accuracy (%, mean of the 10 folds)", "{:.2f}"),
    ("eer", "Test equal error rate", "{:.4f}"),
)
#: settings of the records listed in the training table (record key -> label)
TRAINING_SETTINGS = {
    "backbone": "backbone", "epochs": "epochs", "batch_size": "batch size",
    "images_per_identity": "images per identity in a batch", "lr": "adapter learning rate (AdamW)",
    "head_lr": "class-centre learning rate", "router_lr": "router learning rate (DA-LoRA)",
    "weight_decay": "weight decay", "warmup_epochs": "warm-up epochs (then cosine)", "margin": "margin loss",
    "head_init": "class-centre start", "lambda_contrastive": "λ1 (supervised InfoNCE, DA-LoRA)",
    "lambda_domain": "λ2 (router domain cross-entropy, DA-LoRA)", "temperature": "InfoNCE temperature",
    "augment": "augmentation (flip + RandAugment 4/16)",
    "centre_embeddings": "embeddings centred on the training images' mean (the centre travels with the adapter)",
    "router_view": "view the router learns from (DA-LoRA)",
}
METHODS = {
    "lora": "LoRA r = 8",
    "lora-matched": "LoRA r = 24 (parameter-matched to DA-LoRA)",
    "dalora-classifier": "DA-LoRA, 3 experts × r = 8, gated per image by its learned router",
    "dalora-oracle": "DA-LoRA, 3 experts × r = 8, gated by the known domain of the image (training and test)",
    "dalora-uniform": "DA-LoRA, 3 experts × r = 8, every expert weighted 1/3",
}


@dataclass
class AdapterRecord:
    """One committed adapter: its folder name, adapter type (``lora``, ``dalora``) and saved settings, and the record
    it was published from."""

    name: str
    kind: str
    adapter: dict[str, Any]
    record_path: str
    record: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.record["method"])

    @property
    def seed(self) -> int:
        return int(self.record["seed"])

    def test_metric(self, domain: str, key: str) -> float:
        return float(self.record["test"][domain][key])

    def setting(self, key: str) -> Any:
        """The record's value of ``key``; for a setting added after the record was written, the value such runs had."""
        from afr.experiments.settings.dalora import DaLoraExperimentSettings

        return self.record["settings"].get(key, DaLoraExperimentSettings.unrecorded_values().get(key))

    @property
    def centred(self) -> bool:
        return bool(self.setting("centre_embeddings"))


def load_adapter_records(adapters_dir: str | Path, project_root: str | Path = PROJECT_ROOT) -> list[AdapterRecord]:
    """The adapters under ``adapters_dir`` (folders with a ``source.json``) with their records, sorted by name."""
    adapters_dir, project_root = Path(adapters_dir), Path(project_root)
    entries = []
    for source_path in sorted(adapters_dir.glob("*/source.json")):
        folder = source_path.parent
        source = json.loads(source_path.read_text())
        record_path = project_root / source["record"]
        if not record_path.is_file():
            raise FileNotFoundError(f"{source_path} names the record {record_path}, which is missing")
        record = json.loads(record_path.read_text())
        if record["tag"] != source["tag"]:
            raise ValueError(f"{source_path}: tag {source['tag']} but {record_path} holds {record['tag']}")
        adapter = read_adapter_config(folder)  # its saved settings, with the "type" (inferred for older saves)
        entries.append(AdapterRecord(folder.name, adapter["type"], adapter, source["record"], record))
    if not entries:
        raise FileNotFoundError(f"no adapter with a source.json under {adapters_dir}")
    return entries


# ------------------------------------------------------------------------------------------------ tables
def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _structure(entry: AdapterRecord) -> str:
    settings = entry.adapter["settings"]
    modules = len(entry.adapter["module_names"])
    if entry.kind == "dalora":
        experts = ", ".join(settings["domains"])
        return (f"DA-LoRA r = {settings['r']}, α = {settings['alpha']:g}, experts {experts}; {modules} convolutions "
                f"+ router on `{settings['router_input']}`")
    return f"LoRA r = {settings['r']}, α = {settings['alpha']:g}; {modules} convolutions"


def adapters_table(entries: Sequence[AdapterRecord]) -> str:
    rows = [(f"`{e.name}`", e.method, e.seed, _structure(e), f"{e.record['train']['adapter_parameters']:,}",
             f"{e.record['wall_seconds']:.0f}", f"`{e.record_path}`") for e in entries]
    return _table(("adapter", "method", "seed", "structure", "trained parameters", "training time (s, CPU)",
                   "record"), rows)


def metric_table(rows_by_label: dict[str, dict[str, Any]], key: str, number_format: str) -> str:
    """One row per ``label -> test section`` (domain -> metrics), one column per test domain."""
    scale = 100.0 if key == "accuracy_mean" else 1.0
    rows = [(label, *(number_format.format(scale * float(test[d][key])) for d in DOMAINS))
            for label, test in rows_by_label.items()]
    return _table(("adapter", *DOMAINS), rows)


def _check_same_packs(entries: Sequence[AdapterRecord], test: dict[str, Any]) -> None:
    for entry in entries:
        for domain in DOMAINS:
            mine, theirs = entry.record["test"][domain]["sha256"], test[domain]["sha256"]
            if mine != theirs:
                raise ValueError(f"{entry.record_path} scored another {domain} pack than {ZERO_SHOT_RECORD} "
                                 f"(SHA-256 {mine[:12]}… vs {theirs[:12]}…): {OTHER_BUILD_HINT}")


def _centred_zero_shot(entries: Sequence[AdapterRecord], project_root: Path) -> tuple[str, dict[str, Any]]:
    """Notebook 03's centred zero-shot rows of the committed grid the adapters were published from."""
    results_dir = project_root / "results"
    tags = set(dalora_grid_tags(results_dir).values())
    outside = [e.name for e in entries if e.record["tag"] not in tags]
    if outside:
        raise ValueError(f"adapters {', '.join(outside)} were trained with centred embeddings but are not runs of "
                         "notebook 03's committed grid, whose zero-shot rows are the only centred reference")
    return dalora_zero_shot_test(results_dir, DOMAINS)


def zero_shot_test(entries: Sequence[AdapterRecord],
                   project_root: str | Path = PROJECT_ROOT) -> tuple[str, str, dict[str, Any]]:
    """The frozen network's test metrics on the very packs (SHA-256) the adapters were scored on: its row label, where
    the numbers come from, and the test section. Adapters whose runs centred the embeddings are compared with the
    zero-shot centred the same way (notebook 03's rows); adapters that disagree on centring are refused."""
    project_root = Path(project_root)
    uncentred = json.loads((project_root / ZERO_SHOT_RECORD).read_text())["test"]["zero-shot"]
    _check_same_packs(entries, uncentred)
    centring = {entry.centred for entry in entries}
    if len(centring) > 1:
        raise ValueError("some adapters centred their embeddings and others did not, so no one zero-shot row fits "
                         "them; publish them in separate folders")
    if centring == {True}:
        zero_tag, test = _centred_zero_shot(entries, project_root)
        return "zero-shot, centred (no adapter)", f"notebook 03's rows `{zero_tag}` in `results/tables/dalora.csv`", test
    return "zero-shot (no adapter)", f"`{ZERO_SHOT_RECORD}`", uncentred


def _grouped(by_method: dict[str, set[str]]) -> str:
    """``value (method, method); value (method)`` for a setting that differs between methods."""
    methods_of: dict[str, list[str]] = {}
    for method, values in sorted(by_method.items()):
        for value in values:
            methods_of.setdefault(value, []).append(method)
    return "; ".join(f"{json.loads(value)} ({', '.join(methods)})" for value, methods in sorted(methods_of.items()))


def training_table(entries: Sequence[AdapterRecord]) -> str:
    rows = []
    for key, label in TRAINING_SETTINGS.items():
        by_method: dict[str, set[str]] = {}
        for entry in entries:
            by_method.setdefault(entry.method, set()).add(json.dumps(entry.setting(key)))
        values = {value for method_values in by_method.values() for value in method_values}
        shown = json.loads(values.pop()) if len(values) == 1 else _grouped(by_method)
        rows.append((label, f"`{key}`", shown))
    return _table(("setting", "record key", "value"), rows)


def data_table(stats: dict[str, Any]) -> str:
    rows = []
    for domain in DOMAINS:
        split = stats["domains"][domain]
        rows.append((domain, *(f"{split[s]['identities']} / {split[s]['images']}" for s in ("train", "val", "test"))))
    return _table(("domain", "train identities / images", "validation", "test"), rows)


# ------------------------------------------------------------------------------------------------ card
def render_model_card(adapters_dir: str | Path | None = None, stats_path: str | Path | None = None) -> str:
    """The card's Markdown text for the adapters in ``adapters_dir`` (default ``results/adapters``)."""
    adapters_dir = Path(adapters_dir) if adapters_dir is not None else PROJECT_ROOT / "results" / "adapters"
    stats_path = Path(stats_path) if stats_path is not None else PROJECT_ROOT / "results" / "embedded_stats.json"
    entries = load_adapter_records(adapters_dir)
    stats = json.loads(stats_path.read_text())
    methods = sorted({e.method for e in entries})
    seeds = sorted({e.seed for e in entries})
    backbone_parameters = {e.record["train"]["backbone_parameters"] for e in entries}
    environments = sorted({f"{e.record['environment']['cpu']}, torch {e.record['environment']['torch']}"
                           for e in entries})
    threads = sorted({int(e.record["environment"]["torch_threads"]) for e in entries})
    zero_label, zero_source, zero_test = zero_shot_test(entries)
    rows_by_label = {zero_label: zero_test}
    rows_by_label.update({f"`{e.name}`": e.record["test"] for e in entries})
    metric_sections = "\n\n".join(f"### {title}\n\n{metric_table(rows_by_label, key, fmt)}"
                                   for key, title, fmt in METRICS)
    thermal_auc = [e.test_metric("thermal", "auc") for e in entries]
    pairs = sorted({int(e.record["test"][d]["n_pairs"]) for e in entries for d in DOMAINS})
    method_lines = "\n".join(f"- `{m}`: {METHODS.get(m, m)}" for m in methods)
    grids = sorted({e.setting("grid") or "dalora" for e in entries})
    grid_words = ("grid " if len(grids) == 1 else "grids ") + ", ".join(f"`{name}`" for name in grids)
    folder = shown_path(adapters_dir)
    files = sorted({path.name for e in entries for path in (adapters_dir / e.name).iterdir()})
    centred = entries[0].centred
    centre_words = ("\nThe runs subtracted the training images' mean embedding before the margin loss and scoring;\n"
                    "that centre travels with each adapter (`embedding_centre.safetensors`) and is subtracted\n"
                    "whenever it is loaded." if centred else "")
    oracle_words = ("\nThe oracle rows' thermal *accuracy* is low because the thermal expert can pull thermal embeddings\n"
                    "so close together that the protocol's first threshold step accepts nearly every pair: read AUC\n"
                    "and EER (threshold-free)." if "dalora-oracle" in methods else "")
    return f"""# Model card: AdaptFace adapters for the dlib ResNet-29 face network

<!-- Generated by `python -m afr.model_card` from {folder}/*/source.json, the records they name and
results/embedded_stats.json. Do not edit by hand: change the template in afr/model_card.py and regenerate. -->

## What they are

{len(entries)} adapters ({len(methods)} methods × seed{"s" if len(seeds) > 1 else ""} {", ".join(map(str, seeds))}) for the dlib ResNet-29 face-recognition
network (128-D embedding, {", ".join(f"{n:,}" for n in sorted(backbone_parameters))} parameters, kept frozen), published
from notebook 03's {grid_words} (`python -m afr dalora`, `make dalora-results`). Each folder holds the
adapter ({", ".join(f"`{name}`" for name in files if name != "source.json")})
and `source.json`, which names the record the numbers below come from.{centre_words}

{method_lines}

{adapters_table(entries)}

## Intended use

Research on adapting a face-recognition network to new imaging domains (thermal LWIR, low-quality) from very
little labelled data: reproducing the tables of this project, comparing adaptation methods, starting further
experiments. The adapters load with `python -m afr evaluate|embed --adapter DIR`, with
`afr.inference.FaceEmbedder.load(adapter=DIR)`, or merge into an ONNX network with `python -m afr export`.

## Out-of-scope uses

- Surveillance, tracking or monitoring of people, in public or private spaces.
- Identifying people without their informed consent, or any decision about a person (access, employment,
  policing, benefits) based on these embeddings.
- Any deployment: the adapters were trained and tested on a tiny benchmark (below) and come with no
  demographic or robustness evaluation.

## Training data

The embedded benchmark (notebook 01, `python -m afr build-embedded`, seed {stats['seed']}): {stats['train_records']} training
chips of {stats['train_identities']} identities ({stats['chip']['geometry']} chips, {stats['chip']['size']}×{stats['chip']['size']} px); validation and test
identities are disjoint from the training ones ({stats['val_identities']} validation identities). Controlled = ORL + Yale;
low quality = seeded down-sampling, blur and JPEG of controlled (and, for testing, wild) chips, so it shares
the controlled identities; thermal = Notre Dame X1 LWIR + PUJ-T360 LWIR; wild = the deepface photos, test only.

{data_table(stats)}

## Training settings

Read from each adapter's record (one value where all adapters agree). LoRA/DA-LoRA on the convolutions of the
frozen network, CosFace class centres trained alongside (not part of the adapter); the learning rates were
chosen on the validation packs only.

{training_table(entries)}

Trained on CPU ({"; ".join(environments)}), {" or ".join(map(str, threads))} torch threads.

## Test metrics

Identity-disjoint test packs of the embedded benchmark, each scored once at the end of the run, with
InsightFace's verification protocol (10 folds; thresholds on squared L2 distances `arange(0, 4, 0.01)`;
flip test). DA-LoRA rows were scored with the gating of their name: `classifier` (the router), `oracle` (the
pack's domain; the wild pack, which has no expert, goes to the controlled one) or `uniform`. Loading a DA-LoRA
adapter without `--domain` uses classifier gating; `--domain NAME` merges that expert, which is what oracle
gating computes on a pack of that domain.{oracle_words} The zero-shot row is the frozen network without adapter on
the same packs ({zero_source}).

{metric_sections}

## Limits

- **Tiny benchmark**: {stats['train_identities']} training identities, {stats['train_records']} training chips; test packs of {pairs[0]}–{pairs[-1]} pairs
  (TAR at FAR below 1e-2 cannot be measured). Differences between methods are mostly within the seed spread.
- **One network**: dlib ResNet-29 (a 2017 metric network trained on visible-light faces); nothing here was
  trained or tested on a ViT (no such weights on the machines used).
- **Thermal is not solved**: thermal test AUC {min(thermal_auc):.4f}–{max(thermal_auc):.4f} across the adapters
  ({zero_label.split(" (")[0]} {zero_test["thermal"]["auc"]:.4f}).
- Thermal images are pre-registered crops: MTCNN finds almost no face in them and they take the centred crop;
  photos from other thermal cameras may need their own alignment.
- No evaluation across age, sex, skin tone or ethnicity was possible with these data.

## Data licences

The adapters are derived from the data below, whose terms apply to them (research use); this project's code is
MIT (`LICENSE`).

| data | used for | licence / terms |
|---|---|---|
| AT&T (ORL) faces | controlled + low-quality train / validation / test | AT&T Laboratories Cambridge; credit "Olivetti Research Laboratory" |
| Yale Face Database | controlled + low-quality train / validation / test | Yale University; research use |
| deepface test photos (celebrities) | wild test pack only | deepface project test set (MIT repository); image rights not stated |
| Notre Dame Collection X1 (LWIR) | thermal train / validation / test | via the IQA_LWIR_face_recognition repository (GPL-3.0); Notre Dame's own terms apply |
| PUJ-T360 (LWIR) | thermal train / validation / test | same repository (GPL-3.0) |
| dlib ResNet-29 weights | the frozen network | MIT (as shipped in the face-api npm package 1.7.15) |
| MTCNN weights | face detection and alignment | MIT (as shipped in the facenet-pytorch 2.6.0 wheel) |

## Citation

See `CITATION.cff` at the project root.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afr.model_card", description=__doc__.split("\n")[0])
    parser.add_argument("--adapters-dir", type=Path, default=PROJECT_ROOT / "results" / "adapters")
    parser.add_argument("--output", type=Path, help="default: ADAPTERS_DIR/MODEL_CARD.md")
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the card is not up to date")
    parser.add_argument("--overwrite", action="store_true", help="replace a card whose text differs")
    args = parser.parse_args(argv)
    output = args.output or args.adapters_dir / "MODEL_CARD.md"
    try:
        text = render_model_card(args.adapters_dir)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    current = output.read_text() if output.is_file() else None
    if current == text:
        print(f"{output} is up to date")
        return 0
    if args.check:
        print(f"error: {output} differs from the records; regenerate it with python -m afr.model_card --overwrite",
              file=sys.stderr)
        return 1
    if current is not None and not args.overwrite:
        print(f"error: {output} exists with other text; pass --overwrite to replace it", file=sys.stderr)
        return 2
    atomic_write_text(output, text)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
