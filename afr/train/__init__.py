"""Training: config, warm-up/cosine schedule, resumable DDP-aware sampler, atomic checkpoints, the loop."""
from afr.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)
from afr.train.config import ConfigError, TrainConfig
from afr.train.distributed import (
    DistributedContext,
    barrier,
    cleanup,
    init_distributed,
    is_main_process,
    unwrap_model,
    wrap_model,
)
from afr.train.engine import RunExistsError, Trainer, TrainResult, collate_samples
from afr.train.sampler import IdentityBatchSampler, ResumableSampler
from afr.train.schedule import build_scheduler, warmup_cosine_factor

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DistributedContext",
    "IdentityBatchSampler",
    "ResumableSampler",
    "RunExistsError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "barrier",
    "build_scheduler",
    "cleanup",
    "collate_samples",
    "init_distributed",
    "is_main_process",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "unwrap_model",
    "warmup_cosine_factor",
    "wrap_model",
]
