"""Domain labels for a pack without any (afr.data.domain_labels): measured on real faces, saved as a side-car folder.

The mixed pack holds the embedded benchmark's aligned chips of the shared ORL and Yale faces (controlled: grey,
uniform background), of the deepface photos (in the wild: colour, any background and light), and degraded copies
(:func:`afr.data.degrade.degrade`: down-sampling, blur, JPEG) of some of both, each kind under identities of its own.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from afr.data.degrade import degrade
from afr.data.domain_labels import (
    DOMAIN_NAMES,
    FEATURES,
    DomainLabelledDataset,
    label_domains,
    load_domain_labels,
    measure_quality,
)
from afr.data.recordio import RecordIODataset, write_pack
from afr.data.subsets import RelabelledSubset, identity_subset
from afr.paths import MissingResourceError

pytestmark = pytest.mark.shared("data/faces/orl", "data/faces/yale", "data/faces/deepface")

CONTROLLED, UNCONSTRAINED, LOW_QUALITY = (DOMAIN_NAMES.index(name) for name in
                                          ("controlled", "unconstrained", "low-quality"))
DEGRADED_PER_KIND = 30  # degraded copies of this many controlled and this many wild chips
#: measured on this pack: 0.925 of the 174 clean chips in their true domain (controlled 102/113 = 0.90, wild 59/61 =
#: 0.97); all 60 degraded copies and 1 of the 174 clean chips labelled low-quality
MIN_CONTROLLED_ACCURACY = 0.85


def _unique_chips(path) -> list[np.ndarray]:
    from afr.data.verification import load_pack

    chips: dict[str, np.ndarray] = {}
    for chip in load_pack(path).images:
        chips.setdefault(hashlib.sha1(chip.tobytes()).hexdigest(), chip)
    return list(chips.values())


@pytest.fixture(scope="module")
def mixed_faces(embedded_benchmark):
    """``(images, identities, true domains)``: every other controlled training chip (ORL + Yale, their identities),
    the 61 deepface chips (in groups of 4 as identities) and degraded copies of 30 of each (identities of their own)."""
    train = embedded_benchmark.train_dataset()
    controlled_code = train.domain_names.index("controlled")
    controlled = [index for index in range(len(train)) if train.domains[index] == controlled_code][::2]
    images = [train[index][0] for index in controlled]
    identities = [int(train.labels[index]) for index in controlled]
    truth = [CONTROLLED] * len(images)
    wild = _unique_chips(embedded_benchmark.bin_path("wild"))
    next_identity = max(identities) + 1
    images += wild
    identities += [next_identity + position // 4 for position in range(len(wild))]
    truth += [UNCONSTRAINED] * len(wild)
    next_identity = max(identities) + 1
    sources = images[:DEGRADED_PER_KIND] + wild[:DEGRADED_PER_KIND]
    images += [degrade(chip, 0, f"copy{position}") for position, chip in enumerate(sources)]
    identities += [next_identity + position // 5 for position in range(len(sources))]
    truth += [LOW_QUALITY] * len(sources)
    return images, np.array(identities), np.array(truth)


@pytest.fixture(scope="module")
def mixed_pack(mixed_faces, tmp_path_factory):
    """The mixed faces as an InsightFace pack, its dataset and the true domain of each dataset index."""
    images, identities, truth = mixed_faces
    root = tmp_path_factory.mktemp("mixed")
    order = write_pack(root / "pack", images, identities)
    return root, RecordIODataset(root / "pack"), truth[order]


@pytest.fixture(scope="module")
def mixed_labelling(mixed_pack):
    root, dataset, _ = mixed_pack
    return label_domains(dataset, root / "labels", progress=False)


def test_measures_of_a_degraded_chip(mixed_faces):
    images, _, truth = mixed_faces
    clean = measure_quality(images[0])
    assert list(clean) == list(FEATURES) and all(np.isfinite(list(clean.values())))
    worse = measure_quality(degrade(images[0], 0, "probe"))
    assert worse["sharpness"] < clean["sharpness"] - 0.5
    assert worse["blockiness"] > clean["blockiness"] * 1.5
    assert clean["saturation"] == 0.0  # ORL/Yale are grey captures
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        measure_quality(np.zeros((8, 8), dtype=np.uint8))


def test_degraded_copies_are_low_quality(mixed_pack, mixed_labelling):
    _, _, truth = mixed_pack
    low = mixed_labelling.codes == LOW_QUALITY
    assert low[truth == LOW_QUALITY].mean() >= 0.9
    assert low[truth != LOW_QUALITY].mean() <= 0.1


def test_controlled_and_wild_faces_mostly_apart(mixed_pack, mixed_labelling):
    _, _, truth = mixed_pack
    clean = truth != LOW_QUALITY
    accuracy = float((mixed_labelling.codes[clean] == truth[clean]).mean())
    print(f"controlled vs unconstrained accuracy on clean real faces: {accuracy:.3f}")
    assert accuracy >= MIN_CONTROLLED_ACCURACY
    assert (mixed_labelling.codes[truth == CONTROLLED] == CONTROLLED).mean() >= 0.8
    assert (mixed_labelling.codes[truth == UNCONSTRAINED] == UNCONSTRAINED).mean() >= 0.85


def test_saved_files_and_load(mixed_pack, mixed_labelling):
    root, dataset, _ = mixed_pack
    out = root / "labels"
    record = json.loads((out / "domains.json").read_text())
    assert record["names"] == list(DOMAIN_NAMES) and record["images"] == len(dataset)
    assert sum(record["counts"].values()) == len(dataset)
    assert set(record["features"]) == set(FEATURES) and record["rule"]["low_quality"]["quantiles"] == [0.25, 0.5, 0.75]
    assert record["pack"]["rec"]["bytes"] == dataset.paths.rec.stat().st_size
    assert len(record["pack"]["rec"]["sha256"]) == 64
    codes = np.load(out / "codes.npy")
    assert codes.dtype == np.int8 and codes.shape == (len(dataset),)
    assert np.load(out / "features.npy").shape == (len(dataset), len(FEATURES))
    for name in DOMAIN_NAMES:
        assert (out / f"samples_{name}.png").read_bytes()[:4] == b"\x89PNG"
    loaded = load_domain_labels(out, dataset)
    np.testing.assert_array_equal(loaded.codes, mixed_labelling.codes)
    assert loaded.names == DOMAIN_NAMES and loaded.counts == mixed_labelling.counts


def test_same_input_same_bytes(mixed_pack, mixed_labelling, tmp_path):
    root, dataset, _ = mixed_pack
    again = label_domains(dataset, tmp_path / "again", progress=False)
    for name in ("codes.npy", "features.npy", "domains.json", "samples_controlled.png"):
        assert (tmp_path / "again" / name).read_bytes() == (root / "labels" / name).read_bytes(), name
    assert again.thresholds == mixed_labelling.thresholds


def test_thresholds_fitted_on_the_fitting_identities_only(mixed_faces, tmp_path):
    """Replacing every image of the other identities (here by degraded copies) moves neither the thresholds nor
    the fitting identities' codes."""
    images, identities, _ = mixed_faces
    fitting = np.unique(identities)[::2]
    others = ~np.isin(identities, fitting)
    changed = [degrade(image, 1, f"other{position}") if other else image
               for position, (image, other) in enumerate(zip(images, others))]
    results = []
    for name, pack_images in (("same", images), ("changed", changed)):
        write_pack(tmp_path / name, pack_images, identities)
        dataset = RecordIODataset(tmp_path / name)
        results.append((dataset, label_domains(dataset, tmp_path / f"{name}_labels", fitting, progress=False)))
    (first, same), (_, changed_labels) = results
    assert same.thresholds == changed_labels.thresholds
    fitted = np.isin(first.labels, fitting)
    np.testing.assert_array_equal(same.codes[fitted], changed_labels.codes[fitted])
    assert (changed_labels.codes[~fitted] == LOW_QUALITY).mean() > (same.codes[~fitted] == LOW_QUALITY).mean()
    with pytest.raises(ValueError, match="does not have"):
        label_domains(first, tmp_path / "unknown", [10_000], progress=False)


