"""InsightFace verification packs (``lfw.bin``-style) and their extracted ``pairs.txt`` layout.

A ``.bin`` pack is a pickle of ``(bins, issame_list)``: ``bins`` holds ``2 N`` encoded images (JPEG
bytes; pair ``i`` is ``bins[2 i]``, ``bins[2 i + 1]``) and ``issame_list`` ``N`` booleans. Packs made
under Python 2 store the images as ``str``, which Python 3 loads with ``encoding='bytes'``.

The pickle is untrusted input: it is read with an unpickler that refuses every global lookup but
the few a numpy bool ``issame`` needs (third-party packers write ``issame_list`` as a ``numpy.ndarray``
of bool or as a list of ``numpy.bool_``), so only plain tuples, lists, bytes, strings, numbers,
booleans and 1-D bool arrays can load and nothing can be executed. Those globals resolve to local
stand-ins that accept numpy's bool reconstruction and nothing else: numpy itself never sees the
pickle's arguments or state.

The extracted layout is a folder of images plus an LFW-style ``pairs.txt``: a header line
(``folds<TAB>pairs_per_fold``: per fold that many same pairs then that many different pairs, or a
single count ``n``: ``n`` same then ``n`` different pairs), then one line per pair,
``name<TAB>i<TAB>j`` (same person) or ``name1<TAB>i<TAB>name2<TAB>j`` (different people), naming the
files ``<root>/<name>/<name>_<i:04d>.jpg``.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from afr.data.images import decode_image, encode_jpeg, read_image

__all__ = [
    "CorruptPackError",
    "UnsafePickleError",
    "VerificationPack",
    "load_bin",
    "load_pack",
    "write_bin",
    "sha256_file",
    "load_pairs_folder",
    "write_pairs_folder",
    "read_pairs_file",
]

log = logging.getLogger(__name__)

PICKLE_PROTOCOL = 4  # readable by InsightFace's loader on every Python 3 it supports


class CorruptPackError(ValueError):
    """A verification pack or pairs file is malformed; the message names the file."""


class UnsafePickleError(CorruptPackError, pickle.UnpicklingError):
    """The pickle asked for a global (a class or function), or for a numpy value other than a 1-D bool
    array or a bool scalar: refused, nothing was executed."""


#: what ``numpy.ndarray`` resolves to while unpickling: a marker only ``_reconstruct`` accepts
_NDARRAY = object()
#: ``numpy.dtype('b1').__reduce__()`` state (the same under numpy 1.x and 2.x)
_BOOL_DTYPE_STATE = (3, "|", None, None, None, -1, -1, 0)


class _BoolDtype:
    """Stand-in for ``numpy.dtype('b1')`` while unpickling; its state must be bool's."""

    def __init__(self, refuse):
        self._refuse = refuse

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or state != _BOOL_DTYPE_STATE:
            self._refuse(f"numpy dtype state {state!r} (only bool is accepted)")


