"""MAML (Finn et al., 2017) over the adapter parameters of a frozen face backbone.

Only the adapter tensors are meta-learned: the LoRA ``A``/``B`` matrices of
:func:`afr.adapters.lora.apply_lora`, or the DA-LoRA experts (and router, if trainable) of
:func:`afr.adapters.dalora.apply_dalora`; every other backbone weight stays frozen and is never copied.
The goal is an adapter initialisation from which a few gradient steps on a handful of labelled faces
of a new domain (a thermal camera, low-quality CCTV) give good embeddings for that domain.

A task (:class:`TaskBatch`) is a few-shot identification episode: ``n_classes`` identities, a support
set and a query set of their face chips, from one domain. Because identities differ from task to task
there is no fixed classification head: the class centres are the *prototypes* (Snell et al., 2017),
the L2-normalised mean of the L2-normalised support embeddings of each identity, recomputed from the
current adapter whenever the embeddings change. The loss of a set of embeddings against the centres is
CosFace (Wang et al., 2018): cosine similarity to each centre, ``s * (cos - m)`` for the true identity,
``s * cos`` for the others, cross-entropy (:func:`prototype_margin_loss`).

One meta step, for each task::

    theta_0 = adapter parameters                                  # shared initialisation
    theta_k = theta_{k-1} - inner_lr * grad L_support(theta_{k-1})   # inner loop, k = 1..inner_steps
    L_task  = L_query(theta_K)                                     # centres from the support under theta_K

then ``mean(L_task)`` is back-propagated to ``theta_0`` and an AdamW step (``meta_lr``) updates it. The
adapted parameters are plain tensors fed to the backbone with ``torch.func.functional_call``; the
backbone's own parameters are only read.

* **Second order** (``first_order=False``): the inner gradients are built with ``create_graph=True``, so
  the meta-gradient is the exact ``d L_query(theta_K) / d theta_0``, including the Hessian-vector terms
  through every inner step. This needs double backward through the backbone. Convolutions, linear
  layers and the math attention path support it; PyTorch's fused scaled-dot-product-attention kernels
  (flash / memory-efficient, including the CPU flash kernel that transformers' default
  ``attn_implementation="sdpa"`` reaches) do not. :func:`inner_adapt` therefore runs its forwards under
  ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)`` in second-order mode: the same attention computed
  from differentiable primitives (what ``attn_implementation="eager"`` does), chosen per call, the model
  unchanged. A backbone with another op lacking double backward fails in the backward pass with
  PyTorch's "derivative for ... is not implemented"; use ``first_order=True`` for it.
* **First order** (``first_order=True``, FOMAML): the inner gradients are detached, so ``d theta_K /
  d theta_0`` is the identity and the meta-gradient is the query gradient at the adapted parameters,
  ``grad L_query(theta_K)``. Cheaper (no double backward, the inner graphs are freed at once).

:func:`meta_train` runs the outer loop with checkpoints, exact resume and TensorBoard scalars. The
backbone stays in eval mode throughout: no dropout, so an inner step is deterministic and a resumed run
repeats the uninterrupted one, and no normalisation statistics are updated (the dlib ResNet-29 has its
batch norm folded into fixed per-channel affines; ViTs use LayerNorm).
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from afr.adapters.dalora import dalora_state, has_dalora, set_domains
from afr.io import atomic_writer, claim_folder
from afr.losses.margin import CosFaceMargin
from afr.losses.prototype import prototype_margin_loss, prototypes  # re-exported: part of afr.meta's API
from afr.train.checkpoint import CheckpointError, load_tensors_only, seed_everything
from afr.train.engine import RunExistsError

__all__ = [
    "CHECKPOINT_NAME",
    "MetaConfig",
    "MetaTrainResult",
    "TaskBatch",
    "adapter_parameters",
    "inner_adapt",
    "meta_step",
    "meta_train",
    "prototype_margin_loss",
    "prototypes",
    "query_loss",
]

log = logging.getLogger(__name__)

#: checkpoint file of a meta-training run, under ``output_dir / "checkpoints"``
CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "afr-maml-1"
#: config fields that may change between a run and its resumption without changing what it computes
_RESUMABLE_CHANGES = ("meta_steps", "checkpoint_every")


# ---------------------------------------------------------------------------------------------- tasks
@dataclass
class TaskBatch:
    """One few-shot episode: support and query chips of ``n_classes`` identities from one domain.

    Labels are ``0 .. n_classes - 1`` (the identities renumbered within the task); every identity needs
    at least one support image. ``domain`` names the domain (used to route DA-LoRA oracle gating, and
    to report the meta loss per domain).
    """

    support_images: Tensor
    support_labels: Tensor
    query_images: Tensor
    query_labels: Tensor
    n_classes: int
    domain: str

    def __post_init__(self) -> None:
        for part in ("support", "query"):
            images, labels = getattr(self, f"{part}_images"), getattr(self, f"{part}_labels")
            if labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"TaskBatch: {part} images {tuple(images.shape)} need one label each, got labels "
                    f"{tuple(labels.shape)}"
                )
        if self.n_classes < 1:
            raise ValueError(f"TaskBatch: n_classes must be positive, got {self.n_classes}")

    def to(self, device: torch.device | str) -> "TaskBatch":
        """The same task with its tensors on ``device``."""
        return replace(
            self,
            support_images=self.support_images.to(device),
            support_labels=self.support_labels.to(device),
            query_images=self.query_images.to(device),
            query_labels=self.query_labels.to(device),
        )


# ---------------------------------------------------------------------------------------------- losses
# the prototype loss (prototypes, prototype_margin_loss) lives in afr.losses.prototype
def adapter_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    """The trainable (``requires_grad``) parameters of ``module`` by qualified name: the adapter tensors
    (LoRA ``A``/``B``, DA-LoRA experts and a trainable router, extra trainable modules); the frozen
    backbone is excluded."""
    return {name: parameter for name, parameter in module.named_parameters() if parameter.requires_grad}


def _embed(backbone: nn.Module, params: dict[str, Tensor], images: Tensor) -> Tensor:
    """``backbone(images)`` with the tensors of ``params`` in place of the parameters of the same names."""
    return functional_call(backbone, params, (images,), strict=False)


def adaptation_step(
    backbone: nn.Module,
    params: dict[str, Tensor],
    images: Tensor,
    labels: Tensor,
    n_classes: int,
    margin: nn.Module,
    lr: float,
    first_order: bool = True,
    to_parameters: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
    extra_loss: Callable[[dict[str, Tensor], Tensor], Tensor] | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """One plain SGD step (learning rate ``lr``) of :func:`prototype_margin_loss` on ``images`` from ``params``;
    returns the new tensors by name and the step's loss.

    The images are embedded with the current tensors (``torch.func.functional_call``; the frozen backbone is
    used as it is) and the prototypes of those embeddings are the centres. ``to_parameters`` maps the trained
    tensors to backbone parameters by name (default: they are backbone parameters; e.g. one DA-LoRA expert's
    blocks placed into the stacked matrices); ``extra_loss(parameters, embeddings)`` adds further terms. Second
    order (``first_order=False``) keeps the graph of the gradient (``create_graph=True``); first order does not.
    ``params`` are not modified; gradients are enabled inside.
    """
    with torch.enable_grad():
        current = {name: t if t.requires_grad else t.detach().requires_grad_() for name, t in params.items()}
        parameters = current if to_parameters is None else to_parameters(current)
        embeddings = _embed(backbone, parameters, images)
        loss = prototype_margin_loss(embeddings, labels, prototypes(embeddings, labels, n_classes), margin)
        if extra_loss is not None:
            loss = loss + extra_loss(parameters, embeddings)
        grads = torch.autograd.grad(loss, list(current.values()), create_graph=not first_order, allow_unused=True)
    return {name: t if grad is None else t - lr * grad for (name, t), grad in zip(current.items(), grads)}, loss


def inner_adapt(
    backbone: nn.Module,
    params: dict[str, Tensor],
    support_images: Tensor,
    support_labels: Tensor,
    n_classes: int,
    margin: nn.Module,
    steps: int,
    lr: float,
    first_order: bool,
) -> dict[str, Tensor]:
    """``steps`` :func:`adaptation_step` s on the support set, starting from ``params``.

    Second order (``first_order=False``) keeps the graph of every inner gradient, so the result is
    differentiable to second order in ``params``, and runs attention on the math SDPA backend (see the module
    docstring); first order detaches the gradients. Returns new tensors by name (a tensor nothing depends on,
    e.g. a DA-LoRA router under detached gates, is returned as it is); ``params`` are not modified. Gradients
    are enabled inside, so this also adapts under an outer ``torch.no_grad()``.
    """
    if steps < 0:
        raise ValueError(f"inner_adapt: steps must be >= 0, got {steps}")
    adapted = dict(params)
    attention = nullcontext() if first_order else sdpa_kernel(SDPBackend.MATH)
    with attention:
        for _ in range(steps):
            adapted, _ = adaptation_step(backbone, adapted, support_images, support_labels, n_classes, margin, lr,
                                         first_order)
    return adapted


def query_loss(
    backbone: nn.Module,
    params: dict[str, Tensor],
    support_images: Tensor,
    support_labels: Tensor,
    query_images: Tensor,
    query_labels: Tensor,
    n_classes: int,
    margin: nn.Module,
) -> Tensor:
    """:func:`prototype_margin_loss` of the query embeddings against the prototypes of the support, both
    embedded with ``params`` (in one forward pass over support and query)."""
    embeddings = _embed(backbone, params, torch.cat([support_images, query_images]))
    support, query = embeddings[: support_images.shape[0]], embeddings[support_images.shape[0]:]
    return prototype_margin_loss(query, query_labels, prototypes(support, support_labels, n_classes), margin)


# ---------------------------------------------------------------------------------------------- outer loop
@dataclass(frozen=True)
class MetaConfig:
    """Settings of :func:`meta_train` / :func:`meta_step`.

    Attributes:
        inner_steps: SGD steps on each task's support set.
        inner_lr: their learning rate. Default 1e-3: the CosFace logits are scaled by ``margin_s`` (64),
            so the support gradients are large, and on 5-way 2-shot thermal / low-quality / controlled
            tasks of the embedded benchmark with ``dlib-resnet29`` + LoRA (r 8, alpha 8), three first-order
            steps at 1e-3 (and 3e-3) lowered the query loss of all 9 tasks tried, while 1e-2 raised it on
            most and 3e-2 or more on all, towards the collapse value ``s * m + log(n_classes)`` (every
            cosine equal). Scale it by about ``64 / s`` when changing ``margin_s``, and re-check it for
            another backbone or rank.
        first_order: FOMAML (detached inner gradients) instead of second-order MAML.
        meta_lr: AdamW learning rate of the outer (meta) update.
        weight_decay: AdamW weight decay of the outer update.
        meta_steps: outer steps in total.
        tasks_per_step: tasks each outer step averages (``sample_tasks(i)`` must return that many).
        margin_s: CosFace scale ``s``.
        margin_m: CosFace margin ``m``.
        checkpoint_every: checkpoint every this many outer steps (0: only at the end); always at the end. Default
            5: an outer step takes seconds on a CPU, so a killed run loses at most a minute or so (an execution
            setting: a resumed run equals an uninterrupted one whatever it is).
        seed: seeds the global RNGs before each step (from ``seed`` and the step index).
    """

    inner_steps: int = 3
    inner_lr: float = 1e-3
    first_order: bool = False
    meta_lr: float = 1e-3
    weight_decay: float = 0.0
    meta_steps: int = 100
    tasks_per_step: int = 4
    margin_s: float = 64.0
    margin_m: float = 0.35
    checkpoint_every: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("inner_steps", "meta_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"MetaConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("inner_lr", "meta_lr", "margin_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"MetaConfig.{name} must be positive, got {getattr(self, name)}")
        if self.tasks_per_step < 1:
            raise ValueError(f"MetaConfig.tasks_per_step must be >= 1, got {self.tasks_per_step}")
        if self.weight_decay < 0 or self.margin_m < 0:
            raise ValueError(f"MetaConfig: weight_decay and margin_m must be >= 0, got {self.weight_decay}, "
                             f"{self.margin_m}")


@dataclass
class MetaTrainResult:
    """What :func:`meta_train` returns."""

    #: outer steps completed in total (including those before a resume)
    steps: int
    #: one dict per outer step: ``step`` (1-based) and :func:`meta_step`'s numbers
    history: list[dict[str, Any]]
    output_dir: Path
    #: mean wall time of the outer steps this call ran (0.0 if it ran none)
    seconds_per_step: float


def _route(backbone: nn.Module, task: TaskBatch) -> None:
    """Under DA-LoRA oracle gating, send the task's images to its domain's expert."""
    if has_dalora(backbone) and dalora_state(backbone).mode == "oracle":
        set_domains(backbone, [task.domain])


def meta_step(
    backbone: nn.Module, tasks: Sequence[TaskBatch], config: MetaConfig, optimizer: torch.optim.Optimizer
) -> dict[str, float]:
    """One outer update: adapt to each task from the current adapter, average the query losses,
    back-propagate into the adapter parameters and step ``optimizer``.

    Each task's loss is back-propagated as soon as it is computed (divided by the number of tasks), so
    only one task's graph is alive at a time. Returns ``meta_loss`` (mean query loss after adaptation),
    ``pre_adapt_query_loss`` (the same before adaptation, computed without gradients),
    ``meta_loss/<domain>`` per domain present and ``seconds`` (wall time of the step). A non-finite
    meta loss raises FloatingPointError before the optimizer step. After the call the adapter
    parameters' ``.grad`` hold the meta-gradient.
    """
    if not tasks:
        raise ValueError("meta_step needs at least one task")
    start = time.perf_counter()
    params = adapter_parameters(backbone)
    if not params:
        raise ValueError("the backbone has no trainable adapter parameters (apply_lora / apply_dalora it first)")
    device = next(iter(params.values())).device
    margin = CosFaceMargin(config.margin_s, config.margin_m)
    optimizer.zero_grad(set_to_none=True)
    losses, before = [], []
    for task in tasks:
        task = task.to(device)
        _route(backbone, task)
        with torch.no_grad():
            before.append(query_loss(backbone, params, task.support_images, task.support_labels,
                                     task.query_images, task.query_labels, task.n_classes, margin))
        adapted = inner_adapt(backbone, params, task.support_images, task.support_labels, task.n_classes, margin,
                              config.inner_steps, config.inner_lr, config.first_order)
        loss = query_loss(backbone, adapted, task.support_images, task.support_labels, task.query_images,
                          task.query_labels, task.n_classes, margin)
        (loss / len(tasks)).backward()
        losses.append(loss.detach())
    values = torch.stack(losses).tolist()
    meta_loss = sum(values) / len(values)
    if not math.isfinite(meta_loss):
        raise FloatingPointError(f"non-finite meta loss {meta_loss} (task losses {values})")
    optimizer.step()
    by_domain: dict[str, list[float]] = defaultdict(list)
    for task, value in zip(tasks, values):
        by_domain[task.domain].append(value)
    return {
        "meta_loss": meta_loss,
        "pre_adapt_query_loss": float(torch.stack(before).mean()),
        **{f"meta_loss/{domain}": sum(v) / len(v) for domain, v in by_domain.items()},
        "seconds": time.perf_counter() - start,
    }


def _save(path: Path, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer, step: int,
          history: list[dict[str, Any]], config: MetaConfig) -> None:
    """Write the run's state to ``path`` atomically (a crash leaves the previous checkpoint)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "adapter": {name: p.detach().cpu().clone() for name, p in params.items()},
        "optimizer": optimizer.state_dict(),
        "history": history,
        "config": asdict(config),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as handle:
        torch.save(state, handle)


