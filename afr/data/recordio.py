"""InsightFace training packs (``train.rec`` / ``train.idx`` / ``property``) read and written without mxnet.

File format (dmlc-core ``recordio.cc``, mxnet ``recordio.py``):

* ``.rec`` is a sequence of records. Each physical record is ``uint32 magic (0xced7230a)``,
  ``uint32 lrecord`` (lower 29 bits: part length, upper 3 bits: continuation flag 0 = whole,
  1 = first, 2 = middle, 3 = last part), the part bytes, then zero padding to a multiple of 4.
  A payload holding the magic number at a 4-byte-aligned offset is split there into parts and the
  magic itself is dropped; readers put it back between the parts.
* ``.idx`` is text, one ``key<TAB>byte offset`` line per logical record.
* A payload is ``IRHeader`` (struct ``IfQQ``: flag, label, id, id2) followed, when ``flag > 0``, by
  ``flag`` float32 label values (the scalar label field is then unused), then the encoded image.
* InsightFace layout: record 0 is a header without image whose label is
  ``[first_identity_record, end_identity_record)``; records ``1 .. first_identity_record - 1`` are the
  images, sorted by identity, labelled with the identity (scalar) or ``[identity, domain, ...]``;
  identity record ``first_identity_record + k`` has label ``[image_start, image_end)`` for identity
  ``k``. ``property`` holds ``num_classes,height,width``.

Dataset index ``i`` is image record key ``i + 1`` in such a pack.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from afr.data.images import decode_image, encode_jpeg
from afr.io import atomic_write_text

__all__ = [
    "MAGIC",
    "IRHeader",
    "RecordIOError",
    "RecordIOWriter",
    "RecordIOReader",
    "IndexedRecordIOWriter",
    "IndexedRecordIOReader",
    "RecordIODataset",
    "PackPaths",
    "encode_record",
    "pack",
    "unpack",
    "unpack_header",
    "write_pack",
    "resolve_pack_paths",
]

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_FRAME = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
_WHOLE, _FIRST, _MIDDLE, _LAST = 0, 1, 2, 3


class RecordIOError(ValueError):
    """A ``.rec`` / ``.idx`` / ``property`` file is malformed; the message names the file (and record)."""


@dataclass(frozen=True)
class IRHeader:
    """mxnet's image-record header. ``label`` is a float, or a float32 array when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0


# --------------------------------------------------------------------------- payload (IRHeader)


def pack(header: IRHeader, image_bytes: bytes = b"") -> bytes:
    """Serialise a header and the encoded image into one record payload (as ``mx.recordio.pack``).

    A scalar label is stored in the header (flag 0); a sequence/array label is stored as ``flag``
    float32 values after the header (the header's own label field is then 0).
    """
    label = header.label
    if np.ndim(label) == 0:
        return _IR.pack(0, float(label), int(header.id), int(header.id2)) + bytes(image_bytes)
    values = np.asarray(label, dtype="<f4").reshape(-1)
    return _IR.pack(values.size, 0.0, int(header.id), int(header.id2)) + values.tobytes() + bytes(image_bytes)


def unpack_header(payload: bytes, source: str = "<payload>") -> tuple[IRHeader, int]:
    """``(header, offset of the image bytes)``; ``source`` names the record in errors."""
    if len(payload) < _IR.size:
        raise RecordIOError(f"{source}: payload of {len(payload)} bytes is shorter than the {_IR.size}-byte IRHeader")
    flag, label, record_id, record_id2 = _IR.unpack_from(payload, 0)
    offset = _IR.size
    if flag > 0:
        end = offset + 4 * flag
        if end > len(payload):
            raise RecordIOError(
                f"{source}: IRHeader flag {flag} announces {flag} float labels but the payload has "
                f"only {len(payload) - offset} bytes after the header"
            )
        label = np.frombuffer(payload, dtype="<f4", count=flag, offset=offset).astype(np.float32)
        offset = end
    return IRHeader(int(flag), label, int(record_id), int(record_id2)), offset


def unpack(payload: bytes, source: str = "<payload>") -> tuple[IRHeader, bytes]:
    """``(header, image bytes)`` of a record payload (as ``mx.recordio.unpack``)."""
    header, offset = unpack_header(payload, source)
    return header, bytes(payload[offset:])


