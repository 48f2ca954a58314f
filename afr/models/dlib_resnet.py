"""dlib's pretrained ResNet-29 face descriptor (``dlib_face_recognition_resnet_model_v1``) in torch.

The weights are the TensorFlow.js export shipped with face-api.js: a JSON manifest naming 117 tensors
(conv filters in HWIO layout, conv biases, per-channel affine ``scale/weights`` + ``scale/biases`` that
stand in for batch-norm, and the final ``fc`` matrix 256x128) and one binary file holding them
back to back, most uint8-quantised (``value = q * scale + min``), some plain float32.

The network (dlib's published definition, run as face-api.js runs it):

* stem: conv 7x7 stride 2 'valid' (3->32) -> affine -> ReLU -> max-pool 3x3 stride 2 'valid';
* residual block: conv 3x3 'same' -> affine -> ReLU -> conv 3x3 'same' -> affine, plus the input, ReLU;
* down block: conv 3x3 stride 2 'valid' -> affine -> ReLU -> conv 3x3 'same' -> affine; shortcut is the
  input average-pooled 2x2 stride 2; the conv path is zero-padded at the bottom/right up to the
  shortcut's size and the shortcut is zero-padded in channels up to the conv path's width; sum, ReLU;
* 3 blocks at 32, down + 3 at 64, down + 2 at 128, down + 2 at 256, one more down at 256, global
  average pool, ``fc`` 256->128 without bias.

Module names mirror the manifest (``conv32_1/conv1/conv/filters`` is ``conv32_1.conv1.conv.weight``), so
every convolution is a plain :class:`torch.nn.Conv2d` that LoRA (peft) can target by name, and each
affine is its own :class:`ChannelAffine`, never fused into the conv.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from afr.models.base import Backbone
from afr.paths import MissingResourceError, weights_root

__all__ = [
    "BIN_NAME",
    "CONV_NAMES",
    "DLIB_MEAN_RGB",
    "DLIB_PIXEL_SCALE",
    "MANIFEST_NAME",
    "ChannelAffine",
    "ConvAffine",
    "DlibResNet29",
    "DlibWeightsError",
    "DownBlock",
    "ResidualBlock",
    "load_dlib_resnet29",
    "manifest_element_count",
    "read_tfjs_manifest",
    "read_tfjs_weights",
]

#: per-channel mean of dlib's training chips on the 0-255 scale (R, G, B)
DLIB_MEAN_RGB: tuple[float, float, float] = (122.782, 117.001, 104.298)
#: dlib's ``input_rgb_image`` and face-api.js both divide the mean-subtracted pixels by 256 (not 255)
DLIB_PIXEL_SCALE: float = 256.0

MANIFEST_NAME = "face_recognition_model-weights_manifest.json"
BIN_NAME = "face_recognition_model.bin"

# (name, in_channels, out_channels, is_down) for every residual stage, in forward order
_STAGES: tuple[tuple[str, int, int, bool], ...] = (
    ("conv32_1", 32, 32, False),
    ("conv32_2", 32, 32, False),
    ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True),
    ("conv64_1", 64, 64, False),
    ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True),
    ("conv128_1", 128, 128, False),
    ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True),
    ("conv256_1", 256, 256, False),
    ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
)

#: dotted names of all 29 convolutions (stem first), the default LoRA targets
CONV_NAMES: tuple[str, ...] = ("conv32_down.conv",) + tuple(
    f"{stage}.{conv}.conv" for stage, *_ in _STAGES for conv in ("conv1", "conv2")
)


class DlibWeightsError(ValueError):
    """The dlib ResNet-29 weight files exist but are malformed (wrong tensors, shapes or size)."""


class ChannelAffine(nn.Module):
    """Per-channel ``x * weight + bias`` (dlib's ``affine`` layer, batch-norm folded at training end)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(1, -1, 1, 1), x, self.weight.view(1, -1, 1, 1))

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}"


class ConvAffine(nn.Module):
    """``conv`` (with its own bias) followed by a :class:`ChannelAffine` ``scale``; ReLU optional.

    ``stride == 1`` uses TensorFlow 'same' padding (``kernel // 2`` on every side, odd kernels only);
    ``stride > 1`` uses 'valid' (no padding), as dlib and face-api.js do.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, relu: bool) -> None:
        super().__init__()
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=True)
        self.scale = ChannelAffine(out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.scale(self.conv(x))
        return F.relu(out) if self.relu else out


class ResidualBlock(nn.Module):
    """Two 3x3 'same' conv+affine layers with an identity shortcut, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvAffine(channels, channels, 3, stride=1, relu=True)
        self.conv2 = ConvAffine(channels, channels, 3, stride=1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + x)


