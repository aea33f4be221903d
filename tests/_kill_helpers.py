"""Helpers for tests that run a durable job in a subprocess and kill it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def start(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``python script args`` in its own session (so its workers share its process group)."""
    return subprocess.Popen([*PYTHON, str(script), *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})


# ``python`` with the default SIGINT disposition. A shell that runs the test suite in the background
# ignores SIGINT, children inherit that, and Python then never raises KeyboardInterrupt: Ctrl-C tests
# would test nothing. This resets it and execs the real command.
PYTHON = [sys.executable, "-c",
          "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
          "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def log_lines(path: Path) -> list[int]:
    """The item indexes a job's items appended to ``path``, one per line (ignores a torn last line)."""
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split("\n") if line.strip().isdigit()]


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the job's whole process group (coordinator and workers) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.communicate(timeout=30)  # reaps it and closes its pipes


def group_alive(pgid: int) -> list[psutil.Process]:
    """Processes still alive in a process group."""
    alive = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return alive


def assert_no_survivors(pgid: int, timeout: float = 10.0) -> None:
    """Every process of the group is gone within ``timeout`` (workers watch their coordinator)."""
    wait_for(lambda: not group_alive(pgid), timeout, f"processes of group {pgid} to exit")
