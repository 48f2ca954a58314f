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
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, nullcontext
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
from afr.train import distributed
from afr.train.checkpoint import CheckpointError, load_tensors_only, seed_everything
from afr.train.engine import RunExistsError

__all__ = [
    "CHECKPOINT_NAME",
    "DIVERGENCE_WINDOW",
    "MetaConfig",
    "MetaTrainingDiverged",
    "MetaTrainResult",
    "TaskBatch",
    "adapter_parameters",
    "divergence",
    "inner_adapt",
    "meta_step",
    "meta_train",
    "prototype_margin_loss",
    "prototypes",
    "query_loss",
    "uniform_query_loss",
]

log = logging.getLogger(__name__)

#: checkpoint file of a meta-training run, under ``output_dir / "checkpoints"``
CHECKPOINT_NAME = "last.pt"
CHECKPOINT_FORMAT = "afr-maml-1"
#: config fields that may change between a run and its resumption without changing what it computes
_RESUMABLE_CHANGES = ("meta_steps", "checkpoint_every", "stop_on_divergence")


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
        max_grad_norm: clip the meta-gradient to this L2 norm before each outer step (None: no clipping, how the
            first grids trained). Second-order meta-gradients through three inner steps at ``s = 64`` reach norms
            far above the first-order ones; an AdamW step is bounded anyway, but one large gradient sets Adam's
            second moment for many steps.
        stop_on_divergence: check the meta-loss at every checkpoint and at the end, and raise
            :class:`MetaTrainingDiverged` (no start is saved by the callers) when it has risen: the mean of the last
            ``DIVERGENCE_WINDOW`` steps above the mean of the first (needs ``2 * DIVERGENCE_WINDOW`` steps), or sits
            at the uniform value of equal cosines (:func:`uniform_query_loss`, above 0.9 of it). The same rule as
            :mod:`afr.experiments.health`'s "diverged", applied while training instead of afterwards.
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
    max_grad_norm: float | None = None
    stop_on_divergence: bool = False

    def __post_init__(self) -> None:
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"MetaConfig.max_grad_norm must be positive or None, got {self.max_grad_norm}")
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


def _all_reduce_gradients(params: Sequence[nn.Parameter]) -> None:
    """Sum the parameters' ``.grad`` over the ranks (one all-reduce of one flat buffer), in place. A gradient no rank
    has stays None (AdamW then leaves the parameter alone, as one process would); one some ranks lack counts as 0."""
    import torch.distributed as dist

    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])
    dist.all_reduce(present)
    dist.all_reduce(flat)
    offset = 0
    for parameter, has in zip(params, present.tolist()):
        size = parameter.numel()
        parameter.grad = flat[offset:offset + size].view_as(parameter).to(parameter.dtype) if has else None
        offset += size


