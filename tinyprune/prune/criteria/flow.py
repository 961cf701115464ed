from dataclasses import dataclass

from tinyprune.prune.protocol import Criterion, register


@dataclass(frozen=True)
class FlowConfig:
    conditional: bool = True  # signal a channel adds given the rest of its layer (False: its own variance)
    per_mac: bool = True  # rank by information per MAC saved (False: information alone)


@register
class Flow(Criterion):
    name = "flow"
    description = ("information each channel delivers to the layers that read it (Gaussian, conditioned on the "
                   "rest of its layer), per MAC saved; one global ranking")
    Config = FlowConfig
    global_ranking = True

    def importance(self, model, ctx, step):
        from tinyprune.prune.flow import FlowImportance

        return FlowImportance(model, ctx.x, conditional=self.config.conditional, per_mac=self.config.per_mac,
                              cache_dir=ctx.cache_dir)
