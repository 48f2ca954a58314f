"""Collections of the real embedded benchmark: per-record collection names and re-created thermal packs."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from afr.data.collections import COLLECTIONS, collection_identities, collection_pack, training_collections
from afr.data.embedded import EmbeddedBenchmark, EmbeddedConfig
from afr.data.pairs import balanced_pairs
from afr.data.verification import load_pack

pytestmark = pytest.mark.shared("data/faces/thermal")


def _pack_files(rows: list[dict], config: EmbeddedConfig, max_pairs: int) -> list[str]:
    """The original file of every image of a pack built from ``rows`` (the build's pair layout)."""
    pairs = balanced_pairs([row["identity"] for row in rows], max_pairs, config.seed, config.n_folds)
    return [rows[i]["file"] for a, b, _ in pairs for i in (a, b)]


def _copy(benchmark: EmbeddedBenchmark, root: Path, faces_root: str | None = None) -> EmbeddedBenchmark:
    """A benchmark at ``root`` holding only the manifest, so that its cache starts empty."""
    root.mkdir(parents=True)
    shutil.copy(benchmark.root / "manifest.csv", root / "manifest.csv")
    config = EmbeddedConfig(**{**benchmark.config.fingerprint(), "output_dir": str(root),
                               "faces_root": faces_root or benchmark.config.faces_root})
    return EmbeddedBenchmark(root, config)


def test_training_collections_match_the_manifest_per_source_and_domain(embedded_benchmark):
    names = training_collections(embedded_benchmark)
    dataset = embedded_benchmark.train_dataset()
    assert len(names) == len(dataset) and set(names.tolist()) == set(COLLECTIONS)
    # per (source, domain) of the manifest's training rows: low-quality chips of every source form one collection
    by_source_domain = Counter((row["source"], row["domain"])
                               for row in embedded_benchmark.manifest() if row["split"] == "train")
    expected = Counter({"lowquality": sum(n for (_, domain), n in by_source_domain.items() if domain == "lowquality")})
    expected.update({source: n for (source, domain), n in by_source_domain.items() if domain != "lowquality"})
    assert Counter(names.tolist()) == expected
    assert expected["lowquality"] == expected["orl"] + expected["yale"]  # the wild set has no training chips
    # record by record: a low-quality record carries the low-quality domain code, the others their source's
    domains = dataset.domains
    for record in (0, len(dataset) // 3, len(dataset) - 1):
        assert (names[record] == "lowquality") == (dataset.domain_names[domains[record]] == "lowquality")


def test_training_collections_refuse_a_manifest_that_misses_records(embedded_benchmark, tmp_path):
    copy = _copy(embedded_benchmark, tmp_path / "bench")
    (copy.root / "train").symlink_to(embedded_benchmark.train_dir)
    lines = (copy.root / "manifest.csv").read_text().splitlines()
    dropped = next(i for i, line in enumerate(lines) if line.endswith(",0"))
    (copy.root / "manifest.csv").write_text("\n".join(lines[:dropped] + lines[dropped + 1:]) + "\n")
    with pytest.raises(ValueError, match=r"does not cover 1 of the \d+ training records \(first: 0\)"):
        training_collections(copy)


def test_collection_identities_are_sorted_and_split_disjoint(embedded_benchmark):
    splits = {split: collection_identities(embedded_benchmark, "thermal_und", split) for split in ("train", "val", "test")}
    assert all(names == sorted(names) and names for names in splits.values())
    assert all(name.startswith("und/") for names in splits.values() for name in names)
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["val"]))
    assert not set(splits["train"]) & set(splits["val"])
    with pytest.raises(ValueError, match="unknown collection 'deepface'"):
        collection_identities(embedded_benchmark, "deepface", "test")


