"""Notebook 03's recipe on the full profile in miniature: a CASIA-layout pack of real faces with the domains of
``label-domains``, the five InsightFace packs, a one-layer DINOv2 of the published width."""
from __future__ import annotations

import json

import pytest

from afr.cli import main
from afr.experiments.settings.dalora import DaLoraExperimentSettings
from afr.validation import SettingsError


def _full_options(data, models):
    return ["--data-profile", "full", "--train-rec", str(data / "casia"), "--bins-dir", str(data / "bins"),
            "--backbone", "dinov2-vits14", "--weights", str(models / "dinov2-small"), "--val-identities", "4"]


@pytest.fixture
def scratch_outputs(tmp_path, monkeypatch):
    for name in ("results", "runs", "figures"):
        monkeypatch.setenv(f"AFR_{name.upper()}", str(tmp_path / name))
    return tmp_path


def test_oracle_gating_is_refused_on_the_full_profile():
    with pytest.raises(SettingsError, match="dalora-oracle.*carry no domain"):
        DaLoraExperimentSettings(data_profile="full", train_rec="/data/casia")
    DaLoraExperimentSettings(data_profile="full", train_rec="/data/casia", methods=("lora", "dalora-classifier"))


def test_dalora_on_the_full_profile_without_domain_labels_names_the_command_before_any_work(
        full_profile_data, local_hf_models, scratch_outputs, tmp_path, capsys):
    missing = tmp_path / "no-labels"
    code = main(["dalora", *_full_options(full_profile_data, local_hf_models), "--methods", "lora",
                 "--domain-labels", str(missing), "--no-progress", "--device", "cpu"])
    error = capsys.readouterr().err
    assert code != 0
    assert f"domain_labels: {missing} not found" in error and "python -m afr label-domains" in error
    assert not (scratch_outputs / "results" / "dalora").exists() and not (scratch_outputs / "runs").exists()


@pytest.mark.slow
def test_dalora_trains_on_casia_with_labelled_domains_and_scores_the_five_packs(
        full_profile_data, local_hf_models, scratch_outputs, tmp_path, capsys):
    from afr.data.benchmarks import FULL_BENCHMARKS
    from afr.experiments.records import read_table

    labels = tmp_path / "domain_labels"
    assert main(["label-domains", "--train-rec", str(full_profile_data / "casia"), "--out", str(labels),
                 "--synthetic-low-quality", "0.3", "--no-progress"]) == 0
    names = json.loads(capsys.readouterr().out)["counts"]
    code = main(["dalora", *_full_options(full_profile_data, local_hf_models), "--domain-labels", str(labels),
                 "--methods", "lora", "dalora-classifier", "--epochs", "1", "--batch-size", "16", "--no-progress",
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    records = {json.loads(path.read_text())["method"]: json.loads(path.read_text())
               for path in (scratch_outputs / "results" / "dalora").glob("*.json")}
    assert {"lora", "dalora-classifier"} <= set(records)
    dalora = records["dalora-classifier"]
    assert set(dalora["test"]) == set(FULL_BENCHMARKS)
    assert dalora["settings"]["data_profile"] == "full" and dalora["settings"]["domain_labels"] == str(labels)
    # one expert per labelled domain, the router's gates measured on every benchmark pack
    assert set(dalora["gates"]["mean"]["lfw"]) == {name for name, count in names.items() if count}
    assert any(key.startswith("val/holdout/") for key in dalora["train"]["history"][-1])
    rows = read_table("dalora")
    assert set(rows["data_profile"]) == {"full"}
    assert set(rows.loc[rows["split"] == "test", "domain"]) == set(FULL_BENCHMARKS)


def test_every_run_of_the_grid_trains_on_the_same_identities_whatever_the_seed_setting(full_profile_data, tmp_path):
    """The runs' tags carry their own seeds, not the notebook's ``seed``: the grid's data must not depend on it."""
    import numpy as np

    from afr.data.domain_labels import label_domains
    from afr.data.recordio import RecordIODataset
    from afr.experiments.dalora_vs_lora import load_data

    casia = full_profile_data / "casia"
    label_domains(RecordIODataset(casia), tmp_path / "labels", progress=False)
    data = {seed: load_data(DaLoraExperimentSettings(
        data_profile="full", train_rec=str(casia), bins_dir=str(full_profile_data / "bins"), val_identities=4,
        domain_labels=str(tmp_path / "labels"), methods=("lora",), seed=seed)) for seed in (0, 1)}
    assert np.array_equal(data[0].train.indices, data[1].train.indices)
    assert np.array_equal(data[0].val_packs["holdout"].issame, data[1].val_packs["holdout"].issame)
    assert all(np.array_equal(a, b) for a, b in zip(data[0].val_packs["holdout"].images,
                                                     data[1].val_packs["holdout"].images))
