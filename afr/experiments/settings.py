"""Experiment settings as plain dataclasses (cheap to import: the command line builds its options from them)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BaselineSettings"]


@dataclass
class BaselineSettings:
    """One baseline run; every field is a notebook parameter."""

    backbone: str = "dlib-resnet29"
    weights: str | None = None  # backbone weights directory (default: shared dlib weights)
    data_profile: str = "embedded"  # "embedded" | "full"
    # embedded profile
    embedded_root: str | None = None  # default data/processed/embedded
    # full profile
    train_rec: str | None = None  # CASIA-WebFace folder or prefix (train.rec/.idx/property)
    bins_dir: str | None = None  # folder holding lfw.bin cfp_fp.bin agedb_30.bin calfw.bin cplfw.bin
    num_identities: int | None = None  # CASIA subset size (FRoundation: 1000 / 10000); None = all
    benchmarks: tuple[str, ...] = ()  # test packs; default: all of the profile
    # LoRA and loss
    rank: int = 8
    alpha: float | None = None  # default: = rank
    lora_dropout: float = 0.0
    use_rslora: bool = False
    lora_targets: tuple[str, ...] | None = None  # default: the backbone's (ResNet convs / ViT q,v)
    margin: str = "cosface"
    s: float = 64.0
    m: float | None = None  # CosFace 0.35, ArcFace 0.5
    # optimisation
    epochs: int = 4
    batch_size: int = 32
    lr: float = 1e-4
    head_lr: float | None = None  # class centres start random; default: = lr
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    augment: bool = True
    num_workers: int = 0
    eval_every_epoch: bool = True
    seed: int = 0
    device: str = "auto"
    output_dir: str | None = None  # run folder (TensorBoard, checkpoints); default runs/<tag>
    progress: bool = True

    def __post_init__(self) -> None:
        if self.data_profile not in ("embedded", "full"):
            raise ValueError(f"data_profile must be 'embedded' or 'full', got {self.data_profile!r}")
        self.benchmarks = tuple(self.benchmarks or ())
        if self.lora_targets is not None:
            self.lora_targets = tuple(self.lora_targets)

    @property
    def tag(self) -> str:
        """A file-name-safe run name, e.g. ``baseline_embedded_dlib-resnet29_r8_seed0``."""
        return f"baseline_{self.data_profile}_{self.backbone}_r{self.rank}_seed{self.seed}"

    def lora_settings(self):
        """The :class:`~afr.adapters.lora.LoraSettings` of this run."""
        from afr.adapters.lora import LoraSettings

        return LoraSettings(r=self.rank, alpha=float(self.alpha or self.rank), dropout=self.lora_dropout,
                            use_rslora=self.use_rslora, target_modules=self.lora_targets)
