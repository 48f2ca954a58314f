"""Few-shot episodes per collection, on the real training pack of the embedded benchmark and a small synthetic case."""
from __future__ import annotations

import numpy as np
import pytest

from afr.data.collections import training_collections
from afr.meta.episodes import Episode, EpisodeSampler, few_shot_support

pytestmark = pytest.mark.shared("data/faces")


@pytest.fixture(scope="module")
def pack(embedded_benchmark):
    """``(labels, collections)`` of every training record."""
    return embedded_benchmark.train_dataset().labels, training_collections(embedded_benchmark)


def _toy() -> tuple[np.ndarray, np.ndarray]:
    """Collection "a": identities 0-3 with 6 images, identity 4 with 2; collection "b": identities 5-7 with 4
    images; and "lq" copies of identities 0-3 (3 images each), sharing their labels. Shuffled."""
    labels = [i for i in range(4) for _ in range(6)] + [4, 4] + [i for i in (5, 6, 7) for _ in range(4)]
    names = ["a"] * 26 + ["b"] * 12
    labels += [i for i in range(4) for _ in range(3)]
    names += ["lq"] * 12
    order = np.random.default_rng(0).permutation(len(labels))
    return np.array(labels)[order], np.array(names)[order]


def _check_episode(episode: Episode, labels, collections, n: int, k: int, q: int) -> None:
    assert len(episode.identities) == len(set(episode.identities)) == n
    assert len(episode.support) == n * k and len(episode.query) == n * q
    assert not set(episode.support) & set(episode.query)
    assert len(set(episode.support)) == n * k and len(set(episode.query)) == n * q
    for indices, ways in ((episode.support, episode.support_labels()), (episode.query, episode.query_labels())):
        assert all(collections[i] == episode.collection for i in indices)
        assert [episode.identities[w] for w in ways] == [int(labels[i]) for i in indices]  # way-major, right labels


def test_real_episodes_are_disjoint_and_from_one_collection_and_its_identities(pack):
    labels, collections = pack
    sampler = EpisodeSampler(labels, collections, n_way=5, k_shot=2, q_query=2, seed=3)
    assert sampler.allowed == ("lowquality", "orl", "thermal_puj", "thermal_und", "yale")
    seen = set()
    for index in range(40):
        episode = sampler.episode(index)
        assert episode.collection == sampler.allowed[index % 5]  # round-robin by index
        _check_episode(episode, labels, collections, 5, 2, 2)
        assert set(episode.identities) <= set(sampler.eligible_identities(episode.collection))
        seen.add(episode.collection)
    assert seen == set(sampler.allowed)


def test_held_out_collection_and_excluded_identities_never_appear(pack):
    labels, collections = pack
    target = "thermal_und"
    held_out = {int(label) for label, name in zip(labels, collections) if name == target}
    allowed = [name for name in sorted(set(collections.tolist())) if name != target]
    # also exclude two ORL identities: they must vanish from ORL and from the low-quality collection alike
    orl = sorted({int(label) for label, name in zip(labels, collections) if name == "orl"})[:2]
    sampler = EpisodeSampler(labels, collections, 5, 1, 3, allowed=allowed,
                             exclude_identities=held_out | set(orl), seed=0)
    for index in range(60):
        episode = sampler.episode(index)
        assert episode.collection != target
        assert not set(episode.identities) & (held_out | set(orl))
        assert not {int(labels[i]) for i in episode.support + episode.query} & (held_out | set(orl))
        assert all(collections[i] != target for i in episode.support + episode.query)
    assert not set(sampler.eligible_identities("lowquality")) & set(orl)
    with pytest.raises(ValueError, match="'thermal_und' is not allowed"):
        sampler.episode(0, collection=target)


def test_episodes_are_deterministic_in_seed_and_index(pack):
    labels, collections = pack
    make = lambda seed: EpisodeSampler(labels, collections, 5, 2, 3, seed=seed)  # noqa: E731
    sampler = make(0)
    assert sampler.episode(7) == make(0).episode(7) == sampler.episode(7)
    assert sampler.episode(7) != sampler.episode(12)  # same collection (7 % 5 == 12 % 5)
    assert sampler.episode(7) != make(1).episode(7)
    assert sampler.episode(3, "orl") != sampler.episode(4, "orl")


def test_synthetic_eligibility_shared_labels_and_errors():
    labels, collections = _toy()
    sampler = EpisodeSampler(labels, collections, 3, 2, 2, allowed=["a", "b"])
    assert sampler.eligible_identities("a") == [0, 1, 2, 3]  # identity 4 has only 2 images
    assert sampler.eligible_identities("b") == [5, 6, 7]
    assert sampler.eligible_identities("lq") == []  # 3 images each < k + q
    for index in range(10):
        episode = sampler.episode(index)
        _check_episode(episode, labels, collections, 3, 2, 2)
    # the low-quality copies share labels 0-3 with "a": a "lq" episode only uses the "lq" images
    episode = EpisodeSampler(labels, collections, 2, 1, 2, allowed=["lq"]).episode(0)
    _check_episode(episode, labels, collections, 2, 1, 2)

    cases = [
        (dict(n_way=4, allowed=["a", "b"]), r"^collection 'b' has 3 eligible identities .* fewer than n_way=4$"),
        (dict(n_way=2, allowed=["a", "c"]), r"^unknown collection 'c'; the data holds a, b, lq$"),
        (dict(n_way=2, exclude_identities=[5, 6]), r"^collection 'b' has 1 eligible identities"),
        (dict(n_way=1), r"^an episode needs n_way >= 2"),
        (dict(n_way=2, allowed=[]), r"^allowed names no collection"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            EpisodeSampler(labels, collections, k_shot=2, q_query=2, **kwargs)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="one length"):
        EpisodeSampler(labels[:-1], collections, 2, 1, 1)
    with pytest.raises(ValueError, match="non-negative"):
        sampler.episode(-1)


def test_few_shot_support_gives_k_per_identity_of_the_collection(pack):
    labels, collections = pack
    for collection in ("thermal_und", "lowquality"):
        for k in (1, 3):
            support = few_shot_support(labels, collections, collection, k, seed=0)
            counts = {int(label): int(n) for label, n in
                      zip(*np.unique(labels[collections == collection], return_counts=True))}
            assert sorted(support) == sorted(label for label, n in counts.items() if n >= k)
            for label, indices in support.items():
                assert len(indices) == len(set(indices)) == k and indices == sorted(indices)
                assert all(int(labels[i]) == label and collections[i] == collection for i in indices)
            assert support == few_shot_support(labels, collections, collection, k, seed=0)
    assert few_shot_support(labels, collections, "thermal_und", 2, 0) != few_shot_support(
        labels, collections, "thermal_und", 2, 1)


def test_few_shot_support_skips_short_identities_and_errors_in_one_line():
    labels, collections = _toy()
    support = few_shot_support(labels, collections, "a", 4, seed=5)
    assert sorted(support) == [0, 1, 2, 3]  # identity 4 (2 images) is skipped
    assert len(few_shot_support(labels, collections, "a", 2, seed=5)) == 5
    for args, message in (
        (("c", 1), r"^unknown collection 'c'"),
        (("b", 5), r"^no identity of collection 'b' has 5 images \(the most is 4\)$"),
        (("a", 0), r"^k must be at least 1"),
    ):
        with pytest.raises(ValueError, match=message) as error:
            few_shot_support(labels, collections, *args)
        assert "\n" not in str(error.value)
