"""Notebook 06's ablations on the full profile in miniature: a CASIA-layout pack of real faces with the domains of
``label-domains`` (the training pack and the MAML starts' tasks), the five InsightFace packs, a one-layer DINOv2 of
the published width; the K schemes that split embedded collections are refused; the embedded tags stay."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from afr.experiments.settings.ablations import (FULL_EXPERT_SCHEMES, START_FIELDS, AblationSettings,
                                                expert_schemes)
from afr.validation import SettingsError

CASIA = "/data/casia"


def _full_options(data, models, labels):
    return ["--data-profile", "full", "--train-rec", str(data / "casia"), "--bins-dir", str(data / "bins"),
            "--backbone", "dinov2-vits14", "--weights", str(models / "dinov2-small"), "--val-identities", "4",
            "--domain-labels", str(labels)]


@pytest.fixture
def scratch_outputs(tmp_path, monkeypatch):
    for name in ("results", "runs", "figures"):
        monkeypatch.setenv(f"AFR_{name.upper()}", str(tmp_path / name))
    return tmp_path


@pytest.fixture(scope="module")
def casia_labels(full_profile_data, tmp_path_factory):
    """The miniature pack's domain labels: all three domains (a third of the identities synthetic low-quality)."""
    from afr.data.domain_labels import label_domains
    from afr.data.recordio import RecordIODataset

    out = tmp_path_factory.mktemp("ablation_labels") / "domain_labels"
    labelling = label_domains(RecordIODataset(full_profile_data / "casia"), out, progress=False,
                              synthetic_low_quality=0.3)
    assert all(labelling.counts.values())
    return out


def test_the_full_profile_refuses_the_k_schemes_of_embedded_collections_before_any_work():
    with pytest.raises(SettingsError, match=r"K = 4, 5 split the embedded benchmark's collections"):
        AblationSettings(data_profile="full", train_rec=CASIA, expert_counts=(2, 3, 4, 5))
    with pytest.raises(SettingsError, match=r"K = 5 split"):
        AblationSettings(data_profile="full", train_rec=CASIA, experts=5)
    settings = AblationSettings(data_profile="full", train_rec=CASIA, expert_counts=(1, 2, 3))
    assert tuple(expert_schemes(settings.data_profile)) == (1, 2, 3) == tuple(FULL_EXPERT_SCHEMES)
    AblationSettings(expert_counts=(2, 3, 4, 5))  # the embedded profile keeps every scheme
    with pytest.raises(SettingsError, match="val_identities"):
        AblationSettings(val_identities=10)  # a full-profile input on the embedded profile


def test_the_full_schemes_relabel_the_labellers_three_domains():
    from afr.data.domain_labels import DOMAIN_NAMES

    for scheme in FULL_EXPERT_SCHEMES.values():
        assert tuple(scheme) == DOMAIN_NAMES
    assert set(FULL_EXPERT_SCHEMES[2].values()) == {"good-quality", "low-quality"}
    assert FULL_EXPERT_SCHEMES[3] == {name: name for name in DOMAIN_NAMES}


def test_full_profile_settings_enter_the_run_and_start_tags_and_the_embedded_tags_stay():
    # the first recipe (the default before the fitted one), as the committed demo record of results/ablations ran
    embedded = AblationSettings(centre_embeddings=False, head_init="random", augment=True).full_model(0)
    # the committed tags (results/ablations): the full profile's fields at their defaults change nothing
    assert embedded.tag == "ablations_dalora-k3-r8+maml+contrastive_seed0_baeb64bf"
    assert embedded.start_tag == "ablations_maml-start-r8-inner3_seed0_075cbb3a"
    assert embedded.start_settings() == {name: getattr(embedded, name) for name in START_FIELDS}
    assert "data_profile" not in embedded.table_columns()
    full = AblationSettings(data_profile="full", train_rec=CASIA).full_model(0)
    assert full.tag != embedded.tag and full.start_tag != embedded.start_tag
    assert full.table_columns()["data_profile"] == "full"
    for change in ({"num_identities": 1000}, {"val_identities": 50}, {"domain_labels": "/labels"}):
        other = dataclasses.replace(full, **change)
        assert other.tag != full.tag and other.start_tag != full.start_tag, change
    # the test packs change the runs, not the starts
    packs = dataclasses.replace(full, benchmarks=("lfw",))
    assert packs.tag != full.tag and packs.start_tag == full.start_tag


