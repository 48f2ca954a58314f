"""Embed a folder of faces into a ``.npy`` matrix plus a CSV index (``python -m afr embed``).

The folder holds images directly and/or in sub-folders; a sub-folder's path is recorded as the image's
``identity`` (empty for images at the top level), so ``root/<identity>/<image>`` galleries keep their labels.
The CSV has one line per image file found, in sorted path order::

    row,file,identity,status
    0,alice/1.jpg,alice,detected
    ,alice/broken.jpg,alice,unreadable

``row`` is the image's row in the ``.npy`` matrix (empty when it was not embedded), ``status`` says how its
chip was made (:data:`STATUSES`) and ``reason``, for a file that was not embedded, why (the decoder's message,
its size). A file that cannot be decoded, an image larger than :data:`MAX_PIXELS` (never decoded: a
200-megapixel file would take gigabytes), a photo the aligner fails on or without a detected face is a line
of the index, never a crash: such files have **no row** in the matrix (the matrix holds only real embeddings;
the index's empty ``row`` marks them), and the other files are embedded.

The output paths are checked before any work (not a directory, writable, not replacing a file unless told
to). The matrix and its index are both staged to temporary files before either replaces anything (a full disk
fails with nothing changed), then the ``.npy`` goes into place first and its ``.csv`` after it, an older index
being removed first: no moment pairs an index with another matrix's rows.
"""
from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afr.data.folder import IMAGE_EXTENSIONS
from afr.inference import FaceEmbedder
from afr.io import atomic_writer, check_output_file

__all__ = ["INDEX_COLUMNS", "MAX_PIXELS", "STATUSES", "FaceFile", "FolderEmbeddings", "check_output_paths", "embed_folder",
           "index_path", "list_face_files", "write_embeddings"]

INDEX_COLUMNS = ("row", "file", "identity", "status", "reason")
#: images declaring more pixels are not decoded (status ``too_large``); the shared collections' largest photo is
#: 4352x2903 (12.6 MP)
MAX_PIXELS = 64_000_000
#: how each file's chip was made; only the first three give an embedding row
STATUSES = {
    "detected": "face detected by MTCNN and aligned",
    "no_face": "no face detected: the centred crop was embedded (as `evaluate --folder` does)",
    "aligned_input": "--aligned: the image was taken as an aligned chip (resized to the backbone's input)",
    "no_face_skipped": "no face detected and --skip-undetected given: not embedded",
    "unreadable": "the file could not be decoded as an image: not embedded",
    "too_large": f"the image declares more than {MAX_PIXELS} pixels (or PIL's decompression-bomb limit): not "
                 "decoded, not embedded",
    "failed": "the face aligner failed on the decoded image: not embedded",
}


@dataclass(frozen=True)
class FaceFile:
    """An image file of the folder: its path, its path relative to the folder, its identity sub-folder."""

    path: Path
    relative: str
    identity: str


@dataclass
class FolderEmbeddings:
    """``embeddings`` (N, D) float32 of the embedded files and ``index``: one row per file found
    (``row`` into ``embeddings`` or None, ``file``, ``identity``, ``status``, ``reason``)."""

    embeddings: np.ndarray
    index: list[dict[str, object]]

    def status_counts(self) -> dict[str, int]:
        return dict(Counter(str(entry["status"]) for entry in self.index))


