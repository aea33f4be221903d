"""Fault attribution (``_faults.FaultLedger``) on its own, without processes: property tests over
sequences of breaks, and the cases of issue 14 as plain examples.

The invariant: an item is charged a crash only when it was running on a worker that died (and, but
for a suspect running alone, only with evidence that the worker died by its own hand); an item that
never ran is never charged; an item is FAILED only after max_crashes charges.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from durablemap._faults import UNEXPLAINED_LOADS, Death, FaultLedger
from durablemap._slots import LOADING


@dataclass
class Break:
    """One break of the pool as a test describes it."""

    running: dict[int, int]  # item -> worker (the workers running an item of the map)
    queued: list[int]  # items in lost chunks that had not started
    dying: set[int]  # workers that died by their own hand (the others were killed by the pool)


breaks = st.builds(
    lambda running, queued, dying: Break(running, [q for q in queued if q not in running],
                                         {w for w in dying if w in running.values()}),
    st.dictionaries(st.integers(0, 40), st.integers(0, 3), max_size=4).map(
        lambda d: {item: worker for item, worker in d.items()
                   if list(d.values()).count(worker) == 1}),  # one item per worker
    st.lists(st.integers(0, 40), max_size=8, unique=True),
    st.sets(st.integers(0, 3), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(breaks, max_size=12), st.integers(1, 4))
def test_only_items_on_dead_workers_are_charged(history: list[Break], max_crashes: int) -> None:
    ledger = FaultLedger(max_crashes)
    deaths_on: dict[int, int] = {}
    failed: set[int] = set()
    for event in history:
        lost = [i for i in [*event.running, *event.queued] if i not in failed]
        solo = len(event.running) == 1 and not event.queued and next(iter(event.running)) in ledger.suspects
        suspects_before = set(ledger.suspects)
        deaths = [Death(item, worker in event.dying) for item, worker in event.running.items()]
        verdict = ledger.pool_broke(lost, deaths, solo)
        own_hand = {item for item, worker in event.running.items() if worker in event.dying}
        for item in event.running:
            if item not in failed:
                deaths_on[item] = deaths_on.get(item, 0) + 1  # its worker died (by its hand or the pool's)
        for item in verdict.charged:
            assert item in event.running, "charged an item that never ran"
            assert item in own_hand or (solo and item in suspects_before), "charged an item without evidence"
        assert not set(verdict.charged) & set(event.queued)
        assert set(verdict.failed) <= set(verdict.charged)
        for item in verdict.failed:
            assert ledger.crashes[item] >= max_crashes
            failed.add(item)
        assert sorted([*verdict.failed, *verdict.rerun]) == sorted(set(lost)), "every lost item is settled"
        for item, count in ledger.crashes.items():
            assert count <= deaths_on.get(item, 0), "charged more crashes than its workers died"
    never_ran = {q for event in history for q in event.queued} - set(deaths_on)
    assert not never_ran & set(ledger.crashes), "an item that never ran was charged"


def test_a_poison_item_beside_slow_ones_is_the_only_one_charged() -> None:
    # Issue 14, 1: item 0 os._exits on worker A; items 1-3 die with the pool on workers B-D.
    ledger = FaultLedger(3)
    for _ in range(3):
        verdict = ledger.pool_broke([0, 1, 2, 3], [Death(0, True), Death(1, False), Death(2, False),
                                                   Death(3, False)], solo=False)
        assert verdict.charged == [0]
    assert verdict.failed == [0]
    assert verdict.rerun == [1, 2, 3]
    assert ledger.crashes == {0: 3}


def test_idle_workers_killed_charge_nothing() -> None:
    # Issue 14, 2: workers killed with no item running; queued chunks fail with the pool.
    ledger = FaultLedger(3)
    for _ in range(8):
        verdict = ledger.pool_broke([0, 1, 2, 3, 4], [], solo=False)
        assert verdict.charged == [] and verdict.failed == []
        assert verdict.rerun == [0, 1, 2, 3, 4]
    assert ledger.crashes == {} and ledger.suspects == set()


def test_a_worker_killed_from_outside_makes_suspects_that_run_alone() -> None:
    # A SIGKILL leaves no evidence: the items running become suspects, charged only when one dies
    # again running alone.
    ledger = FaultLedger(3)
    verdict = ledger.pool_broke([5, 6, 7], [Death(5, False), Death(6, False)], solo=False)
    assert verdict.charged == [] and ledger.suspects == {5, 6}
    assert ledger.pool_broke([5], [Death(5, False)], solo=True).charged == [5]
    assert ledger.crashes == {5: 2}  # this death and the unexplained one it was suspected of
    ledger.recorded([6])  # 6 ran alone and finished: cleared
    assert ledger.suspects == {5} and 6 not in ledger.crashes
    assert ledger.pool_broke([5], [Death(5, False)], solo=True).failed == [5]


def test_workers_dying_as_they_load_the_map_make_it_unloadable_after_max_crashes_breaks_in_a_row() -> None:
    # A worker that dies by its own hand loading the map (its slot names LOADING) dies of the map:
    # no item is charged; max_crashes such breaks in a row and the map cannot run.
    ledger = FaultLedger(3)
    loading = Death(LOADING, True)
    for _ in range(2):
        verdict = ledger.pool_broke([0, 1, 2, 3], [loading, Death(LOADING, False)], solo=False)
        assert verdict.charged == [] and verdict.rerun == [0, 1, 2, 3] and not verdict.unloadable
    ledger.recorded([7])  # a chunk finished: its worker loaded the map, so the count starts again
    assert not ledger.pool_broke([0, 1], [loading], solo=False).unloadable
    assert not ledger.pool_broke([0, 1], [loading], solo=False).unloadable
    assert ledger.pool_broke([0, 1], [loading], solo=False).unloadable
    assert ledger.crashes == {} and ledger.suspects == set()


def test_workers_killed_as_they_load_the_map_make_it_unloadable_only_after_many_breaks() -> None:
    # Without evidence (a SIGKILL from outside, or a C library's exit), and alone: counted apart,
    # up to UNEXPLAINED_LOADS breaks in a row.
    ledger = FaultLedger(1)
    for _ in range(UNEXPLAINED_LOADS - 1):
        assert not ledger.pool_broke([0, 1], [Death(LOADING, False)], solo=False).unloadable
    ledger.recorded([0])
    for _ in range(UNEXPLAINED_LOADS - 1):
        assert not ledger.pool_broke([0, 1], [Death(LOADING, False)], solo=False).unloadable
    assert ledger.pool_broke([0, 1], [Death(LOADING, False)], solo=False).unloadable


def test_a_worker_killed_while_loading_the_map_beside_a_crash_is_not_counted() -> None:
    # loky kills the other workers when one dies: one killed while it loaded the map (no evidence)
    # is no sign against the map; neither is one killed while the coordinator killed another.
    ledger = FaultLedger(1)
    for _ in range(2 * UNEXPLAINED_LOADS):
        assert not ledger.pool_broke([4, 5], [Death(4, True), Death(LOADING, False)], solo=False).unloadable
        assert not ledger.pool_broke([4, 5], [Death(LOADING, False)], solo=False, explained=True).unloadable
    assert ledger.load_deaths == ledger.load_kills == 0


def test_a_timeout_kill_explains_the_break() -> None:
    ledger = FaultLedger(3)
    verdict = ledger.pool_broke([1, 2], [Death(2, False)], solo=False, explained=True)
    assert verdict.charged == [] and ledger.suspects == set()


def test_remote_lost_chunks_make_suspects_charged_only_when_lost_alone() -> None:
    # Dask fails every chunk its lost worker held, the one it ran and those queued behind it: none
    # of them is charged; a suspect lost again running alone is.
    ledger = FaultLedger(3)
    verdict = ledger.chunks_lost([1, 2, 3, 9], [[9], [1, 2, 3]])
    assert verdict.charged == [] and verdict.rerun == [1, 2, 3, 9]
    assert ledger.suspects == {1, 2, 3, 9}
    assert ledger.chunks_lost([9], [[9]], solo=True).charged == [9]
    ledger.recorded([1, 2, 3])
    assert ledger.suspects == {9} and ledger.crashes == {9: 1}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.permutations(range(12)), st.lists(st.integers(1, 3), max_size=3), st.booleans()),
                max_size=12), st.integers(1, 4))
def test_remote_losses_charge_only_a_suspect_lost_alone(history: list[tuple[list[int], list[int], bool]],
                                                        max_crashes: int) -> None:
    ledger = FaultLedger(max_crashes)
    failed: set[int] = set()
    for order, sizes, alone in history:
        items = [i for i in order if i not in failed]
        chunks, start = [], 0
        for size in sizes:  # the chunks the lost worker held (running, or queued behind)
            if items[start:start + size]:
                chunks.append(items[start:start + size])
            start += size
        solo = alone and len(chunks) == 1 and len(chunks[0]) == 1 and chunks[0][0] in ledger.suspects
        suspects_before = set(ledger.suspects)
        lost = [i for chunk in chunks for i in chunk]
        verdict = ledger.chunks_lost(lost, chunks, solo)
        for item in verdict.charged:
            assert solo and chunks == [[item]] and item in suspects_before, "charged without running alone"
        assert sorted([*verdict.failed, *verdict.rerun]) == sorted(lost), "every lost item is settled"
        failed.update(verdict.failed)
        for item in verdict.failed:
            assert ledger.crashes[item] >= max_crashes
