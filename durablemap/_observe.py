"""Observers: hooks called in the coordinator process as a map runs (progress bars are built on them).

Each hook is optional; an observer implements the ones it wants. Exceptions raised by a hook are
logged under the ``durablemap`` logger and never stop the map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["MapInfo", "Observer", "Observers"]

_log = logging.getLogger("durablemap")


@dataclass(frozen=True)
class MapInfo:
    """What an observer is told about a map."""

    execution_id: str
    operation_id: str
    name: str | None
    total: int
    depth: int


class Observer(Protocol):
    """Map progress hooks (every method is optional)."""

    def map_started(self, info: MapInfo, done: int, failed: int) -> None:
        """A map starts running; ``done`` items (``failed`` of them FAILED) were recorded earlier."""

    def items_finished(self, info: MapInfo, succeeded: int, failed: int) -> None:
        """``succeeded`` + ``failed`` more items finished and were recorded."""

    def map_finished(self, info: MapInfo, reason: str, succeeded: int, failed: int) -> None:
        """A map completed with this reason and these totals."""

    def memory_sampled(self, info: MapInfo, total_rss: int, peak_total_rss: int) -> None:
        """The resident memory of the coordinator and its workers together, now and at its peak in
        this map, in bytes (every half second or so while a top-level map runs on local workers)."""


class Observers:
    """A fan-out to the observers of one execution; a failing hook is logged, never raised."""

    def __init__(self, observers: list[Any]) -> None:
        self._observers = list(observers)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def call(self, hook: str, *args: Any) -> None:
        """Call ``hook(*args)`` on every observer that has it."""
        for observer in self._observers:
            method = getattr(observer, hook, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception:
                _log.exception("durablemap observer %r failed in %s; ignored", observer, hook)
