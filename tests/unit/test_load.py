"""Model formats and safe loading."""

import os
import pickle
import zipfile

import pytest
import torch
import torch.nn as nn

from tinyprune.errors import UnsafePickle, UnsupportedModel
from tinyprune.lift import to_module
from tinyprune.load import load_model
from tinyprune.testing import MODELS

X = torch.rand(1, 1, 8, 8)


class Payload:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_module_loads_safely(tmp_path):
    model = MODELS["cnn_bn"]().eval()
    torch.save(model, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.format == "pickled-module"
    assert torch.equal(loaded.obj(X), model(X))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafePickle, match="refusing to unpickle evil.pt: it needs .*system"):
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()


def test_raw_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafePickle):
        load_model(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_custom_class_pickle_names_arch_and_opt_in(tmp_path):
    torch.save(MODELS["dw_residual"](), tmp_path / "custom.pt")
    with pytest.raises(UnsafePickle, match="DWResidual.*--arch.*--trust-code"):
        load_model(tmp_path / "custom.pt")
    assert load_model(tmp_path / "custom.pt", trust_code=True).format == "pickled-module"


def test_state_dict_needs_arch_then_loads(tmp_path):
    model = MODELS["dw_residual"]().eval()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(UnsupportedModel, match="state_dict.*--arch"):
        load_model(tmp_path / "sd.pt")
    loaded = load_model(tmp_path / "sd.pt", arch="tinyprune.testing.models:dw_residual")
    assert loaded.format == "state-dict"
    assert torch.equal(loaded.obj.eval()(X), model(X))


def test_state_dict_with_wrong_arch_is_refused(tmp_path):
    torch.save(MODELS["mlp"]().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(UnsupportedModel, match="does not match --arch"):
        load_model(tmp_path / "sd.pt", arch="tinyprune.testing.models:cnn_bn")


@pytest.mark.parametrize("name", ["mlp", "cnn_bn", "dw_residual", "concat_net"])
@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_graph_formats_lift_to_real_modules(tmp_path, name, fmt):
    model = MODELS[name]().eval()
    for m in model.modules():  # non-trivial BN statistics, so a wrong lift shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(model, X), path)
    else:
        torch.export.save(torch.export.export(model, (X,)), path)
    loaded = load_model(path, trust_code=fmt == "torchscript")
    assert loaded.format == fmt
    lifted = to_module(loaded, X)
    kinds = {type(m) for m in lifted.modules()}
    assert nn.Linear in kinds
    if name != "mlp":
        assert {nn.Conv2d, nn.BatchNorm2d} <= kinds
    batch = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(lifted(batch), model(batch), rtol=1e-4, atol=1e-5)
    for lm, om in zip((m for m in lifted.modules() if isinstance(m, nn.Conv2d)),
                      (m for m in model.modules() if isinstance(m, nn.Conv2d))):
        # same hyper-parameters as the original layer, so exporters see a normal conv
        assert (lm.stride, lm.padding, lm.dilation, lm.groups) == (om.stride, om.padding, om.dilation, om.groups)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"hello, I am a text file\n", "not a PyTorch model"),
])
def test_bad_files(tmp_path, content, message):
    (tmp_path / "m.pt").write_bytes(content)
    with pytest.raises(UnsupportedModel, match=message):
        load_model(tmp_path / "m.pt")


def test_missing_file(tmp_path):
    with pytest.raises(UnsupportedModel, match="not found"):
        load_model(tmp_path / "nope.pt")


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
def test_truncated_file(tmp_path, suffix):
    model = MODELS["cnn_bn"]().eval()
    path = tmp_path / f"m{suffix}"
    if suffix == ".pt":
        torch.save(model, path)
    else:
        torch.export.save(torch.export.export(model, (X,)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsupportedModel):
        load_model(path)


def test_zip_that_is_not_a_model(tmp_path):
    with zipfile.ZipFile(tmp_path / "m.pt", "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(UnsupportedModel, match="not a PyTorch model"):
        load_model(tmp_path / "m.pt")


def test_torchscript_runs_only_with_the_explicit_opt_in(tmp_path):
    """TorchScript is code: a forward can create files (torch.from_file with shared=True)."""
    from tinyprune.errors import UnsafeCode

    torch.jit.save(torch.jit.trace(MODELS["mlp"]().eval(), X), tmp_path / "ts.pt")
    with pytest.raises(UnsafeCode, match="TorchScript, which runs its own code; pass --trust-code"):
        load_model(tmp_path / "ts.pt")
    assert load_model(tmp_path / "ts.pt", trust_code=True).format == "torchscript"


@pytest.mark.parametrize("name, shape", [("autoencoder", (2, 64)), ("conv1d_net", (2, 8, 8))])
@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_one_d_batch_norms_lift_with_their_rank(tmp_path, name, shape, fmt):
    # A BatchNorm1d after a lifted Linear used to become a BatchNorm2d ("expected 4D input")
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(*shape)
    path = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    if fmt == "torchscript":
        torch.jit.save(torch.jit.trace(model, x), path)
    else:
        batch = torch.export.Dim("batch", min=1)
        torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), path)
    lifted = to_module(load_model(path, trust_code=fmt == "torchscript"), x[:1])
    assert sum(isinstance(m, nn.BatchNorm1d) for m in lifted.modules()) == \
        sum(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    batch_x = torch.rand(5, *shape[1:])
    torch.testing.assert_close(lifted(batch_x), model(batch_x), rtol=1e-4, atol=1e-5)
