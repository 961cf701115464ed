"""Issue 30: a user's own model, start to finish (--fit that fails loudly, --arch forms, batch guards)."""

import pytest
import torch

from tinyprune.cli import main
from tinyprune.cli_progress import FINISHED, STARTED


def _lines(err: str) -> tuple[list[str], list[str], list[str]]:
    """(trial headers, trial results, other lines) of stderr without a terminal."""
    lines = [l for l in err.strip().splitlines() if not l.startswith((STARTED, FINISHED))]
    heads = [l for l in lines if l.startswith("tinyprune: --fit trial") and "(of at most" in l]
    results = [l for l in lines if l.startswith("tinyprune: --fit trial") and l not in heads]
    return heads, results, [l for l in lines if not l.startswith("tinyprune: --fit trial")]


@pytest.mark.slow
def test_fit_that_fits_the_device_only_by_losing_accuracy_exits_1(tmp_path, trained, digits_npz, capsys):
    # the mlp's firmware: 43.0 kB unpruned, 39.1 kB at 45 % of the MACs removed, 34.8 kB at 90 %.
    # 35.5 kB takes ~85 %, where (no fine-tuning) the digits accuracy falls ~17 points
    torch.save(trained("mlp").eval(), tmp_path / "m.pt")
    out = tmp_path / "out"
    code = main(["compress", str(tmp_path / "m.pt"), "--data", str(digits_npz), "--out", str(out), "--fit",
                 "--max-flash", "35500", "--finetune-epochs", "0"])
    heads, results, other = _lines(capsys.readouterr().err)
    assert code == 1
    assert len(other) == 1, other
    error = other[0]
    assert error.startswith("tinyprune: error: nothing fits cortex-m4 within the accuracy budget (at most 1 points"), error
    # the closest: the trial that fits the device, and by how much it misses the accuracy
    assert "the closest, 90% of the MACs removed (model_int8.tflite), misses accuracy" in error, error
    each = error.split("every trial (MACs removed: misses): ")[1].split("; ")
    assert [e.split(":")[0] for e in each] == [h.split(": ")[2].split(" of")[0] for h in heads]
    assert each[0].startswith("0%: flash") and "accuracy" not in each[0]
    # one header (the setting) and one result line per trial
    assert len(heads) == len(results) == len(each) >= 3
    assert all(r.startswith(f"tinyprune: --fit trial {i + 1}: model_int8") for i, r in enumerate(results))
    assert not out.exists()