def test_the_training_pack_and_the_maml_chips_are_one_casia_subset_with_labelled_domains(
        full_profile_data, casia_labels):
    from afr.data.benchmarks import FULL_BENCHMARKS
    from afr.experiments.ablations import expert_names, load_data, training_view

    settings = AblationSettings(data_profile="full", train_rec=str(full_profile_data / "casia"),
                                bins_dir=str(full_profile_data / "bins"), val_identities=4,
                                domain_labels=str(casia_labels), n_way=2, k_shot=1, q_query=1)
    data = load_data(settings)
    train = data.baseline.train
    assert set(data.baseline.test_packs) == set(FULL_BENCHMARKS) and set(data.baseline.val_packs) == {"holdout"}
    assert train.num_classes == 20 and len(data.chips.chips) == len(train)
    domains = np.array(train.domain_names)[np.asarray(train.domains)]
    assert np.array_equal(data.collections, domains) and np.array_equal(data.chips.labels, train.labels)
    assert set(data.episode_collections()) == set(domains)
    # a chip is the training pack's image (degraded where the labelling says so)
    low = int(np.flatnonzero(domains == "low-quality")[0])
    assert np.array_equal(data.chips.chips[low], train[low][0])
    assert training_view(data, 1) is train and training_view(data, 3) is train
    two = training_view(data, 2)
    assert tuple(two.domain_names) == expert_names(2, "full") == ("good-quality", "low-quality")
    assert list(np.array(two.domain_names)[two.domains]) == [FULL_EXPERT_SCHEMES[2][d] for d in domains]
    # an episode needs n_way identities of k_shot + q_query images in one domain: said before any work
    with pytest.raises(ValueError, match="labelled domains of the CASIA-WebFace subset.*n_way=50"):
        load_data(dataclasses.replace(settings, n_way=50))


def test_ablations_on_the_full_profile_without_domain_labels_name_the_command_before_any_work(
        full_profile_data, local_hf_models, scratch_outputs, tmp_path, capsys):
    from afr.cli import main

    missing = tmp_path / "no-labels"
    code = main(["ablations", *_full_options(full_profile_data, local_hf_models, missing), "--no-progress",
                 "--device", "cpu"])
    error = capsys.readouterr().err
    assert code != 0
    assert f"domain_labels: {missing} not found" in error and "python -m afr label-domains" in error
    assert not (scratch_outputs / "results" / "ablations").exists() and not (scratch_outputs / "runs").exists()


@pytest.mark.slow
def test_ablations_train_on_casia_with_labelled_domains_and_score_the_five_packs(
        full_profile_data, local_hf_models, casia_labels, scratch_outputs, capsys):
    from afr.cli import main
    from afr.data.benchmarks import FULL_BENCHMARKS
    from afr.experiments.records import read_table

    code = main(["ablations", *_full_options(full_profile_data, local_hf_models, casia_labels),
                 "--groups", "component", "experts", "--components", "lora", "dalora", "dalora+maml",
                 "--expert-counts", "2", "--epochs", "1", "--batch-size", "16", "--meta-steps", "2",
                 "--n-way", "2", "--k-shot", "1", "--q-query", "1", "--no-progress", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    records = [json.loads(path.read_text()) for path in (scratch_outputs / "results" / "ablations").glob("*.json")]
    runs = {record["tag"]: record for record in records if record["method"] != "maml-start"}
    starts = [record for record in records if record["method"] == "maml-start"]
    assert set(runs) == set(summary["runs"]) and len(runs) == 4  # lora, dalora, dalora+maml, K = 2 (+maml)
    for record in runs.values():
        assert record["settings"]["data_profile"] == "full" and set(record["test"]) == set(FULL_BENCHMARKS)
        assert any(key.startswith("val/holdout/") for key in record["train"]["history"][-1])
    # one MAML start (shared by the K = 2 run and dalora+maml), its tasks the labelled domains
    (start,) = starts
    assert set(start["collections"]) == {"controlled", "unconstrained", "low-quality"}
    assert start["settings"]["data_profile"] == "full" and start["meta_training"]["steps"] == 2
    rows = read_table("ablations")
    assert set(rows["data_profile"]) == {"full"}
    assert set(rows.loc[rows["split"] == "test", "domain"]) == set(FULL_BENCHMARKS)
    assert set(rows.loc[rows["split"] == "val", "domain"]) == {"holdout"}
    assert set(rows.loc[rows["group"] == "component", "cell"]) == {"lora", "dalora", "dalora+maml"}
    assert set(rows.loc[rows["group"] == "experts", "cell"].astype(int)) == {2}
