"""The command line, run as a user runs it: ``python -m durablemap ...`` in a subprocess.

The main scenario runs a 200-item job (tests/cli_jobs.py), interrupts it with SIGINT sent to its
process group once some items are recorded, inspects the store with every read command (text and
--json), resumes it, reruns its failed items with --retry-failed, and removes it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from ._kill_helpers import PYTHON

JOBS = str(Path(__file__).with_name("cli_jobs.py"))
BATCH = f"{JOBS}:batch"
N = 200
HOLD_FROM = 60


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    return {**os.environ, "DURABLEMAP_STORE": str(tmp_path / "store"), "CLI_JOB_DIR": str(job_dir),
            "CLI_JOB_HOLD_FROM": str(HOLD_FROM), "COLUMNS": "200"}


def cli(env: dict[str, str], *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "durablemap", *args], check=False, env=env, capture_output=True,
                          text=True, timeout=120)
    if code is not None:
        assert done.returncode == code, (args, done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return done


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args, "--json").stdout)


def markers(env: dict[str, str]) -> set[int]:
    """Indexes of the items that failed once (each leaves a marker file)."""
    return {int(p.name.split("-")[1]) for p in Path(env["CLI_JOB_DIR"]).glob("failed-*")}


def wait_for_items(env: dict[str, str], job: subprocess.Popen[str], at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert job.poll() is None, "the job ended before it was interrupted"
        if Path(env["DURABLEMAP_STORE"]).exists():
            listed = cli(env, "ls", "--json", code=None)
            if listed.returncode == 0:
                rows = json.loads(listed.stdout)
                if rows and rows[0]["items"]["done"] >= at_least:
                    return
        time.sleep(0.05)  # polling interval, not ordering
    raise AssertionError(f"fewer than {at_least} items were recorded within 60 s")


def test_interrupt_inspect_resume_retry_failed_rm(env: dict[str, str]) -> None:
    hold = Path(env["CLI_JOB_DIR"]) / "hold"
    hold.touch()  # items from HOLD_FROM on wait for it: the job cannot finish before the interrupt
    job = subprocess.Popen([*PYTHON, "-m", "durablemap", "run", BATCH, "--input", json.dumps({"n": N}),
                            "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    try:
        wait_for_items(env, job, 10)
        family = [job.pid, *(c.pid for c in psutil.Process(job.pid).children(recursive=True))]
        os.killpg(job.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        hold.unlink()  # let the items in flight finish within the grace period
        _out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 130, err
    assert "interrupted" in err and "resume" in err
    execution_id = err.split("durablemap: execution ", 1)[1].split()[0]
    _, alive = psutil.wait_procs([p for p in map(_process, family) if p], timeout=30)
    assert not alive, f"processes left behind: {alive}"

    # ls
    [row] = cli_json(env, "ls")
    assert row["id"] == execution_id and row["status"] == "INTERRUPTED"
    assert row["handler"] == "cli_jobs:batch"
    done, failed = row["items"]["done"], row["items"]["failed"]
    failed_once = markers(env)
    assert 10 <= done < N and row["items"]["total"] == N
    assert failed == len(failed_once) >= 1
    text = cli(env, "ls").stdout
    assert execution_id in text and "INTERRUPTED" in text and f"{done}/{N}" in text

    # show
    shown = cli_json(env, "show", execution_id, "--items", "5")
    [squares] = shown["operations"]
    assert squares["name"] == "squares" and squares["sub_type"] == "Map" and squares["status"] == "STARTED"
    assert squares["items"] == {"done": done, "succeeded": done - failed, "failed": failed, "total": N,
                                "not_listed": done - 5}
    assert [c["id"] for c in squares["children"]] == [f"1/{i}" for i in range(5)]
    text = cli(env, "show", execution_id, "--items", "5").stdout
    assert "'squares'" in text and f"{done}/{N} done" in text and f"{done - 5} more items" in text
    assert "'sq-3'" in text and "ValueError: item 3 fails on its first run" in text

    # failures
    listed = cli_json(env, "failures", execution_id)
    assert {f["index"] for f in listed} == failed_once
    first = listed[0]
    assert first["map"] == "squares" and first["name"] == f"sq-{first['index']}"
    assert first["error_type"] == "ValueError" and "fails on its first run" in first["message"]
    assert any("cli_jobs.py" in line for line in first["traceback"])
    text = cli(env, "failures", execution_id).stdout
    assert "map 'squares' [1] item 3 'sq-3': ValueError: item 3 fails on its first run" in text
    assert "Traceback (most recent call last)" in text and f"{failed} failed item(s)" in text

    # export, jsonl and csv
    rows = [json.loads(line) for line in cli(env, "export", execution_id, "--map", "squares").stdout.splitlines()]
    assert len(rows) == done and [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    for r in rows:
        if r["index"] in failed_once:
            assert r["status"] == "FAILED" and r["error"]["ErrorType"] == "ValueError" and r["result"] is None
        else:
            assert r["status"] == "SUCCEEDED" and r["result"] == r["index"] ** 2 and r["error"] is None
    out_file = Path(env["CLI_JOB_DIR"]) / "items.csv"
    cli(env, "export", execution_id, "--map", "1", "--format", "csv", "-o", str(out_file))
    table = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert [(int(r["index"]), r["status"]) for r in table] == [(r["index"], r["status"]) for r in rows]
    assert all(r["error_type"] == "ValueError" for r in table if r["status"] == "FAILED")
    cli(env, "export", execution_id, "--map", "nope", code=2)

    # resume: the rest runs; items that fail for the first time fail, the earlier failures stay
    resumed = cli(env, "run", BATCH, "--input", json.dumps({"n": N}), code=1)
    assert "--retry-failed" in resumed.stderr
    [row] = cli_json(env, "ls")
    assert row["status"] == "FAILED" and row["items"]["done"] == N
    assert row["items"]["failed"] == len(markers(env)) == N // 10

    # --retry-failed, changing nothing: the failed items run again, and succeed this time
    retried = cli(env, "run", BATCH, "--input", json.dumps({"n": N}), "--retry-failed")
    result = json.loads(retried.stdout)
    assert [item["status"] for item in result["all"]] == ["SUCCEEDED"] * N
    assert [item["result"] for item in result["all"]] == [i * i for i in range(N)]
    [row] = cli_json(env, "ls")
    assert row["status"] == "SUCCEEDED" and row["items"] == {"done": N, "failed": 0, "total": N}
    assert cli_json(env, "failures", execution_id) == []

    # rm
    assert "removed execution" in cli(env, "rm", execution_id).stdout
    assert cli_json(env, "ls") == []
    gone = cli(env, "show", execution_id, code=2)
    assert gone.stderr.strip().count("\n") == 0 and "no execution" in gone.stderr


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_clear_errors_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    missing = cli(env, "ls", "--store", str(tmp_path / "nowhere"), code=2)
    assert "no durablemap store" in missing.stderr and missing.stderr.count("\n") == 1
    cli(env, "run", f"{JOBS}:nested", "--input", "{}", "--executor", "inline")
    for args in (("show", "unknown-id"), ("failures", "unknown-id"), ("export", "unknown-id", "--map", "x"),
                 ("rm", "unknown-id")):
        failed = cli(env, *args, code=2)
        assert "no execution 'unknown-id'" in failed.stderr and failed.stderr.count("\n") == 1
    assert "not a durable handler" in cli(env, "run", f"{JOBS}:work", code=2).stderr
    assert "does not name a handler" in cli(env, "run", JOBS, code=2).stderr
    assert "not JSON" in cli(env, "run", f"{JOBS}:nested", "--input", "{", code=2).stderr


def test_nested_tree_and_gc(env: dict[str, str]) -> None:
    ran = cli(env, "run", f"{JOBS}:nested", "--input", json.dumps({"n": 4}), "--execution-id", "nested-1")
    assert json.loads(ran.stdout) == {"sum": 10}
    assert "nested-1" in ran.stderr
    [outer] = cli_json(env, "show", "nested-1")["operations"]
    assert outer["name"] == "outer" and outer["status"] == "SUCCEEDED"
    assert [c["children"][0]["name"] for c in outer["children"]] == ["plus-one"] * 4
    assert [c["children"][0]["sub_type"] for c in outer["children"]] == ["Step"] * 4
    text = cli(env, "show", "nested-1").stdout
    assert "[1/2/1] Step 'plus-one' SUCCEEDED" in text
    assert "would remove nested-1" not in cli(env, "gc", "--older-than", "1h", "--dry-run").stdout
    assert "would remove nested-1" in cli(env, "gc", "--older-than", "0s", "--dry-run").stdout
    assert [r["id"] for r in cli_json(env, "ls")] == ["nested-1"]
    assert "removed" in cli(env, "gc", "--older-than", "0s").stdout
    assert cli_json(env, "ls") == []
    assert cli(env, "gc", "--older-than", "soon", code=2).returncode == 2


def test_read_commands_work_after_sigkill(env: dict[str, str]) -> None:
    hold = Path(env["CLI_JOB_DIR"]) / "hold"
    hold.touch()
    job = subprocess.Popen([*PYTHON, "-m", "durablemap", "run", BATCH, "--input", json.dumps({"n": N}),
                            "--execution-id", "killed"], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_items(env, job, 10)
        family = [job.pid, *(c.pid for c in psutil.Process(job.pid).children(recursive=True))]
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    _, alive = psutil.wait_procs([p for p in map(_process, family) if p], timeout=30)
    assert not alive
    [row] = cli_json(env, "ls")
    assert row["status"] == "STOPPED" and row["items"]["done"] >= 10
    assert cli_json(env, "show", "killed")["operations"][0]["status"] == "STARTED"
    assert len(cli(env, "export", "killed", "--map", "squares").stdout.splitlines()) == row["items"]["done"]
    hold.unlink()
    cli(env, "run", BATCH, "--input", json.dumps({"n": N}), "--execution-id", "killed", code=1)  # resumes
    assert cli_json(env, "ls")[0]["items"]["done"] == N
