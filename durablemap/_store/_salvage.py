"""``durablemap salvage``: copy every record that can still be read from a damaged store into a new
store, and say what could not be read. The damaged store is never written, nor opened by LMDB in
this process.

Reading. A child process (``_salvage_reader``) opens the environment read-only without LMDB's lock
file and walks each database with a cursor, sending back records in batches. A damaged page shows
itself as an LMDB error, or kills the child (LMDB's assertion calls abort(); a page past the end of
a file cut short is SIGBUS): the parent then knows the last key it received, K, restarts the child
and finds where reading can resume, by asking the child for the first key at or after probe keys
above K, keys taken as numbers of len(K) bytes: K + 16, K + 32, ... (4,096 of them, 256 a message;
fewer once they have killed the child 32 times), then ever further apart (doubling), then bisecting
between the last probe that failed and the first that worked. From that point it reads backwards
down to the damage (one record a message, so a crash loses none) and forwards on. Between K and the
first key read back lies a range of keys that could not be read: reported, and searched again for
readable records in the same way. When not even the first record can be read, the search starts from
item 0 of the first operations of each execution the store's index names. Every probe that fails
costs microseconds when LMDB reports an error, and a process start (about 0.15 s) when it aborts.

What LMDB cannot open at all is prepared first, on a copy written inside the new store's directory
(and removed at the end): a header page that is overwritten is replaced by the other one (the
store as of its previous commit), and a file cut short is extended with zeros to the length its
header says, so its missing pages read as pages of zeros (an LMDB error) rather than SIGBUS. When
the last commit's list of databases, or every record, cannot be read, the commit before is read.
What LMDB cannot reach through its B-tree (a leaf whose branch page, or root, is lost) is searched
for afterwards in the file's pages themselves (``_pages``), when anything was lost: the caller
(``durablemap._salvage``) takes from them the records at keys it has not read, choosing among the
older versions that freed pages hold.

Writing. Records whose key is not a record key, or whose value is not a msgpack record, are skipped
and counted. The rest go into a fresh store, with the executions' index. A map that finished
without its result in its own record (a large map, rebuilt from its items' records on replay)
and lost some of its records' descendants is marked STARTED, so the next run resumes it and runs
the lost items; so is every execution that lost records. Execution locks are not copied.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from durablemap._errors import StoreError
from durablemap._store._compact import lock_holders
from durablemap._store._env import Header, read_header
from durablemap._store._keys import decode_key, path_str

__all__ = ["Gap", "ReadOutcome", "Row", "check_target", "check_unused", "read_store"]

_READER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_salvage_reader.py")
_BATCH = 1024  # records a message, reading forwards
_REPLY_TIMEOUT = 30.0  # seconds without a word from the child before it is taken for hung
_NO_KEY_LENGTH = 16  # the width of probe keys when no key was read yet
_STRIDE = 16  # probing on after a failure: every 16th key first (a leaf holds 40 to 100 items)
_DENSE_PROBES = 4096  # that many (65,536 items on), then ever further apart
_PROBE_BATCH = 256  # probes a message
_DENSE_DEATHS = 32  # the reader's deaths (a process start each) probing densely, at most, before probing apart

Row = tuple[bytes, bytes]


@dataclass
class Gap:
    """Keys of database ``db`` strictly between ``after`` and ``before`` (None: the first / the last
    key) could not be read."""

    db: str
    after: bytes | None
    before: bytes | None

    def describe(self) -> str:
        """One line for the report."""
        return f"{self.db}: keys after {_show_key(self.after)} and before {_show_key(self.before)}"

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form: the bounds as readable ids and as hex."""
        return {"db": self.db, "after": _show_key(self.after), "before": _show_key(self.before),
                "after_hex": self.after.hex() if self.after is not None else None,
                "before_hex": self.before.hex() if self.before is not None else None}


def _show_key(key: bytes | None) -> str:
    if key is None:
        return "(none)"
    try:
        execution_id, path = decode_key(key)
    except StoreError:
        return f"0x{key.hex()}"
    return f"{execution_id}:{path_str(path) or '(execution)'}"


