import numpy as np
import pytest
import torch

from afr.data.augment import RANDAUGMENT_POLICY, AugmentSettings, FaceAugment
from afr.data.images import read_image
from afr.paths import shared_root

needs_shared = pytest.mark.shared("data")


def _orl_batch(n: int = 8) -> torch.Tensor:
    root = shared_root() / "data" / "faces" / "orl" / "s1"
    images = [read_image(path) for path in sorted(root.glob("*.pgm"))[:n]]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


@needs_shared
def test_flip_only_mirrors_every_image():
    batch = _orl_batch()
    augment = FaceAugment(AugmentSettings(flip_p=1.0, randaugment_ops=0)).train()
    assert torch.equal(augment(batch), batch.flip(-1))


@needs_shared
def test_randaugment_changes_images_but_keeps_shape_and_range():
    torch.manual_seed(0)
    batch = _orl_batch()
    out = FaceAugment().train()(batch)
    assert out.shape == batch.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = (out - batch).abs().flatten(1).mean(1) > 1e-3
    assert changed.sum() >= 6  # a flip or one of 4 RandAugment ops touches nearly every face


def _operation(name: str) -> int:
    return [subpolicy[0][0] for subpolicy in RANDAUGMENT_POLICY].index(name)


@needs_shared
def test_randaugment_draws_its_operations_per_image():
    """kornia's RandAugment applies one set of 4 operations to a whole batch; FRoundation (timm,
    torchvision) and FaceAugment draw a set for every image."""
    torch.manual_seed(0)
    batch = _orl_batch(10)
    augment = FaceAugment(AugmentSettings(flip_p=0.0)).train()
    policies = augment.draw_policies(len(batch))
    assert policies.shape == (10, 4) and all(len(set(row.tolist())) == 4 for row in policies)
    assert len({frozenset(row.tolist()) for row in policies}) >= 8  # the sets differ across images

    called = []
    for index, operation in enumerate(augment.operations):
        operation.register_forward_hook(lambda module, args, out, index=index: called.append(index))
    augment(batch)
    assert len(called) > 4 and len(set(called)) > 4  # more operations than one batch-wide draw uses


@needs_shared
def test_each_image_gets_exactly_its_own_operations():
    """Per-image policies of operations without random parameters, applied to the batch at once,
    give what applying each image's policy to that image alone gives."""
    batch = _orl_batch(4)
    augment = FaceAugment().train()
    names = [("invert", "equalize", "posterize", "contrast"), ("brightness", "auto_contrast", "sharpness", "color"),
             ("invert", "brightness", "equalize", "contrast"), ("sharpness", "posterize", "color", "invert")]
    policies = torch.tensor([[_operation(name) for name in row] for row in names])
    together = augment.apply_policies(batch, policies)
    alone = torch.cat([augment.apply_policies(batch[i : i + 1], policies[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    invert = torch.tensor([[_operation("invert")]])
    assert torch.equal(augment.apply_policies(batch[:1], invert), 1.0 - batch[:1])
    assert all(not torch.allclose(together[i], together[j]) for i in range(4) for j in range(i))


@needs_shared
def test_augmentation_is_repeatable_under_torch_manual_seed():
    batch = _orl_batch()
    augment = FaceAugment().train()
    outputs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outputs.append(augment(batch))
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


@needs_shared
def test_eval_mode_is_identity():
    batch = _orl_batch(2)
    assert torch.equal(FaceAugment().eval()(batch), batch)


def test_bad_settings_and_shapes_raise():
    with pytest.raises(ValueError, match="magnitude"):
        AugmentSettings(randaugment_magnitude=30)
    with pytest.raises(ValueError, match=r"randaugment_ops must be in \[0, 15\]"):
        AugmentSettings(randaugment_ops=16)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FaceAugment()(torch.zeros(3, 8, 8))
