"""durablemap: a durable parallel map on one machine.

``context.map(items, func)`` runs every item in a pool of worker processes and records each item's
result the moment it finishes; running the job again after a crash, kill or Ctrl-C does only what
had not finished. The API is that of the AWS Durable Execution SDK for Python's map operations.
"""

from __future__ import annotations

from durablemap._batch import BatchItem, BatchItemStatus, BatchResult, CompletionReason
from durablemap._child import durable_with_child_context
from durablemap._context import DurableContext, StepContext
from durablemap._errors import (
    BatchCompletionError,
    ChildContextError,
    DurableExecutionsError,
    DurableOperationError,
    ErrorObject,
    ExecutionError,
    ExecutionLockedError,
    InvocationError,
    ItemTimeoutError,
    NonDeterministicExecutionError,
    SerDesError,
    StepError,
    StepInterruptedError,
    StoreError,
    ValidationError,
    WorkerCrashedError,
)
from durablemap._execution import DurableFunction, durable_execution
from durablemap._step import durable_step
from durablemap.config import (
    CompletionDecision,
    CompletionItemStatus,
    CompletionOutcome,
    CompletionStatus,
    Duration,
    ParallelBranch,
    complete_batch,
    continue_batch,
    durable_parallel_branch,
)

__version__ = "0.1.0"

__all__ = [
    # running durable functions
    "durable_execution", "DurableFunction", "DurableContext", "StepContext",
    "durable_step", "durable_with_child_context", "durable_parallel_branch", "ParallelBranch",
    # results
    "BatchResult", "BatchItem", "BatchItemStatus", "CompletionReason", "ErrorObject", "Duration",
    "CompletionStatus", "CompletionItemStatus", "CompletionDecision", "CompletionOutcome",
    "complete_batch", "continue_batch",
    # errors
    "DurableExecutionsError", "ValidationError", "SerDesError", "DurableOperationError", "StepError",
    "ChildContextError", "BatchCompletionError", "ExecutionError", "NonDeterministicExecutionError",
    "InvocationError", "StepInterruptedError", "WorkerCrashedError", "ItemTimeoutError",
    "ExecutionLockedError", "StoreError",
    "__version__",
]
