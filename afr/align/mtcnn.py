"""MTCNN face detection with five landmarks, in plain torch (no torchvision).

The three cascaded networks (Zhang et al., 2016) load the state dicts shipped with facenet-pytorch
2.6.0 (``weights_root()/mtcnn/{pnet,rnet,onet}.pt``). The pipeline follows the conventions those
weights were converted with (the facenet-pytorch ``detect_face`` port of the original MATLAB code):

* RGB input in ``NCHW`` with natural height/width axes, normalised as ``(x - 127.5) * 0.0078125``;
* R-Net/O-Net flatten their last feature map in ``(N, W, H, C)`` order before the dense layers;
* P-Net proposals come from a 12x12 window with stride 2 on an image pyramid that starts at
  ``12 / min_face_size`` and shrinks by ``factor``;
* boxes are regressed, made square and cut out (1-based inclusive corners internally, as in the MATLAB
  original) and the stages keep boxes over ``thresholds`` with NMS (IoU 0.5 per scale, 0.7 over
  the pyramid, 0.7 after R-Net, 0.7 "min" overlap after O-Net);
* O-Net's landmark output is ``[x1..x5, y1..y5]`` relative to its crop, in the order left eye, right
  eye, nose, left mouth corner, right mouth corner ("left" = image left).

Unlike facenet-pytorch, crops that leave the image are zero-padded (as the original MATLAB/Caffe
MTCNN does) instead of being clipped and stretched, and large photos are first shrunk so their longer
side is at most ``max_image_side`` pixels; all coordinates are mapped back to the input image and
reported 0-based (pixel ``(0, 0)`` is the top-left pixel centre).

Detection runs on a fixed number of torch threads (``num_threads``, default :data:`DETECTION_THREADS` = 2),
set for each call and restored after it: oneDNN splits the float32 convolutions' sums by the thread
count, so 1 and 2 threads give boxes and landmarks that differ in the last float32 bit (up to 6.1e-5 px;
38 of the embedded benchmark's 625 detected faces), enough to move a few chip pixels by 1 and so the
JPEG bytes of the packs built from them. A fixed count makes detections, chips and packs bit-identical
whatever ``OMP_NUM_THREADS`` or ``torch.set_num_threads`` the process runs with; 2 is the count the
committed embedded benchmark was built with (its records' pack SHA-256 are reproduced with it), and
works on one core too (the threads then share it).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from afr.paths import MissingResourceError, weights_root

__all__ = ["DETECTION_THREADS", "Detections", "MTCNN", "PNet", "RNet", "ONet", "nms", "load_mtcnn_nets", "torch_threads"]

_NORM_MEAN = 127.5
_NORM_SCALE = 0.0078125
_PNET_STRIDE = 2
_PNET_CELL = 12
#: torch threads MTCNN detects on (see the module's notes): the committed embedded benchmark's count
DETECTION_THREADS = 2


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------
class PNet(nn.Module):
    """Proposal network: fully convolutional, 12x12 receptive field, stride 2.

    ``forward`` returns ``(face_probability (N,H',W'), box_regression (N,4,H',W'))``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        probability = torch.softmax(self.conv4_1(x), dim=1)[:, 1]
        return probability, self.conv4_2(x)


