"""The full (GPU) profile end to end on a CPU: a CASIA-layout pack, the five benchmark packs, local HF models.

Everything a GPU user's run touches is here in miniature and goes through the same command: the pack is
written with the project's RecordIO writer in InsightFace's layout (``train.rec/.idx/property``), the
packs are named ``lfw.bin ... cplfw.bin``, the DINOv2 and CLIP models are saved to local folders with
the published widths (one layer each, so they run in seconds), and ``python -m afr baseline
--data-profile full`` trains one epoch with DataLoader workers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from afr.experiments.baseline import BaselineSettings
from afr.experiments.benchmark_data import FULL_BENCHMARKS, _full_training_data
from afr.paths import PROJECT_ROOT
from conftest import TRAIN_IDENTITIES


def test_validation_identities_are_held_out_of_the_training_subset(full_profile_data):
    settings = BaselineSettings(data_profile="full", train_rec=str(full_profile_data / "casia"), num_identities=12,
                                val_identities=6)
    train, val_pack = _full_training_data(settings)
    assert train.num_classes == 12
    labels_in_pack = np.array(train.dataset.labels)
    trained = set(train.original_labels.tolist())
    assert len(trained) == 12 and len(set(range(TRAIN_IDENTITIES)) - trained) == 12
    # every validation chip belongs to an identity outside the training subset
    held_out_chips = {train.dataset[i][0].tobytes() for i in np.flatnonzero(~np.isin(labels_in_pack, list(trained)))}
    assert all(image.tobytes() in held_out_chips for image in val_pack.images)
    assert 0 < val_pack.issame.sum() < len(val_pack)


@pytest.mark.slow
@pytest.mark.parametrize("backbone, folder", [("dinov2-vits14", "dinov2-small"), ("clip-vitb16", "clip-vit-base-patch16")])
def test_python_m_afr_baseline_full_profile_runs_one_epoch_with_workers(full_profile_data, local_hf_models, tmp_path,
                                                                        backbone, folder):
    models = local_hf_models
    env = {**os.environ, "AFR_RESULTS": str(tmp_path / "results"), "AFR_RUNS": str(tmp_path / "runs")}
    command = [sys.executable, "-m", "afr", "baseline", "--data-profile", "full", "--backbone", backbone,
               "--weights", str(models / folder), "--train-rec", str(full_profile_data / "casia"),
               "--bins-dir", str(full_profile_data / "bins"), "--num-identities", "12", "--val-identities", "6",
               "--rank", "2", "--epochs", "1", "--batch-size", "8", "--num-workers", "2", "--no-progress"]
    finished = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads(finished.stdout)
    assert result["settings"]["num_workers"] == 2
    assert result["train"]["identities"] == 12 and result["train"]["steps"] == 9  # 72 images / 8
    assert {"val/holdout/accuracy", "val/holdout/auc"} <= set(result["train"]["history"][0])
    for method in ("zero-shot", "lora"):
        assert sorted(result["test"][method]) == sorted(FULL_BENCHMARKS)
        for metrics in result["test"][method].values():
            assert 0.0 <= metrics["auc"] <= 1.0 and len(metrics["sha256"]) == 64
    assert (tmp_path / "results" / f"{result['tag']}.json").is_file()
    assert (tmp_path / "runs" / result["tag"] / "adapter" / "adapter_model.safetensors").is_file()
