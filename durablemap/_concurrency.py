"""How many items run at once: pure decisions from measurements, no threads, no processes.

Items in flight follow ``MapConfig.max_concurrency`` (CONTRACT section 3), not the number of worker
processes: a worker runs several items of its chunk at once (threads, or an event loop for
``async def`` functions; see ``_inflight``). How many is measured, not guessed:

    worker (Throttle, per chunk)                      coordinator (ConcurrencyPlan, per map)
    ────────────────────────────                      ─────────────────────────────────────
    starts 1 item; every INTERVAL compares the        the chunk's peak concurrency and CPU time
    process's CPU time with the wall time:      ───>  say whether items wait: then one chunk per
      mostly idle, every slot busy  -> more at once       worker, as large as its share of what may
      a core busy                   -> fewer              be in flight, run with that many at once;
    CPU-bound items stay at 1 (more threads on           else chunks sized by time (``_chunking``),
    Python code only add GIL contention)                 run one item at a time (the fast path)

The bound on items running at once: ``max_concurrency`` when set, else ``Settings.concurrency`` (the
``concurrency=`` argument of ``handler.run``), else ``DEFAULT_CONCURRENCY``. With no
``max_concurrency``, CPU-bound maps still dispatch as many items as their chunks hold: the bound is
on items running together, which CPU-bound items never do.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_CONCURRENCY", "FLOW", "ConcurrencyPlan", "Throttle"]

#: Items of a map running at once, across its workers, when neither ``max_concurrency`` nor the
#: run's ``concurrency`` says: enough to overlap the waits of typical I/O (HTTP calls, database
#: writes) without opening hundreds of connections to one service by surprise.
DEFAULT_CONCURRENCY = 256
#: A flowing chunk (see ``ConcurrencyPlan.flows``) holds up to this many rounds of its places.
FLOW = 64


class Throttle:
    """How many items of one chunk run at once in a worker, from the worker's CPU use.

    ``sample(now, cpu, running, queued)`` is called with the wall clock, the process's CPU clock,
    the number of items running and, while few run, the seconds their threads waited for a CPU
    since the last sample (the kernel's run-queue delay: on a loaded machine a CPU-bound item waits
    for a core, which is not the waiting more items would fill); at most every ``INTERVAL``
    seconds it compares the CPU time used (and wanted) with the wall time that passed (1.0: a core
    busy all along). Below ``LOW`` with every allowed item running, the items mostly wait: more
    may run (by up to ``GROWTH`` times at once). Above ``HIGH``, the core is the limit: fewer run,
    down to one.
    """

    LOW = 0.6
    HIGH = 0.95
    TARGET = 0.8
    GROWTH = 16.0
    INTERVAL = 0.005
    #: A sample this long after the last one: the worker's own thread was held up (it waits at most
    #: ``INTERVAL`` for items to finish), so the process could not run, whatever its items do.
    STALLED = 4 * INTERVAL

    __slots__ = ("_at", "_cpu", "allowed", "limit", "peak")

    def __init__(self, limit: int, start: int, now: float, cpu: float) -> None:
        self.limit = max(1, limit)
        self.allowed = max(1, min(start, self.limit))
        self.peak = self.allowed
        self._at, self._cpu = now, cpu

    def due(self, now: float) -> bool:
        """Whether a sample taken now would be used."""
        return now - self._at >= self.INTERVAL

    def sample(self, now: float, cpu: float, running: int, queued: float = 0.0) -> None:
        """Adjust ``allowed`` from the CPU time used (and ``queued`` for) since the last sample."""
        wall = now - self._at
        if wall < self.INTERVAL:
            return
        busy = (cpu - self._cpu + queued) / wall
        self._at, self._cpu = now, cpu
        if running < self.allowed:
            return  # not every slot in use (items finishing, none left): says nothing either way
        if wall > self.STALLED and busy < self.LOW:
            # The worker's thread that samples was held up: on a machine with more busy processes
            # than cores, its item threads wait too, for the CPU or for the interpreter lock that a
            # thread off the CPU holds, and neither wait shows as CPU used or queued for. Taken for
            # items that wait, it made CPU-bound maps run several items at once per worker.
            return
        if busy < self.LOW and self.allowed < self.limit:
            factor = min(self.GROWTH, self.TARGET / max(busy, self.TARGET / self.GROWTH))
            self.allowed = min(self.limit, max(self.allowed + 1, math.ceil(self.allowed * factor)))
        elif busy > self.HIGH and self.allowed > 1:
            self.allowed = max(1, math.floor(self.allowed * 0.75))
        self.peak = max(self.peak, self.allowed)


class ConcurrencyPlan:
    """The shape of one map's next chunk: how many items, and how many of them may run at once.

    Until a chunk says otherwise (``measured``), items are taken to wait: each worker gets one
    chunk of its share of the items that may run at once, which it runs with a ``Throttle`` (so a
    CPU-bound map finds out in its first chunks, one item at a time). A chunk whose worker ran
    several items at once makes the map waiting-heavy; a first chunk its throttle kept at one at
    a time makes it CPU-bound: chunks sized by time, one item at a time, two chunks per worker in
    flight (the worker's fast path).
    """

    __slots__ = ("bound", "max_concurrency", "waiting", "workers")

    def __init__(self, workers: int, max_concurrency: int | None, bound: int | None,
                 threads: bool = True) -> None:
        self.workers = max(1, workers)
        self.max_concurrency = max_concurrency
        self.bound = max_concurrency or bound or DEFAULT_CONCURRENCY
        self.waiting: bool | None = None if threads else False

    def measured(self, items: int, elapsed: float, cpu: float, peak: int) -> None:
        """A chunk of ``items`` ran in ``elapsed`` seconds using ``cpu`` seconds of CPU, with at
        most ``peak`` of its items at once (0: it could not run two at once, so it tells nothing:
        a one-item chunk of waiting items is not a CPU-bound one)."""
        if not items or not peak:
            return
        if peak > 1:  # the worker's throttle found them waiting (it counts the CPU they queue for)
            self.waiting = True
        elif self.waiting is None:  # a throttle kept them one at a time: CPU-bound
            self.waiting = False

    def in_flight_limit(self, n: int) -> int:
        """How many items may be in flight (dispatched and not recorded) at once."""
        if self.waiting is False:
            return self.max_concurrency or max(n, 1)
        return self.bound

    def chunks_limit(self, default: int, early: bool = False) -> int:
        """How many chunks may be in flight: one per worker while items wait (a chunk queued
        behind another would hold items in flight that do not run), else ``default``. With
        ``early`` (items are counted as each finishes, while their chunk runs on), one more: the
        room an item frees is taken at once, as on the SDK's threads, queued behind a chunk."""
        return default if self.waiting is False else self.workers + early

    def flows(self, bulk: bool) -> bool:
        """Whether chunks hold more items than they may run at once (up to ``FLOW`` rounds of
        their places): the items proved to wait (a chunk ran several at once), and only "all done"
        ends the map (``bulk``: an item queued in a chunk is never taken for one started). The
        worker starts the next item in the place of one whose record is committed, with no round
        trip to the coordinator between rounds, and hands back what it did not start after
        ``_inflight.FLOW_SECONDS``. The room left is then counted in places, not items."""
        return bulk and self.waiting is True

    def next_chunk(self, timed_size: int, remaining: int, room: int, chunks: int,
                   flow: bool = False, flowing: int = 0) -> tuple[int, int]:
        """The next chunk's size and how many of its items may run at once: ``timed_size`` is what
        ``ChunkSizer`` gives, ``remaining`` the items neither done nor in flight, ``room`` how
        many more may be in flight (with ``flow``: run), ``chunks`` how many chunks are in flight,
        ``flowing`` how many of them flow. While items wait, the room is shared among the workers
        without a chunk; a flowing chunk holds its worker's part of the items left, shared among
        the workers whose chunk does not hold its own part yet."""
        if self.waiting is False:
            return max(1, min(timed_size, room)), 1
        share = max(1, -(-min(room, remaining) // max(1, self.workers - chunks)))
        if flow and share > 1:  # (one place: items one after another, which a chunk sized by time does)
            return max(share, min(share * FLOW, -(-remaining // max(1, self.workers - flowing)))), share
        return share, share
