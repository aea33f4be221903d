"""The store layer: keys, records, scans, opening errors, growth across processes, execution locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durablemap._errors import ExecutionLockedError, StoreError
from durablemap._store import (
    FORMAT_VERSION,
    Store,
    decode_key,
    execution_prefix,
    op_key,
    parse_path,
    path_str,
)
from durablemap._store._env import SharedEnv

REPO = Path(__file__).resolve().parents[1]
SMALL_MAP = 256 * 1024  # a few dozen pages: any real amount of data must grow it


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    """Every test that starts processes must leave none behind (processes that were there before
    the test, such as an earlier test's idle worker pool, are not its to clean up)."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 5
    while True:
        left = [p for p in psutil.Process().children(recursive=True)
                if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert left == [], f"processes left behind: {left}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "store")
    yield s
    s.close()


def start_python(code: str) -> subprocess.Popen[str]:
    """A Python subprocess running ``code`` with this checkout importable; stdout is a text pipe."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, text=True,
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdout, proc.stdin):
        if stream is not None:
            stream.close()


# -- keys -----------------------------------------------------------------------------------------


def test_key_layout_and_round_trip() -> None:
    key = op_key("exec", (1, 3, 2))
    assert key == b"exec\x00" + b"\x00\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00\x02"
    assert key.startswith(execution_prefix("exec"))
    assert key.startswith(op_key("exec", (1, 3)))
    assert decode_key(key) == ("exec", (1, 3, 2))
    assert decode_key(op_key("é", ())) == ("é", ())
    assert path_str((1, 3, 2)) == "1/3/2"
    assert parse_path("1/3/2") == (1, 3, 2)
    assert parse_path(path_str(())) == ()


def test_items_sort_in_index_order_and_executions_do_not_overlap() -> None:
    indexes = [0, 1, 2, 9, 10, 255, 256, 65_535, 65_536, 2**32 - 1]
    keys = [op_key("e", (4, i)) for i in reversed(indexes)]
    assert [decode_key(k)[1][-1] for k in sorted(keys)] == indexes
    # "a"'s prefix must not match "ab"'s records.
    assert not op_key("ab", (1,)).startswith(execution_prefix("a"))


@pytest.mark.parametrize("bad", [lambda: op_key("e", (-1,)), lambda: op_key("e", (2**32,)),
                                 lambda: op_key("a\x00b", (1,)), lambda: op_key("x" * 600, (1,)),
                                 lambda: parse_path("1//2"), lambda: parse_path("1/-2"),
                                 lambda: parse_path("a"), lambda: parse_path("1/+2"),
                                 lambda: parse_path(str(2**32)), lambda: decode_key(b"no-nul"),
                                 lambda: decode_key(b"e\x00\x00\x01"), lambda: decode_key(b"\xff\x00")])
def test_bad_keys_and_paths_raise_store_error(bad: object) -> None:
    with pytest.raises(StoreError):
        bad()  # type: ignore[operator]


@given(st.binary(max_size=64))
def test_decode_key_of_random_bytes_raises_only_store_error(raw: bytes) -> None:
    try:
        execution_id, path = decode_key(raw)
    except StoreError:
        return
    assert op_key(execution_id, path) == raw


@given(st.text(max_size=20))
def test_parse_path_of_random_text_raises_only_store_error(text: str) -> None:
    try:
        path = parse_path(text)
    except StoreError:
        return
    assert parse_path(path_str(path)) == path


# -- records --------------------------------------------------------------------------------------


def test_put_get_put_many_scan(store: Store) -> None:
    assert store.get(b"missing") is None
    store.put(b"k", b"v")
    assert store.get(b"k") == b"v"
    # put_many takes any iterable (here a generator) in one transaction.
    store.put_many((op_key("e", (1, i)), str(i).encode()) for i in range(300))
    scanned = list(store.scan(op_key("e", (1,))))
    assert [decode_key(k)[1] for k, _ in scanned] == [(1, i) for i in range(300)]
    assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in scanned)
    assert store.count_prefix(execution_prefix("e")) == 300
    assert store.count_prefix(b"") == 301
    assert list(store.scan(b"zzz")) == []
    store.put_columns([b"c1", b"c2"], [b"1", b"2"])
    assert list(store.scan(b"c")) == [(b"c1", b"1"), (b"c2", b"2")]
    with pytest.raises(StoreError, match="one value per key"):
        store.put_columns([b"c3"], [])


def test_scan_children_skips_descendants(store: Store) -> None:
    parent = op_key("e", (2,))
    store.put(parent, b"map")
    for i in range(50):
        if i != 7:  # item 7 has steps recorded but no item record of its own yet
            store.put(op_key("e", (2, i)), b"item%d" % i)
        if i % 3 == 0:
            store.put_many([(op_key("e", (2, i, s)), b"step") for s in range(5)])
            store.put(op_key("e", (2, i, 1, 1)), b"deeper")
    store.put(op_key("e", (2, 2**32 - 1, 0)), b"last child has only descendants")
    store.put(op_key("e", (3, 0)), b"next operation")
    children = list(store.scan_children(parent))
    assert [i for i, _, _ in children] == [i for i in range(50) if i != 7]
    assert all(v == b"item%d" % i and decode_key(k)[1] == (2, i) for i, k, v in children)
    assert list(store.scan_children(op_key("e", (9,)))) == []
    # children_columns (the replay fast path) returns the same children, as columns.
    indexes, values = store.children_columns(parent)
    assert indexes == [int.from_bytes(k[-4:], "big") for _, k, _ in children]
    assert values == [v for _, _, v in children]
    assert store.children_columns(op_key("e", (9,))) == ([], [])
    tops = list(store.scan_children(execution_prefix("e")))
    assert [i for i, _, _ in tops] == [2]


def _mapped_kib(path: str) -> int:
    """The resident KiB of this process's mappings of the file ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as smaps:
        for line in smaps:
            if "-" in line.split(" ", 1)[0]:  # a mapping's first line
                inside = line.rstrip("\n").endswith(" " + path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise are Linux's")
def test_pages_read_are_released_from_the_process_and_read_again(store: Store) -> None:
    parent = op_key("e", (1,))
    values = [os.urandom(1000) for _ in range(3000)]  # about 3 MB of leaf pages
    store.put_columns([parent + i.to_bytes(4, "big") for i in range(3000)], values)
    data = os.path.join(store.path, "data.mdb")
    assert store.children_columns(parent)[1] == values
    assert _mapped_kib(data) > 1000  # LMDB read them through its memory map
    store.release_read_pages()
    assert _mapped_kib(data) == 0
    assert store.children_columns(parent)[1] == values  # faulted in again from the page cache


def test_delete_and_count_prefix(store: Store) -> None:
    store.put_many([(op_key(e, (1, i)), b"x") for e in ("a", "ab", "b") for i in range(10)])
    assert store.delete_prefix(execution_prefix("a")) == 10
    assert store.count_prefix(execution_prefix("a")) == 0
    assert store.count_prefix(execution_prefix("ab")) == 10
    assert store.delete_prefix(b"") == 20  # every record, up to the last
    assert store.delete_prefix(b"") == 0


def test_index_tables(store: Store) -> None:
    store.index_put("executions", b"e2", b"2")
    store.index_put("executions", b"e1", b"1")
    store.index_put("other", b"e1", b"other")
    assert store.index_get("executions", b"e1") == b"1"
    assert list(store.index_scan("executions")) == [(b"e1", b"1"), (b"e2", b"2")]
    assert store.index_delete("executions", b"e1") is True
    assert store.index_delete("executions", b"e1") is False
    assert list(store.index_scan("executions")) == [(b"e2", b"2")]
    assert store.index_get("other", b"e1") == b"other"
    with pytest.raises(StoreError):
        store.index_put("", b"k", b"v")


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.dictionaries(st.binary(min_size=1, max_size=511), st.binary(max_size=2000), max_size=20))
def test_random_keys_and_values_round_trip(store: Store, records: dict[bytes, bytes]) -> None:
    store.delete_prefix(b"")
    store.put_many(records.items())
    assert list(store.scan(b"")) == sorted(records.items())
    for key, value in records.items():
        assert store.get(key) == value


def test_open_twice_in_one_process_shares_the_environment(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "s")
    second = Store.open(tmp_path / "s")
    first.put(b"k", b"v")
    first.close()
    assert second.get(b"k") == b"v"  # closing one handle must not close the other's environment
    second.close()
    with pytest.raises(StoreError, match="closed"):
        second.get(b"k")
    assert Store.for_process(tmp_path / "s") is Store.for_process(str(tmp_path / "s"))


def test_a_forked_child_neither_reuses_nor_breaks_its_parents_environment(tmp_path: Path) -> None:
    parent = Store.for_process(tmp_path / "s")
    parent.put(b"k", b"v")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, and never return into pytest
        try:
            try:
                Store.for_process(tmp_path / "s")
                message = "opened"
            except StoreError as exc:
                message = str(exc)
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    assert f"forked from pid {os.getpid()}" in message and "spawn" in message
    assert parent.get(b"k") == b"v"
    parent.put(b"k2", b"v2")


def test_readonly(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "nothing", readonly=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a durablemap store"):
        Store.open(tmp_path / "empty", readonly=True)
    with Store.open(tmp_path / "s") as s:
        s.put(b"k", b"v")
    with Store.open(tmp_path / "s", readonly=True) as ro:
        assert ro.get(b"k") == b"v"
        with pytest.raises(StoreError, match="read-only"):
            ro.put(b"k", b"w")


# -- opening: what is not a store -----------------------------------------------------------------


def test_new_store_is_private(tmp_path: Path) -> None:
    with Store.open(tmp_path / "a" / "b") as s:
        assert s.stat()["format_version"] == FORMAT_VERSION
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o700


def test_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match=r"f: is a file"):
        Store.open(tmp_path / "f")


def test_parent_is_a_file_cannot_create(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError, match="cannot create the directory"):
        Store.open(tmp_path / "f" / "store")


def test_non_empty_directory_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a durablemap store"):
        Store.open(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # no LMDB files left in the user's directory


def test_foreign_lmdb_environment_is_not_a_store_and_is_left_untouched(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path))
    with env.begin(write=True) as txn:
        txn.put(b"theirs", b"data")
    env.close()
    with pytest.raises(StoreError, match="not a durablemap store"):
        Store.open(tmp_path)
    env = lmdb.open(str(tmp_path))
    with env.begin() as txn:
        assert list(txn.cursor()) == [(b"theirs", b"data")]
    env.close()


def test_garbage_data_file_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(os.urandom(64 * 1024))
    with pytest.raises(StoreError, match=str(tmp_path)):
        Store.open(tmp_path)


def _rewrite_meta(path: Path, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(b"meta", txn=txn))
    env.close()


def _read_meta(path: Path, key: bytes) -> bytes | None:
    env = lmdb.open(str(path), max_dbs=8, readonly=True)
    try:
        with env.begin() as txn:
            value: bytes | None = txn.get(key, db=env.open_db(b"meta", txn=txn, create=False))
            return value
    finally:
        env.close()


def test_newer_format_version(tmp_path: Path) -> None:
    Store.open(tmp_path / "s").close()
    _rewrite_meta(tmp_path / "s", b"format", (FORMAT_VERSION + 1).to_bytes(4, "big"))
    with pytest.raises(StoreError, match=r"newer durablemap.*upgrade"):
        Store.open(tmp_path / "s")


def test_a_store_of_the_older_format_is_read_and_upgraded_when_written(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s") as store:
        store.put(op_key("e", (1, 0)), b"an item's record")
    _rewrite_meta(tmp_path / "s", b"format", (1).to_bytes(4, "big"))  # before runs (format 2)
    with Store.open(tmp_path / "s", readonly=True) as reader:
        assert reader.get(op_key("e", (1, 0))) == b"an item's record"
    assert _read_meta(tmp_path / "s", b"format") == (1).to_bytes(4, "big")  # reading changes nothing
    with Store.open(tmp_path / "s") as store:
        assert list(store.scan_children(op_key("e", (1,)))) == [(0, op_key("e", (1, 0)), b"an item's record")]
    assert FORMAT_VERSION == 2
    assert _read_meta(tmp_path / "s", b"format") == FORMAT_VERSION.to_bytes(4, "big")


def test_wrong_magic(tmp_path: Path) -> None:
    Store.open(tmp_path / "s").close()
    _rewrite_meta(tmp_path / "s", b"magic", b"someone-else")
    with pytest.raises(StoreError, match="not a durablemap store"):
        Store.open(tmp_path / "s")


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_full_is_a_store_error_and_keeps_commits(tiny_tmpfs: Path) -> None:
    with Store.open(tiny_tmpfs / "s") as s:
        batch = 0
        with pytest.raises(StoreError, match=r"put_many failed.*free disk space"):
            for batch in range(1000):  # batch is read after the loop: the last one failed
                s.put_many([(op_key("e", (batch, i)), os.urandom(1000)) for i in range(16)])
        assert 0 < batch < 1000
    with Store.open(tiny_tmpfs / "s") as s:
        assert s.count_prefix(b"") == batch * 16  # every committed batch is there, nothing of the failed one


def test_read_only_filesystem(tiny_tmpfs: Path) -> None:
    Store.open(tiny_tmpfs / "s").close()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(StoreError, match="not writable"):
        Store.open(tiny_tmpfs / "s")
    with pytest.raises(StoreError, match="cannot create"):
        Store.open(tiny_tmpfs / "new")


# -- concurrency and growth -----------------------------------------------------------------------

WRITER = """
    import sys
    from durablemap._store import Store, op_key
    store = Store.open(sys.argv[1] if len(sys.argv) > 1 else {path!r}, map_size={map_size})
    for batch in range({batches}):
        store.put_many([(op_key("w", (batch, i)), b"x" * {size}) for i in range(100)])
        if batch == 0:
            print("first", flush=True)
    print(store.stat()["map_size"], flush=True)
    store.close()
"""


def test_scan_sees_one_snapshot_while_another_process_writes(store: Store) -> None:
    writer = start_python(WRITER.format(path=store.path, map_size=64 << 30, batches=300, size=20))
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "first\n"
        seen = []
        while writer.poll() is None:
            # Each writer transaction adds 100 records: a snapshot never sees part of one.
            count = sum(1 for _ in store.scan(execution_prefix("w")))
            assert count % 100 == 0
            seen.append(count)
        assert writer.wait(timeout=30) == 0
        assert seen == sorted(seen)
        assert store.count_prefix(execution_prefix("w")) == 30_000
    finally:
        kill(writer)


def test_map_grows_across_two_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resizes: list[bool] = []
    real_resize = SharedEnv.resize

    def recording_resize(self: SharedEnv, operation: str, *, grow: bool) -> None:
        resizes.append(grow)
        real_resize(self, operation, grow=grow)

    monkeypatch.setattr(SharedEnv, "resize", recording_resize)
    path = tmp_path / "s"
    store = Store.open(path, map_size=SMALL_MAP)
    store.put(b"before", b"1")
    # The other process fills its tiny map (MapFullError -> grow); this one must then adopt the
    # new size on its next transaction (MapResizedError -> set_mapsize(0)), reads and writes alike.
    writer = start_python(WRITER.format(path=str(path), map_size=SMALL_MAP, batches=40, size=500))
    try:
        assert writer.stdout is not None
        out = writer.stdout.read().split()
        assert writer.wait(timeout=30) == 0
    finally:
        kill(writer)
    assert int(out[-1]) > SMALL_MAP
    assert store.get(op_key("w", (39, 99))) == b"x" * 500
    assert resizes == [False]  # adopted the other process's size (MapResizedError)
    assert store.count_prefix(execution_prefix("w")) == 4000
    store.put_many([(op_key("main", (i,)), b"y" * 500) for i in range(4000)])
    assert store.count_prefix(b"") == 8001
    assert store.stat()["map_size"] > int(out[-1])
    assert True in resizes  # and grew it itself (MapFullError)
    store.close()


def test_growth_with_a_scan_open_in_the_same_thread_fails_cleanly(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", map_size=SMALL_MAP) as store:
        store.put(b"a", b"1")
        scan = store.scan(b"")
        next(scan)
        with pytest.raises(StoreError, match="finish or close the scan"):
            store.put_many([(b"k%d" % i, b"x" * 1000) for i in range(1000)])
        scan.close()
        store.put_many([(b"k%d" % i, b"x" * 1000) for i in range(1000)])  # now it grows
        assert store.count_prefix(b"k") == 1000


def test_scans_in_threads_during_growth(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s", map_size=SMALL_MAP) as store:
        store.put_many([(op_key("e", (i,)), b"v") for i in range(100)])
        errors: list[BaseException] = []

        def read() -> None:
            try:
                for _ in range(50):
                    assert sum(1 for _ in store.scan(execution_prefix("e"))) == 100
            except BaseException as exc:  # reported to the main thread
                errors.append(exc)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        for batch in range(20):
            store.put_many([(op_key("f", (batch, i)), b"x" * 1000) for i in range(50)])
        for t in readers:
            t.join()
        assert errors == []
        assert store.stat()["map_size"] > SMALL_MAP


# -- execution locks ------------------------------------------------------------------------------


def test_lock_reacquire_release_and_two_executions(store: Store) -> None:
    assert store.lock_holder("e1") is None
    store.acquire_lock("e1")
    store.acquire_lock("e1")  # own lock: fine
    store.acquire_lock("e2")
    holder = store.lock_holder("e1")
    assert holder is not None and holder["pid"] == os.getpid()
    store.release_lock("e1")
    assert store.lock_holder("e1") is None
    assert store.lock_holder("e2") is not None


def _plant_lock(store: Store, execution_id: str, record: bytes) -> None:
    # Through the private handle: these are records only another (dead or remote) process could leave.
    shared = store._env()
    shared.transact("plant", lambda txn: txn.put(execution_id.encode() + b"\x00", record,
                                                 db=shared.dbs[b"locks"]), write=True)


@pytest.mark.parametrize("record", [
    b'{"pid": 999999999, "create_time": 1.0, "hostname": "%s"}',  # no such process
    b'{"pid": %d, "create_time": 1.0, "hostname": "%%s"}' % os.getppid(),  # pid alive, started at another time
    b"\x80garbage",
])
def test_stale_lock_is_taken_over(store: Store, record: bytes) -> None:
    if b"%s" in record:
        record = record % os.uname().nodename.encode()
    _plant_lock(store, "e", record)
    store.acquire_lock("e")
    holder = store.lock_holder("e")
    assert holder is not None and holder["pid"] == os.getpid()


def test_lock_of_another_host_is_respected_until_broken(store: Store) -> None:
    _plant_lock(store, "e", b'{"pid": 1, "create_time": 1.0, "hostname": "elsewhere"}')
    with pytest.raises(ExecutionLockedError, match="break_lock"):
        store.acquire_lock("e")
    store.release_lock("e")  # not ours: left alone
    assert store.break_lock("e") is True
    store.acquire_lock("e")


def test_lock_held_by_a_live_process(store: Store) -> None:
    holder = start_python(f"""
        import sys
        from durablemap._store import Store
        Store.open({store.path!r}).acquire_lock("e")
        print("locked", flush=True)
        sys.stdin.read()
    """)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(ExecutionLockedError, match=rf"'e'.*pid {holder.pid}.*kill {holder.pid}"):
            store.acquire_lock("e")
        store.acquire_lock("other")  # another execution is not blocked
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        store.acquire_lock("e")  # the dead holder's lock is taken over
    finally:
        kill(holder)
    info = store.lock_holder("e")
    assert info is not None and info["pid"] == os.getpid()