def test_refuses_to_overwrite(mixed_pack, mixed_labelling):
    root, dataset, _ = mixed_pack
    codes = (root / "labels" / "codes.npy").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a domain labelling"):
        label_domains(dataset, root / "labels", progress=False)
    assert (root / "labels" / "codes.npy").read_bytes() == codes
    label_domains(dataset, root / "labels", overwrite=True, progress=False)
    assert (root / "labels" / "codes.npy").read_bytes() == codes


def test_load_errors_name_what_is_missing(mixed_pack, mixed_labelling, tmp_path, full_profile_data):
    root, dataset, _ = mixed_pack
    with pytest.raises(MissingResourceError, match=str(tmp_path / "nowhere")):
        load_domain_labels(tmp_path / "nowhere")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "domains.json").write_bytes((root / "labels" / "domains.json").read_bytes())
    with pytest.raises(MissingResourceError, match=r"codes\.npy not found in the domain-label folder .*partial"):
        load_domain_labels(partial)
    with pytest.raises(ValueError, match=r"holds \d+ domain codes but the dataset has 144 images"):
        load_domain_labels(root / "labels", RecordIODataset(full_profile_data / "casia"))


def test_domain_labelled_dataset(full_profile_data, tmp_path):
    pack = RecordIODataset(full_profile_data / "casia")
    labelling = label_domains(pack, tmp_path / "labels", progress=False)
    dataset = DomainLabelledDataset.from_folder(pack, tmp_path / "labels")
    assert dataset.has_domains and dataset.domain_names == DOMAIN_NAMES and len(dataset) == len(pack)
    np.testing.assert_array_equal(dataset.domains, labelling.codes)
    np.testing.assert_array_equal(dataset.labels, pack.labels)
    assert dataset.num_classes == pack.num_classes and dataset.image_size == pack.image_size
    assert dataset.identity_indices(3) == pack.identity_indices(3)
    image, identity, domain = dataset[7]
    assert image.shape == (112, 112, 3) and identity == pack.labels[7] and domain == labelling.codes[7]
    with pytest.raises(ValueError, match="domain codes"):
        DomainLabelledDataset(pack, labelling.codes[:-1], DOMAIN_NAMES)


