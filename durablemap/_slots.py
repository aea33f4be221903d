"""Worker slots: a few bytes of shared memory per worker process saying which item it is running.

The coordinator reads them to find the item that killed a worker (loky only says that *a* worker
died), to time items out, and to sample each worker's memory. A worker writes its slot before and
after every item; a write is one ``struct.pack_into`` on an mmap, well under a microsecond.

    coordinator                         worker (pid P)
    -----------                         --------------
    Slots(dir) ─── creates dir ───────> init_worker(dir): opens dir/P, mmaps the slot
    read_all() <── mmap of dir/P ────── begin(token, index) ... end()           (one item at a time)
    running()  <── rows of dir/P ────── begin_many(token); row = take_row(index, thread) ...
                                        free_row(row); end()                    (several at a time)

A worker running several items at once (threads, an event loop: see ``_inflight``) marks its header
"many" and gives each item in flight a row of its own: its index, its start, and the thread running
it, so that a crash, a timeout or an ``os._exit`` is told item by item.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
import threading
import time
from dataclasses import dataclass

__all__ = ["LOADING", "ROWS", "SlotState", "SlotWriter", "Slots", "thread_stack"]

# token, index, start (monotonic), running flag; then the peak RSS and the growth (peak minus the
# RSS before it) of the last item this worker measured (see _memory), which begin() leaves alone;
# then the exit mark: 1 + the code of an os._exit called while an item ran (0: none)
_FMT = struct.Struct("<qqdqqqq")
_HEAD = struct.Struct("<qqdq")
_PEAK = struct.Struct("<qq")
_EXIT_WORD = 6
_CULPRIT_WORD = 7  # with several items in flight: the index of the item that called os._exit
_DECODING_WORD = 8  # the item whose input's block is being decoded, -1: none (see executors._itemfile)
_FATAL = b"Fatal Python error"  # what faulthandler writes to the stack file on a fatal signal
_HEADER = 128
_ROW = struct.Struct("<qdq")  # index (-1: free), start (monotonic), thread ident
ROWS = 4096  # the most items one worker runs at once
_SIZE = _HEADER + ROWS * _ROW.size
_MANY = 2  # the running flag of a worker with several items in flight (rows)
LOADING = -2  # the index a slot names while its worker loads a map (its function, config, inputs)


@dataclass(frozen=True)
class SlotState:
    """What one worker's slot says."""

    pid: int
    token: int
    index: int
    started: float
    running: bool
    peak_rss: int
    growth: int
    exited: bool = False  # the worker called os._exit while running its item
    thread: int = 0  # the ident of the thread running the item (several items in flight), else 0
    culprit: int = -1  # several in flight: the index of the item that called os._exit (-1: none)
    decoding: int = -1  # the item whose input's block the worker was decoding (-1: none)


