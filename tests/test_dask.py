"""The Dask executor on a LocalCluster with worker processes: the seed's examples give the same
BatchResults as on loky, a lost worker's items run again, steps inside items travel back to the
store, and a SIGKILLed coordinator resumes from the store."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import dask
import psutil
import pytest

from durablemap import DurableContext, StepContext, ValidationError, durable_execution, durable_step
from durablemap._records import decode_record
from durablemap._store import Store, decode_key, execution_prefix
from durablemap.config import CompletionConfig, MapConfig

distributed = pytest.importorskip("distributed")
from durablemap.executors import DaskExecutor  # noqa: E402  (after the importorskip)

pytestmark = [
    # distributed's cluster shutdown can leave a socket or a loop resource for the garbage collector
    # and warns about it, and about a restarted nanny; neither is durablemap's behaviour.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:.*[Nn]anny.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*[Pp]ort.*already in use.*:UserWarning"),
]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One cluster for the module. allowed-failures=0: a worker death reaches durablemap as
    KilledWorker at once, instead of Dask retrying the task on its own first."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    # The cluster's nannies and workers (not multiprocessing's resource tracker, which lives as long
    # as this process whatever the cluster does, nor an earlier test's idle loky workers).
    pids = {p.pid for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline()) and p.pid not in before}
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid in pids and p.is_running()]
    psutil.wait_procs(left, timeout=10)
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def executor(client: Any) -> DaskExecutor:
    return DaskExecutor(client)


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)  # workers cannot import a file loaded by path
    return module


# -- the seed's examples --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["01_square", "02_validate_email", "03_configured_map",
                                  "04_max_concurrency", "06_steps_in_items", "07_inventory"])
def test_examples_give_the_same_result_on_loky_and_dask(tmp_path: Path, executor: DaskExecutor, name: str) -> None:
    handler = load_example(name).handler
    on_loky = handler.run({}, store=tmp_path / "loky", workers=2, progress=False)
    on_dask = handler.run({}, store=tmp_path / "dask", executor=executor, progress=False)
    assert on_dask == on_loky
    # A second run replays from the store, whichever executor ran the first.
    assert handler.run({}, store=tmp_path / "dask", progress=False) == on_loky


def test_completion_criteria_example_agrees_where_it_is_deterministic(tmp_path: Path, executor: DaskExecutor) -> None:
    # Which items are still in flight when 15 have succeeded depends on timing; what finished must agree.
    handler = load_example("05_completion_criteria").handler
    on_loky = handler.run({}, store=tmp_path / "loky", workers=2, progress=False)
    on_dask = handler.run({}, store=tmp_path / "dask", executor=executor, progress=False)
    assert on_dask["completionReason"] in {"MIN_SUCCESSFUL_REACHED", "ALL_COMPLETED"}
    finished = {e["index"]: e for e in on_loky["all"] if e["status"] != "STARTED"}
    for entry in on_dask["all"]:
        if entry["status"] != "STARTED" and entry["index"] in finished:
            assert entry == finished[entry["index"]]
    # Items 0, 7 and 14 raise: each that finished is FAILED; with several items in flight per worker,
    # one of them may still be running (STARTED) or not started when the 15th success completes the map.
    status = {e["index"]: e["status"] for e in on_dask["all"]}
    assert {i for i, s in status.items() if s == "FAILED"} <= {0, 7, 14}
    assert all(status.get(i, "STARTED") in {"FAILED", "STARTED"} for i in (0, 7, 14))
    assert sum(s == "SUCCEEDED" for s in status.values()) >= 15


# -- a lost worker ----------------------------------------------------------------------------------

def exit_once(context: DurableContext, item: tuple[str, int], index: int, items: list[Any]) -> int:
    directory = Path(item[0])
    with open(directory / "ran.log", "a") as log:
        log.write(f"{index}\n")
    if index == 5 and not (directory / "crashed").exists():
        (directory / "crashed").touch()
        os._exit(3)
    return item[1] * 10


def test_killed_worker_reruns_its_items(tmp_path: Path, executor: DaskExecutor) -> None:
    pids_before = set(executor.worker_pids())

    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        return context.map([(str(tmp_path), i) for i in range(20)], exit_once).to_dict()

    result = handler.run(None, store=tmp_path / "store", executor=executor, progress=False)
    assert (tmp_path / "crashed").exists()
    assert [e["status"] for e in result["all"]] == ["SUCCEEDED"] * 20
    assert [e["result"] for e in result["all"]] == [i * 10 for i in range(20)]
    ran = [int(line) for line in (tmp_path / "ran.log").read_text().split()]
    assert ran.count(5) == 2
    assert set(executor.worker_pids()) != pids_before  # the nanny replaced the dead worker


def always_exits(context: DurableContext, item: tuple[str, int], index: int, items: list[Any]) -> int:
    if index == 5:
        os._exit(3)
    time.sleep(0.05)  # slow enough that several items share a worker's chunks in flight
    return item[1] * 10


def test_a_poison_item_is_found_and_fails_alone(tmp_path: Path, executor: DaskExecutor) -> None:
    """Dask fails only the chunk of the lost worker: its items run one by one until the one that
    kills its worker is found; it ends FAILED with WorkerCrashedError and every other item succeeds."""

    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        return context.map([(str(tmp_path), i) for i in range(12)], always_exits,
                           config=MapConfig(max_worker_crashes=2)).to_dict()

    result = handler.run(None, store=tmp_path / "store", executor=executor, progress=False)
    statuses = {e["index"]: e["status"] for e in result["all"]}
    assert statuses.pop(5) == "FAILED"
    assert set(statuses.values()) == {"SUCCEEDED"}
    assert result["all"][5]["error"]["ErrorType"] == "durablemap.WorkerCrashedError"


def stuck_in_here(seconds: float) -> None:
    time.sleep(seconds)


def hangs_on_two(context: DurableContext, item: int, index: int, items: list[int]) -> int:
    if index == 2:
        stuck_in_here(600)
    return item * 10


def test_item_timeout_holds_on_dask(tmp_path: Path, executor: DaskExecutor) -> None:
    """A hung item is FAILED with ItemTimeoutError and its stack; the map goes on."""

    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        return context.map(list(range(6)), hangs_on_two, config=MapConfig(item_timeout=1.0)).to_dict()

    result = handler.run(None, store=tmp_path / "store", executor=executor, progress=False)
    statuses = [e["status"] for e in result["all"]]
    assert statuses == ["SUCCEEDED", "SUCCEEDED", "FAILED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]
    error = result["all"][2]["error"]
    assert error["ErrorType"] == "durablemap.ItemTimeoutError"
    assert "stuck_in_here" in error["ErrorData"]


# -- steps inside items -----------------------------------------------------------------------------

@durable_step
def fetch(step_context: StepContext, directory: str, item: int) -> int:
    with open(Path(directory) / "fetch.log", "a") as log:
        log.write(f"{item}\n")
    return item + 100


@durable_step
def check(step_context: StepContext, directory: str, value: int) -> int:
    if value == 103 and not (Path(directory) / "fixed").exists():
        raise ValueError("not yet")
    return value * 2


def test_steps_inside_items_are_committed_and_replay_on_retry(tmp_path: Path, executor: DaskExecutor) -> None:
    directory = str(tmp_path)
    from durablemap.config import StepConfig
    from durablemap.retries import RetryStrategyConfig, create_retry_strategy

    no_retry = StepConfig(retry_strategy=create_retry_strategy(RetryStrategyConfig(max_attempts=1)))

    def item_func(context: DurableContext, item: int, index: int, items: list[int]) -> int:
        value = context.step(fetch(directory, item))
        return context.step(check(directory, value), config=no_retry)

    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        return context.map(list(range(6)), item_func, name="steps").to_dict()

    store = tmp_path / "store"
    first = handler.run(None, store=store, execution_id="steps", executor=executor, progress=False)
    assert [e["status"] for e in first["all"]] == ["SUCCEEDED"] * 3 + ["FAILED"] + ["SUCCEEDED"] * 2
    with Store.open(store, readonly=True) as reader:
        steps = [decode_key(k)[1] for k, v in reader.scan(execution_prefix("steps"))
                 if len(decode_key(k)[1]) == 3 and decode_record(v).status == "SUCCEEDED"]
    assert len(steps) == 11  # two per item, but item 3's second step failed: the journal came back

    (tmp_path / "fixed").touch()
    second = handler.run(None, store=store, execution_id="steps", executor=executor, retry_failed=True,
                         progress=False)
    assert [e["result"] for e in second["all"]] == [(i + 100) * 2 for i in range(6)]
    fetched = [int(line) for line in (tmp_path / "fetch.log").read_text().split()]
    assert sorted(fetched) == list(range(6))  # item 3's first step replayed from the store on the worker


def nested_retry_handler(directory: str) -> Any:
    """An outer map whose items each run a nested map of 3 items; nested item 1 raises while the
    marker file exists, and the outer item raises the nested map's failure (throw_if_error)."""

    def inner(context: DurableContext, item: int, index: int, items: list[int]) -> int:
        if index == 1 and (Path(directory) / "marker").exists():
            raise ValueError("marker present")
        return item * 10

    def outer(context: DurableContext, item: int, index: int, items: list[int]) -> int:
        nested = context.map([item, item + 1, item + 2], inner, name="inner")
        nested.throw_if_error()
        return sum(nested.get_results())

    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        return context.map([0, 10, 20], outer, name="outer").to_dict()

    return handler


