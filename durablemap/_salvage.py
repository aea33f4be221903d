"""Salvaging a damaged store into a new one (``durablemap salvage``): the part that knows records.

``_store._salvage`` reads whatever LMDB can still read of the damaged store, in a child process
that may die on a damaged page. Here each record read is checked (a record key, a msgpack record)
and copied into a fresh store, or skipped and counted; then the new store is made consistent for a
resume: a map that finished without its result in its own record (a replay rebuilds it from its
items' records) and may have lost some of them is marked STARTED, so the next run resumes it and
runs exactly the items whose records are missing; every execution that lost records is marked
STARTED too (``durablemap ls`` shows it STOPPED, not SUCCEEDED), and the executions' index is
rebuilt from their records.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from durablemap._errors import StoreError
from durablemap._records import (
    BATCH_SUB_TYPES,
    ITEM_SUB_TYPES,
    Kind,
    Record,
    Status,
    SubType,
    decode_raw,
    decode_record,
    encode_record,
)
from durablemap._store import FORMAT_VERSION, Store, decode_key, op_key, path_str
from durablemap._store._env import check_directory, read_header
from durablemap._store._keys import COMPONENT_SIZE, item_keys
from durablemap._store._pages import leaf_nodes
from durablemap._store._runs import parse_run, split_run
from durablemap._store._salvage import Gap, ReadOutcome, Row, check_target, check_unused, read_store

__all__ = ["SalvageReport", "salvage"]

_WRITE_BATCH = 10_000  # records a transaction of the new store, at most
_WRITE_BYTES = 64 << 20  # and about this many bytes of values
_EXECUTIONS = "executions"
_COMPACT_ITEMS = {1: SubType.MAP_ITERATION.value, 2: SubType.PARALLEL_BRANCH.value}  # see _records
_ANCHOR_OPERATIONS = 4  # searched from when nothing before them can be read: a job's first maps
_INDEX_META = ("handler", "created", "started", "ended", "runs")  # what the executions index keeps


@dataclass
class SalvageReport:
    """What :func:`salvage` saved, and what it could not read."""

    source: str
    target: str
    #: Records copied, per ``(execution id, operation id)`` of the operation they are recorded under
    #: (``""``: the execution's top level; ``"(execution)"``: the execution's own record).
    saved: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Records read but skipped, their value not a record, counted the same way.
    undecodable: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Records read but skipped because their key is not a record key.
    bad_keys: int = 0
    read: ReadOutcome = field(default_factory=ReadOutcome)
    #: Operations marked STARTED so that the next run resumes them (``execution id:operation id``).
    reopened: list[str] = field(default_factory=list)
    #: Maps (and parallels) whose own record was lost while item records of theirs were saved:
    #: ``execution id:operation id``. A run resumes a map from its own record: it runs all their
    #: items again.
    orphaned: list[str] = field(default_factory=list)
    #: Executions in the new store's index.
    executions: int = 0
    #: Records of ``saved`` found by reading data.mdb's pages directly: LMDB could not reach them.
    from_pages: int = 0

    @property
    def complete(self) -> bool:
        """True when every record was read and copied."""
        return not (self.read.gaps or self.read.repairs or self.read.missing or self.undecodable or self.bad_keys
                    or self.orphaned)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {
            "source": self.source, "target": self.target, "complete": self.complete,
            "saved": _nested(self.saved), "undecodable": _nested(self.undecodable), "bad_keys": self.bad_keys,
            "lost_ranges": [gap.to_json() for gap in self.read.gaps], "repairs": self.read.repairs,
            "missing_databases": self.read.missing, "reader_crashes": self.read.crashes,
            "reopened": self.reopened, "orphaned_maps": self.orphaned, "executions": self.executions,
            "from_pages": self.from_pages,
        }

    def lines(self) -> list[str]:
        """The report as text, a line each."""
        out = [f"salvaged {sum(self.saved.values()):,} records of {self.source} into {self.target}"]
        for execution_id, parents in _nested(self.saved).items():
            shown = ", ".join("the execution's own record" if parent == "(execution)" else
                              f"{count:,} under {_op(parent)}" for parent, count in parents.items())
            out.append(f"  execution {execution_id}: {sum(parents.values()):,} records ({shown})")
        out += [f"  repaired to read it: {repair}" for repair in self.read.repairs]
        if self.from_pages:
            out.append(f"  {self.from_pages:,} of these records were found by reading data.mdb's pages directly: "
                       "LMDB could not reach them (the ranges below were searched that way too)")
        for gap in self.read.gaps:
            out.append(f"  LOST: unreadable {gap.describe()}")
        for (execution_id, parent), count in sorted(self.undecodable.items()):
            out.append(f"  LOST: {count:,} records of execution {execution_id} under {_op(parent)} that are "
                       "not records (skipped)")
        if self.bad_keys:
            out.append(f"  LOST: {self.bad_keys:,} records whose key is not a record key (skipped)")
        out += [f"  LOST: the store has no {name} database" for name in self.read.missing]
        out += [f"  reopened {op} (it lost records): the next run resumes it" for op in self.reopened]
        out += [f"  LOST: the record of map {op} (its items' records were saved: the next run records it "
                "again and runs only the items that lost theirs)" for op in self.orphaned]
        if self.read.crashes:
            out.append(f"  the reading process died {len(self.read.crashes)} time(s) on damaged pages "
                       f"(restarted each time); first: {self.read.crashes[0]}")
        out.append("nothing was lost" if self.complete else
                   "run the job on the new store: it runs again only what was lost")
        return out


def _op(parent: str) -> str:
    return "the top level" if parent == "" else "the execution" if parent == "(execution)" else f"operation {parent}"


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (execution_id, parent), count in sorted(counts.items()):
        out.setdefault(execution_id, {})[parent] = count
    return out


def salvage(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> SalvageReport:
    """Copy every readable record of the store at ``source`` into a new store at ``target`` (a
    directory that does not exist yet, or is empty); returns what was saved and what was lost.
    ``source`` is never written. Raises StoreError when nothing can be read, or a live process has
    ``source`` open."""
    real = check_directory(Path(source), readonly=True)
    new = check_target(real, Path(target))
    check_unused(real)
    report = SalvageReport(real, new)
    with Store.open(new) as store:
        writer = _Writer(store, report)
        report.read = read_store(real, new, writer.sinks(), writer.flush, writer.anchors)
        header = read_header(real)
        if header is not None and (report.read.gaps or report.read.repairs or report.read.missing):
            writer.from_pages(leaf_nodes(os.path.join(real, "data.mdb"), header.page_size))
        writer.finish()
    return report


class _Writer:
    """Checks each record read and writes it to the new store; then makes the store consistent."""

    def __init__(self, store: Store, report: SalvageReport) -> None:
        self.store, self.report = store, report
        self.pending: list[Row] = []
        self.pending_bytes = 0
        self.index: list[Row] = []
        self.roots: set[str] = set()  # executions whose own record was saved
        self.lost_keys: list[bytes] = []  # keys of records skipped as not records
        self.maps: set[bytes] = set()  # keys of the maps (and parallels) with item records saved
        self.batches: set[bytes] = set()  # keys of the maps' (and parallels') own records saved
        self.saved: Counter[tuple[bytes, bool]] = Counter()  # per (parent key, the execution's own record)
        self.undecodable: Counter[tuple[bytes, bool]] = Counter()
        self.ids: dict[bytes, bool] = {}  # execution ids seen: whether UTF-8

    def sinks(self) -> dict[bytes, Callable[[list[Row]], None]]:
        """What to do with the rows of each database, in the order to read them."""
        return {b"meta": self.meta, b"index": self.index.extend, b"records": self.records}

    def anchors(self, db: bytes) -> list[bytes]:
        """Where to search for readable records when the first ones cannot be read: item 0 of the
        first top-level operations of each execution the index names."""
        if db != b"records":
            return []
        ids = {full.partition(b"\x00")[2] for full, _ in self.index if full.startswith(_EXECUTIONS.encode() + b"\x00")}
        return [op_key(execution_id.decode(errors="replace"), (top, 0)) for execution_id in ids
                for top in range(1, _ANCHOR_OPERATIONS + 1)]

    def meta(self, rows: list[Row]) -> None:
        """The source's meta: refuse a store of a newer format."""
        for key, value in rows:
            if key == b"format" and len(value) == 4 and int.from_bytes(value, "big") > FORMAT_VERSION:
                raise StoreError(f"store {self.report.source}: was written by a newer durablemap (store format "
                                 f"{int.from_bytes(value, 'big')}); salvage it with that version")

    def records(self, rows: list[Row]) -> None:
        """Copy the rows that are records; count the others. Counted by raw parent key, decoded
        once per parent at the end (``count``): this runs once per record of the store. A run of
        item records (see ``_store._runs``) is copied as one record per item."""
        for key, value in _unrun(rows, self.undecodable):
            end = _id_end(key)
            if end is None or not self._valid_id(key[:end]):
                self.report.bad_keys += 1
                continue
            root = end == len(key) - 1
            group = (key if root else key[:-COMPONENT_SIZE], root)
            sub_type = _sub_type(value)
            if sub_type is None:
                self.undecodable[group] += 1
                self.lost_keys.append(key)
                continue
            if root:
                self.roots.add(key[:end].decode())
            elif sub_type in ITEM_SUB_TYPES:
                self.maps.add(group[0])
            if sub_type in BATCH_SUB_TYPES:
                self.batches.add(key)
            self.saved[group] += 1
            self.pending.append((key, value))
            self.pending_bytes += len(value)
        if len(self.pending) >= _WRITE_BATCH or self.pending_bytes >= _WRITE_BYTES:
            self.flush()

    def from_pages(self, nodes: Iterable[tuple[int, bytes, bytes]]) -> None:
        """Records that LMDB could not reach, found in the file's pages (``leaf_nodes``): for each
        record key not saved yet, its best version, copied as the records read through LMDB are. A
        key may be on several pages, since freed pages keep older versions: a finished record wins
        over a started one, a success over a failure, and then the later page."""
        self.flush()
        best: dict[bytes, tuple[int, int, bytes]] = {}
        for page, key, value in _unrun_nodes(nodes):
            rank = _rank(key, value)
            if rank is None:
                continue
            held = best.get(key)
            if held is None and self.store.get(key) is not None:
                continue  # read through LMDB: that version is the one in force
            if held is None or (rank, page) > held[:2]:
                best[key] = (rank, page, value)
        rows = [(key, value) for key, (_, _, value) in sorted(best.items())]
        self.records(rows)
        self.flush()
        self.report.from_pages = len(rows)

    def _valid_id(self, raw: bytes) -> bool:
        valid = self.ids.get(raw)
        if valid is None:
            try:
                raw.decode()
                valid = True
            except UnicodeDecodeError:
                valid = False
            self.ids[raw] = valid
        return valid

    def count(self) -> None:
        """The report's counts, per execution and operation, from the counts per raw parent key."""
        for counts, into in ((self.saved, self.report.saved), (self.undecodable, self.report.undecodable)):
            for (key, root), count in counts.items():
                execution_id, path = decode_key(key)
                into[(execution_id, "(execution)" if root else path_str(path))] += count

    def flush(self) -> None:
        """Write the records kept so far, in one durable transaction."""
        if self.pending:
            self.store.put_many(self.pending)
            self.pending, self.pending_bytes = [], 0

    def finish(self) -> None:
        """Reopen what lost records, and rebuild the executions' index."""
        self.flush()
        self.count()
        suspects, executions = self._losers()
        for key in sorted(suspects):
            self._reopen(key, lambda record: (record.kind == Kind.CONTEXT and record.sub_type in BATCH_SUB_TYPES
                                              and record.payload is None))
        for execution_id in sorted(executions):
            self._reopen(op_key(execution_id, ()), lambda record: True)
        for key in sorted(self.maps):
            if self.store.get(key) is None:
                execution_id, path = decode_key(key)
                self.report.orphaned.append(f"{execution_id}:{path_str(path)}")
        self._rebuild_index()

    def _losers(self) -> tuple[set[bytes], set[str]]:
        """The keys of the saved maps (and parallels) that may have lost descendants, and the
        executions that may have lost records: those with a key in a range LMDB could not read (the
        pages read directly may have given back some or all of it, but nothing says which), or with
        a record skipped as undecodable. A range may span operations and executions: the first key
        of the store to one of the second execution's items, when the roots of the trees are lost."""
        gaps = [gap for gap in self.report.read.gaps if gap.db == "records"]
        suspects = {key for key in self.batches if any(_touches(gap, key) for gap in gaps)}
        executions = {execution_id for execution_id in self.roots
                      if any(_touches(gap, op_key(execution_id, ())) for gap in gaps)}
        for key in self.lost_keys:
            execution_id, path = decode_key(key)
            executions.add(execution_id)
            suspects.update(op_key(execution_id, path[:n]) for n in range(1, len(path)))
        return suspects, executions

    def _reopen(self, key: bytes, needs: Callable[[Record], bool]) -> None:
        """Mark the finished record at ``key`` STARTED when ``needs`` it."""
        raw = self.store.get(key)
        if raw is None:
            return
        record = decode_record(raw)
        if record.finished and needs(record):
            self.store.put(key, encode_record(record._replace(status=Status.STARTED)))
            execution_id, path = decode_key(key)
            self.report.reopened.append(f"{execution_id}:{path_str(path) or '(execution)'}")

    def _rebuild_index(self) -> None:
        """The executions' index from their records; an execution whose own record was lost gets it
        back from its index entry (as STARTED), so that ``ls`` shows it."""
        from_index: dict[str, bytes] = {}
        for full, value in self.index:
            name, sep, key = full.partition(b"\x00")
            if not sep:
                continue
            if name != _EXECUTIONS.encode():
                self.store.index_put(name.decode(errors="replace"), key, value)
                continue
            from_index[key.decode(errors="replace")] = value
        for execution_id, value in from_index.items():
            if execution_id not in self.roots:
                try:
                    record = decode_record(value)
                except StoreError:
                    continue
                self.store.put(op_key(execution_id, ()), encode_record(record._replace(status=Status.STARTED)))
                self.roots.add(execution_id)
        for execution_id in sorted(self.roots):
            record = decode_record(self.store.get(op_key(execution_id, ())) or b"")
            meta = {k: v for k, v in (record.meta or {}).items() if k in _INDEX_META}
            entry = Record(record.kind, record.status, record.name, record.sub_type, None, None, meta)
            self.store.index_put(_EXECUTIONS, execution_id.encode(), encode_record(entry))
        self.report.executions = len(self.roots)


