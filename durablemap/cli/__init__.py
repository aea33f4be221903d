"""The ``durablemap`` command (also ``python -m durablemap``): run a handler, and inspect a store.

    run MODULE:HANDLER | path/file.py:HANDLER   run or resume an execution (exit 0 / 1 / 130)
    ls | show ID | failures ID | top ID | export ID --map NAME | report ID  read-only, no lock
    rm ID | gc --older-than 7d                      remove executions, then compact the store file
    compact                                         give the store's free space back to the disk
    salvage [STORE] NEW_DIR                         copy what a damaged store still holds into a new one

Every command finds the store as ``handler.run`` does: ``--store``, else ``$DURABLEMAP_STORE``, else
``./.durablemap``. Read commands open it read-only and take no lock, so they work while a job writes
the store and after a job was killed; ``--json`` gives their output for scripts. A missing store or
an unknown execution id is one line on stderr and exit code 2. The store commands run in a forked
child (``_guard``): a damaged store that makes LMDB abort them still ends with that message.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import click
import cloudpickle

from durablemap import BatchResult, StoreError
from durablemap._execution import default_execution_id, default_store_path
from durablemap._salvage import salvage as salvage_store
from durablemap.cli import _admin, _reader
from durablemap.cli._guard import guarded
from durablemap.cli._load import load_handler
from durablemap.cli._reader import CliError
from durablemap.cli._render import render_executions, render_failures, render_slowest, render_tree
from durablemap.cli._timing import MapTimes

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def _die(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"durablemap: {message}", err=True)
    sys.exit(code)


def _store_option(func: F) -> F:
    return click.option("--store", "store", metavar="DIR", default=None,
                        help="The store directory (default: $DURABLEMAP_STORE, else ./.durablemap).")(func)


def _json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def _no_compact_option(func: F) -> F:
    return click.option("--no-compact", is_flag=True,
                        help="Leave the freed space inside the store file (for reuse) instead of compacting.")(func)


def _store_path(store: str | None) -> str:
    return store or default_store_path()


# Store commands run in a child process: a damaged store that kills it ends the command with a message.
_guarded = guarded(_store_path)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, default=str, indent=2))


class _Commands(click.Group):
    """The command group. A StoreError that a command meets while it reads (a damaged store found
    half-way through a scan) ends it with the error's message and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StoreError as exc:
            _die(str(exc))


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="durablemap")
def main() -> None:
    """durablemap: run durable parallel batch jobs, and see what they did."""


