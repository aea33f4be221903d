"""``FileLines``: the lines of a text file (plain or gzip) as a lazy sequence, by an offset index."""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
import weakref
from array import array
from collections.abc import Iterable, Iterator
from itertools import accumulate, islice
from pathlib import Path
from typing import Any, BinaryIO

from durablemap.inputs._base import FileStamp, LazySequence, index_dir, index_file, write_atomically
from durablemap.inputs._gzip import GzipStream, is_gzip

__all__ = ["FileLines"]

_MAGIC = b"DMLINES1"
_HEADER = struct.Struct("<8sQQQ")  # magic, source size, source mtime_ns, line count
_BLOCK = 1 << 22


class FileLines(LazySequence[Any]):
    """The lines of the text file ``path`` as a read-only ``Sequence`` of ``str`` (``bytes`` with
    ``encoding=None``), line ``i`` at index ``i``, for ``context.map`` over files larger than memory.

    ``path`` may be gzip-compressed (detected by its magic number; ``.gz`` not required). Lines end
    at ``\\n``; the newline (and a ``\\r`` before it) is removed unless ``keep_newlines``. A last
    line without a newline counts; a file ending with ``\\n`` has no empty last line.

    The first use of a file builds an index of where each line starts (8 bytes per line) by reading
    the file once, and keeps it in ``index_dir`` (default ``$DURABLEMAP_INDEX_DIR``, else
    ``~/.cache/durablemap/index``) under a name made of the file's path, size and modification
    time: the next run over the same file (a resume) reuses it, and a modified file gets a new one.
    An item is then one read at its offset: a worker reads only the lines it runs, through a
    memory map shared by all processes in the page cache, so a resumed map does not read again
    the lines it finished (the drift check on resume fingerprints each finished line's text, one
    sequential pass through the page cache). Pickling (to workers) carries the path, the index
    location and the file's stamp, never the data; a worker that finds the file changed since the
    map started refuses to read it.

    gzip has no random access: a process reaches line ``i`` by inflating the file up to it, and
    keeps in-process snapshots every 64 MiB of output so going back is cheap. Each new process
    pays once to inflate up to its first line (about 1 s per 300-500 MB uncompressed), which a
    resumed run's workers do again. For large gzip inputs read often, decompress once to a plain file.

    ``encoding`` must encode ``\\n`` as the single byte ``\\n`` (UTF-8, ASCII, Latin-1, ...).
    """

    def __init__(self, path: str | os.PathLike[str], *, encoding: str | None = "utf-8", errors: str = "strict",
                 keep_newlines: bool = False, index_dir: str | os.PathLike[str] | None = None) -> None:
        self.path = os.path.abspath(path)
        if encoding is not None and "\n".encode(encoding) != b"\n":
            raise ValueError(f"FileLines({self.path!r}): encoding {encoding!r} does not write a newline as the "
                             "byte \\n; convert the file to UTF-8 first")
        self.encoding, self.errors, self.keep_newlines = encoding, errors, keep_newlines
        try:
            self.stamp = FileStamp.of(self.path)
            self.gzip = is_gzip(self.path)
        except OSError as exc:
            raise FileNotFoundError(f"FileLines: cannot read {self.path}: {exc.strerror or exc}") from None
        self.index_path = _ensure_index(self.path, self.stamp, self.gzip, index_dir)
        self._len = _read_header(self.index_path, self.stamp)
        self._open: _OpenFile | None = None
        self._open_lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, ...]:
        # The path, the index's location and the stamp: a worker opens the file itself, lazily.
        return (_restore, (self.path, self.index_path, self.stamp, self.gzip, self._len, self.encoding,
                           self.errors, self.keep_newlines))

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"FileLines({self.path!r}, {self._len} lines{', gzip' if self.gzip else ''})"

    def _files(self) -> _OpenFile:
        with self._open_lock:
            if self._open is None:
                self.stamp.check(self.path, repr(self))
                self._open = _OpenFile(self.path, self.index_path, self.gzip)
            return self._open

    def _item(self, index: int) -> Any:
        line = (self._open or self._files()).line(index)
        if not self.keep_newlines and line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        return line if self.encoding is None else line.decode(self.encoding, self.errors)

    def __iter__(self) -> Iterator[Any]:
        for i in range(self._len):
            yield self._item(i)


