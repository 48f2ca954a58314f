"""Training engine: config, schedule, sampler, checkpoints, collate, accumulation, outputs, real faces."""
from __future__ import annotations

import json
import math
import random
import re

import numpy as np
import pytest
import torch
from torch import nn

from afr.train import (
    CheckpointError,
    ConfigError,
    ResumableSampler,
    RunExistsError,
    TrainConfig,
    Trainer,
    build_scheduler,
    collate_samples,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from afr.io import atomic_write_bytes, atomic_write_text, atomic_writer
from afr.train.checkpoint import CHECKPOINT_FORMAT, capture_rng_state, checkpoint_path, restore_rng_state
from afr.train.sampler import SeededBatches, SeededFetch, batch_seed
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


class _RandomDraws(torch.utils.data.Dataset):
    """Each sample: the index and what python, numpy and torch's global RNGs give, and torch's seed."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> tuple:
        return index, random.random(), int(np.random.randint(2**31)), float(torch.rand(())), torch.initial_seed()


def _seeded_batches(epoch: int, start_batch: int, num_workers: int) -> list:
    sampler = ResumableSampler(24, 4, seed=9, num_replicas=2, rank=1)
    sampler.set_epoch(epoch, start_batch)
    loader = torch.utils.data.DataLoader(
        SeededFetch(_RandomDraws()), batch_sampler=SeededBatches(sampler), num_workers=num_workers,
        collate_fn=list, generator=torch.Generator().manual_seed(0))
    return list(loader)


def test_dataset_random_draws_depend_only_on_the_batch_position():
    """Whatever the number of workers and wherever the epoch (re)starts, a batch's random draws are
    the same: they come from RNGs seeded with batch_seed(seed, epoch, batch, rank)."""
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    in_process = _seeded_batches(epoch=1, start_batch=0, num_workers=0)
    assert random.getstate() == states[0] and np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])  # the main process's streams are untouched
    assert _seeded_batches(epoch=1, start_batch=0, num_workers=2) == in_process
    assert _seeded_batches(epoch=1, start_batch=1, num_workers=2) == in_process[1:]
    assert [batch[0][-1] for batch in in_process] == [batch_seed(9, 1, b, 1) for b in range(len(in_process))]
    draws = [sample[1:4] for batch in in_process for sample in batch]
    assert len(set(draws)) == len(draws)  # every sample gets its own numbers
    assert _seeded_batches(epoch=2, start_batch=0, num_workers=0)[0][0][1:] != in_process[0][0][1:]


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


def test_train_step_is_the_step_fit_takes(tmp_path):
    """``Trainer.train_step`` (what bench/gpu_vit_lora_throughput.py times) on the epoch's batches takes the
    optimizer steps ``fit`` takes: the same losses, learning rates and weights, bitwise on the CPU."""
    fitted_model, stepped_model = _model(), _model()
    fitted = Trainer(fitted_model, SyntheticFaces(32), _config(tmp_path / "fit", warmup_steps=2)).fit()
    trainer = Trainer(stepped_model, SyntheticFaces(32), _config(tmp_path / "step", warmup_steps=2))
    trainer.sampler.set_epoch(0, 0)
    steps = [trainer.train_step(batch) for batch in trainer._make_loader(0)]
    assert [step["loss"] for step in steps] == fitted.step_losses and trainer.step == fitted.step == 4
    # warm-up over 2 steps, then the cosine from step 2 to 4 (factor 1 at its start, 0.5 half-way)
    assert [step["lr"] for step in steps] == pytest.approx([0.025, 0.05, 0.05, 0.025])
    assert all(math.isfinite(step["grad_norm"]) for step in steps)
    for name, value in fitted_model.state_dict().items():
        torch.testing.assert_close(stepped_model.state_dict()[name], value, rtol=0, atol=0)
    assert not (tmp_path / "step").exists()  # it writes nothing


class _JitteredFaces(SyntheticFaces):
    """SyntheticFaces brightened by a shift drawn from numpy's global RNG for every sample."""

    def __getitem__(self, index: int) -> tuple:
        image, label = super().__getitem__(index)
        return np.clip(image.astype(np.int16) + np.random.randint(0, 32), 0, 255).astype(np.uint8), label


def _noise(images: torch.Tensor) -> torch.Tensor:
    return (images + 0.05 * torch.randn_like(images)).clamp(0.0, 1.0)


def test_dataloader_workers_give_the_same_batches_as_the_main_process(tmp_path):
    """Random data, dropout and a torch-RNG augmentation: the number of workers changes nothing."""
    runs = [Trainer(_model(dropout=0.3), _JitteredFaces(32), _config(tmp_path / f"w{n}", num_workers=n, epochs=2),
                    augment=_noise).fit() for n in (0, 2)]
    assert runs[1].step_losses == runs[0].step_losses


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


class _TwoTermClassifier(TinyClassifier):
    """Loss = cross-entropy + a weight penalty, both reported as terms; records each forward's terms."""

    def __init__(self, as_mapping: bool = False):
        super().__init__()
        self.as_mapping = as_mapping
        self.seen: list[dict[str, float]] = []

    def forward(self, images, labels=None, **extra):
        out = super().forward(images, labels)
        terms = {"ce": out.loss, "penalty": 1e-2 * self.net[1].weight.square().sum()}
        self.seen.append({name: float(value.detach()) for name, value in terms.items()})
        loss = terms["ce"] + terms["penalty"]
        return {"loss": loss, "terms": terms} if self.as_mapping else TinyOutput(loss, out.logits, terms)


def test_loss_terms_are_logged_per_window_and_per_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.manual_seed(0)
    model = _TwoTermClassifier()
    config = _config(tmp_path, epochs=2, batch_size=4, grad_accum_steps=2, tensorboard=True, log_every=2)
    result = Trainer(model, SyntheticFaces(32), config).fit()  # 8 batches -> 4 steps per epoch
    # a step's term = the mean over its 2 micro-batches; an epoch's = the mean over its 4 steps
    steps = [{name: (a[name] + b[name]) / 2 for name in a} for a, b in zip(model.seen[::2], model.seen[1::2])]
    assert len(steps) == result.step == 8
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == result.history
    for epoch, line in enumerate(lines):
        epoch_steps = steps[4 * epoch : 4 * (epoch + 1)]
        for name in ("ce", "penalty"):
            assert line[f"train_{name}"] == pytest.approx(np.mean([s[name] for s in epoch_steps]), rel=1e-5)
        assert line["train_loss"] == pytest.approx(line["train_ce"] + line["train_penalty"], rel=1e-5)

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/ce", "train/penalty", "epoch/train_ce", "epoch/train_penalty"} <= set(events.Tags()["scalars"])
    logged = events.Scalars("train/ce")
    assert [e.step for e in logged] == [2, 4, 6, 8]
    assert logged[1].value == pytest.approx((steps[2]["ce"] + steps[3]["ce"]) / 2, rel=1e-5)

    torch.manual_seed(0)
    mapping = Trainer(_TwoTermClassifier(as_mapping=True), SyntheticFaces(32), _config(tmp_path / "map")).fit()
    assert {"train_loss", "train_ce", "train_penalty"} <= set(mapping.history[0])
    plain = Trainer(_model(), SyntheticFaces(32), _config(tmp_path / "plain")).fit()
    assert [key for key in plain.history[0] if key.startswith("train_")] == ["train_loss"]


@pytest.mark.parametrize(
    ("terms", "error", "message"),
    [({"loss": torch.tensor(1.0)}, ValueError, "'loss' is not allowed"),
     ({"margin": torch.ones(3)}, TypeError, "'margin' must be a scalar"),
     ([torch.tensor(1.0)], TypeError, "dict name")],
)
def test_malformed_loss_terms_raise_naming_the_problem(tmp_path, terms, error, message):
    class BadTerms(TinyClassifier):
        def forward(self, images, labels=None, **extra):
            out = super().forward(images, labels)
            return TinyOutput(out.loss, out.logits, terms)

    with pytest.raises(error, match=message):
        Trainer(BadTerms(), SyntheticFaces(32), _config(tmp_path)).fit()


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


def _file_bytes(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fresh_fit_refuses_to_replace_an_earlier_run_unless_overwrite(tmp_path):
    Trainer(_model(), SyntheticFaces(32), _config(tmp_path, epochs=1)).fit()
    first_run = _file_bytes(tmp_path)
    assert "checkpoints/checkpoint-00000004.pt" in first_run and "metrics.jsonl" in first_run
    with pytest.raises(RunExistsError, match=rf"{re.escape(str(tmp_path))}.*resume=True.*overwrite=True") as refused:
        Trainer(_model(), SyntheticFaces(32), _config(tmp_path, epochs=2, tensorboard=True)).fit()
    assert isinstance(refused.value, FileExistsError) and "\n" not in str(refused.value)
    assert _file_bytes(tmp_path) == first_run  # nothing written, deleted or added

    trainer = Trainer(_model(), SyntheticFaces(32), _config(tmp_path, epochs=2, overwrite=True))
    assert trainer.fit().step == 8
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == [
        "checkpoint-00000004.pt", "checkpoint-00000008.pt"]
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    with pytest.raises(RuntimeError, match="new Trainer"):
        trainer.fit()


def test_metrics_alone_mark_a_run_and_an_empty_metrics_file_does_not(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0}\n')
    with pytest.raises(RunExistsError):
        Trainer(_model(), SyntheticFaces(32), _config(tmp_path)).fit()
    (tmp_path / "metrics.jsonl").write_text("")
    assert Trainer(_model(), SyntheticFaces(32), _config(tmp_path)).fit().step == 4


def test_atomic_writes_replace_whole_files_and_a_failed_write_changes_nothing(tmp_path):
    target = tmp_path / "metrics.jsonl"
    atomic_write_text(target, "old\n")
    with pytest.raises(OSError, match="disk full"):
        with atomic_writer(target) as handle:
            handle.write(b"half a li")
            raise OSError("disk full")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"new\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_bad_losses_fail_loudly(tmp_path):
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