def _unrun(rows: Iterable[Row], undecodable: Counter[tuple[bytes, bool]]) -> Iterator[Row]:
    """``rows`` with each run of item records as one row per item; a run that cannot be read is
    counted as undecodable under its map."""
    for key, value in rows:
        run = parse_run(key)
        if run is None:
            yield key, value
            continue
        map_key, first, count = run
        try:
            records = split_run(value, count, key)
        except StoreError:
            undecodable[(map_key, False)] += count
            continue
        yield from zip(item_keys(map_key, range(first, first + count)), records, strict=True)


def _unrun_nodes(nodes: Iterable[tuple[int, bytes, bytes]]) -> Iterator[tuple[int, bytes, bytes]]:
    """``_unrun`` of the nodes found in pages; a run that cannot be read is left out."""
    for page, key, value in nodes:
        run = parse_run(key)
        if run is None:
            yield page, key, value
            continue
        map_key, first, count = run
        try:
            records = split_run(value, count, key)
        except StoreError:
            continue
        for item_key_, record in zip(item_keys(map_key, range(first, first + count)), records, strict=True):
            yield page, item_key_, record


def _id_end(key: bytes) -> int | None:
    """Where the execution id of the record key ``key`` ends (its NUL), None when ``key`` is not
    laid out as a record key (an id, a NUL, then whole path components)."""
    end = key.find(b"\x00")
    return None if end < 0 or (len(key) - end - 1) % COMPONENT_SIZE else end


