"""LoRA training throughput of ViT-S/14 (DINOv2) and ViT-B/16 (CLIP) at 224x224 in bf16 on one GPU.

The one prepared script for a lent GPU machine (no network, no weights there): models have random
weights of the published architectures (speed does not depend on weight values). For each model:

1. training img/s of LoRA (r=16 on q/v, rsLoRA, as FRoundation) + CosFace over CASIA-WebFace's 10,572
   classes, bf16 autocast, AdamW, after warm-up;
2. the achieved fraction of the GPU's dense bf16 peak: FLOPs of one training step counted with
   ``torch.utils.flop_counter.FlopCounterMode`` divided by the measured step time;
3. whether data loading keeps up: an InsightFace RecordIO pack of 112x112 JPEG faces-like images is
   written to a temporary folder and read with a ``DataLoader`` (``--workers`` processes, the same
   decode + collate as training); its img/s is compared with the training img/s.

Prints one line per measurement and a JSON summary (also written to ``$OUT/gpu_bench.json`` when
``$OUT`` is set). Runs in about 3 minutes on an H100/H200.

Usage: ``python bench/gpu_vit_lora_throughput.py [--steps 30] [--batch 256] [--workers 12]``;
a CPU smoke run: ``--device cpu --precision fp32 --steps 2 --batch 4 --workers 0 --records 64``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from afr.adapters.lora import LoraSettings, apply_lora, trainable_parameters
from afr.data.recordio import RecordIODataset, write_pack
from afr.models import FaceRecognitionModel
from afr.models.factory import architecture_config
from afr.models.vit import HFViTBackbone
from afr.train import collate_samples

#: dense (no sparsity) bf16 tensor-core peak in FLOP/s, from the vendors' data sheets (SXM parts)
BF16_PEAK = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
MODELS = {"ViT-S/14 (DINOv2)": "dinov2-vits14", "ViT-B/16 (CLIP)": "clip-vitb16"}


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, value in BF16_PEAK.items():
        if key in name:
            return name, value
    return name, None


def build(name: str, classes: int, rank: int, device: torch.device) -> FaceRecognitionModel:
    backbone = HFViTBackbone.from_config(architecture_config(name), name=name, image_size=224)
    backbone.input_size = 224  # feed 224x224 chips directly (no resize in the timed path)
    apply_lora(backbone, LoraSettings(r=rank, alpha=float(rank), dropout=0.0, use_rslora=True))
    return FaceRecognitionModel(backbone, classes).to(device).train()


def train_throughput(model, batch: int, steps: int, device: torch.device, precision: str) -> dict:
    images = torch.rand(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, model.num_classes, (batch,), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
            loss = model(images=images, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"img_per_s": batch / seconds, "step_s": seconds, "flops_per_step": flops,
            "achieved_flops": flops / seconds, "max_memory_gib": memory}


def smooth_faces(count: int, size: int = 112, seed: int = 0) -> list[np.ndarray]:
    """Smooth random images (JPEG-compress and decode like face chips, unlike white noise)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(count, 8, 8, 3)).astype(np.uint8)
    return [np.kron(image, np.ones((size // 8, size // 8, 1), dtype=np.uint8)) for image in low]


def loader_throughput(records: int, workers: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        write_pack(Path(folder) / "train", smooth_faces(records), np.arange(records) % 100)
        dataset = RecordIODataset(Path(folder) / "train")
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                            collate_fn=collate_samples, persistent_workers=workers > 0, drop_last=True)
        for _ in loader:  # warm-up epoch (worker start, page cache)
            pass
        start, seen = time.perf_counter(), 0
        for _ in range(2):
            for item in loader:
                seen += item["images"].shape[0]
        return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10572)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--records", type=int, default=8192)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    gpu, peak = peak_flops(device)
    print(f"device: {gpu} | torch {torch.__version__} | bf16 peak {peak / 1e12 if peak else 'unknown'} TFLOP/s")
    summary = {"device": gpu, "torch": torch.__version__, "precision": args.precision, "batch": args.batch,
               "bf16_peak_flops": peak, "models": {}}
    for label, name in MODELS.items():
        torch.manual_seed(0)
        model = build(name, args.classes, args.rank, device)
        trainable, total = trainable_parameters(model.backbone)
        result = train_throughput(model, args.batch, args.steps, device, args.precision)
        result["lora_trainable"], result["backbone_total"] = trainable, total
        result["peak_fraction"] = result["achieved_flops"] / peak if peak else None
        summary["models"][label] = result
        fraction = f"{100 * result['peak_fraction']:.1f} % of bf16 peak" if peak else "peak unknown"
        print(f"{label:<18} LoRA train {result['img_per_s']:8.1f} img/s | {result['achieved_flops'] / 1e12:6.1f} "
              f"TFLOP/s ({fraction}) | step {1000 * result['step_s']:.1f} ms | max mem {result['max_memory_gib']}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    loader = loader_throughput(args.records, args.workers, args.batch)
    summary["loader_img_per_s"] = loader
    summary["loader_workers"] = args.workers
    for label, result in summary["models"].items():
        ratio = loader / result["img_per_s"]
        result["loader_over_train"] = ratio
        print(f"data loading ({args.workers} workers, RecordIO + JPEG decode): {loader:8.1f} img/s = "
              f"{ratio:.2f} x the {label} training rate -> {'keeps up' if ratio >= 1 else 'does NOT keep up'}")
    print(json.dumps(summary, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_bench.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
