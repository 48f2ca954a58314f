"""Meta-learning of adapter initialisations: MAML over LoRA / DA-LoRA parameters (see :mod:`afr.meta.maml`)."""
from afr.meta.maml import (
    CHECKPOINT_NAME,
    MetaConfig,
    MetaTrainResult,
    TaskBatch,
    adaptation_step,
    adapter_parameters,
    inner_adapt,
    meta_step,
    meta_train,
    prototype_margin_loss,
    prototypes,
    query_loss,
)

__all__ = [
    "CHECKPOINT_NAME",
    "MetaConfig",
    "MetaTrainResult",
    "TaskBatch",
    "adaptation_step",
    "adapter_parameters",
    "inner_adapt",
    "meta_step",
    "meta_train",
    "prototype_margin_loss",
    "prototypes",
    "query_loss",
]
