"""RecordIO read throughput against plain JPEG decoding of the same bytes, measured side by side.

Writes an InsightFace pack of the real ORL + Yale faces (564 images, resized to 112x112, JPEG q95) into
a temporary folder, then times, in the same run and on the same records:

1. ``RecordIODataset[i]``: index lookup, framed read, IRHeader unpack and JPEG decode (what training pays);
2. raw record reads without decode (``read_raw``: framed read + IRHeader unpack);
3. decoding the same JPEG bytes from memory with ``afr.data.images.decode_image`` (PIL) and, for
   reference, ``cv2.imdecode``.

Each measurement is the best of several passes over all records (single process). Runs in a few seconds.
Usage: ``python bench/recordio_throughput.py [--repeats 5]``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from afr.data.images import decode_image, read_image
from afr.data.recordio import RecordIODataset, write_pack
from afr.paths import faces_root


def load_faces(size: int = 112) -> tuple[list[np.ndarray], list[int]]:
    """ORL (40 x 10) and Yale (15 x 11, one missing) faces as size x size RGB, with identity labels."""
    root = faces_root()
    paths = sorted((root / "orl").glob("s*/*.pgm"))
    paths += sorted(path for path in (root / "yale").iterdir() if path.name.startswith("subject"))
    identities = [path.parent.name if path.suffix == ".pgm" else "yale_" + path.name.split(".")[0] for path in paths]
    names = sorted(set(identities))
    images = [cv2.resize(read_image(path), (size, size), interpolation=cv2.INTER_AREA) for path in paths]
    return images, [names.index(identity) for identity in identities]


def best_rate(function: Callable[[int], object], count: int, repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` passes calling ``function(i)`` for every i."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for index in range(count):
            function(index)
        best = min(best, time.perf_counter() - start)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="passes per measurement (best is kept)")
    args = parser.parse_args()

    images, labels = load_faces()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_pack(Path(folder) / "train", images, labels)
        write_seconds = time.perf_counter() - start
        dataset = RecordIODataset(Path(folder) / "train")
        rec_bytes = dataset.paths.rec.stat().st_size
        encoded = [dataset.read_raw(index)[1] for index in range(len(dataset))]
        count = len(dataset)
        height, width = dataset.image_size
        print(f"pack: {count} records, {dataset.num_classes} identities, {height}x{width}, "
              f"{rec_bytes / 1e6:.2f} MB .rec, mean JPEG {np.mean([len(e) for e in encoded]) / 1e3:.1f} kB; "
              f"written in {write_seconds:.2f} s")

        full = best_rate(lambda i: dataset[i], count, args.repeats)
        raw = best_rate(dataset.read_raw, count, args.repeats)
        pil = best_rate(lambda i: decode_image(encoded[i]), count, args.repeats)
        opencv = best_rate(
            lambda i: cv2.imdecode(np.frombuffer(encoded[i], np.uint8), cv2.IMREAD_COLOR), count, args.repeats
        )
        dataset.close()

    print(f"RecordIODataset[i] (read + decode): {full:10.0f} records/s")
    print(f"raw record read, no decode:         {raw:10.0f} records/s")
    print(f"JPEG decode from memory (PIL):      {pil:10.0f} images/s")
    print(f"JPEG decode from memory (cv2):      {opencv:10.0f} images/s")
    print(f"ratio dataset / PIL decode alone:   {full / pil:10.3f}")
    print(f"ratio raw read / PIL decode:        {raw / pil:10.1f}")
    print(f"share of ds[i] time spent reading:  {full / raw:10.1%}")


if __name__ == "__main__":
    main()
