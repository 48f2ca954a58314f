"""The committed experiment grids: the settings the Makefile's results targets run.

:class:`CommittedGrids` mirrors the Makefile's ``make baseline-search``, ``make dalora-results``,
``make maml-results``, ``make crossdomain-results`` and ``make ablations-results`` (its ``BASELINE_SEARCH`` and
``*_RESULTS`` / ``CROSSDOMAIN_<name>`` variables); a test (``tests/test_paper.py``) checks that they agree. The
paper reports these grids' runs (:mod:`afr.paper.sources`) and the analysis keeps the ablation grid's runs only
(:mod:`afr.analysis.report`); both read them from here. Torch-free: it imports settings modules only.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from afr.experiments.settings.ablations import GROUPS, AblationSettings, grid_cells, grid_runs
from afr.experiments.settings.baseline import BaselineSettings
from afr.experiments.settings.crossdomain import CrossDomainSettings
from afr.experiments.settings.dalora import FAMILY_REPRESENTATIVE, DaLoraExperimentSettings, family
from afr.experiments.settings.dalora import METHODS as DALORA_METHODS
from afr.experiments.settings.maml import MamlExperimentSettings

__all__ = ["ABLATION_COMPONENTS", "GRID_NAMES", "PAIRED_TEST_SEEDS", "CommittedGrids", "SEEDS", "grid_labels"]

#: the seeds of every committed grid
SEEDS = (0, 1, 2)
#: the component rows of notebook 06's grids
ABLATION_COMPONENTS = ("lora", "lora+router", "dalora", "dalora+maml", "dalora+contrastive", "full")
#: the seeds of a grid whose claim a paired test decides (notebook 03's fitted grid)
PAIRED_TEST_SEEDS = (0, 1, 2, 3, 4)


#: notebook 05's first grids: stage 2's step count fixed in advance, 10 (the settings' default now chooses it on
#: validation where the target has validation identities)
FIXED_BUDGET = {"adapt_steps": 10, "choose_steps_on_validation": False}
#: notebook 05's later grids (``CROSSDOMAIN_VALIDATED`` in the Makefile): stage 2's step count chosen per run and k on
#: the target's validation identities among 0 1 3 5 10 25 steps, starts rebuilt where their adapters are missing
VALIDATED_BUDGET = {"adapt_steps": 25, "choose_steps_on_validation": True, "rebuild_starts": True}
#: notebook 05's stage-2 learning rate before the three-seed check moved the default to 3e-4: the grids run at it
#: name it, so their definitions (and run tags) stay what they were
EARLIER_ADAPT_LR = {"adapt_lr": 1e-3}
#: notebook 05's reported visible -> thermal grids (k = 1, 2, 4, and k = all), by their names in
#: :attr:`CommittedGrids.crossdomain_grids`: the paper's table and notebook 07's curves read these
REPORTED_THERMAL_GRIDS = ("thermal_lr3e4_validated", "thermal_kall_lr3e4_validated")


@dataclass(frozen=True)
class CommittedGrids:
    """The committed grids, as the Makefile's results targets run them (``*_RESULTS`` and ``BASELINE_SEARCH``);
    a test checks that they agree with the Makefile."""

    #: notebook 02's reported run: the fitted recipe (notebook 03's: centred embeddings, class-mean centres, no
    #: augmentation, 4 epochs) at the LoRA learning rate its validation search chose (:attr:`baseline_search`)
    baseline: BaselineSettings = field(default_factory=BaselineSettings)
    #: notebook 02's validation search on the fitted recipe: (class-centre start, LoRA learning rate) x seeds, test
    #: packs not scored; the same two rates notebook 03 searched
    baseline_search: tuple[tuple[str, float], ...] = (("class-mean", 1e-4), ("class-mean", 3e-4))
    baseline_search_seeds: tuple[int, ...] = (0, 1)
    #: notebook 02's first run and search (random or class-mean centres, RandAugment(4, 16), no centring): none of
    #: their runs fitted but one; their rows keep the grid names ``baseline`` and ``baseline-search``
    baseline_first: BaselineSettings = field(default_factory=lambda: BaselineSettings(
        head_init="random", centre_embeddings=False, augment=True))
    baseline_search_first: tuple[tuple[str, float], ...] = (("random", 1e-4), ("random", 3e-4), ("class-mean", 1e-4),
                                                            ("class-mean", 3e-4))
    #: notebook 03's grid with the fitted recipe (``make recipe-search``); the first grid (``grid="dalora"``: random
    #: centres, RandAugment(4, 16), publishing ``results/adapters/``) did not fit and is no longer reported
    dalora: DaLoraExperimentSettings = field(default_factory=lambda: DaLoraExperimentSettings(
        methods=DALORA_METHODS, seeds=PAIRED_TEST_SEEDS, epochs=4, search_lrs=(1e-4, 3e-4), centre_embeddings=True,
        head_init="class-mean", augment=False, progress=False, grid="dalora-fitted"))
    #: notebook 03's first grid (random centres, RandAugment(4, 16); none of its runs fitted): its runs keep the grid
    #: name ``dalora`` in the tables, and the paper counts them in its health table only
    dalora_first: DaLoraExperimentSettings = field(default_factory=lambda: DaLoraExperimentSettings(
        methods=("lora", "lora-matched", "dalora-classifier", "dalora-oracle", "dalora-uniform"), seeds=SEEDS,
        epochs=4, search_lrs=(1e-4, 3e-4), centre_embeddings=False, head_init="random", augment=True,
        publish_adapters=True, progress=False, grid="dalora"))
    #: notebook 04's reported grid: one inner step for every start (chosen on source episodes only, by
    #: ``python -m afr.experiments.maml_descent``: of the two second-order settings tried after :attr:`maml_clipped`
    #: diverged, the one whose meta-training descends in seeds 0-2 with the lowest final meta-loss), the meta-gradient
    #: clipped to norm 1, the adaptation's step count chosen per run and k on the held-out target's validation
    #: identities, its test pack scored once at that step count
    maml: MamlExperimentSettings = field(default_factory=lambda: MamlExperimentSettings(
        seeds=SEEDS, meta_steps=60, steps=(0, 1, 3, 5, 10, 25), inner_steps=1, meta_grad_clip=1.0,
        choose_steps_on_validation=True, progress=False, grid="maml-inner1"))
    #: notebook 04's grid with three inner steps, the meta-gradient clipped to norm 1 (fixed in advance from
    #: ``python -m afr.experiments.maml_descent``, source episodes only) and the step count chosen on validation as
    #: :attr:`maml`: two of its three second-order starts diverged
    maml_clipped: MamlExperimentSettings = field(default_factory=lambda: MamlExperimentSettings(
        seeds=SEEDS, meta_steps=60, steps=(0, 1, 3, 5, 10, 25), meta_grad_clip=1.0, choose_steps_on_validation=True,
        progress=False, grid="maml-validated"))
    #: notebook 04's first grid (no clipping: its second-order starts diverged; test pack scored at every step count):
    #: its rows keep the grid name ``maml``
    maml_first: MamlExperimentSettings = field(default_factory=lambda: MamlExperimentSettings(
        seeds=SEEDS, meta_steps=60, steps=(0, 1, 3, 5, 10, 25), progress=False, grid="maml"))
    #: notebook 05's grids (``CROSSDOMAIN_<name>``); they share the zero-shot run, the thermal grids share their
    #: starts, and so do the low-quality grids and outdoor (both start from ORL + Yale only). The first grids took
    #: 10 stage-2 steps fixed in advance (:data:`FIXED_BUDGET`)
    crossdomain: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, shots=(1, 2, 4), **FIXED_BUDGET, **EARLIER_ADAPT_LR, progress=False,
        grid="crossdomain-thermal"))
    crossdomain_kall: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, shots=("all",), **FIXED_BUDGET, **EARLIER_ADAPT_LR, progress=False,
        grid="crossdomain-thermal_kall"))
    #: notebook 05's visible -> thermal grids with stage 2's step count chosen per run and k on the thermal validation
    #: identities (``val/thermal.bin``) among 0 1 3 5 10 25 steps, the test packs scored once at it, at the learning
    #: rate 1e-3 that a first, one-seed check kept (``results/analysis/crossdomain_lr/``); the starts are the first
    #: grids' (a start does not depend on stage 2), rebuilt where their adapters are not on the machine
    crossdomain_validated: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, shots=(1, 2, 4), **VALIDATED_BUDGET, **EARLIER_ADAPT_LR,
        progress=False, grid="crossdomain-thermal_validated"))
    crossdomain_kall_validated: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, shots=("all",), **VALIDATED_BUDGET, **EARLIER_ADAPT_LR,
        progress=False, grid="crossdomain-thermal_kall_validated"))
    #: the two thermal grids above again at stage-2 rate 3e-4 (the reported ones; notebook 05's default): the rate the
    #: validation-only check prefers over three seeds (``results/analysis/crossdomain_lr/``, its rule fixed before the
    #: third seed ran); the 1e-3 grids are kept
    crossdomain_validated_lr3e4: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, shots=(1, 2, 4), **VALIDATED_BUDGET, adapt_lr=3e-4,
        progress=False, grid="crossdomain-thermal_lr3e4_validated"))
    crossdomain_kall_validated_lr3e4: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, shots=("all",), **VALIDATED_BUDGET, adapt_lr=3e-4,
        progress=False, grid="crossdomain-thermal_kall_lr3e4_validated"))
    crossdomain_lowquality: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, direction="visible->lowquality", shots=(1, 4),
        methods=("zero-shot", "lora", "dalora", "dalora+maml"), **FIXED_BUDGET, **EARLIER_ADAPT_LR, progress=False,
        grid="crossdomain-lowquality"))
    #: notebook 05's visible -> low quality grid with stage 2's step count chosen per run and k on the low-quality
    #: validation identities (``val/lowquality.bin``) as the thermal grids', the same candidates and learning rate
    #: (fixed in advance: the thermal grids' check); its starts are the first low-quality grid's
    crossdomain_lowquality_validated: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, direction="visible->lowquality", shots=(1, 4),
        methods=("zero-shot", "lora", "dalora", "dalora+maml"), **VALIDATED_BUDGET, **EARLIER_ADAPT_LR,
        progress=False, grid="crossdomain-lowquality_validated"))
    #: the low-quality grid above again at stage-2 rate 3e-4 (its rate was fixed as the thermal grids'; they moved)
    crossdomain_lowquality_validated_lr3e4: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, direction="visible->lowquality", shots=(1, 4),
        methods=("zero-shot", "lora", "dalora", "dalora+maml"), **VALIDATED_BUDGET, adapt_lr=3e-4,
        progress=False, grid="crossdomain-lowquality_lr3e4_validated"))
    crossdomain_outdoor: CrossDomainSettings = field(default_factory=lambda: CrossDomainSettings(
        seeds=SEEDS, meta_steps=60, direction="indoor->outdoor", methods=("zero-shot",), **EARLIER_ADAPT_LR,
        progress=False, grid="crossdomain-outdoor"))
    #: notebook 06's grid with notebook 03's fitted recipe and budget (4 epochs, the learning rate 03 chose on
    #: validation for both families); its MAML starts are the first grid's (a start does not depend on the recipe),
    #: rebuilt where their adapters are not on the machine. Run group by group: a group it has not run yet is
    #: reported from :attr:`ablations_first` (:meth:`reported_ablation_runs`)
    ablations: AblationSettings = field(default_factory=lambda: dataclasses.replace(
        _first_ablation_grid(), epochs=4, centre_embeddings=True, head_init="class-mean", augment=False,
        rebuild_starts=True, grid="ablations-fitted"))
    #: notebook 06's first grid: 1 epoch, random centres, RandAugment(4, 16) (not fitted: issue 18); its rows keep the
    #: grid name ``ablations``
    ablations_first: AblationSettings = field(default_factory=lambda: _first_ablation_grid())
    #: the fitted grid's MAML inner-step cells 1 (the validation choice) and 3 (the full model) over the five seeds a
    #: paired test against notebook 03's parameter-matched LoRA needs (``make ablations-inner1-results``; seeds 0-2
    #: are the fitted grid's own runs, reused)
    ablations_inner1: AblationSettings = field(default_factory=lambda: dataclasses.replace(
        _first_ablation_grid(), epochs=4, centre_embeddings=True, head_init="class-mean", augment=False,
        rebuild_starts=True, seeds=PAIRED_TEST_SEEDS, groups=("inner_steps",), inner_steps_values=(1, 3),
        grid="ablations-inner1"))
    #: :attr:`ablations_inner1` with MAML starts meta-trained 60 outer steps (notebooks 04 and 05's count; 20 let
    #: 10 of the fitted grid's 24 starts end above where they began) with the meta-gradient clipped to norm 1
    #: (notebook 04's clip); both fixed in advance, before any of its runs (``make ablations-inner1-meta60-results``)
    ablations_inner1_meta60: AblationSettings = field(default_factory=lambda: dataclasses.replace(
        _first_ablation_grid(), epochs=4, centre_embeddings=True, head_init="class-mean", augment=False,
        rebuild_starts=True, seeds=PAIRED_TEST_SEEDS, groups=("inner_steps",), inner_steps_values=(1, 3),
        meta_steps=60, meta_grad_clip=1.0, grid="ablations-inner1-meta60"))
    #: the fitted grid's cells whose runs start from the rank-8, three-inner-step MAML start (the + MAML row, the
    #: full model, the λ1, λ2 and K sweeps), seeds 0-2, with :attr:`ablations_inner1_meta60`'s 60-step clipped starts
    #: (the same starts; its seeds 0-2 of three inner steps are this grid's full model). The rows without a MAML
    #: start are the fitted grid's (the start settings are in their tags, not in their computation)
    ablations_meta60: AblationSettings = field(default_factory=lambda: dataclasses.replace(
        _first_ablation_grid(), epochs=4, centre_embeddings=True, head_init="class-mean", augment=False,
        rebuild_starts=True, groups=("component", "lambda_contrastive", "lambda_domain", "experts"),
        components=("dalora+maml", "full"), meta_steps=60, meta_grad_clip=1.0, grid="ablations-fitted-meta60"))
    #: the rest of the fitted grid's cells with a MAML start, with 60-step clipped starts: the rank sweep and inner
    #: steps 5 and 10, seeds 0-2 (18 new starts; rank 8 with three inner steps, each group's default, is
    #: :attr:`ablations_meta60`'s full model, reused)
    ablations_rank_inner_meta60: AblationSettings = field(default_factory=lambda: dataclasses.replace(
        _first_ablation_grid(), epochs=4, centre_embeddings=True, head_init="class-mean", augment=False,
        rebuild_starts=True, groups=("rank", "inner_steps"), ranks=(2, 4, 8, 16, 32), inner_steps_values=(3, 5, 10),
        meta_steps=60, meta_grad_clip=1.0, grid="ablations-rank-inner-meta60"))

    @property
    def crossdomain_grids(self) -> dict[str, CrossDomainSettings]:
        """Notebook 05's grids under the Makefile's names (``CROSSDOMAIN_GRIDS``)."""
        return {"thermal": self.crossdomain, "thermal_kall": self.crossdomain_kall,
                "thermal_validated": self.crossdomain_validated,
                "thermal_kall_validated": self.crossdomain_kall_validated,
                "thermal_lr3e4_validated": self.crossdomain_validated_lr3e4,
                "thermal_kall_lr3e4_validated": self.crossdomain_kall_validated_lr3e4,
                "lowquality": self.crossdomain_lowquality,
                "lowquality_validated": self.crossdomain_lowquality_validated,
                "lowquality_lr3e4_validated": self.crossdomain_lowquality_validated_lr3e4,
                "outdoor": self.crossdomain_outdoor}

    # ------------------------------------------------------------------------------------------ which runs
    def dalora_learning_rates(self, dalora_table, grid: DaLoraExperimentSettings | None = None) -> dict[str, float]:
        """Notebook 03's choice of the learning rate per adapter family: the highest mean validation AUC (last
        epoch, over the validation packs) of the family's representative run at each searched rate, first seed,
        read from the ``val`` rows of ``dalora_table``; the grid's ``lr`` when nothing was searched or recorded.
        ``grid``: the committed grid (default) or another, e.g. :attr:`dalora_first`."""
        grid = grid or self.dalora
        best = {name: grid.lr for name in FAMILY_REPRESENTATIVE}
        scores: dict[str, dict[float, float]] = {}
        for lr in grid.search_lrs:
            for name, method in FAMILY_REPRESENTATIVE.items():
                tag = grid.for_run(method, grid.seeds[0], lr=lr, score_test=False).tag
                rows = dalora_table[(dalora_table["run"] == tag) & (dalora_table["split"] == "val")
                                    & (dalora_table["metric"] == "auc")]
                if len(rows):
                    scores.setdefault(name, {})[lr] = float(rows["value"].mean())
        for name, by_lr in scores.items():
            best[name] = max(by_lr, key=lambda lr: (by_lr[lr], -list(by_lr).index(lr)))  # the first of equals
        return best

    def dalora_tags(self, dalora_table, grid: DaLoraExperimentSettings | None = None) -> dict[tuple[str, int], str]:
        """Every (method, seed) run of notebook 03's grid (``grid``: default the committed one), at the learning rates
        chosen on validation."""
        grid = grid or self.dalora
        rates = self.dalora_learning_rates(dalora_table, grid)
        return {(method, seed): grid.for_run(method, seed, lr=rates[family(method)]).tag
                for method in grid.methods for seed in grid.seeds}

    def dalora_zero_shot_tag(self, grid: DaLoraExperimentSettings | None = None) -> str:
        grid = grid or self.dalora
        return f"{grid.experiment}_zero-shot_{grid.for_run('lora', 0).digest()}"

    def dalora_grid_runs(self, dalora_table, grid: DaLoraExperimentSettings) -> set[str]:
        """Every run of a notebook 03 grid: its (method, seed) runs, its zero-shot rows and its learning-rate search."""
        search = {grid.for_run(method, grid.seeds[0], lr=lr, score_test=False).tag
                  for lr in grid.search_lrs for method in FAMILY_REPRESENTATIVE.values()}
        return {*self.dalora_tags(dalora_table, grid).values(), self.dalora_zero_shot_tag(grid), *search}

    @staticmethod
    def recipe_search_tags() -> set[str]:
        """The runs of ``make recipe-search`` (:mod:`afr.experiments.recipe_search`)."""
        from afr.experiments.recipe_search import CANDIDATES, SEARCH_SEEDS, candidate_settings

        return {candidate_settings(name).for_run("lora", seed).tag for name in CANDIDATES for seed in SEARCH_SEEDS}

    def baseline_search_tags(self, first: bool = False) -> dict[str, tuple[str, float]]:
        """``{tag: (head_init, lr)}`` of notebook 02's validation search runs (test packs not scored) on the fitted
        recipe, or (``first``) of the first search."""
        base, candidates = (self.baseline_first, self.baseline_search_first) if first else \
            (self.baseline, self.baseline_search)
        return {dataclasses.replace(base, head_init=init, lr=lr, seed=seed, score_test=False).tag: (init, lr)
                for init, lr in candidates for seed in self.baseline_search_seeds}

    def maml_tags(self, grid: MamlExperimentSettings | None = None) -> dict[tuple[str, int], str]:
        """Every (method, seed) run of notebook 04's grid (``grid``: default the committed one)."""
        grid = grid or self.maml
        return {(method, seed): grid.for_run(method, seed).tag for method in grid.methods for seed in grid.seeds}

    def crossdomain_tags(self, name: str = "thermal") -> dict[tuple[str, int], str]:
        """Every run of notebook 05's grid ``name`` (a key of :attr:`crossdomain_grids`): the adapted methods, the
        zero-shot run and the stage-1 starts, as :func:`afr.experiments.crossdomain.run_grid` runs them."""
        settings = self.crossdomain_grids[name]
        tags = {}
        for seed in settings.seeds:
            tags[("zero-shot", seed)] = settings.for_run("zero-shot", seed).tag
            for start in settings.grid_starts():
                tags[(f"{start}-start", seed)] = settings.for_run("lora", seed).start_tag(start)
            for method in settings.adapted_methods():
                tags[(method, seed)] = settings.for_run(method, seed).tag
        return tags

    def reported_ablation_runs(self, ablation_table) -> dict[str, set[str]]:
        """``{group: run tags}`` of notebook 06's reported rows: each group (component table, each sweep) from the
        fitted grid :attr:`ablations` once ``ablation_table`` holds every run of that group, else from the first grid
        :attr:`ablations_first` (a group is never mixed from the two)."""
        recorded = set(ablation_table["run"]) if ablation_table is not None and len(ablation_table) else set()
        fitted, first = _runs_by_group(self.ablations), _runs_by_group(self.ablations_first)
        return {group: fitted[group] if fitted[group] and fitted[group] <= recorded else first[group]
                for group in GROUPS}

    def reported_ablation_rows(self, ablation_table):
        """The rows of ``ablation_table`` (notebook 06's long table) that are reported: each one's run among its
        group's :meth:`reported_ablation_runs` (a run serving cells of several groups is kept in each of them)."""
        reported = self.reported_ablation_runs(ablation_table)
        groups = ablation_table["group"] if "group" in ablation_table else [None] * len(ablation_table)
        return ablation_table[[run in reported.get(group, ()) for run, group in zip(ablation_table["run"], groups)]]

    def fitted_ablation_groups(self, ablation_table) -> tuple[str, ...]:
        """The groups of notebook 06 reported from the fitted grid (:meth:`reported_ablation_runs`)."""
        fitted = grid_runs(self.ablations)
        return tuple(group for group, tags in self.reported_ablation_runs(ablation_table).items()
                     if tags and tags <= fitted)

    def runs_by_grid(self, tables: Mapping[str, Any]) -> dict[str, dict[str, set[str]]]:
        """``{experiment: {grid name: run tags}}`` of every committed grid; ``tables`` maps an experiment to its
        long table (notebook 03's grid depends on the learning rates its search chose, read from the table). The
        names are those of :data:`GRID_NAMES`, written in the tables' ``grid`` column."""
        dalora_table = tables["dalora"]
        return {
            "baseline": {"baseline": {self.baseline_first.tag},
                         "baseline-search": set(self.baseline_search_tags(first=True)),
                         "baseline-fitted": {self.baseline.tag}, "baseline-search-fitted": set(self.baseline_search_tags())},
            "dalora": {self.dalora_first.grid: self.dalora_grid_runs(dalora_table, self.dalora_first),
                       self.dalora.grid: self.dalora_grid_runs(dalora_table, self.dalora),
                       "recipe-search": self.recipe_search_tags()},
            "maml": {self.maml_first.grid: set(self.maml_tags(self.maml_first).values()),
                     self.maml_clipped.grid: set(self.maml_tags(self.maml_clipped).values()),
                     self.maml.grid: set(self.maml_tags().values())},
            "crossdomain": {f"crossdomain-{name}": set(self.crossdomain_tags(name).values())
                            for name in self.crossdomain_grids},
            "ablations": {self.ablations_first.grid: grid_runs(self.ablations_first),
                          self.ablations.grid: grid_runs(self.ablations),
                          self.ablations_inner1.grid: grid_runs(self.ablations_inner1),
                          self.ablations_inner1_meta60.grid: grid_runs(self.ablations_inner1_meta60),
                          self.ablations_meta60.grid: grid_runs(self.ablations_meta60),
                          self.ablations_rank_inner_meta60.grid: grid_runs(self.ablations_rank_inner_meta60)},
        }


