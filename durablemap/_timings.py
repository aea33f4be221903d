"""Item timings: when each map item ran, for how long, in which worker, recorded per chunk.

Timing every item in its own record would cost tiny items measurable throughput (a meta dict per
record instead of the fingerprint alone). So a worker times the items of a chunk with one clock read
each and records them once, in the meta of the chunk's last item record, under ``"chunk"``::

    {"t0": wall-clock start of the chunk (time.time()), "pid": worker pid,
     "i0": first index (the chunk's indexes are i0, i0+1, ...) or "ix": [the indexes],
     "d": the items' durations in seconds, float32 little-endian bytes, in run order,
     or, for items under PER_ITEM_SECONDS on average, "n": item count and "s": the chunk's span,
     and for a chunk whose items ran several at once (``_inflight``), "o": each item's start as
     seconds after ``t0``, float32, in the order they finished (the order of "ix" and "d")}

An item's start is ``t0`` plus the durations of the items before it in the chunk, or plus its "o". A map record's meta
holds ``"timeline"``: one ``[start, end]`` (wall-clock) per run of the map, ``end`` None while it runs
or when the run was killed; an item's attempt is the run its chunk started in.
"""

from __future__ import annotations

import heapq
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import sub
from typing import Any

from durablemap._records import decode_raw, fields_meta, with_meta

__all__ = [
    "PER_ITEM_SECONDS", "Chunk", "ItemTime", "attempt_of", "chunk_durations", "chunk_meta", "chunks_of",
    "concurrent_chunk_meta", "item_times", "slowest", "stamp_chunk",
]

KEY = "chunk"
PER_ITEM_SECONDS = 0.0001  # items shorter than this on average are timed per chunk
_LITTLE = array("f").itemsize == 4 and int.from_bytes(b"\x01\x00", "little") == 1


def chunk_meta(t0: float, indexes: Sequence[int], marks: Sequence[float]) -> dict[str, Any]:
    """The ``"chunk"`` meta of a chunk whose first item started at wall-clock ``t0``: ``marks`` are
    ``time.monotonic()`` before each item and after the last (at least one more than ``indexes``).

    Items of ``PER_ITEM_SECONDS`` or more on average get their own durations; tinier ones only the
    chunk's span (``"s"``), each item then counting the chunk's mean: converting a clock reading per
    item would cost them a measurable share of their throughput."""
    n = len(indexes)
    meta: dict[str, Any] = {"t0": t0, "pid": os.getpid()}
    span = marks[n] - marks[0]
    if span >= n * PER_ITEM_SECONDS:
        meta["d"] = array("f", map(sub, islice(marks, 1, n + 1), marks)).tobytes()
    else:
        meta["n"], meta["s"] = n, span
    first = indexes[0]
    in_order = isinstance(indexes, range) and indexes.step == 1
    if in_order or (indexes[-1] - first == n - 1 and list(indexes) == sorted(indexes)):
        meta["i0"] = first  # distinct, ascending, first to first + n - 1: exactly that range
    else:
        meta["ix"] = list(indexes)
    return meta


def concurrent_chunk_meta(t0: float, indexes: Sequence[int], offsets: Sequence[float],
                          durations: Sequence[float]) -> dict[str, Any]:
    """The ``"chunk"`` meta of a chunk whose items ran several at once: each item's start (seconds
    after the wall-clock ``t0``) and duration, in the order the items finished."""
    return {"t0": t0, "pid": os.getpid(), "ix": list(indexes), "d": array("f", durations).tobytes(),
            "o": array("f", offsets).tobytes()}


def stamp_chunk(records: list[bytes], meta: dict[str, Any]) -> None:
    """Add the chunk's timing to the meta of its last record (``records[-1]``, re-encoded; a compact
    record's value bytes are kept as they are, not decoded)."""
    records[-1] = with_meta(records[-1], KEY, meta)


