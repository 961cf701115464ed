"""Relative (CSR-style) positions of the kept weights, with filler entries.

Deep Compression stores, instead of absolute positions, the number of zeros before each kept
weight in a narrow field of ``gap_bits`` bits (sec. 2: 8 bits for conv, 5 for fc). A run
longer than the field can hold is split by *filler* entries. Here the largest symbol
``F = 2**gap_bits - 1`` is the filler: it stands for ``F`` zeros and carries no weight, so the
weight stream holds only real weights. A real entry ``g < F`` means "``g`` zeros, then a kept
weight". Zeros after the last kept weight are implied by the shape.
"""

from __future__ import annotations

import numpy as np

from tinyprune.deepcompress.errors import ArchiveError


def filler_symbol(gap_bits: int) -> int:
    return (1 << gap_bits) - 1


def encode_gaps(mask: np.ndarray, gap_bits: int) -> np.ndarray:
    """Gap symbols (int64) for a boolean mask, read in row-major order."""
    filler = filler_symbol(gap_bits)
    positions = np.flatnonzero(np.asarray(mask).reshape(-1))
    if positions.size == 0:
        return np.zeros(0, dtype=np.int64)
    runs = np.diff(positions, prepend=-1) - 1  # zeros before each kept weight
    fillers, rest = np.divmod(runs, filler)
    # Each kept weight becomes `fillers` filler symbols followed by its remainder.
    ends = np.cumsum(fillers + 1) - 1
    out = np.full(int(ends[-1]) + 1, filler, dtype=np.int64)
    out[ends] = rest
    return out


def decode_gaps(symbols: np.ndarray, gap_bits: int, kept: int, numel: int) -> np.ndarray:
    """Flat positions (int64, increasing) of the kept weights; ArchiveError if inconsistent."""
    filler = filler_symbol(gap_bits)
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size and (symbols.min() < 0 or symbols.max() > filler):
        raise ArchiveError(f"gap symbol out of range 0..{filler}")
    real = symbols < filler
    if int(real.sum()) != kept:
        raise ArchiveError(f"gap stream holds {int(real.sum())} positions, expected {kept}")
    if symbols.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not real[-1]:
        raise ArchiveError("gap stream ends with a filler")
    advance = np.where(real, symbols + 1, filler)
    positions = np.cumsum(advance)[real] - 1
    if positions[-1] >= numel:
        raise ArchiveError(f"kept weight at position {int(positions[-1])} beyond the {numel} elements")
    return positions


def count_fillers(symbols: np.ndarray, gap_bits: int) -> int:
    return int((np.asarray(symbols) == filler_symbol(gap_bits)).sum())
