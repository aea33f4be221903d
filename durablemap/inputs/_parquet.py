"""``ParquetRows`` and ``ParquetRowGroups``: a Parquet file as a lazy sequence (needs pyarrow)."""

from __future__ import annotations

import bisect
import os
import threading
from itertools import accumulate
from typing import Any

from durablemap.inputs._base import FileStamp, LazySequence

__all__ = ["ParquetRowGroups", "ParquetRows"]

_WINDOW = 4096  # rows of the current row group converted to Python at a time


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError("durablemap's Parquet inputs need pyarrow: pip install 'durablemap[parquet]' "
                          "(or pip install pyarrow)") from None
    return pq


class _ParquetBase(LazySequence[Any]):
    """A Parquet file read lazily, one row group at a time, by each process that reads it."""

    def __init__(self, path: str | os.PathLike[str], *, columns: list[str] | None = None) -> None:
        self.path = os.path.abspath(path)
        self.columns = list(columns) if columns is not None else None
        try:
            self.stamp = FileStamp.of(self.path)
        except OSError as exc:
            raise FileNotFoundError(f"{type(self).__name__}: cannot read {self.path}: {exc.strerror or exc}") from None
        metadata = self._open_file().metadata
        self.group_rows: list[int] = [int(metadata.row_group(g).num_rows) for g in range(metadata.num_row_groups)]
        self._setup()

    def _setup(self) -> None:
        self._starts = list(accumulate(self.group_rows, initial=0))
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._file: Any = None
        self._cached: tuple[int, int, list[Any]] | None = None  # (group, first row, rows as Python)
        self._group: tuple[int, Any] | None = None  # (group, pyarrow table)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.path, self.columns, self.stamp, self.group_rows))

    def _open_file(self) -> Any:
        try:
            return _pyarrow_parquet().ParquetFile(self.path)
        except ImportError:
            raise
        except Exception as exc:
            raise ValueError(f"{type(self).__name__}: {self.path} is not a readable Parquet file ({exc})") from None

    def _read_group(self, group: int) -> Any:
        """Row group ``group`` as a pyarrow Table (the last one read is kept)."""
        if self._pid != os.getpid():
            self._setup()
        if self._group is not None and self._group[0] == group:
            return self._group[1]
        if self._file is None:
            self.stamp.check(self.path, repr(self))
            self._file = self._open_file()
        table = self._file.read_row_group(group, columns=self.columns)
        self._group = (group, table)
        return table

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {len(self)} items)"


def _restore(cls: type[_ParquetBase], path: str, columns: list[str] | None, stamp: FileStamp,
             group_rows: list[int]) -> _ParquetBase:
    seq = cls.__new__(cls)
    seq.path, seq.columns, seq.stamp, seq.group_rows = path, columns, stamp, group_rows
    seq._setup()
    return seq


class ParquetRows(_ParquetBase):
    """The rows of the Parquet file ``path`` as a read-only ``Sequence`` of dicts (column name to
    Python value), row ``i`` at index ``i``; ``columns`` reads only those columns.

    A process reads the row group that holds the rows it runs, one at a time, and converts 4,096
    rows at a time to Python, so a worker's memory holds about one row group. Pickling carries the
    path and the row counts, never the data. Rows are plain dicts, so each finished row's
    fingerprint is recorded and a resumed run over a changed file reports input drift. Needs
    pyarrow (``pip install 'durablemap[parquet]'``).
    """

    def __len__(self) -> int:
        return self._starts[-1]

    def _item(self, index: int) -> Any:
        with self._lock:
            cached = self._cached
            if cached is None or not cached[1] <= index < cached[1] + len(cached[2]):
                group = bisect.bisect_right(self._starts, index) - 1
                table = self._read_group(group)
                first = index - (index - self._starts[group]) % _WINDOW
                offset = first - self._starts[group]
                cached = self._cached = (group, first, table.slice(offset, _WINDOW).to_pylist())
            return cached[2][index - cached[1]]


class ParquetRowGroups(_ParquetBase):
    """The row groups of the Parquet file ``path`` as a read-only ``Sequence``, one item per row
    group: a dict of column name to the list of that group's values (``pyarrow.table(item)`` makes
    a Table of it again). For maps whose items are batches of rows. Like ``ParquetRows``, pickling
    carries only the path and each item is fingerprinted for drift detection. Needs pyarrow
    (``pip install 'durablemap[parquet]'``).
    """

    def __len__(self) -> int:
        return len(self.group_rows)

    def _item(self, index: int) -> Any:
        with self._lock:
            return self._read_group(index).to_pydict()
