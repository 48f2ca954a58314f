"""``python -m afr evaluate``: help, one-line errors with exit status 2, and real runs on ORL faces."""
import hashlib
import importlib
import json
import os
import subprocess
import sys

import pytest

from afr.cli import main
from afr.paths import PROJECT_ROOT, shared_root

needs_orl = pytest.mark.skipif(
    not (shared_root() / "data" / "faces" / "orl").is_dir(), reason=f"ORL faces not found under {shared_root()}"
)


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "afr", *args], capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=120
    )


def require_modules(*names):
    """Skip (naming the module) when a module written by another engineer is not importable yet."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            pytest.skip(f"{name} is not importable yet ({error}); the real evaluate run needs it")


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
    require_modules("afr.models.factory")
    assert main(["evaluate", "--backbone", "no-such-net", "--folder", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "no-such-net" in err


def test_corrupt_pack_is_one_error_line(tmp_path, capsys):
    require_modules("afr.models.factory", "afr.data.verification")
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
    require_modules("afr.models.factory", "afr.data.folder")
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


@needs_orl
def test_real_run_detects_and_aligns_raw_photos(orl_folder, capsys):
    """Without --aligned, MTCNN + 5-point alignment into the dlib chip: ORL is near perfect then."""
    require_modules("afr.models.factory", "afr.data.folder", "afr.align")
    output = evaluate_json(capsys, "--backbone", "dlib-resnet29", "--folder", str(orl_folder), "--seed", "1")
    assert output["data"]["aligned_input"] is False and output["data"]["alignment_fallbacks"] == 0
    assert output["seed"] == 1
    assert output["accuracy_mean"] > 0.95 and output["auc"] > 0.99


def test_adapter_without_its_files_is_one_error_line(tmp_path, capsys):
    require_modules("afr.models.factory", "afr.adapters.lora")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    assert main(["evaluate", "--backbone", "tiny-dinov2", "--folder", str(tmp_path), "--adapter", str(adapter)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(adapter) in err


@needs_orl
def test_adapter_is_applied_to_the_backbone(orl_folder, tmp_path, capsys):
    """A saved LoRA adapter with non-zero weights changes the tiny model's embeddings, hence the metrics."""
    require_modules("afr.models.factory", "afr.data.folder", "afr.adapters.lora")
    import torch

    from afr.adapters.lora import LoraSettings, apply_lora, save_adapter
    from afr.models.factory import create_backbone

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
    require_modules("afr.models.factory", "afr.data.folder", "afr.data.verification")
    from afr.data.folder import ImageFolderDataset, folder_verification_pairs
    from afr.data.pairs import interleave_folds
    from afr.data.verification import write_bin

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
