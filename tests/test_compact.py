"""`durablemap rm`, `gc` and `compact` give the space back: the store file shrinks (LMDB compaction
into a new file swapped in atomically), only while no other process has the store open."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from durablemap import StoreError
from durablemap._store import Store, compact

JOB = textwrap.dedent('''
    import sys
    from durablemap import durable_execution

    STORE, EXECUTION, N, SIZE = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

    def work(context, item, index, inputs):
        return f"{index}:" + "x" * SIZE

    @durable_execution
    def handler(event, context):
        return context.map(range(N), work, name="items").success_count

    if __name__ == "__main__":
        print(handler.run(None, store=STORE, execution_id=EXECUTION, executor="inline", progress=False))
''')


def cli(store: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "durablemap", *args, "--store", str(store)],
                          capture_output=True, text=True, check=check)


def run_job(tmp_path: Path, store: Path, execution: str, n: int, size: int) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    done = subprocess.run([sys.executable, str(script), str(store), execution, str(n), str(size)],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(n), done.stderr


def exported(store: Path, execution: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in cli(store, "export", execution, "--map", "items").stdout.splitlines()]


def test_rm_of_a_big_execution_shrinks_the_file_and_keeps_the_others(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_job(tmp_path, store, "small", 300, 10)
    run_job(tmp_path, store, "big", 4_000, 2_000)
    small_before = exported(store, "small")
    assert [row["result"] for row in small_before] == [f"{i}:" + "x" * 10 for i in range(300)]
    size_before = (store / "data.mdb").stat().st_size
    assert size_before > 8_000_000

    done = cli(store, "rm", "big")
    assert "removed execution big" in done.stdout
    assert "compacted" in done.stderr
    size_after = (store / "data.mdb").stat().st_size
    assert size_after < size_before / 10
    assert exported(store, "small") == small_before
    assert [e["id"] for e in json.loads(cli(store, "ls", "--json").stdout)] == ["small"]
    assert not [name for name in os.listdir(store) if name.startswith(".compact-")]

    # The compacted store takes new executions, and resumes old ones, as before.
    run_job(tmp_path, store, "after", 500, 10)
    run_job(tmp_path, store, "small", 300, 10)
    assert len(exported(store, "after")) == 500 and exported(store, "small") == small_before


def test_gc_compacts_and_no_compact_leaves_the_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_job(tmp_path, store, "one", 2_000, 2_000)
    run_job(tmp_path, store, "two", 2_000, 2_000)
    size = (store / "data.mdb").stat().st_size
    cli(store, "rm", "one", "--no-compact")
    assert (store / "data.mdb").stat().st_size >= size  # pages freed inside the file only
    done = cli(store, "gc", "--older-than", "0s")
    assert "removed" in done.stdout and "compacted" in done.stderr
    assert (store / "data.mdb").stat().st_size < size / 10
    assert json.loads(cli(store, "ls", "--json").stdout) == []


def test_compaction_is_refused_while_another_process_has_the_store_open(tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_job(tmp_path, store, "big", 2_000, 2_000)
    size = (store / "data.mdb").stat().st_size
    cli(store, "rm", "big", "--no-compact")
    handle = Store.open(store, readonly=True)  # this test's process holds it open now
    try:
        done = cli(store, "compact", check=False)
        assert done.returncode == 1
        assert "another process has the store open" in done.stderr and f"pid {os.getpid()}" in done.stderr
        with pytest.raises(StoreError, match="from a process that has it open"):
            compact(store)
        # rm and gc still remove records; they only leave the space in the file, and say so.
        run_job(tmp_path, store, "small", 10, 10)
        done = cli(store, "rm", "small")
        assert done.returncode == 0 and "cannot compact it" in done.stderr
        assert handle.stat()["records"] >= 0
    finally:
        handle.close()
    assert (store / "data.mdb").stat().st_size >= size  # not compacted while it was open
    assert "compacted" in cli(store, "compact").stderr
    assert (store / "data.mdb").stat().st_size < size / 10
