"""The embedded face benchmark: a small, real, multi-domain benchmark that runs on a CPU in minutes.

Built from the shared collections (ORL + Yale = ``controlled``, deepface = ``wild``, Notre Dame and
PUJ-T360 LWIR = ``thermal``, and a seeded degradation of controlled/wild chips = ``lowquality``):

* identity-disjoint train / validation / test splits per collection (the wild set is test-only: its
  280 published pairs are the test). Validation identities are carved from what is not test, so the
  test identities do not depend on ``val_fraction``;
* one InsightFace RecordIO training pack with ``[identity, domain]`` labels;
* one InsightFace verification ``.bin`` per test domain in ``test/`` and per validation domain in
  ``val/``, balanced same/different pairs laid out in 10 fold blocks. Per-epoch validation and every
  choice of a setting use ``val/``; ``test/`` is scored once, at the end of a run;
* few-shot subsets (k images per identity and domain) as record indices;
* ``manifest.csv`` (one row per image: where it went and whether the detector found the face) and
  ``stats.json``.
"""
from __future__ import annotations

import csv
import json
import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from afr.data.degrade import degrade
from afr.data.images import read_image
from afr.data.pairs import balanced_pairs, interleave_folds
from afr.data.sources import DOMAINS, RawFace, list_all, read_deepface_pairs
from afr.paths import faces_root as default_faces_root
from afr.paths import processed_root
from afr.validation import Rule, check_rules

log = logging.getLogger(__name__)

TEST_DOMAINS = ("controlled", "wild", "thermal", "lowquality")
#: the wild photos are test-only (their published pairs), so they have no validation pack
VAL_DOMAINS = ("controlled", "thermal", "lowquality")
SPLITS = ("train", "val", "test")
#: one row per chip; ``record`` is the training-pack index (empty outside the training split)
MANIFEST_COLUMNS = ("file", "source", "identity", "domain", "split", "detected", "chip", "record")


#: what the numeric settings of :class:`EmbeddedConfig` accept (the fields are ``build-embedded``'s options);
#: the fractions' own ranges are checked in ``__post_init__``
CONFIG_RULES = {
    "seed": Rule(kind="integer", low=0),
    "image_size": Rule(kind="integer", low=32),  # MTCNN's 5 points into a chip; the backbones take 112 or 150
    "test_fraction": Rule(low=0, strict=True, high=1),
    "val_fraction": Rule(low=0, strict=True, high=1),
    "max_pairs": Rule(kind="integer", low=2),
    "few_shot_k": Rule(kind="integer", low=1, many=True),
    "n_folds": Rule(kind="integer", low=1),
}


