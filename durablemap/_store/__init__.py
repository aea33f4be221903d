"""The store: durablemap's records in one LMDB environment in a directory. It knows nothing of maps.

    Store.open(dir) ──> _env.SharedEnv (one per directory and process) ──> lmdb.Environment
        get / put / put_many / put_columns / put_runs / scan / scan_children         records db
        delete_prefix / count_prefix
        index_put / index_get / index_scan / index_delete                            index db
        acquire_lock / release_lock / lock_holder / break_lock                       locks db
    compact(dir)    shrink data.mdb to the pages in use (only when no process has the store open)

Keys (``op_key``) put an execution's records under one prefix, an operation's descendants under
its key, and a map's items in index order (see ``_keys``). Values are opaque bytes: the store never
unpickles anything. Every write is one durable (fsync'd) transaction; readers never block writers.
All failures surface as ``StoreError`` (or ``ExecutionLockedError``), each naming the store path.
"""

from __future__ import annotations

import bisect
import ctypes
import os
import struct
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from itertools import chain, islice
from operator import countOf, itemgetter
from pathlib import Path
from typing import Any, cast

from durablemap._errors import ExecutionLockedError, StoreError
from durablemap._store import _locks
from durablemap._store._compact import CompactResult, compact
from durablemap._store._env import DEFAULT_MAP_SIZE, SharedEnv, acquire_env, release_env, release_mapped_pages
from durablemap._store._keys import (
    COMPONENT_SIZE,
    FORMAT_VERSION,
    MAX_COMPONENT,
    decode_key,
    execution_prefix,
    item_keys,
    op_key,
    parse_path,
    path_str,
)
from durablemap._store._runs import RUN_MAX, expand, parse_run, run_key, split_run

__all__ = [
    "DEFAULT_MAP_SIZE",
    "CompactResult",
    "FORMAT_VERSION",
    "LockHolder",
    "Store",
    "compact",
    "decode_key",
    "execution_prefix",
    "op_key",
    "parse_path",
    "path_str",
    "set_commit_hook",
]

LockHolder = _locks.LockHolder


def _index_key(name: str, key: bytes) -> bytes:
    encoded = name.encode()
    if not encoded or b"\x00" in encoded:
        raise StoreError(f"index name {name!r} must be non-empty and contain no NUL character")
    return encoded + b"\x00" + key


def _lock_key(execution_id: str) -> bytes:
    return execution_prefix(execution_id)  # validates the id the same way record keys do


#: What every committed write of records in this process is reported to, or None (see
#: :func:`set_commit_hook`).
CommitHook = Callable[[list[tuple[bytes, bytes]]], None]
_commit_hook: CommitHook | None = None


def set_commit_hook(hook: CommitHook | None) -> None:
    """Call ``hook(pairs)`` after each durable commit of records by any store of this process, with
    the ``(key, value)`` pairs just committed (None: no hook). For crash injection in tests
    (``durablemap.testing``): the hook may kill the process, once what it saw is on disk."""
    global _commit_hook
    _commit_hook = hook


