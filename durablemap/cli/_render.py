"""Text output of the read commands: plain columns and indented trees (easy to grep and diff)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable

import click

from durablemap.cli._reader import ITEM_TYPES, Execution, Failure, Node
from durablemap.cli._timing import MapTimes, describe, run_summary
from durablemap.store import ItemTime

__all__ = ["format_duration", "render_executions", "render_failures", "render_slowest", "render_tree"]


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    """``1.2s``, ``3m04s``, ``2h05m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 0.1:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def render_executions(executions: list[Execution]) -> None:
    """The ``ls`` table."""
    if not executions:
        click.echo("no executions")
        return
    header = ("ID", "HANDLER", "STATUS", "STARTED", "DURATION", "DONE", "FAILED")
    rows = [(e.id, e.handler or "-", e.status, _when(e.started), format_duration(e.duration),
             f"{e.done}/{e.total}", str(e.failed)) for e in executions]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def render_tree(execution: Execution, tree: list[Node], times: MapTimes | None = None) -> None:
    """The ``show`` tree (with each listed item's duration when ``times`` are given)."""
    click.echo(f"execution {execution.id}  {execution.status}  handler {execution.handler or '-'}")
    click.echo(f"  started {_when(execution.started)}  duration {format_duration(execution.duration)}  "
               f"runs {execution.runs}  items {execution.done}/{execution.total} done, {execution.failed} failed")
    if execution.error:
        click.echo(f"  error {execution.error.get('ErrorType')}: {execution.error.get('ErrorMessage')}")
    for node in tree:
        _render_node(node, 1, times)


def _render_node(node: Node, depth: int, times: MapTimes | None) -> None:
    op = node.op
    meta = op.meta
    parts = [f"[{op.id}]", op.sub_type or op.kind]
    if op.name:
        parts.append(repr(op.name))
    parts.append(op.status)
    if node.counts is not None:
        done, failed, inputs = node.counts
        parts.append(f"{done}/{inputs} done ({done - failed} succeeded, {failed} failed)")
        if meta.get("reason"):
            parts.append(str(meta.get("reason")))
        ran = run_summary(list(meta.get("timeline") or []))
        if ran:
            parts.append(ran)
    elif times is not None and op.sub_type in ITEM_TYPES and op.id:
        map_id, _, index = op.id.rpartition("/")
        took = describe(times.of(map_id, int(index)))
        if took:
            parts.append(took)
    for key in ("duration", "attempt"):
        if key in meta:
            parts.append(f"{key} {meta[key]}")
    for key, value in meta.items():
        if isinstance(key, str) and key.endswith("rss") and isinstance(value, int):
            parts.append(f"{key.replace('_', ' ')} {value / 2**20:.0f} MiB")
        elif key == "memory_wait_seconds" and value:
            parts.append(f"held back by the memory budget {value:.1f} s")
    if op.error is not None and op.status == "FAILED":
        parts.append(f"{op.error.type}: {op.error.message}")
    click.echo("  " * depth + " ".join(parts))
    for child in node.children:
        _render_node(child, depth + 1, times)
    if node.hidden:
        click.echo("  " * (depth + 1) + f"... {node.hidden} more items (show more with --items N)")


def render_failures(execution: Execution, failures: Iterable[Failure], times: MapTimes | None = None) -> None:
    """The ``failures`` report, one block per failed item (with its duration when ``times`` are given)."""
    count = 0
    for failure in failures:
        count += 1
        error = failure.error
        name = f" {failure.name!r}" if failure.name else ""
        took = describe(times.of(failure.map_id, failure.index)) if times is not None else ""
        click.echo(f"map {failure.map_name!r} [{failure.map_id}] item {failure.index}{name}: "
                   f"{error.get('ErrorType')}: {error.get('ErrorMessage')}" + (f" ({took})" if took else ""))
        for line in error.get("StackTrace") or []:
            click.echo("    " + str(line).rstrip("\n").replace("\n", "\n    "))
    click.echo(f"{count} failed item(s) in execution {execution.id} [{execution.status}]")
    if execution.error and execution.status == "FAILED":
        click.echo(f"execution error: {execution.error.get('ErrorType')}: {execution.error.get('ErrorMessage')}")


def render_slowest(rows: list[tuple[str, str | None, ItemTime]]) -> None:
    """The ``top`` table: map, item, duration, start, worker, attempt; slowest first."""
    if not rows:
        click.echo("no timed items (items recorded by a durablemap without timings have none)")
        return
    header = ("MAP", "ITEM", "DURATION", "STARTED", "WORKER", "ATTEMPT")
    lines = [(f"{name or '-'} [{map_id}]", str(t.index), format_duration(t.duration),
              datetime.datetime.fromtimestamp(t.start).strftime("%H:%M:%S.%f")[:-3], str(t.pid), str(t.attempt))
             for map_id, name, t in rows]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    for row in [header, *lines]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
