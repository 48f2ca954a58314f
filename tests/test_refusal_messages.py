"""Refusals speak the command line's language and name the file: --resume / --overwrite, not fit(resume=True);
an untrusted or damaged checkpoint or adapter file is named, in one short line, without torch's advice to load
it with weights_only=False."""
from __future__ import annotations

import json

import pytest
import torch

from afr.adapters.dalora import DaLoraSettings, apply_dalora, load_dalora, save_dalora
from afr.adapters.lora import (
    ADAPTER_SETTINGS_NAME,
    ADAPTER_WEIGHTS_NAME,
    AdapterMismatchError,
    LoraSettings,
    apply_lora,
    load_adapter,
    save_adapter,
)
from afr.meta import MetaConfig, TaskBatch, meta_train
from afr.meta.maml import CHECKPOINT_NAME
from afr.models.factory import create_backbone
from afr.train.checkpoint import CheckpointError, load_checkpoint
from afr.train.engine import RunExistsError


class _Unsafe:
    """Any class outside torch's allow-list: a pickle holding it is refused by weights_only loading."""


def _task(seed: int) -> TaskBatch:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3)
    return TaskBatch(support_images=torch.rand(6, 3, 28, 28, generator=generator), support_labels=labels.repeat(2),
                     query_images=torch.rand(6, 3, 28, 28, generator=generator), query_labels=labels.repeat(2),
                     n_classes=3, domain="thermal")


def _tiny_lora(seed: int = 0, r: int = 2):
    torch.manual_seed(seed)
    return apply_lora(create_backbone("tiny-dinov2"), LoraSettings(r=r, alpha=float(r)))


def _assert_no_unsafe_advice(message: str) -> None:
    assert "weights_only" not in message and "if you trust" not in message


def test_an_existing_meta_training_run_names_the_cli_flags(tmp_path):
    config = MetaConfig(inner_steps=1, meta_steps=1, tasks_per_step=1, first_order=True)
    meta_train(_tiny_lora(), lambda step: [_task(step)], config, tmp_path, progress=False)
    with pytest.raises(RunExistsError) as refused:
        meta_train(_tiny_lora(), lambda step: [_task(step)], config, tmp_path, progress=False)
    assert "--resume" in str(refused.value) and "--overwrite" in str(refused.value)


def test_a_checkpoint_holding_objects_is_not_trusted_and_the_message_names_it(tmp_path):
    path = tmp_path / "checkpoint-00000001.pt"
    torch.save({"format": 1, "payload": _Unsafe()}, path)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    message = str(refused.value)
    assert str(path) in message and "not a trusted training checkpoint of this project" in message
    _assert_no_unsafe_advice(message)

    path.write_bytes(path.read_bytes()[:40])  # truncated: named too, still without the advice
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(path)
    assert str(path) in str(refused.value)
    _assert_no_unsafe_advice(str(refused.value))


def test_resuming_from_an_untrusted_meta_training_checkpoint_names_the_file(tmp_path):
    checkpoint = tmp_path / "checkpoints" / CHECKPOINT_NAME
    checkpoint.parent.mkdir(parents=True)
    torch.save({"format": 1, "payload": _Unsafe()}, checkpoint)
    config = MetaConfig(inner_steps=1, meta_steps=1, tasks_per_step=1, first_order=True)
    with pytest.raises(CheckpointError) as refused:
        meta_train(_tiny_lora(), lambda step: [_task(step)], config, tmp_path, resume=True, progress=False)
    message = str(refused.value)
    assert str(checkpoint) in message and "not a trusted meta-training checkpoint" in message
    _assert_no_unsafe_advice(message)


def test_a_truncated_lora_adapter_is_named(tmp_path):
    save_adapter(_tiny_lora(), tmp_path)
    weights = tmp_path / ADAPTER_WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(AdapterMismatchError) as refused:
        load_adapter(create_backbone("tiny-dinov2"), tmp_path)
    assert str(weights) in str(refused.value) and "truncated or corrupt" in str(refused.value)


def test_a_truncated_dalora_adapter_is_named(tmp_path):
    torch.manual_seed(0)
    save_dalora(apply_dalora(create_backbone("tiny-dinov2"), DaLoraSettings(r=2)), tmp_path)
    (weights,) = tmp_path.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(AdapterMismatchError) as refused:
        load_dalora(create_backbone("tiny-dinov2"), tmp_path)
    assert str(weights) in str(refused.value)


def test_a_lora_rank_mismatch_is_one_short_line_with_both_ranks(tmp_path):
    save_adapter(_tiny_lora(r=2), tmp_path)
    settings_path = tmp_path / ADAPTER_SETTINGS_NAME
    meta = json.loads(settings_path.read_text())
    meta["settings"]["r"] = 4  # the settings of another adapter beside these weights
    settings_path.write_text(json.dumps(meta))
    with pytest.raises(AdapterMismatchError) as refused:
        load_adapter(create_backbone("tiny-dinov2"), tmp_path)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 400, message
    assert str(tmp_path / ADAPTER_WEIGHTS_NAME) in message
    assert "holds rank 2" in message and "expect rank 4" in message
