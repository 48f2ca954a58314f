"""InsightFace's 10-fold verification protocol, threshold-free metrics, and flip-test extraction."""
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from afr.eval.extract import chips_to_tensor, extract_embeddings
from afr.eval.verification import FAR_TARGETS, evaluate, evaluate_pairs, pair_distances


# ------------------------------------------------------------------------------ reference protocol
def reference_protocol(embeddings, issame, n_folds=10):
    """The protocol as written in words, with plain Python loops: (fold accuracies, thresholds)."""
    rows = [[float(value) for value in row] for row in embeddings]
    unit = []
    for row in rows:
        norm = math.sqrt(sum(value * value for value in row))
        unit.append([value / norm for value in row])
    n_pairs = len(rows) // 2
    distances = []
    for i in range(n_pairs):
        a, b = unit[2 * i], unit[2 * i + 1]
        distances.append(sum((x - y) ** 2 for x, y in zip(a, b)))
    thresholds = [i * 0.01 for i in range(400)]

    def accuracy(threshold, indices):
        correct = 0
        for k in indices:
            predicted_same = distances[k] < threshold
            correct += predicted_same == bool(issame[k])
        return correct / len(indices)

    # contiguous folds; the first n_pairs % n_folds folds are one pair longer
    sizes = [n_pairs // n_folds + (1 if fold < n_pairs % n_folds else 0) for fold in range(n_folds)]
    fold_accuracies, chosen = [], []
    start = 0
    for size in sizes:
        test = list(range(start, start + size))
        train = [k for k in range(n_pairs) if not start <= k < start + size]
        best_threshold, best_accuracy = None, -1.0
        for threshold in thresholds:
            train_accuracy = accuracy(threshold, train)
            if train_accuracy > best_accuracy:  # strict: the first threshold wins ties
                best_threshold, best_accuracy = threshold, train_accuracy
        fold_accuracies.append(accuracy(best_threshold, test))
        chosen.append(best_threshold)
        start += size
    return fold_accuracies, chosen


def seeded_pairs(n_pairs, dim, noise, seed):
    """Pairs of noisy copies (same) or independent vectors (different), labels in random order."""
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    first = rng.normal(size=(n_pairs, dim))
    second = np.where(issame[:, None], first + noise * rng.normal(size=(n_pairs, dim)), rng.normal(size=(n_pairs, dim)))
    embeddings = np.empty((2 * n_pairs, dim))
    embeddings[0::2], embeddings[1::2] = first, second
    return embeddings, issame


def assert_matches_reference(embeddings, issame, n_folds=10):
    result = evaluate(embeddings, issame, n_folds=n_folds)
    fold_accuracies, thresholds = reference_protocol(embeddings, issame, n_folds)
    assert result.fold_accuracies == fold_accuracies
    assert result.thresholds == thresholds
    assert result.accuracy_mean == float(np.mean(fold_accuracies))
    assert result.accuracy_std == float(np.std(fold_accuracies))
    return result


@pytest.mark.parametrize("n_pairs,dim,noise,seed", [(300, 16, 1.0, 0), (303, 32, 1.5, 1), (97, 8, 2.0, 2)])
def test_protocol_matches_reference_on_seeded_embeddings(n_pairs, dim, noise, seed):
    embeddings, issame = seeded_pairs(n_pairs, dim, noise, seed)
    result = assert_matches_reference(embeddings, issame)
    assert 0.5 < result.accuracy_mean < 1.0  # a case where the thresholds actually matter
    assert len(set(result.thresholds)) > 1  # folds choose different thresholds: the per-fold choice is tested


def test_protocol_matches_reference_with_ties_boundaries_and_uneven_folds():
    """23 pairs (folds of 3,3,3,2,...): distances exactly 0, 2 and 4 (the threshold 2.00 is on the grid
    and the rule is strict), and many equal-accuracy thresholds so the first one must win."""
    e0, e1, minus_e0 = [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]
    pairs = []
    labels = [True, False, True, True, False, False, True, False, True, False, False, True,
              True, False, True, False, False, True, True, False, True, False, True]
    for k, same in enumerate(labels):
        kind = k % 3
        if kind == 0:
            pairs += [e0, e0] if same else [e0, minus_e0]  # distance 0 or 4
        elif kind == 1:
            pairs += [e0, e1]  # distance exactly 2: a same pair here is a "hard" positive
        else:
            pairs += [e1, [0.6, 0.8]] if same else [e1, minus_e0]  # distance 0.4 or 2
    embeddings = np.array(pairs)
    distances = pair_distances(embeddings)
    assert {0.0, 2.0, 4.0} <= set(distances.round(12))
    result = assert_matches_reference(embeddings, np.array(labels))
    assert len(result.fold_accuracies) == 10 and result.n_pairs == 23


def test_pairs_exactly_on_the_threshold_are_predicted_different():
    """The rule is ``distance < threshold``: a pair whose distance equals the chosen threshold counts as
    "different". Two folds of 4 pairs, distances 1.995 (between the grid points 1.99 and 2.00),
    exactly 2.0 (orthogonal unit vectors; 2.00 is on the grid) and exactly 4.0 (opposite vectors).

    Expected by hand under the strict rule:
    * fold 1 = same@1.995, same@1.995, diff@2, diff@2. Only t = 2.00 separates them (train accuracy 1.0;
      0.5 below, 0.5 above).
    * fold 2 = same@1.995, same@2, diff@2, diff@4. Train accuracy 0.5 for t <= 1.99, 0.75 from t = 2.00 on
      (t = 2.00 misses same@2, t >= 2.01 accepts diff@2): the first maximum, 2.00, wins.
    * testing fold 1 at 2.00: all 4 right (1.0); testing fold 2 at 2.00: same@2 is not < 2.00 and is
      predicted different, the other 3 are right (0.75).
    (With ``<=`` fold 1 could not be separated at all and the mean would drop to 0.5.)
    """
    e0, e1, minus_e0 = [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]
    near = [0.0025, math.sqrt(1 - 0.0025**2)]  # squared distance to e0: 2 - 2 * 0.0025 = 1.995
    same_near, same_on, diff_on, diff_far = [e0, near], [e0, e1], [e0, e1], [e0, minus_e0]
    pairs = [same_near, same_near, diff_on, diff_on, same_near, same_on, diff_on, diff_far]
    issame = [True, True, False, False, True, True, False, False]
    embeddings = np.array([row for pair in pairs for row in pair])
    distances = pair_distances(embeddings)
    assert distances[[2, 3, 5, 6]].tolist() == [2.0, 2.0, 2.0, 2.0] and distances[7] == 4.0
    assert 1.99 < distances[0] < 2.0

    result = evaluate(embeddings, issame, n_folds=2)
    assert result.fold_accuracies == [1.0, 0.75], f"fold accuracies {result.fold_accuracies}, expected [1.0, 0.75]"
    assert result.thresholds == [2.0, 2.0], f"chosen thresholds {result.thresholds}, expected [2.0, 2.0]"
    assert result.accuracy_mean == 0.875


def test_single_fold_trains_and_tests_on_all_pairs():
    embeddings, issame = seeded_pairs(40, 8, 1.0, 3)
    single = evaluate(embeddings, issame, n_folds=1)
    # one fold: the chosen threshold is the best on all pairs, so nothing on the grid does better
    distances = pair_distances(embeddings)
    best_anywhere = max(np.mean((distances < t) == issame) for t in np.arange(0, 4, 0.01))
    assert single.accuracy_mean == best_anywhere and single.accuracy_std == 0.0


def test_perfectly_separable_pairs():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(40, 16))
    issame = np.arange(40) % 2 == 0
    other = np.where(issame[:, None], base + 1e-3 * rng.normal(size=base.shape), -base)  # opposite = distance 4
    result = evaluate_pairs(base, other, issame)
    assert result.accuracy_mean == 1.0 and result.accuracy_std == 0.0
    assert result.auc == 1.0 and result.eer == 0.0
    assert result.tar_at_far[0.1] == 1.0


