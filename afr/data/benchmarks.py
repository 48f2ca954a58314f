"""Names of the InsightFace verification packs of the full profile (torch-free: the settings and the paper read it)."""
from __future__ import annotations

__all__ = ["FULL_BENCHMARKS"]

#: the five InsightFace packs (``<name>.bin`` in ``bins_dir``), in the order they are reported
FULL_BENCHMARKS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
