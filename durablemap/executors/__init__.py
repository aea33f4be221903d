"""Executors: where map items run. loky worker processes by default, ``"inline"`` in the calling
process, or a Dask cluster (:class:`DaskExecutor`)."""

from __future__ import annotations

from typing import Any

from durablemap.executors._base import Executor
from durablemap.executors._inline import InlineExecutor
from durablemap.executors._loky import LokyExecutor

__all__ = ["DaskExecutor", "Executor", "InlineExecutor", "LokyExecutor"]


def __getattr__(name: str) -> Any:
    # dask is an optional extra: import it only when asked for.
    if name == "DaskExecutor":
        from durablemap.executors._dask import DaskExecutor  # type: ignore[import-not-found,unused-ignore]
        return DaskExecutor
    raise AttributeError(name)
