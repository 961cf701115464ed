import json

import numpy as np
import pytest
import torch

from tinyprune.api import ModelSource, analysis_set
from tinyprune.config import DataConfig, PruneConfig
from tinyprune.data import prepare
from tinyprune.prune import prune_to_macs
from tinyprune.prune.mi import model_channel_mi, redundancy_discount


def test_redundant_copy_is_discounted_but_its_original_is_not():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, generator=g), torch.randn(500, generator=g)
    acts = torch.stack([a, a + 0.01 * torch.randn(500, generator=g), b], dim=1).double()
    relevance = torch.tensor([1.0, 0.9, 0.5], dtype=torch.float64)
    d = redundancy_discount(acts, relevance)
    assert d[0] == 1.0  # the most relevant channel has nothing above it
    assert d[1] < 0.05  # a near copy of a more relevant channel adds almost nothing
    assert d[2] > 0.8  # an independent channel keeps (nearly) all of its relevance


@pytest.mark.xfail(strict=False, reason="since the equal-MAC landing, conv2's removed channels (scored on the "
                   "original model) can average above its kept ones: scores are re-measured while pruning; "
                   "to be replaced by a test on the re-measured scores (issue 10)")
def test_mi_pruning_keeps_the_informative_channels(trained, digits):
    model = trained("cnn_bn").eval()
    splits = prepare(digits, model, DataConfig(), 0)
    x, y = analysis_set(splits)
    res = prune_to_macs(model, PruneConfig(criterion="mi", sparsity=0.6, compensate=False), x, y, classes=10)
    assert res.macs_after <= 0.4 * res.macs_before * 1.02
    mi = model_channel_mi(model, x, y)
    label_entropy = np.log(10)
    checked = 0
    for layer in res.layers:
        rel = mi[layer["name"]]["relevance"]
        assert (rel >= -1e-6).all() and (rel <= label_entropy + 0.05).all()
        kept = res.kept[layer["name"]]
        removed = sorted(set(range(len(rel))) - set(kept))
        if removed:
            checked += 1
            # the criterion ranks by the redundancy-discounted score (relevance alone can favour
            # a removed near-copy of a kept channel)
            score = mi[layer["name"]]["score"]
            assert score[kept].mean() > score[removed].mean(), layer["name"]
    assert checked >= 1
    # global ranking: layers are not all cut by the same fraction
    fractions = {round(l["channels_after"] / l["channels_before"], 2) for l in res.layers[:-1]}
    assert len(fractions) > 1


def test_analyze_writes_mi_json_and_plot(tmp_path, trained, digits_npz):
    from tinyprune.api import analyze
    from tinyprune.config import CompressConfig

    torch.save(trained("cnn_bn").eval(), tmp_path / "m.pt")
    result = analyze(ModelSource(tmp_path / "m.pt"), CompressConfig(), digits_npz, tmp_path / "mi")
    saved = json.loads((tmp_path / "mi" / "mi.json").read_text())
    assert (tmp_path / "mi" / "mi.png").read_bytes()[:4] == b"\x89PNG"
    assert [l["name"] for l in saved["layers"]] == ["0", "3", "8"]
    assert saved["layers"][0]["channels"] == 16 and len(saved["layers"][0]["relevance"]) == 16
    assert all(l["max"] <= saved["label_entropy"] + 0.05 for l in saved["layers"])
    assert result["layers"][1]["top"][0][1] == max(result["layers"][1]["relevance"])