@main.command()
@click.argument("handler_spec", metavar="MODULE:HANDLER")
@click.option("--input", "input_json", metavar="JSON", default=None, help="The event, as JSON.")
@click.option("--input-file", type=click.Path(dir_okay=False), default=None, help="A file holding the event as JSON.")
@_store_option
@click.option("--execution-id", default=None, help="Default: derived from the handler and the event.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Worker processes (default: the CPUs).")
@click.option("--retry-failed", is_flag=True, help="Run FAILED items and steps again.")
@click.option("--executor", type=click.Choice(["loky", "inline", "dask"]), default=None, help="Where items run.")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="The Dask scheduler for --executor dask (e.g. tcp://host:8786).")
def run(handler_spec: str, input_json: str | None, input_file: str | None, store: str | None,
        execution_id: str | None, workers: int | None, retry_failed: bool, executor: str | None,
        scheduler: str | None) -> None:
    """Run (or resume) the durable handler MODULE:HANDLER or path/file.py:HANDLER.

    Prints the handler's result as JSON on stdout. Exit code 0 when it succeeded, 1 when it failed,
    130 when interrupted (run the same command again to resume).
    """
    try:
        handler = load_handler(handler_spec)
        event = _read_event(input_json, input_file)
        runner = _executor(executor, scheduler)
        if executor == "dask" and handler_spec.rpartition(":")[0].endswith(".py"):
            # Dask workers cannot import a script by its file name: ship its code with the map.
            cloudpickle.register_pickle_by_value(sys.modules[handler.func.__module__])
    except CliError as exc:
        _die(str(exc))
    path = _store_path(store or (str(handler.store) if handler.store else None))
    execution_id = execution_id or default_execution_id(handler.func, event)
    where = f" --store {path}" if store else ""
    click.echo(f"durablemap: execution {execution_id} (store {path})", err=True)
    try:
        with runner as chosen:
            result = handler.run(event, store=path, execution_id=execution_id, workers=workers,
                                 retry_failed=retry_failed, executor=chosen)
    except KeyboardInterrupt:
        again = _again(input_json, input_file)
        click.echo(f"durablemap: interrupted; resume with: durablemap run {handler_spec}{again}{where}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        click.echo(f"durablemap: execution {execution_id} failed: {type(exc).__name__}: {exc}", err=True)
        click.echo(f"durablemap: see `durablemap failures {execution_id}{where}`; rerun failed work with "
                   f"`durablemap run {handler_spec}{_again(input_json, input_file)}{where} --retry-failed`",
                   err=True)
        sys.exit(EXIT_FAILED)
    click.echo(json.dumps(result.to_dict() if isinstance(result, BatchResult) else result, default=str))
    click.echo(f"durablemap: execution {execution_id} succeeded; inspect with `durablemap show {execution_id}"
               f"{where}`", err=True)


def _executor(executor: str | None, scheduler: str | None) -> Any:
    """A context manager giving what ``handler.run(executor=...)`` takes; a Dask client is closed
    when the run ends."""
    if executor != "dask":
        if scheduler is not None:
            raise CliError("--scheduler goes with --executor dask")
        return contextlib.nullcontext(executor)
    if not scheduler:
        raise CliError("--executor dask needs --scheduler ADDRESS (for example tcp://127.0.0.1:8786)")
    try:
        from durablemap.executors import DaskExecutor
    except ImportError:
        raise CliError("--executor dask needs Dask: pip install 'durablemap[dask]'") from None
    try:
        return DaskExecutor(scheduler)
    except Exception as exc:  # the address is wrong, or nothing listens there
        raise CliError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None


def _again(input_json: str | None, input_file: str | None) -> str:
    if input_file:
        return f" --input-file {input_file}"
    if input_json:
        return f" --input '{input_json}'"
    return ""


def _read_event(input_json: str | None, input_file: str | None) -> Any:
    if input_json is not None and input_file is not None:
        raise CliError("give --input or --input-file, not both")
    try:
        if input_file is not None:
            with open(input_file, encoding="utf-8") as file:
                return json.load(file)
        return json.loads(input_json) if input_json is not None else None
    except OSError as exc:
        raise CliError(f"cannot read --input-file: {exc}") from None
    except ValueError as exc:
        raise CliError(f"the input is not JSON: {exc}") from None


@main.command(name="ls")
@_store_option
@_json_option
@_guarded
def list_command(store: str | None, as_json: bool) -> None:
    """List the executions of the store."""
    try:
        with _reader.open_store(_store_path(store)) as handle:
            executions = _reader.list_executions(handle)
    except CliError as exc:
        _die(str(exc))
    if as_json:
        _echo_json([e.to_json() for e in executions])
    else:
        render_executions(executions)


@main.command()
@click.argument("execution_id")
@_store_option
@click.option("--items", "max_items", type=click.IntRange(min=0), default=10, show_default=True,
              help="List at most this many items of each map (the rest are counted).")
@_json_option
@_guarded
def show(execution_id: str, store: str | None, max_items: int, as_json: bool) -> None:
    """Show the tree of operations of execution ID."""
    try:
        with _reader.open_store(_store_path(store)) as handle:
            execution = _reader.load_execution(handle, execution_id)
            tree = _reader.operation_tree(handle, execution_id, max_items)
            times = MapTimes(handle, execution_id)
            if as_json:
                _echo_json({**execution.to_json(), "operations": [_timed(node.to_json(), times) for node in tree]})
            else:
                render_tree(execution, tree, times)
    except CliError as exc:
        _die(str(exc))


def _timed(node: dict[str, Any], times: MapTimes) -> dict[str, Any]:
    """``show --json``'s node with ``timing`` on items (start, duration, pid, attempt) and maps (runs)."""
    if node.get("sub_type") in _reader.ITEM_TYPES:
        map_id, _, index = node["id"].rpartition("/")
        took = times.of(map_id, int(index))
        node["timing"] = took.to_json() if took is not None else None
    elif "timeline" in node.get("meta", {}):
        node["timing"] = {"runs": node["meta"]["timeline"]}
    node["children"] = [_timed(child, times) for child in node.get("children", [])]
    return node


@main.command()
@click.argument("execution_id")
@_store_option
@_json_option
@_guarded
def failures(execution_id: str, store: str | None, as_json: bool) -> None:
    """List each FAILED item of execution ID: map, index, name, error and traceback."""
    try:
        with _reader.open_store(_store_path(store)) as handle:
            execution = _reader.load_execution(handle, execution_id, counts=False)
            found = _reader.iter_failures(handle, execution_id)
            times = MapTimes(handle, execution_id)
            if as_json:
                _stream_json_list(_failure_json(f, times) for f in found)
            else:
                render_failures(execution, found, times)
    except CliError as exc:
        _die(str(exc))


def _failure_json(failure: Any, times: MapTimes) -> dict[str, Any]:
    took = times.of(failure.map_id, failure.index)
    return {**failure.to_json(), "timing": took.to_json() if took is not None else None}


@main.command()
@click.argument("execution_id")
@click.option("--map", "map_name", default=None, help="Only this map (its name or operation id).")
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many items to list.")
@_store_option
@_json_option
@_guarded
def top(execution_id: str, map_name: str | None, count: int, store: str | None, as_json: bool) -> None:
    """List the slowest items of execution ID (of every map, or of --map): duration, start, worker, attempt."""
    try:
        with _reader.open_store(_store_path(store)) as handle:
            _reader.load_execution(handle, execution_id, counts=False)
            maps = (_reader.find_maps(handle, execution_id, map_name) if map_name is not None
                    else _reader.all_maps(handle, execution_id))
            if map_name is not None and not maps:
                raise CliError(f"execution {execution_id!r} has no map named {map_name!r}; "
                               f"`durablemap show {execution_id}` lists its operations")
            rows: list[tuple[str, str | None, Any]] = []
            for op in maps:
                rows.extend((op.id, op.name, t) for t in handle.slowest(execution_id, op.id, count))
            rows = sorted(rows, key=lambda row: -row[2].duration)[:count]
    except CliError as exc:
        _die(str(exc))
    if as_json:
        _echo_json([{"map": name, "map_id": map_id, **t.to_json()} for map_id, name, t in rows])
    else:
        render_slowest(rows)


@main.command()
@click.argument("execution_id")
@click.option("-o", "--output", metavar="FILE", default=None,
              help="Write the report here (default: durablemap-report-ID.html in the current directory).")
@_store_option
@_guarded
def report(execution_id: str, output: str | None, store: str | None) -> None:
    """Write one self-contained HTML file (opens offline) showing what execution ID did: items
    finished over time, chunks per worker, item durations, memory, failures, configuration and
    totals. Needs durablemap[report] (Bokeh)."""
    path = output or f"durablemap-report-{re.sub(r'[^A-Za-z0-9_.-]', '_', execution_id)}.html"
    try:
        with _reader.open_store(_store_path(store)) as handle:
            _reader.load_execution(handle, execution_id, counts=False)
            try:
                page = handle.report(execution_id)
            except ImportError as exc:
                raise CliError(str(exc)) from None
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(page)
    except CliError as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"cannot write the report to {path}: {exc}")
    click.echo(f"wrote {path} ({len(page) / 1e6:.1f} MB)", err=True)


