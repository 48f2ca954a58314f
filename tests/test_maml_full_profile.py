"""Notebook 04's settings on the full profile: CASIA-WebFace's labelled domains are the tasks, a folder of face crops
is the target; the embedded defaults (and the committed runs' tags) stay as they were."""
from __future__ import annotations

import pytest

from afr.experiments.settings.maml import EMBEDDED_SOURCES, EMBEDDED_TARGET, MamlExperimentSettings
from afr.validation import SettingsError


def test_the_embedded_defaults_resolve_to_the_collections_the_committed_runs_used():
    settings = MamlExperimentSettings()
    assert (settings.target, settings.sources) == (EMBEDDED_TARGET, EMBEDDED_SOURCES)
    assert settings == MamlExperimentSettings(target="thermal_und", sources=EMBEDDED_SOURCES)
    assert settings.for_run("maml", 0).tag == MamlExperimentSettings(sources=EMBEDDED_SOURCES).for_run("maml", 0).tag


def test_the_full_profile_needs_its_target_folder_and_takes_no_embedded_collection():
    with pytest.raises(SettingsError, match="--target-dir"):
        MamlExperimentSettings(data_profile="full", train_rec="/data/casia")
    with pytest.raises(SettingsError, match="target_dir folder, collection 'thermal'"):
        MamlExperimentSettings(data_profile="full", train_rec="/data/casia", target_dir="/t", target="thermal_und")
    settings = MamlExperimentSettings(data_profile="full", train_rec="/data/casia", target_dir="/t")
    assert (settings.target, settings.sources) == ("thermal", ())
    with pytest.raises(SettingsError, match="target_dir"):
        MamlExperimentSettings(target_dir="/t")  # a full-profile input on the embedded profile


def test_a_source_that_no_casia_image_is_labelled_with_is_refused(full_profile_data, thermal_folder, tmp_path):
    from afr.data.domain_labels import label_domains
    from afr.data.recordio import RecordIODataset
    from afr.experiments.maml_init import load_data, source_collections

    casia = full_profile_data / "casia"
    labelling = label_domains(RecordIODataset(casia), tmp_path / "labels", progress=False)
    settings = MamlExperimentSettings(data_profile="full", train_rec=str(casia), target_dir=str(thermal_folder),
                                      domain_labels=str(tmp_path / "labels"))
    data = load_data(settings)
    labelled = {name for name, count in labelling.counts.items() if count}
    assert set(source_collections(settings, data)) == labelled
    assert set(data.collections.tolist()) == labelled | {"thermal"}
    with pytest.raises(SettingsError, match="not domains of the CASIA-WebFace subset"):
        load_data(MamlExperimentSettings(data_profile="full", train_rec=str(casia), target_dir=str(thermal_folder),
                                         domain_labels=str(tmp_path / "labels"), sources=("orl",)))
