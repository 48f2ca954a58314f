import numpy as np
import pytest
import torch

from afr.data.augment import AugmentSettings, FaceAugment
from afr.data.images import read_image
from afr.paths import shared_root

needs_shared = pytest.mark.skipif(not (shared_root() / "data").exists(), reason="shared folder not present")


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


@needs_shared
def test_eval_mode_is_identity():
    batch = _orl_batch(2)
    assert torch.equal(FaceAugment().eval()(batch), batch)


def test_bad_settings_and_shapes_raise():
    with pytest.raises(ValueError, match="magnitude"):
        AugmentSettings(randaugment_magnitude=30)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FaceAugment()(torch.zeros(3, 8, 8))
