from dataclasses import dataclass

from tinyprune.prune.protocol import Criterion, register


@dataclass(frozen=True)
class FlowConfig:
    conditional: bool = True  # signal a channel adds given the rest of its layer (False: its own variance)
    per_mac: bool = True  # rank by information per MAC saved (False: information alone)
    # weight each layer's shares by the output information its thinning costs (measured, see flow.py)
    sensitivity: bool = False
    # "global": one ranking across layers (information per MAC decides each layer's width);
    # "uniform": the same channel ratio in every layer, flow ranking the channels within each
    allocation: str = "global"
    # where a channel's variance is measured: "input" (what its consumers read, after the
    # activation) or "preact" (its batch norm's output, before the activation; layers without one
    # fall back to "input")
    point: str = "input"

    def __post_init__(self):
        from tinyprune.errors import ConfigError

        if self.allocation not in ("global", "uniform"):
            raise ConfigError(f"--flow-allocation takes global or uniform, got {self.allocation!r}")
        if self.point not in ("input", "preact"):
            raise ConfigError(f"--flow-point takes input or preact, got {self.point!r}")


@register
class Flow(Criterion):
    name = "flow"
    description = ("information each channel delivers to the layers that read it (Gaussian, conditioned on the "
                   "rest of its layer), per MAC saved; one global ranking")
    Config = FlowConfig

    @property
    def global_ranking(self) -> bool:
        return self.config.allocation == "global"

    def importance(self, model, ctx, step):
        from tinyprune.prune.flow import FlowImportance

        return FlowImportance(model, ctx.x, conditional=self.config.conditional, per_mac=self.config.per_mac,
                              cache_dir=ctx.cache_dir, sensitivity=self.config.sensitivity,
                              sparsity=ctx.sparsity, y=ctx.y, point=self.config.point)
