"""``Files``: the files of a directory or a glob pattern, sorted, as a lazy sequence of paths."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterator
from typing import Any

from durablemap.inputs._base import LazySequence, index_dir, write_atomically
from durablemap.inputs._lines import FileLines

__all__ = ["Files"]


class Files(LazySequence[str]):
    """The files of a directory (``Files("data/")``, ``Files("data/", pattern="*.json")``,
    ``recursive=True`` for its subdirectories too) or of a glob pattern (``Files("logs/*/*.gz")``;
    ``**`` with ``recursive=True``), as a read-only ``Sequence`` of absolute paths (``str``), sorted
    by path so that indexes are stable from one run to the next.

    Only regular files are listed (symbolic links to files included). The listing is taken when
    the object is created and written to a listing file in ``index_dir`` (see ``FileLines``), so
    pickling it to workers carries only that file's location, not millions of paths. A resumed
    run lists again: a file added or removed before the last finished index shifts the indexes
    after it, and the map then reports input drift (``NonDeterministicExecutionError``) instead of
    pairing recorded results with other files. A file edited in place keeps its path: that is not
    drift (fingerprint your content yourself, for instance with a step, if it matters).
    Listing files are content-addressed (one per distinct listing) and never removed by
    durablemap; delete the index directory to reclaim them.
    """

    def __init__(self, source: str | os.PathLike[str], *, pattern: str | None = None, recursive: bool = False,
                 index_dir: str | os.PathLike[str] | None = None) -> None:
        self.source = os.fspath(source)
        paths = sorted(_list(self.source, pattern, recursive), key=os.fsencode)
        for path in paths:
            if "\n" in path:
                raise ValueError(f"Files({self.source!r}): the file name {path!r} contains a newline, which "
                                 "Files cannot list; rename it or pass a list of paths instead")
        self._lines = FileLines(_write_listing(paths, index_dir), errors="surrogateescape", index_dir=index_dir)

    def __len__(self) -> int:
        return len(self._lines)

    def _item(self, index: int) -> str:
        return str(self._lines[index])

    def __iter__(self) -> Iterator[str]:
        return iter(self._lines)

    def __repr__(self) -> str:
        return f"Files({self.source!r}, {len(self)} files)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self.source, self._lines))


def _restore(source: str, lines: FileLines) -> Files:
    files = Files.__new__(Files)
    files.source, files._lines = source, lines
    return files


def _list(source: str, pattern: str | None, recursive: bool) -> list[str]:
    if os.path.isdir(source):
        if pattern is None and not recursive:
            with os.scandir(source) as entries:
                return [os.path.abspath(e.path) for e in entries if e.is_file()]
        where = os.path.join(glob.escape(source), "**" if recursive else "", pattern or "*")
        found = glob.glob(where, recursive=recursive)
    elif pattern is not None:
        raise ValueError(f"Files({source!r}, pattern={pattern!r}): pattern= goes with a directory, and "
                         f"{source!r} is not one; pass the glob itself: Files({os.path.join(source, pattern)!r})")
    elif not glob.has_magic(source):
        raise FileNotFoundError(f"Files({source!r}): no such directory, and it is not a glob pattern; pass a "
                                "directory or a pattern like 'data/*.json'")
    else:
        found = glob.glob(source, recursive=recursive)
    return [os.path.abspath(p) for p in found if os.path.isfile(p)]


def _write_listing(paths: list[str], directory: str | os.PathLike[str] | None) -> str:
    data = "".join(f"{p}\n" for p in paths).encode("utf-8", "surrogateescape")
    where = index_dir(directory)
    target = where / f"files-{hashlib.blake2b(data, digest_size=16).hexdigest()}.list"
    if not target.exists():
        write_atomically(target, lambda out: out.write(data))
    return str(target)
