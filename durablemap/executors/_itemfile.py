"""A map's inputs as a file of encoded items, so that no worker process holds the whole input.

    coordinator: write_items(inputs, path), once per map, in the job's temp directory
        header | block 0 | ... | block k | index: first item, offset and size of each block | moved blocks
    worker: ItemFile(path, n), the ``inputs`` its items see: a read-only Sequence
        inputs[i] -> pread the block holding item i -> decode it (the last block read is kept) -> item

Items go a block of consecutive items at a time: tiny items thousands to a block (a chunk of them
costs a few reads and one ``loads``), large ones one to a block, sized as the file is written by
what the previous block took. Blocks are read with ``pread`` through the page cache, which all
workers share: a worker's memory holds the block it reads, never the input, whatever the size of
the input (CONTRACT section 3). The file is removed with the map (``unpublish``), or with the job's
temp directory when the job was killed (``_leftovers``).

Unpickling runs code (an instance's ``__reduce__`` or ``__setstate__``, an import), and that code
may kill the worker. Such a death is charged to the item whose input it is, as running it would be
(CONTRACT section 3), and the other items run on. A block is one of two kinds, its first byte says:

- *whole* (several items): one pickled list (cloudpickle, what loky would ship), the fast kind. A
  worker decoding one marks its slot "decoding item i" (``mark_decoding``); if it dies there, the
  coordinator does not charge the item its slot names but rewrites that block as *each*
  (``isolate``), and the lost items run again.
- *each* (one item, or a block rewritten): one pickle per item after a table of where each ends,
  each decoded alone as it is read, the worker's slot naming that item (``read_run``, or the item
  loop before ``inputs[i]``): a death there is that item's.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import os
import pickle
import struct
import threading
import weakref
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, overload

import cloudpickle

__all__ = ["ItemBuffer", "ItemFile", "UnpicklableItem", "inert_pickle", "isolate", "mark_decoding", "write_items"]

_MAGIC = b"DMITEMS2"
_HEADER = struct.Struct("<8sQQQ")  # magic, items, blocks, where the index (starts, offsets, sizes) begins
_BLOCK_BYTES = 1 << 16  # what a block should take, pickled
_MAX_BLOCK_ITEMS = 4096
_GROWTH = 8  # a block holds at most this many times the items of the previous one
_WHOLE, _EACH = b"W", b"E"  # a block's first byte: its kind (see the module docstring)

# In a worker: where to say which item's whole block is being decoded (a word of its slot, see
# _slots.SlotWriter.decoding_word), and one decoding at a time, so that the word names it.
_marker: Words | None = None
_marker_word = 0
_decoding = threading.RLock()


class Words(Protocol):
    """Where a worker names what it does (its slot's words, see ``_slots``): written by index."""

    def __setitem__(self, index: int, value: int, /) -> None: ...


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
    starts, offsets, sizes = array("Q"), array("Q"), array("Q")
    with open(path, "wb") as fh:
        fh.write(_HEADER.pack(_MAGIC, 0, 0, 0))
        start, size = 0, 1
        while start < n:
            stop = min(n, start + size)
            data = _whole_block(inputs, start, stop) if stop - start > 1 else _each_block(inputs, start, stop)
            starts.append(start)
            offsets.append(fh.tell())
            sizes.append(len(data))
            fh.write(data)
            size = max(1, min(_MAX_BLOCK_ITEMS, size * _GROWTH, size * _BLOCK_BYTES // max(len(data), 1)))
            start = stop
        index_at = fh.tell()
        for column in (starts, offsets, sizes):
            fh.write(column.tobytes())
        fh.seek(0)
        fh.write(_HEADER.pack(_MAGIC, n, len(starts), index_at))
    return ItemFile(path, n)


def _items(inputs: Sequence[Any], start: int, stop: int) -> Sequence[Any]:
    return inputs[start:stop] if isinstance(inputs, list | tuple) else [inputs[i] for i in range(start, stop)]


def _whole_block(inputs: Sequence[Any], start: int, stop: int) -> bytes:
    items = _items(inputs, start, stop)
    try:
        data: bytes = cloudpickle.dumps(items)
        return _WHOLE + data
    except Exception:
        _each_block(inputs, start, stop)  # raises UnpicklableItem, naming the item
        raise


def _each_block(inputs: Sequence[Any], start: int, stop: int) -> bytes:
    items = _items(inputs, start, stop)
    out = io.BytesIO()
    ends = array("I")  # where each item's pickle ends, from the first pickle's start
    out.write(_EACH + struct.pack("<I", len(items)) + bytes(4 * len(items)))  # the table, filled below
    base = out.tell()
    pickler = cloudpickle.CloudPickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    for offset, item in enumerate(items):
        try:
            pickler.dump(item)
        except Exception as exc:
            raise UnpicklableItem(start + offset, item, exc) from None
        pickler.clear_memo()  # each pickle stands alone: it is decoded alone
        ends.append(out.tell() - base)
    data = out.getbuffer()
    data[5:base] = ends.tobytes()
    return bytes(data)


def isolate(path: str, inputs: Sequence[Any], index: int) -> bool:
    """Rewrite the block holding item ``index`` of the file at ``path`` (written from ``inputs``)
    as one pickle per item: a worker died decoding it whole. The new block goes at the end of the
    file and the index points to it; workers started afterwards read it (the coordinator calls
    this between a pool's break and its restart, when no worker reads the file). True once the
    block holds one pickle per item (rewritten now, or before), False if it cannot."""
    with open(path, "r+b") as fh:
        fd = fh.fileno()
        magic, n, blocks, index_at = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
        if magic != _MAGIC or not 0 <= index < n:
            return False
        starts = array("Q")
        starts.frombytes(os.pread(fd, 8 * blocks, index_at))
        b = bisect.bisect_right(starts, index) - 1
        offset = struct.unpack("<Q", os.pread(fd, 8, index_at + 8 * (blocks + b)))[0]
        if os.pread(fd, 1, offset) == _EACH:
            return True
        data = _each_block(inputs, starts[b], starts[b + 1] if b + 1 < blocks else n)
        at = os.fstat(fd).st_size
        os.pwrite(fd, data, at)
        os.pwrite(fd, struct.pack("<Q", len(data)), index_at + 8 * (2 * blocks + b))
        os.pwrite(fd, struct.pack("<Q", at), index_at + 8 * (blocks + b))
    return True


def mark_decoding(words: Words | None, word: int = 0) -> None:
    """In a worker: say in ``words[word]`` which item's whole block is being decoded (-1: none)."""
    global _marker, _marker_word
    _marker, _marker_word = words, word


def inert_pickle(obj: Any) -> bytes | None:
    """``obj`` pickled, if unpickling it runs no code (it holds only None, bools, ints, floats,
    bytes, str, and dicts, sets, frozensets, lists and tuples of those), else None."""
    out = io.BytesIO()
    pickler = _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dump(obj)
    return None if pickler.runs_code else out.getvalue()


class _Pickler(cloudpickle.CloudPickler):  # type: ignore[misc]
    """cloudpickle's pickler, noting whether what it pickled will run code as it unpickles."""

    runs_code = False

    def reducer_override(self, obj: Any) -> Any:
        # Called for every object but None, True, False and exact ints, floats, bytes, str, dicts,
        # sets, frozensets, lists and tuples: those the unpickler builds without running code.
        self.runs_code = True
        return super().reducer_override(obj)


class _Pickles(Sequence[Any]):
    """A block of items pickled one by one, each decoded when it is read."""

    __slots__ = ("data", "ends")

    def __init__(self, data: bytes) -> None:
        count = struct.unpack_from("<I", data, 1)[0]
        self.ends = array("I", bytes(4))  # the first pickle starts at 0
        self.ends.frombytes(data[5:5 + 4 * count])
        self.data = memoryview(data)[5 + 4 * count:]

    def __len__(self) -> int:
        return len(self.ends) - 1

    def __getitem__(self, k: Any) -> Any:
        return pickle.loads(self.data[self.ends[k]:self.ends[k + 1]])


class ItemFile(Sequence[Any]):
    """The read-only sequence of the items written by :func:`write_items` to ``path``, read on
    demand; it pickles as its path. Negative indexes count from the end; a slice gives a list."""

    def __init__(self, path: str, length: int) -> None:
        self.path = path
        self._len = length
        self._index: tuple[int, array[int], array[int], array[int]] | None = None  # fd, starts, offsets, sizes
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
            if step == 1:
                return self.read_run(start, stop, [0, 0])
            return [self._item(i) for i in range(start, stop, step)]
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

    def read_run(self, start: int, stop: int, naming: Words) -> list[Any]:
        """``self[start:stop]`` for a worker's chunk: an item pickled on its own is named in
        ``naming[1]`` (the worker's slot, see ``_slots.SlotWriter.item_fields``) before it is
        decoded, so that a decoding that kills the worker is charged to that item."""
        out: list[Any] = []
        while start < stop:
            first, block = self._cached
            if not 0 <= start - first < len(block):
                first, block = self._cached = self._read_block(start)
            end = min(stop, first + len(block))
            if type(block) is list:
                out += block[start - first:end - first]
            else:
                for index in range(start, end):  # a block rewritten by isolate: rare, so plain
                    naming[1] = index
                    out.append(block[index - first])
            start = end
        return out

    def _read_block(self, i: int) -> tuple[int, Sequence[Any]]:
        fd, starts, offsets, sizes = self._index or self._open()
        b = bisect.bisect_right(starts, i) - 1
        data = self._read(fd, sizes[b], offsets[b])
        if data[:1] == _EACH:
            return starts[b], _Pickles(data)
        marker = _marker
        if marker is None:
            return starts[b], cloudpickle.loads(memoryview(data)[1:])
        with _decoding:
            marker[_marker_word] = i
            try:
                return starts[b], cloudpickle.loads(memoryview(data)[1:])
            finally:
                marker[_marker_word] = -1

    def _read(self, fd: int, size: int, offset: int) -> bytes:
        """``size`` bytes of the file from ``offset``."""
        return os.pread(fd, size, offset)

    def _opened(self) -> int:
        """A descriptor of the file, closed with this sequence."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        weakref.finalize(self, os.close, fd)
        return fd

    def _open(self) -> tuple[int, array[int], array[int], array[int]]:
        with self._open_lock:
            if self._index is None:
                fd = self._opened()
                magic, n, blocks, index_at = _HEADER.unpack(self._read(fd, _HEADER.size, 0))
                if magic != _MAGIC or n != self._len:
                    raise RuntimeError(f"{self.path} is not the inputs file of this map (damaged or replaced)")
                columns = self._read(fd, 24 * blocks, index_at)
                starts, offsets, sizes = array("Q"), array("Q"), array("Q")
                for k, column in enumerate((starts, offsets, sizes)):
                    column.frombytes(columns[8 * blocks * k:8 * blocks * (k + 1)])
                self._index = (fd, starts, offsets, sizes)
            return self._index


class ItemBuffer(ItemFile):
    """The sequence of the items of a file written by :func:`write_items`, read from a copy of the
    file held in memory (a remote worker's, see ``executors._dask``). It pickles as the buffer."""

    def __init__(self, data: bytes, length: int) -> None:
        super().__init__("<in memory>", length)
        self._data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (ItemBuffer, (self._data, self._len))

    def __repr__(self) -> str:
        return f"ItemBuffer({len(self._data):,} bytes, {self._len} items)"

    def _opened(self) -> int:
        return -1

    def _read(self, fd: int, size: int, offset: int) -> bytes:
        return self._data[offset:offset + size]
