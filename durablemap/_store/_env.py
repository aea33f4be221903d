"""The LMDB environment behind a store directory: opening, transactions, growth, errors.

One directory holds one LMDB environment with four named databases:

    meta     b"magic" -> MAGIC, b"format" -> FORMAT_VERSION (4 bytes, big-endian)
    records  operation records, keyed by ``_keys.op_key``
    locks    execution id -> JSON lock record (``_locks``)
    index    name + b"\\x00" + key -> value: small side tables for the layers above

Every operation is one transaction run by ``_SharedEnv.transact``, which also handles the two
errors every process sharing the map must expect (DESIGN.md, "Facts measured"):

    MapFullError     this process filled the map   -> double it (set_mapsize), run again
    MapResizedError  another process grew the map  -> adopt its size (set_mapsize(0)), run again

``set_mapsize`` remaps the file, so it must never run while any thread of this process has a
transaction open (their pages would be unmapped under them). ``_Gate`` counts open transactions
and lets a resize wait for zero.

LMDB forbids opening one environment twice in one process (closing either handle drops the
process's file locks on it), so every ``Store`` of a directory in a process shares one
``SharedEnv``, reference counted. The registry is keyed by pid too, so a forked child never uses
its parent's handle; it cannot open the store either (see ``_refuse_if_inherited``).
"""

from __future__ import annotations

import os
import shlex
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import lmdb

from durablemap._errors import StoreError
from durablemap._store._keys import FORMAT_VERSION, MAX_KEY_SIZE

__all__ = ["DEFAULT_MAP_SIZE", "FORMAT_VERSION", "MAGIC", "SharedEnv", "acquire_env", "check_data_file",
           "check_directory", "damaged", "is_open_in_process", "read_header", "salvage_command", "Header"]

T = TypeVar("T")

DEFAULT_MAP_SIZE = 64 << 30  # address space only: the file grows with the data, not with this
MAGIC = b"durablemap-store"
_DB_NAMES = (b"meta", b"records", b"locks", b"index")
_LMDB_FILES = ("data.mdb", "lock.mdb")
_MAX_READERS = 2048  # a reader slot per open read transaction, across every worker process
_MAX_ATTEMPTS = 64  # resizes one operation may need; doubling from 4 KiB passes 2**64 bytes sooner
_RESIZE_WAIT_SECONDS = 60.0