def test_identity_subset_keeps_the_domain_labels(full_profile_data, embedded_benchmark):
    pack = RecordIODataset(full_profile_data / "casia")
    codes = np.arange(len(pack)) % len(DOMAIN_NAMES)
    labelled = DomainLabelledDataset(pack, codes, DOMAIN_NAMES)
    subset = identity_subset(labelled, 5, seed=0)
    assert isinstance(subset, RelabelledSubset)
    assert subset.domain_names == DOMAIN_NAMES and subset.has_domains
    np.testing.assert_array_equal(subset.domains, codes[subset.indices])
    assert subset[0][2] == codes[subset.indices[0]]
    # a pack that stores its own domains (the embedded benchmark's training pack) keeps them too
    train = embedded_benchmark.train_dataset()
    subset = identity_subset(train, 4, seed=1)
    assert subset.domain_names == train.domain_names and subset.has_domains
    np.testing.assert_array_equal(subset.domains, train.domains[subset.indices])
    # and a pack without domains has none
    plain = identity_subset(pack, 5, seed=0)
    assert plain.domains is None and plain.domain_names is None and not plain.has_domains


def test_cli_end_to_end(full_profile_data, tmp_path, capsys):
    from afr.cli import main

    out = tmp_path / "labels"
    arguments = ["label-domains", "--train-rec", str(full_profile_data / "casia"), "--out", str(out),
                 "--identities", "10", "--no-progress"]
    assert main(arguments) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 144 and summary["fit_identities"] == 10
    assert sum(summary["counts"].values()) == 144 and set(summary["counts"]) == set(DOMAIN_NAMES)
    assert "unconstrained_score" in summary["thresholds"]
    assert json.loads((out / "domains.json").read_text())["fit_identities"]["count"] == 10
    load_domain_labels(out, RecordIODataset(full_profile_data / "casia"))
    codes = (out / "codes.npy").read_bytes()

    assert main(arguments) == 2  # an existing labelling, refused before any work
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "already holds a domain labelling" in err and "\n" not in err
    assert main([*arguments, "--overwrite"]) == 0
    assert (out / "codes.npy").read_bytes() == codes
    capsys.readouterr()

    assert main(["label-domains", "--train-rec", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: pack file") and "missing" in err and not (tmp_path / "x").exists()
    synthetic = tmp_path / "synthetic"
    assert main(["label-domains", "--train-rec", str(full_profile_data / "casia"), "--out", str(synthetic),
                 "--synthetic-low-quality", "0.25", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["synthetic_low_quality_images"] == 36 and summary["counts"]["low-quality"] >= 36
    assert main(["label-domains", "--train-rec", str(full_profile_data / "casia"), "--out", str(tmp_path / "y"),
                 "--synthetic-low-quality", "1"]) == 2
    assert "--synthetic-low-quality" in capsys.readouterr().err and not (tmp_path / "y").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["label-domains", "--train-rec", str(full_profile_data / "casia"), "--out", str(blocker / "out")]) == 2
    assert "error:" in capsys.readouterr().err


def test_synthetic_low_quality_identities_are_degraded_on_the_fly(full_profile_data, tmp_path):
    from afr.data.domain_labels import apply_thresholds

    pack = RecordIODataset(full_profile_data / "casia")
    labelling = label_domains(pack, tmp_path / "labels", progress=False, synthetic_low_quality=0.25, synthetic_seed=3)
    marked = np.load(tmp_path / "labels" / "degrade.npy")
    chosen = np.unique(pack.labels[marked])
    assert len(chosen) == 6 and marked.sum() == 36  # a quarter of the 24 identities, every image of each
    np.testing.assert_array_equal(marked, np.isin(pack.labels, chosen))
    assert (labelling.codes[marked] == LOW_QUALITY).all()
    record = json.loads((tmp_path / "labels" / "domains.json").read_text())
    assert record["synthetic_low_quality"]["identities"] == chosen.tolist()
    assert sum(record["measured_counts"].values()) == len(pack)

    dataset = DomainLabelledDataset.from_folder(pack, tmp_path / "labels")
    flagged, kept = int(np.flatnonzero(marked)[0]), int(np.flatnonzero(~marked)[0])
    degraded = dataset[flagged][0]
    assert not np.array_equal(degraded, pack[flagged][0]) and np.array_equal(degraded, dataset[flagged][0])
    assert np.array_equal(dataset[kept][0], pack[kept][0])
    # the degraded images are low-quality by the measured rule too
    measures = np.array([[measure_quality(dataset[int(index)][0])[name] for name in FEATURES]
                         for index in np.flatnonzero(marked)[:12]])
    assert (apply_thresholds(measures, labelling.thresholds) == LOW_QUALITY).all()
    other = label_domains(pack, tmp_path / "other", progress=False, synthetic_low_quality=0.25, synthetic_seed=4)
    assert not np.array_equal(other.degrade, marked)
    (tmp_path / "labels" / "degrade.npy").unlink()
    with pytest.raises(MissingResourceError, match="degrade.npy not found"):
        load_domain_labels(tmp_path / "labels")


def test_an_interrupted_overwrite_leaves_no_mixed_labelling(full_profile_data, tmp_path, monkeypatch):
    import afr.data.domain_labels as domain_labels

    pack = RecordIODataset(full_profile_data / "casia")
    label_domains(pack, tmp_path / "labels", progress=False)
    original, written = domain_labels.atomic_write_bytes, []

    def write_then_fail(path, data):
        written.append(path.name)
        if len(written) == 2:  # after the new codes.npy, before domains.json
            raise OSError("disk full")
        return original(path, data)

    monkeypatch.setattr(domain_labels, "atomic_write_bytes", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        label_domains(pack, tmp_path / "labels", overwrite=True, progress=False, synthetic_low_quality=0.5)
    with pytest.raises(MissingResourceError, match="domains.json not found"):
        load_domain_labels(tmp_path / "labels", pack)
    monkeypatch.undo()
    # a codes file that is not the one domains.json was written with is refused
    label_domains(pack, tmp_path / "labels", overwrite=True, progress=False)
    codes = np.load(tmp_path / "labels" / "codes.npy")
    np.save(tmp_path / "labels" / "codes.npy", (codes + 1) % len(DOMAIN_NAMES))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        load_domain_labels(tmp_path / "labels", pack)
