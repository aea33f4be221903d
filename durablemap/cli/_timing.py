"""Item timings for the read commands: ``show`` and ``failures`` durations, ``top``'s slowest items."""

from __future__ import annotations

from typing import Any

from durablemap._records import decode_record
from durablemap._store import op_key
from durablemap._timings import ItemTime, item_times

__all__ = ["MapTimes", "map_path", "run_summary"]


def map_path(op_id: str) -> tuple[int, ...]:
    """The path of an operation id such as ``"1/2"``."""
    return tuple(int(part) for part in op_id.split("/")) if op_id else ()


def timeline_of(store: Any, execution_id: str, path: tuple[int, ...]) -> list[list[Any]]:
    """The map's runs, ``[start, end]`` each (empty for a map recorded before timings existed)."""
    raw = store.get(op_key(execution_id, path))
    return list(decode_record(raw).get("timeline") or []) if raw is not None else []


def run_summary(timeline: list[list[Any]]) -> str | None:
    """``ran 12.3s`` or ``ran 12.3s in 2 runs`` (the unfinished run counted to its last record)."""
    spans = [end - start for start, end in timeline if start is not None and end is not None]
    if not timeline:
        return None
    from durablemap.cli._render import format_duration
    runs = f" in {len(timeline)} runs" if len(timeline) > 1 else ""
    unfinished = " (one stopped before the map finished)" if len(spans) < len(timeline) else ""
    return f"ran {format_duration(sum(spans))}{runs}{unfinished}"


class MapTimes:
    """Each map's item timings, read once per map when first asked for."""

    def __init__(self, store: Any, execution_id: str) -> None:
        self.store, self.execution_id = store, execution_id
        self._maps: dict[tuple[int, ...], dict[int, ItemTime]] = {}

    def of(self, path: tuple[int, ...], index: int) -> ItemTime | None:
        """The timing of item ``index`` of the map at ``path``, or None when it has none."""
        times = self._maps.get(path)
        if times is None:
            timeline = timeline_of(self.store, self.execution_id, path)
            times = self._maps[path] = item_times(self.store, self.execution_id, path, timeline)
        return times.get(index)


def describe(time: ItemTime | None) -> str:
    """``took 1.2s in worker 123, attempt 2``; empty when unknown."""
    if time is None:
        return ""
    from durablemap.cli._render import format_duration
    attempt = f", attempt {time.attempt}" if time.attempt > 1 else ""
    return f"took {format_duration(time.duration)} in worker {time.pid}{attempt}"
