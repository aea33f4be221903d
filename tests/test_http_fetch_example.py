"""examples/http_fetch.py, run as a user runs it: an ``async def`` map fetching pages from the local
server the script starts, SIGKILLed mid-map, run again: every page's result is right, and no page
whose result was recorded before the kill is fetched again."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import subprocess
from collections import Counter
from pathlib import Path
from types import ModuleType

from durablemap import BatchItemStatus
from durablemap.store import StoreReader
from tests._kill_helpers import PYTHON, kill_group, start, wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "http_fetch.py"
PAGES = 120
HANG_FROM = 60  # the first run's server never answers pages 60 and above: the map cannot finish


def load_example() -> ModuleType:
    """The example as a module, for its page rules (what the server answers for each page)."""
    spec = importlib.util.spec_from_file_location("http_fetch_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recorded(store: Path, execution_id: str) -> set[int]:
    """Indexes of the pages whose result the store holds. Call it once the server had a request: the
    store was created, and the map recorded, before any item ran."""
    with StoreReader.open(store) as reader:
        if execution_id not in {execution.id for execution in reader.executions()}:
            return set()
        map_ids = [op.id for op in reader.operations(execution_id) if op.sub_type == "Map"]
        if not map_ids:
            return set()
        return {item.index for item in reader.items(execution_id, map_ids[0])
                if item.status == BatchItemStatus.SUCCEEDED}


def hits(workdir: Path) -> Counter[str]:
    """Requests the example's servers received, per path, over every run."""
    log = workdir / "server-hits.log"
    return Counter(line for line in log.read_text().splitlines() if line) if log.exists() else Counter()


def test_http_fetch_resumes_after_sigkill_without_fetching_recorded_pages(tmp_path: Path) -> None:
    example = load_example()
    store, workdir = tmp_path / "store", tmp_path / "work"
    execution_id = f"http-fetch-{PAGES}-pages"
    common = [str(workdir), "--pages", str(PAGES), "--max-concurrency", "20", "--delay", "0.02",
              "--workers", "2", "--store", str(store)]

    first = start(EXAMPLE, *common, "--hang-from", str(HANG_FROM))
    try:
        wait_for(lambda: first.poll() is not None or bool(hits(workdir)),
                 timeout=90, what="the first request to the example's server")
        wait_for(lambda: first.poll() is not None or len(recorded(store, execution_id)) >= HANG_FROM // 2,
                 timeout=90, what="half the answered pages recorded in the store")
        if first.poll() is not None:
            _out, err = first.communicate()
            raise AssertionError(f"the first run ended by itself ({first.returncode}): {err.decode()[-3000:]}")
    finally:
        kill_group(first)
    done_before_kill = recorded(store, execution_id)
    assert len(done_before_kill) >= HANG_FROM // 2 and max(done_before_kill) < HANG_FROM
    hits_before = hits(workdir)
    hanging = sum(count for path, count in hits_before.items() if int(path.rpartition("/")[2]) >= HANG_FROM)
    assert hanging <= 20  # requests in flight never exceed max_concurrency

    second = subprocess.run([*PYTHON, str(EXAMPLE), *common], capture_output=True, text=True, timeout=120,
                            check=False)
    assert second.returncode == 0, second.stderr

    with (workdir / "pages.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["index"]) for row in rows] == list(range(PAGES))
    for row in rows:
        index = int(row["index"])
        body = example.page_body(index)
        assert row["path"] == f"/page/{index}" and row["error"] == ""
        assert (int(row["status"]), int(row["bytes"])) == (example.page_status(index), len(body))
        assert row["sha256"] == hashlib.sha256(body).hexdigest()

    all_hits = hits(workdir)
    second_run = all_hits - hits_before
    assert set(all_hits) == {f"/page/{index}" for index in range(PAGES)}
    assert not {f"/page/{index}" for index in done_before_kill} & set(second_run)  # recorded: not fetched again
    assert all(all_hits[f"/page/{index}"] == 1 for index in done_before_kill)
    assert set(second_run) == {f"/page/{index}" for index in range(PAGES)} - {f"/page/{i}" for i in done_before_kill}
    assert f"this run sent {sum(second_run.values())} requests" in second.stdout