def test_auc_and_eer_on_known_scores():
    """10 same / 10 different pairs in 2-D; one different pair is as close as the same pairs and one
    same pair as far as the different ones, so the ROC passes through FAR = FRR = 0.1."""
    angles_same = [0.1] * 9 + [1.5]
    angles_diff = [0.2] + [1.0 + 0.05 * k for k in range(9)]
    angles = angles_same + angles_diff
    issame = np.array([True] * 10 + [False] * 10)
    a = np.tile([1.0, 0.0], (20, 1))
    b = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    result = evaluate_pairs(a, b, issame, n_folds=2)
    similarity = np.cos(angles)
    assert result.auc == pytest.approx(roc_auc_score(issame, similarity), abs=1e-12)
    # Mann-Whitney count: P(similarity of a same pair > that of a different pair)
    wins = sum((s > d) + 0.5 * (s == d) for s in similarity[issame] for d in similarity[~issame])
    assert result.auc == pytest.approx(wins / 100, abs=1e-12)
    assert result.eer == pytest.approx(0.1, abs=1e-12)
    assert result.n_positive == 10 and result.n_negative == 10


def test_tar_at_far_needs_enough_negatives():
    embeddings, issame = seeded_pairs(300, 16, 1.0, 5)
    result = evaluate(embeddings, issame)
    assert 100 <= result.n_negative < 1000
    assert result.tar_at_far[1e-3] is None and result.tar_at_far[1e-4] is None
    assert result.tar_at_far[1e-1] is not None and result.tar_at_far[1e-2] is not None
    assert [far for far in FAR_TARGETS if any(f"{far:.0e}" in note for note in result.notes)] == [1e-3, 1e-4]
    # TAR@FAR=0.1 by hand: accept the pairs closer than the k-th closest different pair
    distances = pair_distances(embeddings)
    negatives = np.sort(distances[~issame])
    allowed = math.floor(0.1 * result.n_negative)  # false accepts allowed
    cut = negatives[allowed]  # accepting d < cut admits exactly `allowed` negatives (no ties here)
    assert result.tar_at_far[1e-1] == pytest.approx(np.mean(distances[issame] < cut))
    assert result.tar_at_far[1e-2] <= result.tar_at_far[1e-1]


