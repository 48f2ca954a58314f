"""Subprocess helper for tests/test_cli_ddp.py (not a test module): ``python -m afr ARGS`` (:func:`afr.cli.main`),
single or under torchrun, with three test-only additions, all before the command runs (the options are environment
variables: torchrun would take ``--log...`` for an abbreviation of its own ``--log-dir``):

* torch's global RNG is seeded (``torch.manual_seed(0)``): torch seeds it randomly at start-up, and the tiny test
  backbones are random models drawn from it, so without this two runs (or a single run and a DDP run's rank 0) would
  train different models (the real backbones load their weights);
* ``CLI_WORKER_LOG=DIR``: every test-pack scoring (``evaluate_on_packs`` as the recipes call it, the cross-domain
  recipe's ``score_packs``), every file the records layer writes (records, tables), every meta-training checkpoint
  and every saved meta-learned adapter appends one JSON line ``{"rank", "what", ...}`` to ``DIR/rank<r>.jsonl``;
* ``CLI_WORKER_JOINT_OF=N`` (single process only): the recipes' training config takes ``batch_size / N`` images per
  batch and accumulates ``N`` batches per optimizer step, i.e. the joint batch of an N-process run whose sampler
  gives rank r the batches r, r + N, ... of the single-process stream (the identity sampler of notebook 03).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

torch.manual_seed(0)


def _log(folder: Path, entry: dict) -> None:
    rank = int(os.environ.get("RANK", "0"))
    with open(folder / f"rank{rank}.jsonl", "a") as handle:
        handle.write(json.dumps({"rank": rank, **entry}) + "\n")


def _spy(folder: Path) -> None:
    import afr.experiments.baseline as baseline
    import afr.experiments.crossdomain as crossdomain
    import afr.experiments.dalora_run as dalora_run
    import afr.experiments.dalora_vs_lora as dalora_vs_lora
    import afr.experiments.maml_init as maml_init
    import afr.experiments.records as records
    import afr.meta.maml as maml
    import afr.meta.start as start

    for module, name in ((baseline, "evaluate_on_packs"), (dalora_run, "evaluate_on_packs"),
                         (dalora_vs_lora, "evaluate_on_packs"), (maml_init, "evaluate_on_packs"),
                         (crossdomain, "score_packs")):
        scored = getattr(module, name)

        def scoring(backbone, packs, *args, _scored=scored, _module=module.__name__, **kwargs):
            _log(folder, {"what": "score", "packs": sorted(packs), "module": _module})
            return _scored(backbone, packs, *args, **kwargs)

        setattr(module, name, scoring)
    saved, adapter = maml._save, start.save_adapter

    def checkpoint(path, *args, **kwargs):
        _log(folder, {"what": "checkpoint", "path": str(path)})
        return saved(path, *args, **kwargs)

    def saving(backbone, path, *args, **kwargs):
        _log(folder, {"what": "adapter", "path": str(path)})
        return adapter(backbone, path, *args, **kwargs)

    maml._save, start.save_adapter = checkpoint, saving
    written = records.atomic_write_text

    def writing(path, *args, **kwargs):
        _log(folder, {"what": "write", "path": str(path)})
        return written(path, *args, **kwargs)

    records.atomic_write_text = writing


def _joint_of(accumulate: int) -> None:
    import afr.experiments.baseline as baseline
    import afr.experiments.dalora_run as dalora_run

    for module in (baseline, dalora_run):
        config_of = module.train_config

        def joint(*args, _config_of=config_of, **kwargs):
            config = _config_of(*args, **kwargs)
            config.batch_size //= accumulate
            config.grad_accum_steps = accumulate
            return config

        module.train_config = joint


def main(argv: list[str]) -> int:
    if os.environ.get("CLI_WORKER_LOG"):
        folder = Path(os.environ["CLI_WORKER_LOG"])
        folder.mkdir(parents=True, exist_ok=True)
        _spy(folder)
    if os.environ.get("CLI_WORKER_JOINT_OF"):
        _joint_of(int(os.environ["CLI_WORKER_JOINT_OF"]))
    from afr.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
