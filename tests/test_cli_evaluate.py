"""``python -m afr evaluate``: help, one-line errors with exit status 2, and real runs on ORL faces."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import afr.eval.verification
from afr.adapters.lora import LoraSettings, apply_lora, save_adapter
from afr.cli import main
from afr.data.folder import ImageFolderDataset, folder_verification_pairs
from afr.data.images import encode_jpeg
from afr.data.pairs import interleave_folds
from afr.data.verification import write_bin
from afr.eval.verification import fold_splits
from afr.models.factory import create_backbone
from afr.paths import PROJECT_ROOT, shared_root

needs_orl = pytest.mark.shared("data/faces/orl")


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "afr", *args], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=120
    )


def test_help_lists_the_evaluate_command_and_its_options():
    top = run_cli("--help")
    assert top.returncode == 0 and "evaluate" in top.stdout
    sub = run_cli("evaluate", "--help")
    assert sub.returncode == 0
    for option in ("--backbone", "--weights", "--adapter", "--folder", "--aligned", "--bin", "--batch-size",
                   "--no-flip", "--seed", "--device"):
        assert option in sub.stdout


def test_missing_folder_is_one_error_line_and_exit_2(tmp_path):
    missing = tmp_path / "no_such_folder"
    result = run_cli("evaluate", "--backbone", "dlib-resnet29", "--folder", str(missing), "--aligned")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("evaluate", "--backbone", "dlib-resnet29", "--bin", str(tmp_path / "none.bin"), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr and "none.bin" in result.stderr


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--bin", "{tmp}/missing.bin"], "missing.bin"),
        (["--folder", "{tmp}", "--weights", "{tmp}/no_weights"], "no_weights"),
        (["--folder", "{tmp}", "--adapter", "{tmp}/no_adapter"], "no_adapter"),
        (["--bin", "{tmp}/pack.bin", "--aligned"], "--aligned applies to --folder only"),
        (["--folder", "{tmp}", "--batch-size", "0"], "--batch-size"),
        (["--folder", "{tmp}", "--n-folds", "0"], "--n-folds must be at least 1"),
    ],
)
def test_bad_arguments_are_one_error_line(tmp_path, capsys, arguments, message):
    (tmp_path / "pack.bin").write_bytes(b"not a pack")
    argv = ["evaluate", "--backbone", "dlib-resnet29", *(a.format(tmp=tmp_path) for a in arguments)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1 and message in captured.err


def test_unknown_backbone_is_one_error_line(tmp_path, capsys):
    assert main(["evaluate", "--backbone", "no-such-net", "--folder", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no-such-net" in err


def test_corrupt_pack_is_one_error_line(tmp_path, capsys):
    pack = tmp_path / "corrupt.bin"
    pack.write_bytes(b"\x80\x04 this is not a pickled verification pack")
    assert main(["evaluate", "--backbone", "dlib-resnet29", "--bin", str(pack)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.fixture
def orl_folder(tmp_path):
    """A folder of 8 ORL identities (10 tight grey crops each), symlinked from the shared set."""
    folder = tmp_path / "orl8"
    folder.mkdir()
    for index in range(1, 9):
        (folder / f"s{index}").symlink_to(shared_root() / "data" / "faces" / "orl" / f"s{index}")
    return folder


def evaluate_json(capsys, *argv):
    assert main(["evaluate", *argv]) == 0
    return json.loads(capsys.readouterr().out)


@needs_orl
def test_real_run_on_orl_chips(orl_folder, capsys):
    output = evaluate_json(capsys, "--backbone", "dlib-resnet29", "--folder", str(orl_folder), "--aligned")
    assert set(output) >= {"backbone", "data", "seed", "flip", "accuracy_mean", "accuracy_std", "fold_accuracies",
                           "thresholds", "auc", "eer", "tar_at_far", "n_pairs", "n_positive", "n_negative", "notes"}
    assert output["backbone"] == "dlib-resnet29" and output["seed"] == 0 and output["flip"] is True
    assert output["data"]["kind"] == "folder" and output["data"]["n_images"] == 80
    # every same-identity pair (8 x C(10, 2) = 360) and as many different ones
    assert output["n_positive"] == 360 and output["n_negative"] == 360 and output["n_pairs"] == 720
    assert len(output["fold_accuracies"]) == 10 and len(output["thresholds"]) == 10
    assert output["accuracy_mean"] > 0.8 and output["auc"] > 0.9
    assert output["tar_at_far"]["1e-03"] is None and any("1e-03" in note for note in output["notes"])


def test_n_folds_also_lays_out_the_folder_pairs(tmp_path, capsys, monkeypatch):
    """--n-folds 3 on a folder: the pairs come in 3 blocks of same then different pairs, so each of the
    protocol's 3 contiguous folds holds as many same as different pairs (4 identities x 4 images:
    24 same + 24 different pairs, 8 + 8 per fold). A 10-block layout would give the first fold 9 + 7."""
    rng = np.random.default_rng(0)
    for identity in range(4):
        (tmp_path / f"p{identity}").mkdir()
        for number in range(4):
            chip = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
            (tmp_path / f"p{identity}" / f"{number}.jpg").write_bytes(encode_jpeg(chip))
    # record the pair labels the protocol receives (the command imports evaluate when it runs)
    protocol = afr.eval.verification.evaluate
    seen = {}

    def recording_evaluate(embeddings, issame, n_folds=10):
        seen["issame"] = np.asarray(issame)
        return protocol(embeddings, issame, n_folds=n_folds)

    monkeypatch.setattr(afr.eval.verification, "evaluate", recording_evaluate)
    output = evaluate_json(capsys, "--backbone", "tiny-dinov2", "--folder", str(tmp_path), "--aligned", "--n-folds", "3")
    assert output["n_pairs"] == 48 and len(output["fold_accuracies"]) == 3
    for fold, (_, test) in enumerate(fold_splits(48, 3)):
        same = int(seen["issame"][test].sum())
        assert same == len(test) - same, f"protocol fold {fold} holds {same} same of {len(test)} pairs"


@needs_orl
def test_real_run_detects_and_aligns_raw_photos(orl_folder, capsys):
    """Without --aligned, MTCNN + 5-point alignment into the dlib chip: ORL is near perfect then."""
    output = evaluate_json(capsys, "--backbone", "dlib-resnet29", "--folder", str(orl_folder), "--seed", "1")
    assert output["data"]["aligned_input"] is False and output["data"]["alignment_fallbacks"] == 0
    assert output["seed"] == 1
    assert output["accuracy_mean"] > 0.95 and output["auc"] > 0.99


def test_adapter_without_its_files_is_one_error_line(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert main(["evaluate", "--backbone", "tiny-dinov2", "--folder", str(tmp_path), "--adapter", str(adapter)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(adapter) in err


@needs_orl
def test_adapter_is_applied_to_the_backbone(orl_folder, tmp_path, capsys):
    """A saved LoRA adapter with non-zero weights changes the tiny model's embeddings, hence the metrics."""
    torch.manual_seed(0)  # the command seeds torch with --seed before building the (random) tiny backbone
    model = apply_lora(create_backbone("tiny-dinov2"), LoraSettings(r=4, alpha=64.0, init_lora_weights=False))
    adapter = save_adapter(model, tmp_path / "adapter")
    common = ["--backbone", "tiny-dinov2", "--folder", str(orl_folder), "--aligned", "--seed", "0"]
    base = evaluate_json(capsys, *common)
    adapted = evaluate_json(capsys, *common, "--adapter", str(adapter))
    assert base["adapter"] is None and adapted["adapter"] == str(adapter.resolve())
    assert adapted["n_pairs"] == base["n_pairs"] == 720
    assert adapted["auc"] != base["auc"]
    assert adapted["data"]["resized_to"] == f"{model.input_size}x{model.input_size}"