class _Gate:
    """Counts this process's open transactions so a map resize never unmaps pages under one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False
        self._local = threading.local()

    def _depth(self) -> int:
        return int(getattr(self._local, "depth", 0))

    @contextmanager
    def open(self) -> Iterator[None]:
        """Held for the life of one transaction."""
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
        self._local.depth = self._depth() + 1
        try:
            yield
        finally:
            self._local.depth = self._depth() - 1
            with self._cond:
                self._active -= 1
                if self._active == 0:
                    self._cond.notify_all()

    def exclusive(self, action: Callable[[], None], describe: str) -> None:
        """Run ``action`` once no transaction of this process is open."""
        if self._depth():
            # Waiting would deadlock on our own transaction, typically an unfinished scan iterator.
            raise StoreError(
                f"{describe}: the store's map must be resized, but this thread still has a transaction "
                "open (an unfinished scan); finish or close the scan iterator before writing"
            )
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            try:
                if not self._cond.wait_for(lambda: self._active == 0, timeout=_RESIZE_WAIT_SECONDS):
                    raise StoreError(
                        f"{describe}: the store's map must be resized, but another thread has kept a "
                        f"transaction open for {_RESIZE_WAIT_SECONDS:.0f} s (an unfinished scan?); "
                        "close scan iterators when done with them"
                    )
                action()
            finally:
                self._resizing = False
                self._cond.notify_all()


def _fix_for(exc: lmdb.Error) -> str:
    text = str(exc).lower()
    if isinstance(exc, lmdb.DiskError) or "no space" in text or "input/output" in text:
        # LMDB reports a write that hit a full disk as EIO from mdb_txn_commit (seen on tmpfs).
        return "the disk is full or failing: free disk space (or move the store), check the disk, and run again"
    if isinstance(exc, lmdb.ReadonlyError) or "read-only" in text or "permission" in text:
        return "make the store directory writable by this user, or choose another store"
    if isinstance(exc, lmdb.BadValsizeError):
        return f"record keys must be 1 to {MAX_KEY_SIZE} bytes: use a shorter execution id or less nesting"
    if isinstance(exc, lmdb.ReadersFullError):
        return "too many processes or open scans read the store at once; close some and run again"
    return "check the disk and the store directory, then run again"


_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError)


class SharedEnv:
    """One open LMDB environment, shared by every ``Store`` of its directory in this process."""

    def __init__(self, path: str, env: Any, readonly: bool) -> None:
        self.path = path
        self.env = env
        self.readonly = readonly
        self.refs = 0
        self.gate = _Gate()
        self.dbs: dict[bytes, Any] = {}
        #: The device and inode of the data.mdb opened (see ``gone``).
        self.identity = data_file_identity(path)

    @property
    def gone(self) -> bool:
        """Whether the store's data.mdb was removed or replaced since this environment opened it
        (the directory deleted and made again, say): what this environment writes then goes to a
        file no other process will read, and it reads records the store no longer holds."""
        return data_file_identity(self.path) != self.identity

    def error(self, operation: str, exc: BaseException) -> StoreError:
        """A StoreError naming the store, the failed operation, the cause and the fix."""
        if isinstance(exc, _DAMAGE):
            return damaged(self.path, f"{operation} failed: {exc}")
        fix = _fix_for(exc) if isinstance(exc, lmdb.Error) else "check the store directory"
        return StoreError(
            f"store {self.path}: {operation} failed: {exc}. Earlier commits are intact and nothing of "
            f"this operation was written; {fix}"
        )

    def resize(self, operation: str, *, grow: bool) -> None:
        """Double the map (``grow``) or adopt the size another process set."""

        def action() -> None:
            try:
                self.env.set_mapsize(self.env.info()["map_size"] * 2 if grow else 0)
            except lmdb.Error as exc:
                raise self.error(f"{operation} (resizing the map)", exc) from exc

        self.gate.exclusive(action, f"store {self.path}: {operation}")

    def transact(self, operation: str, work: Callable[[Any], T], *, write: bool) -> T:
        """Run ``work(txn)`` in one transaction, committed (durably) if ``write``; retried after resizes."""
        if write and self.readonly:
            raise StoreError(f"store {self.path}: {operation} needs write access, but it was opened "
                             "read-only; open it with readonly=False")
        for _ in range(_MAX_ATTEMPTS):
            try:
                with self.gate.open(), self.env.begin(write=write) as txn:
                    return work(txn)
            except lmdb.MapResizedError:
                self.resize(operation, grow=False)
            except lmdb.MapFullError:
                self.resize(operation, grow=True)
            except lmdb.Error as exc:
                raise self.error(operation, exc) from exc
        raise StoreError(f"store {self.path}: {operation} failed: the map was resized {_MAX_ATTEMPTS} "
                         "times and the operation still does not fit; check the disk and the record sizes")

    @contextmanager
    def read_txn(self, operation: str) -> Iterator[Any]:
        """A read transaction held open across a generator's yields (for scans)."""
        for _ in range(_MAX_ATTEMPTS):
            with self.gate.open():
                try:
                    txn = self.env.begin(write=False)
                except lmdb.MapResizedError:
                    txn = None
                except lmdb.Error as exc:
                    raise self.error(operation, exc) from exc
                if txn is not None:
                    try:
                        yield txn
                    except lmdb.Error as exc:
                        raise self.error(operation, exc) from exc
                    finally:
                        txn.abort()
                    return
            # Adopting another process's map size needs the gate to ourselves: outside the with.
            self.resize(operation, grow=False)
        raise StoreError(f"store {self.path}: {operation} failed: the map kept being resized; run again")


def salvage_command(path: str) -> str:
    """The command that salvages the store at ``path`` into a new store beside it, quoted for a shell."""
    return f"`durablemap salvage {shlex.quote(path)} {shlex.quote(path.rstrip(os.sep) + '-salvaged')}`"


