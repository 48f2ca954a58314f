"""``make full SMOKE=1``: the users' one command, run in miniature on CPU — a CASIA-layout pack of real faces, five
tiny verification packs, a one-layer DINOv2 of the published width and a folder of real thermal faces — writes the
full profile's records and rows for every step of the chain, outside the project."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from afr.data.benchmarks import FULL_BENCHMARKS
from afr.experiments.full_chain import ChainSettings, chain_steps
from afr.paths import PROJECT_ROOT, MissingResourceError


def test_the_chain_checks_every_input_before_any_work(tmp_path):
    settings = ChainSettings(data=str(tmp_path / "casia"), bins=str(tmp_path / "bins"), weights=str(tmp_path / "w"),
                             thermal=str(tmp_path / "thermal"))
    with pytest.raises(MissingResourceError) as error:
        settings.check_inputs()
    for name in ("casia/train.rec", "casia/property", "bins/lfw.bin", "bins/cplfw.bin", str(tmp_path / "w"),
                 str(tmp_path / "thermal")):
        assert name in str(error.value)


def test_smoke_keeps_every_step_and_shrinks_every_budget(tmp_path):
    full = ChainSettings(data="d", bins="b", weights="w", thermal="t")
    smoke = ChainSettings(data="d", bins="b", weights="w", thermal="t", smoke=True)
    assert [step.name for step in chain_steps(smoke)] == [step.name for step in chain_steps(full)][:1] + [
        "notebook 02, seed 0", "notebook 03", "notebook 04", "notebook 05", "notebook 06", "notebook 07",
        "the paper's numbers (python -m afr.paper)"]
    assert (smoke.epochs, smoke.seeds, smoke.shots, smoke.identities) == (1, (0,), (1,), None)
    assert (full.rank, full.identities, full.seeds, full.shots) == (16, 1000, (0, 1, 2), (10, 50, 100))
    notebook_03 = json.loads(next(step for step in chain_steps(full) if step.name == "notebook 03").command[-3])
    assert "dalora-oracle" not in notebook_03["methods"] and notebook_03["data_profile"] == "full"


@pytest.mark.slow
def test_make_full_smoke_writes_full_profile_rows_for_every_step(full_profile_data, local_hf_models, thermal_folder,
                                                                  tmp_path):
    outputs = {f"AFR_{name.upper()}": str(tmp_path / name) for name in ("results", "runs", "figures")}
    command = ["make", "--no-print-directory", "full", "SMOKE=1", f"DATA={full_profile_data / 'casia'}",
               f"BINS={full_profile_data / 'bins'}", f"WEIGHTS={local_hf_models / 'dinov2-small'}",
               f"THERMAL={thermal_folder}", f"DOMAIN_LABELS={tmp_path / 'domain_labels'}",
               f"RUN_DIR={tmp_path / 'notebooks'}", "DEVICE=cpu"]
    result = subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, **outputs}, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    executed = sorted(path.name for path in (tmp_path / "notebooks").glob("*.ipynb"))
    assert executed == ["02_baseline_full_dinov2-vits14_seed0.ipynb", "03_dalora_full_dinov2-vits14.ipynb",
                        "04_maml_full_dinov2-vits14.ipynb", "05_crossdomain_full_dinov2-vits14.ipynb",
                        "06_ablations_full_dinov2-vits14.ipynb", "07_figures_full_dinov2-vits14.ipynb"]
    import pandas as pd

    tables = tmp_path / "results" / "tables"
    for experiment in ("baseline", "dalora", "crossdomain", "ablations"):
        rows = pd.read_csv(tables / f"{experiment}.csv")
        assert set(rows["data_profile"]) == {"full"}, experiment
        assert set(FULL_BENCHMARKS) <= set(rows["domain"]), experiment
    maml = pd.read_csv(tables / "maml.csv")
    assert set(maml["data_profile"]) == {"full"} and set(maml["domain"]) == {"thermal"}
    assert {"maml", "fomaml", "pooled-lora", "random"} <= set(maml["method"])
    dalora = pd.read_csv(tables / "dalora.csv")
    assert {"lora", "dalora-classifier"} <= set(dalora["method"])
    assert (tmp_path / "domain_labels" / "domains.json").is_file()
    generated = tmp_path / "paper" / "generated"  # beside the results folder read: never the project's paper
    assert (generated / "tables" / "full_fewshot.tex").is_file()  # written only when full-profile rows exist
    assert "DINOv2" in (generated / "tables" / "published.tex").read_text()


def test_several_gpus_run_the_data_parallel_recipes_under_torchrun_with_the_notebooks_settings():
    from afr.cli import build_parser

    settings = ChainSettings(data="d", bins="b", weights="w", thermal="t", gpus=4)
    steps = {step.name.split(" (")[0]: step.command for step in chain_steps(settings)}
    for name, command in (("notebook 02, seed 0", "baseline"), ("notebook 03", "dalora"), ("notebook 04", "maml"),
                          ("notebook 05", "crossdomain"), ("notebook 06", "ablations")):
        assert steps[name][2:7] == ["torch.distributed.run", "--standalone", "--nproc_per_node", "4", "-m"], name
        arguments = steps[name][8:]
        assert arguments[0] == command
        parsed = vars(build_parser().parse_args(arguments))  # the options are the command's own
        assert parsed["data_profile"] == "full"
    assert "papermill" in " ".join(steps["notebook 07"])
    assert all("torch.distributed.run" not in step.command for step in chain_steps(
        ChainSettings(data="d", bins="b", weights="w", gpus=1)))


def test_several_gpus_need_tasks_and_batch_they_divide_before_any_work(tmp_path):
    settings = ChainSettings(data=str(tmp_path), bins=str(tmp_path), weights=str(tmp_path), gpus=4, tasks=2)
    for name in ("train.rec", "train.idx", "property", *(f"{pack}.bin" for pack in FULL_BENCHMARKS)):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match="TASKS \\(2\\).*multiples of 4"):
        settings.check_inputs()
    ChainSettings(data=str(tmp_path), bins=str(tmp_path), weights=str(tmp_path), gpus=4, tasks=8).check_inputs()
