import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinyprune.measure.macs import count_torch
from tinyprune.testing import MODELS


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "digits_cnn", "dw_residual", "concat_net"])
def test_macs_match_torch_flop_counter(name):
    model = MODELS[name]().eval()
    x = torch.rand(1, 1, 8, 8)
    macs, params = count_torch(model, x)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    # FlopCounterMode counts 2 FLOPs per multiply-accumulate of conv/matmul, nothing else
    assert 2 * macs == counter.get_total_flops()
    assert params == sum(p.numel() for p in model.parameters())
