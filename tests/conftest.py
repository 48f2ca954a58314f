"""Shared fixtures: the embedded benchmark is built once per session (and reused by notebook 01).

``@pytest.mark.shared("data/faces/orl", ...)`` marks a test that reads those paths of the shared
folder. The shared folder is a requirement of these tests, not an option: a missing path fails the
test (during setup, with one line naming the path) instead of skipping it.
"""
from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from afr.paths import shared_root



def timm_installed() -> bool:
    """Whether the timm library is installed. ``tests/timm`` itself is found as a namespace package ``timm``
    (no ``origin``) while ``tests/`` is on ``sys.path``, so a spec alone does not say it."""
    spec = importlib.util.find_spec("timm")
    return spec is not None and spec.origin is not None


# tests/timm needs the optional timm extra (`make test-timm` runs it in .venv-timm, torch 2.14.1 + torchvision);
# where timm is not installed (the default venv) the folder is not collected at all
collect_ignore = [] if timm_installed() else ["timm"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shared(*paths): paths inside the shared folder the test reads; a missing one fails the test"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("shared"):
        for relative in marker.args:
            path = shared_root() / relative
            if not path.exists():
                pytest.fail(
                    f"{path} not found: these tests need the shared data/weights folder "
                    "(set AFR_SHARED to point elsewhere)",
                    pytrace=False,
                )


@pytest.fixture(scope="session")
def embedded_benchmark():
    """The default embedded benchmark in data/processed/embedded (built from ../shared if absent)."""
    from afr.data.embedded import build_embedded_benchmark

    return build_embedded_benchmark(progress=False)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: MTCNN's many tiny convolutions only lose from more on 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detector():
    """An MTCNN on the shared weights (CPU), on the process's thread count (``one_torch_thread`` makes it 1: fast on
    2 busy cores) instead of the fixed count the benchmark builder uses for bit-identical packs."""
    from afr.align.mtcnn import MTCNN

    return MTCNN(num_threads=None)


TRAIN_IDENTITIES = 24  # ORL s1..s24 form the "CASIA" pack; the benchmark packs use other people


def _chips_by_identity() -> dict[str, list[np.ndarray]]:
    from afr.data.images import read_image
    from afr.data.sources import list_orl

    chips: dict[str, list[np.ndarray]] = {}
    for face in list_orl():
        chip = cv2.resize(read_image(face.path), (112, 112), interpolation=cv2.INTER_AREA)
        chips.setdefault(face.identity, []).append(chip)
    return dict(sorted(chips.items(), key=lambda item: int(item[0].rsplit("s", 1)[1])))


@pytest.fixture(scope="session")
def full_profile_data(tmp_path_factory):
    """The full profile in miniature: ORL s1..s24 as a CASIA-layout pack (``casia/``: train.rec/.idx/property,
    scalar labels, no domains), the other ORL people's pairs as ``bins/lfw.bin ... cplfw.bin``."""
    from afr.data.pairs import balanced_pairs
    from afr.data.recordio import write_pack
    from afr.data.verification import write_bin
    from afr.experiments.baseline import FULL_BENCHMARKS

    root = tmp_path_factory.mktemp("full_profile")
    people = list(_chips_by_identity().values())
    train_images, train_labels = [], []
    for label, chips in enumerate(people[:TRAIN_IDENTITIES]):
        train_images += chips[:6]
        train_labels += [label] * 6
    write_pack(root / "casia", train_images, np.array(train_labels))  # scalar labels, no domains: as CASIA
    test_chips = [chip for chips in people[TRAIN_IDENTITIES:] for chip in chips[:4]]
    test_labels = [label for label, chips in enumerate(people[TRAIN_IDENTITIES:]) for _ in chips[:4]]
    for seed, name in enumerate(FULL_BENCHMARKS):
        pairs = balanced_pairs(test_labels, 40, seed)
        write_bin(root / "bins" / f"{name}.bin", [test_chips[i] for a, b, _ in pairs for i in (a, b)],
                  [same for *_, same in pairs])
    return root


@pytest.fixture(scope="session")
def local_hf_models(tmp_path_factory):
    """Local Hugging Face folders ``dinov2-small`` and ``clip-vit-base-patch16`` with the published widths and one
    layer each (random weights: nothing is downloaded), as a user's checkpoints on disk."""
    import torch
    from transformers import CLIPConfig, CLIPModel, Dinov2Config, Dinov2Model

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=1, num_attention_heads=6, mlp_ratio=1,
                             image_size=224, patch_size=14)).save_pretrained(root / "dinov2-small")
    vision = dict(hidden_size=768, intermediate_size=768, num_hidden_layers=1, num_attention_heads=12,
                  image_size=224, patch_size=16)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=64)).save_pretrained(
        root / "clip-vit-base-patch16")
    return root


@pytest.fixture(scope="session")
def thermal_folder(embedded_benchmark, tmp_path_factory):
    """``<root>/<identity>/<n>.png``: every thermal training chip of the embedded benchmark (49 identities)."""
    from afr.data.collections import training_collections

    root = tmp_path_factory.mktemp("thermal")
    dataset = embedded_benchmark.train_dataset()
    collections = training_collections(embedded_benchmark)
    for index in np.flatnonzero(np.isin(collections, ("thermal_und", "thermal_puj"))):
        image, label, _ = dataset[int(index)]
        folder = root / f"{collections[index]}_{label:04d}"
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return root
