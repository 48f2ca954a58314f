"""Embed a folder of faces into a ``.npy`` matrix plus a CSV index (``python -m afr embed``).

The folder holds images directly and/or in sub-folders; a sub-folder's path is recorded as the image's
``identity`` (empty for images at the top level), so ``root/<identity>/<image>`` galleries keep their labels.
The CSV has one line per image file found, in sorted path order::

    row,file,identity,status
    0,alice/1.jpg,alice,detected
    ,alice/broken.jpg,alice,unreadable

``row`` is the image's row in the ``.npy`` matrix (empty when it was not embedded) and ``status`` says how its
chip was made (:data:`STATUSES`). A file that cannot be decoded, or a photo without a detected face, is a line
of the index, never a crash. Both files are written atomically and never replace existing ones unless told to.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afr.data.folder import IMAGE_EXTENSIONS
from afr.inference import FaceEmbedder
from afr.io import atomic_write_bytes, atomic_write_text

__all__ = ["INDEX_COLUMNS", "STATUSES", "FaceFile", "FolderEmbeddings", "check_output_paths", "embed_folder",
           "index_path", "list_face_files", "write_embeddings"]

INDEX_COLUMNS = ("row", "file", "identity", "status")
#: how each file's chip was made; only the first three give an embedding row
STATUSES = {
    "detected": "face detected by MTCNN and aligned",
    "no_face": "no face detected: the centred crop was embedded (as `evaluate --folder` does)",
    "aligned_input": "--aligned: the image was taken as an aligned chip (resized to the backbone's input)",
    "no_face_skipped": "no face detected and --skip-undetected given: not embedded",
    "unreadable": "the file could not be decoded as an image: not embedded",
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
    (``row`` into ``embeddings`` or None, ``file``, ``identity``, ``status``)."""

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
    from afr.data.images import CorruptImageError, read_image

    files = list_face_files(folder)
    images, readable = [], []
    for face_file in files:
        try:
            images.append(read_image(face_file.path))
            readable.append(face_file)
        except CorruptImageError:
            pass
    chips, detected = embedder.chips(images, progress) if images else ([], np.zeros(0, dtype=bool))
    keep = [i for i in range(len(chips)) if detected[i] or not skip_undetected]
    if not keep:
        raise ValueError(f"no image of {folder} could be embedded ({len(files) - len(images)} unreadable, "
                         f"{len(images)} without a detected face and --skip-undetected)")
    embeddings = embedder.embed_chips([chips[i] for i in keep], progress)
    row_of = {readable[i].relative: row for row, i in enumerate(keep)}
    status_of = {face_file.relative: _status(embedder.aligned, bool(found), skip_undetected)
                 for face_file, found in zip(readable, detected)}
    index = [
        {"row": row_of.get(f.relative), "file": f.relative, "identity": f.identity,
         "status": status_of.get(f.relative, "unreadable")}
        for f in files
    ]
    return FolderEmbeddings(embeddings, index)


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
    """``(out, its CSV index)``; raise before any work if ``out`` is not a ``.npy`` name or would replace a file."""
    out = Path(out)
    if out.suffix != ".npy":
        raise ValueError(f"the embeddings file must end in .npy, got {out}")
    csv_path = index_path(out)
    if not overwrite:
        for path in (out, csv_path):
            if path.exists():
                raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    return out, csv_path


def write_embeddings(result: FolderEmbeddings, out: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``out`` (``.npy``) and its CSV index atomically; refuse to replace either unless ``overwrite``."""
    out, csv_path = check_output_paths(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**entry, "row": "" if entry["row"] is None else entry["row"]} for entry in result.index)
    matrix = io.BytesIO()
    np.save(matrix, np.ascontiguousarray(result.embeddings, dtype=np.float32))
    atomic_write_text(csv_path, text.getvalue())
    atomic_write_bytes(out, matrix.getvalue())
    return out, csv_path