def test_und_test_pack_holds_only_und_test_identities_and_the_build_chips_exactly(embedded_benchmark, tmp_path):
    config = embedded_benchmark.config
    pack = collection_pack(_copy(embedded_benchmark, tmp_path / "bench"), "thermal_und", "test")  # re-created now
    manifest = embedded_benchmark.manifest()
    und_rows = [row for row in manifest if row["source"] == "thermal_und" and row["split"] == "test"]
    files = _pack_files(und_rows, config, config.max_pairs)
    assert len(pack.images) == len(files) == 2 * len(pack.issame) == 2 * config.max_pairs
    for fold in np.array_split(pack.issame, config.n_folds):
        assert 2 * fold.sum() == len(fold)

    identity_of = {row["file"]: row["identity"] for row in manifest if row["domain"] == "thermal"}
    pack_identities = {identity_of[file] for file in files}
    assert pack_identities <= set(collection_identities(embedded_benchmark, "thermal_und", "test"))
    held_in = {row["identity"] for row in manifest if row["split"] in ("train", "val")}
    assert not pack_identities & held_in
    sidecar = json.loads(pack.path.with_suffix(".json").read_text())
    assert sidecar["files"] == files and sidecar["sha256"] == pack.sha256
    assert pack.issame.tolist() == [identity_of[files[2 * i]] == identity_of[files[2 * i + 1]]
                                    for i in range(len(pack.issame))]

    # the same files inside the benchmark's own thermal test pack (UND and PUJ together): byte-equal chips
    thermal = load_pack(embedded_benchmark.bin_path("thermal"))
    thermal_rows = [row for row in manifest if row["domain"] == "thermal" and row["split"] == "test"]
    chip_in_thermal = dict(zip(_pack_files(thermal_rows, config, config.max_pairs), thermal.images))
    shared = [(file, image) for file, image in zip(files, pack.images) if file in chip_in_thermal]
    assert len({file for file, _ in shared}) >= 100
    for file, image in shared:
        assert image.shape == (config.image_size, config.image_size, 3)
        assert image.tobytes() == chip_in_thermal[file].tobytes(), file


def test_cached_pack_is_reused_and_rebuilt_when_the_benchmark_settings_change(embedded_benchmark, tmp_path):
    copy = _copy(embedded_benchmark, tmp_path / "bench")
    first = collection_pack(copy, "thermal_puj", "val", max_pairs=60)
    assert first.path == copy.root / "collections" / "val" / "thermal_puj-60pairs.bin" and len(first) == 60
    stamp = os.stat(first.path).st_mtime_ns
    again = collection_pack(copy, "thermal_puj", "val", max_pairs=60)
    assert os.stat(first.path).st_mtime_ns == stamp  # read back, not rebuilt
    assert again.sha256 == first.sha256 and again.issame.tolist() == first.issame.tolist()
    assert all(np.array_equal(a, b) for a, b in zip(again.images, first.images))
    default = collection_pack(copy, "thermal_puj", "val")  # the benchmark's max_pairs: its own file
    assert default.path.name == "thermal_puj.bin" and len(default) > 60

    sidecar = again.path.with_suffix(".json")
    stale = json.loads(sidecar.read_text())
    stale["benchmark"]["seed"] += 1  # as if the pack was built before the benchmark was rebuilt with seed 1
    sidecar.write_text(json.dumps(stale))
    rebuilt = collection_pack(copy, "thermal_puj", "val", max_pairs=60)
    assert os.stat(first.path).st_mtime_ns != stamp and rebuilt.sha256 == first.sha256


def test_only_centre_cropped_collections_and_held_out_splits_can_be_packed(embedded_benchmark):
    for collection in ("orl", "yale", "lowquality"):
        with pytest.raises(ValueError, match="without the detector: only the centre-cropped thermal") as error:
            collection_pack(embedded_benchmark, collection)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="'val' or 'test'"):
        collection_pack(embedded_benchmark, "thermal_und", "train")
    with pytest.raises(ValueError, match="unknown collection 'thermal'"):
        collection_pack(embedded_benchmark, "thermal")


def test_missing_original_file_is_named(embedded_benchmark, tmp_path):
    copy = _copy(embedded_benchmark, tmp_path / "bench", faces_root=str(tmp_path / "faces"))
    first = next(row["file"] for row in embedded_benchmark.manifest()
                 if row["source"] == "thermal_und" and row["split"] == "test")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'faces' / first} not found")):
        collection_pack(copy, "thermal_und", "test")
    assert not (copy.root / "collections" / "test" / "thermal_und.bin").exists()
