"""Log records emitted inside items that run in other processes reach the coordinator's logging.

    coordinator: MapSpec.log_levels = the levels its loggers are set to (root included)
    worker:      run_chunk ── with capture(spec): those levels are applied; a handler on the root
                 logger keeps each record the chunk's thread emits (made plain and picklable), with
                 the item's execution, operation and index attached
                 ChunkResult.logs ─────────────────────────────────────────────> coordinator
    coordinator: emit(records): each rebuilt as a LogRecord and handed to the logger of its name
                 when that logger is enabled for its level, so logging.basicConfig, pytest's caplog
                 and the user's handlers see it as if the item had run on a thread, as in the SDK.

Records travel with their chunk's results, so they arrive when the chunk is done; those of a chunk
whose worker died are lost with it. Items that run in the coordinator's own process (the inline
executor, Dask workers in-process) log directly and are not captured.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from durablemap._store import path_str

__all__ = ["adopt", "capture", "current", "emit", "logger_levels"]

# Attributes every LogRecord has: everything else on a record came from ``extra``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def logger_levels() -> dict[str, int]:
    """The levels set on this process's loggers (``""`` is the root): what a worker applies, so
    that it creates the records the coordinator would log."""
    levels = {"": logging.getLogger().level}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


class _Capture:
    """The records of one chunk, and where its items are."""

    def __init__(self, execution_id: str, path: tuple[int, ...], state: Any) -> None:
        self.records: list[dict[str, Any]] = []
        self.execution_id = execution_id
        self.path = path
        self.state = state
        self.open = True  # until its chunk is over (see ``capture``)

    def keep(self, record: logging.LogRecord) -> None:
        index = self.state.item_index
        data = {k: v for k, v in record.__dict__.items() if k not in ("args", "exc_info", "msg", "message")}
        data["msg"], data["args"], data["exc_info"] = record.getMessage(), None, None
        if record.exc_info and not record.exc_text:
            data["exc_text"] = logging.Formatter().formatException(record.exc_info)
        for key in [k for k in data if k not in _STANDARD]:
            try:
                pickle.dumps(data[key])
            except Exception:
                data[key] = repr(data[key])
        data.setdefault("executionArn", self.execution_id)
        if index is not None:
            data.setdefault("operationId", path_str((*self.path, index)))
            data.setdefault("itemIndex", index)
        self.records.append(data)


class _Router(logging.Handler):
    """The root handler of a worker process while chunks run: a record goes to the capture of the
    thread that emitted it, or, from a thread no chunk owns (one the item started), to the only
    chunk running, if there is just one."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            capture = _active.get(record.thread or 0)
            if capture is None:
                chunks = {id(c): c for c in _active.values()}
                capture = next(iter(chunks.values())) if len(chunks) == 1 else None
            if capture is not None:
                capture.keep(record)
        except Exception:
            self.handleError(record)


_lock = threading.Lock()
_active: dict[int, _Capture] = {}
_router = _Router()
_saved_levels: dict[str, int] = {}


@contextmanager
def capture(execution_id: str, path: tuple[int, ...], state: Any,
            levels: dict[str, int] | None) -> Iterator[list[dict[str, Any]]]:
    """Keep the records this thread emits (and, while it is the only chunk running, those of
    threads its items start) in the yielded list, instead of letting them go to this process's
    handlers."""
    kept = _Capture(execution_id, path, state)
    thread = threading.get_ident()
    with _lock:
        if not _active:
            _apply(levels or {})
            logging.getLogger().addHandler(_router)
        _active[thread] = kept
    try:
        yield kept.records
    finally:
        with _lock:
            # This chunk's thread, and any item thread it adopted that outlived it (an item past
            # its timeout on Dask runs on): their records are no longer this chunk's.
            kept.open = False
            for ident in [i for i, c in _active.items() if c is kept]:
                del _active[ident]
            if not _active:
                logging.getLogger().removeHandler(_router)
                _restore()


def current() -> object | None:
    """The capture of the calling thread's chunk, for `adopt` in a thread that runs one of its items."""
    return _active.get(threading.get_ident())


@contextmanager
def adopt(owner: object | None) -> Iterator[None]:
    """Route the calling thread's records to ``owner`` (from `current`) while the block runs."""
    if not isinstance(owner, _Capture):
        yield
        return
    thread = threading.get_ident()
    with _lock:
        routed = owner.open  # else its chunk is over: log as usual
        if routed:
            _active[thread] = owner
    if not routed:
        yield
        return
    try:
        yield
    finally:
        with _lock:
            if _active.get(thread) is owner:
                del _active[thread]


def _apply(levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logger = logging.getLogger(name or None)
        if logger.level != level:
            _saved_levels[name] = logger.level
            logger.setLevel(level)


def _restore() -> None:
    for name, level in _saved_levels.items():
        logging.getLogger(name or None).setLevel(level)
    _saved_levels.clear()


def emit(records: Sequence[dict[str, Any]]) -> None:
    """Log records that a worker captured, through this process's loggers of the same names."""
    for data in records:
        record = logging.makeLogRecord(data)
        logger = logging.getLogger(record.name if record.name != "root" else None)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
