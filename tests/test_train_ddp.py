"""2-process Gloo DDP on CPU: ranks agree, equal one process on the joint batch, and stop together."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from afr.train import TrainConfig, Trainer
from afr.train.smoke import SyntheticFaces, TinyClassifier

WORKER = Path(__file__).with_name("train_worker.py")
# 32 samples, 2 ranks x 4 per rank = 8 per optimizer step -> 4 steps in the one epoch
SAMPLES, PER_RANK_BATCH, LR = 32, 4, 0.05

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")


def _torchrun_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def test_two_process_gloo_ddp_matches_single_process_on_joint_batch(tmp_path):
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(WORKER), "--output-dir", str(output_dir), "--epochs", "1", "--samples", str(SAMPLES),
        "--batch-size", str(PER_RANK_BATCH), "--lr", str(LR),
    ]
    completed = subprocess.run(command, env=_torchrun_env(), capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr[-4000:]

    results = [json.loads((output_dir / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]
    assert [r["step"] for r in results] == [4, 4]
    rank0 = torch.load(output_dir / "params-rank0.pt")
    rank1 = torch.load(output_dir / "params-rank1.pt")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
    # only rank 0 writes run outputs
    assert json.loads((output_dir / "run.json").read_text())["world_size"] == 2
    assert len(list((output_dir / "checkpoints").glob("checkpoint-*.pt"))) == 1

    # one process, batch 2 x 4: the sampler gives it the union of the two ranks' batches at every
    # step, and DDP's gradient average equals the gradient of the mean loss over that union
    torch.manual_seed(0)  # the worker builds its model after the same seed
    model = TinyClassifier()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(
        epochs=1, batch_size=2 * PER_RANK_BATCH, lr=LR, warmup_steps=2, min_lr=LR / 10, seed=7,
        output_dir=str(tmp_path / "single"), progress=False, tensorboard=False, device="cpu",
    )
    single = Trainer(model, SyntheticFaces(SAMPLES), config).fit()
    assert single.step == 4
    for name, value in model.state_dict().items():
        assert not torch.allclose(value, initial[name]), f"{name} did not train"
        torch.testing.assert_close(rank0[name], value, rtol=1e-5, atol=1e-6, msg=f"DDP != single process for {name}")
    # the mean of the two ranks' step losses is the single process's loss on the joint batch
    rank_losses = [[float.fromhex(x) for x in r["step_losses"]] for r in results]
    joint = [(a + b) / 2 for a, b in zip(*rank_losses)]
    assert joint == pytest.approx(single.step_losses, rel=1e-5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_nan_loss_on_one_rank_stops_every_rank_promptly(tmp_path):
    """Rank 1's third forward pass (first micro-batch of step 2, accumulating 2) gives a NaN loss.
    Both ranks must raise FloatingPointError at once, well inside the 60 s process-group timeout.
    The two ranks are started directly (not under torchrun, which would kill the surviving rank as
    soon as the other fails) so that each process's own exit and error are seen."""
    timeout_s = 60
    output_dir = tmp_path / "nan"
    env = dict(_torchrun_env(), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    command = [
        sys.executable, str(WORKER), "--output-dir", str(output_dir), "--epochs", "2", "--samples", str(SAMPLES),
        "--batch-size", str(PER_RANK_BATCH), "--accum", "2", "--nan-on-rank", "1", "--nan-at-forward", "3",
        "--dist-timeout", str(timeout_s),
    ]
    started = time.monotonic()
    ranks = [subprocess.Popen(command, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        stderrs = [rank.communicate(timeout=2 * timeout_s)[1] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    elapsed = time.monotonic() - started
    assert [rank.returncode for rank in ranks] == [1, 1], stderrs
    errors = [json.loads((output_dir / f"error-rank{r}.json").read_text()) for r in (0, 1)]
    assert [e["type"] for e in errors] == ["FloatingPointError"] * 2, stderrs
    assert "non-finite loss nan" in errors[1]["message"] and "another rank" in errors[0]["message"]
    assert all("step 2" in e["message"] for e in errors)
    assert abs(errors[0]["time"] - errors[1]["time"]) < 5 and elapsed < timeout_s, (errors, elapsed)


LEAVER = """
import os, sys, time
from afr.train import distributed
distributed.init_distributed(backend="gloo", timeout_s=60)
if distributed.get_rank() == 1:
    time.sleep(12)  # a peer stuck elsewhere, that never comes to the barrier
    os._exit(3)
time.sleep(1)
started = time.monotonic()
distributed.cleanup(wait_s=float(sys.argv[1]))
print(f"left after {time.monotonic() - started:.1f}")
"""


@pytest.mark.parametrize("wait_s", [2.0])
def test_an_error_path_cleanup_waits_for_a_stuck_peer_at_most_its_bound(wait_s):
    """cleanup() on an error path waits for the other ranks (gloo's monitored_barrier) before tearing the group
    down, but a peer that never comes costs at most ``wait_s``: the surviving rank leaves cleanly (exit 0)."""
    env = dict(_torchrun_env(), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    command = [sys.executable, "-c", LEAVER, str(wait_s)]
    ranks = [subprocess.Popen(command, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        outputs = [rank.communicate(timeout=45) for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
    assert [rank.returncode for rank in ranks] == [0, 3], outputs
    waited = float(outputs[0][0].split("left after ")[1])
    assert waited <= wait_s + 2.0, outputs
