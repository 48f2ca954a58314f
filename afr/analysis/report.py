"""Notebook 07 as a library: settings, the figures it writes, and the numbers they state.

:class:`FigureReport` reads the committed results (``settings.results_dir``, default the project's
``results/``) and the embedded benchmark's test packs, embeds the packs once per model, and writes each figure
to :func:`afr.paths.figures_root` and every number a figure states to
``results_root()/analysis/figures.json`` (a flat dict of numbers, written atomically after each figure, so the
paper generator can turn each key into a LaTeX macro). It trains nothing.

**Where a run writes.** Outputs that already exist there (in a clone: the committed figures and figures.json) are
replaced only with ``overwrite=True`` (``make demo``). Without it the run writes everything -- figures, figures.json
and the regenerated paper files -- into the git-ignored scratch folder :data:`SCRATCH_DIR` (``build/07_figures/``)
and says so, so that running notebook 07 as shipped leaves every tracked file unchanged; where nothing exists yet
(``make test``'s scratch ``$AFR_FIGURES`` / ``$AFR_RESULTS``) it writes there. Paths are shown relative to the
project root (:func:`shown`).

**What is not there.** A results folder of full-profile runs (notebooks 02-05 with ``data_profile = "full"``) has
no published adapters and no DA-LoRA gates, and a GPU box may lack the embedded benchmark: the report draws what
exists and, for each figure that it cannot draw, :meth:`FigureReport.save` returns one line saying what is missing
and which notebook or command produces it (:attr:`FigureReport.missing`). The shipped default ``adapters``
(:data:`DEFAULT_ADAPTERS`) are used where published; an adapter named otherwise must exist, and a missing one is
one error before any work.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from afr.analysis.committed import (RECORD_FOLDERS, ablation_sensitivity, benchmark_summary, committed_results_dir,
                                    crossdomain_curves, dalora_grid_records, dalora_grid_tags, full_profile_rows,
                                    dalora_zero_shot_test, gate_matrices, maml_curves, read_table)
from afr.analysis.decisions import ProtocolDecisions
from afr.analysis.embeddings import ZERO_SHOT, PackEmbedder, adapter_centre, published_seeds
from afr.analysis.errors import FALSE_ACCEPT, common_traits, error_analysis, worst_errors
from afr.analysis.explorer import ThresholdExplorer, answers_input
from afr.analysis.packs import labelled_test_packs
from afr.analysis.plots import (FIGURE_NAMES, benchmarks_figure, confusion_figure, curves_figure, errors_figure,
                                figure_paths, gates_figure, roc_figure, saliency_figure, save_figure,
                                sensitivity_figure, tsne_figure)
from afr.analysis.roc import pack_roc
from afr.analysis.saliency import DEFAULT_CAM_LAYER, grad_cam
from afr.analysis.tsne import collect_points, identity_cosines, tsne_coordinates
from afr.data.embedded import load_embedded
from afr.eval.extract import chips_to_tensor
from afr.io import atomic_write_text
from afr.notebook_parameters import check_notebook_parameters
from afr.paths import PROJECT_ROOT, MissingResourceError, figures_root, results_root
from afr.paths import shown_path as shown  # noqa: F401 (importable here)

__all__ = ["AnalysisSettings", "DEFAULT_ADAPTERS", "FigureReport", "SCRATCH_DIR", "existing_outputs", "numbers_path",
           "shown"]

#: where a run without ``overwrite`` writes when the destination already holds outputs (git-ignored ``build/``)
SCRATCH_DIR = PROJECT_ROOT / "build" / "07_figures"
#: the adapters drawn by default, those of them that are published: notebook 03's fitted grid, seed 0
#: (``make publish-adapters``, :mod:`afr.experiments.publish`)
DEFAULT_ADAPTERS = ("dalora-fitted/dalora-classifier_seed0", "dalora-fitted/lora_seed0")
#: what produces each input a figure may lack
ADAPTERS_FROM = ("notebook 03's committed grid (make dalora-results) trains them and make publish-adapters publishes "
                 "them in results/adapters/dalora-fitted/")
PACKS_FROM = "notebook 01 (make data, or python -m afr build-embedded) builds them"


@dataclass
class AnalysisSettings:
    """Notebook 07's parameters (its ``parameters`` cell mirrors these fields)."""

    results_dir: str | None = None  # committed results to READ (default: the project's results/)
    embedded_root: str | None = None  # embedded benchmark (default data/processed/embedded)
    backbone: str = "dlib-resnet29"  # the pretrained network the committed adapters were trained on
    weights: str | None = None  # its weights (default: the shared dlib weights)
    adapters: tuple[str, ...] = DEFAULT_ADAPTERS  # first = "the adapted model"; the default: those published
    gates_method: str = "dalora-classifier"  # the DA-LoRA row whose records' gates are drawn
    tsne_perplexity: float = 30.0
    seed: int = 0  # t-SNE's random state
    n_errors: int = 3  # worst false accepts and worst false rejects per domain in the gallery
    cam_layer: str = DEFAULT_CAM_LAYER
    vit_backbone: str = "dinov2-vits14"  # for attention maps, only when vit_weights is given
    vit_weights: str | None = None
    interactive: bool = True  # build the widgets where a frontend can show them (see afr.analysis.explorer)
    overwrite: bool = False  # replace existing figures / figures.json (else: write to SCRATCH_DIR and say so)
    progress: bool | None = None  # tqdm.auto bars; None: only when an interactive frontend runs the cells

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "AnalysisSettings":
        """The settings from a notebook's globals (papermill parameters); other names are ignored, but a parameters
        cell (shipped or injected) that assigns a name which is not a setting is refused first."""
        check_notebook_parameters(values, [f.name for f in fields(cls)], f"this notebook ({cls.__name__})")
        settings = cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
        settings.adapters = tuple(settings.adapters)
        if not settings.adapters:
            raise ValueError("adapters must name at least one committed adapter (results/adapters/<name>)")
        return settings

    @property
    def models(self) -> tuple[str, ...]:
        return (ZERO_SHOT, *self.adapters)

    @property
    def adapted(self) -> str | None:
        """The first adapter (None when none of the default adapters is published)."""
        return self.adapters[0] if self.adapters else None


