"""A SIGKILLed job's files (its temp directory, loky's semaphores) are removed by the next run, and
loky's resource tracker never warns the user about the semaphores it cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from durablemap.executors._leftovers import sweep_dead_jobs

from ._kill_helpers import assert_no_survivors, kill_group, log_lines, start, wait_for

JOB = textwrap.dedent('''
    import sys, time
    from durablemap import durable_execution

    LOG, STORE, N = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def work(context, item, index, items):
        time.sleep(0.02)
        with open(LOG, "a") as fh:
            fh.write(f"{index}\\n")
        return index

    @durable_execution
    def handler(event, context):
        return context.map([["some user data"] * 10] * N, work, name="m").get_results()

    if __name__ == "__main__":
        handler.run(None, store=STORE, execution_id="job", workers=2, progress=False)
        print("FINISHED")
''')


def leftovers(pid: int) -> list[str]:
    """The temp directories and loky semaphores named after ``pid``."""
    found = [str(p) for p in Path(tempfile.gettempdir()).glob(f"durablemap-{pid}-*")]
    return found + [str(p) for p in Path("/dev/shm").glob(f"sem.loky-{pid}-*")]


def start_and_wait(tmp_path: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    log = tmp_path / f"{name}.log"
    proc = start(script, str(log), str(tmp_path / name), "2000")
    wait_for(lambda: len(log_lines(log)) >= 20 or proc.poll() is not None, what="items running")
    assert proc.poll() is None, proc.communicate()
    return proc, log


def run_another_job(tmp_path: Path) -> bytes:
    script = tmp_path / "job.py"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "other.log"), str(tmp_path / "other"), "20"],
                          capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0 and b"FINISHED" in proc.stdout, proc.stderr.decode()
    return proc.stderr


def test_the_next_run_removes_what_a_killed_job_left(tmp_path: Path) -> None:
    proc, _ = start_and_wait(tmp_path, "killed")
    kill_group(proc)  # coordinator, workers and loky's resource tracker, like kill -9 of the session
    assert_no_survivors(proc.pid)
    left = leftovers(proc.pid)
    assert any("durablemap-" in p for p in left) and any("sem.loky-" in p for p in left), left
    (inputs,) = Path(tempfile.gettempdir()).glob(f"durablemap-{proc.pid}-*/inputs-*.bin")
    assert b"some user data" in inputs.read_bytes()  # the pickled inputs: user data left readable
    stderr = run_another_job(tmp_path)
    assert leftovers(proc.pid) == []
    assert b"leaked" not in stderr and b"resource_tracker" not in stderr, stderr.decode()


def test_killing_the_coordinator_alone_leaves_no_warning_and_no_files(tmp_path: Path) -> None:
    proc, _ = start_and_wait(tmp_path, "killed")
    os.kill(proc.pid, signal.SIGKILL)
    # loky's resource tracker outlives it, unlinks its semaphores and would warn on its stderr: the
    # pipe closes once the tracker and the workers (which notice their coordinator is gone) exit.
    _, err = proc.communicate(timeout=60)
    assert_no_survivors(proc.pid)
    assert b"leaked" not in err and b"resource_tracker" not in err, err.decode()
    run_another_job(tmp_path)
    assert leftovers(proc.pid) == []


def test_only_files_of_dead_processes_are_swept(tmp_path: Path) -> None:
    temp, shm = tmp_path / "tmp", tmp_path / "shm"
    temp.mkdir()
    shm.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          check=True).stdout.decode().strip()
    live = os.getppid()  # a live process that started before its files were made
    (temp / f"durablemap-{dead}-abc").mkdir()
    (temp / f"durablemap-{live}-abc").mkdir()
    (shm / f"sem.loky-{dead}-abc").touch()
    (shm / f"sem.loky-{live}-abc").touch()
    (shm / "sem.other-1-abc").touch()
    # A pid now used by a process started after the files were last touched: a reused pid.
    reused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        old = time.time() - 3600
        for path in (temp / f"durablemap-{reused.pid}-abc", shm / f"sem.loky-{reused.pid}-abc"):
            path.mkdir() if path.parent == temp else path.touch()
            os.utime(path, (old, old))
        removed = sweep_dead_jobs(str(temp), str(shm))
    finally:
        reused.kill()
        reused.wait()
    assert sorted(Path(p).name for p in removed) == sorted(
        [f"durablemap-{dead}-abc", f"sem.loky-{dead}-abc", f"durablemap-{reused.pid}-abc",
         f"sem.loky-{reused.pid}-abc"])
    assert sorted(p.name for p in temp.iterdir()) == [f"durablemap-{live}-abc"]
    assert sorted(p.name for p in shm.iterdir()) == sorted([f"sem.loky-{live}-abc", "sem.other-1-abc"])