# --------------------------------------------------------------------------- framing


def encode_record(payload: bytes) -> bytes:
    """The on-disk bytes of one logical record, split at aligned magic numbers exactly as dmlc does."""
    payload = bytes(payload)
    length = len(payload)
    if length >= 1 << _LENGTH_BITS:
        raise ValueError(f"RecordIO records must be shorter than 2**29 bytes, got {length}")
    parts: list[bytes] = []
    start = 0
    for position in range(0, length - length % 4, 4):
        if payload[position : position + 4] == _MAGIC_BYTES:
            flag = _FIRST if start == 0 else _MIDDLE
            parts.append(_FRAME.pack(MAGIC, (flag << _LENGTH_BITS) | (position - start)))
            parts.append(payload[start:position])
            start = position + 4
    flag = _LAST if start != 0 else _WHOLE
    parts.append(_FRAME.pack(MAGIC, (flag << _LENGTH_BITS) | (length - start)))
    parts.append(payload[start:])
    parts.append(b"\0" * (-length % 4))  # the split points are aligned, so only the tail needs padding
    return b"".join(parts)


class _LazyFile:
    """A read-only binary file opened on first use in each process (safe across fork and pickling)."""

    def __init__(self, path: Path):
        self.path = path
        self._handle: Any = None
        self._pid: int | None = None

    def size(self) -> int:
        return os.path.getsize(self.path)

    def read_at(self, offset: int, size: int) -> bytes:
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open on purpose
            self._pid = os.getpid()
        if hasattr(os, "pread"):
            return os.pread(self._handle.fileno(), size, offset)
        self._handle.seek(offset)
        return self._handle.read(size)

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle, self._pid = None, None

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path, self._handle, self._pid = state["path"], None, None


