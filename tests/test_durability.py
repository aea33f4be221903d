"""Durability with real processes: SIGKILL a job mid-map, run it again, nothing lost or redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from durablemap._errors import StoreError
from durablemap._records import decode_record
from durablemap._store import Store, decode_key, op_key

from ._kill_helpers import assert_no_survivors, kill_group, log_lines, start, wait_for

JOB = textwrap.dedent('''
    import sys, time
    from durablemap import durable_execution
    from durablemap.config import MapConfig

    LOG = sys.argv[1]

    def work(context, item, index, items):
        time.sleep(0.02)
        with open(LOG, "a") as fh:
            fh.write(f"{index}\\n")
        return {"index": index, "square": item * item}

    @durable_execution
    def handler(event, context):
        # One item per worker at a time: with more in flight, a worker's chunk may hold every item
        # left, which the workers finish in the 0.5 s they take to notice their coordinator died.
        result = context.map(list(range(300)), work, name="squares", config=MapConfig(max_concurrency=2))
        return result.get_results()

    if __name__ == "__main__":
        out = handler.run({"n": 300}, store=sys.argv[2], execution_id="job", workers=2, progress=False)
        assert out == [{"index": i, "square": i * i} for i in range(300)], out
        print("OK", len(out))
''')


def recorded_items(store_path: Path) -> set[int]:
    """Indexes of the map's items whose SUCCEEDED record is committed."""
    store = Store.open(store_path, readonly=True)
    try:
        done = set()
        for key, raw in store.scan(b"job\x00"):
            _, path = decode_key(key)
            if len(path) == 2 and decode_record(raw).status == "SUCCEEDED":
                done.add(path[1])
        return done
    finally:
        store.close()


@pytest.mark.parametrize("target", ["whole-job", "coordinator-only"])
def test_sigkill_mid_map_then_resume(tmp_path: Path, target: str) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    log, store = tmp_path / "items.log", tmp_path / "store"
    proc = start(script, str(log), str(store))
    wait_for(lambda: len(log_lines(log)) >= 100 or proc.poll() is not None, what="a third of the items")
    assert proc.poll() is None, proc.communicate()
    if target == "coordinator-only":
        # The workers are not killed: they notice their coordinator is gone and exit by themselves.
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    else:
        kill_group(proc, signal.SIGKILL)
    assert_no_survivors(proc.pid)

    recorded = recorded_items(store)
    ran_before = log_lines(log)
    assert 0 < len(recorded) < 300
    assert recorded <= set(ran_before)

    again = start(script, str(log), str(store))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    assert b"OK 300" in out
    runs = log_lines(log)
    assert set(runs) == set(range(300))
    for index in recorded:
        assert runs.count(index) == 1, f"item {index} was recorded before the kill but ran again"
    # Items that ran but were not yet recorded may run twice; nothing runs three times.
    assert max(runs.count(i) for i in range(300)) <= 2


STEPS_JOB = textwrap.dedent('''
    import json, sys, time
    from durablemap import durable_execution, durable_step
    from durablemap.config import MapConfig

    LOG, STORE = sys.argv[1], sys.argv[2]

    @durable_step
    def fetch(step_context, index):
        return {"index": index, "raw": index * 3}

    @durable_step
    def transform(step_context, row):
        return {"index": row["index"], "value": row["raw"] + 1, "tags": (row["index"] % 3, "t")}

    def work(context, item, index, items):
        with open(LOG, "a") as fh:
            fh.write(f"{index}\\n")
        row = context.step(fetch(index))
        time.sleep(0.005)
        return context.step(transform(row))

    @durable_execution
    def handler(event, context):
        result = context.map(list(range(500)), work, name="rows", config=MapConfig(max_concurrency=4))
        return result

    if __name__ == "__main__":
        out = handler.run(None, store=STORE, execution_id="steps", workers=2, progress=False)
        print(json.dumps(out.to_dict(), default=list))
''')