def _stream_json_list(rows: Iterator[dict[str, Any]]) -> None:
    out = sys.stdout
    out.write("[")
    for n, row in enumerate(rows):
        out.write(("\n" if n == 0 else ",\n") + json.dumps(row, default=str))
    out.write("\n]\n")


@main.command()
@click.argument("execution_id")
@click.option("--map", "map_name", required=True, help="The map's name (or its operation id, e.g. 1).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), default="jsonl", show_default=True,
              help="parquet needs durablemap[arrow] and -o FILE; it streams row groups, in bounded memory.")
@click.option("-o", "--output", metavar="FILE", default="-", help="Write here instead of stdout.")
@click.option("--row-group-size", "row_group", type=click.IntRange(min=1), default=65_536, show_default=True,
              help="parquet: items per row group (what export holds in memory at once).")
@_store_option
@_guarded
def export(execution_id: str, map_name: str, fmt: str, output: str, row_group: int, store: str | None) -> None:
    """Export one record per recorded item of a map: index, status, result, error (streamed)."""
    if fmt == "parquet" and output == "-":
        _die("--format parquet writes a file: pass -o FILE.parquet")
    try:
        with _reader.open_store(_store_path(store)) as handle:
            _reader.load_execution(handle, execution_id, counts=False)
            op_id = _one_map(handle, execution_id, map_name)
            if fmt == "parquet":
                _export_parquet(lambda: _reader.iter_items(handle, execution_id, op_id), output, row_group)
                return
            with click.open_file(output, "w", encoding="utf-8") as out:
                _write_rows(_reader.iter_items(handle, execution_id, op_id), fmt, out)
    except CliError as exc:
        _die(str(exc))


