"""InsightFace ``.bin`` verification packs and the extracted ``pairs.txt`` layout."""
import hashlib
import logging
import os
import pickle
import struct

import numpy as np
import pytest

from afr.data.folder import folder_verification_pairs
from afr.data.images import CorruptImageError, decode_image, encode_jpeg, read_image
from afr.data.verification import (
    CorruptPackError,
    UnsafePickleError,
    load_bin,
    load_pack,
    load_pairs_folder,
    sha256_file,
    write_bin,
    write_pairs_folder,
)
from afr.paths import shared_root

ORL = shared_root() / "data" / "faces" / "orl"
needs_faces = pytest.mark.shared("data/faces/orl")


def orl_pairs(n_identities=4, per_identity=3):
    """Real ORL images and every same pair plus as many different pairs: (images, issame, names)."""
    faces, names = [], []
    for identity in range(1, n_identities + 1):
        for number in range(1, per_identity + 1):
            faces.append(read_image(ORL / f"s{identity}" / f"{number}.pgm"))
            names.append(f"s{identity}")
    labels = np.array([int(name[1:]) for name in names])
    pairs, issame = folder_verification_pairs(labels, seed=0, n_folds=2)
    images = [faces[i] for pair in pairs for i in pair]
    return images, issame, [names[i] for pair in pairs for i in pair]


@needs_faces
def test_bin_round_trip_and_insightface_layout(tmp_path, caplog):
    images, issame, _ = orl_pairs()
    path = tmp_path / "orl.bin"
    digest = write_bin(path, images, issame)

    # what InsightFace's loader sees: a plain pickle of (list of JPEG bytes, list of bools)
    with path.open("rb") as handle:
        bins, issame_list = pickle.load(handle)
    assert isinstance(bins, list) and all(isinstance(item, bytes) and item[:2] == b"\xff\xd8" for item in bins)
    assert issame_list == [bool(flag) for flag in issame]

    with caplog.at_level(logging.INFO, logger="afr.data.verification"):
        loaded, loaded_issame = load_bin(path)
    assert digest in caplog.text and str(path) in caplog.text
    assert len(loaded) == len(images) == 2 * len(issame)
    for image, original in zip(loaded, images):
        assert image.dtype == np.uint8 and image.shape == (112, 92, 3)
        np.testing.assert_array_equal(image, decode_image(encode_jpeg(original)))
    np.testing.assert_array_equal(loaded_issame, issame)

    pack = load_pack(path)
    assert pack.name == "orl" and len(pack) == len(issame)
    assert pack.sha256 == digest == sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def py2_pack_bytes(bins, issame):
    """A protocol-2 pickle as Python 2 writes ``(bins, issame)``: images as BINSTRING ``str``."""
    body = b"\x80\x02(" + b"".join(b"T" + struct.pack("<I", len(item)) + item for item in bins) + b"l"
    body += b"(" + b"".join(b"\x88" if flag else b"\x89" for flag in issame) + b"l"
    return body + b"\x86."


@needs_faces
def test_python2_pack_loads_with_bytes_encoding(tmp_path):
    images, issame, _ = orl_pairs(n_identities=2, per_identity=2)
    bins = [encode_jpeg(image) for image in images]
    path = tmp_path / "py2.bin"
    path.write_bytes(py2_pack_bytes(bins, issame))
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(path.read_bytes())  # why InsightFace retries with encoding='bytes'
    loaded, loaded_issame = load_bin(path)
    assert [image.tobytes() for image in loaded] == [decode_image(item).tobytes() for item in bins]
    np.testing.assert_array_equal(loaded_issame, issame)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(([_Exploit(marker), b"x"], [True]))
    path = tmp_path / "evil.bin"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"evil\.bin.*system"):
        load_bin(path)
    assert not marker.exists()

    # control: the same bytes through a plain unpickler do run the payload
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(([_Exploit(control)], [])))
    assert control.exists()


