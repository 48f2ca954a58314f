"""Experiment recipes behind the numbered notebooks (one module per notebook), and :mod:`afr.experiments.grids`,
the committed grids the Makefile's results targets run."""
