"""`llmling validate`'s check of every `module:function` path of a config (callbacks, tools, filters,
transforms, stop conditions): the module is found relative to the config's folder and has the attribute.

Finding the attribute means importing the user's module, so that happens in a child interpreter (`python -m
llmling.importing`) with a time limit: the user's top-level code never runs in the process that validates,
and nothing llmling imports there is heavy (the child loads only `importlib`). A path that does not resolve
is a problem named with `file:line` and its key path, like any config error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from llmling.config.loader import Loc, _dotted, _Located
from llmling.config.safe_yaml import compose
from llmling.config.schema import SystemConfig
from llmling.importing import RESULT_PREFIX

# Seconds the child may spend importing the user's modules.
CHECK_TIMEOUT = 60.0


def import_paths(config: SystemConfig) -> list[tuple[Loc, str]]:
    """(key path, `module:function`) of every import path in the config, in document order."""
    found: list[tuple[Loc, str]] = []
    for name, agent in config.agents.items():
        at: Loc = ("agents", name)
        if agent.callback:
            found.append(((*at, "callback"), agent.callback))
        found.extend(((*at, "tools", index), tool) for index, tool in enumerate(agent.tools))
        for index, connection in enumerate(agent.connections):
            where: Loc = (*at, "connections", index)
            if connection.transform:
                found.append(((*where, "transform"), connection.transform))
            for key in ("filter", "stop_condition"):
                condition = getattr(connection, key)
                if condition is not None and condition.type == "callable":
                    found.append(((*where, key), condition.path))
    return found


def resolve_in_child(paths: list[str], base_dir: Path) -> dict[str, str | None]:
    """Each path → None when it resolves, else the reason. Raises RuntimeError when the child fails."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "llmling.importing", str(base_dir)],
            input=json.dumps(paths),
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
            cwd=base_dir,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"importing the config's modules took more than {CHECK_TIMEOUT:.0f} s") from None
    answers = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not answers:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"checking the import paths failed: {tail}")
    result: dict[str, str | None] = json.loads(answers[-1].removeprefix(RESULT_PREFIX))
    return result


def check_import_paths(config: SystemConfig, file: str) -> list[str]:
    """One `file:line: key.path: problem` line per import path that does not resolve."""
    found = import_paths(config)
    if not found:
        return []
    problems = resolve_in_child(sorted({path for _, path in found}), config.base_dir)
    # Read as the loader did (it already accepted this file): bounded, duplicate keys refused.
    root, _ = compose(Path(file).read_text())
    where = _Located(root, file)
    return [
        f"{file}:{where.line(loc)}: {_dotted(loc)}: {problems[path]}" for loc, path in found if problems.get(path)
    ]


__all__ = ["CHECK_TIMEOUT", "check_import_paths", "import_paths", "resolve_in_child"]
