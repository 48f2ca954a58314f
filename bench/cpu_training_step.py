"""CPU speed of the project's training step on the dlib ResNet-29: fp32, bf16 autocast, channels-last, both, compile.

For LoRA (r=8) and DA-LoRA (K = 3 experts, classifier router), built as
:func:`afr.experiments.dalora_run.run_method` builds them (real pretrained dlib weights, the CosFace head with
contrastive and domain terms, the project's augmentation and parameter groups), one
:meth:`afr.train.Trainer.train_step` (augmentation, forward under the trainer's autocast, backward, clipping,
AdamW, schedule) is timed on one fixed batch of 32 real 150 px chips of the embedded training pack, under:

* ``fp32``: the baseline (``TrainConfig.precision='fp32'``);
* ``bf16``: ``precision='bf16'``: the trainer's ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* ``channels-last``: the conv weights channels-last (:func:`afr.models.layout.fast_layout`), fp32;
* ``bf16+channels-last``;
* ``compile``: ``torch.compile`` of the model (fp32), timed separately: its first step (the compile) is recorded.

The variants alternate round by round and the median per variant is reported (the machine is shared: drifting load
hits every variant alike). Prints img/s and the ratio to fp32; writes ``bench/results/cpu_training_step.json``
(``--out``) with the thread count and the CPU's flags.

Usage: ``python bench/cpu_training_step.py [--rounds 7] [--batch 32] [--no-compile] [--methods lora dalora-classifier]``
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from afr.adapters.lora import trainable_parameters  # noqa: E402
from afr.data.augment import FaceAugment  # noqa: E402
from afr.experiments.benchmark_data import load_embedded_benchmark  # noqa: E402
from afr.experiments.dalora_run import adapt, parameter_groups  # noqa: E402
from afr.experiments.settings.dalora import DaLoraExperimentSettings  # noqa: E402
from afr.models import create_backbone, fast_layout  # noqa: E402
from afr.models.domain_aware import DomainAwareRecognitionModel  # noqa: E402
from afr.train import TrainConfig, Trainer, collate_samples, seed_everything  # noqa: E402

DEFAULT_OUT = PROJECT_ROOT / "bench" / "results" / "cpu_training_step.json"
#: variant -> (trainer precision, channels-last)
VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "channels-last": ("fp32", True),
            "bf16+channels-last": ("bf16", True)}


def build_trainer(method: str, data, precision: str, channels_last: bool, out: str) -> tuple[Trainer, dict]:
    """A trainer of ``method`` as ``run_method`` builds it (seed 0), without evaluators."""
    settings = DaLoraExperimentSettings(method=method, device="cpu", progress=False).run_settings()
    seed_everything(0)
    backbone = create_backbone(settings.backbone, settings.weights)
    model = DomainAwareRecognitionModel(
        backbone, data.train.num_classes, margin=settings.margin, lambda_contrastive=settings.lambda_contrastive,
        lambda_domain=settings.lambda_domain, temperature=settings.temperature)
    adapt(backbone, settings, data.train)
    if channels_last:
        fast_layout(backbone)
    trainable, total = trainable_parameters(backbone)
    config = TrainConfig(epochs=1, batch_size=settings.batch_size, lr=settings.lr, weight_decay=settings.weight_decay,
                         warmup_epochs=settings.warmup_epochs, device="cpu", precision=precision, output_dir=out,
                         tensorboard=False, progress=False, sampler="identity",
                         images_per_identity=settings.images_per_identity)
    trainer = Trainer(model, data.train, config, augment=FaceAugment() if settings.augment else None,
                      param_groups=parameter_groups(model, settings))
    trainer.model.train()
    return trainer, {"trainable": trainable, "backbone": total}


def fixed_batch(dataset, batch: int) -> dict[str, torch.Tensor]:
    """The first ``batch`` samples of the training pack, collated (labels, domains)."""
    return collate_samples([dataset[index] for index in range(batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["lora", "dalora-classifier"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--compile-rounds", type=int, default=3, help="timed steps of the compiled model")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    data = load_embedded_benchmark()
    batch = fixed_batch(data.train, args.batch)
    record = {"batch": args.batch, "chip_px": int(batch["images"].shape[-1]), "rounds": args.rounds,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor() or
              platform.machine(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "step": "afr.train.Trainer.train_step (augment, forward, backward, clip, AdamW, schedule)",
              "methods": {}}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            trainers = {}
            for name, (precision, channels_last) in VARIANTS.items():
                trainers[name], sizes = build_trainer(method, data, precision, channels_last, f"{tmp}/{method}-{name}")
            for trainer in trainers.values():  # warm-up: allocations, oneDNN primitive selection
                trainer.train_step(batch)
            times: dict[str, list[float]] = {name: [] for name in trainers}
            for _ in range(args.rounds):
                for name, trainer in trainers.items():
                    start = time.perf_counter()
                    trainer.train_step(batch)
                    times[name].append(time.perf_counter() - start)
            medians = {name: statistics.median(values) for name, values in times.items()}
            del trainers
            result = {"trainable_parameters": sizes["trainable"], "variants": {}}
            for name, seconds in medians.items():
                result["variants"][name] = {"median_seconds": round(seconds, 4),
                                            "img_per_s": round(args.batch / seconds, 2),
                                            "ratio_vs_fp32": round(medians["fp32"] / seconds, 3),
                                            "seconds": [round(value, 4) for value in times[name]]}
            if not args.no_compile:
                result["variants"]["compile"] = compile_variant(method, data, batch, args, tmp, medians["fp32"])
            record["methods"][method] = result
            print(f"\n== {method}  (dlib-resnet29, batch {args.batch} of {record['chip_px']} px chips, "
                  f"{record['threads']} threads, median of {args.rounds} alternated rounds)")
            for name, entry in result["variants"].items():
                if "img_per_s" in entry:
                    first = f"   (first step, the compile: {entry['first_step_seconds']:.0f} s)" \
                        if "first_step_seconds" in entry else ""
                    print(f"   {name:<20} {entry['img_per_s']:7.2f} img/s   x{entry['ratio_vs_fp32']:.2f} vs fp32{first}")
                else:
                    print(f"   {name:<20} {entry['note']}")
            args.out.parent.mkdir(parents=True, exist_ok=True)  # after each method: a stopped run keeps its methods
            args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")


def compile_variant(method: str, data, batch, args, tmp: str, fp32_seconds: float) -> dict:
    """``torch.compile`` of the fp32 model: the first step's time (the compile), then ``--compile-rounds`` steps;
    the fp32 median it is compared with comes from the alternated rounds (measured minutes apart: noisier)."""
    trainer, _ = build_trainer(method, data, "fp32", False, f"{tmp}/{method}-compile")
    trainer.train_model = torch.compile(trainer.model)
    start = time.perf_counter()
    try:
        trainer.train_step(batch)
    except Exception as error:  # noqa: BLE001 - reported, not fatal: the other variants stand
        return {"note": f"compile failed after {time.perf_counter() - start:.0f} s: {type(error).__name__}: "
                        f"{str(error).splitlines()[0][:200]}"}
    first = time.perf_counter() - start
    times = []
    for _ in range(args.compile_rounds):
        start = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"first_step_seconds": round(first, 1), "median_seconds": round(seconds, 4),
            "img_per_s": round(args.batch / seconds, 2), "ratio_vs_fp32": round(fp32_seconds / seconds, 3),
            "seconds": [round(value, 4) for value in times],
            "note": "not alternated with the others (measured after them)"}


if __name__ == "__main__":
    main()