def run_nested_retry(tmp_path: Path, **run: Any) -> None:
    """Issue 13's defect: retry_failed=True re-runs an item whose nested map recorded a failure,
    and once the cause is gone it SUCCEEDS (the journal of a remote worker holds what replay reads)."""
    (tmp_path / "marker").touch()
    handler = nested_retry_handler(str(tmp_path))
    store = tmp_path / "store"
    first = handler.run(None, store=store, execution_id="nested", progress=False, **run)
    assert [e["status"] for e in first["all"]] == ["FAILED"] * 3
    assert all("marker present" in e["error"]["ErrorMessage"] for e in first["all"])
    (tmp_path / "marker").unlink()
    second = handler.run(None, store=store, execution_id="nested", retry_failed=True, progress=False, **run)
    assert [e["status"] for e in second["all"]] == ["SUCCEEDED"] * 3
    assert [e["result"] for e in second["all"]] == [sum(10 * (x + k) for k in range(3)) for x in (0, 10, 20)]


def test_retry_failed_reruns_an_item_whose_nested_map_failed(tmp_path: Path, executor: DaskExecutor) -> None:
    run_nested_retry(tmp_path, executor=executor)


def test_retry_failed_reruns_an_item_whose_nested_map_failed_on_loky(tmp_path: Path) -> None:
    run_nested_retry(tmp_path, workers=2)


