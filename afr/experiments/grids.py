"""The committed experiment grids: the settings the Makefile's results targets run.

:class:`CommittedGrids` mirrors the Makefile's ``make baseline-search``, ``make dalora-results``,
``make maml-results``, ``make crossdomain-results`` and ``make ablations-results`` (its ``BASELINE_SEARCH`` and
``*_RESULTS`` / ``CROSSDOMAIN_<name>`` variables); a test (``tests/test_paper.py``) checks that they agree. The
paper reports these grids' runs (:mod:`afr.paper.sources`) and the analysis keeps the ablation grid's runs only
(:mod:`afr.analysis.report`); both read them from here. Torch-free: it imports settings modules only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from afr.experiments.settings.ablations import AblationSettings
from afr.experiments.settings.baseline import BaselineSettings
from afr.experiments.settings.crossdomain import CrossDomainSettings
from afr.experiments.settings.dalora import DaLoraExperimentSettings
from afr.experiments.settings.maml import MamlExperimentSettings

__all__ = ["CommittedGrids", "SEEDS"]

#: the seeds of every committed grid
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class CommittedGrids:
    """The committed grids, as the Makefile's results targets run them (``*_RESULTS`` and ``BASELINE_SEARCH``);
    a test checks that they agree with the Makefile."""

    baseline: BaselineSettings = field(default_factory=BaselineSettings)
    #: notebook 02's validation search: (class-centre start, LoRA learning rate) x seeds, test packs not scored
    baseline_search: tuple[tuple[str, float], ...] = (("random", 1e-4), ("random", 3e-4), ("class-mean", 1e-4),
                                                      ("class-mean", 3e-4))
    baseline_search_seeds: tuple[int, ...] = (0, 1)
    dalora: DaLoraExperimentSettings = field(default_factory=lambda: DaLoraExperimentSettings(
        seeds=SEEDS, epochs=4, search_lrs=(1e-4, 3e-4), publish_adapters=True, progress=False))
    maml: MamlExperimentSettings = field(default_factory=lambda: MamlExperimentSettings(
        seeds=SEEDS, meta_steps=60, steps=(0, 1, 3, 5, 10, 25), progress=False))
    #: notebook 05's four grids (``CROSSDOMAIN_<name>``); they share the zero-shot run, the two thermal grids share
    #: their starts, and so do low quality and outdoor (both start from ORL + Yale only)
    crossdomain: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, shots=(1, 2, 4), progress=False))
    crossdomain_kall: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, shots=("all",), progress=False))
    crossdomain_lowquality: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, direction="visible->lowquality", shots=(1, 4),
        methods=("zero-shot", "lora", "dalora", "dalora+maml"), progress=False))
    crossdomain_outdoor: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, direction="indoor->outdoor", methods=("zero-shot",), progress=False))
    ablations: AblationSettings = field(default_factory=lambda: AblationSettings(
        seeds=SEEDS, components=("lora", "lora+router", "dalora", "dalora+maml", "dalora+contrastive", "full"),
        ranks=(2, 4, 8, 16, 32), expert_counts=(2, 3, 4, 5), lambda_contrastive_values=(0.01, 0.05, 0.1, 0.5),
        lambda_domain_values=(0.01, 0.05, 0.1, 0.5), inner_steps_values=(1, 3, 5, 10), meta_steps=20,
        progress=False))

    @property
    def crossdomain_grids(self) -> dict[str, CrossDomainSettings]:
        """Notebook 05's grids under the Makefile's names (``CROSSDOMAIN_GRIDS``)."""
        return {"thermal": self.crossdomain, "thermal_kall": self.crossdomain_kall,
                "lowquality": self.crossdomain_lowquality, "outdoor": self.crossdomain_outdoor}
