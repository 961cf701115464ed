"""The ``.tpz`` archive: a deep-compressed model in one checksummed file (stage 4).

Layout (all integers little-endian)::

    header    4s magic b"TPZ1" | u16 version (1) | u16 flags (0) | u32 n_layers | u32 n_tensors
    layer     u16 name length | name (UTF-8)
       x      u8 ndim | u32 dim x ndim
    n_layers  u8 bits | u8 gap_bits
              u32 k | f32 codebook x k
              u32 kept         | table | u32 bit length | index stream (ceil(bits/8) bytes)
              u32 gap symbols  | table | u32 bit length | gap stream
    tensor    u16 name length | name | u8 dtype (0 float32, 1 int64) | u8 ndim | u32 dim x ndim
    x n_tens. | raw little-endian data
    trailer   u32 CRC-32 (zlib) of every byte before it

    table     u8 n | u16 count x n (count[L] = codes of length L) | symbol x sum(count)
              (a symbol is u8 when its alphabet has at most 256 symbols, else u16)

Streams are MSB-first with zero padding. Reading checks the CRC first, then bounds every
length, count and shape against the bytes left and ``max_elements`` before allocating, so a
corrupt file fails with one ArchiveError instead of a crash, a hang or a huge allocation.
"""

from __future__ import annotations

import math
import struct
import zlib
from os import PathLike
from typing import Mapping, Sequence

import numpy as np
from bitarray import bitarray, frozenbitarray

from tinyprune.deepcompress.errors import ArchiveError
from tinyprune.deepcompress.huffman import DEFAULT_GAP_BITS, EncodedLayer, HuffmanTable, encode_layer
from tinyprune.deepcompress.weight_sharing import ClusteredLayer
from tinyprune.errors import InputError

MAGIC = b"TPZ1"
VERSION = 1
HEADER = struct.Struct("<4sHHII")
CRC = struct.Struct("<I")
MAX_NDIM = 8
# Per archive, summed over all tensors. A sparse layer may legitimately encode a big shape in
# a few bytes, so the file size alone cannot bound the allocation; no microcontroller model
# comes near this (64 Mi weights = 256 MiB of float32).
MAX_ELEMENTS = 1 << 26
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<i8")}
_U32_MAX = (1 << 32) - 1


# -- writing -------------------------------------------------------------------------------

def _name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= 0xFFFF:
        raise InputError(f"tensor name '{name[:40]}' must be 1..65535 bytes of UTF-8")
    return struct.pack("<H", len(raw)) + raw


def _shape(shape: Sequence[int]) -> bytes:
    if len(shape) > MAX_NDIM or any(not 0 <= d <= _U32_MAX for d in shape):
        raise InputError(f"shape {tuple(shape)} cannot be stored (at most {MAX_NDIM} dimensions)")
    return struct.pack(f"<B{len(shape)}I", len(shape), *shape)


def _table(table: HuffmanTable, wide: bool) -> bytes:
    return (struct.pack(f"<B{len(table.counts)}H", len(table.counts), *table.counts)
            + np.asarray(table.symbols, dtype="<u2" if wide else "u1").tobytes())


def _stream(count: int, table: HuffmanTable, stream: bitarray, wide: bool) -> bytes:
    if count > _U32_MAX or len(stream) > _U32_MAX:
        raise InputError("a layer is too large for the archive's 32-bit counts")
    return struct.pack("<I", count) + _table(table, wide) + struct.pack("<I", len(stream)) + stream.tobytes()


def pack_layer(layer: EncodedLayer) -> bytes:
    """The record of one encoded layer (its size is the layer's share of the archive)."""
    codebook = np.asarray(layer.codebook, dtype="<f4")
    return b"".join([
        _name(layer.name), _shape(layer.shape), struct.pack("<BBI", layer.bits, layer.gap_bits, codebook.size),
        codebook.tobytes(),
        _stream(layer.kept, layer.index_table, layer.index_stream, layer.bits > 8),
        _stream(layer.gap_count, layer.gap_table, layer.gap_stream, layer.gap_bits > 8),
    ])


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; torch itself need not be imported here
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # numpy has no bfloat16; the archive stores float32 anyway
        value = value.numpy()
    return np.asarray(value)


def _pack_tensor(name: str, value) -> bytes:
    array = _as_numpy(value)
    if array.dtype.kind == "f":
        code = 0
    elif array.dtype.kind in "iub":
        code = 1  # integer buffers, e.g. batch norm's num_batches_tracked
    else:
        raise InputError(f"tensor '{name}' has dtype {array.dtype}; only real and integer tensors are stored")
    return (_name(name) + struct.pack("<B", code) + _shape(array.shape)
            + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes())