# -- the map's contract on Dask ---------------------------------------------------------------------

def test_unpicklable_inputs_raise_validation_error(tmp_path: Path, executor: DaskExecutor) -> None:
    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        return context.map([1, threading.Lock()], exit_once)

    with pytest.raises(ValidationError, match=r"inputs\[1\].*pickle"):
        handler.run(None, store=tmp_path / "store", executor=executor, progress=False)


def slow_square(context: DurableContext, item: int, index: int, items: list[int]) -> int:
    if index > 0:
        time.sleep(0.5)
    return item * item


def test_early_completion_returns_without_waiting_for_the_rest(tmp_path: Path, executor: DaskExecutor) -> None:
    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        config = MapConfig(max_concurrency=10, completion_config=CompletionConfig.first_successful())
        return context.map(list(range(40)), slow_square, config=config).to_dict()

    result = handler.run(None, store=tmp_path / "store", executor=executor, progress=False)
    assert result["completionReason"] == "MIN_SUCCESSFUL_REACHED"
    statuses = [e["status"] for e in result["all"]]
    assert statuses.count("SUCCEEDED") >= 1
    assert len(statuses) < 40  # items never started are absent


# -- a SIGKILLed coordinator ------------------------------------------------------------------------

SCRIPT = textwrap.dedent("""
    import sys, time
    from distributed import Client, LocalCluster
    from durablemap import durable_execution
    from durablemap.executors import DaskExecutor

    LOG = sys.argv[2]

    def work(context, item, index, items):
        deadline = time.perf_counter() + 0.02
        while time.perf_counter() < deadline:
            pass
        with open(LOG, "a") as log:
            log.write(f"{index}\\n")
        return item * 3

    @durable_execution
    def handler(event, context):
        return context.map(list(range(300)), work, name="work").to_dict()

    if __name__ == "__main__":
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
                Client(cluster) as client:
            result = handler.run(None, store=sys.argv[1], execution_id="killed", progress=False,
                                 executor=DaskExecutor(client))
        print(sum(e["status"] == "SUCCEEDED" for e in result["all"]))
""")


def recorded_items(store: Path) -> dict[int, Any]:
    with Store.open(store, readonly=True) as reader:
        records = {}
        for key, value in reader.scan(execution_prefix("killed")):
            path = decode_key(key)[1]
            if len(path) == 2:
                record = decode_record(value)
                if record.status == "SUCCEEDED":
                    records[path[1]] = record
        return records


