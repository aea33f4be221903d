"""Worker slots: a few bytes of shared memory per worker process saying which item it is running.

The coordinator reads them to find the item that killed a worker (loky only says that *a* worker
died), to time items out, and to sample each worker's memory. A worker writes its slot before and
after every item; a write is one ``struct.pack_into`` on an mmap, well under a microsecond.

    coordinator                         worker (pid P)
    -----------                         --------------
    Slots(dir) ─── creates dir ───────> init_worker(dir): opens dir/P, mmaps 64 bytes
    read_all() <── mmap of dir/P ────── begin(token, index) ... end()
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
from dataclasses import dataclass

__all__ = ["SlotState", "SlotWriter", "Slots"]

# token, index, start (monotonic), running flag; then the peak RSS and the growth (peak minus the
# RSS before it) of the last item this worker measured (see _memory), which begin() leaves alone;
# then the exit mark: 1 + the code of an os._exit called while an item ran (0: none)
_FMT = struct.Struct("<qqdqqqq")
_HEAD = struct.Struct("<qqdq")
_PEAK = struct.Struct("<qq")
_EXIT_WORD = 6
_FATAL = b"Fatal Python error"  # what faulthandler writes to the stack file on a fatal signal
_SIZE = 64


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
        self._words = memoryview(self._map).cast("q")
        self._seconds = memoryview(self._map).cast("d")
        self.started = time.monotonic()

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

    def item_fields(self) -> tuple[memoryview[int], memoryview[float]]:
        """The slot as 8-byte words and as doubles, for a loop over tiny items that names each item
        itself after ``begin`` of the first (a method call per item costs them measurably): the
        item's start goes to double 2, then its index to word 1 (in that order: a reader that sees
        the new index sees its start)."""
        return self._words, self._seconds

    def end(self) -> None:
        """The worker is between items."""
        _HEAD.pack_into(self._map, 0, 0, -1, time.monotonic(), 0)

    def mark_exit(self, code: int) -> None:
        """The worker is exiting by its own hand (``os._exit``): evidence, if it was running an item,
        that this item killed it (see ``_faults``)."""
        if self._words[3]:
            self._words[_EXIT_WORD] = 1 + (code & 0xFF)

    def note_peak(self, peak: int, growth: int) -> None:
        """Publish the peak RSS and growth of the item just measured."""
        _PEAK.pack_into(self._map, _HEAD.size, peak, growth)


class Slots:
    """The coordinator's side: the directory of slots of this process's workers."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def read_all(self) -> list[SlotState]:
        """Every worker slot in the directory, dead workers' included."""
        states = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open(os.path.join(self.directory, name), "rb") as fh:
                    data = fh.read(_FMT.size)
            except OSError:
                continue
            if len(data) < _FMT.size:
                continue
            token, index, started, running, peak, growth, exited = _FMT.unpack(data)
            states.append(SlotState(int(name), token, index, started, bool(running), peak, growth, bool(exited)))
        return states

    def running(self, token: int) -> list[SlotState]:
        """Slots of workers running an item of map ``token``."""
        return [s for s in self.read_all() if s.running and s.token == token]

    def dead_running(self, token: int) -> list[SlotState]:
        """Slots of dead workers that died while running an item of map ``token``; forgets them."""
        dead = [s for s in self.read_all() if not _alive(s.pid)]
        for state in dead:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, str(state.pid)))
        return [s for s in dead if s.running and s.token == token]

    def died_by_own_hand(self, state: SlotState) -> bool:
        """Whether the dead worker of ``state`` left evidence that it killed itself: an os._exit
        mark, or faulthandler's report of a fatal signal (segfault, abort...) in its stack file."""
        if state.exited:
            return True
        try:
            with open(os.path.join(self.directory, f"{state.pid}.stack"), "rb") as fh:
                return _FATAL in fh.read()
        except OSError:
            return False

    def live_pids(self) -> list[int]:
        """The pids of live workers."""
        return [s.pid for s in self.read_all() if _alive(s.pid)]


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
