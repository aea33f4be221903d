"""Random access into the uncompressed bytes of a gzip file, in pure Python.

gzip has no random access: reaching uncompressed offset X means inflating everything before X.
``GzipStream`` inflates forward, keeping a snapshot of the inflater (``zlib`` ``Decompress.copy()``,
about 40 KiB with its 32 KiB window) every ``SNAPSHOT_EVERY`` bytes of output, so that once a
process has passed an offset, going back to it costs at most ``SNAPSHOT_EVERY`` bytes of
inflating. Snapshots live in the process (zlib cannot save an inflater's state to disk), so each
new process (each worker, each resumed run) pays once for inflating up to the first offset it
reads: about 1 s per 300-500 MB of uncompressed data on one core.
"""

from __future__ import annotations

import bisect
import os
import threading
import zlib
from typing import Any, BinaryIO, NamedTuple

__all__ = ["SNAPSHOT_EVERY", "GzipStream", "is_gzip"]

SNAPSHOT_EVERY = 64 << 20
_READ = 1 << 16  # compressed bytes fed at a time
_OUT = 1 << 20  # uncompressed bytes produced at most per inflate call
_KEEP_BEHIND = 1 << 20  # bytes kept before the last offset read, for short steps back


def is_gzip(path: str) -> bool:
    """Whether ``path`` starts with the gzip magic number."""
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _inflater() -> Any:
    return zlib.decompressobj(wbits=31)  # gzip header and trailer, one member


class _Snapshot(NamedTuple):
    produced: int  # uncompressed offset of the next byte the inflater produces
    consumed: int  # file offset of the next compressed byte to read
    inflater: Any
    pending: bytes  # compressed bytes read but not yet inflated


class GzipStream:
    """Reads ranges of the uncompressed content of a gzip file (many members allowed). Thread-safe."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh  # kept open by this object; read by offset (pread), so a forked child may share it
        self._fd = fh.fileno()
        self._lock = threading.Lock()
        self._snapshots = [_Snapshot(0, 0, _inflater(), b"")]
        self._restore(self._snapshots[0])

    def _restore(self, snap: _Snapshot) -> None:
        self._inflate = snap.inflater.copy()
        self._consumed, self._pending = snap.consumed, snap.pending
        self._buf = bytearray()
        self._buf_start = snap.produced

    def _produce(self) -> bytes:
        """The next piece of uncompressed content; b"" at the end of the file."""
        while True:
            if not self._pending:
                self._pending = os.pread(self._fd, _READ, self._consumed)
                self._consumed += len(self._pending)
                if not self._pending:
                    return b""
            inflate = self._inflate
            out = inflate.decompress(self._pending, _OUT)
            if inflate.eof:  # end of a member: what follows is the next member (or zero padding)
                self._pending = inflate.unused_data
                self._inflate = _inflater()
                if not self._pending.strip(b"\x00") and self._at_end():
                    self._pending = b""
            else:
                self._pending = inflate.unconsumed_tail
            if out:
                return bytes(out)

    def _at_end(self) -> bool:
        rest = os.pread(self._fd, _READ, self._consumed)
        if rest.strip(b"\x00"):
            return False
        self._consumed += len(rest)
        return not rest or self._at_end()

    def _snapshot_if_due(self) -> None:
        produced = self._buf_start + len(self._buf)
        if produced >= self._snapshots[-1].produced + SNAPSHOT_EVERY:
            self._snapshots.append(_Snapshot(produced, self._consumed, self._inflate.copy(), self._pending))

    def read(self, start: int, end: int) -> bytes:
        """The uncompressed bytes ``[start, end)`` (fewer if the content ends first)."""
        with self._lock:
            if start < self._buf_start:
                i = bisect.bisect_right([s.produced for s in self._snapshots], start) - 1
                self._restore(self._snapshots[i])
            while self._buf_start + len(self._buf) < end:
                piece = self._produce()
                if not piece:
                    break
                self._buf += piece
                drop = min(start - _KEEP_BEHIND - self._buf_start, len(self._buf))
                if drop > _KEEP_BEHIND:
                    del self._buf[:drop]
                    self._buf_start += drop
                self._snapshot_if_due()
            return bytes(self._buf[start - self._buf_start : end - self._buf_start])

    def pieces(self) -> Any:
        """Every piece of the uncompressed content from the start, in order (for building an index)."""
        with self._lock:
            self._restore(self._snapshots[0])
            while piece := self._produce():
                yield piece