def test_sigkill_of_the_coordinator_resumes_from_the_store(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    store, first_log, second_log = tmp_path / "store", tmp_path / "first.log", tmp_path / "second.log"
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(first_log)],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if first_log.exists() and len(first_log.read_text().split()) >= 100:
                break
            time.sleep(0.05)  # polling for progress, not ordering
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.communicate()
    with pytest.raises(ProcessLookupError):  # nothing of the job's process group is left
        for _ in range(100):
            os.killpg(proc.pid, 0)
            time.sleep(0.05)
    recorded = recorded_items(store)
    assert 0 < len(recorded) < 300

    done = subprocess.run([sys.executable, str(script), str(store), str(second_log)],
                          capture_output=True, text=True, timeout=90, check=True)
    assert done.stdout.split()[-1] == "300"
    final = recorded_items(store)
    assert sorted(final) == list(range(300))
    rerun = {int(line) for line in second_log.read_text().split()}
    assert not rerun & set(recorded)  # no item whose result had been recorded ran again
    assert rerun | set(recorded) == set(range(300))


def test_cli_runs_a_handler_on_the_cluster(tmp_path: Path, client: Any) -> None:
    """`durablemap run --executor dask --scheduler ADDRESS` sends the items to that scheduler."""
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    argv = [sys.executable, "-m", "durablemap", "run", str(EXAMPLES / "01_square.py") + ":handler",
            "--store", str(tmp_path / "store"), "--executor", "dask", "--scheduler", client.scheduler.address]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert [item["result"] for item in json.loads(done.stdout)["all"]] == [1, 4, 9, 16, 25]
    missing = subprocess.run([*argv[:-2]], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "--scheduler" in missing.stderr


@pytest.mark.parametrize(("how", "where"), [("exit", "item"), ("kbd", "step")])
def test_an_exit_raised_by_an_item_fails_that_item_only(tmp_path: Path, executor: DaskExecutor, how: str,
                                                        where: str) -> None:
    from .test_item_exits import WHAT, exiting
    result = exiting.run({"how": how, "where": where}, store=tmp_path / "s", executor=executor, progress=False)
    assert result.get_results() == [i * 2 for i in range(8) if i != 3]
    (failed,) = result.failed()
    assert failed.index == 3 and failed.error is not None and failed.error.type == WHAT[how][0]
    assert f"Item 3 of map '1' {WHAT[how][1]}" in (failed.error.message or "")


def _logging_item(ctx: DurableContext, x: int, index: int, _items: Any) -> int:
    ctx.logger.info("dask context %s", x, extra={"row": x})
    import logging

    logging.getLogger("tests.dask_etl").info("dask etl %s", x)
    return x


@durable_execution
def _logging_map(event: Any, context: DurableContext) -> list[int]:
    return context.map(list(range(6)), _logging_item, name="m").get_results()


def test_item_log_records_reach_the_coordinator_from_dask_workers(
        tmp_path: Path, executor: DaskExecutor, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.INFO):
        assert _logging_map.run({}, store=tmp_path / "s", executor=executor, progress=False) == list(range(6))
    mine = [r for r in caplog.records if r.getMessage().startswith(("dask context", "dask etl"))]
    assert sorted(r.getMessage() for r in mine) == sorted(
        [f"dask context {i}" for i in range(6)] + [f"dask etl {i}" for i in range(6)])
    assert all(r.process != os.getpid() for r in mine)
    assert sorted(r.itemIndex for r in mine if r.name == "tests.dask_etl") == list(range(6))
    assert sorted(r.row for r in mine if hasattr(r, "row")) == list(range(6))


# -- items in flight follow max_concurrency on Dask too (issue 16) -------------------------------------
@pytest.mark.parametrize("is_async", [False, True], ids=["threads", "async"])
def test_items_in_flight_reach_max_concurrency_on_dask(tmp_path: Path, executor: DaskExecutor,
                                                       is_async: bool) -> None:
    from tests.test_concurrency import _counter, _peak, bounded
    counter = _counter(tmp_path, 20, 60)
    result = bounded.run({"counter": counter, "n": 60, "mc": 20, "async": is_async},
                         store=tmp_path / "store", executor=executor, progress=False)
    assert result.get_results() == [2 * i for i in range(60)]
    assert _peak(counter) == 20  # two Dask worker threads, 20 items at once


# -- large inputs: not in the spec, not on every worker -----------------------------------------------

def far_look(context: DurableContext, item: str, index: int, items: Any) -> list[Any]:
    """What an item sees of the inputs: its own, its neighbour, one far away, the last, a slice."""
    assert items[index] == item
    return [len(items), items[index - 1], items[(index + 1000) % len(items)], items[-1], items[index:index + 2]]


@durable_execution
def far_looking(event: dict[str, Any], context: DurableContext) -> Any:
    return context.map(event["inputs"], far_look).get_results()


def test_items_of_a_large_input_see_every_input_on_dask(tmp_path: Path, executor: DaskExecutor,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    inputs = [f"item-{i:05d}-" + "x" * 40 for i in range(3000)]
    payloads: list[int] = []
    real = DaskExecutor._scatter

    def scatter(self: DaskExecutor, payload: bytes) -> Any:
        payloads.append(len(payload))
        return real(self, payload)

    monkeypatch.setattr(DaskExecutor, "_scatter", scatter)
    results = far_looking.run({"inputs": inputs}, store=tmp_path / "s", executor=executor, progress=False)
    n = len(inputs)
    assert results == [[n, inputs[i - 1], inputs[(i + 1000) % n], inputs[-1], inputs[i:i + 2]] for i in range(n)]
    # The spec every worker gets holds none of the 150 KB of inputs.
    assert payloads and max(payloads) < 20_000, payloads


MIB = 1 << 20


def rss_of_worker(context: DurableContext, item: str, index: int, items: Any) -> list[int]:
    """Read this item only, then say which worker this is and how much memory it holds."""
    assert item.count("x") == len(item) - 8
    return [os.getpid(), int(psutil.Process().memory_info().rss)]


@durable_execution
def small_then_big(event: dict[str, Any], context: DurableContext) -> dict[str, list[list[int]]]:
    n, config = event["n"], MapConfig(max_concurrency=2)
    small = context.map([f"{i:08d}" + "x" * 1000 for i in range(n)], rss_of_worker, name="small", config=config)
    big = context.map([f"{i:08d}" + "x" * (MIB - 8) for i in range(n)], rss_of_worker, name="big", config=config)
    return {"small": small.get_results(), "big": big.get_results()}


def test_dask_workers_together_hold_a_large_input_once_not_each(tmp_path: Path, executor: DaskExecutor) -> None:
    """128 inputs of 1 MiB, each item reading its own: each task carries its chunk's items, and the
    file of items waits on the scheduler. With the inputs in the spec, each of the 2 workers held
    them twice (the payload and the list): 4 times the input between them."""
    n = 128
    peaks = small_then_big.run({"n": n}, store=tmp_path / "s", executor=executor, progress=False)

    def peak_by_worker(rows: list[list[int]]) -> dict[int, int]:
        by: dict[int, int] = {}
        for pid, rss in rows:
            by[pid] = max(by.get(pid, 0), rss)
        return by

    small, big = peak_by_worker(peaks["small"]), peak_by_worker(peaks["big"])
    growth = {pid: rss - small.get(pid, rss) for pid, rss in big.items()}
    figures = ({pid: round(g / MIB) for pid, g in growth.items()}, n)
    # Measured: about 132 MiB between the two (what the items that passed through left allocated),
    # against 518 MiB with the inputs in the spec.
    assert sum(growth.values()) < 2 * n * MIB, figures


def exit_once_reading_far(context: DurableContext, item: tuple[str, int], index: int, items: Any) -> list[int]:
    """Read an input far away (not in this chunk: fetched from the scheduler); item 700 kills its
    worker once, first."""
    directory = Path(item[0])
    if index == 700 and not (directory / "crashed").exists():
        (directory / "crashed").touch()
        os._exit(3)
    far = items[(index + 1000) % len(items)]
    return [item[1] * 10, far[1]]


def test_a_worker_lost_mid_map_leaves_the_inputs_readable(tmp_path: Path, executor: DaskExecutor) -> None:
    n = 2000

    @durable_execution
    def handler(event: Any, context: DurableContext) -> Any:
        return context.map([(str(tmp_path), i) for i in range(n)], exit_once_reading_far).to_dict()

    result = handler.run(None, store=tmp_path / "store", executor=executor, progress=False)
    assert (tmp_path / "crashed").exists()
    assert [e["status"] for e in result["all"]] == ["SUCCEEDED"] * n
    assert [e["result"] for e in result["all"]] == [[i * 10, (i + 1000) % n] for i in range(n)]
    assert not [name for name in executor.client.list_datasets() if str(name).startswith("durablemap-inputs-")]
