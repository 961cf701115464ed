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


class _Mixed(torch.nn.Module):
    """Ops a module-hook counter misses: a transposed conv, a 3-D conv and a functional matmul."""

    def __init__(self):
        super().__init__()
        self.up = torch.nn.ConvTranspose2d(1, 4, 2, stride=2)
        self.vol = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.proj = torch.nn.Parameter(torch.randn(16, 5))

    def forward(self, x):
        y = self.up(x)  # [1, 4, 16, 16]
        v = self.vol(y.unsqueeze(1))  # [1, 2, 4, 16, 16]
        return v.flatten(2)[..., :16] @ self.proj  # [1, 2, 16] @ [16, 5]


def test_one_counter_sees_transposed_3d_and_functional_ops():
    model = _Mixed().eval()
    x = torch.rand(1, 1, 8, 8)
    macs, _ = count_torch(model, x)
    up = 64 * 4 * 2 * 2  # each input pixel meets out_channels * kernel weights
    vol = 2 * 4 * 16 * 16 * 27
    matmul = 2 * 16 * 5  # [1, 2, 16] @ [16, 5]
    assert macs == up + vol + matmul
