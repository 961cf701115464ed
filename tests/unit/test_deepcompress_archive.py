"""Stage 4: the .tpz archive on real models, its checks, and the compression table."""

import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn

from tinyprune.deepcompress import (
    ArchiveError, achieved_ratio, archive_ratio, cluster_model, compression_table, magnitude_masks,
    model_tensors, pack, paper_ratio, read_archive, unpack, write_archive,
)
from tinyprune.deepcompress.archive import MAGIC, VERSION, pack_layer
from tinyprune.deepcompress.huffman import encode_layer
from tinyprune.deepcompress.magnitude import apply_masks
from tinyprune.errors import InputError


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 10))


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


def _compressed(factory, sparsity=0.8, bits="conv=8,fc=5"):
    torch.manual_seed(0)
    model = factory()
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        model.train()(torch.randn(8, 1, 8, 8))  # non-trivial running statistics
        model.eval()
    masks = magnitude_masks(model, sparsity)
    apply_masks(model, masks)
    layers = cluster_model(model, bits, masks)
    return model, layers


def _bits(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint8) if array.dtype != np.int64 else array


@pytest.mark.parametrize("factory", [_mlp, _cnn])
def test_round_trip_is_bit_identical(factory, tmp_path):
    model, layers = _compressed(factory)
    size = write_archive(tmp_path / "m.tpz", layers, model_tensors(model, layers))
    out = read_archive(tmp_path / "m.tpz")
    state = model.state_dict()
    assert list(out) == [l.name for l in layers] + [k for k in state if k not in {l.name for l in layers}]
    for name, value in state.items():
        expected = value.numpy()
        assert out[name].dtype == expected.dtype and out[name].shape == expected.shape
        assert np.array_equal(_bits(out[name]), _bits(expected)), name
    n = sum(v.numel() for v in state.values())
    assert size == (tmp_path / "m.tpz").stat().st_size
    assert archive_ratio((tmp_path / "m.tpz").read_bytes()) == pytest.approx(achieved_ratio(n, size))
    assert achieved_ratio(n, size) > 4


def test_loaded_weights_reproduce_the_model():
    model, layers = _compressed(_cnn)
    clone = _cnn()
    arrays = unpack(pack(layers, model_tensors(model, layers)))
    clone.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    clone.eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(clone(x), model(x))


def test_header_and_trailer_layout():
    model, layers = _compressed(_mlp)
    data = pack(layers, model_tensors(model, layers))
    magic, version, flags, n_layers, n_tensors = struct.unpack_from("<4sHHII", data)
    assert (magic, version, flags, n_layers, n_tensors) == (MAGIC, VERSION, 0, 3, 3)
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_corruptions_give_one_line_archive_errors():
    model, layers = _compressed(_mlp)
    data = pack(layers, model_tensors(model, layers))
    flipped = bytearray(data)
    flipped[40] ^= 0x10
    cases = {
        "checksum": bytes(flipped),
        "truncated": data[:-7],
        "magic": b"NOPE" + data[4:],
        "version": _recrc(data[:4] + struct.pack("<H", 9) + data[6:-4]),
        "records": _recrc(data[:8] + struct.pack("<I", 10 ** 9) + data[12:-4]),
        "after the last": _recrc(data[:-4] + b"\0"),
    }
    for needle, blob in cases.items():
        with pytest.raises(ArchiveError) as info:
            unpack(blob)
        assert needle in str(info.value) and "\n" not in str(info.value)
    assert issubclass(ArchiveError, InputError)


def test_element_limit_and_missing_file(tmp_path):
    model, layers = _compressed(_mlp)
    data = pack(layers)
    with pytest.raises(ArchiveError, match="element limit"):
        unpack(data, max_elements=1000)
    with pytest.raises(ArchiveError, match="cannot read archive"):
        read_archive(tmp_path / "missing.tpz")


def test_paper_ratio():
    # Figure 3 of the paper: 16 weights, 4 clusters, 32-bit floats -> 3.2x.
    assert paper_ratio(16, 4) == pytest.approx(3.2)
    assert paper_ratio(10 ** 6, 32) == pytest.approx(32 / 5, rel=1e-3)


def test_compression_table_layout():
    model, layers = _compressed(_cnn, sparsity=0.7)
    rows = compression_table(layers, total=True)
    assert [r["name"] for r in rows] == [l.name for l in layers] + ["total"]
    for row, layer in zip(rows, layers):
        assert row["weights"] == layer.mask.numel() and row["kept"] == layer.kept
        assert row["kept_pct"] == pytest.approx(30, abs=1)
        assert row["index_bits"] == layer.bits and row["gap_bits"] == (8 if layer.kind == "conv" else 5)
        assert row["index_entropy"] <= row["index_bits_huffman"] < row["index_entropy"] + 1
        assert row["gap_entropy"] <= row["gap_bits_huffman"] < row["gap_entropy"] + 1
        assert row["bytes"] == len(pack_layer(encode_layer(layer)))
        assert row["ratio"] == pytest.approx(4 * row["weights"] / row["bytes"])
    header_and_crc = 16 + 4
    assert rows[-1]["bytes"] == len(pack(layers)) - header_and_crc
