"""Operation types, sub-types and statuses, under the import path the AWS SDK's tests use."""

from __future__ import annotations

from typing import TypeAlias

from durablemap._errors import ErrorObject
from durablemap._records import OperationStatus, OperationSubType, OperationType

__all__ = ["ErrorObject", "OperationPayload", "OperationStatus", "OperationSubType", "OperationType"]

OperationPayload: TypeAlias = str | bytes
"""A serialized operation result as the serdes wrote it: ``str`` (the SDK's type, a custom serdes'
text) or ``bytes`` (durablemap's msgpack default)."""
