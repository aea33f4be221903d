"""Crash injection: kill a durable execution part-way, resume it, and check that it was resumable.

    crash_test(handler, event, after=N, kill="job")
      1. reference  in this process (DurableTestRunner): run uninterrupted ──> result, N_total operations
      2. crash      subprocess: run on store B; when the N-th operation record commits, SIGKILL
                    the whole job (kill="job": coordinator and workers, one process group) or only
                    the worker process that committed it (kill="worker": the map re-runs its items)
      3. resume     subprocess: run again on store B (a resume: only unfinished work runs)
      4. compare    result(B) == result(A); no operation recorded a finished outcome twice

Every process of steps 2-3 (the coordinator and its loky workers) carries a hook on the store's
commits: each SUCCEEDED/FAILED operation record that commits is appended to a journal file, and a
shared counter file decides when the N-th one has committed. An operation whose finished record
committed twice ran again after its outcome was recorded: exactly what a resume must never do.

The crashed run and its resume are subprocesses so that they can be SIGKILLed like a real crash and so that the worker
processes they start carry the hook; the handler is imported there by ``"module:qualname"``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

import cloudpickle
import psutil

from durablemap import ErrorObject, SerDesError, StoreError, ValidationError
from durablemap._records import decode_record
from durablemap._store import Store, decode_key, execution_prefix, path_str, set_commit_hook
from durablemap.lambda_service import OperationStatus, OperationSubType
from durablemap.store import Operation, StoreReader
from durablemap.testing._runner import DurableFunctionTestResult, DurableTestRunner, InvocationStatus, _Snapshot

__all__ = ["CrashReport", "crash_test", "handler_spec"]

_PLAN_ENV = "DURABLEMAP_CRASH_PLAN"
_EXECUTION_ID = "durablemap-crash-test"
_KILL_MODES = ("job", "worker")
_FINISHED = (OperationStatus.SUCCEEDED, OperationStatus.FAILED)
_ITEM_SUB_TYPES = (OperationSubType.MAP_ITERATION, OperationSubType.PARALLEL_BRANCH)


@dataclass
class CrashReport:
    """What one crash test did and found; ``check()`` raises AssertionError on a problem."""

    handler: str
    kill: str
    #: The crash was injected when this many operation records had committed.
    after: int
    #: Finished operation records an uninterrupted run commits.
    total_operations: int
    #: Whether the kill happened (the N-th record committed in a process the mode may kill).
    crashed: bool
    #: Distinct operations recorded as finished when the crashed run ended.
    recorded_before_resume: int
    #: Operations the resume itself recorded (the work that was left).
    recorded_by_resume: int
    reference_status: InvocationStatus
    resumed_status: InvocationStatus
    reference_result: Any
    resumed_result: Any
    #: Operation id -> how many times its finished record committed, for every id above 1.
    ran_twice: dict[str, int] = field(default_factory=dict)
    #: The resumed execution, inspectable like a test run (``get_map``, ``operations``, ...).
    resumed: DurableFunctionTestResult | None = None

    def problems(self) -> list[str]:
        """What went wrong, in words (empty when the execution proved resumable)."""
        out = []
        if not self.crashed:
            where = " in a worker process" if self.kill == "worker" else ""
            out.append(f"no crash happened: no operation record committed{where} at or after record "
                       f"{self.after} of {self.total_operations}")
        if self.resumed_status != self.reference_status:
            out.append(f"the resumed execution {self.resumed_status}, the uninterrupted one {self.reference_status}")
        if self.resumed_result != self.reference_result:
            out.append(f"the resumed result {self.resumed_result!r} differs from the uninterrupted "
                       f"run's {self.reference_result!r}")
        if self.ran_twice:
            listed = ", ".join(f"'{op}' x{n}" for op, n in sorted(self.ran_twice.items()))
            out.append(f"operations recorded as finished ran again after the crash: {listed}")
        return out

    def check(self) -> CrashReport:
        """Raise AssertionError listing every problem; return self when there is none."""
        problems = self.problems()
        if problems:
            raise AssertionError(
                f"crash test of {self.handler} (kill={self.kill!r} after {self.after} of "
                f"{self.total_operations} recorded operations) failed:\n- " + "\n- ".join(problems))
        return self


def handler_spec(handler: Any) -> str:
    """``"module:qualname"`` naming ``handler`` so that a subprocess can import it."""
    if isinstance(handler, str):
        if ":" not in handler:
            raise ValidationError(f"handler {handler!r} must be 'package.module:name'.")
        return handler
    module = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<locals>" in qualname:
        raise ValidationError(
            f"crash_test runs the handler in a subprocess, which must import it, but {handler!r} is "
            f"defined in {module!r} as {qualname!r}. Define it at module level in an importable module, "
            "or pass 'package.module:name'.")
    return f"{module}:{qualname}"


def crash_test(handler: Any, event: Any = None, *, after: int | None = None, kill: str = "job",
               seed: int | None = None, workers: int | None = None, executor: str | None = None,
               real_time: bool = False, timeout: float = 120.0, check: bool = True) -> CrashReport:
    """Run ``handler`` on ``event`` uninterrupted, then again with a kill after the ``after``-th
    recorded operation (random when None, from ``seed``; with ``kill="worker"`` among the operations
    inside map items), resume it, and compare.

    ``kill="job"`` SIGKILLs the coordinator and all its workers, like a power loss or ``kill -9``;
    ``kill="worker"`` SIGKILLs only the worker process whose commit was the ``after``-th or a later
    one (operations inside map items: steps, waits, child contexts). ``handler`` is a durable handler
    defined at module level, or ``"package.module:name"``. Raises AssertionError (with ``check``)
    when the resumed execution differs or an operation ran twice; returns the report.
    """
    if kill not in _KILL_MODES:
        raise ValidationError(f"kill must be one of {_KILL_MODES}, got {kill!r}.")
    if kill == "worker" and executor == "inline":
        raise ValidationError("kill='worker' needs worker processes; executor='inline' has none.")
    spec = handler_spec(handler)
    workdir = tempfile.mkdtemp(prefix="durablemap-crash-")
    try:
        with open(os.path.join(workdir, "event.pkl"), "wb") as fh:
            cloudpickle.dump(event, fh)
        base: dict[str, Any] = {"handler": spec, "event_file": os.path.join(workdir, "event.pkl"), "workers": workers,
                "executor": executor, "real_time": real_time, "execution_id": _EXECUTION_ID}
        ref_status, ref_value, total, in_items = _reference(spec, event, workers, executor, real_time, timeout)
        # A worker commits only the operations inside items; N at most their count is sure to be
        # reached by a worker's commit.
        limit = in_items if kill == "worker" else total
        if limit < 1:
            what = "operation inside a map item or parallel branch" if kill == "worker" else "operation"
            raise ValidationError(f"{spec} recorded no {what} on {event!r}: there is nothing to crash after.")
        n = after if after is not None else random.Random(seed).randint(1, limit)
        if not 1 <= n <= total:
            raise ValidationError(f"after={n}, but an uninterrupted run of {spec} records {total} operations.")
        crashed: dict[str, Any] = dict(base, store=os.path.join(workdir, "crashed"),
                       journal=os.path.join(workdir, "crashed.journal"),
                       kill={"mode": kill, "after": n, "counter": os.path.join(workdir, "counter"),
                             "flag": os.path.join(workdir, "killed")})
        _run_child(crashed, workdir, timeout)
        # Counted from the store, not the journal: a process SIGKILLed by another's crash between
        # its commit and its journal line leaves a record the journal never hears of (the resume
        # does not run it again, rightly).
        before = len(_recorded(crashed["store"]))
        _run_child(dict(crashed, kill=None), workdir, timeout)
        commits = _journal(crashed["journal"])
        counts = Counter(commits)
        status, value = _outcome(_read_execution(crashed["store"]))
        report = CrashReport(
            handler=spec, kill=kill, after=n, total_operations=total,
            crashed=os.path.exists(crashed["kill"]["flag"]), recorded_before_resume=before,
            recorded_by_resume=len(_recorded(crashed["store"])) - before, reference_status=ref_status,
            resumed_status=status, reference_result=ref_value, resumed_result=value,
            ran_twice={op: c for op, c in counts.items() if c > 1 and op not in _reassembled(crashed["store"])},
            resumed=_view(crashed["store"], status, value))
    finally:
        with contextlib.suppress(Exception):
            Store.for_process(os.path.join(workdir, "crashed")).close()
        shutil.rmtree(workdir, ignore_errors=True)
    return report.check() if check else report


# -- the parent side ---------------------------------------------------------------------------------


def _run_child(plan: dict[str, Any], workdir: str, timeout: float) -> int:
    """Run one plan in a subprocess that leads its own process group; leave no process behind."""
    plan_file = os.path.join(workdir, "plan.json")
    with open(plan_file, "w") as fh:
        json.dump(plan, fh)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.pop(_PLAN_ENV, None)
    code = "from durablemap.testing._crash import _child_main; _child_main()"
    with open(os.path.join(workdir, "stderr"), "w+b") as err:
        proc = subprocess.Popen([sys.executable, "-c", code, plan_file], env=env, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _reap_group(proc.pid)
            proc.wait()
            raise TimeoutError(f"the durable execution of {plan['handler']} did not finish within "
                               f"{timeout:g} s in its subprocess; raise timeout=.") from None
        finally:
            _reap_group(proc.pid)
        if returncode not in (0, 1, -signal.SIGKILL):
            err.seek(0)
            tail = err.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"the crash-test subprocess for {plan['handler']} exited with {returncode}:\n{tail}")
    return returncode


def _reap_group(pgid: int) -> None:
    """SIGKILL whatever is left of the process group ``pgid`` and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    left = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
    psutil.wait_procs(left, timeout=10)