def _restore(path: str, index_path: Path, stamp: FileStamp, gzip: bool, length: int, encoding: str | None,
             errors: str, keep_newlines: bool) -> FileLines:
    lines = FileLines.__new__(FileLines)
    lines.path, lines.index_path, lines.stamp, lines.gzip, lines._len = path, index_path, stamp, gzip, length
    lines.encoding, lines.errors, lines.keep_newlines = encoding, errors, keep_newlines
    lines._open, lines._open_lock = None, threading.Lock()
    return lines


class _OpenFile:
    """Handles on a file and its index: memory maps (plain) or a gzip stream. A forked child may
    share them: maps are read-only, and the gzip stream reads with pread (no shared file offset)."""

    def __init__(self, path: str, index_path: Path, gzip: bool) -> None:
        with open(index_path, "rb") as fh:
            self._index = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self._stream: GzipStream | None = None
        self._data: mmap.mmap | None = None
        fh = open(path, "rb")  # noqa: SIM115 - a gzip stream keeps it open for the life of this object
        if gzip:
            self._stream = GzipStream(fh)
            weakref.finalize(self, fh.close)
        else:
            with fh:
                if os.fstat(fh.fileno()).st_size:
                    self._data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)  # outlives fh
        self._offsets = struct.Struct("<QQ").unpack_from

    def line(self, index: int) -> bytes:
        start, end = self._offsets(self._index, _HEADER.size + 8 * index)
        if self._stream is not None:
            return self._stream.read(start, end)
        return self._data[start:end] if self._data is not None else b""


def _line_starts(pieces: Iterable[bytes]) -> Iterator[array[int]]:
    """Batches of the offsets where each line starts after the first, and finally the end offset
    if the content does not end with a newline."""
    pos = 0
    last = 0  # the last offset given
    for piece in pieces:
        lengths = list(map(len, piece.split(b"\n")))
        lengths.pop()  # the part after the piece's last newline continues in the next piece
        starts = array("Q", islice(accumulate(map((1).__add__, lengths), initial=pos), 1, None))
        if starts:
            last = starts[-1]
            yield starts
        pos += len(piece)
    if pos != last:
        yield array("Q", [pos])


def _build_index(path: str, gzip: bool, target: Path, stamp: FileStamp) -> None:
    def write(out: BinaryIO) -> None:
        out.write(_HEADER.pack(_MAGIC, 0, 0, 0))
        out.write(array("Q", [0]).tobytes())
        count = 0
        with open(path, "rb") as fh:
            pieces = GzipStream(fh).pieces() if gzip else iter(lambda: fh.read(_BLOCK), b"")
            for starts in _line_starts(pieces):
                out.write(starts.tobytes())
                count += len(starts)
        out.seek(0)
        out.write(_HEADER.pack(_MAGIC, stamp.size, stamp.mtime_ns, count))

    write_atomically(target, write)


def _ensure_index(path: str, stamp: FileStamp, gzip: bool, directory: str | os.PathLike[str] | None) -> Path:
    """The index of this version of ``path``: reused if present, else built (and the indexes of
    the file's older versions removed)."""
    where = index_dir(directory)
    target, prefix = index_file(where, path, stamp, ".lines")
    if target.exists():
        return target
    try:
        _build_index(path, gzip, target, stamp)
    except OSError as exc:
        raise OSError(f"FileLines({path!r}): cannot write its line index in {where} ({exc.strerror or exc}); "
                      "pass index_dir= (or set $DURABLEMAP_INDEX_DIR) to a writable directory") from exc
    for stale in where.glob(f"{prefix}-*.lines"):
        if stale != target:
            with contextlib.suppress(OSError):
                stale.unlink()
    return target


def _read_header(index_path: Path, stamp: FileStamp) -> int:
    with open(index_path, "rb") as fh:
        magic, size, mtime_ns, count = _HEADER.unpack(fh.read(_HEADER.size))
    if magic != _MAGIC or (size, mtime_ns) != stamp:
        raise ValueError(f"{index_path} is not the line index of this version of the file; delete it and "
                         "run again")
    return int(count)