# -- the reading child ------------------------------------------------------------------------------

class _Died(Exception):
    """The child died or stopped answering."""


class _Child:
    """The reading child process, restarted whenever it dies."""

    def __init__(self, source: str, crashes: list[str]) -> None:
        self.source = source
        self.crashes = crashes
        self.proc: subprocess.Popen[bytes] | None = None
        self.conns: tuple[Connection, Connection] | None = None
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 (the child's stderr, for its lifetime)
        self.names: list[bytes] = []

    def start(self, names: list[bytes]) -> list[bytes]:
        """Start the child and open ``names``; returns the databases it found."""
        from_parent, to_child = os.pipe()
        from_child, to_parent = os.pipe()
        self.err.seek(0)
        self.err.truncate()
        try:
            self.proc = subprocess.Popen([sys.executable, _READER, self.source], stdin=from_parent,
                                         stdout=to_parent, stderr=self.err, close_fds=True)
        finally:
            os.close(from_parent)
            os.close(to_parent)
        self.conns = (Connection(to_child, readable=False), Connection(from_child, writable=False))
        self.names = names
        reply = self.ask(("open", names))
        if reply[0] != "ok":
            raise StoreError(str(reply[1]))
        return list(reply[1])

    def ask(self, order: tuple[Any, ...]) -> tuple[str, Any]:
        """Send ``order``; the first answer. Raises _Died when the child dies."""
        if self.proc is None or self.proc.poll() is not None:
            self.start(self.names)
        assert self.conns is not None
        try:
            self.conns[0].send(order)
        except OSError:
            raise self.died() from None
        return self.answer()

    def answer(self) -> tuple[str, Any]:
        """The child's next message. Raises _Died when it dies or hangs."""
        assert self.conns is not None
        try:
            if not self.conns[1].poll(_REPLY_TIMEOUT):
                raise self.died(hung=True)
            reply: tuple[str, Any] = self.conns[1].recv()
        except (EOFError, OSError):
            raise self.died() from None
        return reply

    def died(self, hung: bool = False) -> _Died:
        """Note how the child died (and make sure it did); the exception to raise."""
        assert self.proc is not None and self.conns is not None
        if hung:
            self.proc.kill()
        code = self.proc.wait()
        for conn in self.conns:
            conn.close()
        self.err.seek(0)
        last = (self.err.read().decode(errors="replace").strip().splitlines() or [""])[-1][:200]
        how = (f"hung for {_REPLY_TIMEOUT:.0f} s" if hung else
               f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}")
        self.crashes.append(f"the reading process {how}" + (f": {last}" if last else ""))
        self.proc = None
        return _Died()

    def close(self) -> None:
        """Stop the child (it exits when its input closes; killed if it does not)."""
        if self.conns is not None:
            for conn in self.conns:
                conn.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=_REPLY_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


# -- reading one database around its damage ---------------------------------------------------------

class _Scanner:
    """Reads every readable record of one database, in key order except around damage."""

    def __init__(self, child: _Child, db: bytes, sink: Callable[[list[Row]], None], gaps: list[Gap],
                 anchors: list[bytes]) -> None:
        self.child, self.db, self.sink, self.gaps = child, db, sink, gaps
        #: Where readable records may lie when nothing before them could be read: keys to search on from.
        self.anchors = sorted(anchors)

    def read(self, low: bytes | None = None, high: bytes | None = None) -> None:
        """Read every readable record with a key in (low, high) (None: unbounded)."""
        pos, inclusive = low, False
        while True:
            failed_after, ok = self.forward(pos, inclusive, high)
            if ok:
                return
            probe = self.find_readable(failed_after, high)
            if failed_after is None:
                probe = self.from_anchors(probe, high)
            first_back, back_ok = self.backward(probe, failed_after, high)
            if not back_ok:
                if first_back is not None:
                    self.read(failed_after, first_back)  # readable records may lie between two damages
                else:
                    self.gaps.append(Gap(self.db.decode(), failed_after, self.resume_key(probe, high)))
            if probe is None or probe == high:
                return
            pos, inclusive = probe, True

    def forward(self, pos: bytes | None, inclusive: bool, high: bytes | None) -> tuple[bytes | None, bool]:
        """Read forwards from ``pos``: ``(last key read, True)`` at the end, or ``(key, False)``
        when reading failed just after ``key`` (``pos`` itself when nothing could be read)."""
        batch, limit = _BATCH, None
        last: list[bytes] = []

        def keep(rows: list[Row]) -> None:
            last[:] = [rows[-1][0]]
            self.sink(rows)

        while True:
            last.clear()
            try:
                outcome = self.stream(("scan", self.db, pos, inclusive, high, batch, limit), keep)
            except _Died:
                outcome = "died"
            if last:
                pos, inclusive = last[0], False
            if outcome == "end":
                return pos, True
            if outcome == "limit":
                batch, limit = _BATCH, None
            elif outcome == "died" and batch > 1:
                # The rows of the batch being read are lost with the child: read on one record a
                # message, so that the next crash tells exactly the last readable record.
                batch, limit = 1, 4 * _BATCH
            else:
                return pos, False

    def stream(self, order: tuple[Any, ...], sink: Callable[[list[Row]], None]) -> str:
        """Send a reading order and pass its rows to ``sink``; the outcome ("end", "limit", "error")."""
        reply = self.child.ask(order)
        while reply[0] == "rows":
            sink(reply[1])
            reply = self.child.answer()
        return reply[0]

    def probe(self, key: bytes) -> tuple[bool, bytes | None]:
        """``(readable, first key >= key)`` (None: there is none)."""
        try:
            reply = self.child.ask(("probe", self.db, key))
        except _Died:
            return False, None
        return reply[0] != "error", reply[1] if reply[0] == "found" else None

    def from_anchors(self, probe: bytes | None, high: bytes | None) -> bytes | None:
        """Nothing could be read up to ``probe``: the first readable key found searching on from an
        anchor below it, else ``probe``."""
        for anchor in self.anchors:
            if (probe is not None and anchor >= probe) or (high is not None and anchor >= high):
                break
            found = self.find_readable(anchor, probe, dense_only=True)
            if found is not None and found != probe:
                return found
        return probe

    def first_readable(self, keys: list[bytes], deaths: int) -> tuple[int | None, int]:
        """The position in ``keys`` of the first from which reading works (None when none does), and
        how many of them were tried: all, unless the reader's deaths reached ``deaths`` (a count of
        ``self.child.crashes``) while probing them."""
        try:
            reply = self.child.ask(("probes", self.db, keys))
            answers = reply[1] if reply[0] == "probed" else []
            return (len(answers) - 1 if answers and answers[-1][0] != "error" else None), len(keys)
        except _Died:  # one of them killed the reader: probe them one by one
            for n, key in enumerate(keys):
                if self.probe(key)[0]:
                    return n, n + 1
                if len(self.child.crashes) >= deaths:
                    return None, n + 1
            return None, len(keys)

    def find_readable(self, after: bytes | None, high: bytes | None, *, dense_only: bool = False) -> bytes | None:
        """The smallest probe key above ``after`` from which reading works: ``high`` when none below
        it does (None: when none does at all). Probes every _STRIDE-th key (as numbers of len(after)
        bytes) first, until that has killed the reader _DENSE_DEATHS times (each costs a process
        start: a damaged branch page can make every key below it kill the reader), then ever further
        apart, then bisects."""
        width = len(after) if after else _NO_KEY_LENGTH
        base = int.from_bytes(after.ljust(width, b"\x00"), "big") if after else 0
        limit = 256**width
        if high is not None:  # probe keys of ``width`` bytes below ``high``: values below this
            limit = min(limit, int.from_bytes(high[:width].ljust(width, b"\x00"), "big") + (len(high) > width))
        failed, step, worked = base, 1, limit
        deaths = len(self.child.crashes) + _DENSE_DEATHS
        for first in range(1, _DENSE_PROBES + 1, _PROBE_BATCH):
            values = [v for v in range(base + first * _STRIDE, base + (first + _PROBE_BATCH) * _STRIDE, _STRIDE)
                      if v < limit]
            if not values:
                break
            hit, tried = self.first_readable([v.to_bytes(width, "big") for v in values], deaths)
            if hit is not None:
                failed, worked = (values[hit - 1] if hit else failed), values[hit]
                break
            failed = values[tried - 1]
            if tried < _PROBE_BATCH:  # the last values below ``limit``, or the deaths allowed
                break
        if worked == limit and dense_only:
            return high
        base, step = failed, 1
        while worked == limit and base + step < limit:
            if self.probe((base + step).to_bytes(width, "big"))[0]:
                worked = base + step
                break
            failed, step = base + step, step * 2
        while worked - failed > 1:
            middle = (failed + worked) // 2
            if self.probe(middle.to_bytes(width, "big"))[0]:
                worked = middle
            else:
                failed = middle
        return worked.to_bytes(width, "big") if worked < limit else high

    def backward(self, probe: bytes | None, low: bytes | None, high: bytes | None) -> tuple[bytes | None, bool]:
        """Read backwards from just below ``probe`` (None: from the last record) down to ``low``:
        ``(smallest key read, True when it got down to low)``."""
        smallest: list[bytes] = []

        def keep(rows: list[Row]) -> None:
            smallest[:] = [rows[-1][0]]
            self.sink(rows)

        try:
            outcome = self.stream(("back", self.db, probe, low, high), keep)
        except _Died:
            outcome = "died"
        return (smallest[0] if smallest else None), outcome == "end"

    def resume_key(self, probe: bytes | None, high: bytes | None) -> bytes | None:
        """The first key at or after ``probe``: where a gap ends."""
        if probe is None or probe == high:
            return high
        readable, found = self.probe(probe)
        return found if readable else probe


# -- reading a whole store -------------------------------------------------------------------------

def check_target(real: str, target: Path) -> str:
    """The real path of a salvage's new store directory; refuses one that is not new or empty, and one
    inside the damaged store."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StoreError(f"salvage target {target}: already exists and is not an empty directory; name a "
                         "new directory for the salvaged store")
    resolved = os.path.realpath(target)
    if resolved == real or resolved.startswith(real.rstrip(os.sep) + os.sep):
        raise StoreError(f"salvage target {target}: is inside the damaged store {real}; name a directory "
                         "outside it")
    return resolved


def check_unused(real: str) -> None:
    """Refuse to read a store that a live process has open (it could be written while read)."""
    holders = lock_holders(os.path.join(real, "lock.mdb"))
    if holders:
        raise StoreError(f"store {real}: is open in pid {', '.join(map(str, holders))}; a salvage must read "
                         "it while nothing writes it: stop that process (a job, its workers or a durablemap "
                         "command) and run the salvage again")


def read_store(real: str, scratch: str, sinks: dict[bytes, Callable[[list[Row]], None]],
               flush: Callable[[], None], anchors: Callable[[bytes], list[bytes]]) -> ReadOutcome:
    """Read every readable record of the databases named in ``sinks`` (in that order) of the store at
    ``real``, passing them to their sink a batch at a time (``flush`` after each database).
    ``anchors(db)`` (called when that database's turn comes) gives keys around which its records are
    likely to be, to search from when its first records cannot be read. A repaired copy, when one is
    needed, is written in a directory made in ``scratch`` and removed after.

    The store is read as of its last commit; as of the commit before when the last one's list of
    databases cannot be read, or none of its records can (every commit writes a new root page for
    each: the previous commit's may have survived where the last's did not)."""
    crashes: list[str] = []
    problem = "the reading process died"
    fallback: ReadOutcome | None = None
    for previous in (False, True):
        outcome = ReadOutcome(crashes=crashes)
        try:
            _read_snapshot(real, scratch, sinks, flush, anchors, outcome, previous=previous)
        except _NoCatalog as exc:
            problem = str(exc)
            continue
        if previous or not any(gap.db == "records" and gap.after is None and gap.before is None
                               for gap in outcome.gaps):
            return outcome
        fallback = outcome
    if fallback is not None:
        return fallback
    raise StoreError(f"store {real}: LMDB cannot read the list of its databases, as of its last commit or the "
                     f"one before ({problem}): nothing can be salvaged; restore the store from a copy")


class _NoCatalog(Exception):
    """The list of the environment's databases cannot be read."""


def _read_snapshot(real: str, scratch: str, sinks: dict[bytes, Callable[[list[Row]], None]],
                   flush: Callable[[], None], anchors: Callable[[bytes], list[bytes]], outcome: ReadOutcome,
                   *, previous: bool) -> None:
    work = _prepare(real, scratch, outcome.repairs, previous=previous)
    try:
        child = _Child(work or real, outcome.crashes)
        try:
            try:
                found = child.start(list(sinks))
            except (StoreError, _Died) as exc:
                raise _NoCatalog(str(exc) or "the reading process died") from None
            for db, sink in sinks.items():
                if db in found:
                    _Scanner(child, db, sink, outcome.gaps, anchors(db)).read()
                    flush()
                else:
                    outcome.missing.append(db.decode())
        finally:
            child.close()
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class ReadOutcome:
    """What reading a damaged store met: see :func:`read_store`."""

    gaps: list[Gap] = field(default_factory=list)
    #: How the reading child died, once per death (signal and LMDB's last words).
    crashes: list[str] = field(default_factory=list)
    #: What was done to a copy of the store so that LMDB could open it.
    repairs: list[str] = field(default_factory=list)
    #: Databases the store's list of databases does not name.
    missing: list[str] = field(default_factory=list)


def _prepare(real: str, scratch: str, repairs: list[str], *, previous: bool) -> str | None:
    """None when LMDB can read the store as it is, else the directory of a repaired copy; with
    ``previous``, a copy read as of the commit before the last."""
    header = read_header(real)
    if header is None:
        raise StoreError(f"store {real}: data.mdb is empty: there is nothing to salvage")
    if header.newest is None:
        raise StoreError(f"store {real}: neither of data.mdb's two header pages is LMDB's (both damaged, or "
                         "this is not an LMDB file): LMDB cannot find any record without one, so nothing "
                         "can be salvaged; restore the store from a copy")
    if not previous and None not in header.metas and header.size >= header.needed:
        return None
    work = tempfile.mkdtemp(prefix=".salvage-source-", dir=scratch)
    copy = os.path.join(work, "data.mdb")
    try:
        shutil.copyfile(os.path.join(real, "data.mdb"), copy)
        with open(copy, "r+b") as fh:
            _repair(fh, header, repairs, previous)
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        raise StoreError(f"store {real}: cannot write a repaired copy of data.mdb in {scratch} ({exc}); the "
                         "salvage needs free space there as large as data.mdb") from exc
    return work


def _repair(fh: Any, header: Header, repairs: list[str], previous: bool) -> None:
    psize = header.page_size
    newest = header.metas.index(header.newest)
    bad = header.metas.index(None) if None in header.metas else newest if previous else None
    if bad is not None:
        good = header.metas[1 - bad]
        fh.seek((1 - bad) * psize)
        page = bytearray(fh.read(psize))
        page[0:8] = bad.to_bytes(8, "little")  # the page number, in the page's header
        fh.seek(bad * psize)
        fh.write(page)
        why = "is damaged" if header.metas[bad] is None else "leads to pages that cannot be read"
        repairs.append(f"data.mdb's header page {bad} {why}: the store was read as of the commit its "
                       f"other header page records (transaction {good[0] if good else '?'}); a later commit, "
                       "if there was one, is lost")
    if header.size < header.needed:
        fh.truncate(header.needed)
        repairs.append(f"data.mdb is {header.size} bytes but its last commit uses {header.needed}: the "
                       f"{header.needed - header.size} bytes cut off (pages {header.size // psize} to "
                       f"{header.needed // psize - 1}) are lost")
