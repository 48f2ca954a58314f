"""GPU hours of ``make full`` per notebook, estimated from the FLOP count (not a measurement).

The FLOPs of one training image (forward + backward of the LoRA model: frozen backbone, gradients through the
activations, LoRA r on q/v, CosFace over the identities) and of one evaluation image (forward) are counted by
``torch.utils.flop_counter.FlopCounterMode`` on the published architecture (random weights: the count does not depend
on them), on CPU. Each notebook's image count follows from ``make full``'s defaults (CASIA-WebFace: 494,414 images
of 10,572 identities, so about 46.8 per identity; the five packs: 12,000 + 14,000 + 12,000 + 12,000 + 12,000 images,
each scored with its flipped copy). GPU hours = FLOPs / (sustained rate), the sustained rate being ``--mfu`` (default
0.3) of the card's dense bf16 peak (``--peak-tflops``, default H100 SXM's 989). Data loading, augmentation and Python
overheads are not in a FLOP count: ``bench/gpu_vit_lora_throughput.py`` measures them on a GPU.

Usage: ``python bench/full_profile_gpu_hours.py [--backbone dinov2-vits14] [--out bench/results/full_profile_gpu_hours.json]``
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from afr.adapters.lora import LoraSettings, apply_lora  # noqa: E402
from afr.models import FaceRecognitionModel  # noqa: E402
from afr.models.factory import architecture_config  # noqa: E402
from afr.models.vit import HFViTBackbone  # noqa: E402

CASIA_IMAGES_PER_IDENTITY = 494_414 / 10_572
PACK_IMAGES = {"lfw": 12_000, "cfp_fp": 14_000, "agedb_30": 12_000, "calfw": 12_000, "cplfw": 12_000}


def flops_per_image(backbone_name: str, rank: int, identities: int, batch: int = 2) -> tuple[float, float]:
    """``(training FLOPs, evaluation FLOPs)`` per image of the LoRA model on 112 px chips (resized to 224 inside)."""
    backbone = HFViTBackbone.from_config(architecture_config(backbone_name), name=backbone_name, image_size=224)
    apply_lora(backbone, LoraSettings(r=rank, alpha=float(rank)))
    model = FaceRecognitionModel(backbone, identities)
    chips = torch.rand(batch, 3, 112, 112)
    labels = torch.arange(batch) % identities
    with FlopCounterMode(display=False) as training:
        model(chips, labels).loss.backward()
    with torch.no_grad(), FlopCounterMode(display=False) as evaluation:
        backbone(chips)
    return training.get_total_flops() / batch, evaluation.get_total_flops() / batch


def notebook_images(identities: int, epochs: int, seeds: int, methods_03: int, shots: tuple[int, ...],
                    meta_steps: int, episode_images: int, inner_steps: int, adapt_steps: int, adapt_batch: int,
                    ) -> dict[str, tuple[float, float]]:
    """``{notebook: (training images, evaluation images)}`` under ``make full``'s defaults."""
    train = identities * CASIA_IMAGES_PER_IDENTITY
    evaluation = 2 * sum(PACK_IMAGES.values())  # the five packs, flip test
    validation = 2 * 100 * 10  # 100 held-out identities x 10 images, flip test, after every epoch
    meta = meta_steps * episode_images * (inner_steps + 1)  # per start: inner steps on the support, one query pass
    thermal = 2 * 12_000  # the thermal test pack (at most 6,000 pairs), flip test
    return {
        "02_baseline": (seeds * epochs * train, seeds * (2 * evaluation + epochs * validation)),
        "03_dalora": (methods_03 * seeds * epochs * train,
                      evaluation + methods_03 * seeds * (evaluation + epochs * validation)),
        "04_maml": (3 * seeds * meta + 4 * seeds * len(shots) * adapt_steps * adapt_batch,
                    4 * seeds * len(shots) * 4 * thermal),
        "05_crossdomain": (2 * seeds * meta + 4 * seeds * len(shots) * adapt_steps * adapt_batch,
                           4 * seeds * len(shots) * (evaluation + thermal)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2-vits14", choices=("dinov2-vits14", "clip-vitb16"))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.3, help="assumed sustained fraction of the peak")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "full_profile_gpu_hours.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    train_flops, eval_flops = flops_per_image(args.backbone, args.rank, args.identities)
    rate = args.peak_tflops * 1e12 * args.mfu
    images = notebook_images(args.identities, args.epochs, args.seeds, methods_03=4, shots=(10, 50, 100),
                             meta_steps=200, episode_images=5 * (2 + 2) * 2, inner_steps=3, adapt_steps=50,
                             adapt_batch=128)
    rows = {name: {"training_images": round(train), "evaluation_images": round(evaluated),
                   "pflop": round((train * train_flops + evaluated * eval_flops) / 1e15, 2),
                   "gpu_hours": round((train * train_flops + evaluated * eval_flops) / rate / 3600, 3)}
            for name, (train, evaluated) in images.items()}
    record = {"backbone": args.backbone, "rank": args.rank, "identities": args.identities, "epochs": args.epochs,
              "seeds": args.seeds, "training_gflop_per_image": round(train_flops / 1e9, 2),
              "evaluation_gflop_per_image": round(eval_flops / 1e9, 2), "peak_tflops": args.peak_tflops,
              "assumed_mfu": args.mfu, "notebooks": rows,
              "note": "estimate from the FLOP count at an assumed sustained rate, a lower bound (data loading, "
                      "augmentation and evaluation overheads are not FLOPs); not measured on a GPU"}
    print(f"{args.backbone}: {record['training_gflop_per_image']} GFLOP per training image, "
          f"{record['evaluation_gflop_per_image']} per evaluation image; {args.mfu:.0%} of {args.peak_tflops:g} TFLOPS")
    for name, row in rows.items():
        print(f"  {name:<15} {row['pflop']:>8.2f} PFLOP  {row['gpu_hours']:>7.3f} GPU h")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print("record:", args.out)


if __name__ == "__main__":
    main()
