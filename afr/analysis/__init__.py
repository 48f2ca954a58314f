"""Analysis of committed results and adapters for notebook 07 (figures, error analysis, exploration)."""
