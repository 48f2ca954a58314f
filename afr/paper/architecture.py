"""The method's architecture figure, drawn with matplotlib (no TikZ): ``figures/architecture.pdf`` and ``.png``.

Left to right: the face chip enters the frozen backbone; the frozen stem's per-channel mean and sd feed the router
(a small MLP) whose softmax gives one gate per domain expert; every adapted layer adds the gated sum of its K
low-rank experts (B_k A_k) to the frozen weight's output; the embedding goes to the CosFace head (class centres,
margin) and to the supervised InfoNCE term; the router learns from the domain cross-entropy only. The loss is
L = L_margin + λ1 L_contrastive + λ2 L_domain.
"""
from __future__ import annotations

import io
from pathlib import Path

from afr.io import atomic_write_bytes

__all__ = ["draw_architecture", "save_architecture"]

FROZEN, EXPERT, ROUTER, HEAD, LOSS = "#d9d9d9", "#9ecae1", "#fdd49e", "#c7e9c0", "#fcbba1"


def _box(ax, x, y, w, h, text, colour, fontsize=8, style="round,pad=0.02"):
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, facecolor=colour, edgecolor="black", linewidth=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, start, end, text=None, style="-|>", colour="black", dashed=False):
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=9, color=colour, linewidth=0.9,
                                 linestyle="--" if dashed else "-"))
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, text, ha="center", va="bottom", fontsize=7)


def draw_architecture():
    """The figure (a matplotlib Figure on an Agg canvas, outside pyplot: the caller's backend is left as it is,
    and nothing has to close it); nothing is read from disk."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, Rectangle

    layer_names = (r"$\ell$", r"$\ell+1$")
    fig = Figure(figsize=(10, 4.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_xlim(0, 20)
    ax.set_ylim(0, 9.2)
    ax.axis("off")
    # input and frozen stem
    _box(ax, 0.2, 3.6, 1.7, 1.6, "face chip\n150×150\n(dlib) or\n112/224 (ViT)", "white", 7)
    _box(ax, 2.5, 3.6, 1.9, 1.6, "stem\n(frozen)\nconv 7×7 /\npatch embed.", FROZEN, 7)
    _arrow(ax, (1.9, 4.4), (2.5, 4.4))
    # router
    _box(ax, 2.5, 6.6, 1.9, 1.3, "channel\nmean, sd", FROZEN, 7)
    _arrow(ax, (3.45, 5.2), (3.45, 6.6))
    _box(ax, 5.0, 6.6, 2.2, 1.3, "router\nMLP", ROUTER, 8)
    _arrow(ax, (4.4, 7.25), (5.0, 7.25))
    _box(ax, 7.8, 6.6, 2.4, 1.3, "softmax gates\n$g_1,\\dots,g_K$", ROUTER, 8)
    _arrow(ax, (7.2, 7.25), (7.8, 7.25))
    # adapted layers: frozen weight + K experts
    for index, x in enumerate((5.0, 9.2)):
        ax.add_patch(Rectangle((x - 0.25, 1.0), 3.9, 4.9, facecolor="none", edgecolor="grey", linestyle=":",
                               linewidth=0.8))
        ax.text(x + 1.7, 1.15, "adapted layer " + layer_names[index], ha="center", fontsize=7, color="dimgrey")
        _box(ax, x, 4.0, 2.6, 0.9, "$W_0$ (frozen)", FROZEN, 8)
        for k, y in enumerate((2.9, 2.2, 1.5)):
            name = ("$B_1A_1$", "$B_2A_2$", "$B_KA_K$")[k]
            _box(ax, x + 0.3, y, 2.8, 0.55, f"expert {name}  (rank $r$)", EXPERT, 7)
        ax.text(x + 1.7, 5.4, r"$h = W_0x + \sum_k g_k\,B_kA_kx$", ha="center", fontsize=7.5)
    _arrow(ax, (8.0, 6.6), (8.0, 3.45), colour="#d94801", dashed=True)
    ax.add_patch(FancyArrowPatch((10.2, 6.85), (12.4, 3.45), connectionstyle="angle,angleA=0,angleB=90,rad=0",
                                 arrowstyle="-|>", mutation_scale=9, color="#d94801", linewidth=0.9, linestyle="--"))
    ax.text(10.35, 6.95, "gates scale the experts' outputs", fontsize=6.5, color="#d94801", ha="left")
    _arrow(ax, (4.4, 4.4), (5.0, 4.4))
    _arrow(ax, (7.6, 4.45), (9.2, 4.45))
    ax.text(13.15, 3.3, "…", fontsize=14, ha="center")
    _arrow(ax, (11.8, 4.45), (13.6, 4.45))
    # embedding and heads
    _box(ax, 13.6, 3.8, 1.7, 1.2, "embedding\n$z$ (ℓ2-norm.)", FROZEN, 7)
    _box(ax, 16.0, 5.5, 3.7, 1.2, "CosFace head\nclass centres, $s=64$, $m=0.35$", HEAD, 7)
    _box(ax, 16.0, 3.8, 3.7, 1.2, "supervised InfoNCE\n(cross-domain positives)", HEAD, 7)
    _arrow(ax, (15.3, 4.6), (16.0, 6.1))
    _arrow(ax, (15.3, 4.4), (16.0, 4.4))
    _box(ax, 16.0, 7.6, 3.7, 1.1, "domain cross-entropy\n(router only)", HEAD, 7)
    _arrow(ax, (10.2, 7.6), (16.0, 8.15))
    # the loss
    _box(ax, 13.0, 0.5, 6.7, 1.5,
         "$\\mathcal{L} = \\mathcal{L}_{\\mathrm{margin}} + \\lambda_1\\,\\mathcal{L}_{\\mathrm{contrastive}}"
         " + \\lambda_2\\,\\mathcal{L}_{\\mathrm{domain}}$\n$\\lambda_1 = 0.1$, $\\lambda_2 = 0.01$", LOSS, 8)
    ax.text(0.2, 8.7, "Frozen: grey.  Trained: the experts (blue), the router (orange) and the CosFace class centres; "
            "green: the three loss terms.", fontsize=7.5)
    fig.tight_layout()
    return fig


def save_architecture(folder: Path) -> list[Path]:
    """Write ``architecture.pdf`` and ``architecture.png`` into ``folder`` (atomically); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    fig = draw_architecture()
    written = []
    for suffix, options in ((".pdf", {"metadata": {"CreationDate": None}}), (".png", {"dpi": 200})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=suffix[1:], bbox_inches="tight", **options)
        path = folder / f"architecture{suffix}"
        atomic_write_bytes(path, buffer.getvalue())
        written.append(path)
    return written