def _one_map(handle: Any, execution_id: str, map_name: str) -> str:
    maps = _reader.find_maps(handle, execution_id, map_name)
    if not maps:
        raise CliError(f"execution {execution_id!r} has no map named {map_name!r}; "
                       f"`durablemap show {execution_id}` lists its operations")
    if len(maps) > 1:
        ids = ", ".join(op.id for op in maps)
        raise CliError(f"{len(maps)} maps are named {map_name!r} (operation ids {ids}); "
                       "pass --map with the operation id")
    return maps[0].id


def _export_parquet(make_rows: Callable[[], Iterator[dict[str, Any]]], output: str, row_group: int) -> None:
    from durablemap._tabular import write_parquet
    try:
        written = write_parquet(make_rows, output, row_group)
    except (ImportError, ValueError, OSError) as exc:
        raise CliError(str(exc)) from None
    click.echo(f"wrote {written} items to {output}", err=True)


def _write_rows(rows: Iterator[dict[str, Any]], fmt: str, output: Any) -> None:
    if fmt == "jsonl":
        for row in rows:
            output.write(json.dumps(row, default=str) + "\n")
        return
    writer = csv.writer(output)
    writer.writerow(["index", "name", "status", "result", "error_type", "error_message"])
    for row in rows:
        error = row["error"] or {}
        result = "" if row["result"] is None else json.dumps(row["result"], default=str)
        writer.writerow([row["index"], row["name"] or "", row["status"], result,
                         error.get("ErrorType", ""), error.get("ErrorMessage", "")])


@main.command()
@click.argument("execution_id")
@_store_option
@click.option("--force", is_flag=True, help="Remove it even if a live process is running it.")
@_no_compact_option
@_guarded
def rm(execution_id: str, store: str | None, force: bool, no_compact: bool) -> None:
    """Remove execution ID and all its records, then compact the store file (see `compact`)."""
    try:
        with _reader.open_store(_store_path(store)) as handle:
            execution = _reader.load_execution(handle, execution_id, counts=False)
        if execution.status == "RUNNING" and not force:
            raise CliError(f"execution {execution_id!r} is being run by a live process; stop it "
                           "first, or pass --force")
        ((_id, removed),) = _admin.remove_executions(_store_path(store), [execution_id])
    except CliError as exc:
        _die(str(exc))
    click.echo(f"removed execution {execution_id} ({removed} records)")
    if not no_compact:
        _compact(_store_path(store), strict=False)


