"""Testing durable functions: a runner, a pytest plugin, and crash injection.

    from durablemap.testing import DurableTestRunner, InvocationStatus

    with DurableTestRunner(handler) as runner:
        result = runner.run(input={"items": [1, 2, 3]}, timeout=30)
    assert result.status is InvocationStatus.SUCCEEDED
    assert result.get_map("square").result.success_count == 3

With pytest, ``@pytest.mark.durable_execution(handler=...)`` and the ``durable_runner`` fixture give
the same runner (the plugin is registered when durablemap is installed). ``crash_test`` kills a run
part-way, resumes it, and checks that nothing recorded ran twice and the result is unchanged.
"""

from durablemap.testing._crash import CrashReport, crash_test
from durablemap.testing._runner import (
    DurableFunctionTestResult,
    DurableFunctionTestRunner,
    DurableTestRunner,
    InvocationStatus,
    OperationNotFoundError,
    OperationView,
)

__all__ = [
    "CrashReport",
    "DurableFunctionTestResult",
    "DurableFunctionTestRunner",
    "DurableTestRunner",
    "InvocationStatus",
    "OperationNotFoundError",
    "OperationView",
    "crash_test",
]
