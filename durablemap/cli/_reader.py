"""Reading a store for the command line: executions, operation trees, failed items, item results.

Everything here opens the store read-only and takes no lock, so it works while a job writes the
store and after a job was killed. Scans are streamed: a map of 200,000 items is never held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from durablemap._errors import StoreError
from durablemap._records import BATCH_SUB_TYPES, ITEM_SUB_TYPES, Record, Status, SubType, decode_record, path_of
from durablemap._store import Store, execution_prefix, op_key, path_str
from durablemap.serdes import deserialize_value

__all__ = [
    "BATCH_TYPES",
    "ITEM_TYPES",
    "CliError",
    "Execution",
    "Node",
    "find_maps",
    "item_counts",
    "iter_failures",
    "iter_items",
    "list_executions",
    "load_execution",
    "open_store",
    "operation_tree",
]

BATCH_TYPES = BATCH_SUB_TYPES
ITEM_TYPES = ITEM_SUB_TYPES


class CliError(Exception):
    """A problem the user can fix (no store, unknown id, ...): one line, exit code 2."""


def open_store(path: str, *, readonly: bool = True) -> Store:
    """The store at ``path``; a missing or foreign directory is a ``CliError``."""
    if not os.path.isdir(path):
        raise CliError(f"no durablemap store at {path}; pass --store DIR or set $DURABLEMAP_STORE")
    try:
        return Store.open(path, readonly=readonly)
    except StoreError as exc:
        raise CliError(str(exc)) from None


@dataclass
class Execution:
    """One execution as ``ls`` and ``show`` describe it."""

    id: str
    handler: str | None
    status: str
    created: float | None
    started: float | None
    ended: float | None
    runs: int
    error: dict[str, Any] | None = None
    pid: int | None = None
    done: int = 0
    failed: int = 0
    total: int = 0

    @property
    def duration(self) -> float | None:
        """Seconds from the last run's start to its end, or None while unfinished."""
        if self.started is None or self.ended is None or self.ended < self.started:
            return None
        return self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"id": self.id, "handler": self.handler, "status": self.status, "created": self.created,
                "started": self.started, "ended": self.ended, "duration": self.duration, "runs": self.runs,
                "items": {"done": self.done, "failed": self.failed, "total": self.total},
                "error": self.error}


def _status(record: Record, running: bool) -> str:
    if record.status in (Status.SUCCEEDED, Status.FAILED):
        return str(record.status)
    if running:
        return "RUNNING"
    return "INTERRUPTED" if record.get("interrupted") else "STOPPED"  # a kill leaves STARTED behind


def load_execution(store: Store, execution_id: str, *, counts: bool = True) -> Execution:
    """The execution ``execution_id``; an unknown id is a ``CliError``."""
    try:
        raw = store.get(op_key(execution_id, ()))
    except StoreError as exc:
        raise CliError(str(exc)) from None
    if raw is None:
        raise CliError(f"no execution {execution_id!r} in store {store.path}; `durablemap ls` lists them")
    record = decode_record(raw, f"execution {execution_id!r}")
    execution = Execution(
        execution_id, record.get("handler") or record.name, _status(record, store.lock_is_held(execution_id)),
        record.get("created"), record.get("started"), record.get("ended"), int(record.get("runs", 0)),
        record.error, record.get("pid"))
    if counts:
        execution.done, execution.failed, execution.total = item_counts(store, execution_id, ())
    return execution


def list_executions(store: Store, *, counts: bool = True) -> list[Execution]:
    """Every execution of the store, oldest first."""
    executions = []
    for key, _value in store.index_scan("executions"):
        try:
            executions.append(load_execution(store, key.decode(), counts=counts))
        except CliError:
            continue  # removed between the index scan and the read
    executions.sort(key=lambda e: (e.created or 0.0, e.id))
    return executions


def _children(store: Store, execution_id: str,
              path: tuple[int, ...]) -> Generator[tuple[tuple[int, ...], Record], None, None]:
    for index, _key, raw in store.scan_children(op_key(execution_id, path)):
        child = (*path, index)
        yield child, decode_record(raw, f"operation {path_str(child)!r} of {execution_id!r}")


def _batch_counts(store: Store, execution_id: str, path: tuple[int, ...], record: Record) -> tuple[int, int, int]:
    """(done, failed, inputs) of one map: from its record when finished, else from its item records."""
    inputs = int(record.get("inputs", 0))
    if record.finished and record.get("succeeded") is not None:
        failed = int(record.get("failed", 0))
        return int(record.get("succeeded", 0)) + failed, failed, inputs
    done = failed = 0
    for _child, item in _children(store, execution_id, path):
        if item.status == Status.FAILED:
            done, failed = done + 1, failed + 1
        elif item.status == Status.SUCCEEDED:
            done += 1
    return done, failed, inputs


def item_counts(store: Store, execution_id: str, path: tuple[int, ...]) -> tuple[int, int, int]:
    """(done, failed, total) over the maps of a context (not inside their items): what ``ls`` shows."""
    done = failed = total = 0
    for child, record in list(_children(store, execution_id, path)):
        if record.sub_type in BATCH_TYPES:
            d, f, t = _batch_counts(store, execution_id, child, record)
        elif record.sub_type == SubType.RUN_IN_CHILD_CONTEXT:
            d, f, t = item_counts(store, execution_id, child)
        else:
            continue
        done, failed, total = done + d, failed + f, total + t
    return done, failed, total