class RecordIOReader:
    """Random and sequential access to the logical records of a ``.rec`` file.

    The file is opened lazily once per process, so one reader can be shared by DataLoader workers and
    pickled (the open handle is never pickled).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {self.path}")
        self._file = _LazyFile(self.path)

    def read_at(self, offset: int, limit: int | None = None, key: Any = None) -> tuple[bytes, int]:
        """``(payload, offset of the next record)`` of the record starting at ``offset``.

        With ``limit``, reading stops once at least ``limit`` payload bytes are known (used to read
        only the header); the returned payload may then be a prefix and the next offset -1.
        """
        where = f"{self.path}: record{'' if key is None else f' {key}'} at byte {offset}"
        chunks: list[bytes] = []
        assembled = 0
        position = offset
        while True:
            frame = self._file.read_at(position, _FRAME.size)
            if len(frame) < _FRAME.size:
                raise RecordIOError(f"{where}: truncated file (record header cut at byte {position})")
            magic, lrecord = _FRAME.unpack(frame)
            if magic != MAGIC:
                raise RecordIOError(
                    f"{where}: bad magic 0x{magic:08x} at byte {position} (expected 0x{MAGIC:08x}); "
                    "the file is corrupt or the .idx does not match it"
                )
            flag, length = lrecord >> _LENGTH_BITS, lrecord & _LENGTH_MASK
            if flag > _LAST:
                raise RecordIOError(f"{where}: invalid continuation flag {flag} at byte {position}")
            if (flag in (_WHOLE, _FIRST)) != (not chunks):
                raise RecordIOError(f"{where}: continuation flag {flag} out of sequence at byte {position}")
            wanted = length if limit is None else min(length, max(limit - assembled, 0))
            data = self._file.read_at(position + _FRAME.size, wanted) if wanted else b""
            if len(data) < wanted:
                raise RecordIOError(
                    f"{where}: truncated file (part of {length} bytes at byte {position} ends after {len(data)})"
                )
            chunks.append(data)
            assembled += len(data)
            position += _FRAME.size + ((length + 3) & ~3)
            if flag in (_WHOLE, _LAST):
                return b"".join(chunks), position
            chunks.append(_MAGIC_BYTES)
            assembled += 4
            if limit is not None and assembled >= limit:
                return b"".join(chunks), -1

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """``(offset, payload)`` of every record, scanning the file from the start."""
        offset, size = 0, self._file.size()
        while offset < size:
            payload, following = self.read_at(offset)
            yield offset, payload
            offset = following

    def close(self) -> None:
        self._file.close()


class RecordIOWriter:
    """Append logical records to a new ``.rec`` file; ``write`` returns each record's byte offset."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = open(self.path, "wb")  # noqa: SIM115 - closed by close() / the context manager
        self._offset = 0

    def write(self, payload: bytes) -> int:
        offset = self._offset
        data = encode_record(payload)
        self._handle.write(data)
        self._offset += len(data)
        return offset

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class IndexedRecordIOWriter(RecordIOWriter):
    """A ``.rec`` writer that also writes the ``.idx`` (``key<TAB>offset`` per record), like mxnet's."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path):
        super().__init__(rec_path)
        self.idx_path = Path(idx_path)
        self._index = open(self.idx_path, "w")  # noqa: SIM115

    def write_idx(self, key: int, payload: bytes) -> int:
        offset = self.write(payload)
        self._index.write(f"{int(key)}\t{offset}\n")
        return offset

    def close(self) -> None:
        super().close()
        if not self._index.closed:
            self._index.close()


def read_index(idx_path: Path, rec_size: int) -> dict[int, int]:
    """Parse a ``.idx`` file into ``{key: offset}``, checking each offset lies inside the ``.rec``."""
    if not idx_path.is_file():
        raise FileNotFoundError(f"RecordIO index not found: {idx_path}")
    index: dict[int, int] = {}
    try:
        text = idx_path.read_text()
    except UnicodeDecodeError:
        raise RecordIOError(f"{idx_path}: not a RecordIO index (binary data, expected text lines "
                            "'key<TAB>offset')") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            key, offset = int(fields[0]), int(fields[1])
            if len(fields) != 2:
                raise ValueError
        except (ValueError, IndexError):
            raise RecordIOError(f"{idx_path}: line {number} is not 'key<TAB>offset': {line.rstrip()!r}") from None
        if not 0 <= offset <= rec_size - _FRAME.size:
            raise RecordIOError(
                f"{idx_path}: line {number}: record {key} at byte {offset} points past the end of the "
                f".rec file ({rec_size} bytes)"
            )
        if key in index:
            raise RecordIOError(f"{idx_path}: line {number}: duplicate key {key}")
        index[key] = offset
    return index


class IndexedRecordIOReader(RecordIOReader):
    """Random access by key through the ``.idx`` file (as ``mx.recordio.MXIndexedRecordIO`` reads)."""

    def __init__(self, rec_path: str | Path, idx_path: str | Path):
        super().__init__(rec_path)
        self.idx_path = Path(idx_path)
        self.index = read_index(self.idx_path, self._file.size())

    @property
    def keys(self) -> list[int]:
        return list(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def read_idx(self, key: int, limit: int | None = None) -> bytes:
        """The payload of record ``key`` (its first ``limit`` bytes or more when ``limit`` is given)."""
        if key not in self.index:
            raise RecordIOError(f"{self.idx_path}: no record with key {key}")
        return self.read_at(self.index[key], limit=limit, key=key)[0]


# --------------------------------------------------------------------------- InsightFace layout


@dataclass(frozen=True)
class PackPaths:
    """The three files of an InsightFace pack (and the optional domain-name list beside ``property``)."""

    rec: Path
    idx: Path
    property: Path

    @property
    def domains(self) -> Path:
        """``domains.json`` (``{"names": [...]}``): the names of the domain codes, when the pack has domains."""
        return self.property.with_name("domains.json")


def resolve_pack_paths(prefix_or_dir: str | Path, for_writing: bool = False) -> PackPaths:
    """Locate ``.rec`` / ``.idx`` / ``property``.

    * a directory (existing, or for writing any path without a ``.rec`` suffix) holds
      ``train.rec``, ``train.idx`` and ``property``;
    * otherwise the path is a prefix (``data/faces`` or ``data/faces.rec``): ``<prefix>.rec``,
      ``<prefix>.idx`` and ``property`` beside them.
    """
    path = Path(prefix_or_dir).expanduser()
    if path.suffix in (".rec", ".idx"):
        prefix = path.with_suffix("")
    elif path.is_dir() or (for_writing and not path.exists()):
        return PackPaths(path / "train.rec", path / "train.idx", path / "property")
    else:
        prefix = path
    return PackPaths(
        prefix.with_name(prefix.name + ".rec"), prefix.with_name(prefix.name + ".idx"), prefix.parent / "property"
    )


def _read_property(path: Path) -> tuple[int, int, int]:
    if not path.is_file():
        raise FileNotFoundError(f"pack property file not found: {path} (expected 'num_classes,height,width')")
    text = path.read_text().strip()
    try:
        values = tuple(int(value) for value in text.split(","))
        if len(values) != 3 or min(values) < 0:
            raise ValueError
    except ValueError:
        raise RecordIOError(f"{path}: expected 'num_classes,height,width', got {text!r}") from None
    return values  # type: ignore[return-value]


def _read_domain_names(path: Path) -> tuple[str, ...] | None:
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())["names"]
        if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise RecordIOError(f"{path}: expected a JSON object {{\"names\": [domain names]}}") from None
    return tuple(names)


_HEADER_BYTES = _IR.size + 4 * 8  # IRHeader plus up to 8 float labels


class RecordIODataset:
    """An InsightFace training pack as a map-style dataset.

    ``ds[i]`` is ``(HxWx3 uint8 RGB, identity)``, or ``(image, identity, domain)`` when the pack's
    labels carry a domain (``[identity, domain, ...]``, as the embedded benchmark writes them);
    ``has_domains`` says which, ``domain_names`` names the codes when the pack stores them.

    Args:
        prefix_or_dir: the directory holding ``train.rec``/``train.idx``/``property``, or a prefix
            (``dir/name`` or ``dir/name.rec``) with ``property`` beside it.
        transform: applied to the decoded image array when given.

    Attributes: ``num_classes`` and ``image_size`` (height, width) from ``property``;
    ``identity_ranges`` maps each identity to its ``[start, end)`` image record keys (dataset indices
    are keys minus one); ``labels`` / ``domains`` / ``record_label(i)`` read only the record headers.

    A pack without the InsightFace header record (record 0 without image and ``flag >= 2``) is read as
    a plain list of image records in key order; ``identity_ranges`` is then empty.
    """

    def __init__(self, prefix_or_dir: str | Path, transform: Callable[[np.ndarray], Any] | None = None):
        self.paths = resolve_pack_paths(prefix_or_dir)
        if not self.paths.rec.is_file():
            raise FileNotFoundError(f"RecordIO pack not found: {self.paths.rec} (from {prefix_or_dir})")
        self.transform = transform
        self.reader = IndexedRecordIOReader(self.paths.rec, self.paths.idx)
        self._num_classes, height, width = _read_property(self.paths.property)
        self.image_size: tuple[int, int] = (height, width)
        self.identity_ranges: dict[int, tuple[int, int]] = {}
        self.image_keys = self._find_image_keys()
        self._labels: np.ndarray | None = None
        self._full_labels: list[np.ndarray] | None = None
        #: whether items carry a domain: decided by the first image's label (packs are homogeneous)
        self.has_domains = len(self) > 0 and self.record_label(0).size >= 2
        self.domain_names: tuple[str, ...] | None = _read_domain_names(self.paths.domains)

    def _find_image_keys(self) -> list[int]:
        reader = self.reader
        if 0 in reader.index:
            payload = reader.read_idx(0)
            header, image_offset = self._header(0, payload)
            if header.flag >= 2 and len(payload) == image_offset:  # a header record: no image
                first, end = int(header.label[0]), int(header.label[1])
                if not 1 <= first <= end:
                    raise RecordIOError(f"{self.paths.rec}: header record 0 has invalid label {header.label.tolist()}")
                for key in range(1, end):
                    if key not in reader.index:
                        raise RecordIOError(
                            f"{self.paths.idx}: record {key} announced by the header record is missing from the index"
                        )
                for key in range(first, end):
                    identity = self._read_header(key)
                    if identity.flag < 2:
                        raise RecordIOError(f"{self.paths.rec}: identity record {key} has no [start, end) label")
                    self.identity_ranges[key - first] = (int(identity.label[0]), int(identity.label[1]))
                return list(range(1, first))
        return sorted(reader.index)

    def _header(self, key: int, payload: bytes) -> tuple[IRHeader, int]:
        return unpack_header(payload, f"{self.paths.rec}: record {key}")

    def _read_header(self, key: int) -> IRHeader:
        """The IRHeader (with its label array) of record ``key``, reading only the record's first bytes."""
        payload = self.reader.read_idx(key, limit=_HEADER_BYTES)
        flag = _IR.unpack_from(payload, 0)[0] if len(payload) >= _IR.size else 0
        if _IR.size + 4 * flag > _HEADER_BYTES:
            payload = self.reader.read_idx(key, limit=_IR.size + 4 * flag)
        return self._header(key, payload)[0]

    # ------------------------------------------------------------------ sizes and labels

    def __len__(self) -> int:
        return len(self.image_keys)

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def record_label(self, index: int) -> np.ndarray:
        """The full float label of image ``index`` (``[identity]`` or ``[identity, domain, ...]``)."""
        if self._full_labels is not None:
            return self._full_labels[index].copy()
        header = self._read_header(self._key(index))
        return np.atleast_1d(np.asarray(header.label, dtype=np.float32)).copy()

    def _load_labels(self) -> None:
        if self._full_labels is None:
            self._full_labels = [self.record_label(index) for index in range(len(self))]

    @property
    def labels(self) -> np.ndarray:
        """Identity label of every image (int64)."""
        if self._labels is None:
            self._load_labels()
            self._labels = np.array([int(label[0]) for label in self._full_labels], dtype=np.int64)
        return self._labels

    @property
    def domains(self) -> np.ndarray | None:
        """Domain of every image (int64) when every label carries a second value, else None."""
        self._load_labels()
        if not self._full_labels or any(label.size < 2 for label in self._full_labels):
            return None
        return np.array([int(label[1]) for label in self._full_labels], dtype=np.int64)

    def identity_indices(self, label: int) -> range:
        """Dataset indices of identity ``label`` (its identity record's ``[start, end)`` keys minus one)."""
        start, end = self.identity_ranges[label]
        return range(start - 1, end - 1)

    # ------------------------------------------------------------------ items

    def _key(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a pack of {len(self)} images ({self.paths.rec})")
        return self.image_keys[index]

    def read_raw(self, index: int) -> tuple[IRHeader, bytes]:
        """``(header, encoded image bytes)`` of image ``index`` without decoding."""
        key = self._key(index)
        return unpack(self.reader.read_idx(key), f"{self.paths.rec}: record {key}")

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        key = self._key(int(index))
        header, image_bytes = unpack(self.reader.read_idx(key), f"{self.paths.rec}: record {key}")
        image = decode_image(image_bytes, f"{self.paths.rec} record {key}")
        label = np.atleast_1d(header.label)
        if self.transform is not None:
            image = self.transform(image)
        if not self.has_domains:
            return image, int(label[0])
        if label.size < 2:
            raise RecordIOError(f"{self.paths.rec}: record {key} has no domain label, unlike the pack's first image")
        return image, int(label[0]), int(label[1])

    def close(self) -> None:
        self.reader.close()

    def __repr__(self) -> str:
        return (
            f"RecordIODataset({str(self.paths.rec)!r}, images={len(self)}, classes={self.num_classes}, "
            f"image_size={self.image_size})"
        )


# --------------------------------------------------------------------------- writer


def _encoded(image: np.ndarray | bytes, index: int, quality: int) -> tuple[bytes, tuple[int, int]]:
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        shape = decode_image(data, f"image {index} given to write_pack").shape
        return data, (shape[0], shape[1])
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image {index} must be an HxWx3 uint8 RGB array, got {array.dtype} {array.shape}")
    return encode_jpeg(array, quality=quality), (array.shape[0], array.shape[1])


def write_pack(
    prefix_or_dir: str | Path,
    images: Sequence[np.ndarray | bytes],
    labels: Sequence[int] | np.ndarray,
    domains: Sequence[int] | np.ndarray | None = None,
    image_size: tuple[int, int] | None = None,
    quality: int = 95,
    domain_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Write a complete InsightFace pack (``.rec``, ``.idx``, ``property``); returns the record order.

    Images (HxWx3 uint8 RGB arrays, JPEG-encoded at ``quality``, or already encoded bytes stored as
    they are) are sorted by identity with a stable sort, so already sorted input keeps its order;
    dataset index ``i`` of the written pack is ``images[order[i]]``. Labels must be integers in
    ``0 .. num_classes - 1`` (``num_classes = max(labels) + 1``). With ``domains`` each image label
    is ``[identity, domain]`` and ``domain_names`` (the name of each code) goes to ``domains.json``
    beside ``property``. All images must have one size (``image_size`` = (height, width) when
    given). The files are written to temporary names and renamed at the end.
    """
    labels_array = np.asarray(labels)
    if len(images) == 0:
        raise ValueError("write_pack needs at least one image")
    if labels_array.shape != (len(images),):
        raise ValueError(f"{len(images)} images but labels of shape {labels_array.shape}")
    if not np.issubdtype(labels_array.dtype, np.integer) or labels_array.min() < 0:
        raise ValueError("labels must be non-negative integers")
    domains_array = None
    if domains is not None:
        domains_array = np.asarray(domains)
        if domains_array.shape != (len(images),) or not np.issubdtype(domains_array.dtype, np.integer):
            raise ValueError(f"domains must be {len(images)} integers, got {domains_array.dtype} {domains_array.shape}")
        if domain_names is not None and not 0 <= domains_array.min() <= domains_array.max() < len(domain_names):
            raise ValueError(f"domain codes must lie in [0, {len(domain_names)}) to have names, "
                             f"got {domains_array.min()}..{domains_array.max()}")
    elif domain_names is not None:
        raise ValueError("domain_names needs domains")
    paths = resolve_pack_paths(prefix_or_dir, for_writing=True)
    paths.rec.parent.mkdir(parents=True, exist_ok=True)

    order = np.argsort(labels_array, kind="stable")
    num_images = len(images)
    num_classes = int(labels_array.max()) + 1
    first_identity = num_images + 1
    size = tuple(image_size) if image_size is not None else None

    temporary = {
        name: Path(tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)[1])
        for name, target in (("rec", paths.rec), ("idx", paths.idx), ("property", paths.property))
    }
    try:
        with IndexedRecordIOWriter(temporary["rec"], temporary["idx"]) as writer:
            header = IRHeader(2, np.array([first_identity, first_identity + num_classes], np.float32))
            writer.write_idx(0, pack(header))
            for position, source in enumerate(order.tolist()):
                key = position + 1
                data, shape = _encoded(images[source], source, quality)
                if size is None:
                    size = shape
                if shape != size:
                    raise ValueError(f"image {source} is {shape[0]}x{shape[1]}, the pack is {size[0]}x{size[1]}")
                label: float | np.ndarray = float(labels_array[source])
                if domains_array is not None:
                    label = np.array([labels_array[source], domains_array[source]], dtype=np.float32)
                writer.write_idx(key, pack(IRHeader(0, label, key, 0), data))
            sorted_labels = labels_array[order]
            starts = np.searchsorted(sorted_labels, np.arange(num_classes), side="left") + 1
            ends = np.searchsorted(sorted_labels, np.arange(num_classes), side="right") + 1
            for identity in range(num_classes):
                key = first_identity + identity
                span = np.array([starts[identity], ends[identity]], dtype=np.float32)
                writer.write_idx(key, pack(IRHeader(2, span, key, 0)))
        temporary["property"].write_text(f"{num_classes},{size[0]},{size[1]}\n")
        if domain_names is not None:
            atomic_write_text(paths.domains, json.dumps({"names": list(domain_names)}) + "\n")
        for name, target in (("rec", paths.rec), ("idx", paths.idx), ("property", paths.property)):
            os.chmod(temporary[name], 0o644)
            os.replace(temporary[name], target)
    finally:
        for path in temporary.values():
            path.unlink(missing_ok=True)
    log.info("wrote %s: %d images, %d identities, %dx%d", paths.rec, num_images, num_classes, *size)
    return order

