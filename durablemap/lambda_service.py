"""Operation types, sub-types and statuses, under the import path the AWS SDK's tests use."""

from __future__ import annotations

from durablemap._errors import ErrorObject
from durablemap._records import OperationStatus, OperationSubType, OperationType

__all__ = ["ErrorObject", "OperationStatus", "OperationSubType", "OperationType"]
