"""InsightFace RecordIO packs without mxnet: framing, IRHeader, layout, errors, DataLoader workers."""
import pickle
import struct

import numpy as np
import pytest

from afr.data.images import CorruptImageError, decode_image, encode_jpeg, read_image
from afr.data.recordio import (
    MAGIC,
    IRHeader,
    RecordIODataset,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    encode_record,
    pack,
    unpack,
    write_pack,
)
from afr.paths import shared_root

needs_faces = pytest.mark.shared("data/faces/orl")
MAGIC_LE = struct.pack("<I", MAGIC)


def orl_images(identities=(1, 2, 3), per_identity=4):
    root = shared_root() / "data" / "faces" / "orl"
    images, labels = [], []
    for identity in identities:
        for number in range(1, per_identity + 1):
            images.append(read_image(root / f"s{identity}" / f"{number}.pgm"))
            labels.append(identity)
    return images, labels


def jpeg_with_aligned_magic(image: np.ndarray, copies: int = 2) -> bytes:
    """Valid JPEG bytes whose comment segment holds the RecordIO magic at 4-byte-aligned offsets.

    Layout: SOI (2) + COM marker (2) + length (2) + 2 filler bytes, so the comment data from offset 8
    on is aligned; the magic is placed at offsets 8, 16, ... The IRHeader (24 bytes) and any float
    labels (4 bytes each) keep that alignment inside the record payload.
    """
    body = encode_jpeg(image)
    assert body[:2] == b"\xff\xd8"
    comment = b"ab" + b"".join(MAGIC_LE + b"XXXX" for _ in range(copies))
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    data = body[:2] + segment + body[2:]
    assert data.index(MAGIC_LE) == 8
    return data


def frames(rec_bytes: bytes) -> list[tuple[int, int]]:
    """(continuation flag, length) of every physical part in a .rec file, parsed by hand."""
    out, offset = [], 0
    while offset < len(rec_bytes):
        magic, lrecord = struct.unpack_from("<II", rec_bytes, offset)
        assert magic == MAGIC
        length = lrecord & ((1 << 29) - 1)
        out.append((lrecord >> 29, length))
        offset += 8 + (length + 3) // 4 * 4
    return out


# ------------------------------------------------------------------------------ framing and payload
def test_split_record_framing_follows_dmlc_rule(tmp_path):
    # magic at aligned offsets 0, 8 and 12; one at offset 18 (unaligned) stays data; 3-byte tail
    payload = MAGIC_LE + b"1234" + MAGIC_LE + MAGIC_LE + b"zz" + MAGIC_LE + b"abc"
    expected = (
        struct.pack("<II", MAGIC, (1 << 29) | 0)  # first part: empty (magic at 0)
        + struct.pack("<II", MAGIC, (2 << 29) | 4) + b"1234"  # middle part up to the magic at 8
        + struct.pack("<II", MAGIC, (2 << 29) | 0)  # middle part between the magics at 8 and 12
        + struct.pack("<II", MAGIC, (3 << 29) | 9) + b"zz" + MAGIC_LE + b"abc" + b"\0\0\0"  # last + pad
    )
    assert encode_record(payload) == expected
    assert encode_record(b"abcde") == struct.pack("<II", MAGIC, 5) + b"abcde\0\0\0"

    path = tmp_path / "raw.rec"
    payloads = [payload, b"", b"x" * 7, MAGIC_LE, b"plain record"]
    with RecordIOWriter(path) as writer:
        offsets = [writer.write(item) for item in payloads]
    reader = RecordIOReader(path)
    assert [reader.read_at(offset)[0] for offset in offsets] == payloads
    assert [item for _, item in reader] == payloads
    assert [offset for offset, _ in reader] == offsets


