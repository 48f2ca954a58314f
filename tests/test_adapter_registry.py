"""The adapter registry (afr.adapters.registry): dispatch by the saved ``type``, the legacy fallback for adapters
saved before it (every committed adapter under results/adapters/ loads as its old loader loads it), round trips
of new saves with identical embeddings, and the README's "Add an adapter type" example."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import types

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

import afr.adapters as adapters
from afr.adapters import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_type_of,
    apply_adapter,
    has_adapter,
    load_adapter,
    merge_adapter,
    read_adapter_config,
    read_adapter_settings,
    registered_types,
    save_adapter,
)
from afr.adapters.dalora import (DaLoraLayer, DaLoraSettings, dalora_state, load_dalora, save_dalora, set_domains,
                                 set_gating)
from afr.adapters.lora import LoraSettings
from afr.adapters.lora import load_adapter as load_lora
from afr.adapters.lora import save_adapter as save_lora
from afr.adapters.registry import LEGACY_FILES
from afr.models import create_backbone
from afr.paths import PROJECT_ROOT, MissingResourceError

COMMITTED = PROJECT_ROOT / "results" / "adapters"
COMMITTED_ADAPTERS = sorted(p for p in COMMITTED.iterdir() if p.is_dir() and (p / "source.json").is_file())
DOMAINS = ["controlled", "thermal", "lowquality", "thermal"]


def faces(model, count: int = 4, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, model.input_size, model.input_size, generator=generator)


def randomise(model, std: float = 0.05, seed: int = 2):
    """Non-zero values in every trainable tensor (LoRA B starts at zero), so the adapter changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


def tiny(name: str = "tiny-dinov2"):
    torch.manual_seed(0)
    return create_backbone(name)


def embed(model, x, domains=None):
    if domains is not None:
        set_domains(model, domains)
    with torch.no_grad():
        return model.eval()(x)


# ------------------------------------------------------------------------------------------------ registrations
def test_both_methods_register_and_the_registry_imports_no_torch_by_itself():
    kinds = registered_types()
    assert {"lora", "dalora"} <= set(kinds)
    assert kinds["lora"].settings_class is LoraSettings and not kinds["lora"].per_domain
    assert kinds["dalora"].settings_class is DaLoraSettings and kinds["dalora"].per_domain
    code = ("import sys, afr.adapters, afr.model_card; afr.adapters.read_adapter_config('results/adapters/lora_seed0'); "
            "assert 'torch' not in sys.modules and 'peft' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


# ------------------------------------------------------------------------------------------------ committed adapters
@pytest.fixture(scope="module")
def dlib():
    return create_backbone("dlib-resnet29")


@pytest.mark.shared("weights/dlib_resnet29")
@pytest.mark.parametrize("folder", COMMITTED_ADAPTERS, ids=[p.name for p in COMMITTED_ADAPTERS])
def test_every_committed_adapter_loads_through_the_registry_as_its_old_loader_loads_it(folder, dlib):
    # the dispatch the project used before the registry: by the settings file's name
    legacy_type = "dalora" if (folder / "dalora_settings.json").is_file() else "lora"
    settings_name, weights_name = LEGACY_FILES[legacy_type]
    assert (folder / settings_name).is_file() and not (folder / CONFIG_NAME).is_file()
    assert read_adapter_config(folder)["type"] == legacy_type

    loaded = load_adapter(copy.deepcopy(dlib), folder)
    old = (load_dalora if legacy_type == "dalora" else load_lora)(copy.deepcopy(dlib), folder)
    assert adapter_type_of(loaded).name == legacy_type
    state, expected = loaded.state_dict(), old.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in expected)
    # and the tensors are those of the committed file (not only what two code paths agree on)
    saved = load_file(str(folder / weights_name))
    if legacy_type == "lora":
        adapted = get_peft_model_state_dict(loaded)
    else:
        adapted = state
        meta = json.loads((folder / settings_name).read_text())
        assert dalora_state(loaded).mode == meta["settings"]["gating"]
        assert read_adapter_settings(folder).gating == meta["settings"]["gating"]
    assert saved.keys() <= adapted.keys()
    assert all(torch.equal(adapted[key], saved[key]) for key in saved)


# ------------------------------------------------------------------------------------------------ new saves
@pytest.mark.parametrize("kind", ["lora", "dalora"])
def test_a_new_save_records_its_type_and_loads_back_with_identical_embeddings(kind, tmp_path):
    plain = tiny("tiny-clip" if kind == "dalora" else "tiny-dinov2")
    settings = (DaLoraSettings(r=2, shared_expert=True, gating="oracle") if kind == "dalora"
                else LoraSettings(r=4, alpha=8.0, target_modules=("query", "value")))
    model = randomise(apply_adapter(copy.deepcopy(plain), settings))
    assert adapter_type_of(model).name == kind and has_adapter(model) and not has_adapter(plain)
    domains = DOMAINS if kind == "dalora" else None
    x = faces(model)
    expected = embed(model, x, domains)

    directory = save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in directory.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
    config = json.loads((directory / CONFIG_NAME).read_text())
    assert config["type"] == kind and read_adapter_config(directory)["type"] == kind
    assert read_adapter_settings(directory) == (model.dalora_settings if kind == "dalora" else model.lora_settings)

    loaded = load_adapter(copy.deepcopy(plain), directory)
    assert adapter_type_of(loaded).name == kind
    torch.testing.assert_close(embed(loaded, x, domains), expected, rtol=0, atol=0)
    # the type's own loader reads the new format too, and its own saver writes it
    own = (load_dalora if kind == "dalora" else load_lora)(copy.deepcopy(plain), directory)
    torch.testing.assert_close(embed(own, x, domains), expected, rtol=0, atol=0)
    (save_dalora if kind == "dalora" else save_lora)(model, tmp_path / "own")
    assert json.loads((tmp_path / "own" / CONFIG_NAME).read_text())["type"] == kind


