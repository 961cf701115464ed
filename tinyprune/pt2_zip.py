"""One reading of a zip archive: its layout checked strictly, its bytes taken from torch's reader.

Python's ``zipfile`` and torch's reader (miniz, ``torch._C.PyTorchFileReader``) read some archives
differently: zipfile shifts every offset by any bytes found before the central directory's stated
place and miniz does not, and which of two entries with one name (or with names that differ only
in case) miniz returns is undefined. Such a file shows an inspector one set of entries and torch
another. So an archive is accepted only when it has a single reading: entries stored back to back
from byte 0, each local header agreeing with its central-directory record, the central directory
right after the last entry and the end records right after it, nothing else, no two names equal
ignoring case. The entries' bytes then come from torch's own reader and must match the directory's
CRC-32; the caller inspects them and gives torch an archive rebuilt from them (``rebuild``), never
the file itself, so what torch reads is what was inspected.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import NamedTuple

_EOCD = struct.Struct("<4sHHHHIIH")
_LOC64 = struct.Struct("<4sIQI")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")
_DESCRIPTOR_SIG = b"PK\x07\x08"
_DESCRIPTOR = struct.Struct("<III")
_ENCRYPTED = 0x1 | 0x40
_HAS_DESCRIPTOR = 0x8


class LayoutError(ValueError):
    """The archive has more than one reading, or is not a plain zip archive."""


class Entry(NamedTuple):
    name: str
    offset: int
    flags: int
    method: int
    crc: int
    csize: int
    usize: int


def _unpack(fmt: struct.Struct, data: bytes, at: int) -> tuple:
    if at < 0 or at + fmt.size > len(data):
        raise LayoutError("a record runs past the end of the file")
    return fmt.unpack_from(data, at)


def _directory_span(data: bytes) -> tuple[int, int, int]:
    """(number of entries, central directory offset, its end): the end records must close the file."""
    sig, disk, cd_disk, n_disk, n, cd_size, cd_offset, comment = _unpack(_EOCD, data, len(data) - _EOCD.size)
    if sig != b"PK\x05\x06" or comment:
        raise LayoutError("the file does not end with a zip end record (trailing bytes or a comment)")
    if disk or cd_disk or n_disk != n:
        raise LayoutError("a multi-disk archive")
    end = len(data) - _EOCD.size
    if end >= _LOC64.size and data[end - _LOC64.size:end - _LOC64.size + 4] == b"PK\x06\x07":
        _, disk64, at64, disks = _unpack(_LOC64, data, end - _LOC64.size)
        end = end - _LOC64.size - _EOCD64.size
        sig, size, _, _, disk, cd_disk, n_disk64, n64, cd_size64, cd_offset64 = _unpack(_EOCD64, data, end)
        if sig != b"PK\x06\x06" or at64 != end or size != _EOCD64.size - 12 or disk64 or disks != 1 \
                or disk or cd_disk or n_disk64 != n64:
            raise LayoutError("its zip64 end records disagree with each other")
        # 0xFFFF.. in the plain record means "see zip64"; any other value must say the same
        for plain, wide, full in ((n, n64, 0xFFFF), (cd_size, cd_size64, 0xFFFFFFFF), (cd_offset, cd_offset64, 0xFFFFFFFF)):
            if plain not in (wide, full):
                raise LayoutError("its zip64 end record and its end record disagree")
        n, cd_size, cd_offset = n64, cd_size64, cd_offset64
    if cd_offset + cd_size != end:
        raise LayoutError("its central directory is not where the end record says (data outside the entries)")
    return n, cd_offset, end


def layout(data: bytes, *, max_entries: int, max_entry_bytes: int, max_total_bytes: int) -> list[Entry]:
    """The entries of the archive ``data`` in file order; LayoutError unless it has one reading."""
    n, cd_offset, cd_end = _directory_span(data)
    if n > max_entries:
        raise LayoutError(f"it has {n} entries (at most {max_entries})")
    entries, seen, total, at = [], set(), 0, cd_offset
    for _ in range(n):
        (sig, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len, disk, _, _,
         offset) = _unpack(_CENTRAL, data, at)
        if sig != b"PK\x01\x02":
            raise LayoutError("its central directory is corrupt")
        raw = data[at + _CENTRAL.size:at + _CENTRAL.size + name_len]
        at += _CENTRAL.size + name_len + extra_len + comment_len
        try:
            name = raw.decode("utf-8")  # what torch's reader turns the name into
        except UnicodeDecodeError:
            raise LayoutError("an entry name is not UTF-8") from None
        if comment_len or disk or flags & _ENCRYPTED or method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise LayoutError(f"entry {name[:60]!r} is commented, encrypted, split or compressed in an unknown way")
        if name.lower() in seen:
            raise LayoutError(f"two entries are named {name[:60]!r} (ignoring case)")
        seen.add(name.lower())
        if usize > max_entry_bytes or (method == zipfile.ZIP_STORED and csize != usize):
            raise LayoutError(f"entry {name[:60]!r} unpacks to {usize} bytes (at most {max_entry_bytes})")
        total += usize
        entries.append(Entry(name, offset, flags, method, crc, csize, usize))
    if at != cd_end:
        raise LayoutError("its central directory holds more than its entries")
    if total > max_total_bytes:
        raise LayoutError(f"it unpacks to {total >> 20} MiB (at most {max_total_bytes >> 20} MiB)")
    expected = 0
    for e in sorted(entries, key=lambda e: e.offset):
        if e.offset != expected:
            raise LayoutError(f"entry {e.name[:60]!r} is not where the previous one ends (overlap or hidden data)")
        expected = _local_end(data, e)
    if expected != cd_offset:
        raise LayoutError("data lies between the last entry and the central directory")
    return entries


def _local_end(data: bytes, e: Entry) -> int:
    """Where the entry's local record ends; LayoutError unless its local header agrees with the directory."""
    sig, _, flags, method, _, _, crc, csize, usize, name_len, extra_len = _unpack(_LOCAL, data, e.offset)
    start = e.offset + _LOCAL.size
    if sig != b"PK\x03\x04" or data[start:start + name_len] != e.name.encode() or flags != e.flags \
            or method != e.method:
        raise LayoutError(f"the local header of {e.name[:60]!r} disagrees with the central directory")
    stated = (crc, csize, usize)
    if stated != (e.crc, e.csize, e.usize) and not (flags & _HAS_DESCRIPTOR and stated == (0, 0, 0)):
        raise LayoutError(f"the local header of {e.name[:60]!r} disagrees with the central directory")
    end = start + name_len + extra_len + e.csize
    if flags & _HAS_DESCRIPTOR:
        if data[end:end + 4] == _DESCRIPTOR_SIG:
            end += 4
        if _unpack(_DESCRIPTOR, data, end) != (e.crc, e.csize, e.usize):
            raise LayoutError(f"the data descriptor of {e.name[:60]!r} disagrees with the central directory")
        end += 12
    if end > len(data):
        raise LayoutError(f"entry {e.name[:60]!r} runs past the end of the file")
    return end


