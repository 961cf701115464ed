"""Property tests: any sparse clustered tensor round-trips; no input makes decoding misbehave."""

import struct
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyprune.deepcompress.archive import pack, unpack
from tinyprune.deepcompress.errors import ArchiveError
from tinyprune.deepcompress.huffman import encode_sparse

FAST = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def _random_layer(seed: int, shape: tuple[int, ...], sparsity: float, bits: int, gap_bits: int, name="w"):
    rng = np.random.default_rng(seed)
    numel = int(np.prod(shape))
    mask = rng.random(numel) >= sparsity
    k = int(rng.integers(1, 2 ** bits + 1))
    codebook = rng.standard_normal(k).astype(np.float32)
    indices = rng.integers(0, k, int(mask.sum()))
    expected = np.zeros(numel, dtype=np.float32)
    expected[mask] = codebook[indices]
    return encode_sparse(name, shape, bits, gap_bits, codebook, indices, mask), expected.reshape(shape)


shapes = st.lists(st.integers(1, 12), min_size=1, max_size=4).filter(lambda s: np.prod(s) <= 4000).map(tuple)
layer_args = st.tuples(st.integers(0, 2 ** 32 - 1), shapes, st.floats(0.0, 0.99),
                       st.integers(1, 8), st.integers(1, 8))


@FAST
@given(layer_args)
def test_any_sparse_tensor_round_trips(args):
    enc, expected = _random_layer(*args)
    out = unpack(pack([enc]))["w"]
    assert out.shape == expected.shape
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))


def _valid_archive() -> bytes:
    # Several layers (fillers, 1-bit and 8-bit codes, a dense layer) and raw tensors.
    layers = [_random_layer(1, (6, 40), 0.97, 3, 2, "a")[0], _random_layer(2, (8, 8, 3), 0.5, 8, 5, "b")[0],
              _random_layer(3, (30,), 0.0, 1, 1, "c")[0]]
    return pack(layers, {"bias": np.arange(6, dtype=np.float32), "steps": np.array(3, dtype=np.int64)})


VALID = _valid_archive()


def _fails_cleanly(data: bytes) -> None:
    try:
        unpack(data)
    except ArchiveError as exc:
        assert "\n" not in str(exc)
    else:
        raise AssertionError("a damaged archive decoded without an error")


@FAST
@given(st.binary(max_size=512))
def test_random_bytes_fail_cleanly(data):
    _fails_cleanly(data)
    _fails_cleanly(b"TPZ1" + data)


@FAST
@given(st.integers(0, len(VALID) - 1))
def test_truncated_archives_fail_cleanly(cut):
    _fails_cleanly(VALID[:cut])


@FAST
@given(st.integers(0, 8 * len(VALID) - 1))
def test_bit_flips_fail_cleanly(bit):
    data = bytearray(VALID)
    data[bit // 8] ^= 1 << (bit % 8)
    _fails_cleanly(bytes(data))


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(VALID) - 5), st.binary(min_size=1, max_size=8), st.booleans())
def test_damage_behind_a_valid_checksum_never_crashes(pos, patch, insert):
    # Recomputing the CRC gets the damage past the checksum, into the parser's bounds checks.
    body = bytearray(VALID[:-4])
    if insert:
        body[pos:pos] = patch
    else:
        body[pos:pos + len(patch)] = patch
    data = bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))
    try:
        out = unpack(data, max_elements=50_000)
    except ArchiveError as exc:
        assert "\n" not in str(exc)
    else:
        # A damaged shape may still decode (trailing zeros are implied), but never past the limit.
        assert all(isinstance(v, np.ndarray) for v in out.values())
        assert sum(v.size for v in out.values()) <= 50_000
