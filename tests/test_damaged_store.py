"""A damaged store explains itself: a StoreError saying it is damaged, where, and what to do, from
every command and from handler.run, never a SIGBUS or a traceback from deep inside the library.

Every case runs in a subprocess: a regression here kills the process with SIGBUS (LMDB maps the file,
and touching a page past the end of a truncated file is fatal), which must not take pytest with it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from ._damage import branch_flag, damage_a_leaf, finished_job, lmdb_abort, lmdb_error, random_bytes

JOB = textwrap.dedent('''
    import sys
    from durablemap import durable_execution

    def work(context, item, index, items):
        return {"i": index, "s": "x" * 50}

    @durable_execution
    def handler(event, context):
        return context.map(list(range(20000)), work, name="m").success_count

    if __name__ == "__main__":
        print("RESULT", handler.run(None, store=sys.argv[1], execution_id="j", workers=2, progress=False))
''')

COMMANDS = [["ls"], ["show", "j"], ["failures", "j"], ["export", "j", "--map", "m"]]


@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 20,000-item job's store (about 2 MB, 494 pages) and the job's script."""
    return finished_job(tmp_path_factory.mktemp("damage"), JOB, 20000)


def damaged_copy(good: Path, tmp_path: Path, damage: Callable[[Path], None]) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("data.mdb", "lock.mdb"):
        (store / name).write_bytes((good / name).read_bytes())
    damage(store / "data.mdb")
    return store


def cut_in_half(data: Path) -> None:
    os.truncate(data, data.stat().st_size // 2)


def overwrite(offset: int, size: int) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        with open(data, "r+b") as fh:
            fh.seek(offset)
            fh.write(random.Random(offset).randbytes(size))
    return damage


def commands_explain(store: Path, *words: str, commands: list[list[str]] = COMMANDS) -> list[str]:
    """Every command exits 2 with one line naming the store and ``words`` and the salvage command to
    run; returns what each wrote on stderr."""
    errs = []
    for command in commands:
        out = subprocess.run([sys.executable, "-m", "durablemap", command[0], "--store", str(store), *command[1:]],
                             capture_output=True, timeout=120, check=False)
        err = out.stderr.decode()
        assert out.returncode == 2, (command, out.returncode, err)  # a SIGBUS would be -7, an abort -6
        assert f"durablemap: store {store}" in err and all(w in err for w in words), (command, err)
        assert "Traceback" not in err, (command, err)
        assert f"`durablemap salvage {store} {store}-salvaged`" in err, (command, err)
        errs.append(err)
    return errs


def assert_explained(store: Path, script: Path, *words: str, commands: list[list[str]] = COMMANDS) -> None:
    """The commands explain the damage (``commands_explain``); handler.run raises StoreError saying
    the same."""
    commands_explain(store, *words, commands=commands)
    run = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, timeout=300, check=False)
    err = run.stderr.decode()
    assert run.returncode == 1, (run.returncode, err)
    assert err.strip().splitlines()[-1].startswith(f"durablemap._errors.StoreError: store {store}"), err
    assert f"`durablemap salvage {store} {store}-salvaged`" in err, err
    assert all(w in err for w in words) and "restore it from a copy" in err.lower().replace("restore the store directory from a copy", "restore it from a copy"), err


def test_a_truncated_store_is_reported_not_a_sigbus(tmp_path: Path, good_store: tuple[Path, Path]) -> None:
    script, good = good_store
    store = damaged_copy(good, tmp_path, cut_in_half)
    assert_explained(store, script, "is damaged: data.mdb is", "the file was cut short")


def test_a_page_of_random_bytes_is_reported(tmp_path: Path, good_store: tuple[Path, Path]) -> None:
    script, good = good_store
    # A leaf of the records' B-tree in the middle of the file, which LMDB reports as an error (which
    # page that is depends on how the job's commits fell: a fixed page was sometimes a free one).
    store = damaged_copy(good, tmp_path, lambda data: None)
    damage_a_leaf(store, random_bytes, lmdb_error)
    # ls and show read other pages and work; the commands that read every item record, and the
    # replay, meet the damage.
    assert_explained(store, script, "is damaged", commands=COMMANDS[2:])