def torch_entries(data: bytes, entries: list[Entry]) -> dict[str, bytes]:
    """Each entry's bytes as torch's reader returns them, keyed by its full name."""
    import torch

    if not entries:
        raise LayoutError("it is empty")
    root = entries[0].name.split("/", 1)[0]
    if any(not e.name.startswith(root + "/") for e in entries):
        raise LayoutError("its entries are not all in one folder")
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = reader.get_all_records()
    except Exception:
        raise LayoutError("torch cannot read it as an archive") from None
    if sorted(records) != sorted(e.name[len(root) + 1:] for e in entries):
        raise LayoutError("torch's reader sees other entries than its central directory lists")
    out = {}
    for e in entries:
        record = e.name[len(root) + 1:]
        try:
            blob = reader.get_record(record) if e.usize else b""
        except Exception:
            raise LayoutError(f"entry {e.name[:60]!r} is corrupt") from None
        if len(blob) != e.usize or zlib.crc32(blob) != e.crc:
            raise LayoutError(f"entry {e.name[:60]!r} does not match its CRC-32")
        out[e.name] = blob
    return out


def rebuild(entries: dict[str, bytes]) -> io.BytesIO:
    """A fresh archive of exactly these entries, in this order, for torch to read. The top folder
    (torch.export.save names it after the file) becomes ``archive``: torch's reader drops it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, blob in entries.items():
            zf.writestr(zipfile.ZipInfo("archive/" + name.split("/", 1)[1], date_time=(1980, 1, 1, 0, 0, 0)), blob)
    buf.seek(0)
    return buf
