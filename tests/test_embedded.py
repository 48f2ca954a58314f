"""The embedded benchmark built from the real shared faces: splits, packs, labels, few-shot subsets."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict

import numpy as np
import pytest

from afr.data.embedded import (MANIFEST_COLUMNS, TEST_DOMAINS, VAL_DOMAINS, EmbeddedConfig, build_embedded_benchmark,
                               split_identities)
from afr.data.recordio import RecordIODataset
from afr.data.sources import DOMAINS, list_all
from afr.data.verification import load_pack


def test_train_validation_and_test_identities_are_disjoint_in_every_domain(embedded_benchmark):
    rows = embedded_benchmark.manifest()
    by_domain = defaultdict(lambda: defaultdict(set))
    for row in rows:
        by_domain[row["domain"]][row["split"]].add(row["identity"])
    for domain in VAL_DOMAINS:
        assert by_domain[domain]["train"] and by_domain[domain]["val"] and by_domain[domain]["test"], domain
    # across domains too: an identity is in one split everywhere
    union = {split: set().union(*(splits[split] for splits in by_domain.values())) for split in ("train", "val", "test")}
    assert not union["train"] & union["test"]
    assert not union["val"] & union["train"] and not union["val"] & union["test"]
    assert not by_domain["wild"]["train"] and not by_domain["wild"]["val"]  # test-only (its published pairs)


def _chip_hashes(images) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images}


def test_validation_packs_share_no_chip_with_training_or_test(embedded_benchmark):
    """The packs behind per-epoch validation hold only held-out identities' chips (none trained on or tested)."""
    dataset = RecordIODataset(embedded_benchmark.train_dir)
    train = _chip_hashes(dataset[i][0] for i in range(len(dataset)))
    test = set().union(*(_chip_hashes(load_pack(path).images) for path in embedded_benchmark.bins.values()))
    for domain, path in embedded_benchmark.val_bins.items():
        val = _chip_hashes(load_pack(path).images)
        # (Yale holds a few pixel-identical photos of one person, so distinct chips can be fewer than images)
        assert 0.95 * embedded_benchmark.stats["verification_pairs"]["val"][domain]["images"] <= len(val)
        assert not val & train, domain
        assert not val & test, domain
    assert sorted(embedded_benchmark.val_bins) == sorted(VAL_DOMAINS)
    assert {p.name for p in (embedded_benchmark.root / "test").glob("*.bin")} == {f"{d}.bin" for d in TEST_DOMAINS}


def test_manifest_has_each_column_once_and_records_only_for_training_rows(embedded_benchmark):
    header = (embedded_benchmark.root / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header == list(MANIFEST_COLUMNS)
    for row in embedded_benchmark.manifest():
        assert (row["record"] != "") == (row["split"] == "train"), row


def test_every_shared_image_is_in_the_manifest_once_and_counted(embedded_benchmark):
    rows = embedded_benchmark.manifest()
    originals = [row for row in rows if row["domain"] != "lowquality"]
    assert sorted(row["file"] for row in originals) == sorted(
        str(face.path.relative_to(embedded_benchmark.config.faces_root)) for face in list_all())
    detection = embedded_benchmark.stats["detection"]
    for source, counts in detection.items():
        assert counts["detected"] + counts["center_crop"] == counts["images"]
    assert detection["deepface"]["detected"] >= 58
    assert detection["thermal_und"]["detector"].startswith("none")


def test_training_pack_labels_and_domains_match_the_manifest(embedded_benchmark):
    dataset = RecordIODataset(embedded_benchmark.train_dir)
    names = embedded_benchmark.identity_names()
    train_rows = sorted((row for row in embedded_benchmark.manifest() if row["split"] == "train"),
                        key=lambda row: int(row["record"]))
    assert len(dataset) == len(train_rows) == embedded_benchmark.stats["train_records"]
    assert dataset.num_classes == len(names) == embedded_benchmark.stats["train_identities"]
    assert dataset.has_domains and dataset.domain_names == DOMAINS
    for index in (0, len(dataset) // 2, len(dataset) - 1):
        image, label, domain = dataset[index]  # the domain travels with every image
        assert image.shape == (150, 150, 3) and image.dtype == np.uint8
        assert names[label] == train_rows[index]["identity"]
        assert DOMAINS[domain] == DOMAINS[dataset.domains[index]] == train_rows[index]["domain"]
    assert set(np.unique(dataset.domains)) == {DOMAINS.index(d) for d in ("controlled", "thermal", "lowquality")}


@pytest.mark.parametrize("domain", TEST_DOMAINS)
def test_verification_packs_are_balanced_in_every_fold(embedded_benchmark, domain):
    pack = load_pack(embedded_benchmark.bin_path(domain))
    counts = embedded_benchmark.stats["verification_pairs"]["test"][domain]
    assert len(pack.issame) == counts["pairs"] and len(pack.images) == 2 * counts["pairs"]
    expected = 280 if domain == "wild" else embedded_benchmark.config.max_pairs
    assert counts["pairs"] == expected
    for fold in np.array_split(pack.issame, 10):
        assert fold.sum() * 2 == len(fold)  # every InsightFace fold is half same, half different
    assert all(image.shape == (150, 150, 3) for image in pack.images[:10])


def test_few_shot_subsets_are_nested_and_hold_at_most_k_per_identity_and_domain(embedded_benchmark):
    dataset = RecordIODataset(embedded_benchmark.train_dir)
    previous: set[int] = set()
    for k in embedded_benchmark.config.few_shot_k:
        indices = embedded_benchmark.few_shot_indices(k)
        per_group = Counter((int(dataset.labels[i]), int(dataset.domains[i])) for i in indices)
        assert max(per_group.values()) <= k
        assert previous <= set(indices)
        previous = set(indices)
    with pytest.raises(KeyError, match="k=3"):
        embedded_benchmark.few_shot_indices(3)


def test_identity_split_depends_on_the_seed_only_and_validation_never_moves_the_test_identities():
    faces = list_all()
    assert split_identities(faces, 0.4, seed=0, val_fraction=0.2) == split_identities(faces, 0.4, 0, 0.2)
    assert split_identities(faces, 0.4, seed=0, val_fraction=0.2) != split_identities(faces, 0.4, 1, 0.2)
    without, with_val = split_identities(faces, 0.4, seed=0), split_identities(faces, 0.4, 0, 0.2)
    assert {i for i, s in without.items() if s == "test"} == {i for i, s in with_val.items() if s == "test"}
    assert "val" not in without.values() and "val" in with_val.values()


def test_same_settings_reuse_the_built_benchmark(embedded_benchmark):
    stats_path = embedded_benchmark.root / "stats.json"
    before = os.stat(stats_path).st_mtime_ns
    config = EmbeddedConfig(**{**json.loads((embedded_benchmark.root / "config.json").read_text()),
                               "output_dir": str(embedded_benchmark.root)})
    again = build_embedded_benchmark(config, progress=False)
    assert os.stat(stats_path).st_mtime_ns == before
    assert again.stats == embedded_benchmark.stats
