"""IdentityBatchSampler: P identities x M images per batch, domains mixed, reproducible, resumable, sharded;
and the Trainer with ``sampler='identity'`` (trained on supervised InfoNCE + cross-entropy)."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from afr.losses import combine_losses, supervised_info_nce
from afr.train import ConfigError, ResumableSampler, TrainConfig, Trainer, list_checkpoints
from afr.train.engine import _dataset_domains
from afr.train.sampler import IdentityBatchSampler, SeededBatches
from afr.train.smoke import SyntheticFaces, TinyClassifier, TinyOutput


def _toy(identities: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled labels/domains: identity i has 3 + i % 5 images; even identities in domains 0 and 1,
    odd ones in domain 2 only."""
    labels, domains = [], []
    for identity in range(identities):
        for k in range(3 + identity % 5):
            labels.append(identity)
            domains.append(k % 2 if identity % 2 == 0 else 2)
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.asarray(labels)[order], np.asarray(domains)[order]


def _blocks(batch: list[int], labels: np.ndarray, m: int) -> list[int]:
    """The identity of each block of ``m`` images, checking each block holds one identity."""
    identities = []
    for start in range(0, len(batch), m):
        block = {int(labels[i]) for i in batch[start : start + m]}
        assert len(block) == 1, f"block {start // m} mixes identities {block}"
        identities.append(block.pop())
    return identities


def test_every_batch_holds_p_distinct_identities_times_m_images():
    labels, domains = _toy()
    sampler = IdentityBatchSampler(labels, 12, 4, domains=domains, seed=1, num_replicas=1, rank=0)
    assert (sampler.identities_per_batch, sampler.num_batches, len(sampler)) == (3, 4, 4)
    assert len(labels) == 57
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == sampler.num_batches
        for batch in batches:
            assert len(batch) == 12 and all(0 <= i < len(labels) for i in batch)
            identities = _blocks(batch, labels, 4)
            assert len(set(identities)) == 3
            # both strata (identities in domains {0, 1}, identities in domain {2}) in every batch
            assert {identity % 2 for identity in identities} == {0, 1}
    # 5 identities, 3 per batch: passes over the identities end mid-batch, still no identity twice
    labels = np.repeat(np.arange(5), 6)
    sampler = IdentityBatchSampler(labels, 12, 4, seed=0, num_replicas=1, rank=0)
    for epoch in range(20):
        for batch in sampler.epoch_batches(epoch):
            assert len(set(_blocks(batch, labels, 4))) == 3


def test_identity_images_alternate_over_its_domains_and_small_identities_repeat():
    labels = np.array([0] * 6 + [1] * 6 + [2] * 2 + [3] * 5)
    domains = np.array([0, 0, 0, 1, 1, 1] + [0] * 6 + [0, 1] + [1] * 5)
    sampler = IdentityBatchSampler(labels, 4, 4, domains=domains, seed=0, num_replicas=1, rank=0)
    seen = Counter()
    for epoch in range(4):
        for batch in sampler.epoch_batches(epoch):
            identity = _blocks(batch, labels, 4)[0]
            seen[identity] += 1
            if identity == 0:  # 3 images in each of 2 domains: 2 + 2, four distinct images
                assert len(set(batch)) == 4 and sorted(Counter(domains[batch].tolist()).values()) == [2, 2]
            if identity == 2:  # only 2 images: both, then 2 drawn with replacement among them
                assert set(batch) == {12, 13}
            if identity in (1, 3):
                assert len(set(batch)) == 4
    assert set(seen) == {0, 1, 2, 3}


def test_batches_are_a_pure_function_of_seed_and_epoch():
    labels, domains = _toy()
    state = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first = IdentityBatchSampler(labels, 8, 4, domains=domains, seed=5, num_replicas=1, rank=0)
    second = IdentityBatchSampler(labels.tolist(), 8, 4, domains=torch.as_tensor(domains), seed=5,
                                  num_replicas=1, rank=0)
    second.epoch_batches(2)  # another epoch built first changes nothing
    for epoch in (0, 1):
        first.set_epoch(epoch)
        second.set_epoch(epoch)
        assert list(first) == list(second)
    assert first.epoch_batches(0) != first.epoch_batches(1)
    other_seed = IdentityBatchSampler(labels, 8, 4, domains=domains, seed=6, num_replicas=1, rank=0)
    assert other_seed.epoch_batches(0) != first.epoch_batches(0)
    assert first.epoch_indices(1) == [i for batch in first.epoch_batches(1) for i in batch]
    # the global RNGs are neither used nor moved
    assert torch.equal(torch.get_rng_state(), state[0]) and np.array_equal(np.random.get_state()[1], state[1])
    assert random.getstate() == state[2]


