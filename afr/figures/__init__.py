"""Every figure the notebooks draw: one function per figure, taking tables / records / DataFrames and returning a
matplotlib :class:`~matplotlib.figure.Figure`, and the helpers that save them atomically into ``figures/``.

One module per notebook, named like its recipe in :mod:`afr.experiments`:

=========================  ==========================================================================
``data``          (01)     :func:`samples_figure`: aligned test chips of the embedded benchmark
``baseline``      (02)     :func:`baseline_figure`: zero-shot vs LoRA per test pack, per-epoch validation
``dalora``        (03)     :func:`dalora_figure`: test AUC per method, the router's gates and confusion
``maml``          (04)     :func:`maml_figure`: target AUC against adaptation steps, one panel per k
``crossdomain``   (05)     :func:`crossdomain_figure`: AUC against k and the forgetting
``ablations``     (06)     :func:`ablations_figure`: component rows and sensitivity sweeps
``training``      (03)     :func:`training_curves_figure`: per-epoch fit and validation of a grid's runs
=========================  ==========================================================================

Notebook 07's figures are in :mod:`afr.analysis.plots`; its gate heatmaps and notebook 03's are drawn by the same
:func:`afr.figures.common.heatmap`. Nothing here selects a matplotlib backend: the figures are drawn with
``pyplot.subplots`` under whatever backend the caller has (inline in a notebook, Agg in a script), so a notebook
shows them with ``plt.show()``.
"""
from afr.figures.ablations import ablations_figure
from afr.figures.baseline import baseline_figure
from afr.figures.common import figure_bytes, heatmap, save_png
from afr.figures.crossdomain import crossdomain_figure
from afr.figures.dalora import dalora_figure
from afr.figures.data import samples_figure
from afr.figures.maml import maml_figure
from afr.figures.training import training_curves_figure

__all__ = ["ablations_figure", "baseline_figure", "crossdomain_figure", "dalora_figure", "figure_bytes", "heatmap",
           "maml_figure", "samples_figure", "save_png", "training_curves_figure"]
