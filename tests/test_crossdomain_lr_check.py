"""Notebook 05's stage-2 learning-rate check keeps validation curves only, never a test score, and never replaces a
summary that exists."""
import json

import pytest

from afr.experiments import crossdomain_lr_check as check
from afr.paths import PROJECT_ROOT


def test_the_summary_keeps_the_validation_curve_and_drops_the_test_scores():
    record = {"method": "lora", "seed": 1, "start": "crossdomain_pooled-start_seed1_x", "wall_seconds": 3.0,
              "environment": {"torch_threads": 1}, "test": {"k1": {"thermal": {"auc": 0.99}}},
              "adaptation": {f"k{k}": {"validation_pack": "val/thermal", "chosen_steps": 3, "losses": [2.0, 1.0],
                                       "identities": k, "validation": {"0": {"auc": 0.90, "accuracy_mean": 0.8},
                                                                      "3": {"auc": 0.93, "accuracy_mean": 0.85}}}
                             for k in check.SHOTS}}
    out = check.summary(record, 0.0003, check.command(1, 0.0003))
    assert "test" not in json.dumps({key: value for key, value in out.items() if key != "what"})
    assert out["adaptation"]["k4"] == {"validation_pack": "val/thermal", "validation_auc": {"0": 0.90, "3": 0.93},
                                       "chosen_steps": 3, "losses": [2.0, 1.0]}
    assert "--adapt-lr 0.0003" in out["what"] and "--seeds 1" in out["what"]


def test_the_runs_show_their_progress_unless_told_not_to():
    assert "--no-progress" not in check.command(1, 0.0003)
    assert check.command(1, 0.0003, progress=False)[-1] == "--no-progress"


def test_the_committed_seed_0_summaries_are_where_the_check_writes_them(monkeypatch):
    monkeypatch.setenv("AFR_RESULTS", str(PROJECT_ROOT / "results"))  # the suite points it at a scratch folder
    for rate in (0.0003, 0.001):
        path = check.summary_path(0, rate)
        assert path.is_file() and path.parent == PROJECT_ROOT / "results" / "analysis" / "crossdomain_lr"
        assert json.loads(path.read_text())["adapt_lr"] == rate


def test_an_existing_summary_is_kept_and_not_run_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AFR_RESULTS", str(tmp_path))
    kept = check.summary_path(0, 0.001)
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    ran = []
    monkeypatch.setattr(check, "run_check", lambda seed, rate, scratch, progress: ran.append((seed, rate, progress))
                        or kept)
    check.main(["--seeds", "0", "--adapt-lrs", "0.001", "0.0003"])
    assert ran == [(0, 0.0003, True)] and kept.read_text() == "{}"
    check.main(["--seeds", "1", "--adapt-lrs", "0.001", "--no-progress"])
    assert ran[-1] == (1, 0.001, False)
    assert "kept:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        check.main(["--seeds", "0"])  # no rate: refused before any run
