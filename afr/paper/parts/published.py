"""FRoundation's published numbers, quoted (never measured here), and the full-profile rows this work did not run.

The quoted values come from :data:`afr.experiments.baseline.PUBLISHED_FROUNDATION` (Chettaoui, Damer and Boutros,
arXiv:2410.23831), the same constant notebook 02 shows as reference rows.
"""
from __future__ import annotations

from afr.data.benchmarks import FULL_BENCHMARKS
from afr.experiments.settings.baseline import PUBLISHED_FROUNDATION
from afr.paper.latex import NOT_RUN, Table, escape
from afr.paper.numbers import NumberBook
from afr.paper.parts.common import PartOutput, key

__all__ = ["FULL_PROFILE_ROWS", "build"]

SOURCE = r"quoted: Chettaoui et al.~\cite{chettaoui2024froundation}"
#: the full-profile rows of this work (CASIA-WebFace, five benchmarks): none was run (no GPU, no ViT weights here)
FULL_PROFILE_ROWS = (("DINOv2 ViT-S/14", "no fine-tuning (zero-shot)", "none"),
                     ("DINOv2 ViT-S/14", "LoRA + CosFace", "CASIA-WebFace 1K ids"),
                     ("CLIP ViT-B/16", "no fine-tuning (zero-shot)", "none"),
                     ("CLIP ViT-B/16", "LoRA + CosFace", "CASIA-WebFace 1K ids"),
                     ("DINOv2 ViT-S/14", "DA-LoRA + CosFace", "CASIA-WebFace 1K ids"))


def build(sources, book: NumberBook) -> PartOutput:
    table = Table(label="tab:published", columns="llllc",
                  caption="Foundation models for face recognition on the standard benchmarks: verification accuracy "
                          "(\\%) averaged over LFW, CALFW, CPLFW, CFP-FP and AgeDB-30. The upper rows are "
                          "\\emph{published numbers, quoted} from FRoundation, not measured in this work; the lower "
                          "rows are this work's full profile, which was \\emph{not run}.",
                  header=[["model", "setting", "training data", "source", "avg. acc."]])
    for index, row in enumerate(PUBLISHED_FROUNDATION):
        value = book.add(key("published", "froundation", index, "average"), row["average"] / 100, "accuracy")
        book.add(key("published", "froundation", index, "model"), escape(row["model"]), "plain")
        table.rows.append([escape(row["model"]), escape(row["setting"]), escape(row["training_data"]), SOURCE,
                           value])
    table.rules.add(len(table.rows))
    for model, setting, data in FULL_PROFILE_ROWS:
        table.rows.append([escape(model), escape(setting), escape(data), "this work", NOT_RUN])
    book.add("published.full-benchmarks.count", len(FULL_BENCHMARKS), "count")
    return PartOutput(tables={"published": table})
