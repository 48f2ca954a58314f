"""``torchrun --nproc_per_node 2 -m afr baseline`` and ``... -m afr dalora`` on CPU (Gloo): rank 0 alone decides,
writes, scores the test packs and prints; the run's tag and record carry the world size; the result equals one
process's on the joint batch. ``... -m afr maml`` and ``... crossdomain``: each outer step's episodes are split over
the two processes, and the meta-training equals one process's on all the step's episodes.

The commands run through tests/cli_worker.py (``afr.cli.main`` with torch's start-up seed fixed, and spies on the
test-pack scoring and the records layer's writes), on the embedded benchmark with the tiny random DINOv2.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from afr.experiments.settings import BaselineSettings, SettingsError
from afr.experiments.settings.ablations import AblationSettings
from afr.experiments.settings.crossdomain import CrossDomainSettings
from afr.experiments.settings.dalora import DaLoraExperimentSettings
from afr.experiments.settings.maml import MamlExperimentSettings
from afr.paths import PROJECT_ROOT

WORKER = Path(__file__).with_name("cli_worker.py")
COMMON = ["--backbone", "tiny-dinov2", "--rank", "2", "--epochs", "1", "--batch-size", "8", "--no-augment",
          "--no-progress"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
               AFR_RESULTS=str(tmp_path / "results"), AFR_RUNS=str(tmp_path / "runs"),
               AFR_FIGURES=str(tmp_path / "figures"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _run(tmp_path: Path, args: list[str], processes: int, joint_of: int | None = None,
         ) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """The command in ``processes`` processes (torchrun, Gloo on CPU) or one (``joint_of``: accumulating that many
    batches per step, see tests/cli_worker.py); returns it and the spies' log."""
    log = tmp_path / "log"
    env = dict(_env(tmp_path), CLI_WORKER_LOG=str(log), **({"CLI_WORKER_JOINT_OF": str(joint_of)} if joint_of else {}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), str(WORKER), *args]
    finished = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    entries = [json.loads(line) for path in sorted(log.glob("rank*.jsonl")) for line in path.read_text().splitlines()]
    return finished, entries