class _SideTables:
    """The store's small side tables: named indexes (the list of executions) and execution locks.
    A part of :class:`Store`, which provides the transactions."""

    @property
    def path(self) -> str:
        raise NotImplementedError

    def _transact(self, operation: str, work: Any, *, write: bool) -> Any:
        raise NotImplementedError

    def _db(self, name: bytes) -> Any:
        raise NotImplementedError

    # -- small side tables -----------------------------------------------------------------------

    def index_put(self, name: str, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value`` in side table ``name`` (durably)."""
        full, db = _index_key(name, key), self._db(b"index")
        self._transact("index_put", lambda txn: txn.put(full, value, db=db), write=True)

    def index_get(self, name: str, key: bytes) -> bytes | None:
        """The value of ``key`` in side table ``name``, or None."""
        full, db = _index_key(name, key), self._db(b"index")
        return cast(bytes | None, self._transact("index_get", lambda txn: txn.get(full, db=db), write=False))

    def index_scan(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` of side table ``name``, in key order (read at once: tables are small)."""
        prefix, db = _index_key(name, b""), self._db(b"index")

        def work(txn: Any) -> list[tuple[bytes, bytes]]:
            cursor = txn.cursor(db=db)
            rows: list[tuple[bytes, bytes]] = []
            if cursor.set_range(prefix):
                for key, value in cursor.iternext():
                    if not key.startswith(prefix):
                        break
                    rows.append((key[len(prefix) :], value))
            return rows

        return iter(cast(list[tuple[bytes, bytes]], self._transact("index_scan", work, write=False)))

    def index_delete(self, name: str, key: bytes) -> bool:
        """Remove ``key`` from side table ``name``; returns whether it was there."""
        full, db = _index_key(name, key), self._db(b"index")
        return cast(bool, self._transact("index_delete", lambda txn: txn.delete(full, db=db), write=True))

    # -- execution locks -------------------------------------------------------------------------

    def acquire_lock(self, execution_id: str) -> None:
        """Lock ``execution_id`` for this process, taking over a lock left by a dead process.

        Raises ``ExecutionLockedError`` when another live process holds it. Re-acquiring a lock this
        process holds succeeds.
        """
        key, db, me = _lock_key(execution_id), self._db(b"locks"), _locks.current_process()

        def work(txn: Any) -> None:
            raw = txn.get(key, db=db)
            holder = _locks.decode_lock(raw) if raw is not None else None
            if holder is not None and not _locks.is_same_process(holder, me) and _locks.is_alive(holder):
                raise ExecutionLockedError(_locked_message(execution_id, holder, self.path))
            txn.put(key, _locks.encode_lock(me), db=db)

        self._transact("acquire_lock", work, write=True)

    def release_lock(self, execution_id: str) -> None:
        """Release this process's lock on ``execution_id``; a lock held by another process is left alone."""
        key, db, me = _lock_key(execution_id), self._db(b"locks"), _locks.current_process()

        def work(txn: Any) -> None:
            raw = txn.get(key, db=db)
            holder = _locks.decode_lock(raw) if raw is not None else None
            if holder is not None and _locks.is_same_process(holder, me):
                txn.delete(key, db=db)

        self._transact("release_lock", work, write=True)

    def break_lock(self, execution_id: str) -> bool:
        """Remove the lock on ``execution_id`` whoever holds it (for a holder on another host that is
        known to be gone); returns whether there was one."""
        key, db = _lock_key(execution_id), self._db(b"locks")
        return cast(bool, self._transact("break_lock", lambda txn: txn.delete(key, db=db), write=True))

    def lock_holder(self, execution_id: str) -> dict[str, Any] | None:
        """The recorded holder of the lock on ``execution_id`` (``pid``, ``create_time``, ``hostname``),
        or None. The holder may have died; ``acquire_lock`` decides that."""
        key, db = _lock_key(execution_id), self._db(b"locks")
        raw = self._transact("lock_holder", lambda txn: txn.get(key, db=db), write=False)
        holder = _locks.decode_lock(raw) if raw is not None else None
        return dict(holder) if holder is not None else None

    def release_pages(self) -> int:
        """Drop this process's mapping of the store's pages read so far (see
        ``_env.release_mapped_pages``): a reader streaming a large map calls it now and then."""
        return release_mapped_pages(self.path)

    def lock_is_held(self, execution_id: str) -> bool:
        """Whether a live process holds the lock on ``execution_id`` (the same check as
        ``acquire_lock``'s; a holder on another host counts as live)."""
        key, db = _lock_key(execution_id), self._db(b"locks")
        raw = self._transact("lock_is_held", lambda txn: txn.get(key, db=db), write=False)
        holder = _locks.decode_lock(raw) if raw is not None else None
        return holder is not None and _locks.is_alive(holder)


class Store(_SideTables):
    """One durablemap store: an LMDB environment in a directory, shared by many executions.

    Thread-safe. Use ``Store.open`` (or ``Store.for_process`` in workers), not the constructor.
    """

    def __init__(self, shared: SharedEnv, *, readonly: bool) -> None:
        self._shared: SharedEnv | None = shared
        self._readonly = readonly

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, readonly: bool = False, map_size: int = DEFAULT_MAP_SIZE
    ) -> Store:
        """Open the store in directory ``path``, creating it (mode 0o700) unless ``readonly``.

        ``map_size`` is the initial address space reserved for the map (it grows on demand; tests
        pass a tiny one). Raises ``StoreError`` when the path is a file, a directory that is not a
        durablemap store, a store of a newer format, or cannot be created, opened or written.
        """
        shared = acquire_env(Path(path), readonly=readonly, map_size=map_size)
        return cls(shared, readonly=readonly)

    @classmethod
    def for_process(cls, path: str | os.PathLike[str]) -> Store:
        """The calling process's writable store for ``path``, opened once and kept open (and
        opened again when its files were deleted or replaced since, see ``SharedEnv.gone``).

        Keyed by real path and pid, so a forked child opens its own environment instead of using
        its parent's handle (which LMDB forbids).
        """
        key = (os.path.realpath(path), os.getpid())
        with _process_stores_lock:
            store = _process_stores.get(key)
            if store is not None and not store.closed and store._env().gone:
                store.close()  # its files were deleted or replaced: open the store there now
            if store is None or store.closed:
                store = _process_stores[key] = cls.open(path)
            return store

    @property
    def path(self) -> str:
        """The real path of the store directory."""
        return self._env().path

    @property
    def closed(self) -> bool:
        """Whether ``close`` has been called."""
        return self._shared is None

    def close(self) -> None:
        """Release this handle; the environment closes when the process's last handle does."""
        shared, self._shared = self._shared, None
        if shared is not None:
            release_env(shared)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._shared is None else self._shared.path
        return f"<Store {state}{' readonly' if self._readonly else ''}>"

    def _env(self) -> SharedEnv:
        if self._shared is None:
            raise StoreError("the store has been closed; open it again with Store.open(path)")
        return self._shared

    def _transact(self, operation: str, work: Any, *, write: bool) -> Any:
        shared = self._env()
        if write and self._readonly:
            raise StoreError(f"store {shared.path}: {operation} needs write access, but this Store was "
                             "opened read-only; open it with readonly=False")
        return shared.transact(operation, work, write=write)

    def _db(self, name: bytes) -> Any:
        return self._env().dbs[name]

    def stat(self) -> dict[str, Any]:
        """Sizes: ``map_size`` (reserved address space), ``used_bytes`` (pages in use), ``records``."""
        shared = self._env()
        records = self._db(b"records")
        # Read inside a transaction, so a concurrent resize cannot swap the map under env.info().
        entries, info, stat = self._transact(
            "stat", lambda txn: (txn.stat(records)["entries"], shared.env.info(), shared.env.stat()), write=False
        )
        return {
            "path": shared.path,
            "format_version": FORMAT_VERSION,
            "map_size": info["map_size"],
            "used_bytes": (info["last_pgno"] + 1) * stat["psize"],
            "page_size": stat["psize"],
            "records": entries,
            "readers": info["num_readers"],
        }

    # -- records ---------------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The record stored under ``key``, or None."""
        db = self._db(b"records")
        return cast(bytes | None, self._transact("get", lambda txn: txn.get(key, db=db), write=False))

    def put(self, key: bytes, value: bytes) -> None:
        """Store one record in its own durable transaction."""
        db = self._db(b"records")
        self._transact("put", lambda txn: txn.put(key, value, db=db), write=True)
        if _commit_hook is not None:
            _commit_hook([(key, value)])

    def put_many(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        """Store many records in one durable transaction (the group commit of a map's items)."""
        # A list, because a transaction retried after a resize must write the same pairs again.
        items = pairs if isinstance(pairs, list) else list(pairs)
        db = self._db(b"records")
        self._transact("put_many", lambda txn: txn.cursor(db=db).putmulti(items), write=True)
        if _commit_hook is not None:
            _commit_hook(items)

    def put_columns(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Store ``values[i]`` under ``keys[i]`` in one durable transaction: ``put_many`` without
        building a pair per record (the coordinator's group commit)."""
        if len(keys) != len(values):  # checked before writing, so a mismatch writes nothing
            raise StoreError(f"store {self.path}: put_columns got {len(keys)} keys but {len(values)} values; "
                             "pass one value per key")
        db = self._db(b"records")
        # zip inside the work function: a transaction retried after a resize needs a fresh one.
        self._transact("put_columns", lambda txn: txn.cursor(db=db).putmulti(zip(keys, values, strict=True)),
                       write=True)
        if _commit_hook is not None:
            _commit_hook(list(zip(keys, values, strict=True)))

    def put_runs(self, map_key: bytes, runs: Sequence[tuple[int, int, bytes]], keys: Sequence[bytes],
                 values: Sequence[bytes]) -> None:
        """Store ``runs``, each ``(first index, count, records)``: the records of ``count`` items of
        the map ``map_key`` from ``first`` on, concatenated (see ``_runs``), and ``values[i]`` under
        ``keys[i]``, in one durable transaction. A run whose items (or anything under them) already
        have records, or that another run covers, is written as one record per item instead."""
        if len(keys) != len(values):
            raise StoreError(f"store {self.path}: put_runs got {len(keys)} keys but {len(values)} values; "
                             "pass one value per key")
        for first, count, _ in runs:
            if not 0 < count <= RUN_MAX:
                raise StoreError(f"store {self.path}: a run of {count} items (from item {first}); runs hold "
                                 f"1 to {RUN_MAX} items")
        db = self._db(b"records")

        def work(txn: Any) -> list[tuple[bytes, bytes]]:
            cursor = txn.cursor(db=db)
            pairs: list[tuple[bytes, bytes]] = []
            for first, count, data in runs:
                first_key = map_key + first.to_bytes(COMPONENT_SIZE, "big")
                if _free_for_run(cursor, map_key, first, count):
                    pairs.append((run_key(first_key, count), data))
                else:
                    records = split_run(data, count, first_key)
                    pairs.extend(zip(item_keys(map_key, range(first, first + count)), records, strict=True))
            pairs.extend(zip(keys, values, strict=True))
            cursor.putmulti(pairs)
            return pairs

        written = self._transact("put_runs", work, write=True)
        if _commit_hook is not None:
            _commit_hook(list(expand(sorted(written))))

    def scan(self, prefix: bytes) -> Generator[tuple[bytes, bytes], None, None]:
        """Every record whose key starts with ``prefix``, in key order, from one consistent snapshot
        (a run's items each as its own record: see ``_runs``).

        Keys and values are fresh ``bytes``. The read transaction stays open until the iterator is
        exhausted or closed: finish (or ``close()``) it before writing from the same thread, since a
        write that must grow the map cannot do so under an open transaction.
        """
        shared, db = self._env(), self._db(b"records")
        with shared.read_txn("scan") as txn:
            cursor = txn.cursor(db=db)
            if not cursor.set_range(prefix):
                return
            yield from expand(_while_prefixed(cursor.iternext(), prefix))

    def scan_children(self, prefix_key: bytes) -> Generator[tuple[int, bytes, bytes], None, None]:
        """The direct children of ``prefix_key`` as ``(index, key, value)``, in index order. Same
        transaction lifetime as ``scan``."""
        base = len(prefix_key)
        child_len = base + COMPONENT_SIZE
        for key, value in self.scan(prefix_key):
            if len(key) == child_len:
                yield int.from_bytes(key[base:], "big"), key, value

    def children_columns(self, prefix_key: bytes, start: int = 0,
                         limit: int | None = None) -> tuple[list[int], list[bytes]]:
        """The direct children of ``prefix_key`` from index ``start`` on, at most ``limit`` of them
        (None: all): their indexes and their values, in index order, in one pass: the same records
        as ``scan_children``, read a page at a time for a map's replay. Runs of keys that are all
        direct children (a map of items without operations inside) are taken thousands at a time
        with no Python code per record."""
        base = len(prefix_key)
        child_len = base + COMPONENT_SIZE
        index_of = struct.Struct(f">{base}xI").unpack_from
        indexes: list[int] = []
        values: list[bytes] = []
        wanted = limit if limit is not None else MAX_COMPONENT + 1
        with self._env().read_txn("children_columns") as txn:
            cursor = txn.cursor(db=self._db(b"records"))
            seek = prefix_key + start.to_bytes(COMPONENT_SIZE, "big") if start else prefix_key
            found = cursor.set_range(seek)
            if start and _back_to_run(cursor, prefix_key, start, found):
                found = True  # the cursor is on a run that holds item ``start``
            elif not found:
                return indexes, values
            if cursor.key() == prefix_key and not cursor.next():
                return indexes, values
            pairs = cursor.iternext()
            size = _FIRST_BATCH  # keys read at once (see _FIRST_BATCH)
            while len(indexes) < wanted and (batch := list(islice(pairs, min(size, wanted - len(indexes))))):
                keys = list(map(itemgetter(0), batch))
                # Keys between two keys with the prefix have it too: the last one tells for all.
                if keys[-1].startswith(prefix_key) and countOf(map(len, keys), child_len) == len(keys):
                    indexes.extend(map(itemgetter(0), map(index_of, keys)))
                    values.extend(map(itemgetter(1), batch))
                    size = min(size * 8, 4096)
                    continue
                # Runs, or operations inside items: each record on its own from here on.
                for key, value in expand(_while_prefixed(chain(batch, pairs), prefix_key)):
                    if len(key) == child_len:  # longer keys: operations inside an item
                        index = index_of(key)[0]
                        # (a run's item whose own record, newer, was taken in a batch above: skipped)
                        if index >= start and (not indexes or index > indexes[-1]):
                            indexes.append(index)
                            values.append(value)
                            if len(indexes) >= wanted:
                                break
                break
        return indexes, values

    def children_data(self, prefix_key: bytes, start: int = 0, limit: int | None = None) -> tuple[list[int], bytes]:
        """``children_columns`` with the values joined: the records of the direct children of
        ``prefix_key`` from index ``start`` on (at most ``limit``), concatenated, and their indexes.
        A run's records are taken as they are stored, already concatenated (the replay of a map of
        tiny items: no Python code per record)."""
        wanted = limit if limit is not None else MAX_COMPONENT + 1
        with self._env().read_txn("children_data") as txn:
            cursor = txn.cursor(db=self._db(b"records"))
            taken = _Taken(prefix_key, start, wanted)
            seek = prefix_key + start.to_bytes(COMPONENT_SIZE, "big") if start else prefix_key
            found = cursor.set_range(seek)
            if start and _back_to_run(cursor, prefix_key, start, found):
                found = True
            if found and (cursor.key() != prefix_key or cursor.next()):
                taken.read(cursor.iternext())
        if taken.restart is not None:
            # One record at a time from ``restart`` on, after what was taken before it.
            cut = taken.cut(taken.restart)
            more, values = self.children_columns(prefix_key, taken.restart, wanted - cut)
            taken.indexes.extend(more)
            taken.pieces.extend(values)
        return taken.indexes, b"".join(taken.pieces)

    def release_read_pages(self) -> None:
        """Unmap the pages of the store file that this process has read (Linux; elsewhere nothing).

        LMDB reads through a memory map, so reading a large map's records counts the whole file in
        this process's RSS, although those pages are the OS page cache's and reclaimable. Dropping
        them from this process's page tables (``madvise(MADV_DONTNEED)`` on a shared file mapping)
        loses nothing: the next read faults them in again from the page cache. Done under a read
        transaction, so the map cannot be moved by a resize meanwhile."""
        if _libc is None:
            return
        shared = self._env()
        data = os.path.join(shared.path, "data.mdb")
        with shared.read_txn("release_read_pages"):
            for start, stop in _file_mappings(data):
                _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), _MADV_DONTNEED)

    def delete_prefix(self, prefix: bytes) -> int:
        """Delete every record whose key starts with ``prefix`` in one transaction; returns how many."""
        db = self._db(b"records")

        def work(txn: Any) -> int:
            cursor = txn.cursor(db=db)
            deleted = 0
            if cursor.set_range(prefix):
                # delete() moves to the next record, and returns False once the cursor ran off the end.
                while cursor.key().startswith(prefix) and cursor.delete():
                    deleted += 1
            return deleted

        return cast(int, self._transact("delete_prefix", work, write=True))

    def count_prefix(self, prefix: bytes) -> int:
        """How many records have keys starting with ``prefix`` (a run's items counted one by one)."""
        return sum(1 for _ in self.scan(prefix))


_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class _Taken:
    """What ``Store.children_data`` takes from the cursor: indexes, and pieces of records (a record,
    a run's records, or a batch of records) with where each piece starts in the indexes."""

    def __init__(self, prefix_key: bytes, start: int, wanted: int) -> None:
        self.prefix_key, self.start, self.wanted = prefix_key, start, wanted
        self.indexes: list[int] = []
        self.pieces: list[bytes] = []
        self.firsts: list[int] = []
        self.last_run = (-1, 0)  # the first index and the end of the last run taken
        #: Where to read on one record at a time: an item's own record inside a run taken (it wins
        #: over the run's), or a run of which only a part is wanted.
        self.restart: int | None = None

    def read(self, pairs: Iterator[tuple[bytes, bytes]]) -> None:
        prefix_key, indexes = self.prefix_key, self.indexes
        child_len = len(prefix_key) + COMPONENT_SIZE
        index_of = struct.Struct(f">{len(prefix_key)}xI").unpack_from
        size = _FIRST_BATCH
        while self.restart is None and len(indexes) < self.wanted:
            batch = list(islice(pairs, min(size, self.wanted - len(indexes))))
            if not batch:
                return
            keys = list(map(itemgetter(0), batch))
            if (keys[-1].startswith(prefix_key) and countOf(map(len, keys), child_len) == len(keys)
                    and index_of(keys[0])[0] >= self.last_run[1]):
                self.firsts.append(len(indexes))
                indexes.extend(map(itemgetter(0), map(index_of, keys)))
                self.pieces.append(b"".join(map(itemgetter(1), batch)))
                size = min(size * 8, 4096)
                continue
            size = _FIRST_BATCH
            rest = iter(batch)
            for key, value in rest:
                if not key.startswith(prefix_key):
                    return
                if len(key) == child_len:
                    self.item(index_of(key)[0], value)
                elif (run := parse_run(key)) is not None and run[0] == prefix_key:
                    self.run(run[1], run[2], value)
                if self.restart is not None:
                    return
                if len(indexes) >= self.wanted:
                    self.overridden(chain(rest, pairs))
                    return

    def overridden(self, pairs: Iterator[tuple[bytes, bytes]]) -> None:
        """The page is full: look on past its last run for an item's own record inside it (written
        after the run, it wins over the run's; the keys of a run's items come after the run's)."""
        end = min(self.last_run[1], self.indexes[-1] + 1)
        base = len(self.prefix_key)
        for key, _ in pairs:
            if not key.startswith(self.prefix_key) or int.from_bytes(key[base:base + COMPONENT_SIZE], "big") >= end:
                return
            if len(key) == base + COMPONENT_SIZE:
                self.restart = self.last_run[0]
                return

    def item(self, index: int, value: bytes) -> None:
        if index < self.last_run[1]:  # an item's own record inside the last run taken: it wins
            self.restart = self.last_run[0]
            return
        self.firsts.append(len(self.indexes))
        self.indexes.append(index)
        self.pieces.append(value)

    def run(self, first: int, count: int, value: bytes) -> None:
        indexes = self.indexes
        skip = max(0, self.start - first)  # a page that starts inside the run
        if indexes and indexes[-1] >= first + skip:  # its first item's own record, written after it, wins
            skip = indexes[-1] - first + 1
        take = max(0, min(count - skip, self.wanted - len(indexes)))  # a page that ends inside it
        self.firsts.append(len(indexes))
        indexes.extend(range(first + skip, first + skip + take))
        self.pieces.append(value if take == count else b"".join(split_run(value, count)[skip:skip + take]))
        self.last_run = (first + skip, first + count)

    def cut(self, index: int) -> int:
        """Drop what was taken from ``index`` on; how many indexes are left."""
        cut = bisect.bisect_left(self.indexes, index)
        while self.firsts and self.firsts[-1] >= cut:
            self.firsts.pop()
            self.pieces.pop()
        del self.indexes[cut:]
        return cut


#: Keys read at once at first, growing while each is one record: a key may be a run of thousands
#: of records, and a page of items wants only so many (4,096 runs would be 128 MiB of values).
_FIRST_BATCH = 8


def _while_prefixed(pairs: Iterator[tuple[bytes, bytes]], prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
    for pair in pairs:
        if not pair[0].startswith(prefix):
            return
        yield pair


def _free_for_run(cursor: Any, map_key: bytes, first: int, count: int) -> bool:
    """Whether no record lies where a run of items ``first`` to ``first + count - 1`` of map
    ``map_key`` would be (their keys, anything under them, another run over any of them)."""
    end_key = map_key + (first + count).to_bytes(COMPONENT_SIZE, "big")
    found = cursor.set_range(map_key + first.to_bytes(COMPONENT_SIZE, "big"))
    if found and cursor.key() < end_key:
        return False
    return not _back_to_run(cursor, map_key, first, found)


def _back_to_run(cursor: Any, map_key: bytes, index: int, found: bool) -> bool:
    """From the cursor's place (the first key at or after item ``index``'s; ``found``: whether
    there is one), look back for a run of map ``map_key`` that holds item ``index``: True with the
    cursor on it, else False with the cursor back where it was. A run holds at most ``RUN_MAX``
    items, so the look stops at items ``RUN_MAX`` or more before ``index``."""
    home = cursor.key() if found else None
    base = len(map_key)
    moved = cursor.prev() if found else cursor.last()
    while moved:
        key = cursor.key()
        if not key.startswith(map_key) or len(key) < base + COMPONENT_SIZE:
            break
        run = parse_run(key)
        if run is not None and run[0] == map_key:
            if run[1] <= index < run[1] + run[2]:
                return True
            break  # runs do not overlap: an earlier one ends before this one
        if int.from_bytes(key[base:base + COMPONENT_SIZE], "big") + RUN_MAX <= index:
            break
        moved = cursor.prev()
    if home is not None:
        cursor.set_key(home)
    return False


def _file_mappings(path: str) -> list[tuple[int, int]]:
    """The address ranges at which this process maps the file ``path`` (from /proc/self/maps)."""
    ranges = []
    suffix = " " + path
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            if line.rstrip("\n").endswith(suffix):
                start, _, stop = line.partition(" ")[0].partition("-")
                ranges.append((int(start, 16), int(stop, 16)))
    return ranges


def _locked_message(execution_id: str, holder: _locks.LockHolder, path: str) -> str:
    pid, host = holder["pid"], holder["hostname"]
    if host != _locks.current_process()["hostname"]:
        return (f"execution {execution_id!r} in store {path} is locked by pid {pid} on host {host!r}, "
                "which this machine cannot check; wait for it to finish, or if that process is gone, "
                f"remove the lock with Store.break_lock({execution_id!r})")
    return (f"execution {execution_id!r} in store {path} is being run by another live process (pid {pid}); "
            f"wait for it to finish, or stop it (kill {pid}) and run again to resume")


_process_stores: dict[tuple[str, int], Store] = {}
_process_stores_lock = threading.Lock()