def damaged(path: str, what: str) -> StoreError:
    """The StoreError of a damaged store: where, what is wrong, and what to do."""
    return StoreError(
        f"store {path}: is damaged: {what}. Its records cannot be trusted or read in full. Restore the "
        "store directory from a copy (a backup, or a copy of the whole directory taken while no job "
        f"ran); or run {salvage_command(path)}, which copies every record it can still read into a new "
        "store and reports what was lost, and run the job on the new store (it re-runs only what was "
        "lost); or move it aside and run again to start afresh"
    )


# LMDB's two meta pages (pages 0 and 1) on 64-bit builds: after a 16-byte page header, the magic and
# format version, then the page size (the free-list database's md_pad), the last page in use and the
# transaction id. The meta with the higher transaction id is the one in force.
_META = struct.Struct("<II")
_META_PSIZE, _META_LAST_PAGE = 16 + 24, 16 + 120
_LMDB_MAGIC, _LMDB_VERSION = 0xBEEFC0DE, 1
_DEFAULT_PAGE = 4096


class Header(NamedTuple):
    """What LMDB's two header (meta) pages of a data.mdb say: see :func:`read_header`."""

    page_size: int
    #: ``(txnid, last page)`` of meta pages 0 and 1; None for a page that is not an LMDB meta page.
    metas: list[tuple[int, int] | None]
    #: The file's size in bytes.
    size: int

    @property
    def newest(self) -> tuple[int, int] | None:
        """``(txnid, last page)`` of the valid meta page in force (the higher txnid), or None."""
        valid = [meta for meta in self.metas if meta is not None]
        return max(valid) if valid else None

    @property
    def needed(self) -> int:
        """The bytes the commit in force uses (0 when no meta page is valid)."""
        newest = self.newest
        return (newest[1] + 1) * self.page_size if newest is not None else 0


def read_header(path: str) -> Header | None:
    """LMDB's header pages of ``path``/data.mdb, read with plain file reads (never mapped); None for
    a missing file or one that is all zeros (a store being created). An unreadable file raises
    StoreError."""
    file = os.path.join(path, "data.mdb")
    try:
        with open(file, "rb") as fh:
            head = fh.read(2 * _DEFAULT_PAGE)
            psize = int.from_bytes(head[_META_PSIZE:_META_PSIZE + 4], "little")
            if not (_DEFAULT_PAGE <= psize <= 1 << 16 and psize & (psize - 1) == 0):
                psize = _DEFAULT_PAGE  # the page size as stored, or the usual one if that is damaged
            if psize > _DEFAULT_PAGE:
                fh.seek(psize)
                head = head[:psize] + fh.read(psize)
            size = os.fstat(fh.fileno()).st_size  # after the metas: the file only grows before them
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"store {path}: cannot read data.mdb ({exc.strerror or exc}); make the store "
                         "readable by this user") from exc
    if not head.strip(b"\x00"):
        return None  # created, not yet initialised
    return Header(psize, [_read_meta(head, offset) for offset in (0, psize)], size)


def check_data_file(path: str) -> None:
    """Refuse a data.mdb that LMDB would read past the end of (a truncated file: LMDB maps it, and
    touching a page beyond the end kills the process with SIGBUS) or whose meta pages are damaged.
    A missing or empty file is a store being created, and passes."""
    header = read_header(path)
    if header is None:
        return
    if header.newest is None:
        raise StoreError(f"store {path}: data.mdb is not an LMDB file, or both its header pages are "
                         "damaged. If this directory held a durablemap store, it is damaged: restore it "
                         f"from a copy, or try {salvage_command(path)} (it reads what it can); otherwise "
                         "choose another directory")
    if None in header.metas:
        raise damaged(path, f"data.mdb's header page {header.metas.index(None)} (of 2) is overwritten")
    if header.size < header.needed:
        raise damaged(path, f"data.mdb is {header.size} bytes but its last commit uses {header.needed}: the "
                            "file was cut short (an interrupted copy, a full disk)")


def _read_meta(head: bytes, offset: int) -> tuple[int, int] | None:
    """``(txnid, last page)`` of the meta page at ``offset``, None when it is not one."""
    if len(head) < offset + _META_LAST_PAGE + 16:
        return None
    magic, version = _META.unpack_from(head, offset + 16)
    if magic != _LMDB_MAGIC or version != _LMDB_VERSION:
        return None
    last_page, txnid = struct.unpack_from("<QQ", head, offset + _META_LAST_PAGE)
    return txnid, last_page


