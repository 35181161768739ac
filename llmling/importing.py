"""Resolve `module:attr` import paths named in configs (callbacks, tools, filters, transforms)."""

from __future__ import annotations

import importlib
import importlib.util
import json
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


def problem(path: str, base_dir: str | None = None) -> str | None:
    """Why `path` does not resolve (module not found, no such attribute, not callable, the import failed),
    or None when it does. Imports the module: the user's top-level code runs."""
    if base_dir and base_dir not in sys.path:
        sys.path.insert(0, base_dir)
    module_name, _, attr = path.partition(":")
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        return f"cannot find module {module_name!r}: {exc}"
    if found is None:
        return f"module {module_name!r} not found (looked in the config's folder and sys.path)"
    try:
        import_path(path, base_dir)
    except AttributeError:
        return f"{path}: module {module_name!r} has no attribute {attr!r}"
    except TypeError as exc:
        return str(exc)
    except (Exception, SystemExit) as exc:
        return f"{path}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
    return None


# The prefix of the one line `python -m llmling.importing` answers with (the user's modules may print too).
RESULT_PREFIX = "llmling-import-check "


def _main() -> None:
    """`python -m llmling.importing BASE_DIR` with a JSON list of paths on stdin: one line, RESULT_PREFIX and
    a JSON object {path: problem or null}."""
    base_dir = sys.argv[1]
    paths = json.loads(sys.stdin.read())
    result = {path: problem(path, base_dir) for path in paths}
    sys.stdout.write(f"\n{RESULT_PREFIX}{json.dumps(result)}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _main()
