from tinyprune.prune.protocol import Criterion, register


@register
class L1(Criterion):
    name = "l1"
    description = "L1 norm of each filter (Li et al. 2016), same ratio in every layer"

    def importance(self, model, ctx, step):
        import torch.nn as nn
        import torch_pruning as tp

        # Li et al. 2016: the L1 norm of the layer's own filters ("first" member of the coupled
        # group), not of the consumers' input columns, which the group sum would add in.
        return tp.importance.GroupMagnitudeImportance(
            p=1, group_reduction="first", normalizer=None, target_types=[nn.modules.conv._ConvNd, nn.Linear])