def _restore(path: Path, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
             config: MetaConfig) -> tuple[int, list[dict[str, Any]]]:
    """Load a :func:`_save` checkpoint into ``params`` and ``optimizer``; return its step and history."""
    device = next(iter(params.values())).device
    # truncated, not a torch file, unsafe content: a CheckpointError naming the file
    state = load_tensors_only(path, device, "meta-training checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a meta-training checkpoint (format {CHECKPOINT_FORMAT!r})")
    saved = state["adapter"]
    if set(saved) != set(params):
        raise CheckpointError(
            f"{path} holds adapter tensors {sorted(set(saved) - set(params))[:3]} the backbone lacks and lacks "
            f"{sorted(set(params) - set(saved))[:3]}: resume with the backbone and adapter it was trained with"
        )
    with torch.no_grad():
        for name, parameter in params.items():
            if saved[name].shape != parameter.shape:
                raise CheckpointError(f"{path}: {name} has shape {tuple(saved[name].shape)}, the backbone's "
                                      f"{tuple(parameter.shape)}")
            parameter.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    current = asdict(config)
    changed = [f.name for f in fields(MetaConfig) if f.name not in _RESUMABLE_CHANGES
               and state["config"].get(f.name) != current[f.name]]
    if changed:
        log.warning("%s: resuming with changed %s; the run will not match an uninterrupted one", path, changed)
    return int(state["step"]), list(state["history"])


