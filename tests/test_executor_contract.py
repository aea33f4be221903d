"""One contract for every executor (``executors._base.Executor``), run against the inline, loky
and Dask executors. Like loky's own test mixin, every test ends with no worker process left behind
(the Dask cluster's processes, shared by the module, are checked when it closes)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from durablemap._clock import Clock
from durablemap._context import DurableContext
from durablemap._errors import ValidationError
from durablemap._records import decode_record, item_key, op_key
from durablemap._state import ExecutionState
from durablemap._store import Store
from durablemap.executors import Executor, InlineExecutor, LokyExecutor
from durablemap.executors._base import ChunkResult, MapSpec

pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:.*[Nn]anny.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*[Pp]ort.*already in use.*:UserWarning"),
]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
            and "resource_tracker" not in " ".join(_cmdline(p))}


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    before = _children()
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        left = [psutil.Process(pid) for pid in _children() - before if psutil.pid_exists(pid)]
        psutil.wait_procs(left, timeout=10)
        assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(params=["inline", "loky", "dask"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    before = _children()
    made: Executor
    if request.param == "inline":
        made = InlineExecutor()
    elif request.param == "loky":
        made = LokyExecutor(workers=2)
    else:
        from durablemap.executors import DaskExecutor
        client = request.getfixturevalue("dask_client")
        before = _children()
        made = DaskExecutor(client)
    yield made
    made.stop_running()
    left = [psutil.Process(pid) for pid in _children() - before if psutil.pid_exists(pid)]
    _gone, alive = psutil.wait_procs(left, timeout=10)
    assert not alive, f"{request.param} left worker processes behind: {[p.pid for p in alive]}"


def square(ctx: DurableContext, item: int, index: int, items: Any) -> int:
    if item < 0:
        raise ValueError(f"negative input {item}")
    return item * item


def _spec(tmp_path: Path, executor: Executor, inputs: list[Any], func: Any = square) -> MapSpec:
    store = tmp_path / "s"
    Store.open(store).close()
    state = ExecutionState(str(store), "e", Clock()).for_worker()
    return MapSpec(int.from_bytes(os.urandom(4), "big"), state, (1,), func, inputs, None, False, "MapIteration",
                   None, key_prefix=op_key("e", (1,)), commit_in_worker=executor.shares_store, context=DurableContext)


def _run(executor: Executor, spec: MapSpec, chunks: list[list[int]]) -> list[ChunkResult]:
    ref = executor.publish(spec)
    try:
        futures = [executor.submit(ref, chunk) for chunk in chunks]
        return [future.result(timeout=60) for future in futures]
    finally:
        executor.unpublish(ref)


def test_the_protocol_is_complete(executor: Executor) -> None:
    assert executor.workers >= 1 and executor.chunk_seconds > 0 and executor.chunks_in_flight() >= 1
    assert isinstance(executor.shares_store, bool)
    assert executor.running(1) == []
    deaths = executor.deaths(1)
    assert deaths is None or deaths == []
    assert executor.is_broken(ValueError("not a break")) is False


def test_chunks_run_and_come_back_as_results(tmp_path: Path, executor: Executor) -> None:
    spec = _spec(tmp_path, executor, list(range(10)))
    results = _run(executor, spec, [[0, 1, 2], [3], [4, 5, 6, 7, 8, 9]])
    assert [list(r.indexes) for r in results] == [[0, 1, 2], [3], [4, 5, 6, 7, 8, 9]]
    assert [v for r in results for v in r.values] == [i * i for i in range(10)]
    assert all(r.committed == executor.shares_store for r in results)
    if executor.shares_store:  # the workers committed the records themselves
        with Store.open(tmp_path / "s", readonly=True) as store:
            raw = store.get(item_key(op_key("e", (1,)), 4))
            assert raw is not None and decode_record(raw).status == "SUCCEEDED"
    else:
        assert sum(len(r.records) for r in results) == 10


def test_a_failing_item_is_a_failed_record_not_a_failed_chunk(tmp_path: Path, executor: Executor) -> None:
    spec = _spec(tmp_path, executor, [1, -2, 3])
    (result,) = _run(executor, spec, [[0, 1, 2]])
    assert result.values == [1, None, 9]
    assert list(result.errors) == [1] and "negative input -2" in result.errors[1]["ErrorMessage"]


def test_an_unpicklable_map_is_a_validation_error(tmp_path: Path, executor: Executor) -> None:
    if isinstance(executor, InlineExecutor):
        pytest.skip("inline items are never pickled")
    spec = _spec(tmp_path, executor, [threading.Lock()])
    with pytest.raises(ValidationError, match=r"inputs\[0\]"):
        executor.publish(spec)
