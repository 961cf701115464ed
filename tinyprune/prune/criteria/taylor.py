from tinyprune.prune.protocol import Criterion, register


@register
class Taylor(Criterion):
    name = "taylor"
    description = ("first-order Taylor (Molchanov et al. 2019, Torch-Pruning's GroupTaylorImportance) on the "
                   "analysis samples, re-computed every step; same ratio in every layer (baseline)")

    def importance(self, model, ctx, step):
        import torch_pruning as tp

        from tinyprune.prune.gradients import FreshGradients

        return FreshGradients(tp.importance.GroupTaylorImportance(), model, ctx.x, ctx.y)