class DownBlock(nn.Module):
    """Stride-2 residual block whose shortcut is a 2x2 average pool, zero-padded where shapes differ."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"DownBlock cannot shrink channels ({in_channels} -> {out_channels})")
        self.conv1 = ConvAffine(in_channels, out_channels, 3, stride=2, relu=True)
        self.conv2 = ConvAffine(out_channels, out_channels, 3, stride=1, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        shortcut = F.avg_pool2d(x, kernel_size=2, stride=2)
        # conv path smaller than the pooled input (odd sizes): zeros at the bottom/right
        pad_h = shortcut.shape[2] - out.shape[2]
        pad_w = shortcut.shape[3] - out.shape[3]
        if pad_h or pad_w:
            out = F.pad(out, (0, pad_w, 0, pad_h))
        # width grows: the shortcut's missing channels are zeros
        pad_c = out.shape[1] - shortcut.shape[1]
        if pad_c:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, pad_c))
        return F.relu(out + shortcut)


class DlibResNet29(Backbone):
    """dlib's face-recognition ResNet: 150x150 RGB face chip -> 128-D metric descriptor (L2 ~0.6 = same).

    ``forward`` takes ``(B, 3, H, W)`` float RGB in ``[0, 1]`` (dlib-geometry chips); inputs whose size is
    not 150x150 are resized bilinearly (antialiased when shrinking). The output is the raw
    descriptor, not L2-normalised: dlib's same-person threshold of 0.6 applies to L2 distances
    between raw descriptors.
    """

    name = "dlib-resnet29"
    embedding_dim = 128
    input_size = 150
    alignment = "dlib"
    default_lora_targets: ClassVar[tuple[str, ...]] = CONV_NAMES

    def __init__(self) -> None:
        super().__init__()
        self.conv32_down = ConvAffine(3, 32, 7, stride=2, relu=True)
        for stage, in_channels, out_channels, is_down in _STAGES:
            block = DownBlock(in_channels, out_channels) if is_down else ResidualBlock(out_channels)
            self.add_module(stage, block)
        self.fc = nn.Linear(256, self.embedding_dim, bias=False)
        mean = torch.tensor(DLIB_MEAN_RGB, dtype=torch.float32).view(1, 3, 1, 1) / 255.0
        self.register_buffer("pixel_mean", mean, persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` RGB -> dlib's input: ``(255 * x - mean_rgb) / 256``, resized to 150x150 if needed."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name} expects a float (B, 3, H, W) RGB batch, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"{self.name} expects float RGB in [0, 1], got dtype {images.dtype}")
        size = self.input_size
        if images.shape[2] != size or images.shape[3] != size:
            shrinking = images.shape[2] > size or images.shape[3] > size
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=shrinking)
        return (images - self.pixel_mean) * (255.0 / DLIB_PIXEL_SCALE)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv32_down(self.normalize(images))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for stage, *_ in _STAGES:
            x = getattr(self, stage)(x)
        return self.fc(x.mean(dim=(2, 3)))


def _expected_tensors() -> dict[str, tuple[str, tuple[int, ...]]]:
    """Manifest tensor name -> (state_dict key, TF.js shape), for every tensor the network needs."""
    model_shapes = {k: tuple(v.shape) for k, v in DlibResNet29().state_dict().items()}
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, shape in model_shapes.items():
        module, _, leaf = key.rpartition(".")
        if key == "fc.weight":  # torch Linear (out, in); TF.js matMul right operand (in, out)
            expected["fc"] = (key, (shape[1], shape[0]))
        elif module.endswith(".conv") and leaf == "weight":  # OIHW in torch, HWIO in TF.js
            o, i, h, w = shape
            expected[module.replace(".", "/") + "/filters"] = (key, (h, w, i, o))
        elif module.endswith(".conv") and leaf == "bias":
            expected[module.replace(".", "/") + "/bias"] = (key, shape)
        elif module.endswith(".scale"):
            suffix = {"weight": "weights", "bias": "biases"}[leaf]
            expected[module.replace(".", "/") + "/" + suffix] = (key, shape)
        else:  # pragma: no cover - guards against adding a layer without a manifest mapping
            raise AssertionError(f"no manifest mapping for parameter {key}")
    return expected


_QUANTISED_DTYPES = {"uint8": np.uint8, "uint16": np.uint16}


def read_tfjs_manifest(weights_dir: str | Path, manifest_name: str = MANIFEST_NAME) -> list[tuple[list[Path], list[dict]]]:
    """The weight groups of a TF.js manifest: ``(shard paths, tensor specs)`` per group, files checked.

    Raises :class:`MissingResourceError` for a missing folder, manifest or shard and
    :class:`DlibWeightsError` for a file that is not a TF.js weights manifest.
    """
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        raise MissingResourceError(f"dlib ResNet-29 weights folder {weights_dir} not found")
    manifest_path = weights_dir / manifest_name
    if not manifest_path.is_file():
        raise MissingResourceError(f"TF.js weights manifest {manifest_path} not found")
    try:
        groups = json.loads(manifest_path.read_text())
        entries = [([weights_dir / p for p in group["paths"]], list(group["weights"])) for group in groups]
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise DlibWeightsError(f"{manifest_path} is not a TF.js weights manifest: {error!r}") from error
    for _, specs in entries:
        for spec in specs:
            if not isinstance(spec, dict) or not {"name", "shape", "dtype"} <= spec.keys():
                raise DlibWeightsError(f"{manifest_path}: weight entry {spec!r} lacks name, shape or dtype")
    for shards, _ in entries:
        for shard in shards:
            if not shard.is_file():
                raise MissingResourceError(f"weights shard {shard} (listed in {manifest_path}) not found")
    return entries


def read_tfjs_weights(weights_dir: str | Path, manifest_name: str = MANIFEST_NAME) -> dict[str, np.ndarray]:
    """Read a TensorFlow.js weights manifest and its binary shards into float32 arrays (TF.js layout).

    Each group's shards are concatenated and its tensors read from them back to back, in manifest
    order. Quantised tensors are dequantised as ``q * scale + min``; float32 tensors are read as they
    are. Raises :class:`MissingResourceError` for a missing folder or file and
    :class:`DlibWeightsError` for an unsupported dtype or shards whose size does not match the manifest.
    """
    manifest_path = Path(weights_dir) / manifest_name
    tensors: dict[str, np.ndarray] = {}
    for shard_paths, specs in read_tfjs_manifest(weights_dir, manifest_name):
        buffer = b"".join(p.read_bytes() for p in shard_paths)
        shard_label = ", ".join(str(p) for p in shard_paths)
        offset = 0
        for spec in specs:
            name, shape, dtype = spec["name"], tuple(spec["shape"]), spec["dtype"]
            count = int(np.prod(shape, dtype=np.int64))
            quant = spec.get("quantization")
            if quant is not None:
                if quant.get("dtype") not in _QUANTISED_DTYPES:
                    raise DlibWeightsError(
                        f"{manifest_path}: tensor {name} uses unsupported quantisation {quant.get('dtype')!r}"
                    )
                stored = np.dtype(_QUANTISED_DTYPES[quant["dtype"]]).newbyteorder("<")
            elif dtype == "float32":
                stored = np.dtype("<f4")
            else:
                raise DlibWeightsError(f"{manifest_path}: tensor {name} has unsupported dtype {dtype!r}")
            nbytes = count * stored.itemsize
            if offset + nbytes > len(buffer):
                raise DlibWeightsError(
                    f"{shard_label} is truncated: tensor {name} needs bytes {offset}..{offset + nbytes} "
                    f"but the file holds {len(buffer)} bytes"
                )
            raw = np.frombuffer(buffer, dtype=stored, count=count, offset=offset)
            offset += nbytes
            if quant is not None:
                values = raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])
            else:
                values = raw
            tensors[name] = values.astype(np.float32).reshape(shape)
        if offset != len(buffer):
            raise DlibWeightsError(
                f"{shard_label} holds {len(buffer)} bytes but {manifest_path} accounts for {offset}"
            )
    return tensors


def _check_manifest(weights_dir: Path) -> None:
    """Raise :class:`DlibWeightsError` unless the manifest lists exactly the network's tensors and shapes."""
    manifest_path = weights_dir / MANIFEST_NAME
    listed = {spec["name"]: tuple(spec["shape"]) for _, specs in read_tfjs_manifest(weights_dir) for spec in specs}
    expected = _expected_tensors()
    missing = sorted(set(expected) - set(listed))
    unexpected = sorted(set(listed) - set(expected))
    if missing or unexpected:
        raise DlibWeightsError(
            f"{manifest_path} does not match dlib ResNet-29: missing tensors {missing}, unexpected {unexpected}"
        )
    for name, (_, shape) in expected.items():
        if listed[name] != shape:
            raise DlibWeightsError(
                f"{manifest_path}: tensor {name} has shape {list(listed[name])}, expected {list(shape)}"
            )