def _records(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.json"))


def _check_rank_zero_did_everything(entries: list[dict], single: list[dict]) -> None:
    assert entries and {entry["rank"] for entry in entries} == {0}, entries  # rank 1 scored and wrote nothing
    scored = [entry["packs"] for entry in entries if entry["what"] == "score"]
    assert scored == [entry["packs"] for entry in single if entry["what"] == "score"]  # each once, as one process


@pytest.mark.slow
def test_torchrun_baseline_two_processes_write_once_and_equal_one_process_on_the_joint_batch(tmp_path,
                                                                                              embedded_benchmark):
    finished, entries = _run(tmp_path / "ddp", ["baseline", *COMMON], 2)
    assert finished.returncode == 0, finished.stderr[-4000:]
    record = json.loads(finished.stdout)  # exactly one JSON document on stdout: rank 0's
    assert record["settings"]["world_size"] == 2 and record["settings"]["batch_size"] == 8
    assert record["settings"]["batch_size_per_process"] == 4
    assert _records(tmp_path / "ddp" / "results") == [tmp_path / "ddp" / "results" / f"{record['tag']}.json"]
    assert json.loads((tmp_path / "ddp" / "results" / f"{record['tag']}.json").read_text()) == record
    assert any(key.startswith("val/") for key in record["train"]["history"][0])  # rank 0's validated history
    # the same command again: reused by both ranks (rank 0's decision), one line says so, nothing written or scored
    again, again_entries = _run(tmp_path / "ddp", ["baseline", *COMMON], 2)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads(again.stdout) == record and again.stderr.count("reusing the recorded run") == 1
    assert again_entries == entries

    alone, single_entries = _run(tmp_path / "one", ["baseline", *COMMON], 1)
    assert alone.returncode == 0, alone.stderr[-4000:]
    single = json.loads(alone.stdout)
    _check_rank_zero_did_everything(entries, single_entries)
    # the tag says how many processes ran it; a single process's tag is the one it always had
    settings = BaselineSettings(backbone="tiny-dinov2", rank=2, epochs=1, batch_size=8, augment=False, progress=False)
    assert single["tag"] == settings.tag and "world_size" not in single["settings"]
    assert record["tag"] != single["tag"] and record["tag"].rsplit("_", 1)[0] == single["tag"].rsplit("_", 1)[0]
    # one process with the global batch 8 sees, at every step, the union of the two ranks' batches of 4
    assert record["train"]["steps"] == single["train"]["steps"]
    _assert_same_result(record, single, record["test"]["lora"], single["test"]["lora"])


@pytest.mark.slow
def test_torchrun_dalora_two_processes_write_once_and_equal_one_process_on_the_joint_batch(tmp_path,
                                                                                            embedded_benchmark):
    # global batch 16: one process's stream of 8-image batches has an even count (no half step at the end)
    args = ["dalora", *COMMON, "--batch-size", "16", "--methods", "lora", "--seeds", "0", "--images-per-identity", "4"]
    finished, entries = _run(tmp_path / "ddp", args, 2)
    assert finished.returncode == 0, finished.stderr[-4000:]
    summary = json.loads(finished.stdout)  # exactly one JSON document on stdout: rank 0's
    (tag,) = summary["runs"].values()
    records = _records(tmp_path / "ddp" / "results")
    assert records == [tmp_path / "ddp" / "results" / "dalora" / f"{tag}.json"]
    record = json.loads(records[0].read_text())
    assert record["settings"]["world_size"] == 2 and record["settings"]["batch_size_per_process"] == 8
    assert any(key.startswith("val/") for key in record["train"]["history"][0])  # rank 0's validated history

    # the identity sampler gives rank r the batches r, r + 2, ... of one process's stream of 8-image batches: the
    # joint batch of a step is two consecutive ones, i.e. one process accumulating two batches of 8
    alone, single_entries = _run(tmp_path / "one", args, 1, joint_of=2)
    assert alone.returncode == 0, alone.stderr[-4000:]
    (single_tag,) = json.loads(alone.stdout)["runs"].values()
    single = json.loads((tmp_path / "one" / "results" / "dalora" / f"{single_tag}.json").read_text())
    _check_rank_zero_did_everything(entries, single_entries)
    assert "world_size" not in single["settings"] and single_tag != tag
    assert record["train"]["steps"] == single["train"]["steps"]
    _assert_same_result(record, single, record["test"], single["test"])


@pytest.mark.slow
def test_torchrun_ablations_rank_zero_meta_trains_the_start_and_the_run_equals_one_process_on_the_joint_batch(
        tmp_path, embedded_benchmark):
    args = ["ablations", *COMMON, "--batch-size", "16", "--groups", "component", "--components", "dalora+maml",
            "--seeds", "0", "--meta-steps", "1"]
    finished, entries = _run(tmp_path / "ddp", args, 2)
    assert finished.returncode == 0, finished.stderr[-4000:]
    (tag,) = json.loads(finished.stdout)["runs"]  # exactly one JSON document on stdout: rank 0's
    folder = tmp_path / "ddp" / "results" / "ablations"
    (start,) = [path for path in _records(folder) if "maml-start" in path.name]  # meta-trained once, by rank 0
    assert _records(tmp_path / "ddp" / "results") == sorted([start, folder / f"{tag}.json"])
    record = json.loads((folder / f"{tag}.json").read_text())
    assert record["settings"]["world_size"] == 2 and record["settings"]["batch_size_per_process"] == 8

    alone, single_entries = _run(tmp_path / "one", args, 1, joint_of=2)
    assert alone.returncode == 0, alone.stderr[-4000:]
    (single_tag,) = json.loads(alone.stdout)["runs"]
    single = json.loads((tmp_path / "one" / "results" / "ablations" / f"{single_tag}.json").read_text())
    _check_rank_zero_did_everything(entries, single_entries)
    assert "world_size" not in single["settings"] and single_tag != tag
    assert (tmp_path / "one" / "results" / "ablations" / start.name).is_file()  # the start's tag: one process's
    assert record["train"]["steps"] == single["train"]["steps"]
    _assert_same_result(record, single, record["test"], single["test"])


#: the smallest meta-trainings: 3 (2) outer steps of 2 episodes, one per process under torchrun; meta_lr 1e-2 so the
#: steps move the adapter (a wrong meta-gradient shows in the later steps' losses and the adapter)
MAML = ["maml", "--backbone", "tiny-dinov2", "--rank", "2", "--methods", "maml", "--seeds", "0", "--meta-steps", "3",
        "--tasks-per-step", "2", "--meta-lr", "0.01", "--shots", "1", "--steps", "0", "1", "--no-progress"]
CROSSDOMAIN = ["crossdomain", "--backbone", "tiny-dinov2", "--rank", "2", "--methods", "dalora+maml", "--seeds", "0",
               "--meta-steps", "2", "--tasks-per-step", "2", "--meta-lr", "0.01", "--inner-steps", "1", "--shots", "1",
               "--adapt-steps", "1", "--no-progress"]


def _rank_zero_meta_trained(entries: list[dict], single: list[dict]) -> None:
    """Rank 0 alone scored, wrote records and tables, checkpointed and saved the adapter, each as often as one
    process did."""
    _check_rank_zero_did_everything(entries, single)
    for what in ("checkpoint", "adapter", "write"):
        assert len([e for e in entries if e["what"] == what]) == len([e for e in single if e["what"] == what]), what
    assert any(entry["what"] == "checkpoint" for entry in entries)


def _assert_same_meta_training(history: list[dict], single: list[dict], adapter: Path, single_adapter: Path) -> None:
    """The same meta-losses at every outer step (every task of the step, in the same order) and the same adapter."""
    from safetensors.torch import load_file

    assert [entry["step"] for entry in history] == [entry["step"] for entry in single] and history
    for ddp_step, one_step in zip(history, single):
        assert set(ddp_step) == set(one_step)
        for key in set(one_step) - {"step", "seconds"}:
            assert ddp_step[key] == pytest.approx(one_step[key], rel=1e-4), (ddp_step["step"], key)
    tensors = load_file(adapter / "adapter_model.safetensors")
    single_tensors = load_file(single_adapter / "adapter_model.safetensors")
    assert tensors.keys() == single_tensors.keys()
    for name, tensor in single_tensors.items():
        torch.testing.assert_close(tensors[name], tensor, rtol=1e-4, atol=1e-6)
    # meta-training moved B away from LoRA's zero start: a wrong meta-gradient would show here
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in single_tensors.items())


