"""LoRA training throughput of the project's own trainer step beside the bare model step, on one GPU (or CPU).

For each ViT (default: ViT-S/14 DINOv2 and ViT-B/16 CLIP; LoRA r=16 on q/v with rsLoRA, a CosFace head over
CASIA-WebFace's 10,572 classes, as FRoundation trains) and each batch size of a sweep:

* **trainer step**: :meth:`afr.train.Trainer.train_step`, the per-batch work of ``fit``: a pinned CPU batch of
  112x112 chips moved to the device, the project's kornia augmentation (:class:`afr.data.augment.FaceAugment`,
  with its device-to-host syncs), the backbone's own 112 -> 224 resize, forward and backward under the trainer's
  autocast, the loss's and the grad norm's ``.item()`` syncs, clipping, AdamW and the schedule;
* **bare step**: the same model and optimizer on a batch already on the device: forward, backward, optimizer
  step only (the resize is part of the model, so it is in both);
* FLOPs of one bare step (``torch.utils.flop_counter``) over the step time, as a fraction of the card's dense
  bf16 peak (MFU) when the card is known (:func:`bf16_peak`; an unknown card: peak unknown, no MFU).

At the largest batch size that ran, the trainer's own loader (``Trainer._make_loader``: RecordIO + JPEG decode,
``--workers`` processes, pinned memory on CUDA) is measured **while the device trains**: once drained by a
thread while the trainer steps on a fixed batch (the loader's capacity under load), once feeding the trainer
step (the rate a run gets, and the share of time spent waiting for data).

Options: ``--compile`` (``torch.compile`` of the model in both steps), ``--fused-adamw`` (the trainer's AdamW
rebuilt with ``fused=True``), ``--bf16-backbone`` (the frozen backbone weights stored in bf16; LoRA and head stay
fp32). The attention kernel that ran is read off a profiled forward (flash / memory-efficient / cuDNN / math).

Prints one line per measurement with img/s and the ratios trainer/bare and loader/trainer, and writes a JSON
record (``--out``, default ``bench/results/gpu_vit_lora_throughput.json``; a ``--tiny`` run's default is the
git-ignored ``bench/results/gpu_vit_lora_throughput-tiny.json``). The sweep stops starting new batch
sizes once ``--time-budget`` seconds have passed, so a default run stays under 10 minutes on one H200.

Weights: ``--weights DIR`` loads one local Hugging Face folder (``--models`` then names that one model);
without it the models are random-init ViTs of the published architecture (speed does not depend on weight
values; the record says so). ``--tiny``: a one-layer, 32-wide ViT built in code, for a CPU smoke run::

    python bench/gpu_vit_lora_throughput.py                 # on a GPU machine (budgeted under 10 minutes)
    python bench/gpu_vit_lora_throughput.py --device cpu --tiny                # CPU smoke run, seconds
"""
from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(PROJECT_ROOT))

from afr.adapters.lora import LoraSettings, apply_lora, trainable_parameters  # noqa: E402
from afr.data.augment import FaceAugment  # noqa: E402
from afr.data.recordio import RecordIODataset, write_pack  # noqa: E402
from afr.models import FaceRecognitionModel  # noqa: E402
from afr.models.factory import HF_BACKBONES, architecture_config  # noqa: E402
from afr.models.vit import HFViTBackbone  # noqa: E402
from afr.train import TrainConfig, Trainer, build_scheduler, collate_samples  # noqa: E402

DEFAULT_MODELS = ("dinov2-vits14", "clip-vitb16")
DEFAULT_OUT = PROJECT_ROOT / "bench" / "results" / "gpu_vit_lora_throughput.json"
TINY_OUT = PROJECT_ROOT / "bench" / "results" / "gpu_vit_lora_throughput-tiny.json"  # git-ignored
#: what ``--tiny`` changes of the options left unset: a CPU smoke run of a few seconds
TINY_DEFAULTS = {"batch_sizes": "4", "steps": 2, "warmup": 1, "workers": 0, "records": 64, "classes": 64}
RUN_DEFAULTS = {"batch_sizes": "64,128,256", "steps": 20, "warmup": 3, "workers": 12, "records": 8192,
                "classes": 10572}
CHIP = 112  # the training chips' side (ArcFace alignment); the backbone resizes them to 224

