"""``durablemap report ID``: one self-contained HTML file that shows what an execution did.

Charts are drawn by Bokeh (the ``durablemap[report]`` extra) with its JavaScript inlined, so the
file opens offline. Everything is aggregated while the store is scanned once, map by map: items
finished per time bin, a histogram of item durations (log-spaced bins), one bar per chunk in the
per-worker timeline (chunks merged when there are very many), the memory samples the coordinator
recorded, and the first failures. A map of ten million items yields the same few hundred points.
"""

from __future__ import annotations

import datetime
import html
import time
from dataclasses import dataclass, field
from typing import Any

from durablemap._records import Record, Status, as_record, decode_raw, decode_record, fields_meta, is_compact_raw
from durablemap._store import op_key, path_str
from durablemap._tabular import require

__all__ = ["MapSummary", "maps_of", "render_report", "summarize"]

BINS = 200  # time bins of the "items finished" chart
MAX_BARS = 2_000  # chunks drawn in the worker timeline before neighbours are merged
MAX_FAILURES = 200
_DURATION_EDGES = [10 ** (e / 8) for e in range(-6 * 8, 5 * 8 + 1)]  # 1 us .. 10^5 s, 8 bins a decade
_BATCH = ("Map", "Parallel")
_SINCE = "seconds since the map first started"
_ITEM = ("MapIteration", "ParallelBranch")


@dataclass
class MapSummary:
    """What the report shows of one map, aggregated."""

    path: tuple[int, ...]
    record: Record
    succeeded: int = 0
    failed: int = 0
    started: int = 0
    chunks: list[tuple[int, float, float, int]] = field(default_factory=list)  # pid, start, end, items
    failures: list[dict[str, Any]] = field(default_factory=list)
    durations: list[int] = field(default_factory=lambda: [0] * (len(_DURATION_EDGES) + 1))
    timed: int = 0

    @property
    def name(self) -> str:
        """The map's name, or its operation id."""
        return self.record.name or path_str(self.path)

    @property
    def timeline(self) -> list[list[Any]]:
        """One ``[start, end]`` per run of the map."""
        value = self.record.get("timeline") or []
        return [list(s) for s in value]


def maps_of(store: Any, execution_id: str) -> list[tuple[tuple[int, ...], Record]]:
    """Every map and parallel of an execution outside items (in child contexts too), in key order."""
    found: list[tuple[tuple[int, ...], Record]] = []
    pending: list[tuple[int, ...]] = [()]
    while pending:
        path = pending.pop()
        for index, _key, raw in store.scan_children(op_key(execution_id, path)):
            record = decode_record(raw)
            if record.sub_type in _BATCH:
                found.append(((*path, index), record))
            elif record.sub_type == "RunInChildContext":
                pending.append((*path, index))
    return sorted(found)


def summarize(store: Any, execution_id: str) -> list[MapSummary]:
    """Scan each map of an execution once and aggregate what the report draws."""
    summaries = []
    for path, record in maps_of(store, execution_id):
        summary = MapSummary(path, record)
        for index, _key, raw in store.scan_children(op_key(execution_id, path)):
            if is_compact_raw(raw):  # SUCCEEDED
                summary.succeeded += 1
                if b"\xa5chunk" in raw:
                    _add_chunk(summary, fields_meta(decode_raw(raw)))
                continue
            item = as_record(decode_raw(raw))
            if item.sub_type not in _ITEM:
                continue
            if item.status == Status.SUCCEEDED:
                summary.succeeded += 1
            elif item.status == Status.FAILED:
                summary.failed += 1
                if len(summary.failures) < MAX_FAILURES:
                    summary.failures.append({"index": index, "name": item.name, **(item.error or {})})
            else:
                summary.started += 1
            if item.meta and "chunk" in item.meta:
                _add_chunk(summary, item.meta)
        summaries.append(summary)
    return summaries