@pytest.mark.slow
def test_torchrun_maml_splits_each_steps_episodes_over_two_processes_and_equals_one_process(tmp_path,
                                                                                          embedded_benchmark):
    finished, entries = _run(tmp_path / "ddp", MAML, 2)
    assert finished.returncode == 0, finished.stderr[-4000:]
    (tag,) = json.loads(finished.stdout)["runs"].values()  # exactly one JSON document on stdout: rank 0's
    results = tmp_path / "ddp" / "results"
    assert _records(results) == [results / "maml" / f"{tag}.json"]  # one record, by rank 0
    record = json.loads((results / "maml" / f"{tag}.json").read_text())
    assert record["settings"]["world_size"] == 2 and record["settings"]["tasks_per_step"] == 2

    alone, single_entries = _run(tmp_path / "one", MAML, 1)
    assert alone.returncode == 0, alone.stderr[-4000:]
    (single_tag,) = json.loads(alone.stdout)["runs"].values()
    single = json.loads((tmp_path / "one" / "results" / "maml" / f"{single_tag}.json").read_text())
    assert "world_size" not in single["settings"] and single_tag != tag
    assert single_tag.rsplit("_", 1)[0] == tag.rsplit("_", 1)[0]
    _rank_zero_meta_trained(entries, single_entries)
    _assert_same_meta_training(record["meta_training"]["history"], single["meta_training"]["history"],
                               tmp_path / "ddp" / "runs" / tag / "adapter",
                               tmp_path / "one" / "runs" / single_tag / "adapter")
    for shots, curve in single["curves"].items():  # rank 0's adaptation curves, from the same start
        for steps, metrics in curve.items():
            assert record["curves"][shots][steps]["auc"] == pytest.approx(metrics["auc"], rel=1e-4, abs=1e-5)


