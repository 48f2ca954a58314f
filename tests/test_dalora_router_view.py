"""DA-LoRA's router view (issue 18, item 3): with ``router_view="clean"`` the router learns on (and the experts'
gates of the training forward come from) the flip-only view of each training image; the default ``"augmented"``
keeps the committed runs' behaviour; classifier runs record their routing accuracy per validation pack."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from kornia.augmentation import RandomHorizontalFlip
from torch import nn

from afr.adapters.dalora import DaLoraSettings, apply_dalora, dalora_state
from afr.adapters.dalora.router import channel_statistics
from afr.data.augment import FaceAugment
from afr.data.verification import VerificationPack, load_pack
from afr.experiments.benchmark_data import BenchmarkData
from afr.experiments.dalora_run import routing_accuracy, routing_line, run_method
from afr.experiments.settings.dalora import DaLoraExperimentSettings
from afr.models import create_backbone
from afr.models.domain_aware import DomainAwareRecognitionModel
from afr.train import Trainer, TrainConfig, collate_samples

DOMAINS = ("controlled", "wild", "thermal", "lowquality")  # afr.data.sources.DOMAINS: the packs' domain codes


def _model(router_view: str = "augmented", seed: int = 0, trained_experts: bool = False) -> DomainAwareRecognitionModel:
    """A classifier-gated tiny DINOv2; ``trained_experts``: the experts' B matrices non-zero (each expert then
    changes the embeddings, so gates matter)."""
    torch.manual_seed(seed)
    backbone = create_backbone("tiny-dinov2")
    apply_dalora(backbone, DaLoraSettings(r=2, alpha=2.0, gating="classifier"))
    if trained_experts:
        for name, parameter in backbone.named_parameters():
            if parameter.requires_grad and "router" not in name and not parameter.detach().any():
                parameter.data.normal_(0.0, 0.5)
    return DomainAwareRecognitionModel(backbone, 4, router_view=router_view)


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    samples = [(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), label, domain)
               for label, domain in zip([0, 0, 1, 1, 2, 2, 3, 3], [0, 0, 2, 2, 3, 3, 2, 2])]
    return collate_samples(samples)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """Empty results, runs and figures folders."""
    for name in ("RESULTS", "RUNS", "FIGURES"):
        monkeypatch.setenv(f"AFR_{name}", str(tmp_path / name.lower()))
    return tmp_path


def _trainer(model: nn.Module, tmp_path, augment=None) -> Trainer:
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-3, output_dir=str(tmp_path), progress=False,
                         tensorboard=False, device="cpu")
    samples = [(np.zeros((28, 28, 3), np.uint8), 0)] * 8  # train_step takes its batch; fit() is not called
    return Trainer(model, samples, config, augment=augment)


class _Zeroing(nn.Module):
    """An augmentation that blanks every image; its clean view is the batch as given."""

    def views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros_like(images), images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.views(images)[0]


def _stem_statistics(model: DomainAwareRecognitionModel, images: torch.Tensor) -> torch.Tensor:
    """Per-channel mean/std of the router input (the token embeddings) for ``images``."""
    backbone = model.backbone
    seen = {}
    module = backbone.get_submodule(backbone.dalora_settings.router_input)
    handle = module.register_forward_hook(lambda _m, _a, output: seen.update(out=output.detach()))
    try:
        with torch.no_grad():
            backbone(images)
    finally:
        handle.remove()
    return channel_statistics(seen["out"])


def _router_inputs(model: DomainAwareRecognitionModel) -> list[torch.Tensor]:
    """Every batch of statistics the router's MLP reads from now on (appended as they come)."""
    inputs: list[torch.Tensor] = []
    model.backbone.dalora_router.mlp.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach()))
    return inputs


@pytest.mark.parametrize("view", ["clean", "augmented"])
def test_the_router_reads_the_view_its_setting_names(tmp_path, view):
    model = _model(view)
    batch = _batch()
    clean_statistics = _stem_statistics(model, batch["images"])
    blank_statistics = _stem_statistics(model, torch.zeros_like(batch["images"]))
    inputs = _router_inputs(model)
    captured = {}
    model.register_forward_hook(lambda _m, _a, _output: captured.update(gates=dalora_state(model.backbone).gates))
    expected = clean_statistics if view == "clean" else blank_statistics
    with torch.no_grad():  # the router before the step
        expected_logits = model.backbone.dalora_router.mlp(expected)
    inputs.clear()
    trainer = _trainer(model, tmp_path, augment=_Zeroing())
    assert trainer.clean_view is (view == "clean")
    trainer.train_step(batch)
    assert inputs and all(torch.equal(seen, expected) for seen in inputs)  # every logit of the step: this view's
    assert not torch.equal(clean_statistics, blank_statistics)
    # the experts' gates of the recognition forward come from the same view (test-time images are clean)
    torch.testing.assert_close(captured["gates"], torch.softmax(expected_logits, dim=1))


def test_clean_view_logits_train_the_router_and_the_experts_see_the_augmented_images():
    model = _model("clean", trained_experts=True)
    batch = _batch()
    blank = torch.zeros_like(batch["images"])
    output = model(images=blank, labels=batch["labels"], domains=batch["domains"], clean_images=batch["images"])
    output.loss.backward()
    assert model.backbone.dalora_router.mlp[1].weight.grad.abs().sum() > 0  # the domain loss reaches the router
    with torch.no_grad():  # the embeddings are those of the augmented (blank) images under the clean-view gates
        reference = _model("augmented", trained_experts=True)
        reference.load_state_dict(model.state_dict())
        clean_gates = (reference.backbone(batch["images"]), dalora_state(reference.backbone).gates)[1]
        plain = reference.backbone(blank)
    torch.testing.assert_close(dalora_state(model.backbone).gates, clean_gates)
    assert not torch.allclose(output.embeddings, plain)  # other gates than the blank images' own
    with torch.no_grad():  # at test time (no clean view) a model routes by its own images
        model.backbone(blank)
    torch.testing.assert_close(dalora_state(model.backbone).gates, dalora_state(reference.backbone).gates)