def random_jpegs(count, seed=0):
    rng = np.random.default_rng(seed)
    return [encode_jpeg(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("kind", ["bool array", "list of numpy.bool_"])
def test_numpy_issame_from_third_party_packers_loads(tmp_path, protocol, kind):
    """``issame_list`` as a numpy bool array or a list of numpy.bool_, pickled as InsightFace's packers do
    (protocol 2 spells bytes through ``_codecs.encode``; 5 is ``HIGHEST_PROTOCOL``)."""
    issame = np.array([True, False, False, True, True])
    bins = random_jpegs(2 * len(issame))
    flags = issame if kind == "bool array" else [np.bool_(flag) for flag in issame]
    path = tmp_path / "numpy.bin"
    path.write_bytes(pickle.dumps((bins, flags), protocol=protocol))
    images, loaded_issame = load_bin(path)
    assert loaded_issame.dtype == bool and loaded_issame.tolist() == issame.tolist()
    assert [image.tobytes() for image in images] == [decode_image(item).tobytes() for item in bins]


@pytest.mark.parametrize(
    "issame,message",
    [
        (np.array([1, 0]), "numpy dtype 'i8'"),
        (np.array([True, False], dtype=object), "numpy dtype 'O"),
        ([np.int64(1), np.int64(0)], "numpy dtype 'i8'"),
        (np.array([[True], [False]]), r"shape \(2, 1\)"),
        (np.array([True, False]).view(np.recarray), r"global numpy\.rec\S*recarray"),
    ],
    ids=["int array", "object array", "numpy ints", "2-D array", "ndarray subclass"],
)
def test_numpy_values_other_than_bool_are_refused(tmp_path, issame, message):
    path = tmp_path / "other.bin"
    path.write_bytes(pickle.dumps((random_jpegs(4), issame), protocol=4))
    with pytest.raises(UnsafePickleError, match=rf"other\.bin: refusing .*{message}"):
        load_bin(path)


def test_allowed_globals_cannot_be_misused(tmp_path):
    """The few allowed globals only rebuild bool data: other uses of them are refused or fail."""
    codec = tmp_path / "codec.bin"  # protocol 0: _codecs.encode('x', 'rot13')
    codec.write_bytes(b"(lp0\nc_codecs\nencode\np1\n(Vx\nVrot13\ntRp2\na(I01\nlp3\ntp4\n.")
    with pytest.raises(UnsafePickleError, match=r"codec\.bin: refusing _codecs\.encode with 'rot13'"):
        load_bin(codec)

    called = tmp_path / "called.bin"  # numpy.ndarray((2,)): the class itself is never handed out
    called.write_bytes(b"(cnumpy\nndarray\n(I2\ntRp0\n(I01\nlp1\ntp2\n.")
    with pytest.raises(CorruptPackError, match=r"called\.bin: not a readable verification pack"):
        load_bin(called)


@needs_faces
def test_corrupt_packs_each_give_one_error_naming_the_file(tmp_path):
    images, issame, _ = orl_pairs(n_identities=2, per_identity=2)
    good = tmp_path / "good.bin"
    write_bin(good, images, issame)

    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CorruptPackError, match=r"truncated\.bin"):
        load_bin(truncated)

    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(pickle.dumps({"bins": [], "issame": []}))
    with pytest.raises(CorruptPackError, match=r"wrong\.bin.*\(bins, issame_list\)"):
        load_bin(wrong)

    uneven = tmp_path / "uneven.bin"
    uneven.write_bytes(pickle.dumps(([encode_jpeg(images[0])] * 3, [True])))
    with pytest.raises(CorruptPackError, match=r"uneven\.bin: 3 images for 1 pairs"):
        load_bin(uneven)

    broken = tmp_path / "broken.bin"
    bins = [encode_jpeg(image) for image in images]
    bins[3] = bins[3][:200]  # a JPEG cut short
    broken.write_bytes(pickle.dumps((bins, [bool(flag) for flag in issame])))
    with pytest.raises(CorruptImageError, match=r"broken\.bin image 3"):
        load_bin(broken)

    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        load_bin(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="expected twice as many"):
        write_bin(tmp_path / "x.bin", images[:3], issame[:2])


# ------------------------------------------------------------------------------ pairs.txt folders
@needs_faces
def test_pairs_folder_round_trip_on_orl(tmp_path):
    images, issame, names = orl_pairs()
    pairs_file = write_pairs_folder(tmp_path / "lfw", images, issame, names=names)
    lines = pairs_file.read_text().splitlines()
    n_same = int(issame.sum())
    assert lines[0] == f"1\t{n_same}" and len(lines) == 1 + len(issame)
    first_same = next(i for i, flag in enumerate(issame) if flag)
    name = names[2 * first_same]
    assert lines[1 + first_same].split("\t")[0] == name and len(lines[1 + first_same].split("\t")) == 3
    assert (tmp_path / "lfw" / name / f"{name}_0001.jpg").is_file()

    loaded, loaded_issame = load_pairs_folder(tmp_path / "lfw")
    np.testing.assert_array_equal(loaded_issame, issame)
    for image, original in zip(loaded, images):
        np.testing.assert_array_equal(image, decode_image(encode_jpeg(original)))

    default_names = write_pairs_folder(tmp_path / "anon", images, issame)
    again, again_issame = load_pairs_folder(default_names.parent, default_names)
    np.testing.assert_array_equal(again_issame, issame)
    assert all(np.array_equal(a, b) for a, b in zip(again, loaded))

    with pytest.raises(ValueError, match="contradict"):
        write_pairs_folder(tmp_path / "bad", images, ~issame, names=names)


@needs_faces
def test_hand_written_lfw_pairs_file(tmp_path):
    root = tmp_path / "lfw"
    for name in ("Alice", "Bob"):
        (root / name).mkdir(parents=True)
        for number in (1, 2):
            (root / name / f"{name}_{number:04d}.jpg").write_bytes(
                encode_jpeg(read_image(ORL / ("s1" if name == "Alice" else "s2") / f"{number}.pgm")))
    # LFW header "folds pairs_per_fold": per fold that many same then that many different pairs
    (root / "pairs.txt").write_text("2\t1\nAlice\t1\t2\nAlice\t1\tBob\t2\nBob\t1\t2\nBob\t1\tAlice\t2\n")
    images, issame = load_pairs_folder(root)
    assert issame.tolist() == [True, False, True, False] and len(images) == 8
    np.testing.assert_array_equal(images[3], read_image(root / "Bob" / "Bob_0002.jpg"))

    (root / "pairs.txt").write_text("3\t1\nAlice\t1\t2\nAlice\t1\tBob\t2\n")
    with pytest.raises(CorruptPackError, match=r"pairs\.txt: header announces 6 pairs, the file lists 2"):
        load_pairs_folder(root)
    (root / "pairs.txt").write_text("Alice\t1\t3\n")
    with pytest.raises(FileNotFoundError, match="Alice_0003.jpg"):
        load_pairs_folder(root)
    (root / "pairs.txt").write_text("Bob\t1\t2\n")
    bob = root / "Bob" / "Bob_0002.jpg"
    bob.write_bytes(bob.read_bytes()[:300])  # a truncated JPEG
    with pytest.raises(CorruptImageError, match="Bob_0002.jpg"):
        load_pairs_folder(root)
    (root / "pairs.txt").write_text("Alice\tone\t2\n")
    with pytest.raises(CorruptPackError, match=r"pairs\.txt: line 1"):
        load_pairs_folder(root)
