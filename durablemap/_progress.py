"""Progress bars on stderr, drawn with rich from the coordinator's observer hooks.

    coordinator ──map_started / items_finished / map_finished──> ProgressObserver ──> rich Progress
                                                                                      (stderr, live)

One line per nesting depth at most: a map that starts at a depth whose line is taken (the next map of
a sequence, or the next nested map) reuses that line. The display refreshes at a bounded rate
(``REFRESH_PER_SECOND``), whatever the rate items finish at. When a top-level map finishes, its line
is replaced by a one-line summary. ``_execution`` decides whether to draw at all (stderr a terminal).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from durablemap._observe import MapInfo

__all__ = ["REFRESH_PER_SECOND", "ProgressObserver"]

REFRESH_PER_SECOND = 4


class _RateColumn(ProgressColumn):
    """Items per second, from rich's moving estimate (items recorded by earlier runs do not count)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- it/s" if speed is None else f"{speed:,.1f} it/s", style="progress.data.speed")


class _MemoryColumn(ProgressColumn):
    """The memory of the coordinator and its workers, once sampled."""

    def render(self, task: Task) -> Text:
        rss = task.fields.get("rss")
        return Text("" if not rss else f"{rss / 2**20:,.0f} MiB", style="progress.data.speed")


class _FailedColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        failed = int(task.fields.get("failed", 0))
        return Text(f"{failed} failed", style="red" if failed else "dim")


@dataclass
class _Line:
    task: TaskID
    operation_id: str
    started: float = field(default_factory=time.monotonic)
    ran: int = 0  # items finished in this run (the rate of the summary)
    failed: int = 0
    peak_rss: int = 0


class ProgressObserver:
    """An observer that draws a rich progress bar per running map on stderr.

    ``console`` is for tests; by default a rich console on stderr. Call ``close()`` when the
    execution ends (``DurableFunction.run`` does).
    """

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._lines: dict[int, _Line] = {}  # depth -> its line

    def _bars(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                _FailedColumn(), _RateColumn(), TextColumn("ETA"), TimeRemainingColumn(), _MemoryColumn(),
                console=self._console, refresh_per_second=REFRESH_PER_SECOND, transient=True)
            self._progress.start()
        return self._progress

    def map_started(self, info: MapInfo, done: int, failed: int) -> None:
        """Show a line for the map at its depth (reusing the line of a finished map there)."""
        bars = self._bars()
        label = info.name or f"map {info.operation_id}"
        line = self._lines.get(info.depth)
        if line is None:
            task = bars.add_task(label, total=info.total, completed=done, failed=failed)
            self._lines[info.depth] = _Line(task, info.operation_id, failed=failed)
        else:
            bars.reset(line.task, total=info.total, completed=done, description=label, failed=failed,
                       visible=True)
            self._lines[info.depth] = _Line(line.task, info.operation_id, failed=failed)

    def items_finished(self, info: MapInfo, succeeded: int, failed: int) -> None:
        """Advance the map's line."""
        line = self._lines.get(info.depth)
        if self._progress is None or line is None or line.operation_id != info.operation_id:
            return
        line.ran += succeeded + failed
        line.failed += failed
        self._progress.update(line.task, advance=succeeded + failed, failed=line.failed)

    def memory_sampled(self, info: MapInfo, total_rss: int, peak_total_rss: int) -> None:
        """Show the memory in use on the map's line."""
        line = self._lines.get(info.depth)
        if self._progress is None or line is None or line.operation_id != info.operation_id:
            return
        line.peak_rss = max(line.peak_rss, peak_total_rss)
        self._progress.update(line.task, rss=total_rss)

    def map_finished(self, info: MapInfo, reason: str, succeeded: int, failed: int) -> None:
        """Hide a nested map's line; replace a top-level map's line with a one-line summary."""
        line = self._lines.get(info.depth)
        if self._progress is None or line is None or line.operation_id != info.operation_id:
            return
        if any(depth < info.depth for depth in self._lines):
            self._progress.update(line.task, visible=False)
            return  # nested: its parent's line goes on, this one is reused by the next nested map
        del self._lines[info.depth]
        self._progress.remove_task(line.task)
        self._progress.refresh()
        elapsed = time.monotonic() - line.started
        rate = f", {line.ran / elapsed:,.1f} items/s" if elapsed > 0 and line.ran else ""
        rate += f", peak memory {line.peak_rss / 2**20:,.0f} MiB" if line.peak_rss else ""
        label = info.name or f"map {info.operation_id}"
        style = "red" if failed else "green"
        self._progress.console.print(
            f"[{style}]{label}[/]: {succeeded + failed}/{info.total} done, {succeeded} succeeded, "
            f"{failed} failed in {elapsed:.1f} s{rate} ({reason})", highlight=False)

    def close(self) -> None:
        """Stop drawing (idempotent)."""
        progress, self._progress = self._progress, None
        self._lines.clear()
        if progress is not None:
            progress.stop()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("ProgressObserver lives in the coordinator process; it is never pickled")