def meta_step(
    backbone: nn.Module, tasks: Sequence[TaskBatch], config: MetaConfig, optimizer: torch.optim.Optimizer,
    data_parallel: bool = False,
) -> dict[str, float]:
    """One outer update: adapt to each task from the current adapter, average the query losses,
    back-propagate into the adapter parameters and step ``optimizer``.

    Each task's loss is back-propagated as soon as it is computed (divided by the number of tasks), so
    only one task's graph is alive at a time. Returns ``meta_loss`` (mean query loss after adaptation),
    ``pre_adapt_query_loss`` (the same before adaptation, computed without gradients),
    ``meta_loss/<domain>`` per domain present and ``seconds`` (wall time of the step). A non-finite
    meta loss raises FloatingPointError before the optimizer step. After the call the adapter
    parameters' ``.grad`` hold the meta-gradient.

    ``data_parallel`` in a process group of N ranks (torchrun): ``tasks`` is this rank's share of the step's
    tasks, every rank holding as many; each task's loss is divided by the total task count, the gradients are
    summed over the ranks (all-reduce) before the optimizer step, and the numbers returned are those of all the
    step's tasks in rank order: one process averaging every task, up to rounding. Every rank keeps identical
    parameters. Every rank must call it at the same point.
    """
    if not tasks:
        raise ValueError("meta_step needs at least one task")
    world = distributed.get_world_size() if data_parallel else 1
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
        (loss / (len(tasks) * world)).backward()
        losses.append(loss.detach())
    values, before_values = torch.stack(losses).tolist(), torch.stack(before).tolist()
    domains = [task.domain for task in tasks]
    if world > 1:  # every task of the step, in rank order (each rank holds a contiguous share)
        shares = distributed.all_gather_objects((values, before_values, domains))
        if len({len(share[0]) for share in shares}) != 1:
            raise ValueError(f"meta_step: the ranks hold {[len(share[0]) for share in shares]} tasks: every rank "
                             "needs an equal share of the step's tasks")
        values, before_values, domains = ([item for share in shares for item in share[part]] for part in range(3))
    meta_loss = sum(values) / len(values)
    if not math.isfinite(meta_loss):  # the same on every rank: all raise together
        raise FloatingPointError(f"non-finite meta loss {meta_loss} (task losses {values})")
    if world > 1:
        _all_reduce_gradients(list(params.values()))
    # the meta-gradient's norm (before clipping), recorded every step; clipped when config.max_grad_norm says so
    grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm or math.inf))
    if not math.isfinite(grad_norm):
        raise FloatingPointError(f"non-finite meta-gradient norm {grad_norm}")
    optimizer.step()
    by_domain: dict[str, list[float]] = defaultdict(list)
    for domain, value in zip(domains, values):
        by_domain[domain].append(value)
    return {
        "meta_loss": meta_loss,
        "pre_adapt_query_loss": (float(torch.stack(before).mean()) if world == 1
                                 else sum(before_values) / len(before_values)),
        **{f"meta_loss/{domain}": sum(v) / len(v) for domain, v in by_domain.items()},
        "meta_grad_norm": grad_norm,
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


def _load(path: Path, device: torch.device | str) -> dict[str, Any]:
    """A :func:`_save` checkpoint's state (checked to be one)."""
    # truncated, not a torch file, unsafe content: a CheckpointError naming the file
    state = load_tensors_only(path, device, "meta-training checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a meta-training checkpoint (format {CHECKPOINT_FORMAT!r})")
    return state


def _restore(path: Path, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer,
             config: MetaConfig, state: dict[str, Any] | None = None) -> tuple[int, list[dict[str, Any]]]:
    """Load a :func:`_save` checkpoint (``state``: already loaded from ``path``) into ``params`` and ``optimizer``;
    return its step and history."""
    device = next(iter(params.values())).device
    state = _load(path, device) if state is None else state
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
            parameter.copy_(saved[name].to(parameter.device))
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
    sample_tasks: Callable[..., Sequence[TaskBatch]],
    config: MetaConfig,
    output_dir: Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    data_parallel: bool = False,
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

    ``data_parallel`` under torchrun with N > 1 processes (every rank calls it with the same arguments): the
    step's ``config.tasks_per_step`` tasks are split over the ranks, rank r's contiguous share being
    ``sample_tasks(i, r, N)`` (``tasks_per_step / N`` tasks, the r-th block of the step's tasks: the same tasks as
    one process's, so the split must divide); the meta-gradients are summed over the ranks before each outer step
    (:func:`meta_step`), so every rank keeps the same parameters and the history equals one process's up to
    rounding. Rank 0 alone claims the folder, decides (refuse, overwrite, resume: its checkpoint is sent to the
    others), writes the checkpoints and TensorBoard and shows the progress bar; every rank returns the same
    history. Without it (or in one process) nothing here talks to other processes, so rank 0 may call it alone
    (inside :func:`afr.train.distributed.on_main`).
    """
    parallel = data_parallel and distributed.job_world_size() > 1
    if parallel:
        distributed.ensure_initialized()
    with ExitStack() as claims:
        return _meta_train(backbone, sample_tasks, config, Path(output_dir), resume, progress, overwrite, parallel,
                           claims)


def _prepare(output_dir: Path, resume: bool, overwrite: bool, claims: ExitStack) -> dict[str, Any] | None:
    """Claim ``output_dir`` (held until ``claims`` closes), clear it (``overwrite``) or refuse a finished run in it;
    the checkpoint's state to resume from (on the CPU), or None."""
    claims.enter_context(claim_folder(output_dir))
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
    state = _load(checkpoint, "cpu") if resume and checkpoint.is_file() else None
    output_dir.mkdir(parents=True, exist_ok=True)
    return state


#: outer steps averaged at the start and at the end by :func:`divergence`
DIVERGENCE_WINDOW = 5


class MetaTrainingDiverged(RuntimeError):
    """Meta-training stopped because its meta-loss rose (:func:`divergence`); ``history`` holds its steps."""

    def __init__(self, message: str, history: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(message)
        self.history = list(history)


def uniform_query_loss(n_classes: int, s: float, m: float) -> float:
    """The CosFace loss of equal cosines over ``n_classes``: ``log(1 + (n - 1) * exp(s * m))``."""
    return math.log1p((n_classes - 1) * math.exp(s * m))


def divergence(history: Sequence[Mapping[str, Any]], n_classes: int, s: float, m: float) -> str | None:
    """Why a meta-training ``history`` diverged, or None: the mean meta-loss of its last :data:`DIVERGENCE_WINDOW`
    steps is above that of its first (at least twice as many steps), or above 0.9 x :func:`uniform_query_loss`."""
    losses = [float(entry["meta_loss"]) for entry in history]
    if len(losses) < DIVERGENCE_WINDOW:
        return None
    last = sum(losses[-DIVERGENCE_WINDOW:]) / DIVERGENCE_WINDOW
    uniform = uniform_query_loss(n_classes, s, m)
    if last > 0.9 * uniform:
        return f"mean meta-loss of the last {DIVERGENCE_WINDOW} steps {last:.2f} is at the uniform value {uniform:.2f}"
    if len(losses) >= 2 * DIVERGENCE_WINDOW:
        first = sum(losses[:DIVERGENCE_WINDOW]) / DIVERGENCE_WINDOW
        if last > first:
            return f"mean meta-loss rose from {first:.2f} (first {DIVERGENCE_WINDOW} steps) to {last:.2f} (last)"
    return None


def _meta_train(backbone: nn.Module, sample_tasks: Callable[..., Sequence[TaskBatch]], config: MetaConfig,
                output_dir: Path, resume: bool, progress: bool, overwrite: bool, parallel: bool,
                claims: ExitStack) -> MetaTrainResult:
    checkpoint = output_dir / "checkpoints" / CHECKPOINT_NAME
    params = adapter_parameters(backbone)
    if not params:
        raise ValueError("the backbone has no trainable adapter parameters (apply_lora / apply_dalora it first)")
    rank, world = (distributed.get_rank(), distributed.get_world_size()) if parallel else (0, 1)
    if config.tasks_per_step % world:
        raise ValueError(f"tasks_per_step {config.tasks_per_step} cannot be split over {world} processes: it must "
                         f"be a multiple of {world}")
    # rank 0 decides and reads the checkpoint; every rank gets its decision (or error) and the state
    prepare = lambda: _prepare(output_dir, resume, overwrite, claims)  # noqa: E731
    state = distributed.on_main(prepare) if parallel else prepare()
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.meta_lr, weight_decay=config.weight_decay)
    step, history = 0, []
    if state is not None:
        step, history = _restore(checkpoint, params, optimizer, config, state)
        log.info("resumed %s at step %d", checkpoint, step)
    main = rank == 0

    was_training = backbone.training
    backbone.eval()
    writer = _summary_writer(output_dir, step) if main else None
    bar = tqdm(total=config.meta_steps, initial=min(step, config.meta_steps), desc="meta-train",
               disable=not (progress and main), dynamic_ncols=True, leave=False)
    seconds: list[float] = []
    try:
        while step < config.meta_steps:
            seed_everything(config.seed * 1_000_003 + step)
            tasks = sample_tasks(step, rank, world) if parallel else sample_tasks(step)
            if len(tasks) != config.tasks_per_step // world:
                raise ValueError(f"sample_tasks({step}) returned {len(tasks)} tasks, MetaConfig.tasks_per_step "
                                 f"is {config.tasks_per_step}" + (f" over {world} processes" if parallel else ""))
            stats = meta_step(backbone, tasks, config, optimizer, data_parallel=parallel)
            step += 1
            history.append({"step": step, **stats})
            seconds.append(stats["seconds"])
            if writer is not None:
                for key, value in stats.items():
                    writer.add_scalar(key, value, step)
            bar.update(1)
            bar.set_postfix(meta_loss=f"{stats['meta_loss']:.4f}", refresh=False)
            at_checkpoint = step == config.meta_steps or (config.checkpoint_every and step % config.checkpoint_every == 0)
            if main and at_checkpoint:
                _save(checkpoint, params, optimizer, step, history, config)
            if config.stop_on_divergence and at_checkpoint:  # every rank holds the same history: all stop together
                reason = divergence(history, tasks[0].n_classes, config.margin_s, config.margin_m)
                if reason:
                    raise MetaTrainingDiverged(f"meta-training in {output_dir} diverged at step {step}: {reason}; "
                                               "no start is saved (lower meta_lr or inner_lr, or clip the "
                                               "meta-gradient: max_grad_norm)", history)
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
