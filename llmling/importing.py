"""Resolve `module:attr` import paths named in configs (callbacks, tools, filters, transforms)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def import_path(path: str, base_dir: str | None = None) -> Callable[..., Any]:
    """Resolve `module:attr` with `base_dir` importable. Raises ImportError/AttributeError/TypeError."""
    if base_dir and base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target