def test_repeated_sigkill_of_a_map_with_steps_converges(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(STEPS_JOB)
    # The reference: one uninterrupted run.
    reference = start(script, str(tmp_path / "ref.log"), str(tmp_path / "ref-store"))
    expected, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err.decode()

    log, store = tmp_path / "items.log", tmp_path / "store"
    kills = 0
    for threshold in (100, 250, 400):
        proc = start(script, str(log), str(store))
        wait_for(lambda t=threshold, p=proc: len(log_lines(log)) >= t or p.poll() is not None,
                 what=f"{threshold} items")
        if proc.poll() is None:
            kill_group(proc, signal.SIGKILL)
            assert_no_survivors(proc.pid)
            kills += 1
        else:
            proc.communicate()
    final = start(script, str(log), str(store))
    out, err = final.communicate(timeout=120)
    assert final.returncode == 0, err.decode()
    assert out == expected, [e for e in json.loads(out)["all"] if e["status"] != "SUCCEEDED"]
    assert kills >= 2
    # At most max_concurrency=4 items were in flight at each kill: only those can have run twice.
    executions = log_lines(log)
    assert set(executions) == set(range(500))
    assert len(executions) - 500 <= 4 * kills


POISON_JOB = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from durablemap import durable_execution
    from durablemap.config import MapConfig

    DIR = Path(sys.argv[1])

    def work(context, item, index, items):
        if index == 0:
            with open(DIR / "attempts.log", "a") as fh:
                fh.write("0\\n")
            os._exit(7)
        while not (DIR / "release").exists():
            time.sleep(0.01)
        return index

    @durable_execution
    def handler(event, context):
        result = context.map(list(range(6)), work, config=MapConfig(max_worker_crashes=3))
        return [(item.index, item.status.value, item.error.message if item.error else None) for item in result.all]

    if __name__ == "__main__":
        print(handler.run(None, store=str(DIR / "store"), execution_id="poison", workers=2, progress=False))
''')


def test_a_poison_items_crash_count_survives_a_kill(tmp_path: Path) -> None:
    """The crashes an item caused are recorded: after kill -9 and a re-run, it is FAILED once its
    crashes add up to max_worker_crashes across both runs, not after three more."""
    script = tmp_path / "poison.py"
    script.write_text(POISON_JOB)
    attempts = tmp_path / "attempts.log"
    first = start(script, str(tmp_path))
    wait_for(lambda: crash_count(tmp_path / "store") >= 1 or first.poll() is not None, what="a recorded crash")
    kill_group(first)
    assert_no_survivors(first.pid)
    before = len(attempts.read_text().split())
    assert 1 <= before < 3, "the first run should have been killed before the item failed for good"
    (tmp_path / "release").touch()
    second = start(script, str(tmp_path))
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err.decode()
    assert len(attempts.read_text().split()) == 3
    assert b"(0, 'FAILED', \"The worker process running item 0 of map 'work' died (exit code EXIT(7)) 3 times" in out
    assert b"3 times" in out


def crash_count(store_path: Path) -> int:
    """The crash count recorded for item 0 of the poison job's map (0 when none yet)."""
    if not (store_path / "data.mdb").exists():
        return 0
    try:
        store = Store.open(store_path, readonly=True)
    except StoreError as exc:
        if "not a complete durablemap store" in str(exc):
            return 0  # the job is creating it: data.mdb exists a moment before its meta record
        raise
    try:
        raw = store.get(op_key("poison", (1, 0)))
        return int(decode_record(raw).get("crashes", 0)) if raw else 0
    finally:
        store.close()


AGAIN = textwrap.dedent('''
    import os, shutil, sys
    from durablemap import durable_execution
    from durablemap.store import StoreReader

    LOG, STORE = sys.argv[1], sys.argv[2]
    OFFSET = 0

    def work(context, item, index, items):
        with open(LOG, "a") as fh:
            fh.write(f"{OFFSET} {index}\\n")
        return item * item + OFFSET

    @durable_execution
    def handler(event, context):
        return context.map(list(range(50)), work, name="squares").get_results()

    if __name__ == "__main__":
        first = handler.run(None, store=STORE, execution_id="job", workers=2, progress=False)
        shutil.rmtree(STORE)  # as a user clears a job's store to start over, in the same process
        OFFSET = 100
        again = handler.run(None, store=STORE, execution_id="job", workers=2, progress=False)
        with StoreReader.open(STORE) as reader:
            stored = sorted(item.result for item in reader.items("job", "1"))
        print(first == [i * i for i in range(50)], again == [i * i + 100 for i in range(50)],
              stored == [i * i + 100 for i in range(50)])
''')


def test_a_store_deleted_and_made_again_in_one_process_is_the_new_one(tmp_path: Path) -> None:
    """The job's process (and its worker pool) keeps the store open between runs; after the store
    directory is deleted, the next run in that process must run every item again and record them in
    the store now at that path, not replay the deleted one's records, nor write into its deleted
    files (nothing would be durable)."""
    script, log = tmp_path / "again.py", tmp_path / "log"
    script.write_text(AGAIN)
    out = subprocess.run([sys.executable, str(script), str(log), str(tmp_path / "store")], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.split() == ["True", "True", "True"], (out.stdout, out.stderr)
    runs = [line.split() for line in log.read_text().splitlines()]
    assert sorted(int(index) for offset, index in runs if offset == "100") == list(range(50))
