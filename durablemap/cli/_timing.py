"""Item timings for the read commands: ``show`` and ``failures`` durations, ``top``'s slowest items."""

from __future__ import annotations

from typing import Any

from durablemap.store import ItemTime, StoreReader

__all__ = ["MapTimes", "describe", "run_summary"]


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

    def __init__(self, reader: StoreReader, execution_id: str) -> None:
        self.reader, self.execution_id = reader, execution_id
        self._maps: dict[str, dict[int, ItemTime]] = {}

    def of(self, map_id: str, index: int) -> ItemTime | None:
        """The timing of item ``index`` of the map ``map_id``, or None when it has none."""
        times = self._maps.get(map_id)
        if times is None:
            times = self._maps[map_id] = self.reader.item_times(self.execution_id, map_id)
        return times.get(index)


def describe(time: ItemTime | None) -> str:
    """``took 1.2s in worker 123, attempt 2``; empty when unknown."""
    if time is None:
        return ""
    from durablemap.cli._render import format_duration
    attempt = f", attempt {time.attempt}" if time.attempt > 1 else ""
    return f"took {format_duration(time.duration)} in worker {time.pid}{attempt}"