def _add_chunk(summary: MapSummary, meta: Any) -> None:
    data = meta.get("chunk") if isinstance(meta, dict) else None
    if not isinstance(data, dict) or not (data.get("d") or data.get("n")):
        return
    np = require("numpy", "durablemap report")
    if data.get("d"):
        durations = np.frombuffer(data["d"], dtype="<f4")
    else:  # tiny items, timed per chunk: each counts the chunk's mean
        durations = np.full(int(data["n"]), float(data["s"]) / int(data["n"]), dtype="f8")
    positions = np.searchsorted(_edges_array(np), durations, side="right")
    counts = np.bincount(positions, minlength=len(summary.durations))
    for position in np.flatnonzero(counts):
        summary.durations[int(position)] += int(counts[position])
    summary.timed += len(durations)
    t0 = float(data["t0"])
    summary.chunks.append((int(data.get("pid", 0)), t0, t0 + float(durations.sum(dtype="f8")), len(durations)))


def _edges_array(np: Any) -> Any:
    global _edges
    if _edges is None:
        _edges = np.asarray(_DURATION_EDGES, dtype="f8")
    return _edges


_edges: Any = None


# -- rendering ----------------------------------------------------------------------------------


def render_report(store: Any, execution: Any, title: str | None = None) -> str:
    """The report's HTML for ``execution`` (a ``durablemap.store.Execution``) of ``store``."""
    bokeh = _bokeh()
    summaries = summarize(store, execution.id)
    parts: list[Any] = [bokeh.Div(text=_header(execution, summaries), sizing_mode="stretch_width")]
    for summary in summaries:
        parts.extend(_map_section(bokeh, summary))
    layout = bokeh.column(*parts, sizing_mode="stretch_width")
    return str(bokeh.file_html(layout, bokeh.INLINE, title or f"durablemap report: {execution.id}"))


class _Bokeh:
    """The parts of Bokeh the report uses (imported when a report is made: Bokeh is optional)."""

    def __init__(self) -> None:
        require("bokeh", "durablemap report")
        embed, layouts, models, plotting, resources = (
            require(f"bokeh.{name}", "durablemap report") for name in ("embed", "layouts", "models", "plotting",
                                                                       "resources"))
        self.file_html, self.column, self.figure, self.INLINE = (
            embed.file_html, layouts.column, plotting.figure, resources.INLINE)
        self.ColumnDataSource, self.Div, self.HoverTool = models.ColumnDataSource, models.Div, models.HoverTool
        self.LinearAxis, self.Range1d = models.LinearAxis, models.Range1d


def _bokeh() -> _Bokeh:
    return _Bokeh()


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                   f"<td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _header(execution: Any, summaries: list[MapSummary]) -> str:
    duration = "-" if execution.duration is None else f"{execution.duration:.1f} s"
    rows = [("execution", execution.id), ("handler", execution.handler or "-"), ("status", execution.state),
            ("started (last run)", _when(execution.started)), ("ended", _when(execution.ended)),
            ("duration (last run)", duration), ("runs", str(execution.runs)),
            ("report made", _when(time.time()))]
    if execution.error:
        rows.append(("error", f"{execution.error.type}: {execution.error.message}"))
    maps = "".join(f"<li>map {html.escape(s.name)!s} [{path_str(s.path)}]: {s.record.get('inputs', '?')} inputs, "
                   f"{s.succeeded} succeeded, {s.failed} failed, {s.started} unfinished</li>" for s in summaries)
    return (f"<h1>durablemap report: {html.escape(execution.id)}</h1>{_table(rows)}"
            f"<h2>Maps</h2><ul>{maps or '<li>none</li>'}</ul>")


def _config_rows(summary: MapSummary) -> list[tuple[str, str]]:
    meta = summary.record.meta or {}
    rows = [("status", str(summary.record.status)), ("inputs", str(meta.get("inputs", "?"))),
            ("succeeded / failed / unfinished", f"{summary.succeeded} / {summary.failed} / {summary.started}"),
            ("items timed", str(summary.timed)),
            ("workers seen", str(len({pid for pid, *_ in summary.chunks}))),
            ("completion reason", str(meta.get("reason", "-"))), ("flat", str(meta.get("flat", "-")))]
    for number, (start, end) in enumerate(summary.timeline, start=1):
        took = f" ({end - start:.1f} s)" if end is not None else " (did not finish)"
        rows.append((f"run {number}", f"{_when(start)} to {_when(end)}{took}"))
    if "peak_total_rss" in meta:
        rows.append(("peak memory, coordinator and workers", f"{meta['peak_total_rss'] / 2**20:.0f} MB"))
    if meta.get("memory_wait_seconds"):
        rows.append(("held back by the memory budget", f"{meta['memory_wait_seconds']:.1f} s"))
    return rows


