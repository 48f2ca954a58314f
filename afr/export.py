"""Write a (merged) backbone as an ONNX model for serving without this project (``python -m afr export``).

The ONNX graph is the backbone's own forward: input ``chips`` ``(batch, 3, S, S)`` float32 RGB in ``[0, 1]``,
aligned to the backbone's template (``S`` = ``input_size``), any batch size; output ``embedding``
``(batch, D)``, raw (not L2-normalised), so a server can apply the flip test (add the mirrored chip's
embedding) before normalising, as :func:`afr.eval.extract.extract_embeddings` does. The backbone's own
normalisation (dlib's channel means, a ViT's resize) is inside the graph. What the input must look like is
also stored in the model's metadata (``metadata_props``), so the file documents itself.

An adapter must be merged first (:func:`afr.inference.load_adapted_backbone` with ``require_merge=True``): an
exported network is one set of weights, which is exactly what merging computes (for DA-LoRA: one domain's
expert). The file is produced by ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript), checked with
``onnx.checker``, then run once by onnxruntime against torch on a fixed random batch; the largest difference is
returned, and the file is written atomically, never over an existing one unless told to. The graph's input and
output are named here rather than by the exporter's ``input_names``/``output_names``, which rename without
checking the graph's other names (see :func:`_name_interface`; CLIP failed on that).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from afr.io import atomic_write_bytes, check_output_file

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "OnnxExport", "export_onnx", "onnx_session"]

log = logging.getLogger(__name__)

INPUT_NAME = "chips"
OUTPUT_NAME = "embedding"


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote: the file, its opset, its input/output shapes, and the largest absolute
    difference between onnxruntime's and torch's embeddings on a random check batch."""

    path: Path
    opset: int
    input_shape: tuple[str | int, ...]
    output_shape: tuple[str | int, ...]
    max_abs_difference: float
    metadata: dict[str, str]


def _require_plain(backbone: nn.Module) -> None:
    from afr.adapters import has_adapter

    if has_adapter(backbone):  # any registered adapter type
        raise ValueError("the backbone still carries adapter layers: merge the adapter before exporting "
                         "(afr.inference.load_adapted_backbone(..., require_merge=True))")


def onnx_session(path_or_bytes: str | Path | bytes):
    """An onnxruntime CPU session on an exported model (a path or the serialised bytes)."""
    import onnxruntime

    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])


def export_onnx(
    backbone: nn.Module,
    path: str | Path,
    overwrite: bool = False,
    metadata: dict[str, str] | None = None,
    check_batch: int = 3,
) -> OnnxExport:
    """Export the plain (merged) ``backbone`` to ``path``; see the module docstring.

    ``metadata`` adds string entries to the model's ``metadata_props`` (e.g. the adapter and domain).
    ``check_batch`` is the batch size of the onnxruntime check (different from the export's example batch
    of 2, so the check also proves the batch dimension is dynamic).
    """
    import onnx

    path = check_output_file(path, "ONNX file", overwrite)  # a directory, an unwritable folder: before any work
    _require_plain(backbone)
    size = int(backbone.input_size)
    backbone = backbone.eval().cpu()
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    # the exporter reports its progress on stdout (the CLI's stdout is its JSON only) and warns about
    # torchvision operators this project never uses
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # no input_names/output_names here: torch renames the graph's input and output without checking
            # the graph's other names (see _name_interface), so the interface is named below
            program = torch.onnx.export(
                backbone, (example,), dynamo=True, dynamic_shapes=({0: batch},), verbose=False,
            )
    finally:
        registration.setLevel(level)
    _name_interface(program.model, INPUT_NAME, OUTPUT_NAME)
    model = program.model_proto
    described = {
        "afr.backbone": str(getattr(backbone, "name", type(backbone).__name__)),
        "afr.input": f"{INPUT_NAME}: float32 (batch, 3, {size}, {size}) RGB in [0, 1], faces aligned to the "
                     f"{getattr(backbone, 'alignment', '?')} template",
        "afr.output": f"{OUTPUT_NAME}: raw embedding (batch, {int(backbone.embedding_dim)}); L2-normalise it "
                      "(flip test: add the mirrored chip's embedding first)",
        **(metadata or {}),
    }
    for key, value in described.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    data = model.SerializeToString()

    check = torch.rand(check_batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = backbone(check).numpy()
    session = onnx_session(data)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: check.numpy()})[0]
    difference = float(np.abs(got - expected).max())

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), -1)
    return OnnxExport(
        path=path,
        opset=int(opset),
        input_shape=tuple(_dims(session.get_inputs()[0].shape)),
        output_shape=tuple(_dims(session.get_outputs()[0].shape)),
        max_abs_difference=difference,
        metadata=described,
    )


def _name_interface(model, input_name: str, output_name: str) -> None:
    """Name the graph's one input ``input_name`` and its one output ``output_name`` (an ``onnx_ir`` model, edited
    in place), first renaming any other value of the graph that already holds one of those names.

    ONNX names every value once (SSA). The exporter names values after the torch.export nodes that compute them,
    and its optimiser folds a node whose inputs are all constants into an initializer that keeps the node's name;
    torch's own ``output_names=`` then renames the output without looking at the other names. CLIP's vision
    embeddings look their position table up with a constant index buffer, an ``aten.embedding`` node that
    torch.export names ``embedding`` and the optimiser folds into an initializer ``embedding``; renaming the
    output ``embedding`` as well made the graph invalid ("'embedding' has been used as output names multiple
    times"). DINOv2 (no ``nn.Embedding``) and dlib have no such value, which is why only CLIP failed.
    """
    from onnxscript import ir

    graph = model.graph
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"expected a graph with one input and one output, got {len(graph.inputs)} and "
                         f"{len(graph.outputs)}")
    values = [*graph.inputs, *graph.initializers.values()]
    values += [output for node in ir.traversal.RecursiveGraphIterator(graph) for output in node.outputs]
    used = {value.name for value in values if value.name}
    for interface, name in ((graph.inputs[0], input_name), (graph.outputs[0], output_name)):
        for value in values:
            if value is not interface and value.name == name:
                number = 1
                while f"{name}_{number}" in used:
                    number += 1
                value.name = f"{name}_{number}"
                used.add(value.name)
        interface.metadata_props["pkg.torch.onnx.original_node_name"] = str(interface.name)
        interface.name = name
        used.add(name)


def _dims(shape: list) -> list[str | int]:
    return [dim if isinstance(dim, int) else str(dim) for dim in shape]
