from tinyprune.prune.protocol import Criterion, register


@register
class Random(Criterion):
    name = "random"
    description = "uniformly random channels, same ratio in every layer (baseline)"

    def importance(self, model, ctx, step):
        import torch_pruning as tp

        return tp.importance.RandomImportance()