def _fields(value: bytes) -> list[Any] | None:
    """The fields of the record ``value`` (3 in the compact form of an item's record, else 7), None
    when it is not a record (what ``decode_record`` would refuse, without building the record)."""
    try:
        fields = decode_raw(value)
    except Exception:
        return None
    return fields if isinstance(fields, list) and len(fields) in (3, 7) else None


def _sub_type(value: bytes) -> str | None:
    """The sub-type of the record ``value`` ("" when it has none), None when it is not a record."""
    fields = _fields(value)
    if fields is None:
        return None
    return _COMPACT_ITEMS.get(fields[0]) if len(fields) == 3 else str(fields[3] or "")


_RANKS = {Status.SUCCEEDED.value: 3, Status.FAILED.value: 2}


def _rank(key: bytes, value: bytes) -> int | None:
    """How final the record ``value`` at ``key``, found in a page, is (3 SUCCEEDED, 2 FAILED, 1 not
    finished); None when the pair is not a record at a record key (a node of another database, an
    execution's record at an operation's key or the reverse, bytes that only look like a node)."""
    end, fields = _id_end(key), _fields(value)
    if end is None or fields is None:
        return None
    try:
        key[:end].decode()
    except UnicodeDecodeError:
        return None
    root = end == len(key) - 1
    if len(fields) == 3:  # the compact form of an item's record: a success
        return None if root or fields[0] not in _COMPACT_ITEMS else 3
    if (fields[0] == Kind.EXECUTION.value) != root:
        return None
    return _RANKS.get(fields[1], 1)


def _touches(gap: Gap, prefix: bytes) -> bool:
    """Whether some key that starts with ``prefix`` (an operation's descendants, or an execution's
    records) may lie in ``gap``: strictly between its bounds."""
    return (gap.before is None or gap.before > prefix) and (
        gap.after is None or gap.after < prefix or gap.after.startswith(prefix))