def _journal(path: str) -> list[str]:
    """The operation ids whose finished records committed, one entry per commit."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        return [line.split(" ", 1)[0] for line in fh if line.strip()]


def _recorded(store_path: str) -> set[str]:
    """The operations (but the execution itself) whose finished record is in the store."""
    with StoreReader.open(store_path) as reader:
        return {op.id for op in reader.operations(_EXECUTION_ID) if op.finished}


def _read_execution(store_path: str) -> Operation:
    """The execution's own record."""
    try:
        with StoreReader.open(store_path) as reader:
            return reader.operation(_EXECUTION_ID, "")
    except StoreError:
        raise RuntimeError(f"no execution was recorded in {store_path}") from None


def _reference(spec: str, event: Any, workers: int | None, executor: str | None, real_time: bool,
               timeout: float) -> tuple[InvocationStatus, Any, int, int]:
    """Run the handler uninterrupted, in this process: its outcome, how many operations it records,
    and how many of those are inside map items or parallel branches (a worker records those)."""
    with DurableTestRunner(_resolve(spec), workers=workers, executor=executor, real_time=real_time) as runner:
        run = runner.run(event, timeout=timeout)
    status, value = _outcome(run._snapshot.operations[()])
    done = (OperationStatus.SUCCEEDED, OperationStatus.FAILED)
    finished = [op for op in run.get_all_operations() if op.status in done]
    items = {op.path for op in run.get_all_operations() if op.sub_type in _ITEM_SUB_TYPES}
    in_items = sum(any(op.path[:i] in items for i in range(1, len(op.path))) for op in finished)
    return status, value, len(finished), in_items


