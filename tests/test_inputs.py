"""durablemap.inputs: lazy input sequences over files, directories and Parquet files, through the
public API: indexing, pickling, maps, SIGKILL and resume, input drift."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from durablemap import NonDeterministicExecutionError, durable_execution
from durablemap.inputs import FileLines, Files, ParquetRowGroups, ParquetRows

from ._kill_helpers import assert_no_survivors, kill_group, log_lines, start, wait_for

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

LINES = [json.dumps({"n": i, "text": "é" * (i % 7)}) for i in range(300)]


def write_lines(path: Path, lines: list[str], *, compress: bool = False, tail: str = "\n") -> Path:
    data = ("\n".join(lines) + tail).encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_file_lines_index_like_a_list(tmp_path: Path, compress: bool) -> None:
    path = write_lines(tmp_path / "data.jsonl", LINES, compress=compress)
    lines = FileLines(path, index_dir=tmp_path / "index")
    assert len(lines) == len(LINES)
    assert list(lines) == LINES
    assert lines[0] == LINES[0] and lines[-1] == LINES[-1] and lines[120:125] == LINES[120:125]
    assert [lines[i] for i in (299, 3, 150, 2)] == [LINES[i] for i in (299, 3, 150, 2)]  # backwards too
    with pytest.raises(IndexError, match="300 items"):
        lines[300]
    assert FileLines(path, encoding=None, index_dir=tmp_path / "index")[1] == LINES[1].encode()
    # A second object over the same file reuses the index instead of reading the file again.
    index_files = list((tmp_path / "index").iterdir())
    assert len(index_files) == 1
    before = index_files[0].stat().st_mtime_ns
    assert FileLines(path, index_dir=tmp_path / "index").index_path == index_files[0]
    assert index_files[0].stat().st_mtime_ns == before


def test_file_lines_edges(tmp_path: Path) -> None:
    index = tmp_path / "index"
    assert list(FileLines(write_lines(tmp_path / "a", ["x", "y"], tail=""), index_dir=index)) == ["x", "y"]
    assert list(FileLines(write_lines(tmp_path / "b", ["x", "", ""], tail="\n"), index_dir=index)) == ["x", "", ""]
    (tmp_path / "c").write_bytes(b"")
    assert len(FileLines(tmp_path / "c", index_dir=index)) == 0
    (tmp_path / "d").write_bytes(b"one\r\ntwo\r\n")
    assert list(FileLines(tmp_path / "d", index_dir=index)) == ["one", "two"]
    assert list(FileLines(tmp_path / "d", keep_newlines=True, index_dir=index)) == ["one\r\n", "two\r\n"]
    # Several gzip members, then zero padding, read as one stream.
    (tmp_path / "e.gz").write_bytes(gzip.compress(b"a\nb") + gzip.compress(b"c\nd\n") + b"\0" * 64)
    assert list(FileLines(tmp_path / "e.gz", index_dir=index)) == ["a", "bc", "d"]
    with pytest.raises(ValueError, match="utf-16"):
        FileLines(tmp_path / "a", encoding="utf-16", index_dir=index)
    with pytest.raises(FileNotFoundError, match="missing"):
        FileLines(tmp_path / "missing", index_dir=index)


def test_a_modified_file_gets_a_new_index_and_workers_refuse_a_file_changed_under_them(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.txt", ["a", "b"])
    lines = FileLines(path, index_dir=tmp_path / "index")
    shipped = pickle.dumps(lines)
    write_lines(path, ["a", "b", "c"])
    assert list(FileLines(path, index_dir=tmp_path / "index")) == ["a", "b", "c"]
    assert len(list((tmp_path / "index").iterdir())) == 1  # the old version's index was removed
    with pytest.raises(RuntimeError, match="changed since the map started"):
        pickle.loads(shipped)[0]


def test_pickles_carry_paths_not_data(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "big.txt", ["x" * 100] * 20_000)  # 2 MB
    lines = FileLines(path, index_dir=tmp_path / "index")
    assert len(pickle.dumps(lines)) < 1000
    copy = pickle.loads(pickle.dumps(lines))
    assert len(copy) == 20_000 and copy[19_999] == "x" * 100
    for i in range(50):
        (tmp_path / f"f{i:03d}.bin").write_bytes(b"")
    files = Files(tmp_path, pattern="f*.bin", index_dir=tmp_path / "index")
    assert len(pickle.dumps(files)) < 1000 and pickle.loads(pickle.dumps(files))[49] == str(tmp_path / "f049.bin")
    pq.write_table(pa.table({"a": list(range(10_000))}), tmp_path / "t.parquet", row_group_size=1000)
    rows = ParquetRows(tmp_path / "t.parquet")
    assert len(pickle.dumps(rows)) < 1000 and pickle.loads(pickle.dumps(rows))[9_999] == {"a": 9_999}


def test_files_are_sorted_and_listed_from_a_directory_or_a_glob(tmp_path: Path) -> None:
    for name in ("b.json", "a.json", "c.txt", "sub/d.json", "sub/deeper/e.json"):
        (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / name).write_text(name)
    data, index = tmp_path / "data", tmp_path / "index"
    assert list(Files(data, index_dir=index)) == [str(data / n) for n in ("a.json", "b.json", "c.txt")]
    assert list(Files(data, pattern="*.json", index_dir=index)) == [str(data / "a.json"), str(data / "b.json")]
    assert list(Files(data, pattern="*.json", recursive=True, index_dir=index)) == [
        str(data / n) for n in ("a.json", "b.json", "sub/d.json", "sub/deeper/e.json")]
    assert list(Files(f"{data}/*/*.json", index_dir=index)) == [str(data / "sub/d.json")]
    assert len(Files(f"{data}/*.none", index_dir=index)) == 0
    with pytest.raises(FileNotFoundError, match="not a glob pattern"):
        Files(tmp_path / "nowhere", index_dir=index)


def test_parquet_rows_and_row_groups(tmp_path: Path) -> None:
    table = pa.table({"id": list(range(10_000)), "name": [f"n{i}" for i in range(10_000)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=3_000)
    rows = ParquetRows(tmp_path / "t.parquet")
    assert len(rows) == 10_000
    assert rows[0] == {"id": 0, "name": "n0"} and rows[-1] == {"id": 9_999, "name": "n9999"}
    assert [rows[i]["id"] for i in (2_999, 3_000, 8_200, 5, 9_000)] == [2_999, 3_000, 8_200, 5, 9_000]
    assert list(ParquetRows(tmp_path / "t.parquet", columns=["id"]))[4_096:4_098] == [{"id": 4_096}, {"id": 4_097}]
    groups = ParquetRowGroups(tmp_path / "t.parquet")
    assert len(groups) == 4 and groups[1]["id"][0] == 3_000 and len(groups[3]["name"]) == 1_000
    (tmp_path / "not.parquet").write_text("hello")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        ParquetRows(tmp_path / "not.parquet")


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path) -> None:
    code = textwrap.dedent(f'''
        import sys
        sys.modules["pyarrow"] = None
        from durablemap.inputs import ParquetRows
        try:
            ParquetRows({str(tmp_path / "t.parquet")!r})
        except ImportError as exc:
            print(exc)
    ''')
    (tmp_path / "t.parquet").write_bytes(b"")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'durablemap[parquet]'" in done.stdout


def _parse(context: object, line: str, index: int, inputs: object) -> int:
    return int(json.loads(line)["n"]) * 2


def test_a_map_over_file_lines_in_workers(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl.gz", LINES, compress=True)

    @durable_execution(progress=False)
    def handler(event: object, context: object) -> object:
        return context.map(FileLines(path, index_dir=tmp_path / "index"), _parse).get_results()  # type: ignore[attr-defined]

    assert handler.run(None, store=tmp_path / "store", workers=2) == [2 * i for i in range(300)]


JOB = textwrap.dedent('''
    import json, sys, time
    from durablemap import durable_execution
    from durablemap.config import MapConfig
    from durablemap.inputs import FileLines, Files, ParquetRows

    KIND, SOURCE, LOG, STORE = sys.argv[1:5]

    def work(context, item, index, inputs):
        time.sleep(0.02)
        with open(LOG, "a") as fh:
            fh.write(f"{index}\\n")
        if KIND == "lines":
            return json.loads(item)["n"]
        if KIND == "files":
            return int(open(item).read())
        return item["n"]

    def inputs():
        if KIND == "lines":
            return FileLines(SOURCE, index_dir=STORE + "-index")
        if KIND == "files":
            return Files(SOURCE, pattern="*.txt", index_dir=STORE + "-index")
        return ParquetRows(SOURCE)

    @durable_execution
    def handler(event, context):
        # 8 in flight: the kill after 100 logged items finds many recorded (the items wait, so a
        # worker would otherwise run a hundred at once, logged before their burst is committed)
        return context.map(inputs(), work, name="items", config=MapConfig(max_concurrency=8)).get_results()

    if __name__ == "__main__":
        try:
            out = handler.run(None, store=STORE, execution_id="job", workers=2, progress=False)
        except Exception as exc:
            print(type(exc).__name__, exc)
            sys.exit(3)
        assert out == list(range(len(out))), out
        print("OK", len(out))
''')


def _source(tmp_path: Path, kind: str) -> Path:
    if kind == "lines":
        return write_lines(tmp_path / "data.jsonl", LINES)
    if kind == "files":
        (tmp_path / "files").mkdir()
        for i in range(300):  # names that sort like the numbers, so result i is file i
            (tmp_path / "files" / f"{i:04d}.txt").write_text(str(i))
        (tmp_path / "files" / "skipped.csv").write_text("not matched by *.txt")
        return tmp_path / "files"
    pq.write_table(pa.table({"n": list(range(300))}), tmp_path / "data.parquet", row_group_size=64)
    return tmp_path / "data.parquet"


def _recorded(store: Path) -> set[int]:
    """Indexes of the items whose outcome was recorded, as `durablemap export` lists them."""
    done = subprocess.run([sys.executable, "-m", "durablemap", "export", "job", "--map", "items", "--store",
                           str(store)], capture_output=True, text=True, check=True)
    return {row["index"] for row in map(json.loads, done.stdout.splitlines()) if row["status"] == "SUCCEEDED"}


def _kill_mid_map(tmp_path: Path, kind: str) -> tuple[Path, Path, Path, set[int]]:
    script, log, store = tmp_path / "job.py", tmp_path / "items.log", tmp_path / "store"
    script.write_text(JOB)
    source = _source(tmp_path, kind)
    proc = start(script, kind, str(source), str(log), str(store))
    wait_for(lambda: len(log_lines(log)) >= 100 or proc.poll() is not None, what="a third of the items")
    assert proc.poll() is None, proc.communicate()
    kill_group(proc, signal.SIGKILL)
    assert_no_survivors(proc.pid)
    recorded = _recorded(store)
    assert 0 < len(recorded) < 300
    assert recorded <= set(log_lines(log))
    return script, source, store, recorded


@pytest.mark.parametrize("kind", ["lines", "files", "parquet"])
def test_sigkill_mid_map_then_resume_runs_each_item_once(tmp_path: Path, kind: str) -> None:
    script, source, store, recorded = _kill_mid_map(tmp_path, kind)
    log = tmp_path / "items.log"
    again = start(script, kind, str(source), str(log), str(store))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, (out + err).decode()
    assert b"OK 300" in out
    runs = log_lines(log)
    assert set(runs) == set(range(300))
    for index in recorded:
        assert runs.count(index) == 1, f"item {index} was recorded before the kill but ran again"
    # Only items in flight at the kill (started, not recorded) may have run twice.
    assert max(runs.count(i) for i in range(300)) <= 2


def test_a_changed_line_is_input_drift_on_resume(tmp_path: Path) -> None:
    script, source, store, recorded = _kill_mid_map(tmp_path, "lines")
    changed = min(recorded)
    lines = list(LINES)
    lines[changed] = json.dumps({"n": changed, "text": "edited"})
    write_lines(source, lines)
    again = start(script, "lines", str(source), str(tmp_path / "items.log"), str(store))
    out, err = again.communicate(timeout=120)
    assert again.returncode == 3, (out + err).decode()
    assert out.decode().startswith(NonDeterministicExecutionError.__name__)
    assert f"the inputs of items {changed}" in out.decode()
    assert os.path.exists(store)
