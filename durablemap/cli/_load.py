"""Finding the handler named on the command line: ``package.module:handler`` or ``path/file.py:handler``."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from durablemap import DurableFunction
from durablemap.cli._reader import CliError

__all__ = ["load_handler"]


def load_handler(spec: str) -> DurableFunction:
    """Import the handler ``spec`` names. A file is imported as a module named after it, with its
    directory first on ``sys.path`` (as ``python file.py`` does), so worker processes can import it
    too and its execution ids match those of the script run directly."""
    target, sep, attribute = spec.rpartition(":")
    if not sep or not target or not attribute:
        raise CliError(f"{spec!r} does not name a handler; write MODULE:HANDLER or path/file.py:HANDLER")
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise CliError(f"no file {target!r} (from {spec!r})")
        directory, module_name = os.path.split(os.path.splitext(path)[0])
        sys.path.insert(0, directory)
    else:
        module_name = target
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r} (from {spec!r}): {exc}") from None
    obj: Any = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(obj, DurableFunction):
        raise CliError(f"{spec} is a {type(obj).__name__}, not a durable handler; decorate it with "
                       "@durable_execution")
    return obj
