"""Which real file every image of a test pack is: the test packs re-labelled from the manifest.

A ``.bin`` verification pack stores only encoded images and one ``issame`` flag per pair, so a figure that
colours faces by identity or an error analysis that asks "which camera, which lighting" needs the manifest row
behind each image. The benchmark builder (:func:`afr.data.embedded.build_embedded_benchmark`) chose the pairs
from the manifest's test rows of a domain, in manifest order, with :func:`afr.data.pairs.balanced_pairs`
(seeded) or, for the wild photos, the published deepface pairs; :func:`labelled_test_pack` repeats that choice
with the benchmark's own settings and checks it against the pack's bytes: every pair's ``issame`` must equal
"same identity" of the two rows, and every image that the mapping calls the same row must be the same pixels
(and different rows different pixels, except for same-identity files that are byte-identical on disk: the
Yale collection ships nine such pairs, e.g. ``subject02.noglasses`` and ``subject02.normal``). A pack built another way fails the check with a message naming it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from afr.data.embedded import TEST_DOMAINS, EmbeddedBenchmark, _wild_pairs, load_embedded
from afr.data.pairs import balanced_pairs
from afr.data.sources import RawFace
from afr.data.verification import VerificationPack, load_pack

__all__ = ["LabelledPack", "PackMismatchError", "labelled_test_pack", "labelled_test_packs", "pair_rows"]


class PackMismatchError(ValueError):
    """The pack's bytes or flags disagree with the pairs the manifest and the benchmark settings give."""


@dataclass
class LabelledPack:
    """A verification pack whose every image carries its manifest row.

    ``rows[i]`` is the manifest row (``file``, ``source``, ``identity``, ``domain``, ...) of ``pack.images[i]``;
    ``chip_of_image[i]`` indexes ``chips`` (the pack's distinct images, first-seen order) and ``chip_rows[j]``
    is the row of ``chips[j]``. Pair ``p`` is images ``2p`` and ``2p + 1``.
    """

    domain: str
    pack: VerificationPack
    rows: list[dict]
    chip_of_image: np.ndarray
    chip_rows: list[dict]

    @property
    def issame(self) -> np.ndarray:
        return self.pack.issame

    @property
    def chips(self) -> list[np.ndarray]:
        first = {}
        for image, chip in enumerate(self.chip_of_image.tolist()):
            first.setdefault(chip, image)
        return [self.pack.images[first[j]] for j in range(len(self.chip_rows))]

    @property
    def identities(self) -> np.ndarray:
        """Identity of every image (``2N``)."""
        return np.array([row["identity"] for row in self.rows])

    def pair(self, index: int) -> tuple[dict, dict]:
        """The two manifest rows of pair ``index``."""
        return self.rows[2 * index], self.rows[2 * index + 1]


def pair_rows(benchmark: EmbeddedBenchmark, domain: str, split: str = "test") -> list[tuple[dict, dict, bool]]:
    """``(row_a, row_b, same)`` of every pair of ``domain``'s pack, chosen as the benchmark builder chose them."""
    if domain not in TEST_DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; the test packs are {', '.join(TEST_DOMAINS)}")
    config = benchmark.config
    chosen = [row for row in benchmark.manifest() if row["split"] == split and row["domain"] == domain]
    if not chosen:
        raise PackMismatchError(f"{benchmark.root / 'manifest.csv'} has no {split} rows of domain {domain!r}")
    if domain == "wild":  # the published pairs, by file name (the builder passes the same faces)
        faces = [RawFace(Path(row["file"]), row["identity"], row["source"], row["domain"]) for row in chosen]
        pairs = _wild_pairs(faces, Path(config.faces_root), config.n_folds)
    else:
        pairs = balanced_pairs([row["identity"] for row in chosen], config.max_pairs, config.seed, config.n_folds)
    return [(chosen[a], chosen[b], bool(same)) for a, b, same in pairs]


def _digest(image: np.ndarray) -> bytes:
    image = np.ascontiguousarray(image)
    return hashlib.sha1(repr(image.shape).encode() + image.tobytes()).digest()


def labelled_test_pack(domain: str, benchmark: EmbeddedBenchmark | None = None) -> LabelledPack:
    """``domain``'s test pack with the manifest row of every image, checked against the pack (module docstring)."""
    benchmark = benchmark or load_embedded()
    path = benchmark.bin_path(domain)
    pack = load_pack(path)
    pairs = pair_rows(benchmark, domain)
    if len(pairs) != len(pack):
        raise PackMismatchError(f"{path}: {len(pack)} pairs, the manifest and benchmark settings give {len(pairs)}")
    rows = [row for a, b, _ in pairs for row in (a, b)]
    expected = np.array([a["identity"] == b["identity"] for a, b, _ in pairs])
    flagged = np.array([same for *_, same in pairs])
    if not (np.array_equal(expected, flagged) and np.array_equal(flagged, pack.issame)):
        bad = int(np.flatnonzero((expected != pack.issame) | (flagged != pack.issame))[0])
        raise PackMismatchError(f"{path}: pair {bad}'s issame differs from the identities the manifest gives")
    chip_of_row: dict[str, int] = {}
    digest_of_chip: list[bytes] = []
    chip_rows: list[dict] = []
    chip_of_image = np.empty(len(rows), dtype=np.int64)
    for index, (row, image) in enumerate(zip(rows, pack.images)):
        key = f"{row['domain']}|{row['file']}"
        digest = _digest(image)
        if key not in chip_of_row:
            twin = digest_of_chip.index(digest) if digest in digest_of_chip else None
            if twin is not None and chip_rows[twin]["identity"] != row["identity"]:
                # same-identity twins are real: Yale ships byte-identical files (subject02.noglasses = .normal)
                raise PackMismatchError(f"{path}: image {index} ({row['file']}) repeats the pixels of "
                                        f"{chip_rows[twin]['file']}, another identity")
            chip_of_row[key] = len(chip_rows)
            chip_rows.append(row)
            digest_of_chip.append(digest)
        elif digest_of_chip[chip_of_row[key]] != digest:
            raise PackMismatchError(f"{path}: image {index} is not the pixels of {row['file']} seen before")
        chip_of_image[index] = chip_of_row[key]
    return LabelledPack(domain, pack, rows, chip_of_image, chip_rows)


def labelled_test_packs(benchmark: EmbeddedBenchmark | None = None,
                        domains: tuple[str, ...] = TEST_DOMAINS) -> dict[str, LabelledPack]:
    """Every test pack, labelled (see :func:`labelled_test_pack`)."""
    benchmark = benchmark or load_embedded()
    return {domain: labelled_test_pack(domain, benchmark) for domain in domains}
