from dataclasses import dataclass

from tinyprune.errors import ConfigError
from tinyprune.prune.protocol import Criterion, Step, register


@dataclass(frozen=True)
class MspicConfig:
    stages: int = 2  # clustering stages, with a fine-tune between them
    max_error_increase: float = 0.05  # a removal policy may cost this much error on the analysis samples

    def __post_init__(self):
        if self.stages < 1:
            raise ConfigError(f"--mspic-stages must be >= 1, got {self.stages}")
        if not 0 <= self.max_error_increase <= 1:
            raise ConfigError(f"--mspic-max-error-increase must be in [0, 1], got {self.max_error_increase}")


@register
class Mspic(Criterion):
    name = "mspic"
    description = ("MSPIC: remove residual/concat units by MI clustering, then mi channels to the target; "
                   "max error increase as a fraction (1 - R^2 on regression and reconstruction)")
    Config = MspicConfig
    # regression and reconstruction: unit MI about tinyprune.task.information_labels, policies judged
    # by the fraction of the target's variance lost (1 - R^2) instead of the error rate
    tasks = ("classify", "regress", "reconstruct")
    global_ranking = True

    def prepare(self, model, ctx):
        if ctx.sparsity == 0:
            return None
        from tinyprune.prune.skip_units import mspic

        retrain = (lambda m: ctx.retrain(m, "MSPIC stage fine-tune")) if ctx.retrain else None
        pruned, units = mspic(model, ctx.x, ctx.y, labels=ctx.info_labels, stages=self.config.stages,
                              max_error_increase=self.config.max_error_increase, retrain=retrain)
        return Step(pruned, {}, {"skip_unit_stages": units})

    def importance(self, model, ctx, step):
        from tinyprune.prune.mi import MIImportance

        return MIImportance(model, ctx.x, ctx.info_labels, cache_dir=ctx.cache_dir)
