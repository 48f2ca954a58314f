from collections import Counter

import numpy as np
import pytest

from afr.data.degrade import degrade
from afr.data.pairs import balanced_pairs, interleave_folds
from afr.data.sources import deepface_identities, list_all, read_deepface_pairs, LabelledPair
from afr.paths import MissingResourceError

needs_shared = pytest.mark.shared("data")


@needs_shared
def test_collections_have_the_published_sizes():
    faces = list_all()
    images = Counter(face.source for face in faces)
    identities = {s: len({f.identity for f in faces if f.source == s}) for s in images}
    assert images == {"orl": 400, "yale": 164, "deepface": 61, "thermal_und": 410, "thermal_puj": 213}
    assert identities == {"orl": 40, "yale": 15, "deepface": 13, "thermal_und": 82, "thermal_puj": 40}
    assert not any("NoRegistered" in str(face.path) for face in faces)


@needs_shared
def test_deepface_identities_agree_with_every_published_pair():
    pairs = read_deepface_pairs()
    identity = deepface_identities(pairs)
    assert len(pairs) == 280 and sum(p.same for p in pairs) == 140
    assert all((identity[p.file_a] == identity[p.file_b]) == p.same for p in pairs)


def test_inconsistent_pair_list_is_refused():
    pairs = [LabelledPair("a", "b", True), LabelledPair("b", "c", True), LabelledPair("a", "c", False)]
    with pytest.raises(ValueError, match="inconsistent"):
        deepface_identities(pairs)


def test_missing_collection_names_the_folder(tmp_path):
    with pytest.raises(MissingResourceError, match="orl"):
        list_all(tmp_path)


def test_balanced_pairs_are_balanced_valid_and_fold_ordered():
    identities = [f"id{i // 5}" for i in range(60)]  # 12 identities x 5 images -> 120 same pairs
    pairs = balanced_pairs(identities, max_pairs=100, seed=3)
    same = np.array([s for *_, s in pairs])
    assert len(pairs) == 100 and same.sum() == 50
    assert all((identities[a] == identities[b]) == s for a, b, s in pairs)
    assert len({(a, b) for a, b, _ in pairs}) == 100
    for fold in np.array_split(same, 10):  # each of the 10 protocol folds holds both classes
        assert fold.sum() == 5 and (~fold).sum() == 5
    assert pairs == balanced_pairs(identities, max_pairs=100, seed=3)
    assert pairs != balanced_pairs(identities, max_pairs=100, seed=4)


def test_interleave_keeps_every_pair_once():
    ordered = interleave_folds([(0, 1)] * 7, [(2, 3)] * 7, n_folds=3)
    assert [s for *_, s in ordered].count(True) == 7 and len(ordered) == 14
    assert ordered[0][-1] is True and ordered[-1][-1] is False


def test_balanced_pairs_needs_positives():
    with pytest.raises(ValueError, match="two images"):
        balanced_pairs(["a", "b", "c"], max_pairs=10, seed=0)


def test_degrade_is_reproducible_and_lowers_detail():
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 256, size=(150, 150, 3), dtype=np.uint8)
    first, again, other = degrade(chip, 0, "a.jpg"), degrade(chip, 0, "a.jpg"), degrade(chip, 0, "b.jpg")
    assert first.shape == chip.shape and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    high_freq = lambda im: np.abs(np.diff(im.astype(float), axis=1)).mean()
    assert high_freq(first) < 0.5 * high_freq(chip)
