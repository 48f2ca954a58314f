"""``root/<identity>/<image>`` folders and the all-positives + seeded-negatives pair list."""
import numpy as np
import pytest
from sklearn.model_selection import KFold

from afr.data.folder import ImageFolderDataset, folder_verification_pairs
from afr.data.images import CorruptImageError, encode_jpeg, read_image
from afr.paths import shared_root

ORL = shared_root() / "data" / "faces" / "orl"
needs_faces = pytest.mark.shared("data/faces/orl")


@needs_faces
def test_orl_folder_dataset():
    ds = ImageFolderDataset(ORL)  # 40 identity folders s1..s40 plus a README file at the top
    assert len(ds) == 400 and ds.num_classes == 40
    assert ds.classes == sorted(f"s{i}" for i in range(1, 41)) and ds.classes[:3] == ["s1", "s10", "s11"]
    assert np.bincount(ds.labels).tolist() == [10] * 40
    path, label = ds.samples[12]
    assert path.parent.name == ds.classes[label] and path.suffix == ".pgm"
    image, label_again = ds[12]
    assert label_again == label and image.dtype == np.uint8 and image.shape == (112, 92, 3)
    np.testing.assert_array_equal(image, read_image(path))
    assert ImageFolderDataset(ORL, transform=lambda array: array.shape)[0][0] == (112, 92, 3)


@needs_faces
def test_symlinked_subset_extensions_and_errors(tmp_path):
    root = tmp_path / "faces"
    root.mkdir()
    for name in ("s2", "s1"):
        (root / name).symlink_to(ORL / name)
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()
    ds = ImageFolderDataset(root)
    assert ds.classes == ["s1", "s2"] and len(ds) == 20 and ds.class_to_idx == {"s1": 0, "s2": 1}

    with pytest.raises(FileNotFoundError, match="no images found under .*faces"):
        ImageFolderDataset(root, extensions=["jpg"])
    with pytest.raises(FileNotFoundError, match="image folder not found: .*nowhere"):
        ImageFolderDataset(tmp_path / "nowhere")
    bare = tmp_path / "bare"
    (bare / "person").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images found"):
        ImageFolderDataset(bare)

    broken = bare / "person" / "face.jpg"
    broken.write_bytes(encode_jpeg(read_image(ORL / "s1" / "1.pgm"))[:200])
    with pytest.raises(CorruptImageError, match="face.jpg"):
        ImageFolderDataset(bare)[0]


def test_folder_pairs_all_positives_and_seeded_negatives():
    labels = np.repeat(np.arange(8), 10)[np.random.default_rng(3).permutation(80)]
    pairs, issame = folder_verification_pairs(labels, 0)
    assert pairs.shape == (720, 2) and pairs.dtype == np.int64 and issame.sum() == 360
    np.testing.assert_array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], issame)
    assert (pairs[:, 0] < pairs[:, 1]).all() and len({tuple(p) for p in pairs.tolist()}) == 720
    positives = {(i, j) for i in range(80) for j in range(i + 1, 80) if labels[i] == labels[j]}
    assert {tuple(p) for p in pairs[issame].tolist()} == positives
    for _, test in KFold(10).split(pairs):  # InsightFace's contiguous folds each hold both classes
        assert 0 < issame[test].sum() < len(test)

    again, _ = folder_verification_pairs(labels, 0)
    other, _ = folder_verification_pairs(labels, 1)
    np.testing.assert_array_equal(again, pairs)
    assert {tuple(p) for p in other[~issame].tolist()} != {tuple(p) for p in pairs[~issame].tolist()}

    capped, capped_issame = folder_verification_pairs(labels, 0, max_negatives=50)
    assert capped_issame.sum() == 360 and (~capped_issame).sum() == 50


def test_folder_pairs_large_folder_uses_sampling_and_refuses_degenerate_labels():
    labels = np.repeat(np.arange(1000), 3)  # 4.5 M pairs: negatives by rejection sampling
    pairs, issame = folder_verification_pairs(labels, 7)
    assert issame.sum() == (~issame).sum() == 3000
    np.testing.assert_array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], issame)
    assert len({tuple(p) for p in pairs.tolist()}) == 6000

    with pytest.raises(ValueError, match="no identity has two images"):
        folder_verification_pairs([0, 1, 2])
    with pytest.raises(ValueError, match="only one identity"):
        folder_verification_pairs([4, 4, 4])