def _map_section(bokeh: _Bokeh, summary: MapSummary) -> list[Any]:
    title = f"<h2>Map {html.escape(summary.name)} [{path_str(summary.path)}]</h2>"
    parts: list[Any] = [bokeh.Div(text=title + _table(_config_rows(summary)), sizing_mode="stretch_width")]
    first_item = min((start for _pid, start, _end, _n in summary.chunks), default=None)
    runs = [s[0] for s in summary.timeline if s and s[0] is not None]
    t0 = min(runs) if runs else first_item
    if summary.chunks and t0 is not None:
        parts.append(_throughput(bokeh, summary, t0))
        parts.append(_workers(bokeh, summary, t0))
        parts.append(_durations(bokeh, summary))
    memory = (summary.record.meta or {}).get("memory_samples")
    if memory:
        parts.append(_memory(bokeh, memory, t0 if t0 is not None else memory[0][0]))
    parts.append(bokeh.Div(text=_failures_html(summary), sizing_mode="stretch_width"))
    return parts


def _figure(bokeh: _Bokeh, title: str, x_label: str, y_label: str, **kwargs: Any) -> Any:
    fig = bokeh.figure(title=title, height=280, sizing_mode="stretch_width", tools="pan,wheel_zoom,box_zoom,reset,save",
                       **kwargs)
    fig.xaxis.axis_label, fig.yaxis.axis_label = x_label, y_label
    return fig


def _throughput(bokeh: _Bokeh, summary: MapSummary, t0: float) -> Any:
    end = max(e for _p, _s, e, _n in summary.chunks)
    t0 = min(t0, *(s for _p, s, _e, _n in summary.chunks))
    span = max(end - t0, 1e-6)
    width = span / BINS
    counts = [0.0] * BINS
    for chunk_pid, start, stop, n in summary.chunks:  # spread each chunk's items over its bins
        del chunk_pid
        first, last = int((start - t0) / width), int((stop - t0) / width)
        first, last = min(first, BINS - 1), min(last, BINS - 1)
        share = n / (last - first + 1)
        for b in range(first, last + 1):
            counts[b] += share
    xs = [(i + 0.5) * width for i in range(BINS)]
    rates = [c / width for c in counts]
    done, cumulative = 0.0, []
    for c in counts:
        done += c
        cumulative.append(done)
    fig = _figure(bokeh, "Items finished over time", _SINCE, "items per second")
    source = bokeh.ColumnDataSource({"t": xs, "rate": rates, "done": cumulative})
    fig.line("t", "rate", source=source, line_width=2, legend_label="items/s")
    fig.extra_y_ranges = {"done": bokeh.Range1d(0, max(cumulative[-1], 1) * 1.05)}
    fig.add_layout(bokeh.LinearAxis(y_range_name="done", axis_label="items finished"), "right")
    fig.line("t", "done", source=source, y_range_name="done", color="green", line_dash="dashed",
             legend_label="finished (cumulative)")
    fig.add_tools(bokeh.HoverTool(tooltips=[("t", "@t{0.0} s"), ("rate", "@rate{0.0} /s"), ("done", "@done{0}")]))
    fig.legend.location = "top_left"
    return fig


def _merged(chunks: list[tuple[int, float, float, int]]) -> list[tuple[int, float, float, int]]:
    if len(chunks) <= MAX_BARS:
        return chunks
    span = max(e for _p, _s, e, _n in chunks) - min(s for _p, s, _e, _n in chunks)
    gap = span / MAX_BARS
    merged: list[tuple[int, float, float, int]] = []
    for pid, start, end, n in sorted(chunks):
        if merged and merged[-1][0] == pid and start - merged[-1][2] <= gap:
            last = merged[-1]
            merged[-1] = (pid, last[1], max(end, last[2]), last[3] + n)
        else:
            merged.append((pid, start, end, n))
    return merged


