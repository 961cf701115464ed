"""Stage 3: canonical Huffman tables and relative positions with fillers."""

import numpy as np
import pytest
from bitarray import bitarray
from bitarray.util import canonical_huffman

from tinyprune.deepcompress.archive import pack, unpack
from tinyprune.deepcompress.errors import ArchiveError
from tinyprune.deepcompress.huffman import MAX_CODE_LEN, HuffmanTable, encode_sparse, entropy, stream_stats
from tinyprune.deepcompress.sparse import decode_gaps, encode_gaps


@pytest.mark.parametrize("alphabet, skew", [(2, 0.9), (8, 0.5), (32, 0.2), (256, 0.05), (1000, 0.01)])
def test_round_trip_and_entropy_bound(alphabet, skew):
    rng = np.random.default_rng(alphabet)
    symbols = np.minimum(rng.geometric(skew, 20_000) - 1, alphabet - 1)
    table = HuffmanTable.from_symbols(symbols)
    stream = table.encode(symbols)
    assert np.array_equal(table.decode(stream, symbols.size), symbols)
    stats = stream_stats(symbols, table, fixed_bits=int(np.ceil(np.log2(alphabet))))
    assert stats.huffman_bits == len(stream)
    h = entropy(symbols)
    assert h <= stats.bits_per_symbol < h + 1


def test_codes_match_bitarray_canonical_code():
    freq = {0: 40, 1: 3, 2: 3, 3: 9, 4: 1, 5: 27}
    code, _, _ = canonical_huffman(freq)
    assert HuffmanTable.from_frequencies(freq).codes() == {s: bitarray(c) for s, c in code.items()}


def test_single_and_no_symbol_cost_no_bits():
    table = HuffmanTable.from_symbols(np.full(100, 7))
    assert table.counts == (1,) and len(table.encode(np.full(100, 7))) == 0
    assert np.array_equal(table.decode(bitarray(), 100), np.full(100, 7))
    empty = HuffmanTable.from_symbols(np.zeros(0, dtype=np.int64))
    assert empty.counts == () and empty.decode(bitarray(), 0).size == 0
    with pytest.raises(ArchiveError):
        empty.decode(bitarray(), 3)


def test_deep_code_is_capped_for_the_decoder():
    fib = [1, 1]
    while len(fib) < 45:
        fib.append(fib[-1] + fib[-2])
    table = HuffmanTable.from_frequencies(dict(enumerate(fib)))
    assert len(table.counts) - 1 <= MAX_CODE_LEN
    table.validate(45)
    symbols = np.arange(45)
    assert np.array_equal(table.decode(table.encode(symbols), 45), symbols)


def test_decode_rejects_leftover_and_missing_bits():
    symbols = np.array([0, 1, 1, 2, 0, 0, 3])
    table = HuffmanTable.from_symbols(symbols)
    stream = table.encode(symbols)
    with pytest.raises(ArchiveError, match="left over"):
        table.decode(stream + bitarray("0"), symbols.size)
    with pytest.raises(ArchiveError):
        table.decode(stream[:-1], symbols.size)


def test_validate_rejects_incomplete_or_bad_tables():
    with pytest.raises(ArchiveError, match="complete"):
        HuffmanTable((0, 1, 0, 1), (0, 1)).validate(4)
    with pytest.raises(ArchiveError, match="outside"):
        HuffmanTable((0, 2), (0, 9)).validate(4)
    with pytest.raises(ArchiveError, match="duplicate"):
        HuffmanTable((0, 2), (1, 1)).validate(4)


def test_gaps_use_fillers_for_long_runs():
    mask = np.zeros(20, dtype=bool)
    mask[[0, 10, 11, 19]] = True
    gaps = encode_gaps(mask, gap_bits=2)  # filler 3 = "three zeros, no weight"
    assert gaps.tolist() == [0, 3, 3, 3, 0, 0, 3, 3, 1]
    assert decode_gaps(gaps, 2, kept=4, numel=20).tolist() == [0, 10, 11, 19]
    with pytest.raises(ArchiveError, match="ends with a filler"):
        decode_gaps(np.array([0, 3]), 2, kept=1, numel=20)
    with pytest.raises(ArchiveError, match="beyond"):
        decode_gaps(gaps, 2, kept=4, numel=19)
    with pytest.raises(ArchiveError, match="expected 5"):
        decode_gaps(gaps, 2, kept=5, numel=20)


@pytest.mark.parametrize("gap_bits", [1, 2, 3, 5])
def test_far_apart_weights_round_trip(gap_bits):
    shape = (7, 300)
    mask = np.zeros(shape, dtype=bool).reshape(-1)
    mask[[3, 3 + 2 ** gap_bits + 1, 700, 2099]] = True  # runs much longer than a gap field holds
    codebook = np.array([-0.5, 0.25, 1.5], dtype=np.float32)
    indices = np.array([2, 0, 1, 2])
    enc = encode_sparse("w", shape, 2, gap_bits, codebook, indices, mask)
    assert enc.fillers() > 0
    expected = np.zeros(mask.size, dtype=np.float32)
    expected[mask] = codebook[indices]
    assert np.array_equal(enc.decode(), expected.reshape(shape))
    assert np.array_equal(unpack(pack([enc]))["w"], expected.reshape(shape))


def test_wide_symbols_and_empty_layer_round_trip():
    rng = np.random.default_rng(3)
    mask = rng.random(3000) < 0.4
    codebook = rng.standard_normal(3000).astype(np.float32)  # 12-bit indices, 2-byte table symbols
    indices = rng.integers(0, 3000, int(mask.sum()))
    wide = encode_sparse("wide", (3000,), 12, 10, codebook, indices, mask)
    empty = encode_sparse("empty", (4, 5), 3, 4, np.zeros(0, np.float32), np.zeros(0, np.int64),
                          np.zeros(20, dtype=bool))
    out = unpack(pack([wide, empty]))
    expected = np.zeros(3000, dtype=np.float32)
    expected[mask] = codebook[indices]
    assert np.array_equal(out["wide"], expected)
    assert np.array_equal(out["empty"], np.zeros((4, 5), np.float32))
