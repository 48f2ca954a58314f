"""MAML over adapter parameters (afr.meta.maml): inner step, meta-gradients, frozen backbone, runs."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from afr.adapters.dalora import DaLoraSettings, apply_dalora
from afr.adapters.dalora.layer import DaLoraLayer
from afr.adapters.lora import LoraSettings, apply_lora
from afr.losses.margin import CosFaceMargin
from afr.meta import (
    CHECKPOINT_NAME,
    MetaConfig,
    TaskBatch,
    adapter_parameters,
    inner_adapt,
    meta_step,
    meta_train,
    prototype_margin_loss,
    prototypes,
    query_loss,
)
from afr.models.factory import create_backbone
from afr.train.engine import RunExistsError


# ---------------------------------------------------------------------------------------------- helpers
class TinyLora(nn.Module):
    """A frozen Linear plus a trainable low-rank pair, then tanh: a LoRA layer small enough for float64
    finite differences."""

    def __init__(self, d_in: int = 6, d_out: int = 5, r: int = 2) -> None:
        super().__init__()
        self.base = nn.Linear(d_in, d_out).double().requires_grad_(False)
        self.lora_A = nn.Parameter(0.5 * torch.randn(r, d_in, dtype=torch.float64))
        self.lora_B = nn.Parameter(0.5 * torch.randn(d_out, r, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return torch.tanh(self.base(x) + x @ self.lora_A.t() @ self.lora_B.t())


def make_task(shape: tuple[int, ...], n_classes: int = 3, shots: int = 2, queries: int = 2, seed: int = 0,
              dtype: torch.dtype = torch.float32, domain: str = "thermal") -> TaskBatch:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes)
    return TaskBatch(
        support_images=torch.rand(n_classes * shots, *shape, generator=generator, dtype=dtype),
        support_labels=labels.repeat_interleave(shots),
        query_images=torch.rand(n_classes * queries, *shape, generator=generator, dtype=dtype),
        query_labels=labels.repeat_interleave(queries),
        n_classes=n_classes,
        domain=domain,
    )


def tiny_lora_vit(seed: int = 0, random_b: bool = False) -> nn.Module:
    """tiny-dinov2 with LoRA (r 2) on q/v; ``random_b`` replaces the zero B so that A gets gradients too."""
    torch.manual_seed(seed)
    backbone = apply_lora(create_backbone("tiny-dinov2"), LoraSettings(r=2, alpha=2.0))
    if random_b:
        with torch.no_grad():
            for name, parameter in adapter_parameters(backbone).items():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.2)
    return backbone


def vit_task(backbone: nn.Module, seed: int, domain: str = "thermal") -> TaskBatch:
    return make_task((3, backbone.input_size, backbone.input_size), seed=seed, domain=domain)


def meta_gradient(model: nn.Module, tasks: list[TaskBatch], config: MetaConfig) -> dict[str, torch.Tensor]:
    """The adapter gradient meta_step leaves behind (a zero-lr SGD step changes nothing)."""
    params = adapter_parameters(model)
    meta_step(model, tasks, config, torch.optim.SGD(list(params.values()), lr=0.0))
    return {name: p.grad.clone() for name, p in params.items()}


FD_CONFIG = MetaConfig(inner_steps=2, inner_lr=0.1, margin_s=8.0, margin_m=0.2, tasks_per_step=2)


# ---------------------------------------------------------------------------------------------- losses
def test_prototypes_are_normalised_class_means():
    embeddings = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, -5.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    centres = prototypes(embeddings, labels, 2)
    half = 2 ** -0.5  # unit embeddings: class 0 (1, 0), (0, 1); class 1 (0, -1), (half, half)
    expected = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [half, half - 1.0]]), dim=1)
    torch.testing.assert_close(centres, expected)
    with pytest.raises(ValueError, match=r"class\(es\) \[2\]"):
        prototypes(embeddings, labels, 3)
    # CosFace on the cosine to the centres, then cross-entropy
    margin = CosFaceMargin(s=4.0, m=0.3)
    cosine = torch.nn.functional.normalize(embeddings, dim=1) @ centres.t()
    logits = 4.0 * (cosine - 0.3 * torch.nn.functional.one_hot(labels, 2))
    torch.testing.assert_close(prototype_margin_loss(embeddings, labels, centres, margin),
                               torch.nn.functional.cross_entropy(logits, labels))


# ---------------------------------------------------------------------------------------------- 1. inner step
@pytest.mark.parametrize("first_order", [True, False])
@pytest.mark.parametrize("steps", [1, 2])
def test_inner_steps_equal_manual_sgd(first_order, steps):
    backbone = tiny_lora_vit(random_b=True)
    task = vit_task(backbone, seed=1)
    margin, lr = CosFaceMargin(64.0, 0.35), 1e-3
    params = adapter_parameters(backbone)
    originals = {name: p.detach().clone() for name, p in params.items()}

    manual = copy.deepcopy(backbone)
    manual_params = adapter_parameters(manual)
    for _ in range(steps):  # plain autograd on the copy, centres recomputed at every step
        embeddings = manual(task.support_images)
        loss = prototype_margin_loss(embeddings, task.support_labels,
                                     prototypes(embeddings, task.support_labels, task.n_classes), margin)
        manual.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            for p in manual_params.values():
                p -= lr * p.grad

    adapted = inner_adapt(backbone, params, task.support_images, task.support_labels, task.n_classes, margin,
                          steps=steps, lr=lr, first_order=first_order)
    assert set(adapted) == set(params)
    for name, tensor in adapted.items():
        assert not torch.equal(tensor, originals[name])
        torch.testing.assert_close(tensor.detach(), manual_params[name].detach(), atol=1e-6, rtol=0.0)
    with torch.no_grad():
        torch.testing.assert_close(torch.func.functional_call(backbone, adapted, (task.query_images,)),
                                   manual(task.query_images), atol=1e-6, rtol=0.0)
    for name, p in params.items():  # the backbone's own adapter is untouched
        assert torch.equal(p.detach(), originals[name])


# ---------------------------------------------------------------------------------------------- 2./3. gradients
def test_second_order_meta_gradient_matches_finite_differences():
    torch.manual_seed(0)
    model = TinyLora()
    tasks = [make_task((6,), seed=s, dtype=torch.float64) for s in (1, 2)]
    grads = meta_gradient(model, tasks, FD_CONFIG)
    margin = CosFaceMargin(FD_CONFIG.margin_s, FD_CONFIG.margin_m)

    def objective(params: dict[str, torch.Tensor]) -> float:
        total = 0.0
        for task in tasks:
            adapted = inner_adapt(model, params, task.support_images, task.support_labels, task.n_classes, margin,
                                  FD_CONFIG.inner_steps, FD_CONFIG.inner_lr, first_order=True)
            loss = query_loss(model, adapted, task.support_images, task.support_labels, task.query_images,
                              task.query_labels, task.n_classes, margin)
            total += loss.item()
        return total / len(tasks)

    base = {name: p.detach().clone() for name, p in adapter_parameters(model).items()}
    eps = 1e-6
    for name, index in [("lora_A", (0, 0)), ("lora_A", (1, 3)), ("lora_A", (0, 5)),
                        ("lora_B", (0, 0)), ("lora_B", (2, 1)), ("lora_B", (4, 1))]:
        plus, minus = dict(base), dict(base)
        plus[name], minus[name] = base[name].clone(), base[name].clone()
        plus[name][index] += eps
        minus[name][index] -= eps
        numeric = (objective(plus) - objective(minus)) / (2 * eps)
        assert grads[name][index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-9), (name, index)


def test_first_order_is_query_gradient_at_adapted_params():
    torch.manual_seed(0)
    model = TinyLora()
    tasks = [make_task((6,), seed=s, dtype=torch.float64) for s in (1, 2)]
    first = meta_gradient(model, tasks, replace(FD_CONFIG, first_order=True))
    second = meta_gradient(model, tasks, FD_CONFIG)

    margin = CosFaceMargin(FD_CONFIG.margin_s, FD_CONFIG.margin_m)
    params = adapter_parameters(model)
    expected = {name: torch.zeros_like(p) for name, p in params.items()}
    for task in tasks:  # grad of the query loss w.r.t. the adapted tensors themselves
        adapted = inner_adapt(model, params, task.support_images, task.support_labels, task.n_classes, margin,
                              FD_CONFIG.inner_steps, FD_CONFIG.inner_lr, first_order=False)
        leaves = {name: t.detach().requires_grad_() for name, t in adapted.items()}
        loss = query_loss(model, leaves, task.support_images, task.support_labels, task.query_images,
                          task.query_labels, task.n_classes, margin)
        for name, grad in zip(leaves, torch.autograd.grad(loss, list(leaves.values()))):
            expected[name] += grad / len(tasks)

    for name in params:
        torch.testing.assert_close(first[name], expected[name], atol=1e-12, rtol=1e-10)
        # the second-order terms matter: dropping them changes the meta-gradient
        difference = (second[name] - first[name]).norm() / first[name].norm()
        assert difference > 1e-2, (name, float(difference))


# ---------------------------------------------------------------------------------------------- 4. frozen backbone
def test_meta_train_changes_only_the_adapter(tmp_path):
    backbone = tiny_lora_vit()
    frozen_before = {name: p.detach().clone() for name, p in backbone.named_parameters() if not p.requires_grad}
    adapter_before = {name: p.detach().clone() for name, p in adapter_parameters(backbone).items()}
    assert frozen_before and adapter_before
    assert all("lora_" in name for name in adapter_before)
    backbone.train()
    modes = []

    def sample_tasks(step: int) -> list[TaskBatch]:
        modes.append(backbone.training)
        return [vit_task(backbone, seed=0), vit_task(backbone, seed=1, domain="lowquality")]

    config = MetaConfig(inner_steps=2, inner_lr=1e-3, meta_lr=1e-2, meta_steps=4, tasks_per_step=2,
                        checkpoint_every=0)
    result = meta_train(backbone, sample_tasks, config, tmp_path / "run", progress=False)

    assert result.steps == 4 and [h["step"] for h in result.history] == [1, 2, 3, 4]
    assert modes == [False] * 4 and backbone.training  # eval while meta-training, mode restored after
    for name, before in frozen_before.items():
        assert torch.equal(dict(backbone.named_parameters())[name], before), name
    changed = [name for name, p in adapter_parameters(backbone).items() if not torch.equal(p, adapter_before[name])]
    assert set(changed) == set(adapter_before)
    history = result.history
    assert history[-1]["meta_loss"] < history[0]["meta_loss"]  # the same tasks every step: it learns them
    assert {"meta_loss/thermal", "meta_loss/lowquality", "pre_adapt_query_loss"} <= set(history[0])
    assert (tmp_path / "run" / "checkpoints" / CHECKPOINT_NAME).is_file()
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_dalora_oracle_meta_step_trains_only_the_task_domain_expert():
    torch.manual_seed(0)
    backbone = apply_dalora(create_backbone("tiny-dinov2"), DaLoraSettings(r=2, gating="oracle"))
    params = adapter_parameters(backbone)
    assert any(name.startswith("dalora_router.") for name in params)
    before = {name: p.detach().clone() for name, p in params.items()}
    config = MetaConfig(inner_steps=1, inner_lr=1e-3, tasks_per_step=1, first_order=True)
    meta_step(backbone, [vit_task(backbone, seed=0, domain="thermal")], config,
              torch.optim.AdamW(list(params.values()), lr=1e-2, weight_decay=0.0))
    thermal = backbone.dalora_settings.domains.index("thermal")
    for name, layer in backbone.named_modules():
        if isinstance(layer, DaLoraLayer):
            rows = layer.expert_channels(thermal)
            others = torch.ones(layer.lora_B.weight.shape[1], dtype=torch.bool)
            others[rows] = False
            b_before = before[f"{name}.lora_B.weight"]
            assert not torch.equal(layer.lora_B.weight[:, rows], b_before[:, rows])
            assert torch.equal(layer.lora_B.weight[:, others], b_before[:, others])
            assert torch.equal(layer.lora_A.weight[others], before[f"{name}.lora_A.weight"][others])
    for name, p in params.items():
        if name.startswith("dalora_router."):  # gates are detached: the router gets no meta-gradient
            assert torch.equal(p, before[name])


# ---------------------------------------------------------------------------------------------- 5. runs
def test_meta_train_refuses_an_existing_run_and_resumes_exactly(tmp_path):
    def sample_tasks(step: int) -> list[TaskBatch]:
        return [make_task((3, 112, 112), seed=100 * step + k) for k in range(2)]

    config = MetaConfig(inner_steps=1, inner_lr=1e-3, meta_lr=1e-2, meta_steps=4, tasks_per_step=2,
                        checkpoint_every=2)
    straight = tiny_lora_vit(seed=3)
    full = meta_train(straight, sample_tasks, config, tmp_path / "straight", progress=False)

    split_dir = tmp_path / "split"
    first = meta_train(tiny_lora_vit(seed=3), sample_tasks, replace(config, meta_steps=2),
                       split_dir, progress=False)
    assert first.steps == 2
    checkpoint = split_dir / "checkpoints" / CHECKPOINT_NAME
    saved = checkpoint.read_bytes()
    with pytest.raises(RunExistsError, match="resume=True"):
        meta_train(tiny_lora_vit(seed=3), sample_tasks, config, split_dir, progress=False)
    assert checkpoint.read_bytes() == saved

    resumed_backbone = tiny_lora_vit(seed=3)  # fresh adapter: everything comes from the checkpoint
    resumed = meta_train(resumed_backbone, sample_tasks, config, split_dir, resume=True, progress=False)
    assert resumed.steps == 4
    assert [h["meta_loss"] for h in resumed.history] == [h["meta_loss"] for h in full.history]
    final = adapter_parameters(straight)
    for name, p in adapter_parameters(resumed_backbone).items():
        assert torch.equal(p, final[name]), name

    # told to overwrite: the old run folder goes (everything in it), the run starts afresh and equals a fresh one
    (split_dir / "notes.txt").write_text("from the old run")
    with pytest.raises(ValueError, match="exclude each other"):
        meta_train(tiny_lora_vit(seed=3), sample_tasks, config, split_dir, resume=True, overwrite=True)
    again = meta_train(tiny_lora_vit(seed=3), sample_tasks, config, split_dir, overwrite=True, progress=False)
    assert not (split_dir / "notes.txt").exists() and again.steps == 4
    assert [h["meta_loss"] for h in again.history] == [h["meta_loss"] for h in full.history]