class _BoolArray:
    """Stand-in for a 1-D numpy bool array while unpickling; ``value`` is the array once its data came."""

    def __init__(self, refuse):
        self._refuse = refuse
        self.value: np.ndarray | None = None

    def fill(self, shape, dtype, data) -> "_BoolArray":
        if self.value is not None:
            self._refuse("a second state for one numpy array")
        if not isinstance(dtype, _BoolDtype):
            self._refuse(f"a numpy array of dtype {type(dtype).__name__} (only bool is accepted)")
        if not (isinstance(shape, tuple) and len(shape) == 1 and type(shape[0]) is int):
            self._refuse(f"a numpy array of shape {shape!r} (only 1-D is accepted)")
        if not isinstance(data, (bytes, bytearray)) or len(data) != shape[0] or not set(data) <= {0, 1}:
            self._refuse(f"numpy bool array data that is not {shape[0]} bytes of 0/1")
        self.value = np.frombuffer(bytes(data), dtype=np.uint8).astype(bool)
        return self

    def __setstate__(self, state) -> None:
        # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw data); order is moot in 1-D
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            self._refuse("a numpy array state that is not (1, shape, dtype, is_fortran, data)")
        self.fill(state[1], state[2], state[4])


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that loads built-in containers and scalars, and numpy bool arrays/scalars.

    Every global lookup is refused except the ones numpy's pickles of a bool array or a ``numpy.bool_``
    use (``_reconstruct``/``_frombuffer``, ``ndarray``, ``dtype``, ``scalar``, and ``_codecs.encode``
    with latin1, with which protocol 2 spells bytes). They resolve to the checking stand-ins below, so
    a refused dtype or malformed state raises :class:`UnsafePickleError` before numpy runs anything.
    """

    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): self._dtype,
                         ("_codecs", "encode"): self._latin1_bytes}
        for package in ("numpy._core", "numpy.core"):  # numpy 2.x, 1.x
            self._allowed[f"{package}.multiarray", "_reconstruct"] = self._reconstruct
            self._allowed[f"{package}.multiarray", "scalar"] = self._scalar
            self._allowed[f"{package}.numeric", "_frombuffer"] = self._frombuffer  # protocol 5

    def _refuse(self, what: str) -> NoReturn:
        raise UnsafePickleError(f"{self._source}: refusing {what} from the pickle")

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        try:
            return self._allowed[module, name]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global {module}.{name} from the pickle; a verification pack "
                "holds only lists of bytes and booleans (or a numpy bool array)"
            ) from None

    def _dtype(self, spec, align=False, copy=False) -> _BoolDtype:
        if spec != "b1":
            self._refuse(f"numpy dtype {spec!r} (only bool is accepted)")
        return _BoolDtype(self._refuse)

    def _reconstruct(self, subtype, shape, typecode) -> _BoolArray:
        if subtype is not _NDARRAY or shape != (0,) or typecode != b"b":
            self._refuse("a numpy _reconstruct call other than ndarray.__reduce__'s")
        return _BoolArray(self._refuse)  # the data comes with the following BUILD

    def _frombuffer(self, buffer, dtype, shape, order) -> _BoolArray:
        return _BoolArray(self._refuse).fill(shape, dtype, buffer)

    def _scalar(self, dtype, data) -> bool:
        if not isinstance(dtype, _BoolDtype) or data not in (b"\x00", b"\x01"):
            self._refuse("a numpy scalar other than a bool")
        return data == b"\x01"  # a plain bool: the value is all a pack needs

    def _latin1_bytes(self, text, encoding) -> bytes:
        if not isinstance(text, str) or encoding != "latin1":
            self._refuse(f"_codecs.encode with {encoding!r} (only latin1 text to bytes is accepted)")
        return text.encode("latin1")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class VerificationPack:
    """A loaded pack: ``images`` (2N HxWx3 uint8 RGB), ``issame`` (N bools), provenance."""

    name: str
    images: list[np.ndarray]
    issame: np.ndarray
    sha256: str
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.issame)


def _read_pickle(path: Path, data: bytes) -> tuple[list[bytes], np.ndarray]:
    """Validate the unpickled structure: ``(bins, issame)`` with 2 x len(issame) byte strings."""
    try:
        content = _RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # anything raised by garbage bytes means the same: not a pack
        raise CorruptPackError(
            f"{path}: not a readable verification pack (truncated or corrupt pickle: {error})"
        ) from None
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise CorruptPackError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(content).__name__}")
    bins, issame = content
    if isinstance(issame, _BoolArray):
        if issame.value is None:
            raise CorruptPackError(f"{path}: the issame array has no data")
        issame = issame.value.tolist()
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise CorruptPackError(f"{path}: bins and issame_list must be lists")
    for index, item in enumerate(bins):
        if not isinstance(item, (bytes, bytearray)):
            raise CorruptPackError(f"{path}: image {index} is {type(item).__name__}, expected encoded image bytes")
    for index, value in enumerate(issame):
        if not isinstance(value, (bool, int)) or value not in (0, 1):
            raise CorruptPackError(f"{path}: issame[{index}] = {value!r} is not a boolean")
    if len(bins) != 2 * len(issame):
        raise CorruptPackError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected twice as many)")
    if not issame:
        raise CorruptPackError(f"{path}: the pack holds no pairs")
    return [bytes(item) for item in bins], np.array([bool(value) for value in issame], dtype=bool)


def load_pack(path: str | Path) -> VerificationPack:
    """Load, validate and decode a ``.bin`` pack; logs and records its SHA-256."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification pack not found: {path}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    bins, issame = _read_pickle(path, data)
    images = [decode_image(item, f"{path} image {index}") for index, item in enumerate(bins)]
    shapes = Counter(image.shape for image in images)
    log.info("loaded %s: %d pairs (%d same), %d images %s, sha256 %s", path, len(issame), int(issame.sum()),
             len(images), dict(shapes), digest)
    return VerificationPack(path.stem, images, issame, digest, path)


