"""Meta-training checkpoints every few outer steps (a setting that does not change run tags): a run killed after a
few steps resumes from its last checkpoint and ends as an uninterrupted run does."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from afr.adapters.lora import LoraSettings, apply_lora
from afr.cli import build_parser
from afr.experiments.maml_init import MamlExperimentSettings
from afr.meta import CHECKPOINT_NAME, MetaConfig, TaskBatch, adapter_parameters, meta_train
from afr.models.factory import create_backbone


def _tasks(step: int) -> list[TaskBatch]:
    generator = torch.Generator().manual_seed(step)
    labels = torch.arange(3)
    return [TaskBatch(support_images=torch.rand(6, 3, 28, 28, generator=generator), support_labels=labels.repeat(2),
                      query_images=torch.rand(6, 3, 28, 28, generator=generator), query_labels=labels.repeat(2),
                      n_classes=3, domain="thermal")]


def _backbone():
    torch.manual_seed(3)
    return apply_lora(create_backbone("tiny-dinov2"), LoraSettings(r=2, alpha=2.0))


class Killed(Exception):
    """Stands for the process being killed in the middle of an outer step."""


def test_the_checkpoint_interval_is_an_execution_setting_of_the_maml_experiment():
    settings = MamlExperimentSettings()
    assert settings.checkpoint_every == 5 and settings.meta_config().checkpoint_every == 5
    assert MetaConfig().checkpoint_every == 5
    changed = dataclasses.replace(settings, checkpoint_every=2)
    assert changed.meta_config().checkpoint_every == 2 and changed.tag == settings.tag  # committed tags stay valid
    args = build_parser().parse_args(["maml", "--checkpoint-every", "3"])
    assert MamlExperimentSettings.from_mapping(vars(args)).checkpoint_every == 3


def test_a_run_killed_after_a_few_steps_resumes_from_its_checkpoint(tmp_path):
    config = MetaConfig(inner_steps=1, meta_steps=8, tasks_per_step=1, first_order=True, meta_lr=1e-2)
    straight = _backbone()
    full = meta_train(straight, _tasks, config, tmp_path / "straight", progress=False)

    def killed_at_step_7(step: int) -> list[TaskBatch]:
        if step == 6:  # outer steps 1-6 done, the 7th is under way
            raise Killed
        return _tasks(step)

    run_dir = tmp_path / "killed"
    with pytest.raises(Killed):
        meta_train(_backbone(), killed_at_step_7, config, run_dir, progress=False)
    saved = torch.load(run_dir / "checkpoints" / CHECKPOINT_NAME, weights_only=True)
    assert saved["step"] == 5  # the default interval: only step 6 is lost

    resumed_backbone = _backbone()
    resumed = meta_train(resumed_backbone, _tasks, config, run_dir, resume=True, progress=False)
    assert resumed.steps == 8
    assert [h["meta_loss"] for h in resumed.history] == [h["meta_loss"] for h in full.history]
    final = adapter_parameters(straight)
    for name, parameter in adapter_parameters(resumed_backbone).items():
        assert torch.equal(parameter, final[name]), name