@dataclass(frozen=True)
class Chunk:
    """One chunk's timing: its items' indexes, start times and durations."""

    t0: float
    pid: int
    indexes: list[int]
    durations: list[float]
    offsets: list[float] | None = None  # each item's start after t0, when they ran several at once

    @property
    def end(self) -> float:
        """When its last item finished."""
        if self.offsets is not None:
            return self.t0 + max(map(sum, zip(self.offsets, self.durations, strict=False)), default=0.0)
        return self.t0 + sum(self.durations)

    def starts(self) -> list[float]:
        """Each item's start (wall clock)."""
        if self.offsets is not None:
            return [self.t0 + offset for offset in self.offsets]
        out, at = [], self.t0
        for d in self.durations:
            out.append(at)
            at += d
        return out


def chunk_durations(data: dict[str, Any]) -> list[float]:
    """The items' durations of a ``"chunk"`` meta, in run order (the chunk's mean for tiny items)."""
    if "d" not in data:
        n = int(data.get("n", 0))
        return [float(data.get("s", 0.0)) / n] * n if n else []
    return _floats(data["d"])


def _floats(raw: bytes) -> list[float]:
    values = array("f")
    values.frombytes(raw)
    if not _LITTLE:  # pragma: no cover - big-endian machines
        values.byteswap()
    return values.tolist()


def decode_chunk(meta: dict[str, Any]) -> Chunk | None:
    """The chunk timing in a record's meta, or None."""
    data = meta.get(KEY) if isinstance(meta, dict) else None
    if not isinstance(data, dict):
        return None
    durations = chunk_durations(data)
    n = len(durations)
    indexes = list(range(data["i0"], data["i0"] + n)) if "i0" in data else list(data.get("ix", []))[:n]
    offsets = _floats(data["o"])[:n] if "o" in data else None
    return Chunk(float(data["t0"]), int(data.get("pid", 0)), indexes, durations, offsets)


def chunks_of(store: Any, execution_id: str, path: tuple[int, ...]) -> Iterator[Chunk]:
    """The timed chunks of the map at ``path``, in the order of their last item's index."""
    from durablemap._store import op_key
    for _index, _key, raw in store.scan_children(op_key(execution_id, path)):
        if b"\xa5chunk" not in raw:  # msgpack of the key "chunk": most records have none
            continue
        meta = fields_meta(decode_raw(raw))
        chunk = decode_chunk(meta) if isinstance(meta, dict) else None
        if chunk is not None:
            yield chunk


@dataclass(frozen=True)
class ItemTime:
    """When one item ran."""

    index: int
    start: float
    duration: float
    pid: int
    attempt: int

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form."""
        return {"index": self.index, "start": self.start, "duration": self.duration, "pid": self.pid,
                "attempt": self.attempt}


def attempt_of(start: float, timeline: Sequence[Sequence[Any]] | None) -> int:
    """Which run of the map (1, 2, ...) was under way at ``start``."""
    attempt = 1
    for number, segment in enumerate(timeline or (), start=1):
        if segment and segment[0] is not None and start >= float(segment[0]) - 1e-3:
            attempt = number
    return attempt


def item_times(store: Any, execution_id: str, path: tuple[int, ...],
               timeline: Sequence[Sequence[Any]] | None = None) -> dict[int, ItemTime]:
    """Every timed item of a map, by index (the latest run of an item wins)."""
    out: dict[int, ItemTime] = {}
    for chunk in sorted(chunks_of(store, execution_id, path), key=lambda c: c.t0):
        for index, start, duration in zip(chunk.indexes, chunk.starts(), chunk.durations, strict=False):
            out[index] = ItemTime(index, start, duration, chunk.pid, attempt_of(start, timeline))
    return out


def slowest(store: Any, execution_id: str, path: tuple[int, ...], n: int,
            timeline: Sequence[Sequence[Any]] | None = None) -> list[ItemTime]:
    """The ``n`` longest-running items of a map, longest first (one pass, ``n`` kept in memory)."""
    heap: list[tuple[float, int, float, int]] = []
    for chunk in chunks_of(store, execution_id, path):
        for index, start, duration in zip(chunk.indexes, chunk.starts(), chunk.durations, strict=False):
            entry = (duration, index, start, chunk.pid)
            if len(heap) < n:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)
    return [ItemTime(index, start, duration, pid, attempt_of(start, timeline))
            for duration, index, start, pid in sorted(heap, reverse=True)]
