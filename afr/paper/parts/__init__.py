"""One module per part of the paper (benchmark, 02 baseline, 03 DA-LoRA, 04 MAML, 05 cross-domain, 06 ablations,
quoted published numbers, 07 analysis numbers). Each ``build(sources, book)`` writes its numbers into the
:class:`~afr.paper.numbers.NumberBook` and returns :class:`~afr.paper.parts.common.PartOutput`: the paper's tables
and the supplementary per-seed tables."""
