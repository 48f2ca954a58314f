"""A parameter a notebook or command does not use stops it with one clear error, before any work.

papermill only warns about a parameter the notebook does not declare and then runs on the notebook's defaults; the
review saw ``papermill 03_dalora.ipynb -p data_profile full -p train_rec ...`` train on the embedded benchmark.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from afr.experiments.settings import BaselineSettings
from afr.experiments.settings.crossdomain import CrossDomainSettings
from afr.experiments.settings.dalora import DaLoraExperimentSettings
from afr.notebook_parameters import assigned_names, check_notebook_parameters, parameter_cells
from afr.validation import SettingsError

ROOT = Path(__file__).resolve().parents[1]

SHIPPED = "# Parameters (papermill overrides these): the fields of X\nepochs = 2\nlr = 3e-4  # comment\n"


def test_assigned_names_reads_every_top_level_assignment():
    assert assigned_names("a = 1\nb: int = 2\nc = d = 3\ne += 1\nif True:\n    f = 1\n") == ["a", "b", "c", "d", "e"]
    assert assigned_names("%matplotlib inline") == []


def test_the_latest_cell_of_each_kind_is_the_one_checked():
    history = ["", SHIPPED, "# Parameters\nepoch = 3\n", "x = 1", SHIPPED.replace("lr", "learning_rate"), SHIPPED]
    cells = parameter_cells(history)
    assert cells == {"shipped": SHIPPED, "injected": "# Parameters\nepoch = 3\n"}


def test_a_parameter_passed_to_papermill_that_the_notebook_does_not_use_is_refused():
    namespace = {"In": ["", SHIPPED, "# Parameters\nepoch = 3\ntrain_rec = '/data'\n"]}
    with pytest.raises(SettingsError) as error:
        check_notebook_parameters(namespace, ["epochs", "lr"])
    message = str(error.value)
    assert "epoch, train_rec (passed to papermill)" in message
    assert "epoch -> epochs" in message and "nothing was run" in message
    assert set(error.value.names) == {"epoch", "train_rec"}


def test_a_typo_in_the_parameters_cell_is_refused_and_the_known_names_default_to_that_cell():
    typo = SHIPPED + "epoch = 3\n"
    with pytest.raises(SettingsError, match=r"epoch \(set in the parameters cell\)"):
        check_notebook_parameters({"In": ["", typo]}, ["epochs", "lr"])
    check_notebook_parameters({"In": ["", SHIPPED, "# Parameters\nlr = 0.1\n"]})  # known: the shipped cell's names
    with pytest.raises(SettingsError, match="seed"):
        check_notebook_parameters({"In": ["", SHIPPED, "# Parameters\nseed = 1\n"]})


def test_known_parameters_and_a_mapping_without_history_pass():
    check_notebook_parameters({"In": ["", SHIPPED, "# Parameters\nepochs = 3\n"]}, ["epochs", "lr"])
    check_notebook_parameters({"epoch": 3}, ["epochs"])  # the command line's options: argparse checks them


def test_settings_from_a_notebook_namespace_refuse_an_unknown_parameter():
    namespace = {name: getattr(DaLoraExperimentSettings(), name) for name in DaLoraExperimentSettings.field_names()}
    shipped = "# Parameters (papermill overrides these)\n" + "".join(f"{name} = None\n" for name in namespace)
    assert DaLoraExperimentSettings.from_mapping({**namespace, "In": ["", shipped]}).epochs == 2
    with pytest.raises(SettingsError, match="target_dir"):
        DaLoraExperimentSettings.from_mapping({**namespace, "In": ["", shipped, "# Parameters\ntarget_dir = '/x'\n"]})


@pytest.mark.parametrize("changes", [{"train_rec": "/data/casia"}, {"bins_dir": "/data/bins"},
                                     {"num_identities": 1000}, {"val_identities": 10}])
def test_a_full_profile_input_on_the_embedded_profile_is_refused(changes):
    (name,) = changes
    with pytest.raises(SettingsError, match=f"--{name.replace('_', '-')}.*embedded profile does not use it"):
        BaselineSettings(**changes)


def test_the_embedded_root_on_the_full_profile_and_a_target_folder_on_the_embedded_profile_are_refused():
    with pytest.raises(SettingsError, match="embedded_root.*full profile does not use it"):
        BaselineSettings(data_profile="full", train_rec="/data/casia", embedded_root="/data/embedded")
    with pytest.raises(SettingsError, match="target_dir"):
        CrossDomainSettings(target_dir="/data/thermal")
    assert BaselineSettings(data_profile="full", train_rec="/data/casia", val_identities=10).val_identities == 10


def test_the_command_line_refuses_a_full_profile_input_on_the_embedded_profile_before_any_work(tmp_path):
    environment = {"AFR_RESULTS": str(tmp_path / "results"), "AFR_RUNS": str(tmp_path / "runs"),
                   "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "afr", "baseline", "--train-rec", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, env=environment, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: --train-rec (setting train_rec)")
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_papermill_with_a_parameter_the_notebook_does_not_use_stops_before_any_work(tmp_path, monkeypatch):
    import papermill

    for name in ("results", "runs", "figures"):
        monkeypatch.setenv(f"AFR_{name.upper()}", str(tmp_path / name))
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(str(ROOT / "notebooks" / "06_ablations.ipynb"), str(tmp_path / "06.ipynb"),
                                   parameters={"target_dir": "/data/thermal"},  # notebook 04's and 05's, not 06's
                                   cwd=str(ROOT / "notebooks"), progress_bar=False, log_output=False)
    assert error.value.ename == "SettingsError"
    assert "does not use the parameter(s) target_dir (passed to papermill)" in error.value.evalue
    assert not any((tmp_path / name).exists() for name in ("results", "runs", "figures"))