@needs_orl
def test_real_run_on_a_bin_pack(orl_folder, tmp_path, capsys):
    """A .bin pack written from ORL photos: pair counts, the file's sha256 and a sane accuracy come back."""
    dataset = ImageFolderDataset(orl_folder)
    pairs, issame = folder_verification_pairs(dataset.labels, seed=3)
    # 50 same + 50 different pairs keep the test fast; fold-ordered like every pack
    chosen = interleave_folds([tuple(p) for p in pairs[issame][::7][:50]], [tuple(p) for p in pairs[~issame][::7][:50]])
    images = [dataset[int(index)][0] for a, b, _ in chosen for index in (a, b)]
    pack = tmp_path / "orl.bin"
    write_bin(pack, images, [same for *_, same in chosen])
    output = evaluate_json(capsys, "--backbone", "dlib-resnet29", "--bin", str(pack), "--batch-size", "50")
    assert output["data"]["kind"] == "bin" and output["data"]["n_images"] == 200
    assert output["data"]["sha256"] == hashlib.sha256(pack.read_bytes()).hexdigest()
    assert output["n_pairs"] == 100 and output["n_positive"] == 50 and output["n_negative"] == 50
    assert output["accuracy_mean"] > 0.75 and output["auc"] > 0.85


@pytest.mark.shared("weights/dlib_resnet29")
@pytest.mark.parametrize("name", ["dalora-classifier_seed0", "lora-matched_seed0",
                                  "dalora-fitted/dalora-classifier_seed0", "dalora-fitted/lora_seed0"])
def test_a_committed_adapter_reproduces_its_committed_test_result(embedded_benchmark, capsys, name):
    """`python -m afr evaluate --adapter results/adapters/<name>` scores the thermal test pack as the run that trained it
    recorded (classifier gating for DA-LoRA, the record's own evaluation of that row; the fitted grid's adapters carry
    the embedding centre their runs subtracted)."""
    adapter = PROJECT_ROOT / "results" / "adapters" / name
    record = json.loads((PROJECT_ROOT / json.loads((adapter / "source.json").read_text())["record"]).read_text())
    pack = embedded_benchmark.bin_path("thermal")
    result = evaluate_json(capsys, "--backbone", "dlib-resnet29", "--bin", str(pack), "--adapter", str(adapter))
    assert abs(result["auc"] - record["test"]["thermal"]["auc"]) < 1e-3  # evaluation only: no training noise
    assert abs(result["accuracy_mean"] - record["test"]["thermal"]["accuracy_mean"]) < 0.01