def test_to_dict_is_json_ready():
    embeddings, issame = seeded_pairs(60, 8, 1.0, 6)
    data = json.loads(json.dumps(evaluate(embeddings, issame).to_dict()))
    assert set(data) >= {"accuracy_mean", "accuracy_std", "fold_accuracies", "thresholds", "auc", "eer",
                         "tar_at_far", "n_pairs", "n_positive", "n_negative", "notes"}
    assert data["tar_at_far"]["1e-01"] is not None and data["tar_at_far"]["1e-02"] is None


@pytest.mark.parametrize(
    "embeddings,issame,message",
    [
        (np.ones((5, 4)), [True, False], "2N, D"),
        (np.ones((4, 4)), [True, False, True], "one flag per pair"),
        (np.ones((4, 4)), [True, True], "both same and different"),
        (np.full((4, 4), np.nan), [True, False], "NaN"),
        (np.random.default_rng(0).normal(size=(10, 4)), [True, False, True, False, True], "5 pairs cannot be split"),
    ],
)
def test_bad_input_is_refused(embeddings, issame, message):
    with pytest.raises(ValueError, match=message):
        evaluate(embeddings, issame)


# ------------------------------------------------------------------------------ flip-test extraction
class TinyNet(nn.Module):
    """A deterministic, not mirror-symmetric embedding network on 8x8 chips."""

    input_size = 8

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.dropout = nn.Dropout(0.5)  # must be off during extraction

    def forward(self, x):
        return self.fc(self.dropout(torch.relu(self.conv(x))).flatten(1))


def random_chips(n, size, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8))


def unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_flip_test_embedding_is_normalised_sum_of_both_views():
    net = TinyNet().train()
    chips = random_chips(7, 8)
    batch = torch.stack([torch.from_numpy(chip).permute(2, 0, 1).float() / 255 for chip in chips])
    net.eval()
    with torch.no_grad():
        plain = net(batch).double().numpy()
        mirrored = net(torch.flip(batch, dims=[3])).double().numpy()
    net.train()
    embeddings = extract_embeddings(net, chips, batch_size=3)
    assert embeddings.dtype == np.float32 and embeddings.shape == (7, 5)
    np.testing.assert_allclose(embeddings, unit(plain + mirrored), rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(unit(plain), unit(plain + mirrored), atol=1e-3)  # the flip does change things
    np.testing.assert_allclose(extract_embeddings(net, chips, flip=False), unit(plain), atol=1e-6)
    np.testing.assert_allclose(extract_embeddings(net, np.stack(chips), batch_size=64), embeddings, atol=1e-6)
    assert net.training  # the caller's mode is restored


def test_chips_of_another_size_are_resized_bilinear_antialiased():
    net = TinyNet()
    chips = random_chips(3, 20, seed=1)
    big = torch.stack([torch.from_numpy(chip).permute(2, 0, 1).float() / 255 for chip in chips])
    small = torch.nn.functional.interpolate(big, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(chips_to_tensor(chips, 8), small.clamp(0, 1))
    with torch.no_grad():
        expected = unit(net.eval()(small).double().numpy())
    np.testing.assert_allclose(extract_embeddings(net, chips, flip=False), expected, atol=1e-6)


def test_bad_chips_are_refused():
    with pytest.raises(ValueError, match="image 1 must be an HxWx3 uint8"):
        extract_embeddings(TinyNet(), [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        extract_embeddings(TinyNet(), [])