class SlotWriter:
    """The worker's side: one mmap'd slot named after the worker's pid."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, str(os.getpid()))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, _SIZE)
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        # The same bytes seen as 8-byte integers and as doubles, for cheap one-field stores.
        self._map[_HEADER:] = b"\xff" * (_SIZE - _HEADER)  # every row free: index -1
        self._words = memoryview(self._map).cast("q")
        self._seconds = memoryview(self._map).cast("d")
        self._words[_DECODING_WORD] = -1
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._free: list[int] = []
        self._rows = 0  # rows handed out in this "many" period

    def begin(self, token: int, index: int) -> float:
        """The worker starts running item ``index`` of map ``token``; returns the start time.

        Three stores into the mapped memory rather than one ``pack_into``: this runs once per item,
        and the token and running flag rarely change."""
        self.started = now = time.monotonic()
        words = self._words
        if words[0] != token or not words[3]:
            _HEAD.pack_into(self._map, 0, token, index, now, 1)
        else:
            words[1] = index
            self._seconds[2] = now
        return now

    def held(self, token: int) -> bool:
        """Whether the coordinator asked that no more items of map ``token`` start (``Slots.hold``)."""
        return os.path.exists(_hold_path(os.path.dirname(self.path), token))

    def current(self) -> tuple[int, int]:
        """The map token and the item this worker runs (index -1: none, or several at once)."""
        words = self._words
        return words[0], words[1] if words[3] == 1 else -1

    def item_fields(self) -> tuple[memoryview[int], memoryview[float]]:
        """The slot as 8-byte words and as doubles, for a loop over tiny items that names each item
        itself after ``begin`` of the first (a method call per item costs them measurably): the
        item's start goes to double 2, then its index to word 1 (in that order: a reader that sees
        the new index sees its start)."""
        return self._words, self._seconds

    def decoding_field(self) -> tuple[memoryview[int], int]:
        """Where the worker says which item's input it is decoding, when decoding it could kill the
        worker and is not the item's doing (see ``executors._itemfile``): ``words[word]``."""
        return self._words, _DECODING_WORD

    def end(self) -> None:
        """The worker is between items."""
        _HEAD.pack_into(self._map, 0, 0, -1, time.monotonic(), 0)

    def begin_many(self, token: int) -> None:
        """The worker starts running several items of map ``token`` at once, each in a row."""
        with self._lock:
            self._free, self._rows = [], 0
            _HEAD.pack_into(self._map, 0, token, -1, time.monotonic(), _MANY)
            self._words[_CULPRIT_WORD] = -1

    def take_row(self, index: int, thread: int) -> tuple[int, float]:
        """Item ``index`` starts, run by ``thread``: its row, and its start time."""
        now = time.monotonic()
        with self._lock:
            row = self._free.pop() if self._free else self._rows
            if row == self._rows:
                if row >= ROWS:
                    raise RuntimeError(f"more than {ROWS} items in flight in one worker")
                self._rows += 1
        base = (_HEADER + row * _ROW.size) // 8
        self._seconds[base + 1] = now
        self._words[base + 2] = thread
        self._words[base] = index  # last: a reader sees a complete row or a free one
        return row, now

    def set_thread(self, row: int, thread: int) -> None:
        """The item of ``row`` runs on ``thread`` (known once its thread picked it up)."""
        self._words[(_HEADER + row * _ROW.size) // 8 + 2] = thread

    def free_row(self, row: int) -> None:
        """The item of ``row`` is done."""
        self._words[(_HEADER + row * _ROW.size) // 8] = -1
        with self._lock:
            self._free.append(row)

    def end_many(self) -> None:
        """No item is in flight any more: every row is free, the worker is between chunks."""
        with self._lock:
            for row in range(self._rows):
                self._words[(_HEADER + row * _ROW.size) // 8] = -1
            self._free, self._rows = [], 0
        self.end()

    def mark_exit(self, code: int, index: int = -1) -> None:
        """The worker is exiting by its own hand (``os._exit``): evidence, if it was running an item,
        that this item killed it (see ``_faults``); ``index``: the item that called it, when several
        are in flight."""
        if self._words[3]:
            self._words[_CULPRIT_WORD] = index
            self._words[_EXIT_WORD] = 1 + (code & 0xFF)

    def note_peak(self, peak: int, growth: int) -> None:
        """Publish the peak RSS and growth of the item just measured."""
        _PEAK.pack_into(self._map, _HEAD.size, peak, growth)


class Slots:
    """The coordinator's side: the directory of slots of this process's workers."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def hold(self, token: int) -> None:
        """Ask the workers to start no more items of map ``token`` (an interrupt): a chunk holding
        more items than it runs at once hands back those it has not started (see ``_inflight``)."""
        with contextlib.suppress(OSError):
            open(_hold_path(self.directory, token), "wb").close()

    def read_all(self, rows: bool = False) -> list[SlotState]:
        """Every worker slot in the directory, dead workers' included: one state per worker, or
        with ``rows``, one per item in flight of a worker running several at once."""
        states: list[SlotState] = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open(os.path.join(self.directory, name), "rb") as fh:
                    data = fh.read(_SIZE if rows else _HEADER)
            except OSError:
                continue
            if len(data) < _HEADER:
                continue
            token, index, started, running, peak, growth, exited = _FMT.unpack_from(data)
            decoding = struct.unpack_from("<q", data, _DECODING_WORD * 8)[0]
            state = SlotState(int(name), token, index, started, bool(running), peak, growth, bool(exited),
                              decoding=decoding)
            if rows and running == _MANY:
                culprit = struct.unpack_from("<q", data, _CULPRIT_WORD * 8)[0] if exited else -1
                states.extend(_rows_of(state, data, culprit))
            else:
                states.append(state)
        return states

    def running(self, token: int) -> list[SlotState]:
        """The items of map ``token`` running now, one state per item."""
        return [s for s in self.read_all(rows=True) if s.running and s.token == token and s.index >= 0]

    def dead_running(self, token: int) -> list[SlotState]:
        """The items of map ``token`` that dead workers were running when they died, one state per
        item, and the dead workers that were loading that map (index ``LOADING``); forgets those
        workers."""
        dead = [s for s in self.read_all(rows=True) if not _alive(s.pid)]
        for pid in {state.pid for state in dead}:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, str(pid)))
        return [s for s in dead if s.running and s.token == token and (s.index >= 0 or s.index == LOADING)]

    def died_by_own_hand(self, state: SlotState) -> bool:
        """Whether the item of ``state`` killed its dead worker, by the evidence the worker left: an
        os._exit mark (naming the item, when several were in flight), or faulthandler's report of a
        fatal signal (segfault, abort...) in its stack file (in the item's own thread, when several
        were in flight)."""
        if state.exited and (not state.thread or state.culprit == state.index):
            return True
        try:
            with open(os.path.join(self.directory, f"{state.pid}.stack"), "rb") as fh:
                report = fh.read()
        except OSError:
            return False
        at = report.rfind(_FATAL)
        if at < 0:
            return False
        return not state.thread or _faulting_thread(report[at:]) == state.thread

    def live_pids(self) -> list[int]:
        """The pids of live workers."""
        return [s.pid for s in self.read_all() if _alive(s.pid)]


def _hold_path(directory: str, token: int) -> str:
    return os.path.join(directory, f"hold-{token}")


def _rows_of(header: SlotState, data: bytes, culprit: int) -> list[SlotState]:
    """One state per busy row of a worker running several items at once."""
    states = []
    for offset in range(_HEADER, len(data) - _ROW.size + 1, _ROW.size):
        index, started, thread = _ROW.unpack_from(data, offset)
        if index >= 0:
            states.append(SlotState(header.pid, header.token, index, started, True, header.peak_rss,
                                    header.growth, header.exited, thread, culprit, header.decoding))
    return states


def thread_stack(dump: str, thread: int) -> str:
    """The part of a faulthandler dump of all threads that shows ``thread`` (the whole dump when the
    thread is not known or not found)."""
    if thread <= 0:
        return dump
    found = re.search(rf"^(?:Current thread|Thread) 0x0*{thread:x} .*?(?:\n\n|\Z)", dump, re.M | re.S)
    return found.group(0).rstrip("\n") + "\n" if found else dump


def _faulting_thread(report: bytes) -> int:
    """The ident of the thread faulthandler names as current in a fatal error report (0: none)."""
    match = re.search(rb"Current thread (0x[0-9a-fA-F]+)", report)
    return int(match.group(1), 16) if match else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a dead child not yet reaped by loky is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ", 1)[-1][:1] != b"Z"
    except OSError:
        return False