@pytest.mark.slow
def test_torchrun_crossdomain_meta_trains_the_start_over_two_processes_and_rank_zero_adapts(tmp_path,
                                                                                           embedded_benchmark):
    finished, entries = _run(tmp_path / "ddp", CROSSDOMAIN, 2)
    assert finished.returncode == 0, finished.stderr[-4000:]
    runs = json.loads(finished.stdout)["runs"]  # exactly one JSON document on stdout: rank 0's
    tags = dict(runs)
    results = tmp_path / "ddp" / "results" / "crossdomain"
    assert _records(tmp_path / "ddp" / "results") == sorted(results / f"{tag}.json" for tag in set(tags.values()))
    assert len(set(tags.values())) == 3  # zero-shot, the maml start, dalora+maml: one record each
    start, adapted = (json.loads((results / f"{tags[key]}.json").read_text())
                      for key in ("maml-start/seed0", "dalora+maml/seed0"))
    assert start["settings"]["world_size"] == 2 and adapted["settings"]["world_size"] == 2

    alone, single_entries = _run(tmp_path / "one", CROSSDOMAIN, 1)
    assert alone.returncode == 0, alone.stderr[-4000:]
    single_tags = json.loads(alone.stdout)["runs"]
    single_results = tmp_path / "one" / "results" / "crossdomain"
    single_start, single_adapted = (json.loads((single_results / f"{single_tags[key]}.json").read_text())
                                    for key in ("maml-start/seed0", "dalora+maml/seed0"))
    assert "world_size" not in single_start["settings"] and "world_size" not in single_adapted["settings"]
    # the meta-trained start and the runs from it carry the world size; zero-shot (scored by rank 0) does not
    assert tags["zero-shot/seed0"] == single_tags["zero-shot/seed0"]
    assert all(tags[key] != single_tags[key] for key in ("maml-start/seed0", "dalora+maml/seed0"))
    _rank_zero_meta_trained(entries, single_entries)
    _assert_same_meta_training(start["meta_training"]["history"], single_start["meta_training"]["history"],
                               tmp_path / "ddp" / "runs" / start["tag"] / "adapter",
                               tmp_path / "one" / "runs" / single_start["tag"] / "adapter")
    for record, one in ((start, single_start), (adapted, single_adapted)):
        scores = record["test"] if record is start else record["test"]["k1"]
        single_scores = one["test"] if one is single_start else one["test"]["k1"]
        assert scores.keys() == single_scores.keys()
        for pack, metrics in single_scores.items():
            assert scores[pack]["auc"] == pytest.approx(metrics["auc"], rel=1e-4, abs=1e-5), (record["tag"], pack)


def _assert_same_result(record: dict, single: dict, test: dict, single_test: dict) -> None:
    """Training loss, validation and test metrics of the DDP run equal the single process's (float tolerance)."""
    (ddp_epoch,), (one_epoch,) = record["train"]["history"], single["train"]["history"]
    numbers = {key for key, value in one_epoch.items() if isinstance(value, float) and key != "time"}
    assert numbers and numbers == {key for key, value in ddp_epoch.items() if isinstance(value, float)} - {"time"}
    for key in numbers:
        assert ddp_epoch[key] == pytest.approx(one_epoch[key], rel=1e-4, abs=1e-5), key
    assert set(test) == set(single_test)
    for pack, metrics in single_test.items():
        for metric in ("auc", "accuracy_mean", "eer"):
            assert test[pack][metric] == pytest.approx(metrics[metric], rel=1e-4, abs=1e-5), (
                pack, metric)


