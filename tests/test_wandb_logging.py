"""Optional Weights & Biases logging of the training engine: opt-in, offline by default, one clear error
without the package. A fake ``wandb`` module in ``sys.modules`` records what the engine asks of it."""
from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch

from afr.train import ConfigError, TrainConfig, Trainer
from afr.train.smoke import SyntheticFaces, TinyClassifier


class FakeWandb(types.ModuleType):
    """Records ``init(**kwargs)``, the run's ``log(values, step=)`` and ``finish()`` calls."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logs: list[tuple[dict, int]] = []
        self.finishes = 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, values, step=None):
                fake.logs.append((dict(values), step))

            def finish(self):
                fake.finishes += 1

        return Run()


@pytest.fixture
def fake_wandb(monkeypatch):
    module = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def tiny_run(tmp_path, **overrides):
    torch.manual_seed(0)
    values = dict(epochs=2, batch_size=8, lr=0.05, output_dir=str(tmp_path / "run"), progress=False,
                  tensorboard=False, device="cpu", log_every=1)
    values.update(overrides)
    return Trainer(TinyClassifier(), SyntheticFaces(32), TrainConfig(**values))


def test_wandb_logs_the_runs_scalars_offline_when_asked(fake_wandb, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    result = tiny_run(tmp_path, wandb=True).fit()
    assert len(fake_wandb.inits) == 1 and fake_wandb.finishes == 1
    init = fake_wandb.inits[0]
    assert init["mode"] == "offline" and init["dir"] == str(tmp_path / "run") and init["config"]["wandb"] is True
    # every optimizer step's loss (log_every=1) and each epoch's mean, at the engine's step numbers
    steps = [step for values, step in fake_wandb.logs if "train/loss" in values]
    assert steps == list(range(1, result.step + 1))
    step_losses = [values["train/loss"] for values, _ in fake_wandb.logs if "train/loss" in values]
    assert step_losses == pytest.approx(result.step_losses)
    epochs = [(values, step) for values, step in fake_wandb.logs if "epoch/train_loss" in values]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(values["epoch/train_loss"], step) for values, step in epochs] == [
        (pytest.approx(line["train_loss"]), line["step"]) for line in metrics
    ]
    assert "WANDB_MODE" not in os.environ  # the user's environment is left alone


def test_the_users_wandb_mode_wins(fake_wandb, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    tiny_run(tmp_path, wandb=True, epochs=1).fit()
    assert fake_wandb.inits[0]["mode"] == "disabled"


def test_tensorboard_only_unless_asked(fake_wandb, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # an environment variable alone does not switch it on
    tiny_run(tmp_path, epochs=1).fit()
    assert fake_wandb.inits == [] and fake_wandb.logs == []
    assert TrainConfig().wandb is False and TrainConfig().tensorboard is True


def test_wandb_asked_for_but_not_installed_is_one_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(ConfigError, match=r"TrainConfig\.wandb=True but the wandb package is not installed "
                                          r"\(pip install wandb\)"):
        tiny_run(tmp_path, wandb=True)
    assert not (tmp_path / "run").exists()
