"""``SystemExit`` and ``KeyboardInterrupt`` raised by an item's own code, told apart from a real stop.

An item (or a step inside it) that calls ``sys.exit()`` (a command-line ``main()``, an argparse error)
or raises ``KeyboardInterrupt`` itself fails that item only; the map goes on. A real Ctrl-C or SIGTERM
must still stop the job as before. Where items run decides how the two are told apart:

- loky workers ignore SIGINT and SIGTERM (the coordinator handles them), and Dask runs items on
  threads that never receive signals: there, every such exception comes from the item's code;
- an inline map runs items on the main thread, which does receive signals: while a chunk runs there,
  the Python handlers of SIGINT and SIGTERM are wrapped to count the signals that arrive, and an
  interrupt raised after one arrived is real.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["EXITS", "describe_exit", "is_real_interrupt", "watching_signals"]

#: The exceptions an item may raise to ask the program to stop; they fail the item instead.
EXITS = (SystemExit, KeyboardInterrupt)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_signals_seen = 0  # SIGINT or SIGTERM that arrived while a watching_signals() block ran


@contextlib.contextmanager
def watching_signals() -> Iterator[None]:
    """Count the stop signals that arrive in this block (main thread only; elsewhere none arrive).

    Handlers that are Python callables (the default SIGINT handler, durablemap's SIGTERM handler, a
    user's own) are wrapped and still run; ignored or default dispositions are left alone.
    """
    global _signals_seen
    _signals_seen = 0
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed: dict[signal.Signals, Any] = {}
    for signum in _STOP_SIGNALS:
        previous = signal.getsignal(signum)
        if callable(previous):
            wrapper = _counting(previous)
            signal.signal(signum, wrapper)
            installed[signum] = (previous, wrapper)
    try:
        yield
    finally:
        for signum, (previous, wrapper) in installed.items():
            if signal.getsignal(signum) is wrapper:  # an item that set its own handler keeps it
                signal.signal(signum, previous)


def _counting(handler: Any) -> Any:
    def counting(signum: int, frame: FrameType | None) -> Any:
        global _signals_seen
        _signals_seen += 1
        return handler(signum, frame)
    return counting


def is_real_interrupt(exc: BaseException) -> bool:
    """True when ``exc`` is a ``KeyboardInterrupt`` that a real SIGINT or SIGTERM may have caused
    (one arrived during the current ``watching_signals`` block): it must stop the job."""
    return isinstance(exc, KeyboardInterrupt) and _signals_seen > 0


def describe_exit(exc: BaseException, where: str) -> str:
    """The error message of an item (or step) whose code raised ``exc``, one of `EXITS`."""
    if isinstance(exc, SystemExit):
        why = ("an item cannot end the program. If it calls a command-line main(), call the function "
               "under it instead, or catch SystemExit inside the item")
    else:
        why = ("the item's code raised it, no Ctrl-C did (a real one stops the whole job). Raise an "
               "ordinary exception to fail an item")
    return f"{where} raised {exc!r}: {why}. The item is FAILED and the map goes on."
