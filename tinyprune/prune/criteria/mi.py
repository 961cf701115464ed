from dataclasses import dataclass

from tinyprune.errors import ConfigError
from tinyprune.prune.protocol import Criterion, register

ESTIMATORS = ("kde-binned", "kde", "binning")


@dataclass(frozen=True)
class MiConfig:
    # per-channel I(T_c; Y): the Kolchinsky-Tracey KDE bound by binned FFT kernel sums (O(N) per
    # channel), the same bound by exact N x N kernel sums (kde), or plain binning
    estimator: str = "kde-binned"

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"--mi-estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")


@register
class Mi(Criterion):
    name = "mi"
    description = "I(channel; label) by the KDE bound, discounted for redundancy; one global ranking"
    Config = MiConfig
    # regression and reconstruction: information about the quantized target / the input's clusters
    # (tinyprune.task.information_labels)
    tasks = ("classify", "regress", "reconstruct")
    global_ranking = True

    def importance(self, model, ctx, step):
        from tinyprune.prune.mi import MIImportance

        return MIImportance(model, ctx.x, ctx.info_labels, method=self.config.estimator, cache_dir=ctx.cache_dir)
