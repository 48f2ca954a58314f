"""Regression checks against committed records: agree within the tolerances, name every difference beyond them."""
from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from afr.experiments.reference import TOLERANCES, compare_grid_with_committed, compare_with_reference
from afr.paths import PROJECT_ROOT

DALORA_RECORD = PROJECT_ROOT / "results" / "dalora" / "dalora_lora_seed0_601b4b1a.json"
BASELINE_RECORD = PROJECT_ROOT / "results" / "baseline_embedded_dlib-resnet29_r8_seed0_48dc7d93.json"


@pytest.mark.parametrize("path, leaf", [(DALORA_RECORD, ("thermal",)), (BASELINE_RECORD, ("lora", "thermal"))])
def test_a_record_agrees_within_tolerance_and_every_larger_difference_is_named(path, leaf):
    reference = json.loads(path.read_text())
    assert "agrees with the committed result" in compare_with_reference(copy.deepcopy(reference), reference)

    def nudged(metric: str, delta: float) -> dict:
        result = copy.deepcopy(reference)
        metrics = result["test"]
        for key in leaf:
            metrics = metrics[key]
        metrics[metric] += delta
        return result

    for metric, tolerance in TOLERANCES.items():
        compare_with_reference(nudged(metric, 0.8 * tolerance), reference)
        with pytest.raises(AssertionError, match="/".join(leaf) + f"/{metric}"):
            compare_with_reference(nudged(metric, 1.5 * tolerance), reference)
    missing = copy.deepcopy(reference)
    section = missing["test"]
    for key in leaf[:-1]:
        section = section[key]
    del section[leaf[-1]]
    with pytest.raises(AssertionError, match="missing"):
        compare_with_reference(missing, reference)


def test_a_grid_is_compared_run_by_run_with_the_committed_records():
    record = json.loads(DALORA_RECORD.read_text())
    assert compare_grid_with_committed({("lora", 0): SimpleNamespace(record=record)}).startswith("1 run(s) agree")
    unknown = {**record, "tag": "dalora_lora_seed0_00000000"}
    assert "nothing to compare" in compare_grid_with_committed({("lora", 0): SimpleNamespace(record=unknown)})
    off = copy.deepcopy(record)
    off["test"]["lowquality"]["auc"] -= 0.01
    with pytest.raises(AssertionError, match="lowquality/auc"):
        compare_grid_with_committed({("lora", 0): SimpleNamespace(record=off)})
