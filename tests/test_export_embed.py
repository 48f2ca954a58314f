"""Using an adapted model outside the notebooks: ``python -m afr export`` (ONNX), ``python -m afr embed`` and the
README's :class:`afr.inference.FaceEmbedder` example, on the committed adapters and real faces."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from afr.adapters.dalora import load_dalora, set_domains, set_gating
from afr.adapters.lora import load_adapter
from afr.cli import main
from afr.data.verification import load_pack
from afr.eval.extract import chips_to_tensor, extract_embeddings
from afr.export import INPUT_NAME, OUTPUT_NAME, onnx_session
from afr.inference import FaceEmbedder, cosine_similarity, load_adapted_backbone
from afr.models.factory import create_backbone
from afr.paths import PROJECT_ROOT, shared_root

ADAPTERS = PROJECT_ROOT / "results" / "adapters"
LORA = ADAPTERS / "lora_seed0"
DALORA = ADAPTERS / "dalora-classifier_seed0"
DEEPFACE = "data/faces/deepface"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(argv, capsys):
    """``python -m afr ARGV`` in this process: (exit status, stdout JSON or None, stderr)."""
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, (json.loads(out) if status == 0 else None), err


@pytest.fixture(scope="module")
def thermal_chips(embedded_benchmark):
    """24 real thermal chips of the embedded benchmark's test pack (150x150 dlib chips)."""
    pack = load_pack(embedded_benchmark.root / "test" / "thermal.bin")
    return pack.images[:24]


def deepface_pair(first: str, second: str) -> bool:
    """Whether the deepface pivot CSV labels ``first``/``second`` the same person (the data's own truth)."""
    with (shared_root() / DEEPFACE / "face-recognition-pivot.csv").open() as handle:
        for row in csv.DictReader(handle):
            names = {row["file_x"].rsplit("/", 1)[-1], row["file_y"].rsplit("/", 1)[-1]}
            if names == {first, second}:
                return row["decision"] == "Yes"
    raise LookupError(f"{first}/{second} is not a labelled pair")


# ------------------------------------------------------------------------------------------------ export
@pytest.mark.shared("weights/dlib_resnet29")
@pytest.mark.parametrize("adapter,domain", [(LORA, None), (DALORA, "thermal")], ids=["lora", "dalora-thermal"])
def test_onnx_export_matches_the_adapted_torch_model_on_real_chips(adapter, domain, thermal_chips, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    argv = ["export", "--adapter", adapter, "--onnx", path] + (["--domain", domain] if domain else [])
    status, output, err = run(argv, capsys)
    assert status == 0, err
    assert output["input"]["shape"] == ["batch", 3, 150, 150] and output["output"]["shape"] == ["batch", 128]
    assert output["onnxruntime_max_abs_difference"] < 1e-4

    # the reference is the adapter *unmerged*: LoRA branches, or DA-LoRA with oracle gating on the domain,
    # so the comparison also checks that merging computes what the adapter computes
    if domain is None:
        reference = load_adapter(create_backbone("dlib-resnet29"), adapter)
    else:
        reference = load_dalora(create_backbone("dlib-resnet29"), adapter)
        set_gating(reference, "oracle")
        set_domains(reference, [domain])
    chips = chips_to_tensor(thermal_chips, 150)
    with torch.inference_mode():
        expected = reference.eval()(chips).numpy()
    session = onnx_session(path)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: chips.numpy()})[0]
    assert got.shape == (24, 128)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    one = session.run([OUTPUT_NAME], {INPUT_NAME: chips[:1].numpy()})[0]  # the batch dimension is dynamic
    np.testing.assert_allclose(one, expected[:1], atol=1e-4, rtol=0)
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["afr.adapter"] == adapter.name and metadata["afr.domain"] == (domain or "")
    assert "[0, 1]" in metadata["afr.input"]

    # never over an existing file unless told to
    before = path.read_bytes()
    status, _, err = run(argv, capsys)
    assert status == 2 and err.strip().splitlines() == [f"error: {path} already exists; pass --overwrite to replace it"]
    assert path.read_bytes() == before


