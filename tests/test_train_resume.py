"""Kill-and-resume: a run SIGKILLed mid-epoch and resumed takes exactly the uninterrupted run's steps."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from afr.train import CheckpointError, TrainConfig, Trainer, list_checkpoints
from afr.train.smoke import SyntheticFaces, TinyClassifier, TinyOutput

WORKER = Path(__file__).with_name("train_worker.py")
# 48 samples / batch 4 = 12 batches, accumulated 2 by 2 = 6 optimizer steps per epoch, 2 epochs.
# Checkpoints: step 4 (mid epoch 0), 6 (end of epoch 0), 8 (epoch 1 after 4 of its 12 batches), 12.
RUN_ARGS = ["--epochs", "2", "--samples", "48", "--batch-size", "4", "--accum", "2", "--dropout", "0.3",
            "--checkpoint-every-steps", "4", "--random-data"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _start(output_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), "--output-dir", str(output_dir), *RUN_ARGS, *extra],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(process: subprocess.Popen) -> int:
    _, stderr = process.communicate(timeout=120)
    if process.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"worker failed with {process.returncode}:\n{stderr[-3000:]}")
    return process.returncode


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sigkilled_run_resumes_bitwise_identical(tmp_path, num_workers):
    workers = ("--num-workers", str(num_workers))
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    reference = _start(reference_dir, *workers)
    crashed = _start(crashed_dir, "--kill-after-step", "10", *workers)
    assert _finish(reference) == 0
    assert _finish(crashed) == -signal.SIGKILL

    # the crashed run left only whole checkpoints, the newest 3 (steps 4, 6, 8), no temp files
    checkpoint_dir = crashed_dir / "checkpoints"
    assert [p.name for p in list_checkpoints(checkpoint_dir)] == [
        "checkpoint-00000004.pt", "checkpoint-00000006.pt", "checkpoint-00000008.pt"]
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == [p.name for p in list_checkpoints(checkpoint_dir)]
    assert not (crashed_dir / "result-rank0.json").exists()

    resumed = _start(crashed_dir, "--resume", *workers)
    assert _finish(resumed) == 0

    expected = json.loads((reference_dir / "result-rank0.json").read_text())
    got = json.loads((crashed_dir / "result-rank0.json").read_text())
    assert expected["first_step"] == 1 and expected["step"] == 12
    assert got["first_step"] == 9 and got["step"] == 12  # resumed after step 8, mid epoch 1
    assert got["step_losses"] == expected["step_losses"][8:]  # exact (float.hex) equality
    reference_params = torch.load(reference_dir / "params-rank0.pt")
    resumed_params = torch.load(crashed_dir / "params-rank0.pt")
    for name, value in reference_params.items():
        assert torch.equal(value, resumed_params[name]), name

    # metrics.jsonl of the resumed run: one line per epoch, the same values as the reference
    ref_lines = [json.loads(line) for line in (reference_dir / "metrics.jsonl").read_text().splitlines()]
    got_lines = [json.loads(line) for line in (crashed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in got_lines] == [0, 1]
    for ref, new in zip(ref_lines, got_lines):
        assert (ref["step"], ref["train_loss"], ref["lr"]) == (new["step"], new["train_loss"], new["lr"])
    run_info = json.loads((crashed_dir / "run.json").read_text())
    assert run_info["resumed_at_step"] == 8 and run_info["resumed_from"].endswith("checkpoint-00000008.pt")


class _Crash(Exception):
    pass


class _CrashingTrainer(Trainer):
    """Raises after optimizer step ``crash_after`` (an in-process stand-in for a crash)."""

    crash_after = 0

    def on_step_end(self, step: int, loss: float) -> None:
        if step == self.crash_after:
            raise _Crash(step)


def _tiny_trainer(output_dir: Path, epochs: int = 2, cls: type[Trainer] = Trainer,
                  model_cls: type[TinyClassifier] = TinyClassifier, **overrides) -> Trainer:
    torch.manual_seed(0)
    config = TrainConfig(epochs=epochs, batch_size=8, lr=0.05, seed=3, output_dir=str(output_dir),
                         progress=False, tensorboard=False, device="cpu", **overrides)
    return cls(model_cls(dropout=0.2), SyntheticFaces(32), config)


class _TermsClassifier(TinyClassifier):
    """TinyClassifier that also reports two loss terms."""

    def forward(self, images, labels=None, **extra):
        out = super().forward(images, labels)
        return TinyOutput(out.loss, out.logits, {"half": out.loss / 2, "square": out.loss.square()})


def test_resume_from_epoch_end_checkpoint_in_process_matches(tmp_path):
    """4 steps per epoch; a run that dies after step 5 resumes from the end-of-epoch-0 checkpoint
    (step 4) and then takes exactly the steps of a run trained straight through."""
    straight = _tiny_trainer(tmp_path / "straight").fit()
    crashing = _tiny_trainer(tmp_path / "crash", cls=_CrashingTrainer)
    crashing.crash_after = 5
    with pytest.raises(_Crash):
        crashing.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "crash" / "checkpoints")] == ["checkpoint-00000004.pt"]
    resumed = _tiny_trainer(tmp_path / "crash").fit(resume=True)
    assert resumed.step == straight.step == 8
    assert resumed.step_losses == straight.step_losses[4:]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_resume_mid_epoch_continues_the_epoch_means_of_loss_terms(tmp_path):
    """Checkpoints every 3 steps (4 per epoch); a run dying after step 4 resumes from step 3, and its
    epoch-0 means of the loss and of each term still cover all 4 steps, exactly."""
    straight = _tiny_trainer(tmp_path / "straight", model_cls=_TermsClassifier, checkpoint_every_steps=3).fit()
    crashing = _tiny_trainer(tmp_path / "crash", cls=_CrashingTrainer, model_cls=_TermsClassifier,
                             checkpoint_every_steps=3)
    crashing.crash_after = 4
    with pytest.raises(_Crash):
        crashing.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "crash" / "checkpoints")] == ["checkpoint-00000003.pt"]
    resumed = _tiny_trainer(tmp_path / "crash", model_cls=_TermsClassifier, checkpoint_every_steps=3).fit(resume=True)
    assert resumed.step_losses == straight.step_losses[3:]
    keys = ("train_loss", "train_half", "train_square")
    assert [[h[k] for k in keys] for h in resumed.history] == [[h[k] for k in keys] for h in straight.history]


def test_resume_from_corrupt_checkpoint_names_the_file(tmp_path):
    _tiny_trainer(tmp_path, epochs=1).fit()
    (latest,) = list_checkpoints(tmp_path / "checkpoints")
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=latest.name):
        _tiny_trainer(tmp_path, epochs=1).fit(resume=True)


def test_resume_true_without_checkpoint_starts_fresh_and_missing_path_fails(tmp_path):
    result = _tiny_trainer(tmp_path / "fresh", epochs=1).fit(resume=True)
    assert result.step == 4 and len(result.step_losses) == 4
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        _tiny_trainer(tmp_path / "other", epochs=1).fit(resume=tmp_path / "nowhere.pt")
