"""``python -m afr embed`` / ``export`` on bad inputs and outputs: a huge or undecodable image is a line of the
index (with why), never a crash; output paths are checked before any work; the gallery is staged, then written
NPY first and CSV second."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest

import afr.embed
from afr.cli import main
from afr.embed import FolderEmbeddings, write_embeddings
from afr.paths import PROJECT_ROOT, shared_root

ORL = "data/faces/orl"
DEEPFACE = "data/faces/deepface"
LORA = PROJECT_ROOT / "results" / "adapters" / "lora_seed0"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(argv, capsys):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if status == 0 else None), err


def huge_png(path, width: int = 20000, height: int = 10000) -> None:
    """A valid solid-grey PNG of ``width`` x ``height`` (200 megapixels): about 600 KB on disk."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x80\x80\x80" * width
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _listing(root) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.mark.shared(ORL, DEEPFACE, "weights/dlib_resnet29")
def test_huge_and_truncated_images_are_index_lines_and_the_rest_is_embedded(tmp_path, capsys):
    folder = tmp_path / "faces"
    for identity, names in {"s1": ["1.pgm", "2.pgm"], "s2": ["1.pgm"]}.items():
        (folder / identity).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(shared_root() / ORL / identity / name, folder / identity / name)
    photo = (shared_root() / DEEPFACE / "img38.jpg").read_bytes()
    (folder / "s1" / "truncated.jpg").write_bytes(photo[: len(photo) // 2])
    huge_png(folder / "s2" / "huge.png")
    out = tmp_path / "gallery.npy"

    status, output, err = run(["embed", folder, "--aligned", "--out", out], capsys)
    assert status == 0, err
    with out.with_suffix(".csv").open() as handle:
        index = {row["file"]: row for row in csv.DictReader(handle)}
    assert [(f, r["status"], r["row"]) for f, r in index.items()] == [
        ("s1/1.pgm", "aligned_input", "0"), ("s1/2.pgm", "aligned_input", "1"), ("s1/truncated.jpg", "unreadable", ""),
        ("s2/1.pgm", "aligned_input", "2"), ("s2/huge.png", "too_large", "")]
    assert "200000000 pixels" in index["s2/huge.png"]["reason"]
    assert "truncated" in index["s1/truncated.jpg"]["reason"] and "s1/truncated.jpg" in index["s1/truncated.jpg"]["reason"]
    assert all(index[f]["reason"] == "" for f in ("s1/1.pgm", "s1/2.pgm", "s2/1.pgm"))
    embeddings = np.load(out)
    assert embeddings.shape == (3, 128)  # only real embeddings: the refused files have no row
    assert output["statuses"] == {"aligned_input": 3, "unreadable": 1, "too_large": 1}
    # the same files without the bad ones give the same rows
    clean = tmp_path / "clean"
    shutil.copytree(folder, clean, ignore=shutil.ignore_patterns("truncated.jpg", "huge.png"))
    status, _, err = run(["embed", clean, "--aligned", "--out", tmp_path / "clean.npy"], capsys)
    assert status == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "clean.npy"), embeddings, atol=1e-6)


@pytest.mark.parametrize("target", ["directory", "unwritable", "under-a-file"])
@pytest.mark.shared(ORL)
def test_embed_refuses_an_output_it_cannot_write_before_any_work(target, tmp_path, capsys):
    folder = tmp_path / "faces"
    folder.mkdir()
    shutil.copy(shared_root() / ORL / "s1" / "1.pgm", folder / "1.pgm")
    (tmp_path / "file").write_text("x")
    out = {"directory": tmp_path / "existing.npy", "unwritable": "/proc/afr-no-such-folder/gallery.npy",
           "under-a-file": tmp_path / "file" / "gallery.npy"}[target]
    if target == "directory":
        out.mkdir()
    before = _listing(tmp_path)
    status, _, err = run(["embed", folder, "--aligned", "--out", out], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and str(out) in lines[0], err
    assert _listing(tmp_path) == before  # no orphan existing.csv, no probe file left


@pytest.mark.parametrize("target", ["directory", "unwritable"])
def test_export_refuses_an_output_it_cannot_write_before_loading_anything(target, tmp_path, capsys):
    onnx = {"directory": tmp_path / "model.onnx", "unwritable": "/proc/afr-no-such-folder/model.onnx"}[target]
    if target == "directory":
        onnx.mkdir()
    status, _, err = run(["export", "--adapter", LORA, "--onnx", onnx], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and str(onnx) in lines[0], err
    assert _listing(tmp_path) == (["model.onnx"] if target == "directory" else [])


def _result(rows: int) -> FolderEmbeddings:
    index = [{"row": i, "file": f"new{i}.png", "identity": "", "status": "aligned_input", "reason": ""}
             for i in range(rows)]
    return FolderEmbeddings(np.ones((rows, 4), dtype=np.float32), index)


def test_the_gallery_goes_npy_first_then_csv(tmp_path, monkeypatch):
    moves = []
    replace = os.replace

    def recording_replace(source, destination):
        moves.append(os.path.basename(destination))
        return replace(source, destination)

    monkeypatch.setattr(os, "replace", recording_replace)
    out, csv_path = write_embeddings(_result(2), tmp_path / "gallery.npy")
    assert moves == ["gallery.npy", "gallery.csv"]
    assert np.load(out).shape == (2, 4) and csv_path.read_text().splitlines()[0] == "row,file,identity,status,reason"


@pytest.mark.parametrize("failing", ["gallery.npy", "gallery.csv"])
def test_a_full_disk_while_writing_either_file_leaves_the_old_gallery_whole(failing, tmp_path, monkeypatch):
    old_npy, old_csv = write_embeddings(_result(3), tmp_path / "gallery.npy")
    before = (old_npy.read_bytes(), old_csv.read_bytes())
    real_writer = afr.embed.atomic_writer

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def writer(path, *args, **kwargs):
        context = real_writer(path, *args, **kwargs)
        if os.path.basename(path) != failing:
            return context

        class Failing:
            def __enter__(self):
                return FullDisk(context.__enter__())

            def __exit__(self, *exc):
                return context.__exit__(*exc)

        return Failing()

    monkeypatch.setattr(afr.embed, "atomic_writer", writer)
    with pytest.raises(OSError, match="No space left"):
        write_embeddings(_result(1), tmp_path / "gallery.npy", overwrite=True)
    assert (old_npy.read_bytes(), old_csv.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.csv", "gallery.npy"]  # no temporary files
