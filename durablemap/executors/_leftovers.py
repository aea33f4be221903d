"""What a killed job leaves behind, cleaned up by the next one.

A loky job that is SIGKILLed with its whole process group (``kill -9 -PGID``, the OOM killer taking
the session, a scheduler) leaves two kinds of files that nothing else ever removes:

- its ``durablemap-<pid>-*`` directory in the temp dir: worker slots and, for every map, the pickled
  function and its inputs (user data: the inputs file of ``executors._itemfile``);
- loky's named semaphores, ``/dev/shm/sem.loky-<pid>-*`` (loky names them after the process that
  created the pool; its resource tracker, killed along with the job, would have unlinked them).

Both are named after the coordinator process that made them. Once that process is gone (or its pid
belongs to a process started after the files were last touched, so a reused pid), no process can still
need them by name: workers watch their coordinator and exit, and a semaphore that a straggler still
holds open keeps working after its name is unlinked. Only the current user's files are touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator

import psutil

__all__ = ["quiet_resource_tracker", "sweep_dead_jobs"]

_SLOT_DIR = re.compile(r"durablemap-(\d+)-")
_LOKY_SEMAPHORE = re.compile(r"sem\.loky-(\d+)-")
# A process started this long after a file was last modified cannot be the one that made it; the
# margin covers the clocks' granularity (a process's start time is known to a jiffy).
_MARGIN_SECONDS = 0.5


def sweep_dead_jobs(temp_dir: str | None = None, shm_dir: str = "/dev/shm") -> list[str]:
    """Remove the slot directories and loky semaphores of coordinator processes that are gone.
    Returns the paths removed."""
    removed = []
    for path in _leftovers(temp_dir or tempfile.gettempdir(), _SLOT_DIR):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if os.path.isdir(shm_dir):
        for path in _leftovers(shm_dir, _LOKY_SEMAPHORE):
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed.append(path)
    return removed


def _leftovers(directory: str, pattern: re.Pattern[str]) -> Iterator[str]:
    """Entries of ``directory`` named by ``pattern`` after a pid, owned by this user, whose
    creator is gone."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    uid = os.geteuid()
    started: dict[int, float | None] = {}
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid == uid and _creator_gone(int(match.group(1)), info.st_mtime, started):
            yield entry.path


def _creator_gone(pid: int, modified: float, started: dict[int, float | None]) -> bool:
    """Whether the process ``pid`` that made a file last modified at ``modified`` is gone;
    ``started`` caches start times (None: no such process) over one sweep."""
    if pid == os.getpid():
        return False
    if pid not in started:
        try:
            started[pid] = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            started[pid] = None
        except psutil.Error:
            started[pid] = 0.0  # it exists but cannot be inspected: leave its files alone
    when = started[pid]
    return when is None or when > modified + _MARGIN_SECONDS


# loky's resource tracker runs `python -c ...` with this process's interpreter flags, -W included.
_TRACKER_FILTER = "ignore::UserWarning:loky.backend.resource_tracker"


def quiet_resource_tracker() -> None:
    """Start loky's resource tracker (if it is not running) so that it never warns about "leaked
    semlock objects": it says so, on the user's terminal, when this process was SIGKILLed and it
    cleans up after it, which is what it is for and nothing the user can act on."""
    from loky.backend import resource_tracker

    added = _TRACKER_FILTER not in sys.warnoptions
    if added:
        sys.warnoptions.append(_TRACKER_FILTER)
    try:
        resource_tracker.ensure_running()
    finally:
        if added:
            sys.warnoptions.remove(_TRACKER_FILTER)
