"""MAML that descends: the meta-gradient clipped to a norm, and a meta-training whose meta-loss rises stopped with
an error before any start is saved (afr.meta.maml: max_grad_norm, stop_on_divergence, divergence)."""
from __future__ import annotations

import math

import pytest
import torch

from afr.meta import MetaConfig, adapter_parameters, meta_step, meta_train
from afr.meta.maml import MetaTrainingDiverged, divergence, uniform_query_loss
from afr.experiments.health import uniform_margin_loss
from tests.test_maml import tiny_lora_vit, vit_task


def test_the_meta_gradient_is_clipped_to_max_grad_norm_and_its_norm_recorded():
    tasks = lambda model: [vit_task(model, 0), vit_task(model, 1, "lowquality")]  # noqa: E731
    free = tiny_lora_vit(random_b=True)
    stats = meta_step(free, tasks(free), MetaConfig(inner_steps=1, inner_lr=1e-3, tasks_per_step=2),
                      torch.optim.SGD(list(adapter_parameters(free).values()), lr=0.0))
    norm = stats["meta_grad_norm"]
    assert norm > 0.02
    measured = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in adapter_parameters(free).values()))
    assert measured == pytest.approx(norm, rel=1e-5)  # unclipped: the recorded norm is the gradient's

    clipped = tiny_lora_vit(random_b=True)
    limit = norm / 4
    stats = meta_step(clipped, tasks(clipped), MetaConfig(inner_steps=1, inner_lr=1e-3, tasks_per_step=2,
                                                           max_grad_norm=limit),
                      torch.optim.SGD(list(adapter_parameters(clipped).values()), lr=0.0))
    assert stats["meta_grad_norm"] == pytest.approx(norm, rel=1e-5)  # the norm before clipping
    after = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in adapter_parameters(clipped).values()))
    assert after == pytest.approx(limit, rel=1e-4)
    with pytest.raises(ValueError, match="max_grad_norm"):
        MetaConfig(max_grad_norm=0.0)


def test_divergence_rule_on_histories():
    falling = [{"meta_loss": 12.0 - 0.5 * i} for i in range(12)]
    rising = [{"meta_loss": 10.0 + 0.5 * i} for i in range(12)]
    assert divergence(falling, 5, 64.0, 0.35) is None
    assert "rose" in divergence(rising, 5, 64.0, 0.35)
    assert divergence(rising[:9], 5, 64.0, 0.35) is None  # too short to compare its start with its end
    uniform = uniform_query_loss(5, 64.0, 0.35)
    assert uniform == pytest.approx(uniform_margin_loss("cosface", classes=5))  # the health rule's reference
    stuck = [{"meta_loss": uniform} for _ in range(5)]
    assert "uniform" in divergence(stuck, 5, 64.0, 0.35)


def test_a_rising_meta_training_stops_with_an_error_and_its_history(tmp_path):
    backbone = tiny_lora_vit(random_b=True)
    config = MetaConfig(inner_steps=1, inner_lr=1e-3, meta_lr=1e-2, meta_steps=10, tasks_per_step=1,
                        checkpoint_every=10, stop_on_divergence=True, margin_s=8.0, margin_m=0.2)
    # tasks that get harder every step (more classes, so a higher loss): the meta-loss rises whatever it learns
    sample = lambda step: [vit_task_with_classes(backbone, 2 + step)]  # noqa: E731
    with pytest.raises(MetaTrainingDiverged, match="diverged at step 10") as raised:
        meta_train(backbone, sample, config, tmp_path / "run", progress=False)
    assert len(raised.value.history) == 10
    ok = tiny_lora_vit(random_b=True)
    result = meta_train(ok, lambda step: [vit_task(ok, 0)], config, tmp_path / "ok", progress=False)
    assert result.steps == 10  # the same tasks every step: it descends and is not stopped


def vit_task_with_classes(backbone, n_classes: int):
    from tests.test_maml import make_task

    return make_task((3, backbone.input_size, backbone.input_size), n_classes=n_classes, seed=n_classes)


def test_the_per_domain_descent_diagnostic_compares_each_domain_with_itself():
    """Steps that alternate an easy and a hard pair of domains: the 5-step windows of the health rule hold them in
    unequal shares, the per-domain diagnostic does not (the hard domains here sit at the same value throughout)."""
    from afr.experiments.maml_descent import per_domain_descent

    history = []
    for step in range(12):
        if step % 2:
            history.append({"meta_loss/hard": 20.0, "meta_loss/harder": 22.0})
        else:
            history.append({"meta_loss/easy": 10.0 - step, "meta_loss/easier": 5.0})
    means = per_domain_descent(history)
    assert set(means) == {"easy", "easier", "hard", "harder"}
    assert means["hard"] == {"first": 20.0, "last": 20.0} and means["harder"]["last"] == 22.0
    assert means["easy"]["first"] == pytest.approx((10 + 8 + 6) / 3) and means["easy"]["last"] == pytest.approx((4 + 2 + 0) / 3)
    assert per_domain_descent(history[:4]) == {}  # too few steps per domain for two windows
