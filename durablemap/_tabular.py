"""Results out as tables: Arrow, pandas and streamed Parquet (pyarrow and pandas are optional extras).

A map's items become rows ``index, name, status, result, error_type, error_message``. The ``result``
column takes the Arrow type pyarrow infers from the results (ints, strings, structs for dicts, lists,
...); Parquet export streams row groups from the store, so a map of any size exports in bounded memory.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

__all__ = ["COLUMNS", "require", "rows_to_arrow", "write_parquet"]

COLUMNS = ("index", "name", "status", "result", "error_type", "error_message")
_EXTRAS = {"pyarrow": "arrow", "pandas": "pandas"}
ROW_GROUP = 65_536


def require(module: str, what: str) -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = _EXTRAS.get(module, module)
        raise ImportError(f"{what} needs {module}, which is not installed: pip install 'durablemap[{extra}]'") from None


def _columns(rows: Iterable[dict[str, Any]]) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for row in rows:
        error = row.get("error") or {}
        cols["index"].append(row["index"])
        cols["name"].append(row.get("name"))
        cols["status"].append(str(row["status"]))
        cols["result"].append(row.get("result"))
        cols["error_type"].append(error.get("ErrorType"))
        cols["error_message"].append(error.get("ErrorMessage"))
    return cols


def _schema(pa: Any, result_type: Any) -> Any:
    return pa.schema([("index", pa.int64()), ("name", pa.string()), ("status", pa.string()),
                      ("result", result_type), ("error_type", pa.string()), ("error_message", pa.string())])


def rows_to_arrow(rows: Iterable[dict[str, Any]], result_type: Any = None) -> Any:
    """A ``pyarrow.Table`` of item rows (``result_type`` None: inferred from the results)."""
    pa = require("pyarrow", "exporting to Arrow or Parquet")
    return _table(pa, _columns(rows), result_type)


def _table(pa: Any, cols: dict[str, list[Any]], result_type: Any) -> Any:
    result = pa.array(cols["result"], type=result_type)
    return pa.Table.from_arrays(
        [pa.array(cols["index"], pa.int64()), pa.array(cols["name"], pa.string()),
         pa.array(cols["status"], pa.string()), result, pa.array(cols["error_type"], pa.string()),
         pa.array(cols["error_message"], pa.string())],
        schema=_schema(pa, result.type))


def _batches(rows: Iterator[dict[str, Any]], size: int) -> Iterator[dict[str, list[Any]]]:
    """The rows as columns, ``size`` rows at a time: each row goes into the columns as it comes,
    so only one row group's columns are held, never its rows as well."""
    while (cols := _columns(islice(rows, size)))["index"]:
        yield cols


def write_parquet(make_rows: Any, path: str, row_group: int = ROW_GROUP) -> int:
    """Write the rows ``make_rows()`` yields to a Parquet file at ``path``, one row group at a time;
    return how many rows were written.

    The result column's type is the one inferred from the first row group. When a later group's
    results do not fit it (the first were all None, or ints then strings), the rows are read again
    to find a type that fits them all (``pyarrow.unify_schemas``) and the file is written anew.
    """
    pa = require("pyarrow", "exporting to Parquet")
    try:
        return _write(pa, make_rows(), path, row_group, None)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        pass
    types = [_table(pa, cols, None).schema for cols in _batches(make_rows(), row_group)]
    try:
        unified = pa.unify_schemas(types, promote_options="permissive").field("result").type
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"the results have types no one Parquet column holds ({exc}); export them with "
                         "--format jsonl instead") from None
    return _write(pa, make_rows(), path, row_group, unified)


def _write(pa: Any, rows: Iterator[dict[str, Any]], path: str, row_group: int, result_type: Any) -> int:
    pq = require("pyarrow.parquet", "exporting to Parquet")
    writer = None
    written = 0
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        for cols in _batches(rows, row_group):
            written += len(cols["index"])
            table = _table(pa, cols, result_type)
            if writer is None:
                result_type = table.schema.field("result").type
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            del table
        if writer is None:  # no rows: still a valid (empty) file
            writer = pq.ParquetWriter(tmp, _schema(pa, pa.null()))
        writer.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            if writer is not None:
                writer.close()
            os.unlink(tmp)
    return written