def check_directory(path: Path, *, readonly: bool) -> str:
    """Validate (and create, unless ``readonly``) a store directory; returns its real path."""
    if path.exists() and not path.is_dir():
        raise StoreError(f"store {path}: is a file, not a directory; pass the path of a directory "
                         "(durablemap creates it on first use)")
    if not path.exists():
        if readonly:
            raise StoreError(f"store {path}: does not exist; run a durable function with this store first, "
                             "or pass the path of an existing store")
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"store {path}: cannot create the directory ({exc.strerror or exc}); choose a "
                             "location this user can write, or create the directory first") from exc
    try:
        entries = set(os.listdir(path))
    except OSError as exc:
        raise StoreError(f"store {path}: cannot list the directory ({exc.strerror or exc}); make it "
                         "readable and searchable by this user (chmod u+rwx), or choose another store") from exc
    if readonly and "data.mdb" not in entries:
        raise StoreError(f"store {path}: is not a durablemap store (no data.mdb); pass the directory of an "
                         "existing store")
    if entries and "data.mdb" not in entries:
        raise StoreError(f"store {path}: is a non-empty directory that is not a durablemap store (no "
                         "data.mdb); choose an empty or new directory, or the directory of an existing store")
    if not readonly and not os.access(path, os.W_OK):
        raise StoreError(f"store {path}: the directory is not writable; make it writable by this user "
                         "or choose another store")
    return os.path.realpath(path)


def _check_meta(shared: SharedEnv, txn: Any, db_names: set[bytes]) -> bool:
    """Validate the meta record; returns False when the environment is new (no meta yet)."""
    path = shared.path
    if b"meta" not in db_names:
        if db_names - set(_DB_NAMES):
            raise StoreError(f"store {path}: holds an LMDB environment that is not a durablemap store; "
                             "choose another directory")
        return False
    meta = shared.env.open_db(b"meta", txn=txn, create=False)
    magic, raw_version = txn.get(b"magic", db=meta), txn.get(b"format", db=meta)
    if magic != MAGIC or raw_version is None or len(raw_version) != 4:
        raise StoreError(f"store {path}: its meta record is missing or not durablemap's; this is not a "
                         "durablemap store: choose another directory")
    version = int.from_bytes(raw_version, "big")
    if version > FORMAT_VERSION:
        raise StoreError(f"store {path}: was written by a newer durablemap (store format {version}; this "
                         f"version reads up to {FORMAT_VERSION}); upgrade durablemap to use it")
    return True


def _initialise(shared: SharedEnv, txn: Any) -> None:
    # One transaction, serialised across processes by LMDB's writer lock, so two processes creating
    # the same store at once see either nothing or a complete meta record.
    db_names = {key for key, _ in txn.cursor()}
    existing = _check_meta(shared, txn, db_names)
    if shared.readonly:
        if not existing or set(_DB_NAMES) - db_names:
            raise StoreError(f"store {shared.path}: is not a complete durablemap store; open it writable")
        return  # handles opened in a read transaction die with it: _open_env opens them after
    for name in _DB_NAMES:
        shared.dbs[name] = shared.env.open_db(name, txn=txn, create=True)
    if not existing:
        txn.put(b"magic", MAGIC, db=shared.dbs[b"meta"])
    if txn.get(b"format", db=shared.dbs[b"meta"]) != FORMAT_VERSION.to_bytes(4, "big"):
        # New, or of an older format that this version may now write newer records into.
        txn.put(b"format", FORMAT_VERSION.to_bytes(4, "big"), db=shared.dbs[b"meta"])