@pytest.mark.parametrize("kind", ["lora", "dalora"])
def test_a_save_from_before_types_loads_by_its_file_names(kind, tmp_path):
    """A tiny adapter rewritten in the old layout (old file names, no ``type``) loads to the same embeddings."""
    plain = tiny()
    settings = DaLoraSettings(r=2) if kind == "dalora" else LoraSettings(r=2)
    model = randomise(apply_adapter(copy.deepcopy(plain), settings))
    directory = save_adapter(model, tmp_path / "adapter")
    settings_name, weights_name = LEGACY_FILES[kind]
    config = json.loads((directory / CONFIG_NAME).read_text())
    del config["type"]
    (directory / settings_name).write_text(json.dumps(config))
    (directory / WEIGHTS_NAME).rename(directory / weights_name)
    (directory / CONFIG_NAME).unlink()
    x = faces(model)
    domains = ["thermal"] if kind == "dalora" else None
    loaded = load_adapter(copy.deepcopy(plain), directory)
    assert adapter_type_of(loaded).name == kind
    torch.testing.assert_close(embed(loaded, x, domains), embed(model, x, domains), rtol=0, atol=0)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(MissingResourceError, match="no adapter in .*neither adapter_config.json"):
        load_adapter(tiny(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"type": "prefix-tuning", "settings": {}}))
    with pytest.raises(ValueError, match=r"unknown adapter type 'prefix-tuning'; registered: .*'dalora', 'lora'"):
        load_adapter(tiny(), tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"settings": {}}))
    with pytest.raises(ValueError, match="records no adapter type"):
        load_adapter(tiny(), tmp_path)
    with pytest.raises(ValueError, match="carries no adapter to save"):
        save_adapter(tiny(), tmp_path / "plain")
    with pytest.raises(ValueError, match="settings class of no registered adapter type"):
        apply_adapter(tiny(), object())


def test_merge_dispatch(tmp_path):
    lora = randomise(apply_adapter(tiny(), LoraSettings(r=2)))
    x = faces(lora)
    unmerged = embed(lora, x)
    with pytest.raises(ValueError, match="applies to per-domain adapters only"):
        merge_adapter(lora, "thermal")
    merged = merge_adapter(lora)
    assert not has_adapter(merged)
    torch.testing.assert_close(embed(merged, x), unmerged, atol=1e-5, rtol=1e-5)

    dalora = randomise(apply_adapter(tiny(), DaLoraSettings(r=2)))
    set_gating(dalora, "oracle")
    thermal = embed(dalora, x, ["thermal"])
    with pytest.raises(ValueError, match="name the domain to merge, one of"):
        merge_adapter(dalora)
    merged = merge_adapter(dalora, "thermal")
    assert not has_adapter(merged) and not any(isinstance(m, DaLoraLayer) for m in merged.modules())
    torch.testing.assert_close(embed(merged, x), thermal, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="carries no adapter to merge"):
        merge_adapter(merged)


# ------------------------------------------------------------------------------------------------ README example
def readme_example() -> str:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("## Add an adapter type", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def scale_type():
    """The README's toy adapter type, registered by running the README's block as a module."""
    module = types.ModuleType("readme_scale_adapter")
    sys.modules[module.__name__] = module
    try:
        exec(compile(readme_example(), "README.md#add-an-adapter-type", "exec"), module.__dict__)
        yield module
    finally:
        adapters.unregister_adapter("scale")
        del sys.modules[module.__name__]


def test_the_readme_example_registers_a_type_that_round_trips(scale_type, tmp_path):
    assert registered_types()["scale"].settings_class is scale_type.ScaleSettings
    plain = tiny()
    model = apply_adapter(copy.deepcopy(plain), scale_type.ScaleSettings("model.encoder.layer.0.mlp.fc1"))
    x = faces(model)
    torch.testing.assert_close(embed(model, x), embed(plain, x), rtol=0, atol=0)  # starts as the identity
    randomise(model, std=1.0)
    expected = embed(model, x)
    assert not torch.allclose(expected, embed(plain, x))

    directory = save_adapter(model, tmp_path / "scale")
    assert json.loads((directory / CONFIG_NAME).read_text()) == {
        "type": "scale", "settings": {"target": "model.encoder.layer.0.mlp.fc1"}}
    loaded = load_adapter(copy.deepcopy(plain), directory, gating="classifier")  # an option it does not take
    assert adapter_type_of(loaded).name == "scale"
    torch.testing.assert_close(embed(loaded, x), expected, rtol=0, atol=0)
    merged = merge_adapter(loaded)
    assert not has_adapter(merged)
    torch.testing.assert_close(embed(merged, x), expected, atol=1e-5, rtol=1e-5)


def test_a_saver_that_does_not_record_the_type_is_refused(scale_type, tmp_path):
    entry = registered_types()["scale"]
    adapters.register_adapter("scale", scale_type.ScaleSettings, apply=entry.apply, merge=entry.merge,
                              load=entry.load, detect=entry.detect, replace=True,
                              save=lambda model, directory: adapters.write_adapter(directory, "lora", {}, {}))
    model = apply_adapter(tiny(), scale_type.ScaleSettings("model.encoder.layer.0.mlp.fc1"))
    with pytest.raises(ValueError, match="with type 'lora', not 'scale'"):
        save_adapter(model, tmp_path / "scale")
    with pytest.raises(ValueError, match="already registered"):
        adapters.register_adapter("scale", scale_type.ScaleSettings, **{k: getattr(entry, k) for k in
                                                                        ("apply", "merge", "save", "load", "detect")})
