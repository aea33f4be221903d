"""What every lazy input sequence shares: indexing rules, the file stamp, the index directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar, overload

__all__ = ["FileStamp", "LazySequence", "index_dir", "index_file", "write_atomically"]

T = TypeVar("T")


class FileStamp(NamedTuple):
    """What identifies one version of a file cheaply: its size and modification time (ns)."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> FileStamp:
        """The stamp of ``path`` now."""
        stat = os.stat(path)
        return cls(stat.st_size, stat.st_mtime_ns)

    def check(self, path: str, what: str) -> None:
        """Raise if ``path`` changed since this stamp was taken (in a worker, mid-map)."""
        now = FileStamp.of(path)
        if now != self:
            raise RuntimeError(
                f"{what}: the file {path} changed since the map started (size {self.size} -> {now.size}, "
                f"mtime_ns {self.mtime_ns} -> {now.mtime_ns}); its indexes no longer hold. Do not modify "
                "input files while a map runs; run the job again to resume (changed items are then "
                "reported as input drift).")


def index_dir(explicit: str | os.PathLike[str] | None) -> Path:
    """Where index files are kept: ``explicit``, else ``$DURABLEMAP_INDEX_DIR``, else
    ``$XDG_CACHE_HOME/durablemap/index`` (``~/.cache/durablemap/index``)."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("DURABLEMAP_INDEX_DIR"):
        return Path(os.environ["DURABLEMAP_INDEX_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "durablemap" / "index"


def index_file(directory: Path, source: str, stamp: FileStamp, suffix: str) -> tuple[Path, str]:
    """The index file of one version of ``source`` in ``directory``, and the name prefix that all
    versions of that source share (so stale versions can be removed)."""
    prefix = hashlib.blake2b(os.path.realpath(source).encode(errors="surrogateescape"), digest_size=10).hexdigest()
    return directory / f"{prefix}-{stamp.size}-{stamp.mtime_ns}{suffix}", prefix


def write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create ``target`` (and its directory) with what ``write`` writes, durably and atomically:
    readers see the whole file or none, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with open(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class LazySequence(Sequence[T]):
    """A read-only sequence whose items are read on demand by ``_item(index)``; indexes are
    normalised here (negative indexes count from the end; a slice gives a list)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _item(self, index: int) -> T:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        n = len(self)
        if type(index) is int and 0 <= index < n:
            return self._item(index)
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(n))]
        try:
            i = index.__index__()
        except AttributeError:
            raise TypeError(f"{type(self).__name__} indexes must be integers or slices, "
                            f"not {type(index).__name__}") from None
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{type(self).__name__} index {index} out of range (it has {n} items)")
        return self._item(i)

    def __iter__(self) -> Iterator[T]:
        for i in range(len(self)):
            yield self._item(i)