def test_face_augment_views_share_the_flip_and_the_augmented_view_is_forwards_output():
    augment = FaceAugment().train()
    images = torch.rand(6, 3, 28, 28)
    torch.manual_seed(3)
    augmented, clean = augment.views(images)
    torch.manual_seed(3)
    assert torch.equal(augment(images), augmented)
    torch.manual_seed(3)
    flipped = RandomHorizontalFlip(p=0.5)(images)  # the same first draw: the flip of each image
    assert torch.equal(clean, flipped.clamp(0.0, 1.0)) and not torch.equal(clean, augmented)
    assert all(augment.eval().views(images)[i] is images for i in (0, 1))


def test_the_default_view_keeps_the_loss_of_a_training_step_bitwise(tmp_path):
    """router_view defaults to "augmented": a trainer step computes what it computed before the setting existed --
    the old augmentation (flip, then the per-image RandAugment policies, clamped) and the model called without a
    clean view -- to the bit."""
    batch = _batch()
    model = _model()
    trainer = _trainer(model, tmp_path, augment=FaceAugment())
    assert not trainer.clean_view
    torch.manual_seed(5)
    loss = trainer.train_step(batch)["loss"]

    reference = _model()
    augment = FaceAugment().train()
    torch.manual_seed(5)
    images = augment.flip(batch["images"])
    images = augment.apply_policies(images, augment.draw_policies(images.shape[0])).clamp(0.0, 1.0)
    expected = reference(images=images, labels=batch["labels"], domains=batch["domains"]).loss
    assert loss == expected.item()


def test_router_view_is_a_setting_out_of_the_committed_tags():
    default = DaLoraExperimentSettings(method="dalora-classifier")
    clean = DaLoraExperimentSettings(method="dalora-classifier", router_view="clean")
    assert "router_view" not in default.digest_values() and default.tag != clean.tag
    assert clean.digest_values()["router_view"] == "clean" and clean.run_settings().router_view == "clean"
    assert "router_view" not in default.table_columns() and clean.table_columns()["router_view"] == "clean"
    with pytest.raises(ValueError, match="router_view"):
        DaLoraExperimentSettings(router_view="blurred")


def test_routing_accuracy_is_the_own_experts_argmax_share():
    table = {"argmax": {"controlled": {"controlled": 0.75, "thermal": 0.0, "lowquality": 0.25},
                        "wild": {"controlled": 0.5, "thermal": 0.5, "lowquality": 0.0},
                        "thermal": {"controlled": 0.0, "thermal": 1.0, "lowquality": 0.0}}}
    assert routing_accuracy(table) == {"controlled": 0.75, "wild": 0.5, "thermal": 1.0}
    line = routing_line({"routing": {"validation": {"controlled": 0.75, "thermal": 1.0}}})
    assert line == "routing accuracy on validation: controlled 0.750, thermal 1.000"
    assert "no routing accuracy" in routing_line({"tag": "old"})


class _Chips:
    """A few real chips as a training set with domains (what run_method reads of a training pack)."""

    domain_names = DOMAINS

    def __init__(self, packs: dict[str, VerificationPack], per_pack: int = 8) -> None:
        self.images, labels, domains = [], [], []
        for index, (name, pack) in enumerate(packs.items()):
            self.images += pack.images[:per_pack]
            labels += [2 * index + i // (per_pack // 2) for i in range(per_pack)]
            domains += [DOMAINS.index(name)] * per_pack
        self.labels, self.domains = np.array(labels), np.array(domains)
        self.num_classes = int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple:
        return self.images[index], int(self.labels[index]), int(self.domains[index])


def _few_pairs(pack: VerificationPack, pairs: int = 10) -> VerificationPack:
    issame = pack.issame.copy()
    chosen = [*np.flatnonzero(issame)[: pairs // 2], *np.flatnonzero(~issame)[: pairs // 2]]
    images = [image for index in chosen for image in pack.images[2 * index: 2 * index + 2]]
    return VerificationPack(pack.name, images, issame[chosen], pack.sha256)


def test_a_classifier_run_records_its_routing_accuracy_per_validation_pack(embedded_benchmark, scratch):
    """A one-epoch tiny-DINOv2 run on a few real chips of the embedded benchmark (about 25 s on 2 busy cores)."""
    view = "clean"
    names = ("controlled", "thermal", "lowquality")
    packs = {name: _few_pairs(load_pack(embedded_benchmark.bin_path(name, "val"))) for name in names}
    data = BenchmarkData(_Chips(packs), packs, {})
    settings = DaLoraExperimentSettings(
        backbone="tiny-dinov2", method="dalora-classifier", epochs=1, batch_size=8, images_per_identity=2, rank=2,
        router_view=view, score_test=False, progress=False, output_dir=str(scratch / "runs"))
    record = run_method(settings.run_settings(), data, gate_statistics=False).record
    routing = record["routing"]["validation"]
    assert set(routing) == set(names) and all(0.0 <= value <= 1.0 for value in routing.values())
    assert record["settings"]["router_view"] == view and record["test"] is None