# ---------------------------------------------------------------------------------------------- without processes
def test_world_size_enters_the_tag_and_record_only_when_several_processes_run(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    single = BaselineSettings(batch_size=8)
    tag, recorded = single.tag, single.recorded_settings()
    assert "world_size" not in recorded and "world_size" not in single.digest_values()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert BaselineSettings(batch_size=8).tag == tag  # torchrun --nproc_per_node 1: the single-process run
    monkeypatch.setenv("WORLD_SIZE", "2")
    two = BaselineSettings(batch_size=8)
    assert two.world_size == 2 and two.tag != tag and two.tag.rsplit("_", 1)[0] == tag.rsplit("_", 1)[0]
    assert two.recorded_settings() == {**recorded, "world_size": 2, "batch_size_per_process": 4}


def test_a_job_of_several_processes_is_checked_before_any_work(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    values = {name: getattr(BaselineSettings(), name) for name in BaselineSettings.field_names()}
    with pytest.raises(SettingsError, match="global batch.*multiple of 2"):
        BaselineSettings.from_mapping({**values, "batch_size": 7})
    dalora = DaLoraExperimentSettings()
    values = {name: getattr(dalora, name) for name in DaLoraExperimentSettings.field_names()}
    with pytest.raises(SettingsError, match="images per process"):
        DaLoraExperimentSettings.from_mapping({**values, "batch_size": 8, "images_per_identity": 8})
    assert DaLoraExperimentSettings.from_mapping({**values, "batch_size": 16, "images_per_identity": 8}).world_size == 2
    # maml and crossdomain split each outer step's episodes over the processes: tasks_per_step must divide
    for settings_class in (MamlExperimentSettings, CrossDomainSettings):
        defaults = settings_class()  # built (the parser's defaults are), refused when it would run
        values = {name: getattr(defaults, name) for name in defaults.field_names()}
        with pytest.raises(SettingsError, match="--tasks-per-step.*multiple of 2, got 3"):
            settings_class.from_mapping({**values, "tasks_per_step": 3})
        assert settings_class.from_mapping({**values, "tasks_per_step": 4}).world_size == 2
    ablations = AblationSettings()  # the ablations meta-train their starts on rank 0 alone: any tasks_per_step
    values = {name: getattr(ablations, name) for name in ablations.field_names()}
    assert AblationSettings.from_mapping({**values, "tasks_per_step": 3}).tasks_per_step == 3


def test_a_crossdomain_start_meta_trained_by_several_processes_has_its_own_tag(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    settings = CrossDomainSettings()
    tags = {start: settings.start_tag(start) for start in ("pooled", "maml")}
    zero = settings.for_run("zero-shot", 0).tag
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert {start: settings.start_tag(start) for start in tags} == tags
    monkeypatch.setenv("WORLD_SIZE", "2")
    for start, tag in tags.items():
        assert settings.start_tag(start) != tag and settings.start_tag(start).rsplit("_", 1)[0] == tag.rsplit("_", 1)[0]
    assert settings.for_run("zero-shot", 0).tag == zero  # scored once by rank 0: no world size


def test_each_process_evaluates_on_its_own_device(monkeypatch):
    from afr.experiments.training_setup import evaluation_device, per_process_batch
    from afr.train import TrainConfig

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert evaluation_device(BaselineSettings(device="cpu")) == torch.device("cpu")
    assert per_process_batch(32) == 16
    if torch.cuda.is_available():  # pragma: no cover - a GPU box
        assert TrainConfig(device="cuda").resolve_device() == torch.device("cuda:1")
        assert TrainConfig(device="auto").resolve_device() == torch.device("cuda:1")
    else:
        assert TrainConfig(device="auto").resolve_device() == torch.device("cpu")


def test_the_ranks_shares_of_an_outer_step_are_the_steps_episodes_in_order():
    """task_batches(..., rank, N): rank r draws the r-th contiguous block of the step's episodes, so the N shares
    together are exactly one process's episodes of that step, in the same order."""
    import numpy as np

    from afr.meta.data import MamlData, task_batches
    from afr.meta.episodes import EpisodeSampler

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), 4)
    collections = np.array(["a"] * 24 + ["b"] * 24)
    chips = [rng.integers(0, 255, (8, 8, 3), dtype=np.uint8) for _ in labels]
    data = MamlData(chips, labels, collections, None, 8)
    sampler = EpisodeSampler(labels, collections, 3, 1, 1, seed=5)
    for step in (0, 3):
        whole = task_batches(data, sampler, 4, step)
        shares = [task for rank in range(2) for task in task_batches(data, sampler, 4, step, rank, 2)]
        assert len(shares) == len(whole) == 4
        for task, one in zip(shares, whole):
            assert task.domain == one.domain and torch.equal(task.support_images, one.support_images)
            assert torch.equal(task.query_labels, one.query_labels)
    with pytest.raises(ValueError, match="cannot be split over 3"):
        task_batches(data, sampler, 4, 0, 0, 3)
