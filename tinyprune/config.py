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
    task: str | None = None  # classify | regress | reconstruct (tinyprune.task); None: from the data

    def __post_init__(self):
        if self.layout not in ("auto", "nchw", "nhwc"):
            raise ConfigError(f"--layout must be auto, nchw or nhwc, got {self.layout!r}")
        if not 0.05 <= self.eval_fraction <= 0.5:
            raise ConfigError(f"eval fraction must be in [0.05, 0.5], got {self.eval_fraction}")
        if self.task is not None and self.task not in ("classify", "regress", "reconstruct"):
            raise ConfigError(f"--task must be classify, regress or reconstruct, got {self.task!r}")
        if self.calib_samples < 1:
            raise ConfigError("calibration samples must be >= 1")


@dataclass(frozen=True)
class PruneConfig:
    # flow with compensation: ahead of l1 (Torch-Pruning's default) at equal MACs in
    # benchmarks/RESULTS.md ("The default"), and it serves every task and graph shape
    criterion: str = "flow"
    sparsity: float = 0.5  # fraction of MACs removed
    max_steps: int = 40  # at least this many steps (about 1 % of the channels each) to the MAC target
    at_init: bool = False  # prune a freshly re-initialized copy (pruning before training), then train it
    # fold what the kept channels predict of each removed channel into its consumers (prune/compensate.py)
    compensate: bool = True
    # the criterion's own frozen config (tinyprune.prune.protocol); a dict of its fields, or None
    # for its defaults, is turned into it here, so a bad name or option fails before any slow work
    options: object = None

    @property
    def compensating(self) -> bool:
        """Whether compensation runs: not under at_init, where a fresh initialization has nothing to carry over."""
        return self.compensate and not self.at_init

    def __post_init__(self):
        from tinyprune.prune import protocol  # light: no torch

        if not 0.0 <= self.sparsity < 1.0:
            raise ConfigError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        cls = protocol.get(self.criterion)
        if self.options is None or isinstance(self.options, dict):
            object.__setattr__(self, "options", protocol.build_config(self.criterion, self.options))
        elif not isinstance(self.options, cls.Config):
            raise ConfigError(f"options of --criterion {self.criterion} must be a {cls.Config.__name__}")


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    # "adam", or "sgd" with momentum (Caffe's solver, which Deep Compression's LeNets trained with)
    optimizer: str = "adam"
    weight_decay: float = 0.0  # L2 penalty (SGD) / Adam's coupled weight decay
    momentum: float = 0.9  # SGD only

    def __post_init__(self):
        if self.epochs < 0:
            raise ConfigError(f"--finetune-epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("learning rate must be > 0 and batch size >= 1")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if not 0 <= self.weight_decay < 1 or not 0 <= self.momentum < 1:
            raise ConfigError("weight decay and momentum must be in [0, 1)")


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    # float-exact rewrites of the exported copy (tinyprune.export.rewrite): BatchNorms not folded
    # into a conv as depthwise 1x1 convs; channels entering a concatenation scaled to its range
    bn_as_depthwise: bool = True
    equalize_concats: bool = True


@dataclass(frozen=True)
class CompressConfig:
    target: str = "cortex-m4"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    # Deep Compression's archive (--archive): tinyprune.deepcompress.stage.DeepCompressConfig, or
    # None. Kept untyped here so that reading a config does not import torch.
    deepcompress: object | None = None
    # weight sharing for the device: tinyprune.deepcompress.deploy.SharingConfig, or None to skip
    sharing: object | None = None
    # the most held-out accuracy (points) the deployed int8 model may lose against the original;
    # structured pruning backs off and weight sharing widens its indices to stay within it
    max_accuracy_drop: float = 1.0
    plane: bool = False  # record the information plane during fine-tuning (plane.json, plane.png)
    # where analyses (MI scores, covariances) are kept for the next run on the same model and data;
    # None: not kept (the CLI's default is tinyprune.information.cache.default_cache_dir())
    cache_dir: str | None = None
    # latency is predicted for this engine (tinyprune.measure.runtimes; None: the target's default)
    # at this clock (None: the target's)
    runtime: str | None = None
    clock_mhz: float | None = None
    # the flash-for-RAM trade of a LUT model (tinyprune.deepcompress.deploy.flash_for_ram):
    # auto (the rule), ram (never take it) or flash (always)
    prefer: str = "auto"

    def __post_init__(self):
        import math

        if self.prefer not in ("auto", "ram", "flash"):
            raise ConfigError(f"--prefer must be auto, ram or flash, got {self.prefer!r}")

        drop = self.max_accuracy_drop
        if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not math.isfinite(drop) \
                or not 0 <= drop <= 100:
            raise ConfigError(f"--max-accuracy-drop is in accuracy points, 0..100; got {drop!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["deepcompress"] = self.deepcompress.to_dict() if self.deepcompress is not None else None
        d["sharing"] = self.sharing.to_dict() if self.sharing is not None else None
        return d