def test_set_epoch_skips_exactly_the_first_batches():
    labels, domains = _toy()
    sampler = IdentityBatchSampler(labels, 8, 2, domains=domains, seed=3, num_replicas=1, rank=0)
    sampler.set_epoch(4)
    full = list(sampler)
    for start in (1, 3, len(full)):
        sampler.set_epoch(4, start_batch=start)
        assert len(sampler) == len(full) - start
        assert list(sampler) == full[start:]
    with pytest.raises(ValueError, match="start_batch"):
        sampler.set_epoch(4, start_batch=len(full) + 1)
    # SeededBatches (the Trainer's loader) numbers the batches from start_batch on
    sampler.set_epoch(4, start_batch=2)
    assert [indices for _, indices in SeededBatches(sampler)] == full[2:]


def test_ddp_ranks_take_disjoint_interleaved_batches_of_the_single_process_stream():
    labels = np.repeat(np.arange(16), 8)  # 16 identities x 8 images, no domains: one stratum
    single = IdentityBatchSampler(labels, 8, 4, seed=2, num_replicas=1, rank=0)
    ranks = [IdentityBatchSampler(labels, 8, 4, seed=2, num_replicas=2, rank=r) for r in range(2)]
    assert single.num_batches == 16 and all(s.num_batches == 8 for s in ranks)
    for epoch in (0, 1):
        stream = single.epoch_batches(epoch)
        per_rank = [s.epoch_batches(epoch) for s in ranks]
        assert per_rank[0] == stream[0::2] and per_rank[1] == stream[1::2]
        for step in range(8):
            a, b = per_rank[0][step], per_rank[1][step]
            assert not set(a) & set(b)
            assert not set(_blocks(a, labels, 4)) & set(_blocks(b, labels, 4))
        # within an epoch the identities come in passes: 16 identities in 8 batches, each once
        assert sorted(i for batch in stream[:8] for i in _blocks(batch, labels, 4)) == list(range(16))


def test_bad_settings_raise_clear_errors():
    labels = np.repeat(np.arange(3), 4)
    with pytest.raises(ValueError, match="multiple of images_per_identity"):
        IdentityBatchSampler(labels, 6, 4, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="3 identities cannot fill"):
        IdentityBatchSampler(labels, 8, 2, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="no full batch"):
        IdentityBatchSampler(labels, 4, 2, num_replicas=4, rank=0)
    with pytest.raises(ValueError, match="domains"):
        IdentityBatchSampler(labels, 4, 2, domains=[0, 1], num_replicas=1, rank=0)
    with pytest.raises(ConfigError, match="images_per_identity"):
        TrainConfig(sampler="identity", batch_size=10, images_per_identity=4)
    with pytest.raises(ConfigError, match="sampler"):
        TrainConfig(sampler="balanced")


def test_embedded_training_batches_mix_controlled_lowquality_and_thermal(embedded_benchmark):
    from afr.data.recordio import RecordIODataset

    pack = RecordIODataset(embedded_benchmark.train_dir)
    labels, domains = pack.labels, pack.domains
    names = pack.domain_names
    sampler = IdentityBatchSampler(labels, 32, 4, domains=domains, seed=0, num_replicas=1, rank=0)
    assert sampler.num_batches == len(pack) // 32 and len(sampler.strata) >= 2
    wanted = {names.index("controlled"), names.index("lowquality"), names.index("thermal")}
    for epoch in (0, 1):
        for batch in sampler.epoch_batches(epoch):
            assert len(set(_blocks(batch, labels, 4))) == 8
            assert set(domains[batch].tolist()) >= wanted  # all three training domains in every batch
            # an identity with controlled and low-quality images shows both in its 4 images
            for start in range(0, 32, 4):
                block = batch[start : start + 4]
                identity_domains = set(domains[labels == labels[block[0]]].tolist())
                assert set(domains[block].tolist()) == identity_domains


