"""How the experiments wire their pieces together, checked against hand-computed values.

Each test pins one piece of wiring that a wrong argument would silently change while every lower-level unit still
passes: the episodes an experiment meta-trains on (sources only, per seed), the outer MAML loss (the query's),
which meta-gradient each method name runs, the InfoNCE term of the domain-aware model (with its domains), the
router confusion table, the learning-rate search's choice, the flip test of the experiments' scoring and the sign
of the ROC score. Everything runs on tiny models and synthetic data (seconds).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from afr.analysis.roc import roc_from_distances
from afr.data.verification import VerificationPack
from afr.eval.extract import extract_embeddings
from afr.eval.verification import evaluate
from afr.experiments import dalora_vs_lora as dalora
from afr.experiments.baseline import evaluate_on_packs
from afr.experiments.crossdomain import DIRECTIONS, CrossDomainData, CrossDomainSettings, stage1_sampler
from afr.experiments.maml_init import MamlData, MamlExperimentSettings, episode_sampler, task_batches
from afr.losses.margin import CosFaceMargin
from afr.meta import TaskBatch, meta_step, query_loss
from afr.models.domain_aware import DomainAwareRecognitionModel

# ------------------------------------------------------------------------------------------ synthetic training data
#: the embedded benchmark's training collections; the low-quality chips share the ORL/Yale identities' labels
VISIBLE_IDENTITIES = {"orl": range(0, 8), "yale": range(8, 14)}
THERMAL_IDENTITIES = {"thermal_und": range(20, 28), "thermal_puj": range(30, 37)}


def _training_data(images_per_identity: int = 5) -> MamlData:
    labels, collections = [], []
    for collection, identities in {**VISIBLE_IDENTITIES, **THERMAL_IDENTITIES}.items():
        for identity in identities:
            labels += [identity] * images_per_identity
            collections += [collection] * images_per_identity
    for identities in VISIBLE_IDENTITIES.values():  # degraded copies: same people, another collection
        for identity in identities:
            labels += [identity] * images_per_identity
            collections += ["lowquality"] * images_per_identity
    rng = np.random.default_rng(0)
    chips = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in labels]
    pack = VerificationPack("thermal_und", chips[:4], np.array([True, False]), "")
    return MamlData(chips, np.asarray(labels), np.asarray(collections), pack, image_size=8)


def _episode_collections(sampler, data: MamlData, count: int = 60) -> set[str]:
    """Every collection an index of the first ``count`` episodes belongs to (and the episodes' own names)."""
    seen = set()
    for index in range(count):
        episode = sampler.episode(index)
        seen.add(episode.collection)
        seen.update(data.collections[list(episode.support) + list(episode.query)].tolist())
    return seen


def _episodes(sampler, count: int = 12) -> list[tuple]:
    return [(e.collection, e.identities, e.support, e.query) for e in map(sampler.episode, range(count))]


# ------------------------------------------------------------------------------------------ 1, 5: meta-training data
def test_maml_experiment_episodes_never_hold_the_held_out_target():
    data = _training_data()
    settings = MamlExperimentSettings(progress=False)
    assert settings.target == "thermal_und"
    sampler = episode_sampler(settings, data)
    seen = _episode_collections(sampler, data)
    assert settings.target not in seen
    assert seen == set(settings.sources)  # every source is visited
    batches = [batch for step in range(5) for batch in task_batches(data, sampler, settings.tasks_per_step, step)]
    assert settings.target not in {batch.domain for batch in batches}
    # another target: the experiment holds that one out instead
    other = MamlExperimentSettings(target="thermal_puj", sources=("orl", "yale", "thermal_und"), progress=False)
    assert _episode_collections(episode_sampler(other, data), data) == {"orl", "yale", "thermal_und"}


@pytest.mark.parametrize("direction", [name for name, shift in DIRECTIONS.items() if shift.target])
def test_crossdomain_stage_one_episodes_never_hold_a_target_collection(direction):
    data = CrossDomainData(_training_data(), np.array([]), {})
    settings = CrossDomainSettings(direction=direction, progress=False)
    seen = _episode_collections(stage1_sampler(settings, data), data.train)
    assert not seen & set(settings.shift.target)
    assert seen == set(settings.shift.source)


def test_each_seed_meta_trains_on_its_own_episodes():
    data = _training_data()
    maml = [_episodes(episode_sampler(MamlExperimentSettings(seed=seed, progress=False), data)) for seed in (0, 1, 2)]
    assert maml[0] != maml[1] and maml[0] != maml[2] and maml[1] != maml[2]
    # through the grid's own per-run settings too, and the same seed draws the same episodes again
    grid = MamlExperimentSettings(seeds=(0, 1), progress=False)
    drawn = [_episodes(episode_sampler(grid.for_run("maml", seed), data)) for seed in grid.seeds]
    assert drawn[0] != drawn[1] and drawn == maml[:2]

    cross = CrossDomainData(data, np.array([]), {})
    starts = [_episodes(stage1_sampler(CrossDomainSettings(progress=False).for_run("dalora+maml", seed), cross))
              for seed in (0, 1)]
    assert starts[0] != starts[1]


# ------------------------------------------------------------------------------------------ 2, 3: MAML's outer loop
def _hand_loss(weight: torch.Tensor, support_x, support_y, query_x, query_y, n: int, s: float, m: float):
    """CosFace over prototypes, written out: the centres are the normalised means of the normalised support
    embeddings of each class; the query's cosines to them get ``s * (cos - m)`` at the true class."""
    support = F.normalize(support_x @ weight.T, dim=1)
    one_hot = F.one_hot(support_y, n).to(weight.dtype)
    centres = F.normalize(one_hot.T @ support / one_hot.sum(0)[:, None], dim=1)
    cosine = F.normalize(query_x @ weight.T, dim=1) @ centres.T
    logits = s * (cosine - m * F.one_hot(query_y, n).to(weight.dtype))
    return (torch.logsumexp(logits, dim=1) - logits.gather(1, query_y[:, None])[:, 0]).mean()


def _tiny_task(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    support_x = torch.randn(6, 5, dtype=torch.float64, generator=generator)
    query_x = torch.randn(6, 5, dtype=torch.float64, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    return support_x, labels, query_x, labels.clone()


def _linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(5, 4, bias=False).double()


def test_outer_loss_is_the_query_loss_against_the_support_prototypes():
    model = _linear()
    params = dict(model.named_parameters())
    support_x, support_y, query_x, query_y = _tiny_task()
    margin = CosFaceMargin(4.0, 0.2)
    loss = query_loss(model, params, support_x, support_y, query_x, query_y, 3, margin)
    expected = _hand_loss(model.weight, support_x, support_y, query_x, query_y, 3, 4.0, 0.2)
    torch.testing.assert_close(loss, expected)
    # the support scored against its own prototypes is another number: the test can tell them apart
    on_support = _hand_loss(model.weight, support_x, support_y, support_x, support_y, 3, 4.0, 0.2)
    assert not torch.isclose(expected, on_support)
    # only the query changes: so does the loss (and it stays the hand value)
    other_query = query_x.flip(0)
    changed = query_loss(model, params, support_x, support_y, other_query, query_y, 3, margin)
    assert not torch.isclose(changed, loss)
    expected_changed = _hand_loss(model.weight, support_x, support_y, other_query, query_y, 3, 4.0, 0.2)
    torch.testing.assert_close(changed, expected_changed)


def _hand_meta_gradients(weight: torch.Tensor, task, steps: int, lr: float, s: float, m: float):
    """(exact second-order meta-gradient, first-order meta-gradient) of the query loss after ``steps`` SGD steps
    on the support's own prototype loss, from ``weight``."""
    support_x, support_y, query_x, query_y = task
    start = weight.detach().clone().requires_grad_()
    adapted = start
    for _ in range(steps):
        inner = _hand_loss(adapted, support_x, support_y, support_x, support_y, 3, s, m)
        adapted = adapted - lr * torch.autograd.grad(inner, adapted, create_graph=True)[0]
    exact = torch.autograd.grad(_hand_loss(adapted, support_x, support_y, query_x, query_y, 3, s, m), start)[0]
    detached = weight.detach().clone().requires_grad_()
    current = detached
    for _ in range(steps):
        inner = _hand_loss(current, support_x, support_y, support_x, support_y, 3, s, m)
        current = (current - lr * torch.autograd.grad(inner, current)[0]).detach().requires_grad_()
    first_order = torch.autograd.grad(_hand_loss(current, support_x, support_y, query_x, query_y, 3, s, m), current)[0]
    return exact, first_order


def _experiment_meta_gradient(method: str, task, inner_lr: float) -> tuple[torch.Tensor, dict]:
    """The meta-gradient one outer step of notebook 04's ``method`` leaves on a tiny linear backbone."""
    settings = MamlExperimentSettings(method=method, inner_steps=2, inner_lr=inner_lr, tasks_per_step=1,
                                      progress=False)
    config = settings.meta_config()
    model = _linear()
    support_x, support_y, query_x, query_y = task
    batch = TaskBatch(support_x, support_y, query_x, query_y, n_classes=3, domain="orl")
    stats = meta_step(model, [batch], config, torch.optim.SGD(model.parameters(), lr=0.0))
    return model.weight.grad.detach().clone(), {"config": config, **stats}


def test_maml_runs_second_order_and_fomaml_first_order_meta_gradients():
    task, lr = _tiny_task(), 2e-3
    config = MamlExperimentSettings(inner_steps=2, inner_lr=lr).meta_config()
    exact, first_order = _hand_meta_gradients(_linear().weight, task, 2, lr, config.margin_s, config.margin_m)
    assert (exact - first_order).norm() > 0.05 * exact.norm()  # the two algorithms differ measurably here
    maml, stats = _experiment_meta_gradient("maml", task, lr)
    torch.testing.assert_close(maml, exact, rtol=1e-6, atol=1e-9)
    fomaml, _ = _experiment_meta_gradient("fomaml", task, lr)
    torch.testing.assert_close(fomaml, first_order, rtol=1e-6, atol=1e-9)
    # the meta loss it reports is the query loss after the inner steps (computed by hand along the way)
    weight = _linear().weight.detach()
    pre = _hand_loss(weight, *task, 3, config.margin_s, config.margin_m)
    assert stats["pre_adapt_query_loss"] == pytest.approx(float(pre), rel=1e-9)
    # pooled-lora: no inner steps, so its meta-gradient is the plain query gradient at the start
    pooled, _ = _experiment_meta_gradient("pooled-lora", task, lr)
    start = weight.clone().requires_grad_()
    plain = torch.autograd.grad(_hand_loss(start, *task, 3, config.margin_s, config.margin_m), start)[0]
    torch.testing.assert_close(pooled, plain, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------ 4: the InfoNCE term
class _TinyBackbone(nn.Module):
    embedding_dim = 4
    input_size = 8

    def __init__(self, inputs: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(inputs, self.embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def _hand_info_nce(embeddings: np.ndarray, labels, domains, temperature: float) -> float:
    """SupCon L_out, anchors' positives = same identity from another domain when the batch has one."""
    z = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = z @ z.T / temperature
    losses = []
    for i in range(len(labels)):
        same = [p for p in range(len(labels)) if p != i and labels[p] == labels[i]]
        cross = [p for p in same if domains is not None and domains[p] != domains[i]]
        positives = cross or same
        if not positives:
            continue
        log_denominator = np.log(sum(np.exp(similarity[i, a]) for a in range(len(labels)) if a != i))
        losses.append(-np.mean([similarity[i, p] - log_denominator for p in positives]))
    return float(np.mean(losses))


def test_domain_aware_infonce_term_prefers_cross_domain_positives():
    labels, domains = [0, 0, 0, 1, 1, 1], [0, 0, 2, 0, 2, 2]
    model = DomainAwareRecognitionModel(_TinyBackbone(), num_classes=2, lambda_contrastive=0.5, lambda_domain=0.0,
                                        temperature=0.5)
    torch.manual_seed(1)
    images = torch.randn(6, 6)
    output = model(images, torch.tensor(labels), torch.tensor(domains))
    embeddings = output.embeddings.detach().double().numpy()
    with_domains = _hand_info_nce(embeddings, labels, domains, 0.5)
    assert abs(with_domains - _hand_info_nce(embeddings, labels, None, 0.5)) > 1e-3  # the domains matter here
    assert output.terms["contrastive"].item() == pytest.approx(0.5 * with_domains, rel=1e-5)


# ------------------------------------------------------------------------------------------ 6: the router's table
def test_gate_table_shares_are_the_routers_argmax_per_true_domain():
    from afr.adapters.dalora import DaLoraSettings, apply_dalora
    from afr.models import create_backbone

    torch.manual_seed(0)
    backbone = apply_dalora(create_backbone("tiny-dinov2"),
                            DaLoraSettings(r=2, alpha=2.0, domains=("controlled", "thermal", "lowquality")))
    # the router's logits of each pack's images, fixed: known gates whatever the (random) router computes
    logits = {"controlled": torch.tensor([[3.0, 0, 0], [2, 1, 0], [0, 4, 0], [1, 0, 0], [0, 0, 2], [5, 0, 1]]),
              "thermal": torch.tensor([[0.0, 3, 0], [0, 2, 1], [0, 0, 1], [0, 1, 0], [2, 3, 0], [0, 1, 0]])}
    order = iter(logits.values())
    backbone.dalora_router.register_forward_hook(lambda module, args, output: next(order).to(output.dtype))
    rng = np.random.default_rng(0)
    packs = {name: VerificationPack(name, [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(6)],
                                    np.array([True, False, True]), "") for name in logits}
    table = dalora.gate_table(backbone, packs, batch_size=6)
    experts = ("controlled", "thermal", "lowquality")
    # argmax rows: controlled -> 0 0 1 0 2 0; thermal -> 1 1 2 1 1 1
    expected = {"controlled": (4 / 6, 1 / 6, 1 / 6), "thermal": (0.0, 5 / 6, 1 / 6)}
    for name, shares in expected.items():
        assert list(table["argmax"][name]) == list(experts)
        assert sum(table["argmax"][name].values()) == pytest.approx(1.0)
        assert list(table["argmax"][name].values()) == pytest.approx(shares)
        mean = torch.softmax(logits[name], dim=1).mean(0).tolist()
        assert list(table["mean"][name].values()) == pytest.approx(mean, rel=1e-5)


def test_pack_gates_run_each_distinct_chip_once_and_equal_every_images_own_gates():
    """A pack repeats its chips across pairs: the router runs once per distinct chip, and every image gets the gates
    it gets when run alone (the per-epoch gate statistics and the gate table read them)."""
    from afr.adapters.dalora import DaLoraSettings, apply_dalora
    from afr.eval.extract import chips_to_tensor
    from afr.experiments.dalora_run import pack_gates
    from afr.models import create_backbone

    torch.manual_seed(0)
    backbone = apply_dalora(create_backbone("tiny-dinov2"),
                            DaLoraSettings(r=2, alpha=2.0, domains=("controlled", "thermal", "lowquality"))).eval()
    rng = np.random.default_rng(1)
    chips = [rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(5)]
    images = [chips[index].copy() for index in (0, 1, 0, 2, 3, 1, 4, 0, 2, 3)]
    seen = []
    backbone.dalora_router.register_forward_hook(lambda module, args, output: seen.append(len(output)))
    with torch.no_grad():
        gates = pack_gates(backbone, images, batch_size=4)
        assert sum(seen) == 5  # the 5 distinct chips, not the 10 images
        alone = torch.cat([(backbone(chips_to_tensor([image], backbone.input_size)),
                            backbone.dalora_router.state.gates.float())[1] for image in images])
    assert gates.shape == (10, 3) and torch.allclose(gates, alone, atol=1e-6)
    assert torch.equal(gates[0], gates[2]) and torch.equal(gates[0], gates[7])


# ------------------------------------------------------------------------------------------ 7: the lr search
def test_learning_rate_search_picks_the_highest_mean_validation_auc(monkeypatch):
    # family -> lr -> validation AUC per pack; the best mean is not the best on every pack
    aucs = {"lora": {1e-4: (0.70, 0.80), 3e-4: (0.90, 0.85), 1e-3: (0.95, 0.60)},
            "dalora": {1e-4: (0.91, 0.90), 3e-4: (0.60, 0.99), 1e-3: (0.50, 0.40)}}
    family_of = {"lora": "lora", "dalora-classifier": "dalora"}

    def fake_run(settings, data, *args, **kwargs):
        assert settings.score_test is False  # the search never scores the test packs
        controlled, thermal = aucs[family_of[settings.method]][settings.lr]
        history = [{"epoch": 1, "val/controlled/auc": 0.5, "val/thermal/auc": 0.5},
                   {"epoch": 2, "val/controlled/auc": controlled, "val/controlled/accuracy": 0.5,
                    "val/thermal/auc": thermal}]
        return dalora.RunOutcome({"train": {"history": history}})

    monkeypatch.setattr(dalora, "run_method", fake_run)
    settings = dalora.DaLoraExperimentSettings(search_lrs=(1e-4, 3e-4, 1e-3), progress=False)
    chosen, table = dalora.choose_learning_rates(settings, data=None)
    assert chosen == {"lora": 3e-4, "dalora": 1e-4}
    lora = table[table["family"] == "lora"].set_index("lr")["val_auc_mean"]
    assert lora.to_dict() == pytest.approx({1e-4: 0.75, 3e-4: 0.875, 1e-3: 0.775})


# ------------------------------------------------------------------------------------------ 8: flip-test scoring
def test_experiment_scoring_uses_the_flip_test():
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(10)]
    images, issame = [], []
    for i, face in enumerate(faces):  # same: a face and its mirror image; different: two faces
        images += [face, np.ascontiguousarray(face[:, ::-1])]
        images += [face, faces[(i + 3) % len(faces)]]
        issame += [True, False]
    pack = VerificationPack("mirrors", images, np.array(issame), "abc")
    backbone = _TinyBackbone(inputs=3 * 8 * 8)
    scored = evaluate_on_packs(backbone, {"mirrors": pack})["mirrors"]
    flipped = evaluate(extract_embeddings(backbone, images, flip=True), issame).to_dict()
    plain = evaluate(extract_embeddings(backbone, images, flip=False), issame).to_dict()
    assert flipped["auc"] == 1.0 and plain["auc"] < 0.9  # a mirror pair is one face only under the flip test
    assert scored["auc"] == flipped["auc"] and scored["auc"] != plain["auc"]
    assert scored["accuracy_mean"] == pytest.approx(flipped["accuracy_mean"])
    assert scored["eer"] == pytest.approx(flipped["eer"]) and scored["sha256"] == "abc"


# ------------------------------------------------------------------------------------------ 9: the ROC's score
def test_roc_of_separable_distances_is_perfect():
    distances = np.array([0.1, 0.3, 0.2, 1.5, 1.2, 0.9])  # same-identity pairs are the close ones
    issame = np.array([True, True, True, False, False, False])
    curve = roc_from_distances(distances, issame, "m", "d")
    assert curve.auc == 1.0
    assert curve.tpr[curve.fpr == 0].max() == 1.0  # every same pair accepted before any different one
    assert roc_from_distances(distances[::-1].copy(), issame).auc == 0.0  # reversed: the worst possible rule
