"""Operation types, sub-types and statuses, under the import path the AWS SDK's tests use."""

from __future__ import annotations

from enum import StrEnum

from durablemap._errors import ErrorObject
from durablemap._records import OperationStatus, OperationType

__all__ = ["ErrorObject", "OperationStatus", "OperationSubType", "OperationType"]


class OperationSubType(StrEnum):
    """What a recorded operation is, more precisely than its type."""

    EXECUTION = "Execution"
    MAP = "Map"
    MAP_ITERATION = "MapIteration"
    PARALLEL = "Parallel"
    PARALLEL_BRANCH = "ParallelBranch"
    STEP = "Step"
    WAIT = "Wait"
    RUN_IN_CHILD_CONTEXT = "RunInChildContext"
