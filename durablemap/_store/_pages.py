"""Reading LMDB's leaf pages straight from ``data.mdb``, without LMDB: the salvage's last resort.

LMDB finds a record through its B-tree, from the root page its header names. When that path is
lost (a file cut short loses the pages written last, the roots among them; a damaged branch page
hides every leaf below it) the leaves themselves are often intact. Here every page of the file is
read with plain reads (never mapped: a page past the end cannot SIGBUS), and every node of every
page that is laid out as a leaf is handed out: key, value (an overflow value is read from its own
pages) and the page number. Pages LMDB has freed hold older versions of records, and a page of
random bytes can look like a leaf: the caller decides what a node is worth (see ``_salvage``).

A leaf page (LMDB 0.9, 64-bit): a 16-byte header (page number, 2 bytes of padding, flags, ``lower``,
``upper``), then ``(lower - 16) / 2`` node offsets; a node is ``lo``, ``hi``, ``flags``, ``ksize``
(2 bytes each), the key, then the value, of ``lo | hi << 16`` bytes (or, with ``F_BIGDATA``, the
8-byte number of the overflow pages that hold it, after their own 16-byte header).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

__all__ = ["leaf_nodes"]

_HEADER = 16
_P_LEAF, _P_LEAF2, _P_SUBP = 0x02, 0x20, 0x40
_F_BIGDATA = 0x01
_NODE = struct.Struct("<HHHH")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")


def leaf_nodes(data_path: str, page_size: int) -> Iterator[tuple[int, bytes, bytes]]:
    """``(page number, key, value)`` of each node of each page of ``data_path`` laid out as an LMDB
    leaf (live or free), in page order; nodes that do not fit their page are skipped."""
    with open(data_path, "rb") as fh:
        pages = os.fstat(fh.fileno()).st_size // page_size
        for number in range(2, pages):  # pages 0 and 1 are the header (meta) pages
            fh.seek(number * page_size)
            page = fh.read(page_size)
            if len(page) < page_size:
                return
            for key, value in _nodes(fh, page, page_size, pages):
                yield number, key, value


def _nodes(fh: object, page: bytes, page_size: int, pages: int) -> Iterator[tuple[bytes, bytes]]:
    flags, lower, upper = _U16.unpack_from(page, 10)[0], *struct.unpack_from("<HH", page, 12)
    if not flags & _P_LEAF or flags & (_P_LEAF2 | _P_SUBP) or not _HEADER <= lower <= upper <= page_size:
        return
    for slot in range(_HEADER, lower - 1, 2):
        offset = _U16.unpack_from(page, slot)[0]
        if offset < upper or offset + _NODE.size > page_size:
            continue
        lo, hi, node_flags, key_size = _NODE.unpack_from(page, offset)
        size, start = lo | hi << 16, offset + _NODE.size
        end = start + key_size
        if node_flags & ~_F_BIGDATA or end > page_size:
            continue  # a sub-database or duplicates node, or one that does not fit
        key = page[start:end]
        if not node_flags:
            if end + size <= page_size:
                yield key, page[end:end + size]
            continue
        if end + _U64.size > page_size:
            continue
        first = _U64.unpack_from(page, end)[0]
        if not 2 <= first < pages or (first * page_size + _HEADER + size) > pages * page_size:
            continue
        fh.seek(first * page_size + _HEADER)  # type: ignore[attr-defined]
        yield key, fh.read(size)  # type: ignore[attr-defined]