#: dense (no sparsity) bf16 tensor-core peaks in FLOP/s from NVIDIA's data sheets (the sheets print the sparse
#: figure: half of it), matched in this order against ``torch.cuda.get_device_name``
BF16_PEAKS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("H200 NVL", ("H200", "NVL"), 835.5e12),
    ("H200 SXM", ("H200",), 989.4e12),
    ("H100 NVL", ("H100", "NVL"), 835.5e12),
    ("H100 PCIe", ("H100", "PCIE"), 756.5e12),
    ("H100 SXM", ("H100", "SXM"), 989.4e12),
    ("H100 SXM", ("H100", "HBM3"), 989.4e12),  # "NVIDIA H100 80GB HBM3" is the SXM5 part (PCIe: HBM2e)
    ("A100", ("A100",), 312e12),
)

#: the aten operator each scaled-dot-product-attention kernel dispatches to
SDPA_KERNELS = {
    "_scaled_dot_product_flash_attention": "flash",
    "_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "_scaled_dot_product_efficient_attention": "memory-efficient",
    "_scaled_dot_product_cudnn_attention": "cuDNN",
    "_scaled_dot_product_attention_math": "math",
}


# ------------------------------------------------------------------------------------------------ the card
def bf16_peak(name: str) -> tuple[str | None, float | None]:
    """``(variant, dense bf16 FLOP/s)`` of a CUDA device name; ``(None, None)`` for a card not in the table
    (an H100 whose name says neither SXM/HBM3, PCIe nor NVL is not guessed)."""
    upper = name.upper()
    for variant, words, peak in BF16_PEAKS:
        if all(word in upper for word in words):
            return variant, peak
    return None, None


def describe_device(device: torch.device) -> dict:
    """The device's name, its peak (None on CPU and on unknown cards) and what the peak was read from."""
    if device.type != "cuda":
        return {"name": platform.processor() or platform.machine() or "cpu", "type": "cpu", "variant": None,
                "bf16_peak_flops": None, "peak_source": "no peak for a CPU: no MFU"}
    name = torch.cuda.get_device_name(device)
    properties = torch.cuda.get_device_properties(device)
    variant, peak = bf16_peak(name)
    return {"name": name, "type": "cuda", "variant": variant, "bf16_peak_flops": peak,
            "sm_count": properties.multi_processor_count, "memory_gib": properties.total_memory / 2**30,
            "peak_source": f"data sheet, {variant}, dense bf16" if peak else "card not in the table: peak unknown, "
                                                                            "no MFU"}


def sdpa_flags() -> dict:
    """Which SDPA backends torch may pick (``torch.backends.cuda`` switches; they also gate the CPU's flash)."""
    backends = torch.backends.cuda
    return {"flash": backends.flash_sdp_enabled(), "mem_efficient": backends.mem_efficient_sdp_enabled(),
            "math": backends.math_sdp_enabled(),
            "cudnn": backends.cudnn_sdp_enabled() if hasattr(backends, "cudnn_sdp_enabled") else None}


def attention_kernels(model: FaceRecognitionModel, images: torch.Tensor, autocast) -> list[str]:
    """The SDPA kernels one training forward ran, read from the profiler's operator names (empty: the model's
    attention does not call ``scaled_dot_product_attention``, e.g. an eager implementation)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler, autocast():
        model.backbone(images)
    names = {event.key.removeprefix("aten::") for event in profiler.key_averages()}
    return sorted({kernel for op, kernel in SDPA_KERNELS.items() if op in names})


# ------------------------------------------------------------------------------------------------ models
def tiny_config():
    """A one-layer, 32-wide DINOv2 at 224 px (patch 14): the CPU smoke run's model, built without weights."""
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=1, image_size=224,
                        patch_size=14)


def build_backbone(name: str, weights: Path | None, tiny: bool) -> tuple[HFViTBackbone, str]:
    """The backbone (chips 112 px, resized to 224 inside) and how its weights were made."""
    if tiny:
        return HFViTBackbone.from_config(tiny_config(), name="tiny-vit", image_size=224), \
            "random init, one-layer 32-wide ViT built in code (--tiny)"
    if weights is not None:
        family = HF_BACKBONES[name].family
        return HFViTBackbone.from_pretrained(weights, family=family, name=name, image_size=224), \
            f"local folder {weights}"
    return HFViTBackbone.from_config(architecture_config(name), name=name, image_size=224), \
        f"random init, published {name} architecture (no weights given; speed does not depend on weight values)"


