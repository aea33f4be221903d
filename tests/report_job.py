"""The job the report tests run: ``python tests/report_job.py STORE DIR``.

Maps ``work`` over 600 items as execution ``report``: item ``i`` sleeps ``i % 4`` ms, items whose
index is 5 mod 41 always fail, and the first time item 300 runs it SIGKILLs the whole job (coordinator
and workers: the test starts it in its own process group), leaving a marker in DIR. Run again, the
job resumes: a real run with failures and a resume.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from durablemap import DurableContext, durable_execution


def work(context: DurableContext, item: int, index: int, inputs: Any) -> int:
    marker = os.path.join(os.environ["REPORT_JOB_DIR"], "killed")
    if item == 300 and not os.path.exists(marker):
        open(marker, "w").close()
        os.killpg(os.getpgrp(), signal.SIGKILL)
    time.sleep(0.001 * (item % 4))
    if item % 41 == 5:
        raise ValueError(f"item {item} always fails")
    return item * item


@durable_execution
def job(event: Any, context: DurableContext) -> int:
    result = context.map(list(range(600)), work, name="squares")
    return result.success_count


if __name__ == "__main__":
    os.environ["REPORT_JOB_DIR"] = sys.argv[2]
    print(job.run(None, store=sys.argv[1], execution_id="report", workers=2, progress=False))
