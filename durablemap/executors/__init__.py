"""Executors: where map items run. loky worker processes by default, ``"inline"`` in the calling
process, or a Dask cluster (:class:`DaskExecutor`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from durablemap.executors._base import Executor

if TYPE_CHECKING:
    from durablemap.executors._dask import DaskExecutor
    from durablemap.executors._inline import InlineExecutor
    from durablemap.executors._loky import LokyExecutor

__all__ = ["DaskExecutor", "Executor", "InlineExecutor", "LokyExecutor"]


def __getattr__(name: str) -> Any:
    # Imported when asked for: the worker loop imports this package's protocol module, and the
    # executors import the worker loop. dask is an optional extra besides.
    if name == "InlineExecutor":
        from durablemap.executors._inline import InlineExecutor
        return InlineExecutor
    if name == "LokyExecutor":
        from durablemap.executors._loky import LokyExecutor
        return LokyExecutor
    if name == "DaskExecutor":
        from durablemap.executors._dask import DaskExecutor
        return DaskExecutor
    raise AttributeError(f"module 'durablemap.executors' has no attribute {name!r}")