# ------------------------------------------------------------------------------ trainer
class _DomainFaces(SyntheticFaces):
    """SyntheticFaces of 8 identities whose samples carry a domain (``index % 2``), also as ``.domains``."""

    def __init__(self, size: int = 64):
        super().__init__(size, num_classes=8)
        self.domains = np.arange(size) % 2

    def __getitem__(self, index: int) -> tuple:
        return self.images[index], int(self.labels[index]), int(self.domains[index])


class _ContrastiveClassifier(TinyClassifier):
    """Cross-entropy + 0.1 x supervised InfoNCE on the hidden features; records each batch."""

    def __init__(self):
        super().__init__(num_classes=8)
        self.batches: list[tuple[list[int], list[int]]] = []

    def forward(self, images, labels=None, domains=None, **extra):
        features = self.net[:3](F.adaptive_avg_pool2d(images, 4))
        logits = self.net[3:](features)
        self.batches.append((labels.tolist(), domains.tolist()))
        loss, terms = combine_losses(F.cross_entropy(logits, labels), supervised_info_nce(features, labels, domains))
        return TinyOutput(loss, logits, terms)


def _identity_trainer(output_dir, cls=Trainer, **overrides) -> Trainer:
    torch.manual_seed(0)
    config = TrainConfig(epochs=1, batch_size=8, lr=0.05, seed=4, output_dir=str(output_dir), progress=False,
                         tensorboard=False, device="cpu", sampler="identity", images_per_identity=4, **overrides)
    return cls(_ContrastiveClassifier(), _DomainFaces(), config)


def test_trainer_runs_an_epoch_on_identity_batches(tmp_path):
    trainer = _identity_trainer(tmp_path)
    assert isinstance(trainer.sampler, IdentityBatchSampler) and trainer.steps_per_epoch == 8
    result = trainer.fit()
    assert result.step == 8 and all(np.isfinite(result.step_losses))
    assert set(result.history[0]) >= {"train_loss", "train_margin", "train_contrastive"}
    assert result.history[0]["train_contrastive"] > 0
    assert len(trainer.model.batches) == 8
    for labels, domains in trainer.model.batches:
        assert len(set(labels)) == 2 and all(Counter(labels)[label] == 4 for label in labels)
        assert set(domains) == {0, 1}
    # the default is still the shuffling sampler
    plain = Trainer(TinyClassifier(), SyntheticFaces(32), TrainConfig(batch_size=8, output_dir=str(tmp_path / "p"),
                                                                      device="cpu", progress=False, tensorboard=False))
    assert type(plain.sampler) is ResumableSampler


class _Crash(Exception):
    pass


class _CrashingTrainer(Trainer):
    def on_step_end(self, step: int, loss: float) -> None:
        if step == 5:
            raise _Crash(step)


def test_identity_sampler_run_resumes_mid_epoch_exactly(tmp_path):
    straight = _identity_trainer(tmp_path / "straight", checkpoint_every_steps=3).fit()
    with pytest.raises(_Crash):
        _identity_trainer(tmp_path / "crash", cls=_CrashingTrainer, checkpoint_every_steps=3).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "crash" / "checkpoints")] == ["checkpoint-00000003.pt"]
    resumed_trainer = _identity_trainer(tmp_path / "crash", checkpoint_every_steps=3)
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.step_losses == straight.step_losses[3:]
    assert resumed.history[0]["train_loss"] == straight.history[0]["train_loss"]


def test_trainer_finds_the_domains_of_a_subset():
    faces = _DomainFaces()
    assert _dataset_domains(faces).tolist() == (np.arange(64) % 2).tolist()
    assert _dataset_domains(Subset(faces, [3, 4, 7])).tolist() == [1, 0, 1]
    assert _dataset_domains(SyntheticFaces(8, domains=True)) is None  # a flag, not one domain per sample
