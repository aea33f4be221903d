"""Reading a store for the command line: executions, operation trees, failed items, item results.

Everything here reads through the public, read-only store API (``durablemap.store.StoreReader``):
no lock taken, so it works while a job writes the store and after a job was killed. Scans are
streamed: a map of millions of items is never held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from durablemap import StoreError
from durablemap.lambda_service import OperationStatus, OperationSubType
from durablemap.store import Execution as StoredExecution
from durablemap.store import Operation, StoreReader

__all__ = [
    "BATCH_TYPES",
    "ITEM_TYPES",
    "CliError",
    "Execution",
    "Node",
    "all_maps",
    "find_maps",
    "item_counts",
    "iter_failures",
    "iter_items",
    "list_executions",
    "load_execution",
    "open_store",
    "operation_tree",
]

BATCH_TYPES = frozenset((OperationSubType.MAP, OperationSubType.PARALLEL))
ITEM_TYPES = frozenset((OperationSubType.MAP_ITERATION, OperationSubType.PARALLEL_BRANCH))


class CliError(Exception):
    """A problem the user can fix (no store, unknown id, ...): one line, exit code 2."""


def open_store(path: str) -> StoreReader:
    """The store at ``path``, read-only; a missing or foreign directory is a ``CliError``."""
    if not os.path.isdir(path):
        raise CliError(f"no durablemap store at {path}; pass --store DIR or set $DURABLEMAP_STORE")
    try:
        return StoreReader.open(path)
    except StoreError as exc:
        raise CliError(str(exc)) from None


@dataclass
class Execution:
    """One execution as ``ls`` and ``show`` describe it: the stored execution and its item counts."""

    stored: StoredExecution
    done: int = 0
    failed: int = 0
    total: int = 0

    id = property(lambda self: self.stored.id)
    handler = property(lambda self: self.stored.handler)
    status = property(lambda self: self.stored.state)
    started = property(lambda self: self.stored.started)
    ended = property(lambda self: self.stored.ended)
    runs = property(lambda self: self.stored.runs)
    duration = property(lambda self: self.stored.duration)

    @property
    def error(self) -> dict[str, Any] | None:
        """The error a FAILED execution recorded, as stored."""
        return self.stored.error.to_dict() if self.stored.error is not None else None

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        e = self.stored
        return {"id": e.id, "handler": e.handler, "status": e.state, "created": e.created,
                "started": e.started, "ended": e.ended, "duration": e.duration, "runs": e.runs,
                "items": {"done": self.done, "failed": self.failed, "total": self.total},
                "error": self.error}


def load_execution(reader: StoreReader, execution_id: str, *, counts: bool = True) -> Execution:
    """The execution ``execution_id``; an unknown id is a ``CliError``."""
    try:
        execution = Execution(reader.execution(execution_id))
    except StoreError as exc:
        raise CliError(str(exc)) from None
    if counts:
        execution.done, execution.failed, execution.total = item_counts(reader, execution_id, "")
    return execution


def list_executions(reader: StoreReader, *, counts: bool = True) -> list[Execution]:
    """Every execution of the store, oldest first."""
    executions = []
    for stored in reader.executions():
        execution = Execution(stored)
        if counts:
            execution.done, execution.failed, execution.total = item_counts(reader, stored.id, "")
        executions.append(execution)
    executions.sort(key=lambda e: (e.stored.created or 0.0, e.id))
    return executions


def _batch_counts(reader: StoreReader, execution_id: str, op: Operation) -> tuple[int, int, int]:
    """(done, failed, inputs) of one map: from its record when finished, else from its item records."""
    meta = op.meta
    inputs = int(meta.get("inputs", 0))
    if op.finished and meta.get("succeeded") is not None:
        failed = int(meta.get("failed", 0))
        return int(meta.get("succeeded", 0)) + failed, failed, inputs
    done = failed = 0
    for item in reader.children(execution_id, op.id):
        if item.status == OperationStatus.FAILED:
            done, failed = done + 1, failed + 1
        elif item.status == OperationStatus.SUCCEEDED:
            done += 1
    return done, failed, inputs


def item_counts(reader: StoreReader, execution_id: str, op_id: str) -> tuple[int, int, int]:
    """(done, failed, total) over the maps of a context (not inside their items): what ``ls`` shows."""
    done = failed = total = 0
    for op in list(reader.children(execution_id, op_id)):
        if op.sub_type in BATCH_TYPES:
            d, f, t = _batch_counts(reader, execution_id, op)
        elif op.sub_type == OperationSubType.RUN_IN_CHILD_CONTEXT:
            d, f, t = item_counts(reader, execution_id, op.id)
        else:
            continue
        done, failed, total = done + d, failed + f, total + t
    return done, failed, total


@dataclass
class Node:
    """One operation in ``show``'s tree."""

    op: Operation
    children: list[Node] = field(default_factory=list)
    counts: tuple[int, int, int] | None = None  # maps: done, failed, inputs
    hidden: int = 0  # items not listed (--items)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        op = self.op
        data: dict[str, Any] = {"id": op.id, "name": op.name, "sub_type": op.sub_type,
                                "status": op.status, "meta": _plain(op.meta)}
        if op.error is not None:
            data["error"] = op.error.to_dict()
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


