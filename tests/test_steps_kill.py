"""Killing a whole job between two steps of an item: the next run resumes at the unfinished step.

A script (written to ``tmp_path``) maps over one item that runs three steps, each appending to a log.
Between step 2 and step 3 the item waits for a "release" file that the test creates only for the
second run, so the kill always lands at the same point without racing. The test SIGKILLs the job
(the whole process group, as the OOM killer or ``kill -9 -PGID`` would, or only the coordinator), checks
that no process of the job is left, runs the script again and reads the log: steps 1 and 2 ran once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

SCRIPT = textwrap.dedent('''
    import json
    import os
    import sys
    import time

    from durablemap import DurableContext, StepContext, durable_execution, durable_step

    LOG, STORE, RELEASE = sys.argv[1], sys.argv[2], sys.argv[3]


    def note(line):
        with open(LOG, "a") as fh:
            fh.write(line + "\\n")


    @durable_step
    def numbered(step_context: StepContext, n: int, item: str) -> str:
        note(f"step {n} pid {os.getpid()}")
        return f"{item}-{n}"


    def three_steps(context: DurableContext, item: str, index: int, items: list) -> list:
        done = [context.step(numbered(1, item)), context.step(numbered(2, item))]
        # step 2's record is durable here: tell the test, then hold until it releases us
        note("between 2 and 3")
        while not os.path.exists(RELEASE):
            time.sleep(0.05)
        done.append(context.step(numbered(3, item)))
        return done


    @durable_execution
    def handler(event: dict, context: DurableContext) -> dict:
        return context.map(event["items"], three_steps, name="three").to_dict()


    if __name__ == "__main__":
        note(f"run pid {os.getpid()}")
        out = handler.run({"items": ["a"]}, store=STORE, execution_id="killed", workers=2, progress=False)
        print(json.dumps(out))
''')


def read_log(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_for_line(path: Path, prefix: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(line.startswith(prefix) for line in read_log(path)):
        if proc.poll() is not None:
            raise AssertionError(f"the script ended ({proc.returncode}) before logging {prefix!r}: "
                                 f"{proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {prefix!r} in the log after {timeout} s: {read_log(path)}")
        time.sleep(0.05)


def wait_gone(processes: list[psutil.Process], timeout: float = 15) -> list[psutil.Process]:
    """The processes still alive (zombies count as gone) after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for proc in processes:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def session_members(sid: int) -> list[psutil.Process]:
    """Live processes of session ``sid`` (a job started with ``start_new_session=True``)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            pass
    return members


def orphaned_loky(pids: set[int]) -> list[psutil.Process]:
    """Processes of the killed job whose cmdline mentions loky and whose parent is gone."""
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE or "loky" not in " ".join(proc.cmdline()):
                continue
            if not psutil.pid_exists(proc.ppid()) or proc.ppid() == 1:
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.parametrize("kill", ["process-group", "coordinator-only"])
def test_a_job_killed_between_steps_resumes_at_the_third_step(tmp_path: Path, kill: str) -> None:
    script, log, store, release = (tmp_path / "job.py", tmp_path / "log", tmp_path / "store",
                                   tmp_path / "release")
    script.write_text(SCRIPT)
    argv = [sys.executable, str(script), str(log), str(store), str(release)]

    first = subprocess.Popen(argv, start_new_session=True, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_line(log, "between 2 and 3", first)
        job = [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]
        assert any("loky" in " ".join(p.cmdline()) for p in job[1:]), "the item ran in a worker process"
        if kill == "process-group":
            os.killpg(first.pid, signal.SIGKILL)
        else:
            os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        first.communicate()
    assert first.returncode == -signal.SIGKILL
    # the workers notice their coordinator is gone and leave; nothing of the job lives on
    assert not wait_gone(job), f"processes of the killed job left: {wait_gone(job, 0)}"
    assert not orphaned_loky({p.pid for p in job})
    assert not wait_gone(session_members(first.pid), 5)

    lines = read_log(log)
    assert [line.split(" pid")[0] for line in lines if line.startswith("step")] == ["step 1", "step 2"]

    release.touch()
    second = subprocess.Popen(argv, start_new_session=True, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.communicate()
    assert second.returncode == 0, stderr
    # a run that ends normally leaves nothing of its session behind either
    assert not wait_gone(session_members(second.pid)), "processes of the second run left"
    out = json.loads(stdout.splitlines()[-1])
    assert out["all"] == [{"index": 0, "status": "SUCCEEDED", "result": ["a-1", "a-2", "a-3"], "error": None}]

    steps = [line.split(" pid")[0] for line in read_log(log) if line.startswith("step")]
    assert steps.count("step 1") == 1
    assert steps.count("step 2") == 1
    assert 1 <= steps.count("step 3") <= 2