@dataclass
class Node:
    """One operation in ``show``'s tree."""

    path: tuple[int, ...]
    record: Record
    children: list[Node] = field(default_factory=list)
    counts: tuple[int, int, int] | None = None  # maps: done, failed, inputs
    hidden: int = 0  # items not listed (--items)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        record = self.record
        data: dict[str, Any] = {"id": path_str(self.path), "name": record.name, "sub_type": record.sub_type,
                                "status": record.status, "meta": _plain(record.meta or {})}
        if record.error:
            data["error"] = record.error
        if self.counts is not None:
            done, failed, inputs = self.counts
            data["items"] = {"done": done, "succeeded": done - failed, "failed": failed, "total": inputs,
                             "not_listed": self.hidden}
        data["children"] = [child.to_json() for child in self.children]
        return data


def _plain(meta: dict[str, Any]) -> dict[str, Any]:
    # "started" of a map is the list of indexes in flight when it completed early: can be long.
    return {k: (v if not isinstance(v, list | tuple) or len(v) <= 20 else f"{len(v)} entries")
            for k, v in meta.items() if isinstance(k, str)}


def operation_tree(store: Store, execution_id: str, max_items: int) -> list[Node]:
    """The operations of an execution, nested; each map lists at most ``max_items`` items."""
    return _subtree(store, execution_id, (), max_items)


def _subtree(store: Store, execution_id: str, path: tuple[int, ...], max_items: int) -> list[Node]:
    nodes: list[Node] = []
    items = 0
    children = _children(store, execution_id, path)
    try:
        for child, record in children:
            if record.sub_type in ITEM_TYPES:
                if items >= max_items:
                    break  # the rest are only counted: the map's counts say how they ended
                items += 1
            nodes.append(Node(child, record))
    finally:
        children.close()
    for node in nodes:
        flat = node.record.sub_type in BATCH_TYPES and bool(node.record.get("flat", False))
        if flat:
            node.children, listed = _flat_subtree(store, execution_id, node, max_items)
        else:
            node.children = _subtree(store, execution_id, node.path, max_items)
        if node.record.sub_type in BATCH_TYPES:
            node.counts = _batch_counts(store, execution_id, node.path, node.record)
            node.hidden = max(0, node.counts[0] - (listed if flat else len(node.children)))
    return nodes


def _flat_subtree(store: Store, execution_id: str, node: Node, max_items: int) -> tuple[list[Node], int]:
    """A FLAT map's children: its items record nothing themselves, so the operations inside them
    are listed directly under the map (as the SDK records them), those of ``max_items`` items at
    most; and how many items that was."""
    nodes: list[Node] = []
    inputs = int(node.record.get("inputs", 0))
    listed = 0
    for index in range(min(inputs, max_items)):
        for child, record in list(_children(store, execution_id, (*node.path, index))):
            inner = Node(child, record)
            inner.children = _subtree(store, execution_id, child, max_items)
            nodes.append(inner)
        listed += 1
    return nodes, listed


@dataclass
class Failure:
    """One FAILED item."""

    map_id: str
    map_name: str | None
    index: int
    name: str | None
    error: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"map": self.map_name, "map_id": self.map_id, "index": self.index, "name": self.name,
                "error_type": self.error.get("ErrorType"), "message": self.error.get("ErrorMessage"),
                "traceback": self.error.get("StackTrace") or []}


def iter_failures(store: Store, execution_id: str) -> Iterator[Failure]:
    """Every FAILED map item and parallel branch of an execution, at any depth, in key order."""
    names: dict[tuple[int, ...], str | None] = {}
    prefix = execution_prefix(execution_id)
    for key, raw in store.scan(prefix):
        path = path_of(key, len(prefix))
        record = decode_record(raw, f"operation {path_str(path)!r} of {execution_id!r}")
        if record.sub_type in BATCH_TYPES:
            names[path] = record.name
        elif record.sub_type in ITEM_TYPES and record.status == Status.FAILED:
            parent = path[:-1]
            yield Failure(path_str(parent), names.get(parent), path[-1], record.name, record.error or {})


def find_maps(store: Store, execution_id: str, name: str) -> list[tuple[tuple[int, ...], Record]]:
    """The maps (and parallels) named ``name``, or whose operation id is ``name``, outside items."""
    found = []
    pending: list[tuple[int, ...]] = [()]
    while pending:
        for child, record in list(_children(store, execution_id, pending.pop())):
            if record.sub_type in BATCH_TYPES and name in (record.name, path_str(child)):
                found.append((child, record))
            elif record.sub_type == SubType.RUN_IN_CHILD_CONTEXT:
                pending.append(child)
    return sorted(found)


def _decode_result(payload: bytes | str | None, op_id: str, execution_id: str) -> Any:
    if payload is None:
        return None
    try:
        return deserialize_value(None, payload, op_id, execution_id)
    except Exception:
        # A custom serdes wrote it: give its text form, never run user code to decode it.
        return payload if isinstance(payload, str) else payload.hex()


def iter_items(store: Store, execution_id: str, path: tuple[int, ...]) -> Iterator[dict[str, Any]]:
    """One row per recorded item of the map at ``path``: index, name, status, result, error (streamed)."""
    for index, _key, raw in store.scan_children(op_key(execution_id, path)):
        op_id = path_str((*path, index))
        record = decode_record(raw, f"item {op_id!r} of {execution_id!r}")
        yield {"index": index, "name": record.name, "status": record.status,
               "result": _decode_result(record.payload, op_id, execution_id) if record.status == Status.SUCCEEDED
               else None,
               "error": record.error}
