"""Fault attribution: which item killed a worker, what runs again, what is FAILED. Pure: no
processes, no clock, no store; the coordinator feeds it what the executor saw and applies the verdict.

The invariant (issue 14), checked by property tests over sequences of breaks:

    an item is charged a crash only when it was running on a worker that died by its own hand
    (or was killed by durablemap for it), and an item that never ran is never charged.

Why "by its own hand": loky takes the whole pool down when one worker dies, so every worker that
was running an item dies, and each one's slot still names its item. A dead worker says nothing of
why it died, so the worker side leaves evidence: an ``os._exit`` marks its slot first, a fatal
signal (segfault, abort) makes faulthandler write "Fatal Python error" to its stack file, and the
coordinator knows the workers it killed itself (memory hard limit, item timeout). A worker killed
with SIGKILL (the OOM killer, an operator, the item itself) leaves no evidence: its item is then
*suspect*, not charged, and runs again alone. When a suspect running alone (nothing else of the map
in flight) dies again without evidence, it is charged, together with the unexplained deaths it was
suspected of (its worker did die each time); a suspect that finishes is cleared of them. A break
with no item running (idle workers killed) charges nothing.

A worker that dies while loading the map (unpickling its function, configuration or inputs, before
any of its items) dies of the map, not of an item. After ``max_crashes`` breaks in a row in which a
worker died loading the map by its own hand, no chunk of the map finishing in between, the map
cannot run on these workers (``Verdict.unloadable``); so too after ``UNEXPLAINED_LOADS`` breaks in a
row in which one died there without evidence and alone (no other worker died running an item, and
durablemap killed none): a C library's ``exit`` leaves no evidence, but neither does a SIGKILL from
outside, which the higher count leaves room for.

Remote executors (Dask) fail only the chunks their lost workers held, running or queued behind: the
items of a lost chunk all become suspects, to run one by one; a suspect lost running alone is charged.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from durablemap._slots import LOADING

__all__ = ["UNEXPLAINED_LOADS", "Death", "FaultLedger", "Verdict"]

UNEXPLAINED_LOADS = 10  # breaks in a row with a worker dead loading the map, alone, without evidence


@dataclass(frozen=True)
class Death:
    """A worker that died while running an item of the map."""

    index: int  # the item its slot names
    own_hand: bool  # evidence that the worker died of what it ran (os._exit, fatal signal, killed by us)
    pid: int = 0


@dataclass
class Verdict:
    """What to do with the items lost in one break."""

    charged: list[int] = field(default_factory=list)  # crash counted against these
    failed: list[int] = field(default_factory=list)  # charged up to max_crashes: record them FAILED
    rerun: list[int] = field(default_factory=list)  # back to the queue (charged ones below the limit too)
    unloadable: bool = False  # workers died loading the map max_crashes times: it cannot run


@dataclass
class FaultLedger:
    """The crash counts of one map's items and the suspects waiting to run alone."""

    max_crashes: int
    crashes: dict[int, int] = field(default_factory=dict)
    suspects: set[int] = field(default_factory=set)
    unexplained: dict[int, int] = field(default_factory=dict)  # suspect -> deaths not charged yet
    load_deaths: int = 0  # breaks in a row in which a worker died by its own hand loading the map
    load_kills: int = 0  # ... or died loading it without evidence, alone

    def pool_broke(self, lost: Iterable[int], deaths: Iterable[Death], solo: bool,
                   explained: bool = False) -> Verdict:
        """A pool that fails every chunk in flight broke (loky). ``lost``: the items in flight whose
        outcome is not recorded; ``deaths``: the workers that died running an item; ``solo``: the
        round ran one suspect with nothing else of the map in flight; ``explained``: the
        coordinator itself killed a worker (an item past its timeout), which explains the break."""
        lost_set = set(lost)
        deaths = list(deaths)
        loading = [d for d in deaths if d.index == LOADING]
        if any(d.own_hand for d in loading):
            self.load_deaths += 1
        elif loading and not explained and len(loading) == len(deaths):
            self.load_kills += 1
        deaths = [d for d in deaths if d.index in lost_set]  # a recorded item is done, whatever killed it
        charged = {d.index for d in deaths if d.own_hand}
        if not charged and solo and not explained:
            charged = {d.index for d in deaths if d.index in self.suspects}
        if not charged and not explained:
            for death in deaths:
                self.suspects.add(death.index)
                self.unexplained[death.index] = self.unexplained.get(death.index, 0) + 1
        verdict = self._verdict(lost_set, charged)
        verdict.unloadable = self.load_deaths >= self.max_crashes or self.load_kills >= UNEXPLAINED_LOADS
        return verdict

    def chunks_lost(self, lost: Iterable[int], culprit_chunks: Iterable[Collection[int]],
                    solo: bool = False) -> Verdict:
        """A remote executor lost the chunks ``culprit_chunks`` with the worker holding them (the
        other ``lost`` items were only cancelled along). A worker holds a chunk it runs and chunks
        queued behind it, and Dask does not say which one ran: their items become suspects, to run
        one by one. A suspect lost running alone (``solo``: nothing else of the map in flight) was
        running on that worker: it is charged."""
        charged: set[int] = set()
        for chunk in culprit_chunks:
            if solo and len(chunk) == 1:
                charged.update(chunk)
            else:
                self.suspects.update(chunk)
        return self._verdict(set(lost), charged & set(lost))

    def timed_out(self, index: int) -> None:
        """An item killed for its timeout is FAILED at once: it is no longer a suspect."""
        self.suspects.discard(index)
        self.unexplained.pop(index, None)

    def recorded(self, indexes: Iterable[int]) -> None:
        """Items whose outcome was recorded are no longer suspects; their chunk's worker loaded the map."""
        self.load_deaths = self.load_kills = 0
        if self.suspects:
            for index in indexes:
                self.suspects.discard(index)
                self.unexplained.pop(index, None)

    def _verdict(self, lost: set[int], charged: set[int]) -> Verdict:
        verdict = Verdict(charged=sorted(charged))
        for index in sorted(lost):
            if index in charged:
                count = self.crashes.get(index, 0) + 1 + self.unexplained.pop(index, 0)
                self.crashes[index] = count
                if count >= self.max_crashes:
                    verdict.failed.append(index)
                    self.suspects.discard(index)
                    continue
                self.suspects.add(index)  # it may have been unlucky: next time it runs alone
            verdict.rerun.append(index)
        return verdict


def seed(max_crashes: int, crashes: Mapping[int, int]) -> FaultLedger:
    """A ledger holding the crash counts earlier runs recorded."""
    return FaultLedger(max_crashes, dict(crashes))
