"""Training engine: config, schedule, sampler, checkpoints, collate, accumulation, outputs, real faces."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from afr.train import (
    CheckpointError,
    ConfigError,
    ResumableSampler,
    TrainConfig,
    Trainer,
    build_scheduler,
    collate_samples,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from afr.train.checkpoint import CHECKPOINT_FORMAT, capture_rng_state, checkpoint_path, restore_rng_state
from afr.train.smoke import SyntheticFaces, TinyClassifier, TinyOutput
from afr.paths import shared_root

needs_shared = pytest.mark.skipif(
    not (shared_root() / "data" / "faces" / "orl").exists(), reason="shared ORL faces not present"
)


def _config(tmp_path, **overrides) -> TrainConfig:
    values = dict(epochs=1, batch_size=8, lr=0.05, output_dir=str(tmp_path), progress=False,
                  tensorboard=False, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def _model(seed: int = 0, **kwargs) -> TinyClassifier:
    torch.manual_seed(seed)
    return TinyClassifier(**kwargs)


# ------------------------------------------------------------------------------ config
def test_config_json_round_trip_and_clear_errors(tmp_path):
    config = TrainConfig(epochs=3, batch_size=16, warmup_steps=5, grad_clip=None, notes={"model": "tiny"})
    path = tmp_path / "config.json"
    config.to_json(path)
    assert TrainConfig.from_json(path) == config
    path.write_text(json.dumps({**config.to_dict(), "learning_rate": 1.0}))
    with pytest.raises(ConfigError, match=r"config\.json.*learning_rate"):
        TrainConfig.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        TrainConfig.from_json(path)
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="grad_accum_steps"):
        TrainConfig(grad_accum_steps=0)
    assert TrainConfig().resolve_precision(torch.device("cpu")) == "fp32"
    assert TrainConfig().resolve_precision(torch.device("cuda", 0)) == "bf16"


# ------------------------------------------------------------------------------ schedule
def test_warmup_then_cosine_to_min_lr():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    scheduler = build_scheduler(optimizer, warmup_steps=4, total_steps=12, base_lr=1e-3, min_lr=1e-4)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # linear warm-up 1/4 .. 4/4 of the peak, no step at lr 0
    assert lrs[:4] == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3, 1e-3])
    # half cosine over the 8 remaining steps: peak at step 4, midway at step 8, floor after the last step
    assert lrs[4] == pytest.approx(1e-3)
    assert lrs[6] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert lrs[8] == pytest.approx(5.5e-4)
    assert lrs[11] > 1e-4 and lrs[12] == pytest.approx(1e-4) and lrs[13] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_trainer_converts_warmup_epochs_to_steps(tmp_path):
    trainer = Trainer(_model(), SyntheticFaces(32), _config(tmp_path, epochs=3, warmup_epochs=0.5))
    assert (trainer.steps_per_epoch, trainer.total_steps, trainer.warmup_steps) == (4, 12, 2)


# ------------------------------------------------------------------------------ sampler
def test_sampler_is_a_deterministic_permutation_per_seed_and_epoch():
    sampler = ResumableSampler(10, 3, seed=5, num_replicas=1, rank=0)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler) == 3 and all(len(b) == 3 for b in epoch0)  # drop_last: 9 of 10
    flat = [i for batch in epoch0 for i in batch]
    assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    assert list(ResumableSampler(10, 3, seed=5, num_replicas=1, rank=0)) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0
    assert list(ResumableSampler(10, 3, seed=6, num_replicas=1, rank=0)) != epoch0
    state = torch.get_rng_state()
    list(sampler)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never touched


def test_sampler_resumes_at_the_next_batch_of_the_epoch():
    sampler = ResumableSampler(50, 4, seed=1, num_replicas=1, rank=0)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start_batch=5)
    assert len(sampler) == len(full) - 5
    assert list(sampler) == full[5:]
    with pytest.raises(ValueError, match="start_batch"):
        sampler.set_epoch(3, start_batch=len(full) + 1)


def test_sampler_shards_are_disjoint_and_form_the_single_process_batches():
    ranks = [ResumableSampler(20, 2, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    single = ResumableSampler(20, 4, seed=3, num_replicas=1, rank=0)
    for s in (*ranks, single):
        s.set_epoch(2)
    for b0, b1, joint in zip(*ranks, single, strict=True):
        assert not set(b0) & set(b1)
        assert sorted(b0 + b1) == sorted(joint)
    padded = [ResumableSampler(5, 2, num_replicas=2, rank=r, drop_last=False) for r in (0, 1)]
    assert [len(list(s)) for s in padded] == [2, 2]
    assert {i for s in padded for b in s for i in b} == set(range(5))
    with pytest.raises(ValueError, match="no full batch"):
        ResumableSampler(3, 4, num_replicas=1, rank=0)


# ------------------------------------------------------------------------------ checkpoints
def _state(step: int) -> dict:
    return {"format": CHECKPOINT_FORMAT, "model": {"w": torch.full((2,), float(step))}, "model_is_full": True,
            "optimizer": {}, "scheduler": {}, "step": step, "epoch": 0, "batch_in_epoch": step}


def test_checkpoints_rotate_keeping_the_last_three(tmp_path):
    for step in (1, 2, 3, 10, 11):
        save_checkpoint(_state(step), checkpoint_path(tmp_path, step), keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-00000003.pt", "checkpoint-00000010.pt", "checkpoint-00000011.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in list_checkpoints(tmp_path)]
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "checkpoint-00000011.pt"
    assert torch.equal(load_checkpoint(latest)["model"]["w"], torch.full((2,), 11.0))
    assert latest_checkpoint(tmp_path / "empty") is None


def test_corrupt_truncated_or_foreign_checkpoints_raise_naming_the_file(tmp_path):
    path = save_checkpoint(_state(4), checkpoint_path(tmp_path, 4))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checkpoint-00000004.pt.*corrupt"):
        load_checkpoint(path)
    garbage = tmp_path / "checkpoint-00000005.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="checkpoint-00000005.pt"):
        load_checkpoint(garbage)
    foreign = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match=r"weights\.pt.*missing"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = save_checkpoint(_state(1), checkpoint_path(tmp_path, 1))
    real_save = torch.save

    def half_written_then_disk_full(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_written_then_disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(_state(2), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_rng_state_capture_and_restore_replays_every_generator():
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    restore_rng_state(state)
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


# ------------------------------------------------------------------------------ batches
def test_collate_makes_float_images_in_unit_range_and_long_labels():
    dataset = SyntheticFaces(4, side=12, domains=True)
    batch = collate_samples([dataset[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 12, 12) and batch["images"].dtype == torch.float32
    assert torch.equal(batch["images"][1], torch.from_numpy(dataset.images[1]).permute(2, 0, 1).float() / 255)
    assert batch["labels"].tolist() == [0, 1, 2, 3] and batch["domains"].tolist() == [0, 1, 0, 1]
    assert "domains" not in collate_samples([SyntheticFaces(2)[0]])
    with pytest.raises(ValueError, match="sample 1.*uint8"):
        collate_samples([dataset[0][:2], (np.zeros((12, 12, 3), np.float32), 1)])


# ------------------------------------------------------------------------------ training
def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    """accum 2 x batch 4 takes the same optimizer steps as batch 8: the sampler puts the same 8
    samples in each step, and the two half-batch mean losses are averaged."""
    big_model, accum_model, plain_small = _model(), _model(), _model()
    initial = {k: v.clone() for k, v in big_model.state_dict().items()}
    big = Trainer(big_model, SyntheticFaces(32), _config(tmp_path / "big", batch_size=8)).fit()
    accum = Trainer(accum_model, SyntheticFaces(32), _config(tmp_path / "acc", batch_size=4, grad_accum_steps=2)).fit()
    small = Trainer(plain_small, SyntheticFaces(32), _config(tmp_path / "small", batch_size=4)).fit()
    assert big.step == accum.step == 4 and small.step == 8
    assert accum.step_losses == pytest.approx(big.step_losses, rel=1e-6)
    for name, value in big_model.state_dict().items():
        assert not torch.allclose(value, initial[name])
        torch.testing.assert_close(accum_model.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    # without accumulation, batch 4 takes twice as many steps and ends elsewhere
    assert not torch.allclose(plain_small.state_dict()["net.1.weight"], big_model.state_dict()["net.1.weight"])
    # an epoch that does not divide: 10 batches accumulated 3 by 3 -> steps of 3, 3, 3 and 1 batches
    leftover = Trainer(_model(), SyntheticFaces(40), _config(tmp_path / "left", batch_size=4, grad_accum_steps=3))
    assert leftover.fit().step == 4


def test_dataloader_workers_give_the_same_batches_as_the_main_process(tmp_path):
    in_process = Trainer(_model(), SyntheticFaces(32), _config(tmp_path / "w0")).fit()
    with_workers = Trainer(_model(), SyntheticFaces(32), _config(tmp_path / "w2", num_workers=2)).fit()
    assert with_workers.step_losses == in_process.step_losses


def test_fit_writes_config_metrics_tensorboard_and_calls_evaluators(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    calls = []

    def probe(model: nn.Module) -> dict:
        calls.append((model.training, torch.is_grad_enabled()))
        return {"accuracy": np.float64(0.25 * len(calls)), "count": torch.tensor(len(calls))}

    config = _config(tmp_path, epochs=2, seed=11, tensorboard=True, log_every=2)
    result = Trainer(_model(dropout=0.1), SyntheticFaces(32), config, evaluators={"probe": probe}).fit()

    assert calls == [(False, False), (False, False)]  # once per epoch, eval mode, no grad
    assert TrainConfig.from_json(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "run.json").read_text())["seed"] == 11
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history
    assert [r["epoch"] for r in lines] == [0, 1] and [r["step"] for r in lines] == [4, 8]
    assert [r["probe/accuracy"] for r in lines] == [0.25, 0.5] and lines[1]["probe/count"] == 2.0
    assert lines[0]["train_loss"] == pytest.approx(np.mean(result.step_losses[:4]))
    assert result.last_checkpoint == latest_checkpoint(tmp_path / "checkpoints")
    assert result.last_checkpoint.name == "checkpoint-00000008.pt"

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "epoch/train_loss", "probe/accuracy"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6, 8]
    logged = events.Scalars("train/loss")[0].value
    assert logged == pytest.approx(np.mean(result.step_losses[:2]), rel=1e-6)


def test_only_trainable_parameters_are_optimized_and_checkpointed(tmp_path):
    model = _model()
    model.net[1].requires_grad_(False)  # freeze the first layer, as LoRA freezes a backbone
    frozen = model.net[1].weight.clone()
    trainer = Trainer(model, SyntheticFaces(32), _config(tmp_path))
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.net[4].parameters()}
    result = trainer.fit()
    assert torch.equal(model.net[1].weight, frozen)
    saved = load_checkpoint(result.last_checkpoint)["model"]
    assert sorted(saved) == ["net.4.bias", "net.4.weight"]
    # resuming into a fresh model with the same frozen part restores the trained head
    fresh = _model()
    fresh.net[1].requires_grad_(False)
    Trainer(fresh, SyntheticFaces(32), _config(tmp_path)).fit(resume=True)
    assert torch.equal(fresh.net[4].weight, model.net[4].weight)


def test_fresh_fit_replaces_old_checkpoints_and_bad_losses_fail_loudly(tmp_path):
    Trainer(_model(), SyntheticFaces(32), _config(tmp_path, epochs=2)).fit()
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 2
    trainer = Trainer(_model(), SyntheticFaces(32), _config(tmp_path, epochs=1))
    trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-00000004.pt"]
    with pytest.raises(RuntimeError, match="new Trainer"):
        trainer.fit()

    class Exploding(TinyClassifier):
        def forward(self, images, labels=None, **extra):
            out = super().forward(images, labels)
            return TinyOutput(loss=out.loss * float("nan"), logits=out.logits)

    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="non-finite loss.*step 1"):
        Trainer(Exploding(), SyntheticFaces(32), _config(tmp_path / "nan")).fit()

    class NoLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(1, 1)

        def forward(self, images, labels=None):
            return images.mean()

    with pytest.raises(TypeError, match=r"\.loss"):
        Trainer(NoLoss(), SyntheticFaces(32), _config(tmp_path / "noloss")).fit()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_autocast_trains_on_cpu(tmp_path, precision):
    model = _model()
    initial = model.net[1].weight.clone()
    trainer = Trainer(model, SyntheticFaces(32), _config(tmp_path, precision=precision, epochs=2))
    result = trainer.fit()
    assert trainer.precision == precision and (trainer.scaler is not None) == (precision == "fp16")
    assert all(math.isfinite(loss) for loss in result.step_losses)
    assert model.net[1].weight.dtype == torch.float32 and not torch.equal(model.net[1].weight, initial)
    assert (load_checkpoint(result.last_checkpoint)["scaler"] is not None) == (precision == "fp16")


def _orl_faces(people: int) -> list[tuple[np.ndarray, int]]:
    """The first ``people`` ORL subjects, 10 grey 112x92 faces each, as (HxWx3 uint8, label)."""
    from afr.data.images import read_image

    root = shared_root() / "data" / "faces" / "orl"
    return [(read_image(path), person) for person in range(people)
            for path in sorted((root / f"s{person + 1}").glob("*.pgm"))]


class _PooledMLP(nn.Module):
    """Average-pool to 8x8, standardise, 2-layer MLP: enough to tell a few ORL subjects apart."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, images, labels=None, **extra):
        logits = self.net((nn.functional.adaptive_avg_pool2d(images, 8) - 0.5) / 0.25)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return TinyOutput(loss=loss, logits=logits)