def load_bin(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """``(images, issame)`` of a pack, as InsightFace's ``load_bin`` reads it (decoded RGB uint8)."""
    pack = load_pack(path)
    return pack.images, pack.issame


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _check_pairs(images: Sequence, issame: Sequence[bool]) -> np.ndarray:
    flags = np.asarray(issame)
    if flags.ndim != 1 or len(flags) == 0:
        raise ValueError(f"issame must be a non-empty 1-D sequence, got shape {flags.shape}")
    if len(images) != 2 * len(flags):
        raise ValueError(f"{len(images)} images for {len(flags)} pairs (expected twice as many)")
    return flags.astype(bool)


def write_bin(
    path: str | Path, images: Sequence[np.ndarray | bytes], issame: Sequence[bool], quality: int = 95
) -> str:
    """Write a pack InsightFace's ``load_bin`` reads: JPEG bytes + pickle; returns its SHA-256.

    ``images`` are HxWx3 uint8 RGB arrays (JPEG-encoded at ``quality``) or already encoded bytes.
    """
    path = Path(path)
    flags = _check_pairs(images, issame)
    bins = [bytes(image) if isinstance(image, (bytes, bytearray)) else encode_jpeg(np.asarray(image), quality)
            for image in images]
    data = pickle.dumps((bins, [bool(flag) for flag in flags]), protocol=PICKLE_PROTOCOL)
    _atomic_write_bytes(path, data)
    digest = hashlib.sha256(data).hexdigest()
    log.info("wrote %s: %d pairs (%d same), sha256 %s", path, len(flags), int(flags.sum()), digest)
    return digest


# --------------------------------------------------------------------------- pairs.txt folders


def _image_path(root: Path, name: str, number: int) -> Path:
    return root / name / f"{name}_{number:04d}.jpg"


def read_pairs_file(pairs_file: str | Path) -> list[tuple[str, int, str, int, bool]]:
    """Parse an LFW-style ``pairs.txt`` into ``(name1, i1, name2, i2, same)`` rows, checking the header."""
    pairs_file = Path(pairs_file)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"pairs file not found: {pairs_file}")
    lines = [(number, line.split()) for number, line in enumerate(pairs_file.read_text().splitlines(), 1)]
    lines = [(number, fields) for number, fields in lines if fields]
    expected = None
    if lines and len(lines[0][1]) in (1, 2) and all(field.isdigit() for field in lines[0][1]):
        counts = [int(field) for field in lines[0][1]]
        expected = 2 * int(np.prod(counts))
        lines = lines[1:]
    rows = []
    for number, fields in lines:
        try:
            if len(fields) == 3:
                rows.append((fields[0], int(fields[1]), fields[0], int(fields[2]), True))
            elif len(fields) == 4:
                rows.append((fields[0], int(fields[1]), fields[2], int(fields[3]), False))
            else:
                raise ValueError
        except ValueError:
            raise CorruptPackError(
                f"{pairs_file}: line {number} is neither 'name i j' nor 'name1 i name2 j': {' '.join(fields)!r}"
            ) from None
    if expected is not None and expected != len(rows):
        raise CorruptPackError(f"{pairs_file}: header announces {expected} pairs, the file lists {len(rows)}")
    if not rows:
        raise CorruptPackError(f"{pairs_file}: no pairs")
    return rows