def _resolve(spec: str) -> Any:
    """Import ``"module:qualname"``."""
    module, _, qualname = spec.partition(":")
    obj: Any = import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _outcome(execution: Operation) -> tuple[InvocationStatus, Any]:
    """The recorded status and result (or error) of an execution's own record."""
    if execution.status == OperationStatus.FAILED:
        return InvocationStatus.FAILED, (execution.error or ErrorObject(None, None)).to_dict()
    if execution.status != OperationStatus.SUCCEEDED:
        return InvocationStatus.PENDING, None
    if execution.payload is None:
        return InvocationStatus.SUCCEEDED, execution.meta.get("result_repr")
    try:
        return InvocationStatus.SUCCEEDED, execution.result()
    except SerDesError:
        return InvocationStatus.SUCCEEDED, execution.payload


def _reassembled(store_path: str) -> set[str]:
    """Child contexts too large to record whole: a replay runs their block again by design."""
    with StoreReader.open(store_path) as reader:
        return {op.id for op in reader.operations(_EXECUTION_ID)
                if op.meta.get("replay_children") and op.sub_type == OperationSubType.RUN_IN_CHILD_CONTEXT}


def _view(store_path: str, status: InvocationStatus, value: Any) -> DurableFunctionTestResult:
    snapshot = _Snapshot.read(store_path, _EXECUTION_ID)
    error = snapshot.operations[()].error
    result = value if status is InvocationStatus.SUCCEEDED else None
    return DurableFunctionTestResult(status, result, error, snapshot, os.path.realpath(store_path))


