"""Results out: BatchResult.to_arrow() / to_pandas(), and `durablemap export --format parquet`,
on real runs (loky workers, a store on disk) and read back as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from durablemap import BatchResult, DurableContext, durable_execution
from durablemap._tabular import write_parquet

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def shape(context: DurableContext, item: int, index: int, inputs: Any) -> dict[str, Any]:
    if item % 7 == 3:
        raise ValueError(f"item {item} is unlucky")
    return {"n": item, "square": item * item, "tag": f"t{item % 3}"}


@durable_execution
def shapes(event: dict[str, Any], context: DurableContext) -> BatchResult[Any]:
    return context.map(list(range(event["n"])), shape, name="shapes")


def _run(tmp_path: Path, n: int) -> tuple[str, BatchResult[Any]]:
    store = str(tmp_path / "store")
    result = shapes.run({"n": n}, store=store, execution_id="out", workers=2, progress=False)
    return store, result


def _expected(n: int) -> list[dict[str, Any]]:
    return [{"index": i, "status": "FAILED" if i % 7 == 3 else "SUCCEEDED",
             "result": None if i % 7 == 3 else {"n": i, "square": i * i, "tag": f"t{i % 3}"},
             "error_type": "ValueError" if i % 7 == 3 else None,
             "error_message": f"item {i} is unlucky" if i % 7 == 3 else None} for i in range(n)]


def test_batch_result_to_arrow_and_to_pandas(tmp_path: Path) -> None:
    _store, result = _run(tmp_path, 50)
    table = result.to_arrow()
    assert table.column_names == ["index", "name", "status", "result", "error_type", "error_message"]
    assert pa.types.is_struct(table.schema.field("result").type)
    rows = table.drop_columns(["name"]).to_pylist()
    assert rows == _expected(50)
    frame = result.to_pandas()
    assert list(frame["index"]) == list(range(50))
    assert list(frame["status"]) == [r["status"] for r in _expected(50)]
    assert frame.loc[frame["status"] == "SUCCEEDED", "result"].tolist() == result.get_results()
    assert frame["error_type"].dropna().unique().tolist() == ["ValueError"]


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    result: BatchResult[Any] = BatchResult.from_items([])
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` raise ImportError
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'durablemap\[arrow\]'"):
        result.to_arrow()
    with pytest.raises(ImportError, match=r"pip install 'durablemap\[pandas\]'"):
        result.to_pandas()


def test_export_parquet_streams_row_groups_and_reads_back_equal(tmp_path: Path) -> None:
    store, result = _run(tmp_path, 2_000)
    out = tmp_path / "shapes.parquet"
    done = subprocess.run([sys.executable, "-m", "durablemap", "export", "out", "--map", "shapes", "--format",
                           "parquet", "-o", str(out), "--row-group-size", "300", "--store", store],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "wrote 2000 items" in done.stderr
    parquet = pq.ParquetFile(out)
    assert parquet.metadata.num_row_groups == 7  # 2,000 items in groups of 300: streamed
    rows = parquet.read().drop_columns(["name"]).to_pylist()
    assert rows == _expected(2_000)
    assert [r["result"] for r in rows if r["status"] == "SUCCEEDED"] == result.get_results()


def test_export_parquet_needs_a_file(tmp_path: Path) -> None:
    store, _ = _run(tmp_path, 3)
    done = subprocess.run([sys.executable, "-m", "durablemap", "export", "out", "--map", "shapes", "--format",
                           "parquet", "--store", store], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "pass -o FILE.parquet" in done.stderr


def _rows(results: list[Any]) -> Any:
    return lambda: iter({"index": i, "name": None, "status": "SUCCEEDED", "result": r, "error": None}
                        for i, r in enumerate(results))


def test_parquet_result_type_widens_when_a_later_row_group_needs_it(tmp_path: Path) -> None:
    results: list[Any] = [None] * 5 + [1, 2, 2**40]
    out = str(tmp_path / "late.parquet")
    assert write_parquet(_rows(results), out, row_group=4) == 8
    assert pq.read_table(out).column("result").to_pylist() == results


def test_parquet_refuses_results_no_column_holds(tmp_path: Path) -> None:
    out = tmp_path / "mixed.parquet"
    with pytest.raises(ValueError, match="--format jsonl"):
        write_parquet(_rows([1, 2, "three", "four"]), str(out), row_group=2)
    assert not out.exists() and list(tmp_path.iterdir()) == []
