"""Domain labels for a training pack without any (CASIA-WebFace ``train.rec``): measured, labelled, saved beside it.

DA-LoRA mixes K domain experts with a router that learns from per-image domain labels; CASIA-WebFace has none. This
module measures a few image properties of every record, turns them into one of three domains by a fixed rule whose
thresholds come from quantiles of the *fitting identities'* images (the training identities: never the held-out or
test ones), and writes the result as a side-car folder, so the user's pack is never touched.

Measured per image (:func:`measure_quality`; grey = ITU-R 601 luma, resized to 112x112 with area interpolation for
every measure but blockiness, so that packs of any chip size are measured alike):

* ``sharpness``: ``log10(1 + variance of the 3x3 Laplacian)`` of the 112-px grey image (blur, lost resolution);
* ``high_frequency_ratio``: share of the spectrum's energy (DC excluded) above half the Nyquist frequency;
* ``blockiness``: mean absolute grey step across 8-pixel block borders over the mean step elsewhere, at the
  image's own size (1 for a clean image, > 1 for heavy JPEG compression);
* ``brightness``, ``contrast``: mean and standard deviation of grey / 255;
* ``saturation``: mean HSV saturation / 255 (0 for a grey capture);
* ``asymmetry``: mean absolute difference between the grey image and its mirror over its standard deviation
  (side light, turned head);
* ``background_texture``: mean Sobel gradient magnitude in the outer seventh of the chip over that of the centre.

The rule (:data:`RULE`, fixed in advance; only the quantiles come from the data):

1. ``low-quality``: quality score ``(z(sharpness) - z(log blockiness)) / 2 < -3``, where ``z`` measures the distance
   from the fitting images' median Q50 in units of the spread on the good side of it (``Q75 - Q50`` for sharpness,
   ``Q50 - Q25`` for log blockiness), so that the fitting set's own low-quality images (the other tail) do not widen
   the scale: measured robust up to a quarter of the fitting images being degraded, not at half;
2. otherwise ``unconstrained`` when the unconstrained score ``(z(saturation) + z(asymmetry)) / 2``, here with
   ``z(x) = (x - Q50) / (Q90 - Q10)``, exceeds the midpoint of that score's Q10 and Q90 over the fitting images that
   are not low-quality; else ``controlled`` (grey or muted colour, even frontal light).

The other measures are recorded (``features.npy``) but not used by the rule. Saved files: see :func:`label_domains`.

Optional synthetic low-quality domain (``synthetic_low_quality=f``): a seeded fraction ``f`` of all identities has
every image labelled ``low-quality`` *and* marked in ``degrade.npy``; :class:`DomainLabelledDataset` degrades those
images on the fly with the embedded benchmark's degradation (:func:`afr.data.degrade.degrade`: down-sampling, blur,
JPEG; strengths drawn per record from ``(seed, "record<i>")``, so the same record always degrades the same way). The
measured rule still labels every other image; the thresholds are fitted on the stored (clean) images.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from afr.io import atomic_write_bytes, atomic_write_text, check_writable_folder
from afr.paths import MissingResourceError

__all__ = ["DOMAIN_NAMES", "FEATURES", "RULE", "DomainLabelledDataset", "DomainLabelling", "apply_thresholds",
           "check_output_folder", "fit_thresholds", "label_domains", "load_domain_labels", "measure_quality",
           "synthetic_identities"]

#: version of the measures and the rule; written to ``domains.json``
LABELLER_VERSION = 1
#: domain names in code order (``codes.npy`` holds these codes)
DOMAIN_NAMES: tuple[str, ...] = ("controlled", "unconstrained", "low-quality")
CONTROLLED, UNCONSTRAINED, LOW_QUALITY = 0, 1, 2
#: the measures of :func:`measure_quality`, in the column order of ``features.npy``
FEATURES: tuple[str, ...] = ("sharpness", "high_frequency_ratio", "blockiness", "brightness", "contrast",
                             "saturation", "asymmetry", "background_texture")
FEATURE_DEFINITIONS = {
    "sharpness": "log10(1 + var(3x3 Laplacian)) of the grey image resized to 112x112 (INTER_AREA)",
    "high_frequency_ratio": "spectral energy above 0.25 cycles/pixel over all non-DC energy, grey 112x112",
    "blockiness": "mean |grey step| across 8-px block borders / mean |grey step| elsewhere, at the image's own size",
    "brightness": "mean grey / 255, grey 112x112",
    "contrast": "standard deviation of grey / 255, grey 112x112",
    "saturation": "mean HSV saturation / 255 at the image's own size",
    "asymmetry": "mean |grey - mirrored grey| / std(grey), grey 112x112",
    "background_texture": "mean Sobel gradient magnitude in the outer 16 px (1/7) band / that inside it, grey 112x112",
}
#: the labelling rule: which quantiles of the fitting images standardise which measure, and the fixed cut-offs
RULE: dict[str, Any] = {
    "low_quality": {
        "score": "(z(sharpness) - z(log blockiness)) / 2 with z(sharpness) = (x - Q50) / max(Q75 - Q50, 1e-3) and "
                 "z(log blockiness) = (x - Q50) / max(Q50 - Q25, 1e-3)",
        "quantiles": [0.25, 0.5, 0.75],
        "cutoff": -3.0,
        "label": "low-quality when the score is below the cutoff",
    },
    "unconstrained": {
        "score": "(z(saturation) + z(asymmetry)) / 2, z(x) = (x - Q50) / max(Q90 - Q10, 1e-3)",
        "quantiles": [0.1, 0.5, 0.9],
        "threshold_quantiles": [0.1, 0.9],
        "label": "unconstrained when the score exceeds (Q10 + Q90) / 2 of the scores of the fitting images that are "
                 "not low-quality; else controlled",
    },
}
_SCALE_FLOOR = 1e-3
ANALYSIS_SIDE = 112
_BLOCK = 8
_GRID_SIDE = 8  # chips per row and column of a sample grid
_GRID_CHIP = 48  # pixels per chip in a sample grid

LABELS_FILE, CODES_FILE, FEATURES_FILE, DEGRADE_FILE = "domains.json", "codes.npy", "features.npy", "degrade.npy"


def _spectrum_mask(side: int) -> np.ndarray:
    frequency = np.fft.fftfreq(side)
    return np.hypot(frequency[:, None], frequency[None, :]) > 0.25


_HIGH_FREQUENCIES = _spectrum_mask(ANALYSIS_SIDE)
_BORDER = np.ones((ANALYSIS_SIDE, ANALYSIS_SIDE), dtype=bool)
_BORDER[ANALYSIS_SIDE // 7:-(ANALYSIS_SIDE // 7), ANALYSIS_SIDE // 7:-(ANALYSIS_SIDE // 7)] = False


def _blockiness(grey: np.ndarray) -> float:
    """Mean |step| across 8-px block borders over the mean |step| elsewhere (1.0 where the image is too small)."""
    steps_x = np.abs(np.diff(grey, axis=1))
    steps_y = np.abs(np.diff(grey, axis=0))
    if steps_x.shape[1] < _BLOCK or steps_y.shape[0] < _BLOCK:
        return 1.0
    border_x = np.arange(steps_x.shape[1]) % _BLOCK == _BLOCK - 1
    border_y = np.arange(steps_y.shape[0]) % _BLOCK == _BLOCK - 1
    across = steps_x[:, border_x].mean() + steps_y[border_y].mean()
    inside = steps_x[:, ~border_x].mean() + steps_y[~border_y].mean()
    return float(across / inside) if inside > 0 else 1.0


def measure_quality(image: np.ndarray) -> dict[str, float]:
    """The measures of :data:`FEATURES` of one HxWx3 uint8 RGB image (see the module docstring)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"measure_quality needs an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    native = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    grey = cv2.resize(native, (ANALYSIS_SIDE, ANALYSIS_SIDE), interpolation=cv2.INTER_AREA)
    spread = float(grey.std())
    power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    centre_gradient = float(gradient[~_BORDER].mean())
    return {
        "sharpness": float(np.log10(1.0 + cv2.Laplacian(grey, cv2.CV_32F, ksize=3).var())),
        "high_frequency_ratio": float(power[_HIGH_FREQUENCIES].sum() / power.sum()) if power.sum() > 0 else 0.0,
        "blockiness": _blockiness(native),
        "brightness": float(grey.mean() / 255.0),
        "contrast": spread / 255.0,
        "saturation": float(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1].mean() / 255.0),
        "asymmetry": float(np.abs(grey - grey[:, ::-1]).mean() / spread) if spread > 0 else 0.0,
        "background_texture": float(gradient[_BORDER].mean() / centre_gradient) if centre_gradient > 0 else 0.0,
    }


