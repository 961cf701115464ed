"""Canonical Huffman coding of the weight indices and the relative-position gaps (stage 3).

The tables are canonical (only the number of codes of each length and the symbols in code
order are stored), and decoding runs in bitarray's C decoder. A stream with a single distinct
symbol gets a zero-length code: nothing is stored but the count, which keeps the achieved
bits per symbol inside the ``[entropy, entropy + 1)`` bound that Huffman codes promise.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Mapping

import numpy as np
from bitarray import bitarray, frozenbitarray
from bitarray.util import canonical_decode, canonical_huffman

from tinyprune.deepcompress.errors import ArchiveError
from tinyprune.deepcompress.weight_sharing import MAX_BITS, BitsSpec, ClusteredLayer, parse_bits
from tinyprune.deepcompress.sparse import count_fillers, decode_gaps, encode_gaps
from tinyprune.errors import InputError

# bitarray's canonical_decode accepts at most 32 length counts (lengths 0..31).
MAX_CODE_LEN = 31
# The paper's relative-index widths: 8 bits for conv layers, 5 for fc layers.
DEFAULT_GAP_BITS = "conv=8,fc=5"


@dataclass(frozen=True)
class HuffmanTable:
    """A canonical Huffman code: ``counts[L]`` codes of length ``L``, ``symbols`` in code order.

    ``counts == ()``: empty stream. ``counts == (1,)``: one symbol with a zero-length code.
    """

    counts: tuple[int, ...]
    symbols: tuple[int, ...]

    @classmethod
    def from_frequencies(cls, freq: Mapping[int, int]) -> "HuffmanTable":
        freq = {int(s): int(f) for s, f in freq.items() if f > 0}
        if not freq:
            return cls((), ())
        if len(freq) == 1:
            return cls((1,), (next(iter(freq)),))
        while True:
            _, counts, symbols = canonical_huffman(freq)
            if len(counts) - 1 <= MAX_CODE_LEN:
                return cls(tuple(int(c) for c in counts), tuple(int(s) for s in symbols))
            # Only Fibonacci-like frequencies make codes this deep; halving them flattens the
            # tree until it fits, at a negligible cost in bits.
            freq = {s: (f + 1) // 2 for s, f in freq.items()}

    @classmethod
    def from_symbols(cls, symbols: np.ndarray) -> "HuffmanTable":
        values, freq = np.unique(np.asarray(symbols, dtype=np.int64), return_counts=True)
        return cls.from_frequencies(dict(zip(values.tolist(), freq.tolist())))

    @property
    def trivial(self) -> bool:
        """At most one symbol: the bitstream is empty."""
        return len(self.symbols) <= 1

    def lengths(self) -> dict[int, int]:
        """Code length of each symbol."""
        out, pos = {}, 0
        for length, count in enumerate(self.counts):
            for symbol in self.symbols[pos:pos + count]:
                out[symbol] = length
            pos += count
        return out

    def codes(self) -> dict[int, bitarray]:
        """The canonical code words (the assignment ``canonical_decode`` expects)."""
        out, pos, code = {}, 0, 0
        for length, count in enumerate(self.counts):
            if length == 0:
                continue
            for symbol in self.symbols[pos:pos + count]:
                out[symbol] = bitarray(format(code, f"0{length}b"), endian="big")
                code += 1
            pos += count
            code <<= 1
        return out

    def validate(self, alphabet: int) -> None:
        """ArchiveError unless this is a complete prefix code over symbols ``0..alphabet-1``."""
        counts, symbols = self.counts, self.symbols
        if len(counts) > MAX_CODE_LEN + 1 or any(c < 0 for c in counts):
            raise ArchiveError("Huffman table has invalid code-length counts")
        if len(symbols) != sum(counts):
            raise ArchiveError(f"Huffman table lists {len(symbols)} symbols for {sum(counts)} codes")
        if counts not in ((), (1,)):
            top = len(counts) - 1
            # A Huffman code is complete: its Kraft sum is exactly 1.
            if counts[0] != 0 or counts[-1] == 0 or \
                    sum(c << (top - n) for n, c in enumerate(counts)) != 1 << top:
                raise ArchiveError("Huffman table is not a complete prefix code")
        if len(set(symbols)) != len(symbols) or any(not 0 <= s < alphabet for s in symbols):
            raise ArchiveError(f"Huffman table has duplicate symbols or symbols outside 0..{alphabet - 1}")

    def encode(self, symbols: np.ndarray) -> frozenbitarray:
        if self.trivial:
            return frozenbitarray(endian="big")
        out = bitarray(endian="big")
        out.encode(self.codes(), np.asarray(symbols, dtype=np.int64).tolist())
        return frozenbitarray(out)

    def decode(self, stream: bitarray, n: int) -> np.ndarray:
        """Exactly ``n`` symbols that use up exactly ``stream``; ArchiveError otherwise."""
        if not self.symbols or n == 0:
            # The encoder writes an empty table exactly for an empty stream.
            if self.symbols or n or len(stream):
                raise ArchiveError(f"Huffman table does not match a stream of {n} symbols")
            return np.zeros(0, dtype=np.int64)
        if self.trivial:
            if len(stream):
                raise ArchiveError("bitstream has bits left over")
            return np.full(n, self.symbols[0], dtype=np.int64)
        # Each code is at least one bit: a stream too short for n symbols fails before decoding.
        if len(stream) < n:
            raise ArchiveError(f"bitstream of {len(stream)} bits cannot hold {n} symbols")
        try:
            out = np.fromiter(islice(canonical_decode(stream, list(self.counts), list(self.symbols)), n),
                              dtype=np.int64, count=n)
        except (ValueError, TypeError) as exc:
            raise ArchiveError(f"bitstream does not decode: {exc}") from None
        lengths = np.zeros(max(self.symbols) + 1, dtype=np.int64)
        for symbol, length in self.lengths().items():
            lengths[symbol] = length
        if int(lengths[out].sum()) != len(stream):
            raise ArchiveError("bitstream has bits left over")
        return out

    def to_dict(self) -> dict:
        return {"counts": list(self.counts), "symbols": list(self.symbols)}


def entropy(symbols: np.ndarray) -> float:
    """Shannon entropy of the empirical symbol distribution, bits per symbol."""
    _, freq = np.unique(np.asarray(symbols), return_counts=True)
    if freq.size <= 1:
        return 0.0
    p = freq / freq.sum()
    return float(-(p * np.log2(p)).sum())


@dataclass(frozen=True)
class StreamStats:
    """Size of one symbol stream with a fixed-width code and with its Huffman code."""

    symbols: int
    distinct: int
    fixed_bits: int  # bits per symbol before Huffman
    huffman_bits: int  # total bits after Huffman
    entropy: float  # bits per symbol, the lower bound for any symbol-by-symbol code

    @property
    def bits_per_symbol(self) -> float:
        return self.huffman_bits / self.symbols if self.symbols else 0.0

    def to_dict(self) -> dict:
        return {"symbols": self.symbols, "distinct": self.distinct, "fixed_bits": self.fixed_bits,
                "huffman_bits": self.huffman_bits, "bits_per_symbol": self.bits_per_symbol,
                "entropy": self.entropy}


def stream_stats(symbols: np.ndarray, table: HuffmanTable, fixed_bits: int) -> StreamStats:
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = table.lengths()
    bits = sum(lengths[s] * int(c) for s, c in zip(*np.unique(symbols, return_counts=True)))
    return StreamStats(int(symbols.size), len(table.symbols), fixed_bits, int(bits), entropy(symbols))


@dataclass(frozen=True)
class EncodedLayer:
    """A sparse clustered weight as a codebook and two Huffman-coded streams."""

    name: str
    shape: tuple[int, ...]
    bits: int  # index width before Huffman; the codebook has at most 2**bits entries
    gap_bits: int  # relative-index width; 2**gap_bits - 1 is the filler symbol
    codebook: np.ndarray  # float32 [k]
    kept: int  # number of kept weights = index symbols
    index_table: HuffmanTable
    index_stream: frozenbitarray
    gap_count: int  # number of gap symbols, fillers included
    gap_table: HuffmanTable
    gap_stream: frozenbitarray

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def validate(self) -> None:
        """ArchiveError unless every count fits the shape, the widths and the codebook."""
        if not (1 <= self.bits <= MAX_BITS and 1 <= self.gap_bits <= MAX_BITS):
            raise ArchiveError(f"layer '{self.name}': bit widths {self.bits}/{self.gap_bits} outside 1..{MAX_BITS}")
        k = len(self.codebook)
        if k > 1 << self.bits:
            raise ArchiveError(f"layer '{self.name}': {k} centroids for {self.bits}-bit indices")
        if self.kept > self.numel or (self.kept and not k):
            raise ArchiveError(f"layer '{self.name}': {self.kept} kept weights do not fit")
        # Every filler stands for 2**gap_bits - 1 zeros, so the shape bounds their number.
        if not self.kept <= self.gap_count <= self.kept + self.numel // ((1 << self.gap_bits) - 1):
            raise ArchiveError(f"layer '{self.name}': {self.gap_count} gap symbols do not fit")
        if not np.isfinite(self.codebook).all():
            raise ArchiveError(f"layer '{self.name}': codebook has NaN or infinite values")
        self.index_table.validate(k)
        self.gap_table.validate(1 << self.gap_bits)

    def decode(self) -> np.ndarray:
        """The dense float32 weight: ``codebook[index]`` at the kept positions, ``+0.0`` elsewhere."""
        self.validate()
        index = self.index_table.decode(self.index_stream, self.kept)
        gaps = self.gap_table.decode(self.gap_stream, self.gap_count)
        positions = decode_gaps(gaps, self.gap_bits, self.kept, self.numel)
        out = np.zeros(self.numel, dtype=np.float32)
        out[positions] = np.asarray(self.codebook, dtype=np.float32)[index]
        return out.reshape(self.shape)

    def stats(self) -> tuple[StreamStats, StreamStats]:
        """``(index stats, gap stats)``, from the decoded streams."""
        index = self.index_table.decode(self.index_stream, self.kept)
        gaps = self.gap_table.decode(self.gap_stream, self.gap_count)
        return stream_stats(index, self.index_table, self.bits), stream_stats(gaps, self.gap_table, self.gap_bits)

    def fillers(self) -> int:
        return count_fillers(self.gap_table.decode(self.gap_stream, self.gap_count), self.gap_bits)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "bits": self.bits, "gap_bits": self.gap_bits,
                "clusters": len(self.codebook), "kept": self.kept, "gap_symbols": self.gap_count,
                "index_stream_bits": len(self.index_stream), "gap_stream_bits": len(self.gap_stream),
                "index_table": self.index_table.to_dict(), "gap_table": self.gap_table.to_dict()}


def encode_sparse(name: str, shape: tuple[int, ...], bits: int, gap_bits: int, codebook: np.ndarray,
                  indices: np.ndarray, mask: np.ndarray) -> EncodedLayer:
    """Encode kept weights given as ``codebook[indices]`` (row-major) at the True entries of ``mask``."""
    mask = np.asarray(mask, dtype=bool).reshape(-1)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    codebook = np.ascontiguousarray(codebook, dtype=np.float32).reshape(-1)
    if mask.size != int(np.prod(shape, dtype=np.int64)) or indices.size != int(mask.sum()):
        raise InputError(f"layer '{name}': mask/indices do not match shape {tuple(shape)}")
    if indices.size and (indices.min() < 0 or indices.max() >= codebook.size):
        raise InputError(f"layer '{name}': cluster index outside the codebook")
    if not 1 <= bits <= MAX_BITS or codebook.size > 1 << bits:
        raise InputError(f"layer '{name}': {codebook.size} centroids do not fit {bits}-bit indices")
    if not 1 <= gap_bits <= MAX_BITS:
        raise InputError(f"layer '{name}': gap bits must be in 1..{MAX_BITS}, got {gap_bits}")
    gaps = encode_gaps(mask, gap_bits)
    index_table, gap_table = HuffmanTable.from_symbols(indices), HuffmanTable.from_symbols(gaps)
    return EncodedLayer(name, tuple(int(d) for d in shape), int(bits), int(gap_bits), codebook,
                        int(indices.size), index_table, index_table.encode(indices),
                        int(gaps.size), gap_table, gap_table.encode(gaps))


def gap_bits_for(layer: ClusteredLayer, gap_bits: "str | int | BitsSpec" = DEFAULT_GAP_BITS) -> int:
    return parse_bits(gap_bits, "gap bits").for_kind(layer.kind)


def encode_layer(layer: ClusteredLayer, gap_bits: "str | int | BitsSpec" = DEFAULT_GAP_BITS) -> EncodedLayer:
    """Huffman-code one clustered layer; ``gap_bits`` is a width or a ``"conv=8,fc=5"`` spec."""
    return encode_sparse(layer.name, layer.shape, layer.bits, gap_bits_for(layer, gap_bits),
                         layer.codebook.numpy(), layer.kept_indices(), layer.mask.numpy())
