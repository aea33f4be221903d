"""Progress bars: drawn on a terminal (a pseudo-terminal here), absent when stderr is not one."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from durablemap import durable_execution
from durablemap._observe import MapInfo
from durablemap._progress import ProgressObserver

JOBS = str(Path(__file__).with_name("cli_jobs.py"))
BAR = "\u2501"  # rich's bar character


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    return {**os.environ, "DURABLEMAP_STORE": str(tmp_path / "store"), "CLI_JOB_DIR": str(job_dir),
            "COLUMNS": "160", "TERM": "xterm-256color"}


def run_on_pty(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; returns its exit code and what the terminal got."""
    master, slave = pty.openpty()
    job = subprocess.Popen([sys.executable, "-m", "durablemap", *args], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=slave, start_new_session=True)
    os.close(slave)
    captured = b""
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if job.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            captured += chunk
        job.wait(timeout=30)
    finally:
        os.close(master)
        if job.poll() is None:
            job.kill()
            job.wait()
    return job.returncode, captured.decode("utf-8", "replace")


def test_a_terminal_shows_a_bar_with_done_total_and_a_summary(env: dict[str, str]) -> None:
    code, screen = run_on_pty(env, "run", f"{JOBS}:batch", "--input", json.dumps({"n": 200}))
    assert code == 1  # some items fail on their first run
    assert BAR in screen and "squares" in screen
    assert "/200" in screen and "failed" in screen and "it/s" in screen and "ETA" in screen
    assert "squares: 200/200 done, 180 succeeded, 20 failed in" in _plain(screen)


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "durablemap", "run", f"{JOBS}:batch", "--input",
                           json.dumps({"n": 200})], check=False, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "durablemap: execution" in done.stderr  # stderr was captured
    assert BAR not in done.stderr and "\x1b[" not in done.stderr and "it/s" not in done.stderr


def _plain(screen: str) -> str:
    """The terminal text without escape sequences."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)


def test_one_line_per_depth_and_a_summary_per_top_level_map() -> None:
    out = io.StringIO()
    observer = ProgressObserver(Console(file=out, force_terminal=True, width=120))
    top = MapInfo("e", "1", "outer", 10, 1)
    observer.map_started(top, 2, 1)  # resumed: 2 done earlier, 1 of them failed
    for operation_id in ("2/0/1", "2/1/1"):  # nested maps one after the other share one line
        inner = MapInfo("e", operation_id, "inner", 3, 3)
        observer.map_started(inner, 0, 0)
        observer.items_finished(inner, 3, 0)
        observer.map_finished(inner, "ALL_COMPLETED", 3, 0)
    assert observer._progress is not None and len(observer._progress.tasks) == 2
    observer.items_finished(top, 6, 2)
    observer.map_finished(top, "ALL_COMPLETED", 7, 3)
    observer.close()
    observer.close()  # idempotent
    text = _plain(out.getvalue())
    assert "outer: 10/10 done, 7 succeeded, 3 failed" in text
    assert "inner:" not in text  # nested maps get no summary line


def nap(context: Any, item: int, index: int, items: Any) -> int:
    time.sleep(0.02)
    return item


@durable_execution
def napping(event: Any, context: Any) -> Any:
    return context.map(list(range(80)), nap, name="naps").success_count


class Recorder:
    """An observer that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def items_finished(self, info: MapInfo, succeeded: int, failed: int) -> None:
        self.calls.append(("items", info.name, succeeded, failed))

    def memory_sampled(self, info: MapInfo, total_rss: int, peak_total_rss: int) -> None:
        self.calls.append(("memory", info.name, total_rss, peak_total_rss))


def test_observers_hear_progress_and_memory(tmp_path: Path) -> None:
    recorder = Recorder()
    assert napping.run(None, store=tmp_path / "s", workers=2, observers=[recorder], progress=False) == 80
    assert sum(call[2] for call in recorder.calls if call[0] == "items") == 80
    memory = [call for call in recorder.calls if call[0] == "memory"]
    assert memory, "80 items of 20 ms on 2 workers take over a second: memory is reported twice a second"
    assert all(call[1] == "naps" and 0 < call[2] <= call[3] for call in memory)