@needs_shared
def test_training_on_real_orl_faces_learns_held_out_identities(tmp_path):
    """8 subjects: images 1-8 of each train (with flip augmentation), images 9-10 are held out and
    scored every epoch by an evaluator; chance accuracy is 1/8."""
    from afr.data.augment import AugmentSettings, FaceAugment

    faces = _orl_faces(people=8)
    assert len(faces) == 80 and faces[0][0].shape == (112, 92, 3)
    train = [sample for i, sample in enumerate(faces) if i % 10 < 8]
    held_out = collate_samples([sample for i, sample in enumerate(faces) if i % 10 >= 8])

    def held_out_accuracy(model: nn.Module) -> dict:
        predictions = model(images=held_out["images"]).logits.argmax(1)
        return {"accuracy": (predictions == held_out["labels"]).float().mean()}

    config = _config(tmp_path, epochs=6, batch_size=16, lr=0.01, warmup_epochs=1)
    augment = FaceAugment(AugmentSettings(flip_p=0.5, randaugment_ops=0))
    torch.manual_seed(0)
    trainer = Trainer(_PooledMLP(8), train, config, augment=augment, evaluators={"held_out": held_out_accuracy})
    history = trainer.fit().history
    assert history[0]["train_loss"] > 1.8  # about ln(8) = 2.08 at the start
    assert history[-1]["train_loss"] < 0.3 * history[0]["train_loss"]
    assert history[-1]["held_out/accuracy"] >= 0.875  # at least 14 of 16 unseen faces
