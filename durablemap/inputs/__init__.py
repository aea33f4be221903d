"""Lazy input sequences for ``context.map`` over data larger than memory.

Each is a read-only ``Sequence`` with stable indexes whose items are read on demand, so the
coordinator and the workers hold only the items they touch, and pickling one to the workers
carries a path and the location of an index, never the data::

    from durablemap.inputs import FileLines, Files, ParquetRows

    context.map(FileLines("events.jsonl.gz"), parse)        # one str per line, plain or gzip
    context.map(Files("images/", pattern="*.png"), resize)   # sorted absolute paths
    context.map(ParquetRows("table.parquet"), score)         # one dict per row (needs pyarrow)

Their items are plain ``str``, ``bytes`` and ``dict`` values, so durablemap records a fingerprint
of each finished item's input as it does for lists: a resumed run over a changed file reports the
changed items as input drift (``NonDeterministicExecutionError``), or with
``MapConfig(recompute_changed_inputs=True)`` runs them again.
"""

from __future__ import annotations

from durablemap.inputs._files import Files
from durablemap.inputs._lines import FileLines
from durablemap.inputs._parquet import ParquetRowGroups, ParquetRows

__all__ = ["FileLines", "Files", "ParquetRowGroups", "ParquetRows"]
