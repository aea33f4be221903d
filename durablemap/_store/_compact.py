"""Giving a store's free space back to the file system: LMDB compaction with an atomic swap.

Deleting records frees pages inside ``data.mdb`` for later records, but the file never shrinks.
``compact`` writes a compacted copy, then swaps it in with one ``rename``. That is only safe when
no other process has the environment open: a process that did would keep writing to the old
file, and its writes would be lost. LMDB tells us: every process with the environment open holds
a shared ``fcntl`` lock on byte 0 of ``lock.mdb`` for as long as it is open, and a new opener
blocks on that byte while anyone holds it exclusively. So:

1. copy: from one read snapshot of the environment, write every record into a new environment in
   key order, appending (so its pages are full), and note the snapshot's transaction id;
2. take the exclusive lock on byte 0 with ``F_SETLK`` (never waiting): if that fails, another
   process has the store open, and we refuse; from now on new openers wait for us;
3. check that no transaction was committed since the copy (the last transaction id, read from the
   meta pages of ``data.mdb``), else refuse: the copy would lose it;
4. rename the copy over ``data.mdb``, then open the environment once in this process, which (being
   the only opener) rebuilds ``lock.mdb`` for the new file, and close it: only then may the
   waiting openers in.

POSIX record locks belong to a process, and closing any descriptor of a file drops all of the
process's locks on it, so this must not run in a process that has the store open.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import lmdb

from durablemap._errors import StoreError
from durablemap._store._env import check_directory, is_open_in_process, salvage_command

__all__ = ["CompactResult", "compact", "lock_holders"]

_META_TXNID = struct.Struct("<Q")  # mm_txnid, at byte 144 of each of the two meta pages
_META_MAGIC = 0xBEEFC0DE
_MAX_DBS = 16
_BATCH = 100_000


class CompactResult(NamedTuple):
    """Sizes of ``data.mdb`` before and after compaction, in bytes."""

    before: int
    after: int


def _last_txnid(data_path: str) -> int:
    """The newest committed transaction id of an LMDB data file, read from its two meta pages."""
    with open(data_path, "rb") as fh:
        head = fh.read(4096)
        page_size = struct.unpack_from("<I", head, 40)[0]  # the FREE_DBI's md_pad holds the page size
        fh.seek(page_size)
        second = fh.read(4096)
    ids = []
    for page in (head, second):
        if len(page) < 152 or struct.unpack_from("<I", page, 16)[0] != _META_MAGIC:
            raise StoreError(f"{data_path}: its meta pages are not LMDB's; the store may be damaged: "
                             f"restore it from a copy, or run {salvage_command(os.path.dirname(data_path))}")
        ids.append(_META_TXNID.unpack_from(page, 144)[0])
    return int(max(ids))


def lock_holders(lock_path: str) -> list[int]:
    """Pids holding a lock on ``lock_path`` (from /proc/locks; empty where that is unavailable)."""
    try:
        inode = os.stat(lock_path).st_ino
        with open("/proc/locks") as fh:
            rows = [line.split() for line in fh]
    except OSError:
        return []
    pids = {int(r[4]) for r in rows if len(r) > 5 and r[5].rsplit(":", 1)[-1] == str(inode) and r[4].isdigit()}
    return sorted(pids - {os.getpid()})


def _refusal(path: str, why: str, lock_path: str) -> StoreError:
    pids = lock_holders(lock_path)
    who = f" (pid {', '.join(map(str, pids))})" if pids else ""
    return StoreError(f"store {path}: cannot compact it: {why}{who}. Its records are intact and the freed "
                      "space is reused by new records; compact it later, when no job, worker or other "
                      "durablemap command has it open (`durablemap compact`)")


@contextlib.contextmanager
def _exclusive(lock_path: str, path: str) -> Iterator[int]:
    """Hold the exclusive lock on byte 0 of ``lock.mdb``, or raise the refusal."""
    fd = os.open(lock_path, os.O_RDWR)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError:
            raise _refusal(path, "another process has the store open", lock_path) from None
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _copy(real: str, work: str) -> int:
    """Write every record of the environment at ``real`` into a new one in ``work``, in key order
    with ``MDB_APPEND`` (so its pages are full, where inserts in the middle of the key order leave
    them about 2/3 full), from one snapshot; returns that snapshot's transaction id."""
    src = lmdb.open(real, readonly=True, lock=True, max_dbs=_MAX_DBS, subdir=True)
    try:
        with src.begin() as txn:
            names = [key for key, _ in txn.cursor()]  # the main database lists the named ones
        dbs = [(name, src.open_db(name, create=False)) for name in names]
        dst = lmdb.open(work, map_size=max(src.info()["map_size"], 1 << 30), max_dbs=_MAX_DBS, subdir=True,
                        sync=False, metasync=False, mode=0o600)  # synced once, at the end
        try:
            with src.begin() as txn:
                for name, db in dbs:
                    _copy_db(txn.cursor(db=db), dst, dst.open_db(name, create=True))
                snapshot = int(txn.id())
            dst.sync(True)
        finally:
            dst.close()
        return snapshot
    finally:
        src.close()


def _copy_db(source: Any, dst: Any, db: Any) -> None:
    records = source.iternext() if source.first() else iter(())
    while True:
        with dst.begin(write=True) as txn:  # bounded transactions: one of many GB would not fit
            _, added = txn.cursor(db=db).putmulti(islice(records, _BATCH), append=True)
        if added < _BATCH:
            return


def compact(path: str | os.PathLike[str]) -> CompactResult:
    """Shrink the store's ``data.mdb`` to the pages its records use. Raises ``StoreError`` (and
    changes nothing) when another process has the store open, or when this process does."""
    real = check_directory(Path(path), readonly=True)
    data_path, lock_path = os.path.join(real, "data.mdb"), os.path.join(real, "lock.mdb")
    if is_open_in_process(real):
        raise StoreError(f"store {real}: cannot compact it from a process that has it open; close every "
                         "Store of it first (or run `durablemap compact` from another process)")
    try:
        return _compact(real, data_path, lock_path)
    except (OSError, lmdb.Error) as exc:
        raise StoreError(f"store {real}: compacting it failed ({type(exc).__name__}: {exc}); the store is "
                         "unchanged (the copy is written beside it first: it needs free disk space as large "
                         "as its records)") from exc


def _compact(real: str, data_path: str, lock_path: str) -> CompactResult:
    before = os.path.getsize(data_path)
    with _exclusive(lock_path, real):  # refuse early, before copying, when someone has the store open
        for stale in os.listdir(real):
            if stale.startswith(".compact-"):  # left by a compaction that was killed
                shutil.rmtree(os.path.join(real, stale), ignore_errors=True)
    work = tempfile.mkdtemp(prefix=".compact-", dir=real)
    try:
        copied_txnid = _copy(real, work)
        with _exclusive(lock_path, real):
            if _last_txnid(data_path) != copied_txnid:
                raise _refusal(real, "a process wrote the store while it was being copied", lock_path)
            os.replace(os.path.join(work, "data.mdb"), data_path)
            _fsync_dir(real)
            lmdb.open(real, max_dbs=_MAX_DBS, subdir=True).close()  # the only opener: rebuilds lock.mdb
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return CompactResult(before, os.path.getsize(data_path))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