# --------------------------------------------------------------------------------------------- the rule
def _quantiles(values: np.ndarray, levels: Sequence[float]) -> list[float]:
    return [float(value) for value in np.quantile(values, levels)]


def _standardised(values: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """``(values - middle quantile) / max(high - low quantile, floor)`` for quantiles ``[low, middle, high]``."""
    low, middle, high = quantiles
    return (values - middle) / max(high - low, _SCALE_FLOOR)


def _quality_score(features: np.ndarray, fitted: dict[str, list[float]]) -> np.ndarray:
    """Sharpness and blockiness in units of their spread on the *good* side of the median (``Q75 - Q50`` for
    sharpness, ``Q50 - Q25`` for log blockiness): the low-quality images in the fitting set sit in the other tail
    and do not widen the scale."""
    column = FEATURES.index
    low, middle, high = fitted["sharpness"]
    sharp = (features[:, column("sharpness")] - middle) / max(high - middle, _SCALE_FLOOR)
    low, middle, high = fitted["log_blockiness"]
    block = (np.log(features[:, column("blockiness")]) - middle) / max(middle - low, _SCALE_FLOOR)
    return (sharp - block) / 2


def _unconstrained_score(features: np.ndarray, fitted: dict[str, list[float]]) -> np.ndarray:
    column = FEATURES.index
    return (_standardised(features[:, column("saturation")], fitted["saturation"])
            + _standardised(features[:, column("asymmetry")], fitted["asymmetry"])) / 2


def fit_thresholds(features: np.ndarray) -> dict[str, Any]:
    """The quantiles and thresholds of :data:`RULE` from the fitting images' measures (rows of ``features``)."""
    if len(features) == 0:
        raise ValueError("no images to fit the domain thresholds on (the fitting identities have no images)")
    column = FEATURES.index
    quality_levels = RULE["low_quality"]["quantiles"]
    spread_levels = RULE["unconstrained"]["quantiles"]
    fitted = {
        "sharpness": _quantiles(features[:, column("sharpness")], quality_levels),
        "log_blockiness": _quantiles(np.log(features[:, column("blockiness")]), quality_levels),
        "saturation": _quantiles(features[:, column("saturation")], spread_levels),
        "asymmetry": _quantiles(features[:, column("asymmetry")], spread_levels),
    }
    good = _quality_score(features, fitted) >= RULE["low_quality"]["cutoff"]
    scores = _unconstrained_score(features[good] if good.any() else features, fitted)
    low, high = _quantiles(scores, RULE["unconstrained"]["threshold_quantiles"])
    return {"feature_quantiles": fitted, "low_quality_score": RULE["low_quality"]["cutoff"],
            "unconstrained_score": (low + high) / 2}


def apply_thresholds(features: np.ndarray, thresholds: dict[str, Any]) -> np.ndarray:
    """The domain code (int8, :data:`DOMAIN_NAMES` order) of every row of ``features`` under fitted ``thresholds``."""
    fitted = thresholds["feature_quantiles"]
    codes = np.where(_unconstrained_score(features, fitted) > thresholds["unconstrained_score"],
                     UNCONSTRAINED, CONTROLLED)
    codes[_quality_score(features, fitted) < thresholds["low_quality_score"]] = LOW_QUALITY
    return codes.astype(np.int8)


# --------------------------------------------------------------------------------------------- labelling
@dataclass
class DomainLabelling:
    """A pack's domain labels: ``codes[i]`` is the domain of dataset index ``i`` (names in ``names``)."""

    codes: np.ndarray
    names: tuple[str, ...]
    thresholds: dict[str, Any]
    counts: dict[str, int]
    out_dir: Path
    paths: dict[str, Path] = field(default_factory=dict)
    features: np.ndarray | None = None
    #: records to degrade on the fly (synthetic low-quality identities), ``None`` without that option
    degrade: np.ndarray | None = None
    #: seed of the on-the-fly degradation
    degrade_seed: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready: counts per domain, thresholds, synthetic low-quality records and the files written."""
        return {"out_dir": str(self.out_dir), "images": int(len(self.codes)), "counts": dict(self.counts),
                "thresholds": self.thresholds,
                "synthetic_low_quality_images": None if self.degrade is None else int(self.degrade.sum()),
                "files": {name: str(path) for name, path in self.paths.items()}}


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pack_description(dataset: Any) -> dict[str, Any] | None:
    """Size and SHA-256 of the pack's ``.rec`` / ``.idx`` / ``property`` when ``dataset`` is a RecordIO pack."""
    paths = getattr(dataset, "paths", None)
    if paths is None or not hasattr(paths, "rec"):
        return None
    files = {"rec": paths.rec, "idx": paths.idx, "property": paths.property}
    return {"path": str(Path(paths.rec).resolve()),
            **{name: {"bytes": path.stat().st_size, "sha256": _file_digest(path)} for name, path in files.items()}}


def _output_paths(out_dir: Path) -> dict[str, Path]:
    paths = {"labels": out_dir / LABELS_FILE, "codes": out_dir / CODES_FILE, "features": out_dir / FEATURES_FILE,
             "degrade": out_dir / DEGRADE_FILE}
    paths.update({f"grid_{name}": out_dir / f"samples_{name}.png" for name in DOMAIN_NAMES})
    return paths


def check_output_folder(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse, before any work, an output folder that already holds a labelling (unless ``overwrite``) or cannot be
    written: FileExistsError / NotADirectoryError / PermissionError with one line naming it."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"domain-label folder {out_dir} is a file, not a folder")
    existing = [path.name for path in _output_paths(out_dir).values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a domain labelling ({', '.join(existing)}); pass "
                              "overwrite=True (--overwrite) to replace it, or choose another folder")
    return check_writable_folder(out_dir, "domain-label folder")


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _sample_grid(dataset: Any, indices: np.ndarray) -> bytes:
    """PNG of up to 8x8 chips (48 px) at evenly spaced positions of ``indices`` (black where fewer)."""
    count = _GRID_SIDE * _GRID_SIDE
    chosen = indices[np.unique(np.linspace(0, len(indices) - 1, count).round().astype(int))] if len(indices) else []
    rows = max(1, -(-len(chosen) // _GRID_SIDE))
    grid = np.zeros((rows * _GRID_CHIP, _GRID_SIDE * _GRID_CHIP, 3), dtype=np.uint8)
    for slot, index in enumerate(chosen):
        chip = cv2.resize(np.asarray(dataset[int(index)][0]), (_GRID_CHIP, _GRID_CHIP), interpolation=cv2.INTER_AREA)
        row, col = divmod(slot, _GRID_SIDE)
        grid[row * _GRID_CHIP:(row + 1) * _GRID_CHIP, col * _GRID_CHIP:(col + 1) * _GRID_CHIP] = chip
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 array as PNG
        raise RuntimeError("cannot encode the sample grid as PNG")
    return encoded.tobytes()


def _dataset_labels(dataset: Any) -> np.ndarray:
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = [int(dataset[index][1]) for index in range(len(dataset))]
    return np.asarray(labels, dtype=np.int64)


def synthetic_identities(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The identities (sorted) whose images become synthetic low-quality: ``round(fraction * identities)`` of all
    the pack's identities, drawn with a generator of their own (``[seed, 5]``)."""
    identities = np.unique(labels)
    count = int(round(fraction * len(identities)))
    if count == 0:
        return identities[:0]
    return np.sort(np.random.default_rng([seed, 5]).choice(identities, size=count, replace=False))


def label_domains(dataset: Any, out_dir: str | Path, fit_identities: Sequence[int] | np.ndarray | None = None,
                  overwrite: bool = False, progress: bool = True, synthetic_low_quality: float = 0.0,
                  synthetic_seed: int = 0) -> DomainLabelling:
    """Measure every image of ``dataset``, label it with :data:`DOMAIN_NAMES`' rule and save the labelling.

    Args:
        dataset: a map-style dataset of ``(image, identity, ...)`` with ``labels`` (e.g.
            :class:`~afr.data.recordio.RecordIODataset`); codes follow its index order.
        out_dir: the side-car folder (created if needed); the pack itself is never written.
        fit_identities: identity labels whose images fit the thresholds (the training identities); ``None``: all.
        overwrite: replace a labelling already in ``out_dir`` (else FileExistsError before any work).
        progress: a tqdm bar over the images on stderr.
        synthetic_low_quality: fraction (0 <= f < 1) of all identities whose images are labelled low-quality and
            degraded on the fly (see the module docstring); 0: none, no ``degrade.npy``.
        synthetic_seed: seed of that draw and of the degradation.

    Writes (each file atomically, ``domains.json`` last): ``codes.npy`` (int8, one code per dataset index),
    ``features.npy`` (float32, one row per index, columns :data:`FEATURES`), ``samples_<domain>.png`` (up to 8x8
    chips of each domain), ``degrade.npy`` (bool per index, with ``synthetic_low_quality`` only) and ``domains.json``
    (names, rule, fitted quantiles and thresholds, counts, feature definitions, fitting identities, the pack's size
    and SHA-256, the SHA-256 of ``codes.npy``, version). Overwriting removes the old ``domains.json`` first, so a run
    killed meanwhile leaves a folder :func:`load_domain_labels` calls incomplete, never a mix of two labellings.
    """
    from tqdm.auto import tqdm

    if not 0.0 <= synthetic_low_quality < 1.0:
        raise ValueError(f"synthetic_low_quality must be a fraction in [0, 1), got {synthetic_low_quality}")
    out_dir = check_output_folder(out_dir, overwrite)
    labels = _dataset_labels(dataset)
    if len(labels) == 0:
        raise ValueError("the dataset has no images to label")
    if fit_identities is None:
        fit_identities = np.unique(labels)
    fit_identities = np.unique(np.asarray(fit_identities, dtype=np.int64))
    unknown = np.setdiff1d(fit_identities, labels)
    if unknown.size:
        raise ValueError(f"fit_identities holds {unknown.size} identities the dataset does not have, e.g. "
                         f"{unknown[:5].tolist()}")

    features = np.empty((len(labels), len(FEATURES)), dtype=np.float32)
    for index in tqdm(range(len(labels)), desc="measuring images", unit="image", disable=not progress):
        measures = measure_quality(np.asarray(dataset[index][0]))
        features[index] = [measures[name] for name in FEATURES]
    fitting = np.isin(labels, fit_identities)
    thresholds = fit_thresholds(features[fitting].astype(np.float64))
    codes = apply_thresholds(features.astype(np.float64), thresholds)
    measured_counts = {name: int((codes == code).sum()) for code, name in enumerate(DOMAIN_NAMES)}
    degrade_mask, synthetic = None, None
    if synthetic_low_quality > 0:
        chosen = synthetic_identities(labels, synthetic_low_quality, synthetic_seed)
        degrade_mask = np.isin(labels, chosen)
        codes[degrade_mask] = LOW_QUALITY
        synthetic = {"fraction": synthetic_low_quality, "seed": synthetic_seed, "identities": chosen.tolist(),
                     "images": int(degrade_mask.sum()), "file": DEGRADE_FILE,
                     "degradation": "afr.data.degrade.degrade(image, seed, f'record{index}') with DegradeSettings()"}
    counts = {name: int((codes == code).sum()) for code, name in enumerate(DOMAIN_NAMES)}

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = _output_paths(out_dir)
    paths["labels"].unlink(missing_ok=True)  # overwrite: no domains.json until the new files are all in place
    paths["degrade"].unlink(missing_ok=True)
    codes_bytes = _npy_bytes(codes)
    atomic_write_bytes(paths["codes"], codes_bytes)
    atomic_write_bytes(paths["features"], _npy_bytes(features))
    if degrade_mask is not None:
        atomic_write_bytes(paths["degrade"], _npy_bytes(degrade_mask))
    shown = dataset if degrade_mask is None else DomainLabelledDataset(dataset, codes, DOMAIN_NAMES, degrade_mask,
                                                                       synthetic_seed)  # as training sees them
    for code, name in enumerate(DOMAIN_NAMES):
        atomic_write_bytes(paths[f"grid_{name}"], _sample_grid(shown, np.flatnonzero(codes == code)))
    record = {
        "version": LABELLER_VERSION,
        "names": list(DOMAIN_NAMES),
        "images": int(len(codes)),
        "counts": counts,
        "measured_counts": measured_counts,
        "synthetic_low_quality": synthetic,
        "codes_sha256": hashlib.sha256(codes_bytes).hexdigest(),
        "thresholds": thresholds,
        "rule": RULE,
        "features": {name: FEATURE_DEFINITIONS[name] for name in FEATURES},
        "fit_identities": {"count": int(len(fit_identities)), "images": int(fitting.sum()),
                           "labels": fit_identities.tolist()},
        "pack": _pack_description(dataset),
        "files": {"codes": CODES_FILE, "features": FEATURES_FILE,
                  "samples": {name: paths[f"grid_{name}"].name for name in DOMAIN_NAMES}},
    }
    atomic_write_text(paths["labels"], json.dumps(record, indent=1) + "\n")
    if degrade_mask is None:
        del paths["degrade"]
    return DomainLabelling(codes, DOMAIN_NAMES, thresholds, counts, out_dir, paths, features, degrade_mask,
                           synthetic_seed)


def load_domain_labels(out_dir: str | Path, dataset: Any = None) -> DomainLabelling:
    """The labelling :func:`label_domains` saved in ``out_dir``; with ``dataset``, checked against it.

    MissingResourceError names the folder or file that is missing; ValueError when the codes do not match
    ``dataset`` (another length, or a pack of another size than the one labelled).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise MissingResourceError(f"domain-label folder not found: {out_dir} (write it with label_domains / "
                                   "python -m afr label-domains)")
    paths = _output_paths(out_dir)
    for key in ("labels", "codes"):
        if not paths[key].is_file():
            raise MissingResourceError(f"{paths[key].name} not found in the domain-label folder {out_dir} "
                                       "(an incomplete labelling: run label-domains again with --overwrite)")
    try:
        record = json.loads(paths["labels"].read_text())
        names = tuple(record["names"])
        thresholds, counts = record["thresholds"], record["counts"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{paths['labels']} is not a domain labelling: {error}") from None
    codes_bytes = paths["codes"].read_bytes()
    if record.get("codes_sha256") not in (None, hashlib.sha256(codes_bytes).hexdigest()):
        raise ValueError(f"{paths['codes']} is not the file {paths['labels'].name} was written with (SHA-256 "
                         "differs): run label-domains again with --overwrite")
    codes = np.load(paths["codes"], allow_pickle=False)
    if codes.ndim != 1 or len(codes) != record.get("images", len(codes)):
        raise ValueError(f"{paths['codes']} holds {codes.shape} codes, {paths['labels'].name} says "
                         f"{record.get('images')}")
    synthetic = record.get("synthetic_low_quality")
    degrade_mask = None
    if synthetic:
        if not paths["degrade"].is_file():
            raise MissingResourceError(f"{DEGRADE_FILE} not found in the domain-label folder {out_dir} (its "
                                       f"{LABELS_FILE} marks {synthetic['images']} images to degrade on the fly)")
        degrade_mask = np.load(paths["degrade"], allow_pickle=False).astype(bool)
        if degrade_mask.shape != codes.shape:
            raise ValueError(f"{paths['degrade']} holds {degrade_mask.shape} flags for {len(codes)} codes")
    if dataset is not None:
        if len(codes) != len(dataset):
            raise ValueError(f"{paths['codes']} holds {len(codes)} domain codes but the dataset has {len(dataset)} "
                             f"images: the labelling in {out_dir} belongs to another pack")
        pack = record.get("pack")
        rec = getattr(getattr(dataset, "paths", None), "rec", None)
        if pack and rec is not None and Path(rec).stat().st_size != pack["rec"]["bytes"]:
            raise ValueError(f"the labelling in {out_dir} was made for a .rec of {pack['rec']['bytes']} bytes, "
                             f"{rec} has {Path(rec).stat().st_size}: it belongs to another pack")
    features = np.load(paths["features"], allow_pickle=False) if paths["features"].is_file() else None
    present = {key: path for key, path in paths.items() if path.is_file()}
    return DomainLabelling(codes, names, thresholds, counts, out_dir, present, features, degrade_mask,
                           int(synthetic["seed"]) if synthetic else 0)


# --------------------------------------------------------------------------------------------- dataset view
class DomainLabelledDataset:
    """``dataset`` with a domain code per index: ``ds[i]`` is ``(image, identity, domain_code)``.

    Exposes ``labels``, ``num_classes``, ``domains`` (int64), ``domain_names`` and ``has_domains = True`` (what the
    trainer, the identity sampler and DA-LoRA read); any other attribute (``image_size``, ``identity_indices``,
    ``identity_ranges``, ``paths`` ...) is the wrapped dataset's. A domain the dataset's own samples carry is
    replaced by ``codes``. With ``degrade`` (one flag per index: the synthetic low-quality records), the flagged
    images come back degraded by :func:`afr.data.degrade.degrade` with ``degrade_seed`` and key ``"record<i>"``
    (the wrapped dataset must return HxWx3 uint8 images for those: give it no tensor transform).
    """

    has_domains = True

    def __init__(self, dataset: Any, codes: Sequence[int] | np.ndarray, names: Sequence[str],
                 degrade: Sequence[bool] | np.ndarray | None = None, degrade_seed: int = 0):
        codes = np.asarray(codes)
        if codes.ndim != 1 or len(codes) != len(dataset):
            raise ValueError(f"{codes.shape} domain codes for a dataset of {len(dataset)} images")
        if len(codes) and not 0 <= int(codes.min()) <= int(codes.max()) < len(names):
            raise ValueError(f"domain codes {int(codes.min())}..{int(codes.max())} but {len(names)} names")
        if degrade is not None:
            degrade = np.asarray(degrade, dtype=bool)
            if degrade.shape != codes.shape:
                raise ValueError(f"{degrade.shape} degrade flags for {len(codes)} domain codes")
        self.dataset = dataset
        self.domains = codes.astype(np.int64)
        self.domain_names = tuple(names)
        self.degrade = degrade
        self.degrade_seed = int(degrade_seed)
        self._labels: np.ndarray | None = None

    @classmethod
    def from_folder(cls, dataset: Any, out_dir: str | Path) -> "DomainLabelledDataset":
        """``dataset`` with the labelling saved in ``out_dir`` (checked against it by :func:`load_domain_labels`)."""
        labelling = load_domain_labels(out_dir, dataset)
        return cls(dataset, labelling.codes, labelling.names, labelling.degrade, labelling.degrade_seed)

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = _dataset_labels(self.dataset)
        return self._labels

    @property
    def num_classes(self) -> int:
        return int(self.dataset.num_classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index %= len(self)
        sample = self.dataset[index]
        image = sample[0]
        if self.degrade is not None and self.degrade[index]:
            from afr.data.degrade import degrade

            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise TypeError(f"record {index} is marked to be degraded but the dataset returns a {image.dtype} "
                                f"{image.shape} image, not HxWx3 uint8: wrap the pack without a tensor transform")
            image = degrade(image, self.degrade_seed, f"record{index}")
        return image, int(sample[1]), int(self.domains[index])

    def __getattr__(self, name: str) -> Any:
        # no recursion before __init__ ran (e.g. while unpickling)
        if name.startswith("__") or name in ("dataset", "_labels", "degrade", "degrade_seed"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"DomainLabelledDataset({self.dataset!r}, domains={self.domain_names})"