def _compact(path: str, *, strict: bool) -> None:
    """Compact the store; a refusal (the store is open elsewhere) fails the command only if ``strict``."""
    try:
        sizes = _admin.compact_store(path)
    except StoreError as exc:
        if strict:
            _die(str(exc), EXIT_FAILED)
        click.echo(f"durablemap: note: {exc}", err=True)
        return
    mib = 2**20
    click.echo(f"compacted {path}: data.mdb {sizes.before / mib:,.1f} MiB -> {sizes.after / mib:,.1f} MiB",
               err=True)


@main.command(name="compact")
@_store_option
@_guarded
def compact_command(store: str | None) -> None:
    """Shrink the store file to the space its records use (LMDB compaction into a new file, swapped
    in atomically). Refused, changing nothing, while any other process has the store open."""
    _compact(_store_path(store), strict=True)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _parse_duration(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a duration like 30m, 12h, 7d or 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


@main.command()
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="Remove finished executions that ended longer ago than this (30m, 12h, 7d, 2w).")
@_store_option
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@_no_compact_option
@_guarded
def gc(older_than: str, store: str | None, dry_run: bool, no_compact: bool) -> None:
    """Remove finished (SUCCEEDED or FAILED) executions older than a duration, then compact the store
    file (see `compact`) so the space they took goes back to the disk."""
    cutoff = time.time() - _parse_duration(older_than)
    try:
        with _reader.open_store(_store_path(store)) as handle:
            old = [e for e in _reader.list_executions(handle, counts=False)
                   if e.status in ("SUCCEEDED", "FAILED") and (e.ended or e.started or 0.0) < cutoff]
        status = {e.id: e.status for e in old}
        if dry_run:
            for execution in old:
                click.echo(f"would remove {execution.id} [{execution.status}]")
        else:
            for execution_id, removed in _admin.remove_executions(_store_path(store), list(status)):
                click.echo(f"removed ({removed} records) {execution_id} [{status[execution_id]}]")
    except CliError as exc:
        _die(str(exc))
    click.echo(f"{len(old)} execution(s) {'to remove' if dry_run else 'removed'}", err=True)
    if old and not dry_run and not no_compact:
        _compact(_store_path(store), strict=False)


@main.command()
@click.argument("paths", nargs=-1, metavar="[STORE] NEW_DIR")
@_store_option
@_json_option
def salvage(paths: tuple[str, ...], store: str | None, as_json: bool) -> None:
    """Copy every record that can still be read from a damaged store into a new store at NEW_DIR (a
    directory that does not exist yet, or is empty), and report what was saved and what could not be
    read. The damaged store is named like every command's (--store, $DURABLEMAP_STORE, ./.durablemap),
    or as the first of two paths; it is only read, never written. Then run the job on NEW_DIR: it
    runs again only what was lost. Exit code 0 when nothing was lost, 1 when some records were, 2
    when nothing could be salvaged."""
    if len(paths) not in (1, 2) or (len(paths) == 2 and store is not None):
        _die("give the new store's directory (durablemap salvage NEW_DIR --store DIR), or the damaged store "
             "and the new directory (durablemap salvage DIR NEW_DIR)")
    source = paths[0] if len(paths) == 2 else _store_path(store)
    try:
        report = salvage_store(source, paths[-1])
    except StoreError as exc:
        _die(str(exc))
    if as_json:
        _echo_json(report.to_json())
    else:
        for line in report.lines():
            click.echo(line)
    if not report.complete:
        sys.exit(EXIT_FAILED)
