from dataclasses import dataclass

from tinyprune.prune.protocol import Criterion, Step, register


@dataclass(frozen=True)
class VibOptions:
    gamma: float = 5e-4  # KL weight per unit (larger removes more)
    epochs: int = 10  # VIB training epochs
    threshold: float = 0.0  # remove units with log(mu^2/sigma^2) below this (Dai et al. 2018: 0)
    lr: float = 1e-3  # learning rate of the network weights (and of the gates with sgd)
    optimizer: str = "adam"  # or "sgd" (momentum 0.9), the authors' solver
    weight_decay: float = 0.0  # L2 on weights and gates (the authors' code: 1e-4 with sgd)
    # per gated layer, in layer order, a multiplier of gamma (Dai et al. 2018's code: kl_mult per
    # layer), e.g. "1,1,0.25"; empty: 1 for every layer
    layer_gamma: str = ""
    gate_inputs: bool = False  # also gate the first layer's inputs (the paper's LeNet-300-100 784-300-100 table)
    # past the threshold, rank the remaining units by information bound per MAC saved (False: log alpha alone)
    per_mac: bool = True

    def __post_init__(self):
        from tinyprune.errors import ConfigError

        try:
            multipliers = tuple(float(v) for v in self.layer_gamma.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--vib-layer-gamma takes numbers separated by commas, got {self.layer_gamma!r}") from None
        if any(not m >= 0 or m == float("inf") for m in multipliers):
            raise ConfigError(f"--vib-layer-gamma multipliers must be finite and >= 0, got {self.layer_gamma!r}")

        if not self.gamma >= 0:
            raise ConfigError(f"--vib-gamma must be >= 0, got {self.gamma}")
        if self.epochs < 0:
            raise ConfigError(f"--vib-epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"--vib-lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"--vib-optimizer must be adam or sgd, got {self.optimizer!r}")
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"--vib-weight-decay must be in [0, 1), got {self.weight_decay}")


@register
class Vib(Criterion):
    name = "vib"
    description = ("VIBNet (Dai et al. 2018): train information-bottleneck gates (--vib-gamma, --vib-epochs), "
                   "remove units with log alpha < --vib-threshold, fold the gates; then least log(1+alpha) per MAC saved")
    Config = VibOptions
    # VIB trains with the task's loss (cross-entropy, or squared error for float targets) plus the KL
    tasks = ("classify", "regress", "reconstruct")
    global_ranking = True

    def prepare(self, model, ctx):
        from tinyprune.prune.vib import VibConfig, vib_prune

        o = self.config
        multipliers = tuple(float(v) for v in o.layer_gamma.split(",") if v.strip()) or None
        cfg = VibConfig(gamma=o.gamma, epochs=o.epochs, threshold=o.threshold, lr=o.lr, seed=ctx.seed,
                        layer_gamma=multipliers, gate_inputs=o.gate_inputs, optimizer=o.optimizer,
                        weight_decay=o.weight_decay)
        x, y = ctx.train_data()
        pruned, report = vib_prune(model, x, y, cfg, ctx.classes, ctx.progress)
        self.log_alpha = report["log_alpha"]
        # gates per layer, CE/KL history, |pruned - gated| check
        return Step(pruned, report["kept"],
                    {"prepared": {k: v for k, v in report.items() if k not in ("log_alpha", "kept")}})

    def importance(self, model, ctx, step):
        from tinyprune.prune.vib import VibImportance

        import torch

        example = torch.from_numpy(ctx.x[:1])
        return VibImportance(model, getattr(self, "log_alpha", {}), example, per_mac=self.config.per_mac)