def pack(layers: Sequence["ClusteredLayer | EncodedLayer"], extra_tensors: Mapping[str, object] | None = None,
         gap_bits=DEFAULT_GAP_BITS) -> bytes:
    """Serialise clustered (or already encoded) layers and raw extra tensors to ``.tpz`` bytes.

    ``extra_tensors`` (biases, batch-norm parameters and buffers) are stored raw: floating
    tensors as float32, integer ones as int64.
    """
    extra_tensors = dict(extra_tensors or {})
    encoded = [l if isinstance(l, EncodedLayer) else encode_layer(l, gap_bits) for l in layers]
    names = [l.name for l in encoded] + list(extra_tensors)
    if len(set(names)) != len(names):
        raise InputError("layer and tensor names in an archive must be unique")
    body = b"".join([HEADER.pack(MAGIC, VERSION, 0, len(encoded), len(extra_tensors)),
                     *(pack_layer(l) for l in encoded),
                     *(_pack_tensor(n, v) for n, v in extra_tensors.items())])
    return body + CRC.pack(zlib.crc32(body))


def model_tensors(model, layers: Sequence["ClusteredLayer | EncodedLayer"]) -> dict[str, object]:
    """The model's ``state_dict`` entries that are not clustered weights (stored raw)."""
    clustered = {l.name for l in layers}
    return {k: v for k, v in model.state_dict().items() if k not in clustered}


def write_archive(path: "str | PathLike", layers: Sequence["ClusteredLayer | EncodedLayer"],
                  extra_tensors: Mapping[str, object] | None = None, gap_bits=DEFAULT_GAP_BITS) -> int:
    """Write a ``.tpz`` file; returns its size in bytes."""
    data = pack(layers, extra_tensors, gap_bits)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


# -- reading -------------------------------------------------------------------------------

