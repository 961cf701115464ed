"""Deep Compression (Han, Mao & Dally, ICLR 2016): prune, share weights, Huffman-code, archive.

Stages, each usable alone:

1. :mod:`.prune` - per-layer magnitude masks, kept during fine-tuning;
2. :mod:`.quantize` - k-means weight sharing (linear init) and centroid fine-tuning;
3. :mod:`.huffman` - canonical Huffman coding of indices and relative positions;
4. :mod:`.archive` - the checksummed ``.tpz`` file and compression ratios;
5. :mod:`.report` - the per-layer table of the paper.
"""

from tinyprune.deepcompress.archive import (
    achieved_ratio, archive_ratio, model_tensors, pack, paper_ratio, read_archive, unpack, unpack_encoded,
    write_archive,
)
from tinyprune.deepcompress.errors import ArchiveError
from tinyprune.deepcompress.huffman import (
    DEFAULT_GAP_BITS, EncodedLayer, HuffmanTable, StreamStats, encode_layer, encode_sparse, entropy,
)
from tinyprune.deepcompress.magnitude import (
    MaskKeeper, apply_masks, finetune_pruned, keep_masks, magnitude_masks, weight_layers,
)
from tinyprune.deepcompress.weight_sharing import (
    BitsSpec, ClusteredLayer, cluster_model, cluster_weight, finetune_centroids, grouped_gradient, kmeans_1d,
    linear_init, parse_bits,
)
from tinyprune.deepcompress.tables import LayerReport, compression_table, layer_report

__all__ = [
    "ArchiveError", "BitsSpec", "ClusteredLayer", "DEFAULT_GAP_BITS", "EncodedLayer", "HuffmanTable",
    "LayerReport", "MaskKeeper", "StreamStats", "achieved_ratio", "apply_masks", "archive_ratio",
    "cluster_model", "cluster_weight", "compression_table", "encode_layer", "encode_sparse", "entropy",
    "finetune_centroids", "finetune_pruned", "grouped_gradient", "keep_masks", "kmeans_1d", "layer_report",
    "linear_init", "magnitude_masks", "model_tensors", "pack", "paper_ratio", "parse_bits", "read_archive",
    "unpack", "unpack_encoded", "weight_layers", "write_archive",
]
