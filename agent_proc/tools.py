"""Tools an agent offers its model: local Python callables and MCP tools, under one namespace.

A local tool's JSON schema comes from its signature (pydantic builds and validates the arguments) and its
docstring (the first paragraph describes the tool; an `Args:` section or `:param x:` lines describe the
parameters). A sync tool runs on a worker thread, so a slow one cannot block the agent's event loop (and its
heartbeat); an async tool runs on the loop. A parameter annotated with `llmling.RunContext` is not part of the
schema: it gets the current run's context (id, attempt, ...).

A tool's failure is never the agent's failure: `ToolBox.call` turns every exception into the text the model
reads in the `tool` message, starting with `Error:`.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from llmling.agent_proc.run_context import current_run, is_run_context
from llmling.user_code import call as call_user_code

Arguments = dict[str, Any]
# OpenAI-compatible APIs accept function names of this form.
_NAME = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_NAME = 64


@dataclass(slots=True)
class Tool:
    """One function the model may call. `call` gets the decoded arguments and returns the result's text."""

    name: str
    description: str
    parameters: dict[str, Any]
    call: Callable[[Arguments], Awaitable[str]]
    # Where the tool comes from (`module:function`, `mcp:<server>`), for logs and clash prefixes.
    origin: str = ""

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ToolError(Exception):
    """A tool reported a failure (an MCP tool result with `isError`)."""


# -- local tools from Python callables ----------------------------------------------------------------------
def _docstring(function: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """The description (first paragraph) and the per-parameter descriptions of a docstring."""
    doc = inspect.getdoc(function) or ""
    prose = re.split(
        r"^(?:Args|Arguments|Parameters|Returns|Raises|Yields):|^:(?:param|returns?|raises)\b",
        doc,
        maxsplit=1,
        flags=re.M,
    )[0]
    description = prose.split("\n\n", 1)[0].strip()
    params: dict[str, str] = {}
    for match in re.finditer(r"^\s*:param\s+(?:\S+\s+)?(\w+):\s*(.+)$", doc, re.MULTILINE):
        params[match.group(1)] = match.group(2).strip()
    section = re.search(r"^(?:Args|Arguments|Parameters):\s*\n((?:[ \t]+.*\n?|\s*\n)+)", doc, re.MULTILINE)
    if section:
        for match in re.finditer(r"^[ \t]+(\*{0,2}\w+)(?:\s*\([^)]*\))?:\s*(.+)$", section.group(1), re.MULTILINE):
            params.setdefault(match.group(1).lstrip("*"), match.group(2).strip())
    return description, params


def local_tool(function: Callable[..., Any], origin: str = "") -> Tool:
    """A Tool for a Python callable (sync or async). Raises TypeError when its signature cannot be a schema."""
    # Imported here: agents without tools (and the forkserver's preload) do not pay for pydantic.
    from pydantic import ConfigDict, Field, create_model

    name = _NAME.sub("_", getattr(function, "__name__", "tool"))[:_MAX_NAME]
    description, param_docs = _docstring(function)
    signature = inspect.signature(function)
    hints = typing.get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    positional: list[str] = []
    # The parameter that gets the RunContext (never offered to the model).
    context: str | None = None
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue  # not expressible as a JSON object's properties
        if param.kind == param.POSITIONAL_ONLY:
            positional.append(param.name)
        annotation = hints.get(param.name, Any)
        if context is None and is_run_context(annotation):
            context = param.name
            continue
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, Field(default, description=param_docs.get(param.name)))
    model = create_model(  # type: ignore[call-overload]
        f"{name}_arguments", __config__=ConfigDict(arbitrary_types_allowed=False, extra="forbid"), **fields
    )
    schema = model.model_json_schema()
    schema.pop("title", None)

    async def call(arguments: Arguments) -> str:
        validated = model.model_validate(arguments)
        values = {key: getattr(validated, key) for key in fields}
        if context is not None:
            values[context] = current_run.get()
        args = [values.pop(key) for key in positional]
        return to_text(await call_user_code(function, *args, settle=True, **values))

    return Tool(name=name, description=description or name, parameters=schema, call=call, origin=origin)


def to_text(result: Any) -> str:
    """What the model reads as a tool's result: strings as they are, everything else as JSON when possible."""
    if isinstance(result, str):
        return result
    if result is None:
        return ""
    dump = getattr(result, "model_dump", None)
    if callable(dump):
        result = dump(mode="json")
    try:
        return json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(result)


# -- the namespace --------------------------------------------------------------------------------------------
class ToolBox:
    """The tools of one agent, by the name the model sees.

    Invariant: names are unique; a tool added under a taken name gets its `prefix` (`<server>_<name>`).
    """

    def __init__(self, agent: str = "") -> None:
        self._tools: dict[str, Tool] = {}
        self.log = logger.bind(agent=agent) if agent else logger

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def add(self, tool: Tool, prefix: str | None = None) -> str:
        """Add `tool`; returns the name it got. Raises ValueError when the name is taken and there is no prefix."""
        name = tool.name
        if name in self._tools:
            if prefix is None:
                raise ValueError(f"two tools are named {name!r} ({self._tools[name].origin} and {tool.origin})")
            name = _NAME.sub("_", f"{prefix}_{tool.name}")[:_MAX_NAME]
            index = 2
            while name in self._tools:
                name, index = f"{name[: _MAX_NAME - 4]}_{index}", index + 1
            tool.name = name
        self._tools[name] = tool
        return name

    def specs(self) -> list[dict[str, Any]]:
        return [tool.spec() for tool in self._tools.values()]

    async def call(self, name: str, arguments: str | Arguments | None) -> tuple[str, bool]:
        """Run a tool the model asked for; returns (the text for the model, whether it failed). Never raises
        (except CancelledError)."""
        tool = self._tools.get(name)
        if tool is None:
            return f"Error: there is no tool named {name!r}; the tools are: {', '.join(self._tools)}", True
        try:
            if isinstance(arguments, str):
                decoded = json.loads(arguments) if arguments.strip() else {}
            else:
                decoded = arguments or {}
            if not isinstance(decoded, dict):
                raise TypeError(f"the arguments must be a JSON object, not {type(decoded).__name__}")
            return await tool.call(decoded), False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            problems = None if tool.origin.startswith("mcp:") else _invalid_arguments(exc)
            if problems is not None:
                self.log.warning("tool {} got invalid arguments: {}", name, problems)
                return f"Error: invalid arguments for {name}: {problems}", True
            self.log.warning("tool {} failed: {}: {}", name, type(exc).__name__, exc)
            return f"Error: {type(exc).__name__}: {exc}", True


def _invalid_arguments(exc: Exception) -> str | None:
    """`loc: msg; ...` when `exc` is pydantic's ValidationError of a local tool's arguments."""
    if type(exc).__name__ != "ValidationError" or not callable(getattr(exc, "errors", None)):
        return None
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
        for error in exc.errors(include_url=False)  # type: ignore[attr-defined]
    )
