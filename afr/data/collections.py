"""The embedded benchmark's collections: which collection every training record comes from, and
verification packs of a single thermal collection.

The embedded benchmark groups its images by imaging *domain* (``controlled``, ``wild``, ``thermal``,
``lowquality``); leave-one-collection-out studies need the finer *collection*: ORL and Yale (the
controlled domain), Notre Dame and PUJ-T360 (the thermal domain), and the low-quality copies of
controlled/wild chips, which form one collection of their own (they share identity labels with the
ORL/Yale chips they were made from). A manifest row's collection is ``"lowquality"`` for a
low-quality chip and its ``source`` otherwise.

:func:`collection_pack` builds the verification pack of one thermal collection's validation or test
identities. Thermal chips were never detected (they are the centred crop of the registered original,
see :func:`afr.align.center_crop_face`), so they are re-created from the original files exactly as
the build made them, without the detector. Packs are cached under ``<benchmark>/collections/<split>/``
with a JSON sidecar (the benchmark settings they were built from, the pack's SHA-256 and the
original file of every pack image), and rebuilt when the benchmark was rebuilt with other settings.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from afr.data.embedded import SPLITS, EmbeddedBenchmark
from afr.data.images import read_image
from afr.data.pairs import balanced_pairs
from afr.data.verification import VerificationPack, load_pack, write_bin
from afr.io import atomic_write_text

__all__ = ["COLLECTIONS", "training_collections", "collection_identities", "collection_pack"]

#: the collections of the training pack (the wild photos are test-only, so they form none)
COLLECTIONS = ("orl", "yale", "lowquality", "thermal_puj", "thermal_und")
#: the splits a collection pack can be made of (training identities are what the model learns from)
PACK_SPLITS = ("val", "test")


def _collection_of(row: dict) -> str:
    """The collection of a manifest row: ``lowquality`` for a degraded chip, its source otherwise."""
    return "lowquality" if row["domain"] == "lowquality" else row["source"]


def _check_collection(collection: str) -> None:
    if collection not in COLLECTIONS:
        raise ValueError(f"unknown collection {collection!r}; the collections are {', '.join(COLLECTIONS)}")


def training_collections(benchmark: EmbeddedBenchmark) -> np.ndarray:
    """The collection name of every training-pack record (index = record), from the manifest.

    Raises ValueError if the manifest's ``record`` column does not cover each record of the training
    pack exactly once, or names a collection outside :data:`COLLECTIONS`.
    """
    n_records = len(benchmark.train_dataset())
    names: list[str | None] = [None] * n_records
    for row in benchmark.manifest():
        if row["record"] == "":
            continue
        record = int(row["record"])
        if not 0 <= record < n_records or names[record] is not None:
            raise ValueError(f"{benchmark.root / 'manifest.csv'}: record {record} is out of range or listed twice "
                             f"(the training pack has {n_records} records)")
        names[record] = _collection_of(row)
    missing = [record for record, name in enumerate(names) if name is None]
    if missing:
        raise ValueError(f"{benchmark.root / 'manifest.csv'} does not cover {len(missing)} of the {n_records} "
                         f"training records (first: {missing[0]}); rebuild the embedded benchmark")
    unknown = sorted(set(names) - set(COLLECTIONS))
    if unknown:
        raise ValueError(f"training records of unexpected collections {unknown}; expected {', '.join(COLLECTIONS)}")
    return np.array(names)


def _rows(benchmark: EmbeddedBenchmark, collection: str, split: str) -> list[dict]:
    """Manifest rows of ``collection`` in ``split``, in manifest (= build) order."""
    _check_collection(collection)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return [row for row in benchmark.manifest() if row["split"] == split and _collection_of(row) == collection]


def collection_identities(benchmark: EmbeddedBenchmark, collection: str, split: str) -> list[str]:
    """The identity names of ``collection`` in ``split`` ("train", "val" or "test"), sorted."""
    return sorted({row["identity"] for row in _rows(benchmark, collection, split)})


def _cache_paths(benchmark: EmbeddedBenchmark, collection: str, split: str, max_pairs: int) -> tuple[Path, Path]:
    """The cached pack and its sidecar; a non-default ``max_pairs`` is part of the name."""
    suffix = "" if max_pairs == benchmark.config.max_pairs else f"-{max_pairs}pairs"
    pack = benchmark.root / "collections" / split / f"{collection}{suffix}.bin"
    return pack, pack.with_suffix(".json")


def collection_pack(
    benchmark: EmbeddedBenchmark, collection: str, split: str = "test", max_pairs: int | None = None
) -> VerificationPack:
    """The verification pack of one thermal collection's ``split`` ("val" or "test") identities.

    Pairs are ``balanced_pairs`` over the collection's chips of that split (``max_pairs`` or the
    benchmark's, its seed and fold count), laid out as the benchmark's own packs; the chips are the
    centre crops of the original files under ``benchmark.config.faces_root``, made exactly as the
    build made them. The pack is cached at ``<root>/collections/<split>/<collection>.bin`` (with
    ``-<max_pairs>pairs`` before ``.bin`` for a non-default ``max_pairs``) and reused while its
    sidecar matches the benchmark's settings and the pack's SHA-256.

    Raises ValueError for a collection the detector would be needed for (only
    ``config.center_crop_sources`` can be re-created) and FileNotFoundError naming a missing original.
    """
    config = benchmark.config
    _check_collection(collection)
    if collection not in config.center_crop_sources:
        raise ValueError(f"cannot re-create collection {collection!r} without the detector: only the centre-cropped "
                         f"thermal collections ({', '.join(config.center_crop_sources)}) can be")
    if split not in PACK_SPLITS:
        raise ValueError(f"a collection pack is made of 'val' or 'test' identities, got split {split!r}")
    max_pairs = config.max_pairs if max_pairs is None else int(max_pairs)
    pack_path, sidecar_path = _cache_paths(benchmark, collection, split, max_pairs)
    settings = {"benchmark": config.fingerprint(), "max_pairs": max_pairs}

    if pack_path.is_file() and sidecar_path.is_file():
        sidecar = json.loads(sidecar_path.read_text())
        if {key: sidecar.get(key) for key in settings} == settings:
            pack = load_pack(pack_path)
            if pack.sha256 == sidecar.get("sha256"):
                return pack

    from afr.align import center_crop_face

    rows = _rows(benchmark, collection, split)
    if not rows:
        raise ValueError(f"collection {collection!r} has no {split} images in {benchmark.root / 'manifest.csv'}")
    faces_root = Path(config.faces_root)
    for row in rows:
        if not (faces_root / row["file"]).is_file():
            raise FileNotFoundError(f"{faces_root / row['file']} not found: the {collection} {split} pack re-creates "
                                    f"its chips from the original files under faces_root ({faces_root})")
    pairs = balanced_pairs([row["identity"] for row in rows], max_pairs, config.seed, config.n_folds)
    used = sorted({i for a, b, _ in pairs for i in (a, b)})
    chips = {i: center_crop_face(read_image(faces_root / rows[i]["file"]), config.image_size, config.geometry)
             for i in used}
    digest = write_bin(pack_path, [chips[i] for a, b, _ in pairs for i in (a, b)], [same for *_, same in pairs])
    files = [rows[i]["file"] for a, b, _ in pairs for i in (a, b)]
    atomic_write_text(sidecar_path, json.dumps({**settings, "sha256": digest, "files": files}, indent=1) + "\n")
    return load_pack(pack_path)
