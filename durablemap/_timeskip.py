"""Virtual time across worker processes: the testing runner's clock moves only when nothing else can run.

The testing runner skips waits and retry delays (``VirtualClock``). The AWS SDK's runner does it the
SDK's way: an item that waits is suspended, the other items run on, and the clock moves only when
every item in flight is suspended. So a map whose early completion depends on which items finish
first (a retry delay in a failing item beside quick successes) ends the same way every time. In a
worker process, durablemap does the same:

    worker (item thread)                             coordinator (``TimeSkip.look``, each loop)
    ────────────────────                             ──────────────────────────────────────────
    VirtualClock.sleep(s) ── await_turn ──> writes   lists the sleepers; when every item of the map
    <slots>/sleep-<token>-<index> (its wake time)    in flight sleeps (or waits, unstarted, behind
    and polls until the file is gone      <───────   busy workers) and nothing was recorded but not
                                                     counted, twice in a row: removes the files of
                                                     the sleepers that wake first

Top-level items of loky workers only (their slots directory is the channel); a wait in the handler
itself, in a nested map's item or on Dask is skipped at once, as before.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from durablemap._early import PEEK_SECONDS
from durablemap._slots import LOADING, Slots

__all__ = ["SETTLE_SECONDS", "TimeSkip", "await_turn", "sleeper_path"]

#: How long the map must look idle before the clock moves: a finished item is recorded within a
#: sample's interval of its end (``_inflight``) and counted within ``PEEK_SECONDS`` of that.
SETTLE_SECONDS = 2 * PEEK_SECONDS + 0.01
_PREFIX = "sleep-"
_POLL_SECONDS = 0.001


def sleeper_path(directory: str, token: int, index: int) -> str:
    """The file that says item ``index`` of map ``token`` sleeps (its content: its wake time)."""
    return os.path.join(directory, f"{_PREFIX}{token}-{index}")


def await_turn(path: str, wake_at: float) -> None:
    """Sleep until the coordinator removes ``path`` (written here, with the wake time)."""
    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{os.getpid()}"
    with open(temporary, "w") as fh:
        fh.write(repr(wake_at))
    os.replace(temporary, path)
    while os.path.exists(path):
        time.sleep(_POLL_SECONDS)


class TimeSkip:
    """The coordinator's side for one map (see the module docstring)."""

    def __init__(self, slots: Slots, token: int, workers: int) -> None:
        self.slots, self.token, self.workers = slots, token, workers
        self._quiet: tuple[float, object] | None = None  # since when, and what the map looked like

    def look(self, now: float, running: Sequence[int], busy: bool,
             recorded: Callable[[list[int]], Sequence[Any]]) -> None:
        """Wake the first sleepers if the map is idle: ``running`` its items in flight, ``busy``
        whether outcomes are being committed, ``recorded`` which of some items have a record."""
        sleepers = self._sleepers(set(running))
        if not sleepers or busy or not self._idle(running, sleepers, recorded):
            self._quiet = None
            return
        seen = (tuple(running), tuple(sorted(sleepers)))
        if self._quiet is None or self._quiet[1] != seen:
            self._quiet = (now, seen)
            return
        if now - self._quiet[0] < SETTLE_SECONDS:
            return
        first = min(sleepers.values())
        for index, wake_at in sleepers.items():
            if wake_at <= first:
                with contextlib.suppress(OSError):
                    os.unlink(sleeper_path(self.slots.directory, self.token, index))
        self._quiet = None

    def _idle(self, running: Sequence[int], sleepers: dict[int, float],
              recorded: Callable[[list[int]], Sequence[Any]]) -> bool:
        """Whether no item of the map can move before a sleeper wakes: every item running in a
        worker sleeps, and the others in flight are either finished (recorded: a map with a
        criterion counts them within ``_early.PEEK_SECONDS``, which changes what ``look`` sees;
        one without counts them with their chunk) or wait, unstarted, behind busy workers."""
        # (a worker loading the map, its slot naming LOADING, is not running an item of it yet)
        states = [s for s in self.slots.read_all(rows=True)
                  if s.running and s.token == self.token and s.index != LOADING]
        started = {s.index for s in states if s.index >= 0}
        if any(index in started and index not in sleepers for index in running):
            return False
        unstarted = [index for index in running if index not in started]
        if unstarted:
            finished = {item.index for item in recorded(unstarted)}
            unstarted = [index for index in unstarted if index not in finished]
        return not unstarted or len({s.pid for s in states}) >= self.workers

    def _sleepers(self, running: set[int]) -> dict[int, float]:
        """The items of the map in flight that sleep, and when each wakes; files of items no longer
        in flight (a worker that died asleep) are removed."""
        prefix = f"{_PREFIX}{self.token}-"
        sleepers: dict[int, float] = {}
        try:
            names = [name for name in os.listdir(self.slots.directory) if name.startswith(prefix)]
        except OSError:
            return sleepers
        for name in names:
            index = int(name[len(prefix):])
            path = os.path.join(self.slots.directory, name)
            try:
                with open(path) as fh:
                    wake_at = float(fh.read())
            except (OSError, ValueError):
                continue
            if index in running:
                sleepers[index] = wake_at
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        return sleepers
