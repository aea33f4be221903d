"""The reading child of ``durablemap salvage`` (see ``_salvage``): reads an LMDB environment that may
be damaged, on its parent's orders, and sends back what it read.

A damaged page can make LMDB abort the process on an internal assertion, or (in a file cut short)
touch a page past the end of the mapped file, which is SIGBUS; neither can be caught in Python. So
the reading happens here, in a process of its own that the parent restarts when it dies. It is run
as a script (``python _salvage_reader.py DIR``) and imports only the standard library and lmdb, so
a restart costs a fraction of a second. Messages go over stdin and stdout with
``multiprocessing.connection`` (length-prefixed pickles); every batch of records is written to the
pipe before the next page is read, so what was sent before a crash reaches the parent.

Orders (tuples), and what each answers:

    ("open", [name, ...])                    ("ok", [names opened]) | ("error", message)
    ("probe", name, key)                     ("found", first key >= key) | ("end", None) | ("error", message)
    ("probes", name, [key, ...])             ("probed", [the answer to "probe" of each key, up to the
                                             first that is not an error])
    ("scan", name, start, inclusive, high, batch, limit)
        forward from ``start`` (None: the first record) up to ``high`` (exclusive; None: the end):
                                             ("rows", [(key, value), ...])* then ("end", None) |
                                             ("limit", None) | ("error", message)
    ("back", name, start, low, high)         backward from just below ``start`` (None: the last
        record) while keys are above ``low``, skipping keys >= ``high``: one row per message
                                             ("rows", [(key, value)])* then ("end", None) | ("error", message)
"""

from __future__ import annotations

import sys
from multiprocessing.connection import Connection
from typing import Any

import lmdb

_MAX_DBS = 16
_BATCH_BYTES = 8 << 20  # a message of rows holds at most about this much


class _Reader:
    def __init__(self, path: str, out: Connection) -> None:
        self.env = lmdb.open(path, readonly=True, lock=False, max_dbs=_MAX_DBS, subdir=True)
        self.out = out
        self.dbs: dict[bytes, Any] = {}

    def open(self, names: list[bytes]) -> None:
        with self.env.begin() as txn:
            present = {key for key, _ in txn.cursor()}
        for name in names:
            if name in present:
                self.dbs[name] = self.env.open_db(name, create=False)
        self.out.send(("ok", sorted(self.dbs)))

    def probe(self, name: bytes, key: bytes) -> None:
        with self.env.begin(db=self.dbs[name]) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(key):
                self.out.send(("end", None))
            elif cursor.key() < key:  # a damaged branch page sent the search astray
                self.out.send(("error", "out of order: a damaged page"))
            else:
                self.out.send(("found", bytes(cursor.key())))

    def probes(self, name: bytes, keys: list[bytes]) -> None:
        """``probe`` each key in turn, up to the first that works: one answer for them all."""
        answers: list[tuple[str, bytes | None]] = []
        for key in keys:
            try:
                with self.env.begin(db=self.dbs[name]) as txn:
                    cursor = txn.cursor()
                    if not cursor.set_range(key):
                        answers.append(("end", None))
                    elif cursor.key() < key:
                        answers.append(("error", None))
                    else:
                        answers.append(("found", bytes(cursor.key())))
            except lmdb.Error:
                answers.append(("error", None))
            if answers[-1][0] != "error":
                break
        self.out.send(("probed", answers))

    def scan(self, name: bytes, start: bytes | None, inclusive: bool, high: bytes | None, batch: int,
             limit: int | None) -> None:
        sent = size = 0
        rows: list[tuple[bytes, bytes]] = []
        try:
            with self.env.begin(db=self.dbs[name]) as txn:
                cursor = txn.cursor()
                found = cursor.first() if start is None else cursor.set_range(start)
                if found and start is not None and not inclusive and cursor.key() == start:
                    found = cursor.next()
                previous, first = start, True
                while found:
                    key = bytes(cursor.key())
                    if previous is not None and (key < previous or (key == previous and not first)):
                        self.out.send(("rows", rows))  # keys out of order: a damaged page
                        rows = []
                        self.out.send(("error", "out of order: a damaged page"))
                        return
                    if high is not None and key >= high:
                        break
                    value = bytes(cursor.value())
                    rows.append((key, value))
                    previous, first, size = key, False, size + len(value)
                    if len(rows) >= batch or size >= _BATCH_BYTES:
                        self.out.send(("rows", rows))
                        sent, rows, size = sent + len(rows), [], 0
                        if limit is not None and sent >= limit:
                            self.out.send(("limit", None))
                            return
                    found = cursor.next()
        finally:
            if rows:  # read before an error: the parent must have them
                self.out.send(("rows", rows))
        self.out.send(("end", None))

    def back(self, name: bytes, start: bytes | None, low: bytes | None, high: bytes | None) -> None:
        with self.env.begin(db=self.dbs[name]) as txn:
            cursor = txn.cursor()
            found = cursor.prev() if start is not None and cursor.set_range(start) else cursor.last()
            previous = start
            while found:
                key = bytes(cursor.key())
                if previous is not None and key >= previous:  # out of order: a damaged page
                    self.out.send(("error", "out of order: a damaged page"))
                    return
                if low is not None and key <= low:
                    break
                if high is None or key < high:
                    self.out.send(("rows", [(key, bytes(cursor.value()))]))
                previous = key
                found = cursor.prev()
        self.out.send(("end", None))


def main(path: str) -> None:
    """Serve the parent's orders until it closes the pipe."""
    inbox, out = Connection(0, writable=False), Connection(1, readable=False)
    try:
        reader = _Reader(path, out)
    except lmdb.Error as exc:
        out.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            order = inbox.recv()
        except EOFError:
            return
        try:
            getattr(reader, order[0])(*order[1:])
        except lmdb.Error as exc:
            out.send(("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    main(sys.argv[1])
