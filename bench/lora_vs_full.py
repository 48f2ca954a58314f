"""LoRA vs full fine-tuning throughput, and merged-LoRA inference vs the plain backbone, side by side.

For each backbone, in one run and on the same random batch:

* training step (forward + CosFace loss + backward + AdamW step) of full fine-tuning (every weight
  trainable) and of LoRA (rank ``--rank`` on the backbone's default targets, class centres trainable);
* inference (no grad, eval mode) of the plain backbone, the LoRA backbone before merging and after
  ``merge_lora`` (expected ratio merged/plain = 1.00: merging leaves the original layer types).

Measurements alternate between the variants round by round and the median per-round time is reported,
so drifting machine load hits every variant alike. Backbones: ``dlib-resnet29`` with its real weights
(150 px chips) and ``dinov2-vits14`` / ``clip-vitb16`` with random weights of the published architecture
(112 px chips resized to 224; speed does not depend on weight values).

Usage: ``python bench/lora_vs_full.py [--backbones dlib-resnet29 dinov2-vits14] [--batch 16] [--rounds 5]
[--device cpu|cuda] [--precision fp32|bf16]``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch

from afr.adapters.lora import LoraSettings, apply_lora, merge_lora, trainable_parameters
from afr.models import FaceRecognitionModel, create_backbone
from afr.models.factory import HF_BACKBONES, architecture_config


def make_backbone(name: str):
    if name in HF_BACKBONES:
        from afr.models.vit import HFViTBackbone

        return HFViTBackbone.from_config(architecture_config(name), name=name, image_size=224)
    return create_backbone(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step_fn(model, images, labels, device, precision):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)

    def step():
        with autocast(device, precision):
            loss = model(images=images, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def infer_fn(backbone, images, device, precision):
    def run():
        with torch.inference_mode(), autocast(device, precision):
            backbone(images)

    return run


def timed_rounds(functions: dict, rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, alternating between them round by round."""
    for fn in functions.values():  # warm-up (allocations, kernel selection)
        fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_backbone(name: str, args, device: torch.device) -> None:
    torch.manual_seed(0)
    base = make_backbone(name).to(device)
    size = base.input_size
    images = torch.rand(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)

    full = FaceRecognitionModel(copy.deepcopy(base), args.classes).to(device).train()
    full.backbone.requires_grad_(True)
    lora_backbone = apply_lora(copy.deepcopy(base), LoraSettings(r=args.rank, alpha=float(args.rank)))
    lora = FaceRecognitionModel(lora_backbone, args.classes).to(device).train()
    full_trainable, total = trainable_parameters(full.backbone)
    lora_trainable, _ = trainable_parameters(lora.backbone)

    train = timed_rounds({"full fine-tuning": train_step_fn(full, images, labels, device, args.precision),
                          "LoRA": train_step_fn(lora, images, labels, device, args.precision)}, args.rounds, device)

    plain = base.eval()
    unmerged = copy.deepcopy(lora.backbone).eval()
    merged = merge_lora(copy.deepcopy(lora.backbone)).eval()
    with torch.inference_mode():
        difference = (merged(images) - unmerged(images)).abs().max().item()
    infer = timed_rounds({"plain": infer_fn(plain, images, device, args.precision),
                          "LoRA unmerged": infer_fn(unmerged, images, device, args.precision),
                          "LoRA merged": infer_fn(merged, images, device, args.precision)}, args.rounds, device)

    print(f"\n== {name}  ({size}px chips, batch {args.batch}, {args.precision}, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds)")
    print(f"   trainable backbone parameters: full {full_trainable:,} | LoRA r={args.rank} {lora_trainable:,} "
          f"({100 * lora_trainable / total:.2f} % of {total:,})")
    for label, seconds in train.items():
        print(f"   train step  {label:<17} {args.batch / seconds:8.1f} img/s")
    print(f"   ratio LoRA / full fine-tuning (train img/s): {train['full fine-tuning'] / train['LoRA']:.2f}")
    for label, seconds in infer.items():
        print(f"   inference   {label:<17} {args.batch / seconds:8.1f} img/s")
    print(f"   ratio merged / plain (inference img/s): {infer['plain'] / infer['LoRA merged']:.2f}   "
          f"unmerged / plain: {infer['plain'] / infer['LoRA unmerged']:.2f}")
    print(f"   max |merged - unmerged| embedding difference: {difference:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["dlib-resnet29", "dinov2-vits14"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    for name in args.backbones:
        bench_backbone(name, args, device)


if __name__ == "__main__":
    main()
