from tinyprune.errors import ConfigError
from tinyprune.prune.protocol import Criterion, register


@register
class BnScale(Criterion):
    name = "bnscale"
    description = ("|gamma| of the batch norm after each conv (Liu et al. 2017, network slimming; Torch-Pruning's "
                   "BNScaleImportance), same ratio in every layer; models with batch norm")

    def importance(self, model, ctx, step):
        import torch.nn as nn
        import torch_pruning as tp

        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in model.modules()):
            raise ConfigError("--criterion bnscale ranks channels by their batch norm's scale, and this model has "
                              "no affine batch norm; use l1 or flow")
        return tp.importance.BNScaleImportance()