def _open_env(path: str, *, readonly: bool, map_size: int) -> SharedEnv:
    check_data_file(path)
    try:
        env = lmdb.open(
            path, map_size=map_size, max_dbs=len(_DB_NAMES) + 2, max_readers=_MAX_READERS,
            subdir=True, readonly=readonly, create=not readonly, mode=0o600,
            sync=True, metasync=True,  # a commit is on disk when it returns
            writemap=False,  # a stray write through a pointer cannot corrupt the file
            lock=True,  # readers never block writers (MVCC), writers exclude each other
        )
    except (lmdb.InvalidError, lmdb.VersionMismatchError) as exc:
        raise StoreError(f"store {path}: its data.mdb is not a readable LMDB file ({exc}). If this "
                         "directory held a durablemap store, it is damaged: restore it from a copy, or try "
                         f"{salvage_command(path)}; otherwise choose another directory") from exc
    except lmdb.Error as exc:
        raise StoreError(f"store {path}: cannot open the LMDB environment ({exc}); check that the "
                         "directory is writable, on a local disk, and not damaged") from exc
    shared = SharedEnv(path, env, readonly)
    try:
        if not readonly:
            env.reader_check()  # free reader slots of killed processes, which would pin old pages
        # The main database lists the named ones; in a read-only environment open_db only reads.
        shared.transact("open", lambda txn: _initialise(shared, txn), write=not readonly)
        if readonly:
            for name in _DB_NAMES:
                shared.dbs[name] = env.open_db(name, create=False)
    except BaseException:
        env.close()
        raise
    return shared


_registry: dict[tuple[str, int], SharedEnv] = {}
_registry_lock = threading.Lock()


def data_file_identity(real: str) -> tuple[int, int] | None:
    """``(device, inode)`` of the store's data.mdb; None when there is none."""
    try:
        status = os.stat(os.path.join(real, "data.mdb"))
    except OSError:
        return None
    return status.st_dev, status.st_ino


def acquire_env(path: Path, *, readonly: bool, map_size: int) -> SharedEnv:
    """The process's shared environment for ``path``, opened on first use; adds a reference. An
    environment whose data.mdb is gone (``SharedEnv.gone``) is left to the handles that hold it, and
    the store now at ``path`` is opened."""
    real = check_directory(path, readonly=readonly)
    key = (real, os.getpid())
    with _registry_lock:
        shared = _registry.get(key)
        if shared is not None and shared.gone:
            del _registry[key]
            shared = None
        if shared is None:
            _refuse_if_inherited(real)
            shared = _open_env(real, readonly=readonly, map_size=map_size)
            _registry[key] = shared
        elif shared.readonly and not readonly:
            raise StoreError(f"store {real}: is already open read-only in this process; close that "
                             "Store before opening it writable")
        shared.refs += 1
        return shared


def is_open_in_process(real: str) -> bool:
    """Whether this process (or the process it was forked from) has the store at ``real`` open."""
    with _registry_lock:
        return any(path == real for path, _ in _registry)


def _refuse_if_inherited(real: str) -> None:
    # A forked child inherits its parent's environment. It must not use it, nor close it (closing
    # frees the parent's reader slots in the shared lock file), and py-lmdb refuses a second open of
    # the same files in one process. So the child cannot open the store at all: say so plainly.
    parents = [pid for path, pid in _registry if path == real and pid != os.getpid()]
    if parents:
        raise StoreError(
            f"store {real}: this process was forked from pid {parents[0]}, which had the store open; LMDB "
            "cannot open it again in a forked child. Start worker processes with the 'spawn' or "
            "'forkserver' start method (loky's default is safe), or open the store only after forking"
        )


def release_env(shared: SharedEnv) -> None:
    """Drop one reference; the environment closes with the last."""
    with _registry_lock:
        shared.refs -= 1
        if shared.refs > 0:
            return
        key = (shared.path, os.getpid())
        if _registry.get(key) is shared:  # not when a newer environment of the path replaced it
            del _registry[key]
        shared.env.close()


_MADV_DONTNEED = 4


def release_mapped_pages(real: str) -> int:
    """Drop this process's mapping of the pages of the store at ``real`` read so far (Linux; a
    no-op elsewhere): a long scan then holds no more of the file in its RSS than it reads between
    two calls. The pages stay in the page cache and are mapped again when read, so nothing is
    re-read from disk. Safe because the map is never written through (``writemap=False``).
    Returns how many bytes of mapping were released."""
    try:
        with open("/proc/self/maps") as fh:
            ranges = [line.split(maxsplit=1)[0] for line in fh if line.rstrip().endswith(f"{real}/data.mdb")]
    except OSError:
        return 0
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    released = 0
    for span in ranges:
        start, end = (int(part, 16) for part in span.split("-"))
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0:
            released += end - start
    return released
