"""Per-layer compression table in the layout of Deep Compression's Tables 2-5."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from tinyprune.deepcompress.archive import pack_layer, paper_ratio
from tinyprune.deepcompress.huffman import DEFAULT_GAP_BITS, EncodedLayer, encode_layer
from tinyprune.deepcompress.weight_sharing import ClusteredLayer


@dataclass(frozen=True)
class LayerReport:
    """One row: how far each stage shrinks one weight tensor."""

    name: str
    weights: int  # elements of the dense tensor
    kept: int
    kept_pct: float  # weights kept after pruning, percent
    clusters: int  # centroids actually used
    index_bits: int  # bits per weight index before Huffman
    index_bits_huffman: float  # average bits per index after Huffman
    index_entropy: float  # Shannon bound for the index stream, bits per index
    gap_bits: int  # relative-index width before Huffman
    gap_symbols: int  # relative indices stored, fillers included
    fillers: int
    gap_bits_huffman: float  # average bits per relative index after Huffman
    gap_entropy: float  # Shannon bound for the gap stream, bits per symbol
    bytes: int  # the layer's record in the archive: name, shape, codebook, tables, streams
    ratio: float  # dense float32 size / bytes
    sharing_ratio: float  # paper eq. 1 for the kept weights (weight sharing alone)

    def to_dict(self) -> dict:
        return asdict(self)


def layer_report(layer: "ClusteredLayer | EncodedLayer", gap_bits=DEFAULT_GAP_BITS) -> LayerReport:
    enc = layer if isinstance(layer, EncodedLayer) else encode_layer(layer, gap_bits)
    index, gaps = enc.stats()
    size = len(pack_layer(enc))
    k = len(enc.codebook)
    return LayerReport(
        name=enc.name, weights=enc.numel, kept=enc.kept,
        kept_pct=100.0 * enc.kept / enc.numel if enc.numel else 0.0, clusters=k,
        index_bits=enc.bits, index_bits_huffman=index.bits_per_symbol, index_entropy=index.entropy,
        gap_bits=enc.gap_bits, gap_symbols=enc.gap_count, fillers=enc.fillers(),
        gap_bits_huffman=gaps.bits_per_symbol, gap_entropy=gaps.entropy,
        bytes=size, ratio=4 * enc.numel / size, sharing_ratio=paper_ratio(enc.kept, k) if k else 0.0,
    )


def compression_table(layers: Sequence["ClusteredLayer | EncodedLayer"], gap_bits=DEFAULT_GAP_BITS,
                      total: bool = False) -> list[dict]:
    """One dict per layer (see :class:`LayerReport`); ``total`` appends a summed ``"total"`` row.

    In the total row the bit columns are averages weighted by the number of symbols.
    """
    rows = [layer_report(l, gap_bits).to_dict() for l in layers]
    if total and rows:
        rows.append(_total(rows))
    return rows


def _total(rows: list[dict]) -> dict:
    weights = sum(r["weights"] for r in rows)
    kept = sum(r["kept"] for r in rows)
    gaps = sum(r["gap_symbols"] for r in rows)
    size = sum(r["bytes"] for r in rows)

    def mean(column: str, by: str) -> float:
        n = sum(r[by] for r in rows)
        return float(np.dot([r[column] for r in rows], [r[by] for r in rows]) / n) if n else 0.0

    return {"name": "total", "weights": weights, "kept": kept,
            "kept_pct": 100.0 * kept / weights if weights else 0.0,
            "clusters": sum(r["clusters"] for r in rows),
            "index_bits": mean("index_bits", "kept"), "index_bits_huffman": mean("index_bits_huffman", "kept"),
            "index_entropy": mean("index_entropy", "kept"), "gap_bits": mean("gap_bits", "gap_symbols"),
            "gap_symbols": gaps, "fillers": sum(r["fillers"] for r in rows),
            "gap_bits_huffman": mean("gap_bits_huffman", "gap_symbols"),
            "gap_entropy": mean("gap_entropy", "gap_symbols"), "bytes": size,
            "ratio": 4 * weights / size if size else 0.0,
            "sharing_ratio": mean("sharing_ratio", "kept")}
