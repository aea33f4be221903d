"""Workers receive the items of their chunks, not the whole input (issue 17, CONTRACT section 3):
the ``inputs`` an item sees is a read-only sequence over every input that costs its worker nothing
for the items it does not read. Large inputs travel to loky workers as a file of encoded items
(``executors._itemfile``); small ones and cheap ones (a range, a lazy sequence) inside the spec."""

from __future__ import annotations

import glob
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from durablemap import DurableContext, ValidationError, durable_execution
from durablemap.config import MapConfig
from durablemap.executors import _itemfile, _loky
from durablemap.executors._itemfile import ItemFile, UnpicklableItem, write_items
from durablemap.executors._loky import _process_slot_dir

MB = 2**20
BIG = 4 * MB  # bytes per input of the large map


# -- the item file on its own ------------------------------------------------------------------------
@pytest.mark.parametrize("inputs", [
    list(range(10_000)),  # tiny items: many to a block
    [("a" * i, i, None) for i in range(700)],  # growing items: blocks of fewer and fewer
    ["x" * 300_000, "y"] * 6,  # large items: one to a block
    (1, 2.5, "three", b"four", {"five": [5]}),  # a tuple of mixed values
    [None],
])
def test_an_item_file_reads_back_every_item(tmp_path: Path, inputs: Any) -> None:
    shipped = pickle.loads(pickle.dumps(write_items(inputs, str(tmp_path / "items"))))
    assert len(shipped) == len(inputs)
    assert list(shipped) == list(inputs)
    n = len(inputs)
    assert [shipped[i] for i in reversed(range(n))] == list(reversed(inputs))  # backwards: every block again
    assert shipped[-1] == inputs[-1] and shipped[-n] == inputs[0]
    assert shipped[1:7:2] == list(inputs[1:7:2]) and shipped[::-1] == list(inputs)[::-1]
    with pytest.raises(IndexError, match=f"index {n} out of range"):
        shipped[n]
    with pytest.raises(IndexError):
        shipped[-n - 1]
    with pytest.raises(TypeError, match="integers or slices"):
        shipped["0"]


def test_an_item_file_pickles_as_its_path(tmp_path: Path) -> None:
    shipped = write_items(["z" * 1000] * 5000, str(tmp_path / "items"))
    assert len(pickle.dumps(shipped)) < 300
    assert pickle.loads(pickle.dumps(shipped))[4999] == "z" * 1000


def test_an_unpicklable_item_is_named_by_its_index(tmp_path: Path) -> None:
    with pytest.raises(UnpicklableItem, match=r"inputs\[1500\] \(a lock\)"):
        write_items([*range(1500), threading.Lock(), *range(10)], str(tmp_path / "items"))
    assert list(tmp_path.iterdir()) == []  # no half-written file left


MARKER = [0, 0, -1]  # a worker's slot words, as far as decoding goes: word 2 says what is decoded
SEEN: list[int] = []


def refuse(index: int) -> None:
    SEEN.append(MARKER[2])
    raise RuntimeError(f"item {index} cannot be decoded")


class FailsDecoding:
    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[Any, ...]:
        return (refuse, (self.index,))