@pytest.mark.shared("weights/dlib_resnet29")
@pytest.mark.parametrize(
    "adapter,extra,message",
    [
        (DALORA, [], "is a DA-LoRA adapter: name the domain whose expert to merge (--domain), one of ['controlled', "
                     "'thermal', 'lowquality']"),
        (DALORA, ["--domain", "wild"], "domain 'wild' has no expert in the DA-LoRA adapter"),
        (LORA, ["--domain", "thermal"], "domain 'thermal' applies to DA-LoRA adapters only"),
    ],
    ids=["dalora-without-domain", "unknown-domain", "domain-for-lora"],
)
def test_export_domain_errors_are_one_line(adapter, extra, message, tmp_path, capsys):
    status, _, err = run(["export", "--adapter", adapter, "--onnx", tmp_path / "m.onnx", *extra], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------------ embed
@pytest.mark.shared(DEEPFACE, "data/faces/thermal/und", "weights/mtcnn", "weights/dlib_resnet29")
def test_embed_folder_of_photos_writes_embeddings_and_an_index_with_statuses(tmp_path, capsys):
    faces = shared_root() / DEEPFACE
    folder = tmp_path / "photos"
    for identity, names in {"alice": ["img38.jpg", "img39.jpg"], "bob": ["img29.jpg"]}.items():
        (folder / identity).mkdir(parents=True)
        for name in names:
            shutil.copy(faces / name, folder / identity / name)
    (folder / "bob" / "broken.jpg").write_bytes(b"not an image")
    thermal = sorted((shared_root() / "data/faces/thermal/und/Pristine/GalleryPristine").glob("*.tiff"))[0]
    shutil.copy(thermal, folder / "thermal.tiff")  # a registered thermal crop: MTCNN finds no face in it
    out = tmp_path / "gallery" / "faces.npy"

    status, output, err = run(["embed", folder, "--out", out, "--adapter", LORA], capsys)
    assert status == 0, err
    with out.with_suffix(".csv").open() as handle:
        index = list(csv.DictReader(handle))
    assert [(r["file"], r["identity"], r["status"], r["row"]) for r in index] == [
        ("alice/img38.jpg", "alice", "detected", "0"),
        ("alice/img39.jpg", "alice", "detected", "1"),
        ("bob/broken.jpg", "bob", "unreadable", ""),
        ("bob/img29.jpg", "bob", "detected", "2"),
        ("thermal.tiff", "", "no_face", "3"),
    ]
    embeddings = np.load(out)
    assert embeddings.shape == (4, 128) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert output["statuses"] == {"detected": 3, "unreadable": 1, "no_face": 1} and output["n_embedded"] == 4
    # the same person is closer than another person (labels from the data's pivot CSV)
    assert deepface_pair("img38.jpg", "img39.jpg") and not deepface_pair("img38.jpg", "img29.jpg")
    assert embeddings[0] @ embeddings[1] > embeddings[0] @ embeddings[2]
    # the rows are what the library API gives for the same file
    embedder = FaceEmbedder.load("dlib-resnet29", adapter=LORA)
    np.testing.assert_allclose(embeddings[2], embedder.embed(folder / "bob" / "img29.jpg"), atol=1e-6)

    # an existing result is never replaced unless told to; --skip-undetected leaves the thermal crop out
    before = out.read_bytes()
    status, _, err = run(["embed", folder, "--out", out, "--skip-undetected"], capsys)
    assert status == 2 and "already exists; pass --overwrite" in err and out.read_bytes() == before
    status, output, err = run(["embed", folder, "--out", out, "--skip-undetected", "--overwrite"], capsys)
    assert status == 0, err
    assert output["statuses"]["no_face_skipped"] == 1 and np.load(out).shape == (3, 128)
    assert sorted(p.name for p in out.parent.iterdir()) == ["faces.csv", "faces.npy"]  # no temporary files left


@pytest.mark.shared("weights/dlib_resnet29")
def test_embed_aligned_chips_with_a_dalora_expert_equals_the_merged_backbone(thermal_chips, tmp_path, capsys):
    folder = tmp_path / "chips"
    folder.mkdir()
    for number, chip in enumerate(thermal_chips[:6]):
        Image.fromarray(chip).save(folder / f"chip{number}.png")  # lossless: the files hold the pack's pixels
    out = tmp_path / "chips.npy"
    status, output, err = run(["embed", folder, "--aligned", "--out", out, "--adapter", DALORA, "--domain",
                               "thermal"], capsys)
    assert status == 0, err
    assert output["statuses"] == {"aligned_input": 6}
    merged = load_adapted_backbone("dlib-resnet29", adapter=DALORA, domain="thermal")
    np.testing.assert_allclose(np.load(out), extract_embeddings(merged, thermal_chips[:6]), atol=1e-6)
    # without --domain the router gates the experts per chip: a different network, so other embeddings
    status, _, err = run(["embed", folder, "--aligned", "--out", tmp_path / "routed.npy", "--adapter", DALORA], capsys)
    assert status == 0, err
    assert not np.allclose(np.load(tmp_path / "routed.npy"), np.load(out), atol=1e-4)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["embed", "{tmp}/none", "--out", "{tmp}/x.npy"], "image folder {tmp}/none not found"),
        (["embed", "{tmp}", "--out", "{tmp}/x.txt"], "the embeddings file must end in .npy"),
        (["embed", "{tmp}", "--out", "{tmp}/x.npy"], "no images under {tmp}"),
        (["embed", "{tmp}", "--out", "{tmp}/x.npy", "--aligned", "--skip-undetected"],
         "--skip-undetected applies to photos"),
    ],
    ids=["missing-folder", "not-npy", "empty-folder", "aligned-and-skip"],
)
def test_embed_input_errors_are_one_line(argv, message, tmp_path, capsys):
    status, _, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and message.format(tmp=tmp_path) in lines[0]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["embed", "{tmp}", "--out", "{tmp}/x.npy", "--adapter", "{tmp}/none"],
         "adapter directory {tmp}/none not found"),
        (["embed", "{tmp}", "--out", "{tmp}/x.npy", "--weights", "{tmp}/none"],
         "weights directory {tmp}/none not found"),
        (["export", "--adapter", "{tmp}/none", "--onnx", "{tmp}/m.onnx"], "adapter directory {tmp}/none not found"),
        (["export", "--adapter", "{tmp}", "--weights", "{tmp}/none", "--onnx", "{tmp}/m.onnx"],
         "weights directory {tmp}/none not found"),
    ],
    ids=["embed-adapter", "embed-weights", "export-adapter", "export-weights"],
)
def test_missing_model_inputs_are_one_line(argv, message, tmp_path, capsys):
    """``embed`` and ``export`` check the adapter and weights directories before any work (nothing written)."""
    status, _, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert message.format(tmp=tmp_path) in lines[0]
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------------------------ README example
@pytest.mark.shared(DEEPFACE, "weights/mtcnn", "weights/dlib_resnet29")
def test_readme_example_compares_two_photos():
    photos = shared_root() / DEEPFACE
    # --- the README snippet, with the shared deepface photos as the two pictures
    from afr.inference import FaceEmbedder

    embedder = FaceEmbedder.load("dlib-resnet29", adapter="results/adapters/lora_seed0")
    score = embedder.similarity(photos / "img38.jpg", photos / "img39.jpg")
    # ---
    other = embedder.similarity(photos / "img38.jpg", photos / "img29.jpg")
    assert deepface_pair("img38.jpg", "img39.jpg") and not deepface_pair("img38.jpg", "img29.jpg")
    assert score > other
    assert score == pytest.approx(cosine_similarity(embedder.embed(photos / "img38.jpg"),
                                                    embedder.embed(photos / "img39.jpg")), abs=1e-6)