def build_model(backbone: HFViTBackbone, classes: int, rank: int, bf16_backbone: bool) -> FaceRecognitionModel:
    apply_lora(backbone, LoraSettings(r=rank, alpha=float(rank), dropout=0.0, use_rslora=True))
    if bf16_backbone:  # frozen weights only: LoRA matrices, the head and the optimizer state stay fp32
        with torch.no_grad():
            for parameter in backbone.parameters():
                if not parameter.requires_grad and parameter.is_floating_point():
                    parameter.data = parameter.data.to(torch.bfloat16)
    return FaceRecognitionModel(backbone, classes)


# ------------------------------------------------------------------------------------------------ data
def smooth_faces(count: int, size: int = CHIP, seed: int = 0) -> list[np.ndarray]:
    """Smooth random images (they JPEG-compress and decode like face chips, unlike white noise)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(count, 8, 8, 3)).astype(np.uint8)
    return [np.kron(image, np.ones((size // 8, size // 8, 1), dtype=np.uint8)) for image in low]


def fixed_batch(dataset: RecordIODataset, batch: int, pin: bool) -> dict[str, torch.Tensor]:
    """One collated batch of the pack (pinned for CUDA, as the trainer's loader delivers it)."""
    collated = collate_samples([dataset[index % len(dataset)] for index in range(batch)])
    return {key: value.pin_memory() for key, value in collated.items()} if pin else collated


def endless_batches(trainer: Trainer):
    """The trainer's own loader, epoch after epoch (the sampler positioned as ``fit`` positions it)."""
    for epoch in itertools.count():
        trainer.sampler.set_epoch(epoch, 0)
        yield from trainer._make_loader(epoch)


# ------------------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step`` over ``steps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def make_trainer(model: nn.Module, dataset, args, batch: int, folder: str) -> Trainer:
    """The project's Trainer as the experiments configure it (AdamW, clipping 1.0, the trainer's autocast), with
    the project's augmentation; ``--fused-adamw`` rebuilds its AdamW with ``fused=True``, ``--compile`` compiles
    the model it calls."""
    config = TrainConfig(epochs=10_000, batch_size=batch, lr=1e-4, weight_decay=0.05, grad_clip=1.0,
                         precision=args.precision, num_workers=args.workers, device=args.device, output_dir=folder,
                         tensorboard=False, progress=False, log_every=10**9, overwrite=True)
    trainer = Trainer(model, dataset, config, augment=FaceAugment())
    if args.fused_adamw:
        # the same groups (parameters, weight decay, base learning rate) and nothing else of the old optimizer's
        groups = [{"params": group["params"], "weight_decay": group["weight_decay"], "lr": group["initial_lr"]}
                  for group in trainer.optimizer.param_groups]
        trainer.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, fused=True)
        trainer.scheduler = build_scheduler(trainer.optimizer, trainer.warmup_steps, trainer.total_steps, config.lr,
                                            config.min_lr)
    if args.compile:
        trainer.train_model = torch.compile(trainer.model)
    trainer.model.train()
    trainer.augment.train()
    return trainer