def load_pairs_folder(root: str | Path, pairs_file: str | Path | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """``(images, issame)`` from an image folder and its ``pairs.txt`` (default ``<root>/pairs.txt``)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"pairs folder not found: {root}")
    rows = read_pairs_file(pairs_file if pairs_file is not None else root / "pairs.txt")
    cache: dict[Path, np.ndarray] = {}
    images: list[np.ndarray] = []
    for name_a, number_a, name_b, number_b, _ in rows:
        for name, number in ((name_a, number_a), (name_b, number_b)):
            path = _image_path(root, name, number)
            if path not in cache:
                cache[path] = read_image(path)
            images.append(cache[path])
    issame = np.array([row[4] for row in rows], dtype=bool)
    log.info("loaded %s: %d pairs (%d same) over %d images", root, len(rows), int(issame.sum()), len(cache))
    return images, issame


def write_pairs_folder(
    root: str | Path,
    images: Sequence[np.ndarray],
    issame: Sequence[bool],
    names: Sequence[str] | None = None,
    quality: int = 95,
) -> Path:
    """Write ``<root>/<name>/<name>_<i:04d>.jpg`` files and ``<root>/pairs.txt``; returns the pairs file.

    ``names`` gives the identity of each of the 2N images (both images of a same pair must share a
    name, the two of a different pair must not); by default each pair gets its own names. Each image
    gets its own file, numbered from 1 per name. The header is ``1<TAB>n`` when there are as many
    same as different pairs (LFW's ``folds<TAB>pairs_per_fold``); otherwise it is left out. Pair
    order is kept.
    """
    root = Path(root)
    flags = _check_pairs(images, issame)
    if names is None:
        names = []
        for pair, same in enumerate(flags):
            names += [f"pair{pair:05d}"] * 2 if same else [f"pair{pair:05d}a", f"pair{pair:05d}b"]
    if len(names) != len(images):
        raise ValueError(f"{len(names)} names for {len(images)} images")
    for pair, same in enumerate(flags):
        name_a, name_b = names[2 * pair], names[2 * pair + 1]
        if not name_a or any(char.isspace() for char in name_a + name_b) or "/" in name_a + name_b:
            raise ValueError(f"pair {pair}: names must be non-empty without spaces or slashes: {name_a!r}, {name_b!r}")
        if (name_a == name_b) != bool(same):
            raise ValueError(f"pair {pair}: names {name_a!r}/{name_b!r} contradict issame={bool(same)}")
    numbers: Counter = Counter()
    lines = []
    entries = []
    for index, image in enumerate(images):
        name = names[index]
        numbers[name] += 1
        path = _image_path(root, name, numbers[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_jpeg(np.asarray(image), quality))
        entries.append((name, numbers[name]))
    for pair, same in enumerate(flags):
        (name_a, number_a), (name_b, number_b) = entries[2 * pair], entries[2 * pair + 1]
        lines.append(f"{name_a}\t{number_a}\t{number_b}" if same else f"{name_a}\t{number_a}\t{name_b}\t{number_b}")
    n_same = int(flags.sum())
    header = [f"1\t{n_same}"] if 2 * n_same == len(flags) else []
    pairs_file = root / "pairs.txt"
    pairs_file.write_text("\n".join(header + lines) + "\n")
    return pairs_file
