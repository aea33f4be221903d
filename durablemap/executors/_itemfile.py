"""A map's inputs as a file of encoded items, so that no worker process holds the whole input.

    coordinator: write_items(inputs, path), once per map, in the job's temp directory
        header | block 0 | block 1 | ... | block k | first index of each block | offset of each block
    worker: ItemFile(path, n), the ``inputs`` its items see: a read-only Sequence
        inputs[i] -> pread the block holding item i -> unpickle it (the last block read is kept) -> item

Items are pickled (cloudpickle: what loky would ship) a block of consecutive items at a time, each
block one pickled list: tiny items go thousands to a block (a chunk of them costs a few reads and
loads), large ones one to a block (reading one item decodes that item only), sized as the file is
written by what the previous block took. Blocks are read with ``pread`` through the page cache,
which all workers share: a worker's memory holds the block it reads, never the input, whatever the
size of the input (CONTRACT section 3). The file is removed with the map (``unpublish``), or with
the job's temp directory when the job was killed (``_leftovers``).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import threading
import weakref
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, overload

import cloudpickle

__all__ = ["ItemFile", "UnpicklableItem", "write_items"]

_MAGIC = b"DMITEMS1"
_HEADER = struct.Struct("<8sQQQ")  # magic, items, blocks, where the index (starts, offsets) begins
_BLOCK_BYTES = 1 << 16  # what a block should take, pickled
_MAX_BLOCK_ITEMS = 4096
_GROWTH = 8  # a block holds at most this many times the items of the previous one


class UnpicklableItem(Exception):
    """``inputs[index]`` cannot be pickled (``cause`` says why)."""

    def __init__(self, index: int, item: Any, cause: Exception) -> None:
        super().__init__(f"inputs[{index}] (a {type(item).__name__}): {type(cause).__name__}: {cause}")
        self.index, self.item, self.cause = index, item, cause


def write_items(inputs: Sequence[Any], path: str) -> ItemFile:
    """Write ``inputs`` to a new file at ``path``; returns the sequence that reads it. Raises
    ``UnpicklableItem`` for the first item that cannot be pickled."""
    try:
        return _write(inputs, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)  # nothing half-written is left behind
        raise


def _write(inputs: Sequence[Any], path: str) -> ItemFile:
    n = len(inputs)
    starts, offsets = array("Q"), array("Q")
    with open(path, "wb") as fh:
        fh.write(_HEADER.pack(_MAGIC, 0, 0, 0))
        start, size = 0, 1
        while start < n:
            stop = min(n, start + size)
            data = _pickled_block(inputs, start, stop)
            starts.append(start)
            offsets.append(fh.tell())
            fh.write(data)
            size = max(1, min(_MAX_BLOCK_ITEMS, size * _GROWTH, size * _BLOCK_BYTES // max(len(data), 1)))
            start = stop
        offsets.append(fh.tell())
        index_at = fh.tell()
        fh.write(starts.tobytes())
        fh.write(offsets.tobytes())
        fh.seek(0)
        fh.write(_HEADER.pack(_MAGIC, n, len(starts), index_at))
    return ItemFile(path, n)


def _pickled_block(inputs: Sequence[Any], start: int, stop: int) -> bytes:
    items = inputs[start:stop] if isinstance(inputs, list | tuple) else [inputs[i] for i in range(start, stop)]
    try:
        data: bytes = cloudpickle.dumps(items)
    except Exception:
        for offset, item in enumerate(items):  # which one: the error names it
            try:
                cloudpickle.dumps(item)
            except Exception as exc:
                raise UnpicklableItem(start + offset, item, exc) from None
        raise
    return data


class ItemFile(Sequence[Any]):
    """The read-only sequence of the items written by :func:`write_items` to ``path``, read on
    demand; it pickles as its path. Negative indexes count from the end; a slice gives a list."""

    def __init__(self, path: str, length: int) -> None:
        self.path = path
        self._len = length
        self._index: tuple[int, array[int], array[int]] | None = None  # fd, block starts, offsets
        self._open_lock = threading.Lock()
        self._cached: tuple[int, Sequence[Any]] = (0, ())  # the last block read: its first index, its items

    def __reduce__(self) -> tuple[Any, ...]:
        return (ItemFile, (self.path, self._len))

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"ItemFile({self.path!r}, {self._len} items)"

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        first, block = self._cached
        if type(index) is int and 0 <= index - first < len(block):
            return block[index - first]
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            return self._run(start, stop) if step == 1 else [self._item(i) for i in range(start, stop, step)]
        try:
            i = index.__index__()
        except AttributeError:
            raise TypeError(f"inputs indexes must be integers or slices, not {type(index).__name__}") from None
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"inputs index {index} out of range (the map has {self._len} inputs)")
        return self._item(i)

    def __iter__(self) -> Iterator[Any]:
        for i in range(self._len):
            yield self._item(i)

    def _item(self, i: int) -> Any:
        first, block = self._cached
        if not 0 <= i - first < len(block):
            first, block = self._cached = self._read_block(i)
        return block[i - first]

    def _run(self, start: int, stop: int) -> list[Any]:
        """The items ``start`` to ``stop``, a block at a time."""
        out: list[Any] = []
        while start < stop:
            first, block = self._cached
            if not 0 <= start - first < len(block):
                first, block = self._cached = self._read_block(start)
            end = min(stop, first + len(block))
            out += block[start - first:end - first]
            start = end
        return out

    def _read_block(self, i: int) -> tuple[int, Sequence[Any]]:
        fd, starts, offsets = self._index or self._open()
        b = bisect.bisect_right(starts, i) - 1
        data = os.pread(fd, offsets[b + 1] - offsets[b], offsets[b])
        block: Sequence[Any] = cloudpickle.loads(data)
        return starts[b], block

    def _open(self) -> tuple[int, array[int], array[int]]:
        with self._open_lock:
            if self._index is None:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                weakref.finalize(self, os.close, fd)
                magic, n, blocks, index_at = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
                if magic != _MAGIC or n != self._len:
                    raise RuntimeError(f"{self.path} is not the inputs file of this map (damaged or replaced)")
                starts, offsets = array("Q"), array("Q")
                starts.frombytes(os.pread(fd, 8 * blocks, index_at))
                offsets.frombytes(os.pread(fd, 8 * (blocks + 1), index_at + 8 * blocks))
                self._index = (fd, starts, offsets)
            return self._index