def _workers(bokeh: _Bokeh, summary: MapSummary, t0: float) -> Any:
    bars = _merged(summary.chunks)
    pids = sorted({str(pid) for pid, *_ in bars})
    source = bokeh.ColumnDataSource({
        "pid": [str(p) for p, *_ in bars], "left": [s - t0 for _p, s, _e, _n in bars],
        "right": [e - t0 for _p, _s, e, _n in bars], "items": [n for *_, n in bars],
        "seconds": [e - s for _p, s, e, _n in bars]})
    fig = _figure(bokeh, "Chunks per worker (one bar per chunk of items)", _SINCE,
                  "worker pid", y_range=pids)
    fig.hbar(y="pid", left="left", right="right", height=0.7, source=source, line_color="white")
    fig.add_tools(bokeh.HoverTool(tooltips=[("worker", "@pid"), ("items", "@items"), ("took", "@seconds{0.000} s")]))
    return fig


def _durations(bokeh: _Bokeh, summary: MapSummary) -> Any:
    bins = summary.durations
    lows = [_DURATION_EDGES[0] / 10 ** (1 / 8), *_DURATION_EDGES]
    used = [i for i, c in enumerate(bins) if c]
    lo, hi = (used[0], used[-1]) if used else (0, 0)
    edges = [lows[i] for i in range(lo, hi + 1)]
    source = bokeh.ColumnDataSource({"left": edges, "right": [e * 10 ** (1 / 8) for e in edges],
                                     "count": bins[lo:hi + 1]})
    fig = _figure(bokeh, "Item durations", "seconds (log scale)", "items", x_axis_type="log")
    fig.quad(left="left", right="right", bottom=0, top="count", source=source, line_color="white")
    fig.add_tools(bokeh.HoverTool(tooltips=[("from", "@left{0.000000} s"), ("to", "@right{0.000000} s"),
                                            ("items", "@count")]))
    return fig


def _memory(bokeh: _Bokeh, samples: list[list[float]], start: float) -> Any:
    source = bokeh.ColumnDataSource({"t": [s[0] - start for s in samples],
                                     "coordinator": [s[1] / 2**20 for s in samples],
                                     "workers": [s[2] / 2**20 for s in samples]})
    fig = _figure(bokeh, "Memory (RSS)", _SINCE, "MB")
    fig.line("t", "coordinator", source=source, line_width=2, legend_label="coordinator")
    fig.line("t", "workers", source=source, line_width=2, color="orange", legend_label="workers (sum)")
    fig.add_tools(bokeh.HoverTool(tooltips=[("t", "@t{0.0} s"), ("coordinator", "@coordinator{0} MB"),
                                            ("workers", "@workers{0} MB")]))
    fig.legend.location = "top_left"
    return fig


def _failures_html(summary: MapSummary) -> str:
    if not summary.failures:
        return "<h3>Failures</h3><p>none</p>"
    rows = []
    for failure in summary.failures:
        stack = html.escape("".join(failure.get("StackTrace") or []))
        rows.append(f"<tr><td>{failure['index']}</td><td>{html.escape(str(failure.get('name') or ''))}</td>"
                    f"<td>{html.escape(str(failure.get('ErrorType')))}</td>"
                    f"<td>{html.escape(str(failure.get('ErrorMessage')))}"
                    f"<details><summary>stack</summary><pre>{stack}</pre></details></td></tr>")
    more = summary.failed - len(summary.failures)
    note = f"<p>{more} more; `durablemap failures` lists them all.</p>" if more > 0 else ""
    return ("<h3>Failures</h3><table class='failures' border='1' style='border-collapse:collapse'>"
            "<tr><th>index</th><th>name</th><th>error</th><th>message and stack</th></tr>"
            f"{''.join(rows)}</table>{note}")
