"""Effective settings of a run, one frozen dataclass per stage. Written verbatim into report.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from tinyprune.errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    layout: str = "auto"  # auto | nchw | nhwc: how x in the .npz is laid out
    eval_fraction: float = 0.2  # held out when the .npz has no test split
    calib_samples: int = 200  # int8 calibration images, drawn from the training part
    input_shape: tuple[int, ...] | None = None  # per-sample shape, when no data is given

    def __post_init__(self):
        if self.layout not in ("auto", "nchw", "nhwc"):
            raise ConfigError(f"--layout must be auto, nchw or nhwc, got {self.layout!r}")
        if not 0.05 <= self.eval_fraction <= 0.5:
            raise ConfigError(f"eval fraction must be in [0.05, 0.5], got {self.eval_fraction}")
        if self.calib_samples < 1:
            raise ConfigError("calibration samples must be >= 1")


@dataclass(frozen=True)
class PruneConfig:
    criterion: str = "l1"
    sparsity: float = 0.5  # fraction of MACs removed
    max_steps: int = 40  # at least this many steps (about 1 % of the channels each) to the MAC target
    # --criterion vib (tinyprune.prune.vib): KL weight per unit, VIB training epochs, and the
    # log(mu^2/sigma^2) below which a unit is removed (Dai et al. 2018: 0)
    vib_gamma: float = 5e-4
    vib_epochs: int = 10
    vib_threshold: float = 0.0
    at_init: bool = False  # prune a freshly re-initialized copy (pruning before training), then train it

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        if not self.vib_gamma >= 0:
            raise ConfigError(f"--vib-gamma must be >= 0, got {self.vib_gamma}")
        if self.vib_epochs < 0:
            raise ConfigError(f"--vib-epochs must be >= 0, got {self.vib_epochs}")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64

    def __post_init__(self):
        if self.epochs < 0:
            raise ConfigError(f"--finetune-epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("learning rate must be > 0 and batch size >= 1")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    tflm_check_samples: int = 1000  # held-out samples also run through the TFLM interpreter


@dataclass(frozen=True)
class CompressConfig:
    target: str = "cortex-m4"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # tinyprune.deepcompress.stage.DeepCompressConfig, or None to skip the stage. Kept untyped
    # here so that reading a config does not import torch.
    deepcompress: object | None = None
    plane: bool = False  # record the information plane during fine-tuning (plane.json, plane.png)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["deepcompress"] = self.deepcompress.to_dict() if self.deepcompress is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CompressConfig":
        d = dict(d)
        data = dict(d.pop("data", {}))
        if data.get("input_shape") is not None:
            data["input_shape"] = tuple(data["input_shape"])
        deep = d.pop("deepcompress", None)
        if deep is not None:
            from tinyprune.deepcompress.stage import DeepCompressConfig

            deep = DeepCompressConfig(**deep)
        return cls(
            deepcompress=deep,
            data=DataConfig(**data),
            prune=PruneConfig(**d.pop("prune", {})),
            finetune=FinetuneConfig(**d.pop("finetune", {})),
            export=ExportConfig(**d.pop("export", {})),
            **d,
        )