def list_face_files(folder: str | Path) -> list[FaceFile]:
    """Every image file under ``folder`` (any depth; hidden entries skipped), sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found (not a directory)")
    files = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(FaceFile(path, relative.as_posix(), relative.parent.as_posix() if relative.parent.parts else ""))
    if not files:
        raise FileNotFoundError(f"no images under {root} (extensions {sorted(IMAGE_EXTENSIONS)})")
    return files


def embed_folder(
    embedder: FaceEmbedder, folder: str | Path, skip_undetected: bool = False, progress: bool = False
) -> FolderEmbeddings:
    """Embed every image of ``folder`` with ``embedder`` (see the module docstring for the index)."""
    from afr.data.images import ImageTooLargeError, read_image

    files = list_face_files(folder)
    images, readable = [], []
    failed: dict[str, tuple[str, str]] = {}  # relative path -> (status, reason) of the files not embedded
    for face_file in files:
        try:
            images.append(read_image(face_file.path, max_pixels=MAX_PIXELS))
            readable.append(face_file)
        except ImageTooLargeError as error:
            failed[face_file.relative] = ("too_large", _reason(error, face_file))
        except Exception as error:  # CorruptImageError, or whatever else a damaged file makes a decoder raise
            failed[face_file.relative] = ("unreadable", _reason(error, face_file))
    chips, detected, readable = _chips(embedder, images, readable, failed, progress)
    keep = [i for i in range(len(chips)) if detected[i] or not skip_undetected]
    if not keep:
        raise ValueError(f"no image of {folder} could be embedded ({len(failed)} unreadable, too large or failed, "
                         f"{len(chips)} without a detected face and --skip-undetected)")
    embeddings = embedder.embed_chips([chips[i] for i in keep], progress)
    row_of = {readable[i].relative: row for row, i in enumerate(keep)}
    status_of = {face_file.relative: (_status(embedder.aligned, bool(found), skip_undetected), "")
                 for face_file, found in zip(readable, detected)}
    status_of.update(failed)
    index = [
        {"row": row_of.get(f.relative), "file": f.relative, "identity": f.identity,
         "status": status_of[f.relative][0], "reason": status_of[f.relative][1]}
        for f in files
    ]
    return FolderEmbeddings(embeddings, index)


def _reason(error: BaseException, face_file: FaceFile) -> str:
    """One line saying why a file was not embedded (its path shortened to the index's ``file``)."""
    text = " ".join(str(error).replace(str(face_file.path), face_file.relative).split())
    return text or type(error).__name__


def _chips(embedder: FaceEmbedder, images: list, readable: list[FaceFile], failed: dict[str, tuple[str, str]],
           progress: bool) -> tuple[list, np.ndarray, list[FaceFile]]:
    """The chips of the decoded images; if the aligner fails on the batch, image by image, the ones it fails on
    going to ``failed``. Returns chips, detected flags and the files they belong to."""
    if not images:
        return [], np.zeros(0, dtype=bool), []
    try:
        chips, detected = embedder.chips(images, progress)
        return list(chips), np.asarray(detected, dtype=bool), readable
    except Exception:  # noqa: BLE001 - find the image(s) it fails on; the others are embedded
        pass
    chips, detected, kept = [], [], []
    for image, face_file in zip(images, readable):
        try:
            (chip,), (found,) = embedder.chips([image])
        except Exception as error:  # noqa: BLE001
            failed[face_file.relative] = ("failed", f"alignment failed: {_reason(error, face_file)}")
            continue
        chips.append(chip)
        detected.append(bool(found))
        kept.append(face_file)
    return chips, np.asarray(detected, dtype=bool), kept


def _status(aligned: bool, detected: bool, skip_undetected: bool) -> str:
    if aligned:
        return "aligned_input"
    if detected:
        return "detected"
    return "no_face_skipped" if skip_undetected else "no_face"


def index_path(out: str | Path) -> Path:
    """The CSV index beside an embeddings file: ``gallery.npy`` -> ``gallery.csv``."""
    return Path(out).with_suffix(".csv")


def check_output_paths(out: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """``(out, its CSV index)``; raise before any work if ``out`` is not a ``.npy`` name, names a directory,
    cannot be written there, or would replace a file without ``overwrite``."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"the embeddings file must end in .npy, got {out}")
    csv_path = index_path(out)
    check_output_file(out, "embeddings file", overwrite)
    check_output_file(csv_path, "index file", overwrite)
    return out, csv_path


def write_embeddings(result: FolderEmbeddings, out: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``out`` (``.npy``) and its CSV index; refuse to replace either unless ``overwrite``.

    Both are staged (written and synced to temporary files beside them) before anything is replaced, so a
    failure while writing (a full disk) changes nothing; then an older index is removed, the matrix moved into
    place and its index after it. A crash between the moves leaves a matrix without an index, never an index
    over another matrix's rows.
    """
    out, csv_path = check_output_paths(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**entry, "row": "" if entry["row"] is None else entry["row"]} for entry in result.index)
    matrix = io.BytesIO()
    np.save(matrix, np.ascontiguousarray(result.embeddings, dtype=np.float32))
    with atomic_writer(csv_path) as index_file:  # moved into place last, when this block ends
        _write_synced(index_file, text.getvalue().encode("utf-8"))
        with atomic_writer(out) as matrix_file:  # moved into place first, when this inner block ends
            _write_synced(matrix_file, matrix.getvalue())
            csv_path.unlink(missing_ok=True)  # both staged: the old index goes before the old matrix does
    return out, csv_path


def _write_synced(handle, data: bytes) -> None:
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())
