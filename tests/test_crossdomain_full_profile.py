"""Notebook 05's full profile in miniature: stage 1 on a CASIA-layout pack (ORL people), stage 2 on a folder of real
thermal face crops (the embedded benchmark's Notre Dame and PUJ-T360 training chips, one sub-folder per identity),
forgetting on five ``lfw.bin ... cplfw.bin`` packs, a local DINOv2 checkpoint; the notebook itself under papermill
with the parameters ``make full`` gives it."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from afr.data.folder import ImageFolderDataset
from afr.data.full_profile import LazyChips, folder_split
from afr.experiments.baseline import FULL_BENCHMARKS
from afr.experiments.crossdomain import (CrossDomainSettings, ThermalSplit, adapt, load_data, support_batch,
                                         thermal_split)
from afr.losses.margin import CosFaceMargin
from afr.meta import inner_adapt
from afr.models import create_backbone
from afr.paths import PROJECT_ROOT, MissingResourceError

pytestmark = pytest.mark.usefixtures("embedded_benchmark")


@pytest.fixture(scope="module")
def full_settings(full_profile_data, thermal_folder):
    return CrossDomainSettings(data_profile="full", backbone="tiny-dinov2", train_rec=str(full_profile_data / "casia"),
                               num_identities=12, bins_dir=str(full_profile_data / "bins"),
                               target_dir=str(thermal_folder), rank=2, device="cpu", progress=False)


def test_target_test_identities_stay_out_of_training_and_every_seed_gets_the_same_test_pack(full_settings):
    data = load_data(full_settings)
    collections = data.train.collections
    assert set(collections) == {"casia", "thermal"}
    assert len(np.unique(data.train.labels[collections == "casia"])) == 12  # the seeded CASIA subset
    assert not set(data.train.labels[collections == "casia"]) & set(data.train.labels[collections == "thermal"])
    folder = ImageFolderDataset(full_settings.target_dir)
    train_ids, test_ids = folder_split(folder.labels, None)
    assert len(test_ids) == 49 // 2 and not set(train_ids) & set(test_ids)
    trained = {f"thermal/{folder.classes[label]}" for label in train_ids}
    assert set(data.identities[collections == "thermal"]) == trained
    # no test-pack chip is a training chip (the chips are distinct photographs)
    training_chips = {data.train.chips[int(i)].tobytes() for i in np.flatnonzero(collections == "thermal")}
    assert not {image.tobytes() for image in data.test_packs["thermal"].images} & training_chips
    assert 0 < data.test_packs["thermal"].issame.sum() < len(data.test_packs["thermal"])
    assert list(data.test_packs) == ["thermal", *FULL_BENCHMARKS]
    # the split and pairs are fixed (seed 0), whatever the run's seed
    other = load_data(dataclasses.replace(full_settings, seed=3))
    assert np.array_equal(other.test_packs["thermal"].issame, data.test_packs["thermal"].issame)
    assert all(np.array_equal(a, b) for a, b in zip(other.test_packs["thermal"].images, data.test_packs["thermal"].images))
    # k images of each target training identity, the rest unlabelled, all from the target folder's training identities
    split = thermal_split(data, 3, seed=1, collections=full_settings.shift.target)
    assert set(collections[split.indices]) == {"thermal"} == set(collections[list(split.unlabelled)])
    assert all(len(indices) == 3 for indices in split.support.values())


def test_each_missing_full_profile_input_is_named(full_settings, tmp_path):
    for change, named in ((dict(train_rec=None), "train_rec"), (dict(target_dir=None), "target_dir"),
                          (dict(target_dir=str(tmp_path / "nowhere")), "nowhere"), (dict(bins_dir=None), "bins_dir"),
                          (dict(bins_dir=str(tmp_path)), "lfw.bin, cfp_fp.bin"),
                          (dict(train_rec=str(tmp_path)), "train.rec"),
                          (dict(target_bins=(str(tmp_path / "und.bin"),)), "und.bin")):
        with pytest.raises(MissingResourceError, match=named):
            load_data(dataclasses.replace(full_settings, **change))
    with pytest.raises(ValueError, match="one direction"):
        dataclasses.replace(full_settings, direction="visible->lowquality")


def test_lazy_chips_decode_the_right_sample_at_the_chip_size(full_profile_data, thermal_folder):
    folder = ImageFolderDataset(thermal_folder)
    chips = LazyChips([(folder, [5, 0]), (folder, [7, 9])], size=112)
    assert len(chips) == 4

    def chip(index):
        return cv2.resize(folder[index][0], (112, 112), interpolation=cv2.INTER_AREA)

    assert chips[2].shape == (112, 112, 3)
    assert all(np.array_equal(chips[position], chip(index)) for position, index in enumerate((5, 0, 7, 9)))
    assert np.array_equal(chips[-1], chip(9))
    with pytest.raises(IndexError):
        chips[4]


def _split(identities: int, shots: int) -> ThermalSplit:
    return ThermalSplit(shots, {100 + way: list(range(way * shots, (way + 1) * shots)) for way in range(identities)}, ())


def test_an_adaptation_batch_is_identity_balanced_part_of_the_support():
    split = _split(10, 6)
    positions, ways = support_batch(split, 12, seed=0, step=0)
    assert len(positions) == 12 and set(positions) <= set(range(60))
    identities = split.labels[positions]  # each batch way is one support identity, 4 images each, ways 0..2
    assert ways.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert all(len(set(identities[ways == way].tolist())) == 1 for way in range(3))
    assert len(set(identities.tolist())) == 3
    again, _ = support_batch(split, 12, seed=0, step=0)
    later, _ = support_batch(split, 12, seed=0, step=1)
    assert np.array_equal(again, positions) and not np.array_equal(later, positions)
    whole, labels = support_batch(split, None, seed=0, step=0)
    assert np.array_equal(whole, np.arange(60)) and torch.equal(labels, split.labels)
    assert len(support_batch(_split(4, 1), 3, seed=0, step=0)[0]) == 3  # k = 1: one image per identity


def test_a_batched_adaptation_step_is_inner_adapt_on_that_batch():
    torch.manual_seed(0)
    backbone = create_backbone("tiny-dinov2")
    from afr.adapters.lora import LoraSettings, apply_lora

    lora = apply_lora(backbone, LoraSettings(r=2, alpha=2.0))
    for name, parameter in lora.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.1)
    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(24)]
    from afr.experiments.crossdomain import CrossDomainData
    from afr.experiments.maml_init import MamlData

    data = CrossDomainData(MamlData(chips, np.repeat(np.arange(4), 6), np.array(["thermal"] * 24), None, 28),
                           np.array(["x"] * 24, dtype=object), {})
    split = _split(4, 6)
    settings = CrossDomainSettings(backbone="tiny-dinov2", method="lora", adapt_steps=1, adapt_lr=0.05,
                                   adapt_batch=8, progress=False)
    params = {name: p.detach().clone() for name, p in lora.named_parameters() if p.requires_grad}
    ours, _ = adapt(lora, params, lambda tensors: tensors, data, split, settings)
    positions, ways = support_batch(split, 8, settings.seed, 0)
    theirs = inner_adapt(lora, params, data.train.images([split.indices[p] for p in positions]), ways, 2,
                         CosFaceMargin(), steps=1, lr=settings.adapt_lr, first_order=True)
    for name in params:
        torch.testing.assert_close(ours[name], theirs[name].detach(), rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(ours[name], params[name]) for name in params)


def _make_full_notebook_05_parameters(**variables: str) -> dict:
    """The parameters ``make full`` passes notebook 05: its command line read from ``make -n`` (which runs nothing),
    parsed by the chain (:mod:`afr.experiments.full_chain`) as ``make full`` runs it."""
    import shlex

    from afr.experiments.full_chain import _parse, chain_steps

    command = ["make", "-n", "full", *(f"{name}={value}" for name, value in variables.items())]
    printed = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout
    line = next(line for line in printed.replace("\\\n", " ").splitlines() if "afr.experiments.full_chain" in line)
    words = shlex.split(line)
    steps = chain_steps(_parse(words[words.index("afr.experiments.full_chain") + 1:]))
    return json.loads(next(step for step in steps if step.name == "notebook 05").command[-3])


@pytest.mark.slow
def test_notebook_05_runs_the_full_profile_as_make_full_calls_it(full_profile_data, thermal_folder, local_hf_models,
                                                                 tmp_path, monkeypatch):
    import papermill

    for variable, folder in (("AFR_RESULTS", "results"), ("AFR_RUNS", "runs"), ("AFR_FIGURES", "figures")):
        monkeypatch.setenv(variable, str(tmp_path / folder))
    parameters = _make_full_notebook_05_parameters(
        DATA=full_profile_data / "casia", BINS=full_profile_data / "bins", WEIGHTS=local_hf_models / "dinov2-small",
        THERMAL=thermal_folder, IDENTITIES="12", SEEDS="0 1", SHOTS="2 4", META_STEPS="2", ADAPT_STEPS="2",
        ADAPT_BATCH="8")
    assert parameters["data_profile"] == "full" and parameters["shots"] == [2, 4] and parameters["seeds"] == [0, 1]
    assert set(parameters) <= set(CrossDomainSettings.field_names())
    defaults = _make_full_notebook_05_parameters(DATA="d", BINS="b", WEIGHTS="w", THERMAL="t")
    assert defaults["shots"] == [10, 50, 100] and defaults["seeds"] == [0, 1, 2]
    # smaller than a GPU run, for 2 CPU cores: fewer rows, rank 2, a small unlabelled batch
    parameters.update(methods=["zero-shot", "lora", "dalora+maml", "dalora+maml+contrastive+semi"], rank=2,
                      unlabelled_batch=4, device="cpu")
    papermill.execute_notebook(str(PROJECT_ROOT / "notebooks" / "05_crossdomain.ipynb"), str(tmp_path / "05.ipynb"),
                               parameters=parameters, cwd=str(PROJECT_ROOT / "notebooks"), progress_bar=False,
                               log_output=False)
    table = pd.read_csv(tmp_path / "results" / "tables" / "crossdomain.csv")
    assert set(table["source"].fillna("")) == {"", "casia"} and set(table["target"].fillna("")) == {"", "thermal"}
    assert set(table["domain"]) == {"thermal", *FULL_BENCHMARKS}
    adapted = table[table["method"] == "dalora+maml+contrastive+semi"]
    assert sorted(set(adapted["shots"])) == [2, 4] and sorted(set(adapted["seed"])) == [0, 1]
    records = [json.loads(path.read_text()) for path in (tmp_path / "results" / "crossdomain").glob("*.json")]
    lora = next(record for record in records if record["method"] == "lora" and record["seed"] == 1)
    k4 = lora["adaptation"]["k4"]
    assert k4["adapt_batch"] == 8 and k4["labelled_images"] == 4 * k4["identities"] and 0 < k4["identities"] <= 25
    assert (tmp_path / "figures" / "crossdomain_dinov2-vits14_2seed_full_lr3e-04.png").is_file()  # the rate: not 1e-3
