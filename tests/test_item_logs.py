"""Log records emitted inside items and parallel branches reach the parent's logging (CONTRACT
section 6, issue 15): a script's logging.basicConfig shows them, pytest's caplog captures them,
with their ``extra`` fields and the item's ids; context.logger stays silent while replaying, so each
line appears once across runs; prints still reach the terminal.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from durablemap import DurableContext, durable_execution
from durablemap.config import CompletionConfig, MapConfig, ParallelConfig
from durablemap.testing import DurableTestRunner, InvocationStatus

etl = logging.getLogger("tests.etl")


def logging_item(ctx: DurableContext, x: int, index: int, _items: Any) -> int:
    ctx.logger.info("context says %s", x, extra={"row": x})
    etl.info("etl says %s", x, extra={"batch": "b1"})
    etl.debug("etl debug %s", x)
    return x * 2


@durable_execution
def logging_map(event: Any, context: DurableContext) -> list[int]:
    return context.map(list(range(4)), logging_item, name="m").get_results()


def test_records_from_items_reach_caplog_with_their_extra_and_item_ids(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO), DurableTestRunner(logging_map, workers=2) as runner:
        result = runner.run(input={}, timeout=60)
    assert result.status is InvocationStatus.SUCCEEDED
    context_records = sorted((r for r in caplog.records if r.getMessage().startswith("context says")),
                             key=lambda r: r.itemIndex)
    etl_records = sorted((r for r in caplog.records if r.name == "tests.etl"), key=lambda r: r.itemIndex)
    assert [r.getMessage() for r in context_records] == [f"context says {i}" for i in range(4)]
    assert [r.getMessage() for r in etl_records] == [f"etl says {i}" for i in range(4)]  # no DEBUG
    map_id = result.get_map("m").id
    for i, (c, e) in enumerate(zip(context_records, etl_records, strict=True)):
        assert (c.row, c.itemIndex, c.operationId) == (i, i, f"{map_id}/{i}")
        assert (e.batch, e.itemIndex, e.operationId) == ("b1", i, f"{map_id}/{i}")
        assert c.executionArn == e.executionArn == result.execution_id
        assert e.process != os.getpid()  # it came from a worker process
        assert e.funcName == "logging_item" and c.funcName == "logging_item"


def test_debug_records_arrive_when_the_parent_logs_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="tests.etl"), DurableTestRunner(logging_map, workers=2) as runner:
        runner.run(input={}, timeout=60)
    assert sorted(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG
                  and r.name == "tests.etl") == [f"etl debug {i}" for i in range(4)]


SCRIPT = textwrap.dedent('''
    import logging, sys
    from durablemap import DurableContext, durable_execution

    def item(ctx: DurableContext, x, index, _):
        ctx.logger.info("context item %s", x)
        logging.getLogger("etl").warning("etl item %s", x)
        print(f"printed item {x}", flush=True)
        return x

    @durable_execution
    def handler(event, context: DurableContext):
        return context.map(list(range(3)), item, name="m").get_results()

    if __name__ == "__main__":
        logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(name)s %(message)s")
        print(handler.run({}, store=sys.argv[1], workers=2, progress=False), flush=True)
''')


def test_a_scripts_basic_config_shows_records_from_items(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    lines = done.stderr.splitlines()
    for i in range(3):
        assert lines.count(f"LOG INFO durablemap.context context item {i}") == 1, done.stderr
        assert lines.count(f"LOG WARNING etl etl item {i}") == 1, done.stderr
        assert f"printed item {i}" in done.stdout.splitlines()
    # Run again: the map replays, no item runs, nothing is logged again.
    again = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], env=env,
                           capture_output=True, text=True, timeout=120, check=True)
    assert "item" not in again.stderr and "printed" not in again.stdout
    assert again.stdout.strip().splitlines()[-1] == "[0, 1, 2]"


def resumable_item(ctx: DurableContext, x: int, index: int, _items: Any) -> int:
    ctx.logger.info("before s1", extra={"who": index})
    ctx.step(lambda _: x, name="s1")
    ctx.logger.info("after s1", extra={"who": index})

    def flaky(_step: Any) -> int:
        if os.path.exists(os.environ["DURABLEMAP_TEST_FAIL_FLAG"]):
            raise RuntimeError("failing this run")
        return x

    ctx.step(flaky, name="s2", config=_NO_RETRY)
    ctx.logger.info("after s2", extra={"who": index})
    return x


def _branch(tag: int) -> Any:
    return lambda ctx: resumable_item(ctx, tag, tag, [])


@durable_execution
def resumable(event: Any, context: DurableContext) -> int:
    every = CompletionConfig.all_completed()
    if event["parallel"]:
        return context.parallel([_branch(10), _branch(11)], name="p",
                                config=ParallelConfig(completion_config=every)).failure_count
    return context.map([0, 1], resumable_item, name="m", config=MapConfig(completion_config=every)).failure_count


def _no_retry() -> Any:
    from durablemap.config import StepConfig
    from durablemap.retries import RetryPresets

    return StepConfig(retry_strategy=RetryPresets.none())


_NO_RETRY = _no_retry()


def test_context_logger_is_silent_while_replaying_each_item_and_branch(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    flag = tmp_path / "fail"
    flag.touch()
    monkeypatch.setenv("DURABLEMAP_TEST_FAIL_FLAG", str(flag))
    store = tmp_path / "store"
    with caplog.at_level(logging.INFO):
        for event in ({"parallel": False}, {"parallel": True}):
            assert resumable.run(event, store=store, workers=2, progress=False) == 2
        flag.unlink()
        # The failed items and branches run again: their recorded step s1 replays, so the lines
        # logged before it was recorded are not logged again.
        for event in ({"parallel": False}, {"parallel": True}):
            assert resumable.run(event, store=store, workers=2, progress=False, retry_failed=True) == 0
    seen = [(r.who, r.getMessage()) for r in caplog.records if hasattr(r, "who")]
    for who in (0, 1, 10, 11):
        mine = [message for w, message in seen if w == who]
        assert sorted(mine) == ["after s1", "after s2", "before s1"], (who, mine)