def load_dlib_resnet29(weights_dir: str | Path | None = None) -> DlibResNet29:
    """Build :class:`DlibResNet29` from the face-api.js TF.js weights, in eval mode.

    ``weights_dir`` defaults to ``weights_root() / "dlib_resnet29"``. The manifest must list exactly the
    117 tensors the network has, with the expected shapes, and the binary must hold exactly their bytes.
    Raises :class:`MissingResourceError` (missing folder/file) or :class:`DlibWeightsError` (malformed).
    """
    weights_dir = Path(weights_dir) if weights_dir is not None else weights_root() / "dlib_resnet29"
    _check_manifest(weights_dir)
    tensors = read_tfjs_weights(weights_dir)
    state: dict[str, torch.Tensor] = {}
    for tf_name, (key, _) in _expected_tensors().items():
        array = tensors[tf_name]
        if array.ndim == 4:  # HWIO -> OIHW
            array = array.transpose(3, 2, 0, 1)
        elif tf_name == "fc":  # (in, out) -> (out, in)
            array = array.T
        state[key] = torch.from_numpy(np.ascontiguousarray(array))
    model = DlibResNet29()
    model.load_state_dict(state, strict=True)
    return model.eval()


def manifest_element_count(weights_dir: str | Path | None = None) -> int:
    """Total number of scalars the manifest lists (equals the model's parameter count)."""
    weights_dir = Path(weights_dir) if weights_dir is not None else weights_root() / "dlib_resnet29"
    entries = read_tfjs_manifest(weights_dir)
    return sum(int(np.prod(spec["shape"], dtype=np.int64)) for _, specs in entries for spec in specs)