def _first_ablation_grid() -> AblationSettings:
    """Notebook 06's first committed grid (the fitted one is it with notebook 03's recipe and budget)."""
    return AblationSettings(
        seeds=SEEDS, components=ABLATION_COMPONENTS, ranks=(2, 4, 8, 16, 32), expert_counts=(2, 3, 4, 5),
        lambda_contrastive_values=(0.01, 0.05, 0.1, 0.5), lambda_domain_values=(0.01, 0.05, 0.1, 0.5),
        inner_steps_values=(1, 3, 5, 10), meta_steps=20, centre_embeddings=False, head_init="random", augment=True,
        progress=False, grid="ablations")


def _runs_by_group(grid: AblationSettings) -> dict[str, set[str]]:
    """``{group: run tags}`` of an ablation grid's cells, every group of :data:`GROUPS` present."""
    runs: dict[str, set[str]] = {group: set() for group in GROUPS}
    for cell in grid_cells(grid):
        runs[cell.group].add(cell.settings.tag)
    return runs


#: the values of the tables' ``grid`` column (a run shared by grids names each, joined by ``;``); demo and search
#: runs outside these grids have an empty cell
GRID_NAMES = ("baseline", "baseline-search", "baseline-fitted", "baseline-search-fitted", "dalora", "recipe-search", "dalora-fitted", "maml", "maml-validated",
              "maml-inner1", "crossdomain-thermal", "crossdomain-thermal_kall", "crossdomain-thermal_validated",
              "crossdomain-thermal_kall_validated", "crossdomain-thermal_lr3e4_validated",
              "crossdomain-thermal_kall_lr3e4_validated", "crossdomain-lowquality", "crossdomain-lowquality_validated",
              "crossdomain-lowquality_lr3e4_validated", "crossdomain-outdoor", "ablations",
              "ablations-fitted", "ablations-inner1", "ablations-inner1-meta60",
              "ablations-fitted-meta60", "ablations-rank-inner-meta60")


