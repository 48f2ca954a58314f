"""Experiment recipes behind the numbered notebooks (one module per notebook)."""