def _flatten_wh(x: torch.Tensor) -> torch.Tensor:
    """Flatten ``(N,C,H,W)`` in ``(N,W,H,C)`` order, the layout the converted dense weights expect."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops: returns ``(face_probability (N,), box_regression (N,4))``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_wh(x)))
        probability = torch.softmax(self.dense5_1(x), dim=1)[:, 1]
        return probability, self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48x48 crops.

    Returns ``(face_probability (N,), box_regression (N,4), landmarks (N,10))``; the landmarks are
    ``[x1..x5, y1..y5]`` as fractions of the crop's width/height.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_wh(x)))
        probability = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
        return probability, self.dense6_2(x), self.dense6_3(x)


def load_mtcnn_nets(weights_dir: str | Path | None = None) -> tuple[PNet, RNet, ONet]:
    """Build P-, R- and O-Net and load ``{pnet,rnet,onet}.pt`` from ``weights_dir``.

    ``weights_dir`` defaults to ``weights_root()/'mtcnn'``. A missing folder or file raises
    :class:`MissingResourceError` naming it; a file whose tensors do not fit raises ``ValueError``.
    """
    folder = Path(weights_dir) if weights_dir is not None else _default_weights_dir()
    if not folder.is_dir():
        raise MissingResourceError(
            f"MTCNN weights folder not found: {folder} (expected pnet.pt, rnet.pt, onet.pt from the "
            "facenet-pytorch 2.6.0 wheel)"
        )
    nets = (PNet(), RNet(), ONet())
    for name, net in zip(("pnet", "rnet", "onet"), nets):
        path = folder / f"{name}.pt"
        if not path.is_file():
            raise MissingResourceError(f"MTCNN weight file not found: {path} (in folder {folder})")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"{path} does not hold MTCNN {name} weights: {error}") from None
        net.eval().requires_grad_(False)
    return nets


def _default_weights_dir() -> Path:
    try:
        return weights_root() / "mtcnn"
    except MissingResourceError as error:
        raise MissingResourceError(f"MTCNN weights folder not found: {error}") from None


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the process's count (``None``: as is)."""
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# box utilities (numpy; boxes are x1, y1, x2, y2 with inclusive integer-pixel corners)
# ---------------------------------------------------------------------------------------------
def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; returns the kept indices, highest score first.

    ``mode='union'`` compares intersection over union, ``mode='min'`` intersection over the smaller
    box (MTCNN's last stage). Areas use the inclusive-pixel convention ``(x2 - x1 + 1) * (y2 - y1 + 1)``.
    """
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', got {mode!r}")
    boxes = np.asarray(boxes, dtype=np.float64)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = width * height
        if mode == "min":
            overlap = inter / np.minimum(areas[best], areas[rest])
        else:
            overlap = inter / (areas[best] + areas[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (side = the longer side)."""
    boxes = boxes.copy()
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(width, height)
    boxes[:, 0] += (width - side) * 0.5
    boxes[:, 1] += (height - side) * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply the networks' box regression (offsets in units of the inclusive box width/height)."""
    width = boxes[:, 2] - boxes[:, 0] + 1
    height = boxes[:, 3] - boxes[:, 1] + 1
    scale = np.stack([width, height, width, height], axis=1)
    return boxes + offsets * scale


# ---------------------------------------------------------------------------------------------
# detector
# ---------------------------------------------------------------------------------------------
@dataclass
class Detections:
    """Faces found in one image, sorted by descending detection score.

    ``boxes`` ``(N,4)`` float32 ``x1, y1, x2, y2``; ``scores`` ``(N,)`` float32 O-Net probabilities;
    ``landmarks`` ``(N,5,2)`` float32 ``(x, y)`` of left eye, right eye, nose tip, left mouth corner,
    right mouth corner ("left" = image left), all in 0-based pixels of the input image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        )

    def main_index(self) -> int | None:
        """Index of the main face: the largest ``box area * score`` (``None`` when there is none).

        Scores of real faces after O-Net are nearly all above 0.9, so this picks the largest
        confident face (the portrait's subject rather than a small face in the background).
        """
        if len(self) == 0:
            return None
        width = self.boxes[:, 2] - self.boxes[:, 0]
        height = self.boxes[:, 3] - self.boxes[:, 1]
        return int(np.argmax(np.clip(width, 0, None) * np.clip(height, 0, None) * self.scores))


class MTCNN:
    """Three-stage MTCNN face detector with 5 landmarks.

    Args:
        weights_dir: folder with ``pnet.pt``, ``rnet.pt``, ``onet.pt`` (default
            ``weights_root()/'mtcnn'``); missing files raise :class:`MissingResourceError`.
        device: torch device the networks run on.
        min_face_size: smallest face side (pixels, after any downscaling) the pyramid searches for.
        thresholds: face-probability thresholds of P-, R- and O-Net.
        factor: scale step of the image pyramid.
        max_image_side: images whose longer side exceeds this are shrunk (area interpolation) to
            this size for detection; results are mapped back to the original pixels. ``None``
            disables it. 1024 keeps one photo under ~1 s on one CPU core.
        batch_size: crops per R-Net/O-Net forward pass.
        num_threads: torch threads while detecting (set for each call, then restored). A fixed count
            (default :data:`DETECTION_THREADS`) makes the results bit-identical whatever thread count the
            process has (see the module's notes); ``None`` uses the process's count, and results then
            differ in the last float32 bit between counts.
    """

    def __init__(
        self,
        weights_dir: str | Path | None = None,
        device: str | torch.device = "cpu",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        max_image_side: int | None = 1024,
        batch_size: int = 512,
        num_threads: int | None = DETECTION_THREADS,
    ) -> None:
        if min_face_size < _PNET_CELL:
            raise ValueError(f"min_face_size must be at least {_PNET_CELL}, got {min_face_size}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"pyramid factor must lie in (0, 1), got {factor}")
        if len(thresholds) != 3:
            raise ValueError(f"need three thresholds (P-, R-, O-Net), got {thresholds}")
        self.device = torch.device(device)
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = factor
        self.max_image_side = max_image_side
        self.batch_size = batch_size
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be a positive count or None, got {num_threads}")
        self.num_threads = num_threads
        self.pnet, self.rnet, self.onet = (net.to(self.device) for net in load_mtcnn_nets(weights_dir))

    # -- public -------------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> Detections:
        """Detect faces in an ``HxWx3`` uint8 RGB image; see :class:`Detections` for the layout."""
        image = _check_image(image)
        with torch_threads(self.num_threads), torch.inference_mode():
            return self._detect(image)

    def _detect(self, image: np.ndarray) -> Detections:
        shrink = 1.0
        if self.max_image_side is not None and max(image.shape[:2]) > self.max_image_side:
            shrink = self.max_image_side / max(image.shape[:2])
            size = (max(1, round(image.shape[1] * shrink)), max(1, round(image.shape[0] * shrink)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        tensor = torch.tensor(image, device=self.device).permute(2, 0, 1).float().unsqueeze(0)

        boxes = self._propose(tensor)
        if len(boxes):
            boxes = self._refine(tensor, boxes)
        if not len(boxes):
            return Detections.empty()
        boxes, scores, landmarks = self._output(tensor, boxes)
        if not len(boxes):
            return Detections.empty()

        order = np.argsort(-scores, kind="stable")
        # internal corners are 1-based (MATLAB heritage); landmarks are already 0-based
        boxes = (boxes[order] - 1.0) / shrink
        landmarks = landmarks[order] / shrink
        return Detections(boxes.astype(np.float32), scores[order].astype(np.float32),
                          landmarks.astype(np.float32))

    def to(self, device: str | torch.device) -> "MTCNN":
        """Move the three networks to ``device``."""
        self.device = torch.device(device)
        for net in (self.pnet, self.rnet, self.onet):
            net.to(self.device)
        return self

    # -- stages -------------------------------------------------------------------------------
    def _scales(self, height: int, width: int) -> list[float]:
        scale = _PNET_CELL / self.min_face_size
        shortest = min(height, width) * scale
        scales = []
        while shortest >= _PNET_CELL:
            scales.append(scale)
            scale *= self.factor
            shortest *= self.factor
        return scales

    def _propose(self, image: torch.Tensor) -> np.ndarray:
        """P-Net over the pyramid -> regressed, squared candidate boxes ``(K, 5)`` (corners, score)."""
        height, width = image.shape[2:]
        candidates = []
        for scale in self._scales(height, width):
            size = (int(height * scale + 1), int(width * scale + 1))
            scaled = (F.interpolate(image, size=size, mode="area") - _NORM_MEAN) * _NORM_SCALE
            probability, regression = self.pnet(scaled)
            rows, cols = torch.nonzero(probability[0] >= self.thresholds[0], as_tuple=True)
            if rows.numel() == 0:
                continue
            score = probability[0, rows, cols].cpu().numpy()
            offsets = regression[0, :, rows, cols].T.cpu().numpy()
            cells = torch.stack([cols, rows], dim=1).cpu().numpy().astype(np.float64)
            top_left = np.floor((_PNET_STRIDE * cells + 1) / scale)
            bottom_right = np.floor((_PNET_STRIDE * cells + _PNET_CELL) / scale)
            found = np.concatenate([top_left, bottom_right, score[:, None], offsets], axis=1)
            candidates.append(found[nms(found[:, :4], found[:, 4], 0.5)])
        if not candidates:
            return np.zeros((0, 5))
        found = np.concatenate(candidates)
        found = found[nms(found[:, :4], found[:, 4], 0.7)]
        # P-Net regression is relative to the exclusive width (x2 - x1), as in the original code
        width_height = np.stack([found[:, 2] - found[:, 0], found[:, 3] - found[:, 1]] * 2, axis=1)
        boxes = found[:, :4] + found[:, 5:9] * width_height
        return np.concatenate([_square(boxes), found[:, 4:5]], axis=1)

    def _refine(self, image: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        """R-Net on 24x24 crops -> filtered, regressed, squared boxes ``(K, 5)``."""
        crops = _crop_boxes(image, boxes[:, :4], 24)
        probability, regression = self._run(self.rnet, crops)
        keep = probability > self.thresholds[1]
        boxes = np.concatenate([boxes[keep, :4], probability[keep, None]], axis=1)
        regression = regression[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes, regression = boxes[pick], regression[pick]
        boxes[:, :4] = _square(_regress(boxes[:, :4], regression))
        return boxes

    def _output(self, image: torch.Tensor, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """O-Net on 48x48 crops -> final boxes ``(K,4)``, scores ``(K,)``, landmarks ``(K,5,2)``."""
        corners = np.trunc(boxes[:, :4])
        crops = _crop_boxes(image, corners, 48)
        probability, regression, points = self._run(self.onet, crops)
        keep = probability > self.thresholds[2]
        corners, scores, regression, points = corners[keep], probability[keep], regression[keep], points[keep]
        size = np.stack([corners[:, 2] - corners[:, 0] + 1, corners[:, 3] - corners[:, 1] + 1], axis=1)
        # crop pixel 0 is image pixel (corner - 1) in 0-based indexing
        landmarks = np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None, :]
        landmarks += corners[:, None, :2] - 1.0
        final = _regress(corners, regression)
        pick = nms(final, scores, 0.7, mode="min")
        return final[pick], scores[pick], landmarks[pick]

    def _run(self, net: nn.Module, crops: torch.Tensor) -> tuple[np.ndarray, ...]:
        outputs = [net(crops[i : i + self.batch_size]) for i in range(0, len(crops), self.batch_size)]
        return tuple(torch.cat(parts).double().cpu().numpy() for parts in zip(*outputs))


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"MTCNN.detect expects an HxWx3 uint8 RGB numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"MTCNN.detect expects an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
        )
    if min(image.shape[:2]) < _PNET_CELL:
        raise ValueError(f"image {image.shape[1]}x{image.shape[0]} is too small for MTCNN (< 12 px)")
    return np.ascontiguousarray(image)


def _crop_boxes(image: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Cut each box (1-based inclusive corners, truncated to int) out of ``image`` (1,3,H,W), zero-pad
    the part outside the image, resize to ``size``x``size`` with area interpolation and normalise."""
    height, width = image.shape[2:]
    corners = np.trunc(boxes).astype(np.int64)
    crops = torch.zeros((len(corners), 3, size, size), device=image.device)
    for k, (x1, y1, x2, y2) in enumerate(corners):
        box_w, box_h = x2 - x1 + 1, y2 - y1 + 1
        # visible part in 0-based image indices, clipped to the image
        left, top = max(x1 - 1, 0), max(y1 - 1, 0)
        right, bottom = min(x2, width), min(y2, height)
        if box_w <= 0 or box_h <= 0 or right <= left or bottom <= top:
            continue  # left as zeros -> scores low and is dropped by the threshold
        patch = image.new_zeros((1, 3, box_h, box_w))
        patch[:, :, top - (y1 - 1) : bottom - (y1 - 1), left - (x1 - 1) : right - (x1 - 1)] = image[
            :, :, top:bottom, left:right
        ]
        crops[k] = F.interpolate(patch, size=(size, size), mode="area")[0]
    return (crops - _NORM_MEAN) * _NORM_SCALE