def operation_tree(reader: StoreReader, execution_id: str, max_items: int) -> list[Node]:
    """The operations of an execution, nested; each map lists at most ``max_items`` items."""
    return _subtree(reader, execution_id, "", max_items)


def _subtree(reader: StoreReader, execution_id: str, op_id: str, max_items: int) -> list[Node]:
    nodes: list[Node] = []
    items = 0
    children = reader.children(execution_id, op_id)
    try:
        for op in children:
            if op.sub_type in ITEM_TYPES:
                if items >= max_items:
                    break  # the rest are only counted: the map's counts say how they ended
                items += 1
            nodes.append(Node(op))
    finally:
        children.close()
    for node in nodes:
        batch = node.op.sub_type in BATCH_TYPES
        flat = batch and bool(node.op.meta.get("flat", False))
        if flat:
            node.children, listed = _flat_subtree(reader, execution_id, node, max_items)
        else:
            node.children = _subtree(reader, execution_id, node.op.id, max_items)
        if batch:
            node.counts = _batch_counts(reader, execution_id, node.op)
            node.hidden = max(0, node.counts[0] - (listed if flat else len(node.children)))
    return nodes


def _flat_subtree(reader: StoreReader, execution_id: str, node: Node, max_items: int) -> tuple[list[Node], int]:
    """A FLAT map's children: its items record nothing themselves, so the operations inside them
    are listed directly under the map (as the SDK records them), those of ``max_items`` items at
    most; and how many items that was."""
    nodes: list[Node] = []
    inputs = int(node.op.meta.get("inputs", 0))
    listed = 0
    for index in range(min(inputs, max_items)):
        for op in list(reader.children(execution_id, f"{node.op.id}/{index}")):
            nodes.append(Node(op, _subtree(reader, execution_id, op.id, max_items)))
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


def iter_failures(reader: StoreReader, execution_id: str) -> Iterator[Failure]:
    """Every FAILED map item and parallel branch of an execution, at any depth, in key order."""
    names: dict[tuple[int, ...], str | None] = {}
    for op in reader.operations(execution_id):
        if op.sub_type in BATCH_TYPES:
            names[op.path] = op.name
        elif op.sub_type in ITEM_TYPES and op.status == OperationStatus.FAILED:
            path = op.path
            parent = op.id.rpartition("/")[0]
            error = op.error.to_dict() if op.error is not None else {}
            yield Failure(parent, names.get(path[:-1]), path[-1], op.name, error)


def all_maps(reader: StoreReader, execution_id: str) -> list[Operation]:
    """The maps (and parallels) of an execution outside items (in child contexts too), by id."""
    found = []
    pending = [""]
    while pending:
        for op in list(reader.children(execution_id, pending.pop())):
            if op.sub_type in BATCH_TYPES:
                found.append(op)
            elif op.sub_type == OperationSubType.RUN_IN_CHILD_CONTEXT:
                pending.append(op.id)
    return sorted(found, key=lambda op: op.path)


def find_maps(reader: StoreReader, execution_id: str, name: str) -> list[Operation]:
    """The maps (and parallels) named ``name``, or whose operation id is ``name``, outside items."""
    return [op for op in all_maps(reader, execution_id) if name in (op.name, op.id)]


def iter_items(reader: StoreReader, execution_id: str, op_id: str) -> Iterator[dict[str, Any]]:
    """One row per recorded item of the map ``op_id``: index, name, status, result, error (streamed).
    A result written by a custom serdes comes as its recorded text (or the hex of its bytes): the
    CLI never runs user code to decode it."""
    for item in reader.items(execution_id, op_id, raw_custom=True):
        yield {"index": item.index, "name": item.name, "status": item.status.value, "result": item.result,
               "error": item.error.to_dict() if item.error is not None else None}