class _Reader:
    """Bounds-checked cursor over the archive body."""

    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.left():
            raise ArchiveError(f"archive truncated: {what} needs {n} bytes, {self.left()} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, what))

    def name(self, names: set[str]) -> str:
        (n,) = self.unpack("H", "a name length")
        try:
            name = bytes(self.take(n, "a name")).decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError("archive has a name that is not UTF-8") from None
        if not name or name in names:
            raise ArchiveError(f"archive has an empty or repeated name '{name[:40]}'")
        names.add(name)
        return name

    def shape(self, budget: list[int], name: str) -> tuple[int, ...]:
        (ndim,) = self.unpack("B", "a rank")
        if ndim > MAX_NDIM:
            raise ArchiveError(f"'{name}' has {ndim} dimensions, at most {MAX_NDIM} allowed")
        shape = self.unpack(f"{ndim}I", "a shape")
        numel = math.prod(shape)
        # Dimensions beside a zero one still count: numpy refuses shapes whose other
        # dimensions multiply past its index range, even for an empty array.
        if numel > budget[0] or math.prod(d for d in shape if d) > budget[0]:
            raise ArchiveError(f"'{name}' with shape {shape} exceeds the archive's element limit")
        budget[0] -= numel
        return shape

    def table(self, alphabet: int, wide: bool) -> HuffmanTable:
        (n,) = self.unpack("B", "a code table")
        counts = self.unpack(f"{n}H", "a code table")
        n_symbols = sum(counts)
        if n_symbols > alphabet:
            raise ArchiveError(f"code table has {n_symbols} symbols for an alphabet of {alphabet}")
        dtype = "<u2" if wide else "u1"
        raw = self.take(n_symbols * np.dtype(dtype).itemsize, "code table symbols")
        table = HuffmanTable(counts, tuple(np.frombuffer(raw, dtype=dtype).tolist()))
        table.validate(alphabet)
        return table

    def stream(self, n_symbols: int, table: HuffmanTable) -> frozenbitarray:
        (n_bits,) = self.unpack("I", "a bitstream length")
        longest = len(table.counts) - 1 if table.counts else 0
        if n_bits > n_symbols * longest:
            raise ArchiveError(f"bitstream of {n_bits} bits is too long for {n_symbols} symbols")
        stream = bitarray(endian="big")
        stream.frombytes(bytes(self.take((n_bits + 7) // 8, "a bitstream")))
        if stream[n_bits:].any():
            raise ArchiveError("bitstream padding is not zero")
        return frozenbitarray(stream[:n_bits])


def _read_layer(r: _Reader, names: set[str], budget: list[int]) -> EncodedLayer:
    name = r.name(names)
    shape = r.shape(budget, name)
    bits, gap_bits, k = r.unpack("BBI", "layer widths")
    if not (1 <= bits <= 15 and 1 <= gap_bits <= 15) or k > 1 << bits:
        raise ArchiveError(f"layer '{name}' has invalid widths ({bits} bits, {gap_bits} gap bits, {k} centroids)")
    codebook = np.frombuffer(r.take(4 * k, "a codebook"), dtype="<f4").astype(np.float32)
    numel = math.prod(shape)
    (kept,) = r.unpack("I", "a weight count")
    if kept > numel:
        raise ArchiveError(f"layer '{name}' keeps {kept} of {numel} weights")
    index_table = r.table(k, bits > 8)
    index_stream = r.stream(kept, index_table)
    (gap_count,) = r.unpack("I", "a gap count")
    if gap_count > kept + numel // ((1 << gap_bits) - 1):
        raise ArchiveError(f"layer '{name}' has {gap_count} gap symbols for {numel} weights")
    gap_table = r.table(1 << gap_bits, gap_bits > 8)
    gap_stream = r.stream(gap_count, gap_table)
    layer = EncodedLayer(name, shape, bits, gap_bits, codebook, kept, index_table, index_stream,
                         gap_count, gap_table, gap_stream)
    layer.validate()
    return layer


def _read_tensor(r: _Reader, names: set[str], budget: list[int]) -> tuple[str, np.ndarray]:
    name = r.name(names)
    (code,) = r.unpack("B", "a dtype")
    if code not in _DTYPES:
        raise ArchiveError(f"tensor '{name}' has unknown dtype code {code}")
    shape = r.shape(budget, name)
    dtype = _DTYPES[code]
    raw = r.take(math.prod(shape) * dtype.itemsize, f"tensor '{name}'")
    return name, np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)


def unpack_encoded(data: bytes, max_elements: int = MAX_ELEMENTS) -> tuple[list[EncodedLayer], dict[str, np.ndarray]]:
    """Parse and check an archive without decoding the streams: ``(layers, raw tensors)``."""
    data = bytes(data)
    if len(data) < HEADER.size + CRC.size:
        raise ArchiveError(f"not a .tpz archive: {len(data)} bytes is shorter than the header")
    if data[:4] != MAGIC:
        raise ArchiveError("not a .tpz archive: bad magic bytes")
    body, (crc,) = data[:-CRC.size], CRC.unpack(data[-CRC.size:])
    r = _Reader(body)
    _, version, flags, n_layers, n_tensors = r.unpack(HEADER.format[1:], "the header")
    if version != VERSION:
        raise ArchiveError(f"unsupported .tpz version {version}; this reader knows version {VERSION}")
    if zlib.crc32(body) != crc:
        raise ArchiveError("archive is corrupt or truncated: checksum mismatch")
    if flags:
        raise ArchiveError(f"archive uses unknown flags 0x{flags:04x}")
    # Every record takes some bytes, so the counts cannot exceed what is left; this stops a
    # forged count from driving a long loop.
    if n_layers + n_tensors > r.left():
        raise ArchiveError(f"archive declares {n_layers + n_tensors} records in {r.left()} bytes")
    names: set[str] = set()
    budget = [max_elements]
    layers = [_read_layer(r, names, budget) for _ in range(n_layers)]
    tensors = dict(_read_tensor(r, names, budget) for _ in range(n_tensors))
    if r.left():
        raise ArchiveError(f"archive has {r.left()} unexpected bytes after the last record")
    return layers, tensors


def unpack(data: bytes, max_elements: int = MAX_ELEMENTS) -> dict[str, np.ndarray]:
    """Every tensor of an archive, by name: decoded weights (float32) first, then raw tensors."""
    layers, tensors = unpack_encoded(data, max_elements)
    out = {layer.name: layer.decode() for layer in layers}
    out.update(tensors)
    return out


def read_archive(path: "str | PathLike", max_elements: int = MAX_ELEMENTS) -> dict[str, np.ndarray]:
    """Read a ``.tpz`` file; see :func:`unpack`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ArchiveError(f"cannot read archive '{path}': {exc.strerror or exc}") from None
    return unpack(data, max_elements)


# -- ratios --------------------------------------------------------------------------------

def paper_ratio(n: int, k: int, b: int = 32) -> float:
    """Weight-sharing ratio of Deep Compression eq. 1: ``n*b / (n*log2(k) + k*b)``.

    ``n`` weights of ``b`` bits each shared among ``k`` clusters (indices of ``log2 k`` bits
    plus a codebook of ``k`` ``b``-bit values).
    """
    if k < 1 or n < 0:
        raise InputError(f"paper_ratio needs n >= 0 and k >= 1, got n={n}, k={k}")
    return n * b / (n * math.log2(k) + k * b)


def achieved_ratio(n_params: int, archive_bytes: int) -> float:
    """Size of ``n_params`` float32 values over the archive's size (every byte counted)."""
    return 4 * n_params / archive_bytes if archive_bytes else float("inf")


def archive_ratio(data: bytes, max_elements: int = MAX_ELEMENTS) -> float:
    """Achieved ratio of an archive against storing all of its tensors as float32."""
    layers, tensors = unpack_encoded(data, max_elements)
    n = sum(l.numel for l in layers) + sum(t.size for t in tensors.values())
    return achieved_ratio(n, len(data))
