"""Ctrl-C, SIGTERM and the execution lock, with real processes."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
from pathlib import Path

import pytest

from ._kill_helpers import assert_no_survivors, log_lines, start, wait_for
from .test_durability import recorded_items

JOB = textwrap.dedent('''
    import os, sys, time
    from durablemap import durable_execution
    from durablemap.config import MapConfig

    LOG, STORE, SLEEP = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def work(context, item, index, items):
        with open(LOG + ".start", "a") as fh:
            fh.write(f"{index}\\n")
        time.sleep(SLEEP)
        with open(LOG, "a") as fh:
            fh.write(f"{index}\\n")
        return index + 1

    @durable_execution
    def handler(event, context):
        # at most 10 in flight: an interrupt leaves items never started (waiting items run together)
        return context.map(list(range(200)), work, name="slow", config=MapConfig(max_concurrency=10)).get_results()

    if __name__ == "__main__":
        out = handler.run(None, store=STORE, execution_id="job", workers=2, progress=False)
        assert out == [i + 1 for i in range(200)], out
        print("OK", len(out))
''')


class Lines:
    """Collects a pipe's lines in a thread, so a test can wait for a message."""

    def __init__(self, pipe: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: object) -> None:
        for raw in pipe:  # type: ignore[attr-defined]
            self.lines.append(raw.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> None:
        self._thread.join(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_quickly_and_resumes(tmp_path: Path, sig: int) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    log, store = tmp_path / "items.log", tmp_path / "store"
    proc = start(script, str(log), str(store), "0.02")
    wait_for(lambda: len(log_lines(log)) >= 40 or proc.poll() is not None, what="some items recorded")
    # To the whole process group, as a terminal's Ctrl-C does and as many schedulers stop a job:
    # the workers ignore both signals and leave it to the coordinator.
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert b"resume" in err, err.decode()
    assert b"Traceback" not in err.split(b"KeyboardInterrupt")[0] or b"KeyboardInterrupt" in err
    assert_no_survivors(proc.pid)

    recorded = recorded_items(store)
    assert 40 <= len(recorded) < 200
    again = start(script, str(log), str(store), "0.02")
    _out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    runs = log_lines(log)
    assert set(runs) == set(range(200))
    for index in recorded:
        assert runs.count(index) == 1, f"item {index} was recorded before the interrupt but ran again"


def test_second_interrupt_stops_at_once(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    log, store = tmp_path / "items.log", tmp_path / "store"
    # Items take 120 s and the grace period is 60 s: only a second Ctrl-C can end this quickly.
    proc = start(script, str(log), str(store), "120", env={"DURABLEMAP_GRACE_SECONDS": "60"})
    stderr = Lines(proc.stderr)
    started = Path(str(log) + ".start")
    wait_for(lambda: len(log_lines(started)) >= 2, what="two items running")
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(lambda: "Ctrl-C again" in stderr.text(), what="the first interrupt to be noticed")
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=20)
    stderr.join()
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode != 0
    assert_no_survivors(proc.pid)
    assert log_lines(log) == []


LOCKED = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from durablemap import durable_execution, ExecutionLockedError

    DIR = Path(sys.argv[1])

    def wait_for_release(context, item, index, items):
        (DIR / f"running-{index}").touch()
        while not (DIR / "release").exists():
            time.sleep(0.01)
        return index

    @durable_execution
    def handler(event, context):
        return context.map([0, 1], wait_for_release).get_results()

    if __name__ == "__main__":
        try:
            print(handler.run(None, store=str(DIR / "store"), execution_id="shared", workers=2, progress=False))
        except ExecutionLockedError as exc:
            print("LOCKED", exc)
            sys.exit(3)
''')


def test_a_second_process_on_the_same_execution_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "locked.py"
    script.write_text(LOCKED)
    first = start(script, str(tmp_path))
    wait_for(lambda: (tmp_path / "running-0").exists() or first.poll() is not None, what="the first job")
    second = start(script, str(tmp_path))
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 3, out
    assert b"LOCKED" in out and str(first.pid).encode() in out
    (tmp_path / "release").touch()
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err.decode()
    assert b"[0, 1]" in out