@dataclass
class EmbeddedConfig:
    """How the embedded benchmark is built; stored as ``config.json`` beside it."""

    output_dir: str = ""
    faces_root: str = ""
    seed: int = 0
    image_size: int = 150
    geometry: str = "dlib"  # "dlib" (150x150 chip for the ResNet-29) or "arcface" (112x112 for ViTs)
    test_fraction: float = 0.4
    val_fraction: float = 0.2  # of each collection's identities, taken from those that are not test
    max_pairs: int = 600  # per test domain (wild: its 280 published pairs)
    few_shot_k: tuple[int, ...] = (1, 2, 4)
    n_folds: int = 10
    # Collections whose images are already registered face crops: MTCNN (trained on visible light)
    # finds almost no thermal faces (4/410 UND, 3 of them false), so these take the centred crop.
    center_crop_sources: tuple[str, ...] = ("thermal_und", "thermal_puj")

    def __post_init__(self) -> None:
        check_rules(asdict(self), CONFIG_RULES)  # before any work: ``build-embedded --few-shot-k -1`` writes nothing
        self.output_dir = str(self.output_dir or processed_root() / "embedded")
        self.faces_root = str(self.faces_root or default_faces_root())
        self.few_shot_k = tuple(int(k) for k in self.few_shot_k)
        self.center_crop_sources = tuple(self.center_crop_sources)
        if self.geometry not in ("dlib", "arcface"):
            raise ValueError(f"geometry must be 'dlib' or 'arcface', got {self.geometry!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 < self.val_fraction < 1.0 - self.test_fraction:
            raise ValueError(f"val_fraction must be in (0, 1 - test_fraction), got {self.val_fraction}")

    def fingerprint(self) -> dict:
        """What decides the content (everything but where it is written)."""
        data = asdict(self)
        data.pop("output_dir")
        data["few_shot_k"] = list(self.few_shot_k)
        data["center_crop_sources"] = list(self.center_crop_sources)
        return data


@dataclass
class EmbeddedBenchmark:
    """A built benchmark on disk."""

    root: Path
    config: EmbeddedConfig
    stats: dict = field(default_factory=dict)
    #: built by this call of :func:`build_embedded_benchmark` (False: an up-to-date build on disk, reused)
    built_now: bool = False

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    def bin_path(self, domain: str, split: str = "test") -> Path:
        """The verification pack of ``domain`` in ``split`` ("test" or "val")."""
        domains = {"test": TEST_DOMAINS, "val": VAL_DOMAINS}.get(split)
        if domains is None:
            raise ValueError(f"split must be 'test' or 'val', got {split!r}")
        if domain not in domains:
            raise KeyError(f"no {split} pack for domain {domain!r}; the {split} packs are {', '.join(domains)}")
        return self.root / split / f"{domain}.bin"

    @property
    def bins(self) -> dict[str, Path]:
        """The test packs by domain."""
        return {domain: self.bin_path(domain) for domain in TEST_DOMAINS}

    @property
    def val_bins(self) -> dict[str, Path]:
        """The validation packs by domain (identities disjoint from training and test)."""
        return {domain: self.bin_path(domain, "val") for domain in VAL_DOMAINS}

    def train_dataset(self, transform=None):
        from afr.data.recordio import RecordIODataset

        return RecordIODataset(self.train_dir, transform=transform)

    def few_shot_indices(self, k: int) -> list[int]:
        table = json.loads((self.root / "fewshot.json").read_text())
        if str(k) not in table:
            raise KeyError(f"no few-shot subset with k={k}; built: {sorted(map(int, table))}")
        return table[str(k)]

    def identity_names(self) -> list[str]:
        return json.loads((self.root / "train_identities.json").read_text())

    def manifest(self) -> list[dict]:
        with (self.root / "manifest.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))


def load_embedded(root: str | Path | None = None) -> EmbeddedBenchmark:
    """Open a benchmark built by :func:`build_embedded_benchmark` (default ``data/processed/embedded``)."""
    root = Path(root or processed_root() / "embedded")
    config_path, stats_path = root / "config.json", root / "stats.json"
    if not stats_path.is_file():
        raise FileNotFoundError(
            f"embedded benchmark not found at {root} (no stats.json): build it with notebooks/01_data.ipynb "
            "or `python -m afr build-embedded`"
        )
    config = EmbeddedConfig(**{**json.loads(config_path.read_text()), "output_dir": str(root)})
    return EmbeddedBenchmark(root, config, json.loads(stats_path.read_text()))


def split_identities(faces: list[RawFace], test_fraction: float, seed: int,
                     val_fraction: float = 0.0) -> dict[str, str]:
    """Identity -> "train" / "val" / "test", drawn per collection with a seeded permutation.

    The first ``round(test_fraction * n)`` identities of the permutation are test, the next
    ``round(val_fraction * n)`` validation, the rest train: the test identities are the same whatever
    ``val_fraction`` is.
    """
    split: dict[str, str] = {}
    by_source: dict[str, list[str]] = defaultdict(list)
    for face in faces:
        if face.identity not in by_source[face.source]:
            by_source[face.source].append(face.identity)
    for offset, source in enumerate(sorted(by_source)):
        identities = sorted(by_source[source])
        if source == "deepface":  # the wild set is the published pair list: test only
            split.update({identity: "test" for identity in identities})
            continue
        order = np.random.default_rng([seed, offset]).permutation(len(identities))
        n_test = int(round(test_fraction * len(identities)))
        n_val = int(round(val_fraction * len(identities)))
        for rank, index in enumerate(order):
            split[identities[index]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split


def _wild_pairs(faces: list[RawFace], root: Path, n_folds: int) -> list[tuple[int, int, bool]]:
    """The published deepface pairs as indices into ``faces`` (the wild test images), fold-ordered."""
    index = {face.path.name: i for i, face in enumerate(faces)}
    pairs = read_deepface_pairs(root)
    positives = [(index[p.file_a], index[p.file_b]) for p in pairs if p.same]
    negatives = [(index[p.file_a], index[p.file_b]) for p in pairs if not p.same]
    return interleave_folds(positives, negatives, n_folds)


def _few_shot(labels: np.ndarray, domains: np.ndarray, ks: tuple[int, ...], seed: int) -> dict[str, list[int]]:
    """Per k: up to k record indices per (identity, domain), seeded; nested (k-subset within larger k)."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (label, domain) in enumerate(zip(labels.tolist(), domains.tolist())):
        groups[(label, domain)].append(i)
    orders = {key: rng.permutation(members).tolist() for key, members in sorted(groups.items())}
    return {str(k): sorted(i for order in orders.values() for i in order[:k]) for k in ks}


def make_chips(faces: list[RawFace], config: EmbeddedConfig, aligner=None, progress: bool = False
               ) -> tuple[list[np.ndarray], list[bool], dict[str, Counter]]:
    """The benchmark's face chip of every raw face: ``(chips, detected, raw image sizes per source)``.

    Collections in ``config.center_crop_sources`` take the centred crop; the others MTCNN + 5-point alignment
    (centred crop where no face is found). The default aligner's MTCNN detects on a fixed number of torch threads
    (``afr.align.mtcnn.DETECTION_THREADS``), so the chips (and every pack built from them) are bit-identical whatever
    thread count the process runs with.
    """
    from afr.align import FaceAligner, center_crop_face

    aligner = aligner or FaceAligner(geometry=config.geometry, size=config.image_size)
    chips: list[np.ndarray] = []
    detected: list[bool] = []
    raw_sizes: dict[str, Counter] = defaultdict(Counter)
    for face in tqdm(faces, desc="detect + align", disable=not progress):
        image = read_image(face.path)
        raw_sizes[face.source][f"{image.shape[1]}x{image.shape[0]}"] += 1
        if face.source in config.center_crop_sources:
            chips.append(center_crop_face(image, config.image_size, config.geometry))
            detected.append(False)
            continue
        aligned = aligner.align(image)
        chips.append(aligned.chip)
        detected.append(bool(aligned.detected))
    return chips, detected, raw_sizes


def build_embedded_benchmark(
    config: EmbeddedConfig | None = None, aligner=None, rebuild: bool = False, progress: bool = True
) -> EmbeddedBenchmark:
    """Build (or reuse, if built with the same settings) the embedded benchmark; returns it."""
    from afr.data.recordio import write_pack
    from afr.data.verification import write_bin

    config = config or EmbeddedConfig()
    root = Path(config.output_dir)
    config_path = root / "config.json"
    if not rebuild and (root / "stats.json").is_file() and config_path.is_file():
        if json.loads(config_path.read_text()) == config.fingerprint():
            log.info("embedded benchmark at %s is up to date", root)
            return load_embedded(root)
    faces_dir = Path(config.faces_root)
    faces = list_all(faces_dir)
    split = split_identities(faces, config.test_fraction, config.seed, config.val_fraction)

    chips, detected, raw_sizes = make_chips(faces, config, aligner, progress)

    # Low-quality domain: a degraded copy of every controlled and wild chip, same identity and split.
    rows = [
        {"file": str(face.path.relative_to(faces_dir)), "source": face.source, "identity": face.identity,
         "domain": face.domain, "split": split[face.identity], "detected": int(detected[i]), "chip": i}
        for i, face in enumerate(faces)
    ]
    for i, face in enumerate(faces):
        if face.domain in ("controlled", "wild"):
            chips.append(degrade(chips[i], config.seed, rows[i]["file"]))
            rows.append({**rows[i], "domain": "lowquality", "chip": len(chips) - 1})

    # Training pack: train identities of every domain, labels [identity, domain].
    train_rows = [row for row in rows if row["split"] == "train"]
    identity_names = sorted({row["identity"] for row in train_rows})
    label_of = {name: label for label, name in enumerate(identity_names)}
    train_rows.sort(key=lambda row: (label_of[row["identity"]], DOMAINS.index(row["domain"]), row["file"]))
    labels = np.array([label_of[row["identity"]] for row in train_rows])
    domains = np.array([DOMAINS.index(row["domain"]) for row in train_rows])
    root.mkdir(parents=True, exist_ok=True)
    write_pack(root / "train", [chips[row["chip"]] for row in train_rows], labels, domains=domains,
               image_size=(config.image_size, config.image_size), domain_names=DOMAINS)
    for record, row in enumerate(train_rows):
        row["record"] = record
    (root / "train_identities.json").write_text(json.dumps(identity_names, indent=1))
    few_shot = _few_shot(labels, domains, config.few_shot_k, config.seed)
    (root / "fewshot.json").write_text(json.dumps(few_shot))

    # Verification packs: one per test domain (test/) and one per validation domain (val/).
    pair_counts: dict[str, dict] = {"test": {}, "val": {}}
    for split_name, domains_of_split in (("test", TEST_DOMAINS), ("val", VAL_DOMAINS)):
        folder = root / split_name
        folder.mkdir(exist_ok=True)
        for stale in set(folder.glob("*.bin")) - {folder / f"{d}.bin" for d in domains_of_split}:
            stale.unlink()  # a pack an earlier layout of this derived folder left behind
        for domain in domains_of_split:
            chosen = [row for row in rows if row["split"] == split_name and row["domain"] == domain]
            if domain == "wild":
                pairs = _wild_pairs([faces[row["chip"]] for row in chosen], faces_dir, config.n_folds)
            else:
                pairs = balanced_pairs([row["identity"] for row in chosen], config.max_pairs,
                                       config.seed, config.n_folds)
            images = [chips[chosen[i]["chip"]] for a, b, _ in pairs for i in (a, b)]
            write_bin(folder / f"{domain}.bin", images, [same for _, _, same in pairs])
            counts = {"pairs": len(pairs), "same": sum(s for *_, s in pairs),
                      "images": len({i for a, b, _ in pairs for i in (a, b)})}
            pair_counts[split_name][domain] = counts

    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)

    stats = _statistics(rows, raw_sizes, pair_counts, few_shot, config)
    (root / "stats.json").write_text(json.dumps(stats, indent=1))
    config_path.write_text(json.dumps(config.fingerprint(), indent=1))
    return EmbeddedBenchmark(root, config, stats, built_now=True)


def _statistics(rows, raw_sizes, pair_counts, few_shot, config) -> dict:
    per_domain: dict[str, dict] = {}
    for domain in DOMAINS:
        for split in SPLITS:
            chosen = [row for row in rows if row["domain"] == domain and row["split"] == split]
            per_domain.setdefault(domain, {})[split] = {
                "identities": len({row["identity"] for row in chosen}), "images": len(chosen)}
    originals = [row for row in rows if row["domain"] != "lowquality"]
    detection = {}
    for source in sorted({row["source"] for row in originals}):
        chosen = [row for row in originals if row["source"] == source]
        found = sum(row["detected"] for row in chosen)
        by_design = source in config.center_crop_sources
        detection[source] = {"images": len(chosen), "detector": "none (registered crop)" if by_design else "mtcnn",
                             "detected": found, "center_crop": len(chosen) - found}
    return {
        "domains": per_domain,
        "detection": detection,
        "raw_image_sizes": {source: dict(sizes.most_common()) for source, sizes in raw_sizes.items()},
        "verification_pairs": pair_counts,
        "train_records": sum(1 for row in rows if row["split"] == "train"),
        "train_identities": len({row["identity"] for row in rows if row["split"] == "train"}),
        "val_identities": len({row["identity"] for row in rows if row["split"] == "val"}),
        "few_shot_records": {k: len(v) for k, v in few_shot.items()},
        "chip": {"geometry": config.geometry, "size": config.image_size},
        "seed": config.seed,
    }
