"""Store commands run in a forked child, so that a damaged store ends them with a message.

A page of random bytes that LMDB walks into can make it stop the process on an internal assertion
(``abort()``, which Python cannot catch), and a page past the end of a file cut short while a command
reads it kills the process with SIGBUS. Run in the parent, such a command ends with LMDB's one-line
assertion and nothing else. Run in a child, the parent sees how it died and turns that into the
store's ``StoreError``: where the store is, that it is damaged, and how to salvage it.

Everything else is as if the command ran in the parent: its output goes to the same file
descriptors, its exit code and its exceptions (``StoreError``, click's, ``KeyboardInterrupt``) are
handed back and raised again in the parent, where click deals with them as before. A command run
in-process with replaced streams (click's ``CliRunner``), or where ``fork`` does not exist, runs
directly.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from durablemap._store._env import damaged

__all__ = ["guarded"]

F = TypeVar("F", bound=Callable[..., Any])

_FATAL = {
    signal.SIGABRT: "reading it made LMDB stop the process on an internal check (LMDB's message is "
                    "above): a page of it holds bytes that are not LMDB's",
    signal.SIGBUS: "a page of it lies past the end of its file (the file was cut short while it was read)",
    signal.SIGSEGV: "reading it crashed the process: a page of it holds bytes that are not LMDB's",
}


def guarded(store_path: Callable[[str | None], str]) -> Callable[[F], F]:
    """Run the decorated command (it takes a ``store`` option) in a child; ``store_path`` resolves the
    option to the store's directory, named in the message when the child dies of a fatal signal."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            if not _forkable():
                return command(*args, **kwargs)
            return _in_child(lambda: command(*args, **kwargs), store_path(kwargs.get("store")))

        return run  # type: ignore[return-value]

    return decorate


def _forkable() -> bool:
    if not hasattr(os, "fork") or threading.current_thread() is not threading.main_thread():
        return False  # no fork, or signal handlers cannot be set
    try:
        sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # in-memory streams: a child's output would be lost
    return True


def _in_child(command: Callable[[], Any], store: str) -> Any:
    sys.stdout.flush()
    sys.stderr.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, hand back how it ended, and never return into the parent's stack
        os.close(read)
        _child(command, write)
    os.close(write)
    with _passing_signals_to(pid):
        with os.fdopen(read, "rb") as pipe:
            ended = pipe.read()
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if ended:
        raise pickle.loads(ended)
    if code < 0 and -code in _FATAL:
        raise damaged(store, _FATAL[signal.Signals(-code)])
    if code < 0:
        raise SystemExit(128 - code)
    if code:
        raise SystemExit(code)
    return None


def _child(command: Callable[[], Any], write: int) -> None:
    try:
        try:
            command()
        except BaseException as exc:  # handed to the parent, which raises it again
            try:
                data = pickle.dumps(exc)
            except Exception:  # an exception that does not pickle: its text
                data = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"))
            with contextlib.suppress(OSError):
                os.write(write, data)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(0)  # how it ended is in the pipe; a fatal signal never gets here


@contextlib.contextmanager
def _passing_signals_to(pid: int) -> Iterator[None]:
    """While the child runs, SIGTERM and SIGINT sent to the parent go to the child (which ends as the
    command would). A Ctrl-C on a terminal reaches the child directly: then the parent ignores it."""

    def forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    on_terminal = False
    with contextlib.suppress(OSError):
        on_terminal = os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN if on_terminal else forward),
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