def measure_batch(trainer: Trainer, dataset, batch: int, args, flops_per_image: float | None,
                  peak: float | None) -> dict:
    """Trainer step and bare step at one batch size: img/s, their ratio, MFU, peak memory."""
    device = trainer.device
    cpu_batch = fixed_batch(dataset, batch, pin=device.type == "cuda")
    device_batch = {key: value.to(device) for key, value in cpu_batch.items()}
    model, optimizer = trainer.train_model, trainer.optimizer

    def bare_step() -> None:
        with trainer._autocast():
            loss = model(images=device_batch["images"], labels=device_batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    bare_s = timed(bare_step, args.steps, args.warmup, device)
    trainer_s = timed(lambda: trainer.train_step(cpu_batch), args.steps, args.warmup, device)
    record = {
        "batch": batch,
        "bare_img_per_s": batch / bare_s,
        "trainer_img_per_s": batch / trainer_s,
        "trainer_over_bare": bare_s / trainer_s,
        "bare_step_ms": 1000 * bare_s,
        "trainer_step_ms": 1000 * trainer_s,
        "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    if flops_per_image and peak:
        record["bare_mfu"] = flops_per_image * record["bare_img_per_s"] / peak
        record["trainer_mfu"] = flops_per_image * record["trainer_img_per_s"] / peak
    else:
        record["bare_mfu"] = record["trainer_mfu"] = None
    return record


def measure_loader(trainer: Trainer, dataset, batch: int, args, trainer_img_per_s: float) -> dict:
    """The trainer's loader while the device trains: drained by a thread beside trainer steps on a fixed batch,
    then feeding the trainer step itself."""
    device = trainer.device
    cpu_batch = fixed_batch(dataset, batch, pin=device.type == "cuda")
    stop = threading.Event()
    drained = {"images": 0, "started": None, "stopped": None}

    def drain() -> None:
        for number, loaded in enumerate(endless_batches(trainer)):
            if number == args.warmup:  # workers started, first batches out: the clock starts
                drained["started"] = time.perf_counter()
            elif number > args.warmup:
                drained["images"] += loaded["images"].shape[0]
            if stop.is_set():
                break
        drained["stopped"] = time.perf_counter()

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    while drained["started"] is None and thread.is_alive():
        trainer.train_step(cpu_batch)  # the device is busy while the workers start
    trained = 0
    while thread.is_alive() and trained < max(args.steps, 2):
        trainer.train_step(cpu_batch)
        trained += 1
    stop.set()
    thread.join()
    capacity = drained["images"] / max(drained["stopped"] - drained["started"], 1e-9)

    waiting, batches = 0.0, endless_batches(trainer)
    for _ in range(args.warmup):
        trainer.train_step(next(batches))
    synchronize(device)
    start = time.perf_counter()
    seen = 0
    for _ in range(args.steps):
        asked = time.perf_counter()
        loaded = next(batches)
        waiting += time.perf_counter() - asked
        trainer.train_step(loaded)
        seen += loaded["images"].shape[0]
    synchronize(device)
    elapsed = time.perf_counter() - start
    batches.close()
    fed = seen / elapsed
    return {
        "batch": batch, "workers": args.workers, "pin_memory": device.type == "cuda",
        "loader_img_per_s_while_training": capacity,
        "loader_over_trainer": capacity / trainer_img_per_s,
        "fed_trainer_img_per_s": fed,
        "fed_over_trainer": fed / trainer_img_per_s,
        "fed_wait_fraction": waiting / elapsed,
    }


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto",
                        help="torch device; default auto: CUDA if available, else the CPU with --tiny")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help=f"comma-separated backbone names (default {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--weights", type=Path, help="local Hugging Face folder of the one model in --models")
    parser.add_argument("--tiny", action="store_true",
                        help="a one-layer 32-wide ViT built in code, and smoke-run defaults: batch 4, 2 steps, no "
                             "workers, 64 records, 64 classes (CPU smoke run)")
    parser.add_argument("--precision", choices=("bf16", "fp32"), help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--batch-sizes", help="comma-separated sweep (default 64,128,256)")
    parser.add_argument("--steps", type=int, help="timed steps per measurement (default 20)")
    parser.add_argument("--warmup", type=int, help="untimed steps before each measurement (default 3)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--classes", type=int, help="CosFace classes (default 10572, CASIA-WebFace)")
    parser.add_argument("--workers", type=int, help="loader worker processes (default 12)")
    parser.add_argument("--records", type=int, help="images in the temporary RecordIO pack (default 8192)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (both steps)")
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True)")
    parser.add_argument("--bf16-backbone", action="store_true", help="frozen backbone weights in bf16")
    parser.add_argument("--time-budget", type=float, default=420.0,
                        help="seconds, shared equally by the models, after which a model starts no new batch size "
                             "(default 420)")
    parser.add_argument("--out", type=Path, help=f"JSON record (default {DEFAULT_OUT.relative_to(PROJECT_ROOT)}; "
                        f"--tiny: {TINY_OUT.relative_to(PROJECT_ROOT)})")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu" and not args.tiny:
            print("no CUDA device: the CPU smoke run (--tiny)", flush=True)
            args.tiny = True
    args.device = str(torch.device(args.device))
    for key, value in (TINY_DEFAULTS if args.tiny else RUN_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or (TINY_OUT if args.tiny else DEFAULT_OUT)
    args.precision = args.precision or ("bf16" if torch.device(args.device).type == "cuda" else "fp32")
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    args.batch_sizes = sorted(int(size) for size in args.batch_sizes.split(","))
    if args.tiny:
        args.models = ["tiny-vit"]
    unknown = [name for name in args.models if name not in HF_BACKBONES and not args.tiny]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {sorted(HF_BACKBONES)}")
    if args.weights is not None and (len(args.models) != 1 or args.tiny):
        parser.error("--weights is one model's folder: name that one model with --models (and no --tiny)")
    if args.bf16_backbone and args.precision != "bf16":
        parser.error("--bf16-backbone needs --precision bf16 (the frozen bf16 weights run under bf16 autocast)")
    if min(args.batch_sizes) < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("--batch-sizes, --steps and --warmup must be positive")
    return args


def run_model(name: str, args, dataset, device: torch.device, peak: float | None, budget: float) -> dict:
    """One model: its attention kernel, FLOPs, the batch-size sweep (no new size after ``budget`` seconds), and
    the loader at the largest batch size that ran."""
    started = time.perf_counter()
    torch.manual_seed(0)
    backbone, weights = build_backbone(name, args.weights, args.tiny)
    model = build_model(backbone, args.classes, args.rank, args.bf16_backbone).to(device).train()
    trainable, total = trainable_parameters(model.backbone)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.precision == "bf16" \
        else nullcontext
    probe = torch.rand(2, 3, CHIP, CHIP, device=device)
    kernels = attention_kernels(model, probe, autocast)
    labels = torch.zeros(2, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter, autocast():
        model(images=probe, labels=labels).loss.backward()
    model.zero_grad(set_to_none=True)
    flops_per_image = counter.get_total_flops() / 2  # forward + backward of the bare step, per image
    record = {"weights": weights, "lora_trainable": trainable, "backbone_parameters": total,
              "attention": {"implementation": backbone.model.config._attn_implementation, "sdpa_kernels": kernels,
                            "sdpa_enabled": sdpa_flags()},
              "flops_per_image": flops_per_image, "sweep": [], "skipped_batch_sizes": [], "loader": None}
    print(f"{name}: {weights}; LoRA {trainable:,} of {total:,} parameters; attention "
          f"{record['attention']['implementation']} -> {', '.join(kernels) or 'no SDPA kernel seen'}", flush=True)
    last = None
    with tempfile.TemporaryDirectory() as folder:
        for batch in args.batch_sizes:
            if time.perf_counter() - started > budget:
                record["skipped_batch_sizes"].append({"batch": batch, "why": "time budget"})
                continue
            trainer = make_trainer(model, dataset, args, batch, folder)
            try:
                result = measure_batch(trainer, dataset, batch, args, flops_per_image, peak)
            except torch.cuda.OutOfMemoryError:
                record["skipped_batch_sizes"].append({"batch": batch, "why": "out of memory"})
                trainer.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                break
            record["sweep"].append(result)
            last = (trainer, batch, result)
            mfu = (f" | MFU bare {100 * result['bare_mfu']:.1f} %, trainer {100 * result['trainer_mfu']:.1f} %"
                   if result["bare_mfu"] is not None else " | peak unknown: no MFU")
            print(f"  batch {batch:4d}: bare {result['bare_img_per_s']:9.1f} img/s | trainer "
                  f"{result['trainer_img_per_s']:9.1f} img/s | trainer/bare {result['trainer_over_bare']:.2f}{mfu}",
                  flush=True)
        if last is not None:
            trainer, batch, result = last
            loader = measure_loader(trainer, dataset, batch, args, result["trainer_img_per_s"])
            record["loader"] = loader
            verdict = "keeps up" if loader["loader_over_trainer"] >= 1 else "does NOT keep up"
            print(f"  loader while training (batch {batch}, {args.workers} workers): "
                  f"{loader['loader_img_per_s_while_training']:9.1f} img/s | loader/trainer "
                  f"{loader['loader_over_trainer']:.2f} ({verdict}) | fed trainer {loader['fed_trainer_img_per_s']:.1f}"
                  f" img/s = {loader['fed_over_trainer']:.2f} x, waiting {100 * loader['fed_wait_fraction']:.0f} %",
                  flush=True)
    return record


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    device = torch.device(args.device)
    card = describe_device(device)
    peak = card["bf16_peak_flops"] if args.precision == "bf16" else None
    import transformers

    print(f"device: {card['name']} ({card['peak_source']}) | torch {torch.__version__} | precision {args.precision}"
          f" | compile {args.compile} | fused AdamW {args.fused_adamw} | bf16 backbone {args.bf16_backbone}",
          flush=True)
    summary = {
        "script": "bench/gpu_vit_lora_throughput.py",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__, "transformers": transformers.__version__, "device": card,
        "options": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "mfu_peak_flops": peak,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as folder:
        pack = Path(folder) / "train"
        labels = np.arange(args.records) % args.classes  # every label one of the head's classes
        write_pack(pack, smooth_faces(args.records), labels)
        dataset = RecordIODataset(pack)
        for name in args.models:
            # each model gets an equal share of the budget
            summary["models"][name] = run_model(name, args, dataset, device, peak, args.time_budget / len(args.models))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    summary["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"record: {args.out} ({summary['seconds']:.0f} s)", flush=True)
    return summary


if __name__ == "__main__":
    main()