def _part(flag: int, data: bytes) -> bytes:
    """One physical part: magic, (flag << 29 | length), data, zero padding to 4 bytes."""
    return struct.pack("<II", MAGIC, (flag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)


@pytest.mark.parametrize(
    "parts,flag,byte",
    [
        ([(2, b"abcd"), (3, b"efgh")], 2, 0),  # a middle part without a start
        ([(3, b"efgh"), (1, b"abcd"), (3, b"ijkl")], 3, 0),  # the end before the start
        ([(1, b"abcd"), (1, b"efgh"), (3, b"ijkl")], 1, 12),  # a second start inside a split record
        ([(1, b"abcd"), (0, b"whole")], 0, 12),  # a whole record inside a split record
    ],
    ids=["middle-without-start", "end-before-start", "second-start", "whole-inside-split"],
)
def test_split_parts_out_of_order_are_refused(tmp_path, parts, flag, byte):
    """Continuation flags must run 0 (whole) or 1 (start), 2 (middle)..., 3 (end); anything else is corrupt."""
    path = tmp_path / "disordered.rec"
    path.write_bytes(b"".join(_part(part_flag, data) for part_flag, data in parts))
    with pytest.raises(RecordIOError, match=rf"disordered\.rec: record at byte 0: continuation flag {flag} "
                                            rf"out of sequence at byte {byte}$"):
        RecordIOReader(path).read_at(0)
    with pytest.raises(RecordIOError, match="out of sequence"):
        list(RecordIOReader(path))


def test_irheader_pack_unpack_scalar_and_array_labels():
    scalar = pack(IRHeader(0, 7.0, 3, 0), b"img")
    assert len(scalar) == 24 + 3 and struct.unpack_from("<IfQQ", scalar) == (0, 7.0, 3, 0)
    header, image = unpack(scalar)
    assert header.flag == 0 and header.label == 7.0 and header.id == 3 and image == b"img"

    array = pack(IRHeader(0, [5, 2], 9, 1), b"jpeg")
    assert struct.unpack_from("<IfQQ2f", array) == (2, 0.0, 9, 1, 5.0, 2.0) and array.endswith(b"jpeg")
    header, image = unpack(array)
    assert header.flag == 2 and header.label.tolist() == [5.0, 2.0] and image == b"jpeg"

    with pytest.raises(RecordIOError, match="rec7"):
        unpack(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 8, "rec7")  # 3 labels announced, 2 present


# ------------------------------------------------------------------------------ InsightFace layout
@needs_faces
def test_write_pack_round_trip_with_split_record_and_domains(tmp_path):
    images, identities = orl_images((3, 1, 2), per_identity=3)
    labels = np.array([{1: 0, 2: 1, 3: 2}[i] for i in identities])  # input not sorted by label
    domains = np.array([0, 1, 2] * 3)
    crafted = jpeg_with_aligned_magic(images[4])
    given = [encode_jpeg(image) for image in images]
    given[4] = crafted  # stored as given: the record must be split
    order = write_pack(tmp_path / "train", given, labels, domains=domains)

    assert sorted(path.name for path in (tmp_path / "train").iterdir()) == ["property", "train.idx", "train.rec"]
    assert (tmp_path / "train" / "property").read_text().strip() == "3,112,92"
    flags = [flag for flag, _ in frames((tmp_path / "train" / "train.rec").read_bytes())]
    assert flags.count(1) == 1 and flags.count(2) == 1 and flags.count(3) == 1  # two magics -> 3 parts
    np.testing.assert_array_equal(order, np.argsort(labels, kind="stable"))

    ds = RecordIODataset(tmp_path / "train")
    assert len(ds) == 9 and ds.num_classes == 3 and ds.image_size == (112, 92)
    np.testing.assert_array_equal(ds.labels, labels[order])
    np.testing.assert_array_equal(ds.domains, domains[order])
    assert ds.identity_ranges == {0: (1, 4), 1: (4, 7), 2: (7, 10)}
    assert list(ds.identity_indices(1)) == [3, 4, 5]
    assert ds.has_domains  # items are (image, identity, domain)
    for index, source in enumerate(order):
        image, label, domain = ds[index]
        assert image.dtype == np.uint8 and image.shape == (112, 92, 3)
        np.testing.assert_array_equal(image, decode_image(given[source]))
        assert label == labels[source] and domain == domains[source]
        np.testing.assert_array_equal(ds.record_label(index), [labels[source], domains[source]])
        assert ds.read_raw(index)[1] == given[source]  # split record reassembled byte for byte


@needs_faces
def test_scalar_labels_transform_and_prefix_layout(tmp_path):
    images, identities = orl_images((1, 2), per_identity=2)
    labels = [identity - 1 for identity in identities]
    write_pack(tmp_path / "faces.rec", images, labels)
    assert {p.name for p in tmp_path.iterdir()} == {"faces.rec", "faces.idx", "property"}
    for prefix in (tmp_path / "faces", tmp_path / "faces.rec"):
        ds = RecordIODataset(prefix, transform=lambda image: image.mean())
        assert ds.domains is None and ds.labels.tolist() == labels
        assert ds.record_label(3).tolist() == [1.0]
        value, label = ds[2]
        assert label == 1 and value == pytest.approx(decode_image(encode_jpeg(images[2])).mean())


@needs_faces
def test_hand_built_pack_is_read(tmp_path):
    """Bytes laid out by hand from the published format (no library writer), incl. a split record."""
    images, _ = orl_images((1,), per_identity=2)
    first = encode_jpeg(images[0])
    second = jpeg_with_aligned_magic(images[1], copies=1)

    def frame(flag, data):
        return struct.pack("<II", MAGIC, (flag << 29) | len(data)) + data + b"\0" * (-len(data) % 4)

    records = {  # key -> framed bytes; labels: image 1 -> identity 0, image 2 -> identity 1
        0: frame(0, struct.pack("<IfQQ2f", 2, 0.0, 0, 0, 3.0, 5.0)),
        1: frame(0, struct.pack("<IfQQ", 0, 0.0, 1, 0) + first),
    }
    payload = struct.pack("<IfQQ", 0, 1.0, 2, 0) + second
    cut = 24 + 8  # the magic sits at offset 8 of the JPEG
    assert payload[cut : cut + 4] == MAGIC_LE
    records[2] = frame(1, payload[:cut]) + frame(3, payload[cut + 4 :])  # aligned cut: no padding
    records[3] = frame(0, struct.pack("<IfQQ2f", 2, 0.0, 3, 0, 1.0, 2.0))
    records[4] = frame(0, struct.pack("<IfQQ2f", 2, 0.0, 4, 0, 2.0, 3.0))
    rec, idx, offset = b"", "", 0
    for key, data in records.items():
        idx += f"{key}\t{offset}\n"
        rec += data
        offset += len(data)
    (tmp_path / "train.rec").write_bytes(rec)
    (tmp_path / "train.idx").write_text(idx)
    (tmp_path / "property").write_text("2,112,92")

    ds = RecordIODataset(tmp_path)
    assert len(ds) == 2 and ds.num_classes == 2 and ds.identity_ranges == {0: (1, 2), 1: (2, 3)}
    assert ds.labels.tolist() == [0, 1] and ds.domains is None
    np.testing.assert_array_equal(ds[0][0], decode_image(first))
    np.testing.assert_array_equal(ds[1][0], decode_image(second))
    assert ds.read_raw(1)[1] == second


# ------------------------------------------------------------------------------ errors
@pytest.fixture
def small_pack(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    write_pack(tmp_path / "pack", images, [0, 0, 1, 1])
    return tmp_path / "pack"


def idx_offsets(pack_dir):
    return dict(tuple(map(int, line.split("\t"))) for line in (pack_dir / "train.idx").read_text().splitlines())


@pytest.mark.parametrize("name", ["train.rec", "train.idx", "property"])
def test_missing_file_is_named(small_pack, name):
    (small_pack / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        RecordIODataset(small_pack)


def test_truncated_rec_names_file_and_record(small_pack):
    rec = small_pack / "train.rec"
    offsets = idx_offsets(small_pack)
    full = rec.read_bytes()
    ds = RecordIODataset(small_pack)
    rec.write_bytes(full[: offsets[3] + 40])  # cut inside record 3's image after the dataset was opened
    with pytest.raises(RecordIOError, match=r"train\.rec: record 3 .*truncated"):
        ds[2]
    with pytest.raises(RecordIOError, match=r"train\.idx: line 5: record 4 .*past the end"):
        RecordIODataset(small_pack)
    rec.write_bytes(full[:-4])  # the last identity record (6) loses its tail
    with pytest.raises(RecordIOError, match=r"train\.rec: record 6 .*truncated"):
        RecordIODataset(small_pack)


def test_idx_past_end_is_refused(small_pack):
    with (small_pack / "train.idx").open("a") as handle:
        handle.write("99\t1000000\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: line 8: record 99 .*past the end"):
        RecordIODataset(small_pack)


def test_bad_magic_and_bad_image_name_the_record(small_pack):
    rec = small_pack / "train.rec"
    offsets = idx_offsets(small_pack)
    data = bytearray(rec.read_bytes())
    data[offsets[2] : offsets[2] + 4] = b"\0\0\0\0"  # destroy record 2's magic
    image_start = offsets[4] + 8 + 24
    data[image_start : image_start + 64] = b"\x11" * 64  # record 4: valid framing, broken JPEG
    rec.write_bytes(bytes(data))
    ds = RecordIODataset(small_pack)
    with pytest.raises(RecordIOError, match=r"train\.rec: record 2 .*bad magic"):
        ds[1]
    with pytest.raises(CorruptImageError, match=r"train\.rec record 4"):
        ds[3]
    assert ds[0][1] == 0  # other records are still readable


def test_garbage_property_is_named(small_pack):
    (small_pack / "property").write_text("many,112")
    with pytest.raises(RecordIOError, match="property"):
        RecordIODataset(small_pack)


# ------------------------------------------------------------------------------ workers
@needs_faces
def test_dataloader_workers_match_direct_indexing(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    images, identities = orl_images((1, 2, 3, 4), per_identity=3)
    write_pack(tmp_path / "train", images, [i - 1 for i in identities], domains=[0, 1, 2] * 4)
    ds = RecordIODataset(tmp_path / "train")
    direct = [ds[i] for i in range(len(ds))]  # opens the file in this process before the workers fork
    clone = pickle.loads(pickle.dumps(ds))
    assert all(np.array_equal(clone[i][0], direct[i][0]) for i in range(len(ds)))

    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=2)
    loaded = list(loader)
    assert len(loaded) == len(direct)
    for (image, label, domain), (expected_image, expected_label, expected_domain) in zip(loaded, direct):
        assert torch.equal(image, torch.from_numpy(np.array(expected_image))) and int(label) == expected_label
        assert int(domain) == expected_domain


def test_a_binary_index_file_is_one_error_naming_it(tmp_path):
    from afr.data.recordio import RecordIOError, read_index

    idx = tmp_path / "train.idx"
    idx.write_bytes(bytes(range(256)))
    with pytest.raises(RecordIOError, match="train.idx: not a RecordIO index"):
        read_index(idx, 1000)