def numbers_path(results: Path | None = None) -> Path:
    """Where the figures' numbers go: ``<results>/analysis/figures.json`` (default ``results_root()``)."""
    return (results if results is not None else results_root()) / "analysis" / "figures.json"


def existing_outputs(figures: Path | None = None, results: Path | None = None) -> list[Path]:
    """The figure files and figures.json that a run writing to ``figures`` / ``results`` would replace (default:
    ``figures_root()`` / ``results_root()``)."""
    figures = figures if figures is not None else figures_root()
    paths = [path for name in FIGURE_NAMES for path in figure_paths(figures, name)] + [numbers_path(results)]
    return [path for path in paths if path.exists()]


def _clean(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _assert_matches_record(what: str, metric: str, value: float, committed: float, source: str,
                           tolerance: float) -> None:
    """AssertionError when ``value`` (``what``'s ``metric`` measured here) is more than ``tolerance`` from the
    ``committed`` one that ``source`` holds."""
    if abs(value - committed) > tolerance:
        raise AssertionError(f"{what}: {metric} {value:.4f} here, {committed:.4f} in {source}")


@dataclass
class FigureReport:
    """Everything notebook 07 draws; each method saves its figure and records the numbers it states."""

    settings: AnalysisSettings
    numbers: dict[str, float | int | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.figures_dir, self.results_out = figures_root(), results_root()
        self.paper_dir: Path | None = None  # None: afr.paper.generate.regenerate_paper's own choice
        existing = existing_outputs(self.figures_dir, self.results_out)
        self.scratch = bool(existing) and not self.settings.overwrite
        if self.scratch:
            self.figures_dir, self.results_out = SCRATCH_DIR / "figures", SCRATCH_DIR / "results"
            self.paper_dir = SCRATCH_DIR / "paper_generated"
            self.destination = (f"{shown(existing[0].parent)}/ already holds {len(existing)} output(s) of this notebook "
                                f"(e.g. {existing[0].name}): kept as they are; this run writes its figures, numbers "
                                f"and paper files to the scratch folder {shown(SCRATCH_DIR)}/ "
                                "(set overwrite = True to replace them)")
        else:
            self.destination = (f"figures to {shown(self.figures_dir)}/, numbers to "
                                f"{shown(numbers_path(self.results_out))}"
                                + (" (overwrite = True: existing outputs are replaced)" if existing else ""))
        self.numbers_file = numbers_path(self.results_out)
        progress = answers_input() if self.settings.progress is None else bool(self.settings.progress)
        self.results_dir = committed_results_dir(self.settings.results_dir)
        #: figure name -> the one line saying why it is not drawn (what is missing, what produces it)
        self.missing: dict[str, str] = {}
        try:
            self.benchmark = load_embedded(self.settings.embedded_root)
            self.packs = labelled_test_packs(self.benchmark)
        except FileNotFoundError as error:
            self.benchmark, self.packs = None, {}
            self.missing["packs"] = f"the embedded test packs are missing ({error}); {PACKS_FROM}"
        self.embedder = PackEmbedder(self.packs, self.results_dir, self.settings.backbone, self.settings.weights,
                                     progress=progress)
        self.settings.adapters = self._published_adapters()  # an adapter named by the user fails here, before any work
        self.embedder.zero_shot_centre = self._shared_centre()  # adapters with different centres fail here too
        self.explorer = ThresholdExplorer(self.embedder, self.settings.models)
        if self.numbers_file.is_file() and (self.settings.overwrite or self.scratch):
            self.numbers_file.unlink()  # stale keys of an earlier run must not survive

    def _published_adapters(self) -> tuple[str, ...]:
        """``settings.adapters`` that are published; the default ones that are not are noted in :attr:`missing`,
        any other missing one raises :class:`~afr.paths.MissingResourceError`."""
        found, absent = [], []
        for name in self.settings.adapters:
            try:
                self.embedder.choice(name)
                found.append(name)
            except MissingResourceError:
                if tuple(self.settings.adapters) != DEFAULT_ADAPTERS:
                    raise
                absent.append(name)
        if absent:
            self.missing["adapters"] = (f"the default adapters {', '.join(absent)} are not in "
                                        f"{shown(self.results_dir / 'adapters')}/; {ADAPTERS_FROM}")
        return tuple(found)

    def _shared_centre(self):
        """The embedding centre every analysed adapter's run subtracted (the zero-shot reference subtracts it too), or
        None when none did; adapters trained with different centres cannot share one zero-shot reference and are
        refused (:class:`ValueError`, before any work)."""
        def same(a, b) -> bool:
            if (a is None) != (b is None):
                return False
            return a is None or torch.allclose(a, b, atol=1e-6)

        centres = {name: adapter_centre(self.embedder.choice(name)) for name in self.settings.adapters}
        first = next(iter(centres.values()), None)
        for name, centre in centres.items():
            if not same(centre, first):
                raise ValueError(f"adapters {', '.join(centres)}: their runs subtracted different embedding centres "
                                 f"({name} differs from {self.settings.adapters[0]}), so no one zero-shot reference "
                                 "fits them; draw them in separate runs of this notebook")
        return first

    def _not_drawn(self, name: str, *needs: str) -> bool:
        """Whether figure ``name`` cannot be drawn for lack of ``needs`` (``"packs"``, ``"adapters"``): if so its
        line goes to :attr:`missing`."""
        lacking = [need for need in needs if (need == "packs" and not self.packs)
                   or (need == "adapters" and self.settings.adapted is None)]
        if lacking:
            reasons = [self.missing.get(need, f"no {need}") for need in lacking]
            self.missing[name] = f"{name}: not drawn: " + "; ".join(reasons)
        return bool(lacking)

    def missing_lines(self) -> str:
        """One line per missing input (empty when nothing is missing)."""
        return "\n".join(self.missing.values())

    # ------------------------------------------------------------------ bookkeeping
    def record(self, values: Mapping[str, float | int | None]) -> None:
        """Add numbers and rewrite figures.json (atomically, keys sorted)."""
        self.numbers.update({key: (None if value is None else _clean(value) if isinstance(value, float) else value)
                             for key, value in values.items()})
        self.numbers_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.numbers_file, json.dumps(dict(sorted(self.numbers.items())), indent=1) + "\n")

    def save(self, fig, name: str) -> str:
        """Write ``fig`` as ``fig_<name>.pdf`` and ``.png``; a figure that was not drawn (None) writes nothing and
        its line says what is missing."""
        if fig is None:
            return self.missing.get(name, f"{name}: not drawn")
        pdf, png = save_figure(fig, name, self.figures_dir)
        return f"{pdf.name} and {png.name} written to {shown(pdf.parent)}/"

    def decisions(self, model: str, domain: str) -> ProtocolDecisions:
        return self.explorer.decisions(model, domain)

    def data_summary(self) -> str:
        """The test packs, their distinct chips and the identities they share across domains."""
        lines = []
        domains_of: dict[str, set[str]] = {}
        for domain, pack in self.packs.items():
            identities = {row["identity"] for row in pack.chip_rows}
            for identity in identities:
                domains_of.setdefault(identity, set()).add(domain)
            lines.append(f"{domain:<11} {len(pack.pack):4d} pairs  {len(pack.chip_rows):4d} distinct chips  "
                         f"{len(identities):3d} identities")
        shared = sorted({" + ".join(sorted(d)) for d in domains_of.values() if len(d) > 1})
        counts = {combo: sum(1 for d in domains_of.values() if " + ".join(sorted(d)) == combo) for combo in shared}
        lines.append("identities in more than one domain: "
                     + (", ".join(f"{n} in {combo}" for combo, n in counts.items()) or "none"))
        return "\n".join(lines)

    # ------------------------------------------------------------------ figures
    def tsne(self):
        """t-SNE before and after adaptation, with the same-identity cosines (across / within domains)."""
        if self._not_drawn("tsne", "packs", "adapters"):
            return None, []
        panels = []
        for model in (ZERO_SHOT, self.settings.adapted):
            points = collect_points(self.embedder, model)
            xy = tsne_coordinates(points, self.settings.tsne_perplexity, self.settings.seed)
            cosines = identity_cosines(points)
            panels.append((model, points, xy, cosines))
            self.record({f"tsne.{model}.cross_domain_cosine": cosines.cross_domain,
                         f"tsne.{model}.within_domain_cosine": cosines.within_domain,
                         f"tsne.{model}.different_identity_cosine": cosines.different})
        self.record({"tsne.chips": len(panels[0][1]), "tsne.cross_domain_identities": panels[0][3].n_cross_identities,
                     "tsne.cross_domain_pairs": panels[0][3].n_cross_pairs})
        return tsne_figure([(self.model_label(model), *rest) for model, *rest in panels]), panels

    def seed_spread(self, tolerance: float = 0.005):
        """The readings of the ROC and t-SNE figures, which draw seed 0's adapters, for every published seed of each
        adapter's row (:func:`~afr.analysis.embeddings.published_seeds`): per (row, seed) the test AUC per pack,
        asserted equal to the seed's committed record within ``tolerance``, and the identity cosines of the t-SNE
        figure; zero-shot once. Returns ``(per seed, mean ± sd over seeds)`` (None, None when the packs or the
        adapters are missing); the means and sds go to figures.json as ``seeds.<row>.<reading>.{mean,sd,n}``."""
        if self._not_drawn("seeds", "packs", "adapters"):
            return None, None
        import pandas as pd

        rows = []
        for name in (ZERO_SHOT, *(seed for adapter in self.settings.adapters
                                  for seed in published_seeds(adapter, self.results_dir))):
            choice = self.embedder.choice(name)
            committed = json.loads(choice.record.read_text())["test"] if choice.record is not None else None
            row: dict[str, Any] = {"row": choice.method or ZERO_SHOT, "seed": "-" if choice.seed is None else choice.seed}
            for domain in self.packs:
                row[f"auc {domain}"] = pack_roc(self.embedder, name, domain).auc
                if committed is not None:
                    _assert_matches_record(f"{name} on {domain}", "AUC", row[f"auc {domain}"],
                                           committed[domain]["auc"], choice.record.name, tolerance)
            cosines = identity_cosines(collect_points(self.embedder, name))
            row.update({"cosine cross-domain": cosines.cross_domain, "cosine within domain": cosines.within_domain,
                        "cosine different": cosines.different})
            rows.append(row)
        table = pd.DataFrame(rows)
        readings = [column for column in table.columns if column not in ("row", "seed")]
        grouped = table.groupby("row", sort=False)[readings]
        mean, sd, count = grouped.mean(), grouped.std(), grouped.size()
        for row_name in mean.index:
            self.record({f"seeds.{row_name}.n": int(count[row_name]),
                         **{f"seeds.{row_name}.{reading.replace(' ', '_')}.{stat}": float(frame.loc[row_name, reading])
                            for reading in readings for stat, frame in (("mean", mean), ("sd", sd))
                            if not (stat == "sd" and count[row_name] < 2)}})
        summary = pd.DataFrame({reading: [f"{mean.loc[r, reading]:.3f}" + (f" ± {sd.loc[r, reading]:.3f}"
                                                                            if count[r] > 1 else "")
                                          for r in mean.index] for reading in readings}, index=mean.index)
        summary.insert(0, "seeds", [int(count[r]) for r in mean.index])
        return table, summary

    def model_label(self, model: str) -> str:
        """``model`` as figures name it: the zero-shot reference says when it subtracts the adapters' centre."""
        if model == ZERO_SHOT and self.embedder.zero_shot_centre is not None:
            return f"{ZERO_SHOT} (centred)"
        return model

    def gates(self):
        """DA-LoRA gate weights per test pack and expert, mean over the healthy seeds of notebook 03's committed grid;
        and the confusion."""
        import pandas as pd

        from afr.experiments.health import healthy_records

        recorded = {record["tag"]: record for record in dalora_grid_records(self.results_dir, self.settings.gates_method)
                    if "gates" in record}
        records = list(healthy_records(recorded, show=False)[0].values())  # a flagged run is in no mean
        method, n = self.settings.gates_method, len(records)
        if not records:
            for name in ("gates", "confusion"):
                self.missing[name] = (f"{name}: not drawn: no record of notebook 03's committed grid with {method} "
                                      f"gates in {shown(self.results_dir / 'dalora')}/; make dalora-results "
                                      "trains them")
            return None, None, (pd.DataFrame(), pd.DataFrame())
        mean, sd = gate_matrices(records, "mean")
        shares, shares_sd = gate_matrices(records, "argmax")
        self.record({f"gates.{method}.{pack}.{expert}": mean.loc[pack, expert]
                     for pack in mean.index for expert in mean.columns})
        self.record({f"confusion.{method}.{pack}.{expert}": shares.loc[pack, expert]
                     for pack in shares.index for expert in shares.columns})
        self.record({f"gates.{method}.seeds": n})
        return gates_figure(mean, sd, method, n), confusion_figure(shares, shares_sd, method, n), (mean, shares)

    def curves(self):
        """Notebook 04's and 05's curves on the embedded benchmark and, when recorded, notebook 05's full profile
        (accuracy on the thermal folder against k = 10, 50, 100: a panel of its own, its pack is not the embedded
        thermal pack); healthy runs only, as in every figure's mean."""
        maml = read_table(self.results_dir, "maml", healthy=True)
        cross = read_table(self.results_dir, "crossdomain", healthy=True)
        full_summary = None
        if cross is not None:
            full = full_profile_rows(cross, self.results_dir / RECORD_FOLDERS["crossdomain"])
            cross = cross.drop(index=full.index)
            full_summary = crossdomain_curves(full, "accuracy", target=None) if len(full) else None
        from afr.experiments.grids import REPORTED_THERMAL_GRIDS, CommittedGrids

        grids = CommittedGrids()
        maml_summary = maml_curves(maml, grid=grids.maml.grid) if maml is not None else None
        reported = tuple(grids.crossdomain_grids[name].grid for name in REPORTED_THERMAL_GRIDS)
        cross_summary = crossdomain_curves(cross, grids=reported) if cross is not None and len(cross) else None
        return curves_figure(maml_summary, cross_summary, full_summary), (maml_summary, cross_summary)

    def sensitivity(self):
        """The reported runs of notebook 06's committed grids only (each group from the fitted grid once it has run,
        else from the first grid: :meth:`~afr.experiments.grids.CommittedGrids.reported_ablation_rows`), each panel
        titled with its recipe: the table also holds the demo's runs, which are not further seeds of the grid's
        cells."""
        from afr.experiments.grids import CommittedGrids
        from afr.experiments.settings.ablations import GROUPS

        from afr.experiments.health import healthy_rows

        table = read_table(self.results_dir, "ablations")
        recipes = None
        if table is not None:
            grids = CommittedGrids()
            fitted = grids.fitted_ablation_groups(table)  # a group is the fitted grid's once all its runs are recorded
            recipes = {group: "fitted" if group in fitted else "first grid, not fitted" for group in GROUPS}
            table = healthy_rows(grids.reported_ablation_rows(table), self.results_dir)  # then its healthy runs
        summary = ablation_sensitivity(table) if table is not None and len(table) else None
        return sensitivity_figure(summary, recipes=recipes), summary

    def benchmarks(self):
        """Full profile: accuracy on the five benchmark packs per (backbone, method, identities), from the
        full-profile rows of notebooks 02 and 03 (:func:`~afr.analysis.committed.benchmark_summary`)."""
        summary = benchmark_summary(self.results_dir)
        if summary is None:
            self.missing["benchmarks"] = ("benchmarks: not drawn: no full-profile run in tables/baseline.csv or "
                                          "dalora.csv; notebook 02 with data_profile = 'full' (python -m afr baseline "
                                          "--data-profile full ...) records them")
            return None, None
        self.record({f"benchmarks.{row.backbone}.{row.method}.{row.identities}.{row.domain}.accuracy": row.mean
                     for row in summary.itertuples()})
        return benchmarks_figure(summary), summary

    def roc(self):
        """ROC per test pack of zero-shot and every adapter (zero-shot alone when none is published)."""
        if self._not_drawn("roc", "packs"):
            return None, {}
        curves = {domain: [pack_roc(self.embedder, model, domain) for model in self.settings.models]
                  for domain in self.packs}
        self.record({f"roc.{curve.domain}.auc.{curve.model}": curve.auc
                     for models in curves.values() for curve in models})
        return roc_figure(curves), curves

    def errors(self):
        """The worst errors of the adapted model per domain, and the error analysis of every model."""
        if self._not_drawn("errors", "packs", "adapters"):
            return None, {}, {}
        model = self.settings.adapted
        worst = {domain: worst_errors(self.decisions(model, domain), pack, model, self.settings.n_errors)
                 for domain, pack in self.packs.items()}
        images = {domain: [(self._chip(domain, e.pair, 0), self._chip(domain, e.pair, 1)) for e in errors]
                  for domain, errors in worst.items()}
        analyses = {}
        for name in self.settings.models:
            decisions = {domain: self.decisions(name, domain) for domain in self.packs}
            analyses[name] = error_analysis(decisions, self.packs, self.benchmark.config.seed)
            for domain, decision in decisions.items():
                point = decision.point
                self.record({f"errors.{name}.{domain}.false_accepts": point.false_accepts,
                             f"errors.{name}.{domain}.false_rejects": point.false_rejects,
                             f"errors.{name}.{domain}.accuracy": point.accuracy})
        return errors_figure(worst, images), worst, analyses

    def check_against_records(self, tolerance: float = 0.005) -> str:
        """Assert that each adapter's AUC and protocol accuracy here equal its committed record's test metrics
        (within ``tolerance``): the embeddings analysed are those of the published runs."""
        if not self.settings.adapters:
            return "no adapter to check: " + self.missing.get("adapters", "none given")
        checked = []
        for name in self.settings.adapters:
            choice = self.embedder.choice(name)
            if choice.record is None or not choice.record.is_file():
                raise FileNotFoundError(f"{name}: the record named by its source.json is missing ({choice.record})")
            test = json.loads(choice.record.read_text())["test"]
            for domain in self.packs:
                auc = pack_roc(self.embedder, name, domain).auc
                accuracy = self.decisions(name, domain).point.accuracy
                for metric, value, committed in (("auc", auc, test[domain]["auc"]),
                                                 ("accuracy", accuracy, test[domain]["accuracy_mean"])):
                    _assert_matches_record(f"{name} on {domain}", metric, value, committed, choice.record.name,
                                           tolerance)
            checked.append(name)
        return (f"{len(checked)} adapter(s) reproduce their committed records' test AUC and accuracy within "
                f"{tolerance} on {len(self.packs)} packs; " + self._check_zero_shot(tolerance))

    def _check_zero_shot(self, tolerance: float) -> str:
        """Assert that the zero-shot reference's test AUC equals notebook 03's zero-shot rows of the committed grid
        the adapters come from (centred as that grid was), within ``tolerance``; what was checked, in words."""
        records = {self.embedder.choice(name).record.stem for name in self.settings.adapters}
        if not records <= set(dalora_grid_tags(self.results_dir).values()):
            return "the zero-shot reference is not checked (these adapters are not all of notebook 03's committed grid)"
        zero_tag, committed = dalora_zero_shot_test(self.results_dir, self.packs)
        for domain in self.packs:
            _assert_matches_record(f"zero-shot on {domain}", "AUC", pack_roc(self.embedder, ZERO_SHOT, domain).auc,
                                   committed[domain]["auc"], f"notebook 03's row {zero_tag}", tolerance)
        centred = "centred" if self.embedder.zero_shot_centre is not None else "uncentred"
        return f"the {centred} zero-shot reference reproduces notebook 03's zero-shot rows ({zero_tag})"

    def _chip(self, domain: str, pair: int, side: int) -> np.ndarray:
        return self.packs[domain].pack.images[2 * pair + side]

    def saliency(self):
        """Grad-CAM of one same-identity pair per domain (the adapted model's worst false reject where it has
        one), explained against the partner's embedding under each model."""
        if self._not_drawn("saliency", "packs", "adapters"):
            return None, []
        models = (ZERO_SHOT, self.settings.adapted)
        rows = []
        for domain, pack in self.packs.items():
            rejects = self.decisions(self.settings.adapted, domain).false_rejects
            distances = self.decisions(self.settings.adapted, domain).distances
            pair = int(rejects[np.argmax(distances[rejects])]) if len(rejects) else int(np.flatnonzero(pack.issame)[0])
            chip, partner = self._chip(domain, pair, 0), self._chip(domain, pair, 1)
            maps = {}
            for model in models:
                network = self.embedder.model(model, domain)
                with torch.no_grad():
                    reference = network(chips_to_tensor([partner], network.input_size))
                maps[model] = grad_cam(network, [chip], reference, self.settings.cam_layer)[0]
            title = f"{domain} pair {pair}" + (" (worst FR)" if len(rejects) else "")
            rows.append({"title": title, "chip": chip, "partner": partner, "maps": maps, "domain": domain,
                         "pair": pair})
        return saliency_figure(rows, models), rows