def _summary_writer(output_dir: Path, step: int) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``output_dir / "tensorboard"``, or None without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: %s gets no TensorBoard scalars", output_dir)
        return None
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=step or None)


def meta_train(
    backbone: nn.Module,
    sample_tasks: Callable[[int], Sequence[TaskBatch]],
    config: MetaConfig,
    output_dir: Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> MetaTrainResult:
    """Meta-train the adapter of ``backbone`` in place for ``config.meta_steps`` outer steps.

    Step ``i`` (0-based) takes :func:`meta_step` on ``sample_tasks(i)``, which must return
    ``config.tasks_per_step`` tasks and depend on ``i`` only (draw them from a generator seeded by ``i``;
    the global python/numpy/torch RNGs are also re-seeded from ``config.seed`` and ``i`` before each
    step), so a resumed run repeats an uninterrupted one exactly. The outer optimizer is AdamW over
    :func:`adapter_parameters` at ``config.meta_lr``. The backbone is in eval mode while training (see
    the module docstring) and gets its previous mode back afterwards.

    Outputs in ``output_dir``: ``checkpoints/last.pt`` (adapter tensors, optimizer state, step, history,
    config), written atomically every ``config.checkpoint_every`` steps and at the end, and
    ``tensorboard/`` (every number :func:`meta_step` returns, per step; skipped without tensorboard).
    A fresh run (``resume=False``) refuses an ``output_dir`` that already holds a checkpoint with
    :class:`~afr.train.engine.RunExistsError`, changing nothing; ``resume=True`` continues from the
    checkpoint there (or starts afresh if there is none), into the same backbone and adapter layout.
    ``overwrite=True`` (told to) deletes ``output_dir`` with everything in it first, then starts afresh.
    Another process meta-training into ``output_dir`` meanwhile makes it refuse at once
    (:class:`~afr.io.FolderInUseError`).
    """
    with claim_folder(output_dir):
        return _meta_train(backbone, sample_tasks, config, Path(output_dir), resume, progress, overwrite)


def _meta_train(backbone: nn.Module, sample_tasks: Callable[[int], Sequence[TaskBatch]], config: MetaConfig,
                output_dir: Path, resume: bool, progress: bool, overwrite: bool) -> MetaTrainResult:
    checkpoint = output_dir / "checkpoints" / CHECKPOINT_NAME
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or start it again")
    if overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
    if checkpoint.exists() and not resume:
        raise RunExistsError(
            f"{output_dir} already holds a meta-training run ({checkpoint}): pass --resume (resume=True in "
            "Python) to continue it, --overwrite (overwrite=True) to delete it and start again, "
            "or choose another output directory"
        )
    params = adapter_parameters(backbone)
    if not params:
        raise ValueError("the backbone has no trainable adapter parameters (apply_lora / apply_dalora it first)")
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.meta_lr, weight_decay=config.weight_decay)
    step, history = 0, []
    if resume and checkpoint.is_file():
        step, history = _restore(checkpoint, params, optimizer, config)
        log.info("resumed %s at step %d", checkpoint, step)
    output_dir.mkdir(parents=True, exist_ok=True)

    was_training = backbone.training
    backbone.eval()
    writer = _summary_writer(output_dir, step)
    bar = tqdm(total=config.meta_steps, initial=min(step, config.meta_steps), desc="meta-train",
               disable=not progress, dynamic_ncols=True, leave=False)
    seconds: list[float] = []
    try:
        while step < config.meta_steps:
            seed_everything(config.seed * 1_000_003 + step)
            tasks = sample_tasks(step)
            if len(tasks) != config.tasks_per_step:
                raise ValueError(f"sample_tasks({step}) returned {len(tasks)} tasks, MetaConfig.tasks_per_step "
                                 f"is {config.tasks_per_step}")
            stats = meta_step(backbone, tasks, config, optimizer)
            step += 1
            history.append({"step": step, **stats})
            seconds.append(stats["seconds"])
            if writer is not None:
                for key, value in stats.items():
                    writer.add_scalar(key, value, step)
            bar.update(1)
            bar.set_postfix(meta_loss=f"{stats['meta_loss']:.4f}", refresh=False)
            if step == config.meta_steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
                _save(checkpoint, params, optimizer, step, history, config)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        backbone.train(was_training)
    return MetaTrainResult(
        steps=step,
        history=list(history),
        output_dir=output_dir,
        seconds_per_step=sum(seconds) / len(seconds) if seconds else 0.0,
    )
