"""What DA-LoRA's K experts cost against one LoRA of rank r, measured side by side in one run.

For each backbone, on the same random batch:

* training step (forward + CosFace loss + backward + AdamW step) of LoRA rank r and of DA-LoRA with K
  experts of rank r (classifier gating: the router runs in the same pass); ratio DA-LoRA / LoRA;
* inference (no grad, eval mode) of the plain backbone, DA-LoRA soft-gated (unmerged) and DA-LoRA with
  oracle gating merged for one domain (expected merged / plain = 1.00: merging leaves plain layers).

Rounds alternate between the variants and the median per-round time is reported, so drifting machine
load hits every variant alike. ``dinov2-vits14`` runs with random weights of the published architecture
(112 px chips resized to 224: speed does not depend on weight values); ``dlib-resnet29`` with its real
weights. Helpers (timing, model building) are shared with ``bench/lora_vs_full.py``.

Usage: ``python bench/dalora_cost.py [--backbones dinov2-vits14 dlib-resnet29] [--batch 16] [--rounds 7]
[--experts 3] [--rank 8] [--device cpu|cuda] [--precision fp32|bf16]``.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_vs_full import infer_fn, make_backbone, timed_rounds, train_step_fn  # noqa: E402

from afr.adapters.dalora import DaLoraSettings, apply_dalora, merge_dalora  # noqa: E402
from afr.adapters.lora import LoraSettings, apply_lora, trainable_parameters  # noqa: E402
from afr.models import FaceRecognitionModel  # noqa: E402

EXPERT_NAMES = ("controlled", "thermal", "lowquality", "wild")


def bench_backbone(name: str, args, device: torch.device) -> None:
    torch.manual_seed(0)
    base = make_backbone(name).to(device)
    size = base.input_size
    images = torch.rand(args.batch, 3, size, size, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    domains = EXPERT_NAMES[: args.experts]
    settings = DaLoraSettings(r=args.rank, alpha=float(args.rank), domains=domains, gating="classifier")

    lora = FaceRecognitionModel(apply_lora(copy.deepcopy(base), LoraSettings(r=args.rank, alpha=float(args.rank))),
                                args.classes).to(device).train()
    dalora = FaceRecognitionModel(apply_dalora(copy.deepcopy(base), settings), args.classes).to(device).train()
    lora_trainable, total = trainable_parameters(lora.backbone)
    dalora_trainable, _ = trainable_parameters(dalora.backbone)
    train = timed_rounds({"LoRA": train_step_fn(lora, images, labels, device, args.precision),
                          "DA-LoRA": train_step_fn(dalora, images, labels, device, args.precision)},
                         args.rounds, device)

    plain = base.eval()
    soft = dalora.backbone.eval()
    merged = merge_dalora(copy.deepcopy(soft), domains[0]).eval()
    infer = timed_rounds({"plain": infer_fn(plain, images, device, args.precision),
                          "DA-LoRA soft-gated": infer_fn(soft, images, device, args.precision),
                          "DA-LoRA oracle merged": infer_fn(merged, images, device, args.precision)},
                         args.rounds, device)

    print(f"\n== {name}  ({size}px chips, batch {args.batch}, {args.precision}, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} rounds)")
    print(f"   trainable parameters: LoRA r={args.rank} {lora_trainable:,} | DA-LoRA K={args.experts} x r={args.rank} "
          f"{dalora_trainable:,} (all parameters of the DA-LoRA backbone {total:,})")
    for label, seconds in train.items():
        print(f"   train step  {label:<22} {args.batch / seconds:8.1f} img/s")
    print(f"   ratio DA-LoRA / LoRA (train step time): {train['DA-LoRA'] / train['LoRA']:.2f}")
    for label, seconds in infer.items():
        print(f"   inference   {label:<22} {args.batch / seconds:8.1f} img/s")
    print(f"   ratio oracle merged / plain (inference time): {infer['DA-LoRA oracle merged'] / infer['plain']:.2f}   "
          f"soft-gated / plain: {infer['DA-LoRA soft-gated'] / infer['plain']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", nargs="+", default=["dinov2-vits14", "dlib-resnet29"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--experts", type=int, default=3, choices=range(1, len(EXPERT_NAMES) + 1))
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    for name in args.backbones:
        bench_backbone(name, args, device)


if __name__ == "__main__":
    main()
