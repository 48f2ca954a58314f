"""The raw face collections in the shared folder, listed as labelled samples.

Each collection becomes a list of :class:`RawFace` records: where the file is, who it shows (an identity
name unique across collections) and which imaging domain it belongs to. Nothing is decoded here.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from afr.paths import MissingResourceError, faces_root

#: imaging domains of the embedded benchmark
DOMAINS = ("controlled", "wild", "thermal", "lowquality")


@dataclass(frozen=True)
class RawFace:
    """One face photo on disk."""

    path: Path
    identity: str  # unique across collections, e.g. "orl/s1"
    source: str  # collection name: orl, yale, deepface, thermal_und, thermal_puj
    domain: str  # one of DOMAINS


@dataclass(frozen=True)
class LabelledPair:
    """A verification pair from a published list (file names relative to the collection)."""

    file_a: str
    file_b: str
    same: bool


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise MissingResourceError(f"{what} not found: expected the folder {path}")
    return path


def list_orl(root: Path | None = None) -> list[RawFace]:
    """AT&T/ORL: ``orl/s1..s40/*.pgm``, 40 identities x 10 grey tight crops."""
    root = _require_dir((root or faces_root()) / "orl", "ORL faces")
    faces = [
        RawFace(path, f"orl/{path.parent.name}", "orl", "controlled")
        for path in sorted(root.glob("s*/*.pgm"), key=lambda p: (int(p.parent.name[1:]), int(p.stem)))
    ]
    if not faces:
        raise MissingResourceError(f"no ORL images (s*/*.pgm) under {root}")
    return faces


_YALE_NAME = re.compile(r"^subject(\d\d)\.([a-z]+)$")


def list_yale(root: Path | None = None) -> list[RawFace]:
    """Yale: ``yale/subjectNN.<condition>`` GIFs without extension, 15 identities x 11 conditions."""
    root = _require_dir((root or faces_root()) / "yale", "Yale faces")
    faces = [
        RawFace(path, f"yale/subject{match.group(1)}", "yale", "controlled")
        for path in sorted(root.iterdir())
        if (match := _YALE_NAME.match(path.name))
    ]
    if not faces:
        raise MissingResourceError(f"no Yale images (subjectNN.<condition>) under {root}")
    return faces


def read_deepface_pairs(root: Path | None = None) -> list[LabelledPair]:
    """The 280 labelled pairs of ``deepface/face-recognition-pivot.csv`` (140 same, 140 different)."""
    path = (root or faces_root()) / "deepface" / "face-recognition-pivot.csv"
    if not path.is_file():
        raise MissingResourceError(f"deepface pair list not found: {path}")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    try:
        return [
            LabelledPair(Path(row["file_x"]).name, Path(row["file_y"]).name, row["decision"].strip() == "Yes")
            for row in rows
        ]
    except KeyError as error:
        raise ValueError(f"{path}: missing column {error}; expected file_x, file_y, decision") from None


def deepface_identities(pairs: list[LabelledPair]) -> dict[str, str]:
    """Identity per file: connected components of the same-person pairs, named by their first file."""
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for pair in pairs:
        find(pair.file_a), find(pair.file_b)
        if pair.same:
            parent[find(pair.file_a)] = find(pair.file_b)
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(find(name), []).append(name)
    identity = {}
    for members in groups.values():
        label = "deepface/" + min(members, key=lambda n: (len(n), n)).removesuffix(".jpg")
        identity.update({name: label for name in members})
    for pair in pairs:
        if not pair.same and identity[pair.file_a] == identity[pair.file_b]:
            raise ValueError(f"deepface pairs are inconsistent: {pair.file_a} / {pair.file_b} marked different")
    return identity


def list_deepface(root: Path | None = None) -> list[RawFace]:
    """The 61 labelled deepface photos (unconstrained colour photos of 13 people)."""
    folder = _require_dir((root or faces_root()) / "deepface", "deepface photos")
    identity = deepface_identities(read_deepface_pairs(root))
    faces = []
    for name in sorted(identity, key=lambda n: (len(n), n)):
        path = folder / name
        if not path.is_file():
            raise MissingResourceError(f"deepface photo listed in the pair file is missing: {path}")
        faces.append(RawFace(path, identity[name], "deepface", "wild"))
    return faces


def list_thermal_und(root: Path | None = None) -> list[RawFace]:
    """Notre Dame X1 LWIR: registered captures only (``NoRegistered/`` copies are skipped); id = 5-digit prefix."""
    folder = _require_dir((root or faces_root()) / "thermal" / "und" / "Pristine", "thermal UND faces")
    paths = sorted(p for p in folder.glob("*Pristine/*.tiff"))
    faces = [RawFace(p, f"und/{p.name[:5]}", "thermal_und", "thermal") for p in paths]
    if not faces:
        raise MissingResourceError(f"no thermal UND images (*Pristine/*.tiff) under {folder}")
    return faces


def list_thermal_puj(root: Path | None = None) -> list[RawFace]:
    """PUJ-T360 LWIR (FLIR T360): identity = the ``Snn`` prefix."""
    folder = _require_dir((root or faces_root()) / "thermal" / "puj_t360" / "Pristine", "thermal PUJ-T360 faces")
    paths = sorted(p for p in folder.glob("*Pristine/*.tiff"))
    faces = [RawFace(p, f"puj/{p.name.split('_')[0]}", "thermal_puj", "thermal") for p in paths]
    if not faces:
        raise MissingResourceError(f"no thermal PUJ-T360 images (*Pristine/*.tiff) under {folder}")
    return faces


def list_all(root: Path | None = None) -> list[RawFace]:
    """Every raw face of the embedded benchmark, collection by collection."""
    return [
        *list_orl(root),
        *list_yale(root),
        *list_deepface(root),
        *list_thermal_und(root),
        *list_thermal_puj(root),
    ]