def test_a_damaged_meta_page_is_reported_as_damage(tmp_path: Path, good_store: tuple[Path, Path]) -> None:
    script, good = good_store
    store = damaged_copy(good, tmp_path, overwrite(16, 64))  # LMDB's first header (meta) page
    assert_explained(store, script, "is damaged: data.mdb's header page 0 (of 2) is overwritten")


def test_a_file_that_is_not_lmdb_says_both_possibilities(tmp_path: Path, good_store: tuple[Path, Path]) -> None:
    script, good = good_store
    store = damaged_copy(good, tmp_path, overwrite(0, 3 * 4096))
    assert_explained(store, script, "not an LMDB file, or both its header pages are damaged")


def test_a_page_that_makes_lmdb_abort_is_explained_by_the_commands(tmp_path: Path,
                                                                    good_store: tuple[Path, Path]) -> None:
    """LMDB stops the process on an internal assertion (abort(), which Python cannot catch) when its
    cursor walks into a leaf marked as a branch. The commands run in a child, so each one that meets it
    ends with LMDB's line, then the store's message: damaged, where, and the salvage command."""
    script, good = good_store
    store = damaged_copy(good, tmp_path, lambda data: None)
    damage_a_leaf(store, branch_flag, lmdb_abort)
    # failures and export read every item record; ls and show read other pages
    words = f"durablemap: store {store}: is damaged: reading it made LMDB stop the process"
    for err in commands_explain(store, words, commands=COMMANDS[2:]):
        assert "Assertion 'IS_LEAF(mp)' failed" in err, err
    # handler.run reads in the job's own process: there LMDB's abort still ends it (README: a limit)
    run = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, timeout=300, check=False)
    assert run.returncode == -signal.SIGABRT, (run.returncode, run.stderr.decode())


def test_a_command_run_in_its_child_ends_with_the_parent(good_store: tuple[Path, Path]) -> None:
    """A SIGTERM sent to the command's process reaches the child that runs it: both end, the child
    first, and the exit code says so (143), whatever the child was doing (here, blocked writing to a
    pipe nobody reads)."""
    _, good = good_store
    command = subprocess.Popen([sys.executable, "-m", "durablemap", "export", "j", "--map", "m", "--store", str(good)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert command.stdout is not None and command.stdout.readline().startswith(b'{"index": 0')
        [child] = psutil.Process(command.pid).children()  # 2 MB of rows: it waits for the pipe
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 128 + signal.SIGTERM
        assert not psutil.pid_exists(child.pid) or child.status() == psutil.STATUS_ZOMBIE
    finally:
        command.kill()
        command.communicate()


UNREADABLE = textwrap.dedent('''
    import os, sys
    from durablemap import StoreError
    from durablemap._store import Store
    from durablemap.cli import main
    os.setgid(65534)
    os.setuid(65534)  # the user nobody, for whom the store directory is unreadable
    try:
        Store.open(sys.argv[1], readonly=True)
    except StoreError as exc:
        print("STOREERROR", exc)
    main(["ls", "--store", sys.argv[1]])
''')


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to the user nobody, which needs root")
def test_an_unreadable_store_directory_is_a_store_error(tmp_path: Path) -> None:
    """A real permission error: the subprocess drops to the user nobody (uid 65534) after its
    imports (nobody cannot read this Python installation) and opens a store it may not list."""
    parent = Path(tempfile.mkdtemp(prefix="durablemap-perm-test-"))
    try:
        parent.chmod(0o711)  # nobody may pass through, not list
        store = parent / "store"
        store.mkdir(mode=0o700)
        (store / "data.mdb").write_bytes(b"")
        script = tmp_path / "unreadable.py"
        script.write_text(UNREADABLE)
        out = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, timeout=60, check=False)
        text = out.stdout.decode() + out.stderr.decode()
        assert f"STOREERROR store {store}: cannot list the directory (Permission denied)" in text, text
        assert out.returncode == 2 and "durablemap: store" in out.stderr.decode(), text
        assert "Traceback" not in text, text
    finally:
        for path in sorted(parent.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        parent.rmdir()