def grid_labels(grids: CommittedGrids, tables: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """``{experiment: {run tag: "grid;grid"}}``: the ``grid`` cell of each committed grid's runs."""
    labels: dict[str, dict[str, list[str]]] = {}
    for experiment, by_grid in grids.runs_by_grid(tables).items():
        for name in GRID_NAMES:
            for tag in sorted(by_grid.get(name, ())):
                labels.setdefault(experiment, {}).setdefault(tag, []).append(name)
    return {experiment: {tag: ";".join(names) for tag, names in runs.items()} for experiment, runs in labels.items()}


def label_committed_tables(grids: CommittedGrids | None = None) -> dict[str, int]:
    """Write every committed grid's name into the ``grid`` column of its runs' rows in ``results/tables/``
    (:func:`afr.experiments.records.label_runs`: names already there are kept, nothing else changes); returns the
    number of labelled runs per table. Run by ``python -m afr.experiments.grids``."""
    from afr.experiments.records import label_runs, read_table

    grids = grids or CommittedGrids()
    names = ("baseline", "dalora", "maml", "crossdomain", "ablations")
    tables = {name: read_table(name) for name in names}
    labelled = {}
    for experiment, labels in grid_labels(grids, tables).items():
        present = set(tables[experiment]["run"]) if len(tables[experiment]) else set()
        label_runs(experiment, {run: label for run, label in labels.items() if run in present}, order=GRID_NAMES)
        labelled[experiment] = len(present & set(labels))
    return labelled


if __name__ == "__main__":
    for table, count in label_committed_tables().items():
        print(f"results/tables/{table}.csv: {count} runs of committed grids labelled")