@pytest.mark.parametrize("bad", [0, 1234, 2999])
def test_a_block_that_fails_to_decode_is_rewritten_an_item_to_a_pickle(
        tmp_path: Path, bad: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoding a block of several items, a worker says which item it was asked for (the
    # coordinator cannot tell which of the block's items killed it). Rewritten by isolate, the
    # block is decoded an item at a time, each named in the slot (word 1) first: what goes wrong
    # there is told of that very item, and the other items decode on their own.
    inputs: list[Any] = [(i, "x") for i in range(3000)]
    inputs[bad] = FailsDecoding(bad)
    path = str(tmp_path / "items")
    write_items(inputs, path)
    monkeypatch.setattr(_itemfile, "_marker", MARKER)
    monkeypatch.setattr(_itemfile, "_marker_word", 2)
    SEEN.clear()
    asked = max(0, bad - 5)
    with pytest.raises(RuntimeError, match=f"item {bad} cannot"):
        ItemFile(path, 3000).read_run(asked, 3000, [0, -1])
    assert [asked] == SEEN or (bad == 0 and SEEN == [-1])  # item 0 is a block of its own
    assert MARKER[2] == -1
    size = os.path.getsize(path)
    assert _itemfile.isolate(path, inputs, bad)
    assert os.path.getsize(path) > size or bad == 0
    size = os.path.getsize(path)
    assert _itemfile.isolate(path, inputs, bad) and os.path.getsize(path) == size  # once is enough
    assert not _itemfile.isolate(path, inputs, 3000)
    naming = [0, -1]
    SEEN.clear()
    with pytest.raises(RuntimeError, match=f"item {bad} cannot"):
        ItemFile(path, 3000).read_run(asked, 3000, naming)
    assert naming[1] == bad and SEEN == [-1]
    assert ItemFile(path, 3000).read_run(bad + 1, 3000, naming) == inputs[bad + 1:]
    shipped = ItemFile(path, 3000)
    assert [shipped[i] for i in range(3000) if i != bad] == [x for i, x in enumerate(inputs) if i != bad]


# -- through context.map on loky workers -------------------------------------------------------------
def look(ctx: DurableContext, item: Any, index: int, inputs: Any) -> Any:
    """What an item sees of ``inputs``: its own item, its neighbours, the length, a slice."""
    assert inputs[index] == item
    return [len(inputs), inputs[index - 1], inputs[-1], inputs[index:index + 2], type(inputs).__name__]


@durable_execution
def looking(event: dict[str, Any], context: DurableContext) -> Any:
    return context.map(event["inputs"], look).get_results()


@pytest.mark.parametrize("n", [5, 3000])
def test_items_see_every_input_through_the_sequence_they_get(tmp_path: Path, n: int) -> None:
    inputs = [f"item-{i}" for i in range(n)]
    before = set(glob.glob(os.path.join(_process_slot_dir(), "inputs-*")))
    results = looking.run({"inputs": inputs}, store=tmp_path / "s", workers=2)
    assert results == [[n, inputs[i - 1], inputs[-1], inputs[i:i + 2], "ItemFile" if n > 1024 else "list"]
                       for i in range(n)]
    assert set(glob.glob(os.path.join(_process_slot_dir(), "inputs-*"))) <= before  # removed with the map


@durable_execution
def unpicklable_far_in(event: Any, context: DurableContext) -> Any:
    return context.map([*range(2000), threading.Lock()], look)


def test_an_unpicklable_input_of_a_large_map_is_named_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"inputs\[2000\] \(a lock\).*pickle"):
        unpicklable_far_in.run(None, store=tmp_path / "s", workers=2)


def own_item_rss(ctx: DurableContext, item: str, index: int, inputs: Any) -> int:
    """Read this item only (all of it), then say how much memory this worker holds."""
    assert item.count("x") == len(item) - 8
    return int(psutil.Process().memory_info().rss)


@durable_execution
def big_and_small(event: dict[str, Any], context: DurableContext) -> dict[str, int]:
    n, config = event["n"], MapConfig(max_concurrency=2)
    small = context.map([f"{i:08d}" + "x" * 1000 for i in range(n)], own_item_rss, name="small", config=config)
    big = context.map([f"{i:08d}" + "x" * (BIG - 8) for i in range(n)], own_item_rss, name="big", config=config)
    return {"small": max(small.get_results()), "big": max(big.get_results())}


def test_a_worker_holds_the_items_it_reads_not_the_whole_input(tmp_path: Path) -> None:
    """Two maps on the same two workers, each item reading only its own input: one over 32 inputs
    of 1 KB, one over 32 of 4 MB (128 MB in all). A worker that held the whole input would grow by
    128 MB between them; it grows by what it reads at once, an item or two."""
    n = 32
    peaks = big_and_small.run({"n": n}, store=tmp_path / "s", workers=2)
    assert peaks["big"] - peaks["small"] < 10 * BIG, (peaks, n * BIG)


# -- input drift when the inputs travel as an item file ------------------------------------------------
def test_drift_is_detected_when_inputs_travel_as_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_faults import test_changed_inputs_are_detected_on_resume

    written: list[int] = []
    real = _loky.write_items

    def counted(inputs: Any, path: str) -> ItemFile:
        written.append(len(inputs))
        return real(inputs, path)

    monkeypatch.setattr(_loky, "_SMALL_INPUTS", 0)
    monkeypatch.setattr(_loky, "write_items", counted)
    test_changed_inputs_are_detected_on_resume(tmp_path)
    assert written and set(written) <= {6, 7}


# -- a remote chunk's inputs: its own items, and the rest read from elsewhere ---------------------------
@pytest.mark.parametrize("indexes", [range(10, 20), [19, 3, 10, 11]], ids=["run", "list"])
def test_a_remote_chunk_reads_its_own_items_first_and_the_rest_elsewhere(indexes: Any) -> None:
    from durablemap.executors._journal import ChunkInputs

    everything = [f"item-{i}" for i in range(30)]
    reads: list[int] = []

    class Elsewhere(list):  # type: ignore[type-arg]
        def __getitem__(self, index: Any) -> Any:
            reads.append(index)
            return super().__getitem__(index)

    own = [f"own-{i}" for i in indexes]
    inputs = ChunkInputs(Elsewhere(everything), indexes, own)
    assert len(inputs) == 30
    assert [inputs[i] for i in indexes] == own and not reads
    assert inputs[-1] == inputs[29] == "item-29" and reads == [29, 29]
    assert inputs[9:12] == ["item-9", *(inputs[10], inputs[11])]
    with pytest.raises(IndexError, match="out of range"):
        inputs[30]
    with pytest.raises(TypeError):
        inputs["1"]  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="came with 1 inputs"):
        ChunkInputs(everything, indexes, own[:1])
