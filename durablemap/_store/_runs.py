"""Runs: the records of consecutive map items stored as one value.

A worker that finishes a chunk of tiny items writes their records as one run instead of one key each
(one key and one value where there were thousands: most of a tiny item's commit)::

    key   = item_key(map_key, first) + 4 zero bytes + b"\\xff" + count (4 bytes, big-endian)
    value = the ``count`` item records, concatenated (each a whole msgpack object)

Readers never see a run: ``expand`` turns the store's pairs back into one ``(item key, record)`` per
item, in key order, as if each had been written under its own key. A run key sorts right after its
first item's own key and before anything under it (operations inside an item have ids from 1 on),
so an item's record always comes before its operations'. Its size (a path of whole components and
5 bytes) is no record key's.

Invariants (kept by ``Store.put_runs``):

- a run is written only where no key of its items' (nor of anything under them) exists yet, and
  never over another run; else its items are written under their own keys;
- so a record written under an item's own key after the run is the newer one, and wins: ``expand``
  gives it instead of the run's.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator

import msgpack

from durablemap._errors import StoreError
from durablemap._store._keys import COMPONENT_SIZE, item_keys

__all__ = ["RUN_MARK", "RUN_MAX", "RUN_SUFFIX_SIZE", "expand", "parse_run", "run_key", "split_run"]

RUN_MARK = 0xFF
#: The most items a run holds: a reader starting inside a map looks back at most this far for a run.
RUN_MAX = 4096
RUN_SUFFIX_SIZE = COMPONENT_SIZE + 1 + COMPONENT_SIZE
_ZERO = bytes(COMPONENT_SIZE)
_MARK = _ZERO + bytes((RUN_MARK,))


def run_key(first_key: bytes, count: int) -> bytes:
    """The key of the run of ``count`` items whose first item's key is ``first_key``."""
    return first_key + _MARK + count.to_bytes(COMPONENT_SIZE, "big")


def parse_run(key: bytes) -> tuple[bytes, int, int] | None:
    """``(map key, first index, count)`` when ``key`` is a run's key, else None."""
    size = len(key)
    if size < RUN_SUFFIX_SIZE + COMPONENT_SIZE + 1 or key[-5] != RUN_MARK or key[-RUN_SUFFIX_SIZE:-5] != _ZERO:
        return None
    end = key.find(b"\x00")  # an execution id holds no NUL: its end
    if end < 0 or (size - end - 1) % COMPONENT_SIZE != 1:
        return None
    first_end = size - RUN_SUFFIX_SIZE
    map_key = key[:first_end - COMPONENT_SIZE]
    if len(map_key) <= end:  # the execution's own key has no items
        return None
    return map_key, int.from_bytes(key[first_end - COMPONENT_SIZE:first_end], "big"), int.from_bytes(key[-4:], "big")


def split_run(value: bytes, count: int, where: bytes = b"") -> list[bytes]:
    """The ``count`` records of a run's ``value``, each as its own bytes."""
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(value), 1))
    unpacker.feed(value)
    records: list[bytes] = []
    start = 0
    try:
        for _ in range(count):
            unpacker.skip()
            end = unpacker.tell()
            records.append(value[start:end])
            start = end
    except (msgpack.OutOfData, ValueError, msgpack.UnpackException) as exc:
        raise StoreError(_damaged(where, f"it holds fewer than its {count} records ({type(exc).__name__})")) from None
    if start != len(value):
        raise StoreError(_damaged(where, f"it holds more than its {count} records"))
    return records


def _damaged(where: bytes, what: str) -> str:
    return (f"the run of item records at key {where[:64]!r} cannot be read: {what}. The store may be damaged: "
            "`durablemap salvage STORE NEW_DIR` copies every record that can be read into a new store")


def expand(pairs: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """``pairs`` (a store's records in key order) with each run replaced by its items' records, in
    key order; an item's record under its own key wins over the run's (see the module docstring)."""
    pending: deque[tuple[bytes, bytes]] = deque()
    last_of_size: dict[int, bytes] = {}  # the last key yielded, per key size
    for key, value in pairs:
        while pending and pending[0][0] < key:
            yield pending.popleft()
        if pending and pending[0][0] == key:
            pending.popleft()  # the item's own record, written after the run: it wins
        run = parse_run(key)
        if run is None:
            last_of_size[len(key)] = key
            yield key, value
            continue
        map_key, first, count = run
        keys = item_keys(map_key, range(first, first + count))
        records = split_run(value, count, key)
        start = 1 if last_of_size.get(len(keys[0])) == keys[0] else 0  # its first item's own record won
        items = zip(keys[start:], records[start:], strict=True)
        # A run inside an item that overrides one of an outer run's items: merged, to keep key order.
        pending = deque(heapq.merge(pending, items)) if pending else deque(items)
    yield from pending
