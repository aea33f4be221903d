"""The names users import (CONTRACT section 1) are where the contract says, with docstrings."""

from __future__ import annotations

import importlib
import inspect

import pytest

CONTRACT = {
    "durablemap": [
        "durable_execution", "DurableContext", "StepContext", "durable_step", "durable_with_child_context",
        "durable_parallel_branch", "ParallelBranch", "BatchResult", "BatchItem", "BatchItemStatus",
        "CompletionReason", "ErrorObject", "Duration", "DurableExecutionsError", "ValidationError",
        "SerDesError", "DurableOperationError", "StepError", "ChildContextError", "BatchCompletionError",
        "ExecutionError", "NonDeterministicExecutionError", "StepInterruptedError", "WorkerCrashedError",
        "ItemTimeoutError", "ExecutionLockedError", "StoreError",
    ],
    "durablemap.config": [
        "MapConfig", "ParallelConfig", "CompletionConfig", "StepConfig", "ChildConfig", "Duration",
        "NestingType", "StepSemantics", "CompletionStatus", "CompletionItemStatus", "CompletionDecision",
        "CompletionOutcome", "complete_batch", "continue_batch",
    ],
    "durablemap.retries": ["RetryStrategyConfig", "RetryDecision", "RetryPresets", "JitterStrategy",
                           "create_retry_strategy"],
    "durablemap.serdes": ["SerDes", "SerDesContext", "MsgpackSerDes", "JsonSerDes"],
    "durablemap.executors": ["DaskExecutor"],
    "durablemap.lambda_service": ["OperationType", "OperationSubType", "OperationStatus"],
    "durablemap.testing": ["InvocationStatus", "DurableTestRunner", "DurableFunctionTestRunner"],
}


@pytest.mark.parametrize("module_name", sorted(CONTRACT))
def test_contract_names_import_and_are_documented(module_name: str) -> None:
    module = importlib.import_module(module_name)
    for name in CONTRACT[module_name]:
        obj = getattr(module, name)
        assert inspect.getdoc(obj), f"{module_name}.{name} has no docstring"
        if hasattr(module, "__all__") and module_name != "durablemap.executors":
            assert name in module.__all__, f"{name} missing from {module_name}.__all__"


def test_durablemap_errors_report_public_type_names() -> None:
    from durablemap import StepError, WorkerCrashedError
    from durablemap._errors import error_type_name

    assert error_type_name(StepError) == "durablemap.StepError"
    assert error_type_name(WorkerCrashedError) == "durablemap.WorkerCrashedError"
    assert error_type_name(ValueError) == "ValueError"


def test_the_default_execution_id_is_the_same_in_every_process() -> None:
    """Sets in the event are iterated in a different order by each process: the id must not be."""
    import subprocess
    import sys

    code = ("from durablemap._execution import default_execution_id\n"
            "def handler(event, context): pass\n"
            "print(default_execution_id(handler, {'tags': {'a', 'b', 'c', 'd', 'e'}, 'n': 3}))")
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
           for _ in range(4)}
    assert len(ids) == 1