# -- the child side: runs in the subprocess and in each of its workers ------------------------------


def _child_main() -> None:
    """Entry point of a crash-test subprocess: ``python -c ... PLAN.json``."""
    with open(sys.argv[1]) as fh:
        plan = json.load(fh)
    os.environ[_PLAN_ENV] = json.dumps(plan)  # loky workers inherit it
    _install_hooks(plan, in_worker=False)
    os.environ["DURABLEMAP_WORKER_SETUP"] = f"{__name__}:_worker_hooks"  # loky workers run it at start

    from durablemap._clock import Clock, VirtualClock
    handler = _resolve(plan["handler"])
    with open(plan["event_file"], "rb") as fh:
        event = cloudpickle.load(fh)
    try:
        handler.run(event, store=plan["store"], execution_id=plan["execution_id"], workers=plan["workers"],
                    executor=plan["executor"], progress=False,
                    clock=Clock() if plan["real_time"] else VirtualClock())
    except Exception:
        sys.exit(1)  # recorded as the execution's outcome; the parent reads it from the store
    sys.exit(0)


def _worker_hooks() -> None:
    """Run by each loky worker at start ($DURABLEMAP_WORKER_SETUP): the commit hook."""
    _install_hooks(json.loads(os.environ[_PLAN_ENV]), in_worker=True)


def _install_hooks(plan: dict[str, Any], *, in_worker: bool) -> None:
    """Hook this process's store commits: journal finished records, kill at the planned one."""
    prefix = execution_prefix(plan["execution_id"])
    set_commit_hook(lambda pairs: _committed(plan, prefix, pairs, in_worker))


def _committed(plan: dict[str, Any], prefix: bytes, pairs: list[tuple[bytes, bytes]], in_worker: bool) -> None:
    lines = []
    for key, value in pairs:
        if not key.startswith(prefix) or len(key) == len(prefix):
            continue  # another execution, or the execution's own record (a resume rewrites it)
        record = decode_record(value)
        if record.status in _FINISHED:
            lines.append(f"{path_str(decode_key(key)[1])} {record.status} {os.getpid()}\n")
    if not lines:
        return
    _append(plan["journal"], "".join(lines).encode())
    kill = plan.get("kill")
    if not kill:
        return
    count = _append(kill["counter"], b"." * len(lines))
    if count < kill["after"] or (kill["mode"] == "worker" and not in_worker):
        return
    try:
        os.close(os.open(kill["flag"], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return  # another process of the job already crashed it
    if kill["mode"] == "job":
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _append(path: str, data: bytes) -> int:
    """Append atomically (one O_APPEND write); the file's size after it."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        os.write(fd, data)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)
