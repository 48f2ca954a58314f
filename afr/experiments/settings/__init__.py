"""Experiment settings, torch-free: one dataclass per experiment, the single list of its parameters.

* :mod:`~afr.experiments.settings.base`: :class:`ExperimentSettings` (checks on construction, the digest and tag of
  a run), the rule table :data:`FIELD_RULES`, :func:`setting`, and the command line built from a class
  (:func:`add_arguments`, :func:`settings_from_arguments`);
* :mod:`~afr.experiments.settings.fields`: the field groups the experiments are composed of (run, backbone, full
  profile, grid, training, DA-LoRA, meta-start), each shared setting declared once with its help;
* one module per experiment, each with its settings class and the constants its settings, the grids and the paper
  read: :mod:`.baseline` (notebook 02), :mod:`.dalora` (03), :mod:`.maml` (04), :mod:`.crossdomain` (05),
  :mod:`.ablations` (06). The recipes (:mod:`afr.experiments.dalora_vs_lora`, ...) import torch and re-export their
  experiment's settings.

Nothing here imports torch, so the CLI's ``--help``, :mod:`afr.experiments.grids` and :mod:`afr.paper` import
quickly (a test checks it).
"""
from afr.experiments.settings.base import (FIELD_RULES, ExperimentSettings, MethodSeedGrid, SettingsError,  # noqa: F401
                                           _argument_type, _float_fields, add_arguments, setting,
                                           settings_from_arguments)
from afr.experiments.settings.baseline import BaselineSettings

__all__ = ["FIELD_RULES", "BaselineSettings", "ExperimentSettings", "MethodSeedGrid", "SettingsError", "add_arguments",
           "setting", "settings_from_arguments"]
