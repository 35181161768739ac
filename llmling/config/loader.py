"""Reading a config file: YAML with `${VAR}` interpolation, validated by the schema; every error names
`file:line` and the key path. The YAML itself is read under the limits of `safe_yaml` (size, nesting,
aliases, duplicate keys)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmling.config.safe_yaml import (
    MAX_CONFIG_BYTES,
    YamlProblem,
    compose,
    construct,
    decode_config,
    duplicate_keys,
    yaml_line,
)
from llmling.config.schema import SystemConfig
from llmling.config.triggers import webhook_conflicts
from llmling.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Loc = tuple[str | int, ...]


class _Located:
    """Maps key paths of a YAML document to their line numbers. Raises ConfigError for a key repeated in one
    mapping (a second `agents:`, two agents of one name): YAML would silently keep the last one."""

    def __init__(self, root: yaml.Node | None, file: str) -> None:
        self.lines: dict[Loc, int] = {}
        self._file = file
        if root is not None:
            self._walk(root, ())

    def _walk(self, node: yaml.Node, loc: Loc) -> None:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            repeated = duplicate_keys(node)
            if repeated is not None:
                key, first = repeated
                raise ConfigError(
                    f"{self._file}:{key.start_mark.line + 1}: {_dotted((*loc, key.value))}: "
                    f"duplicate key {key.value!r} (first at line {first})"
                )
            for key, value in node.value:
                child = (*loc, key.value)
                self.lines[child] = key.start_mark.line + 1
                self._walk_value(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self._walk(item, (*loc, index))

    def _walk_value(self, node: yaml.Node, loc: Loc) -> None:
        line = self.lines[loc]
        self._walk(node, loc)
        self.lines[loc] = line  # a key's line is where the key stands

    def document_path(self, loc: Loc) -> Loc:
        """`loc` without the parts pydantic adds that are not keys of the document (union member tags)."""
        kept: Loc = ()
        for index, part in enumerate(loc):
            candidate = (*kept, part)
            if candidate in self.lines or not isinstance(part, str) or index == len(loc) - 1:
                kept = candidate
        return kept

    def line(self, loc: Loc) -> int:
        while loc and loc not in self.lines:
            loc = loc[:-1]
        return self.lines.get(loc, 1)


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _interpolate(value: Any, loc: Loc, where: _Located, file: str, refs: dict[str, set[str]]) -> Any:
    """Substitute `${VAR}`s; `refs` collects, per agent, the variables its section names (outside its
    triggers, which run in the supervisor)."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if len(loc) >= 2 and loc[0] == "agents" and loc[2:3] != ("triggers",):
                refs.setdefault(str(loc[1]), set()).add(name)
            found = os.environ.get(name)
            if found is not None and (found or default is None):
                return found
            if default is not None:
                return default
            raise ConfigError(
                f"{file}:{where.line(loc)}: {_dotted(loc)}: environment variable {name} is not set "
                f"(use ${{{name}:-default}} for a default)"
            )

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {key: _interpolate(item, (*loc, key), where, file, refs) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, (*loc, index), where, file, refs) for index, item in enumerate(value)]
    return value


def _first_error(exc: ValidationError, where: _Located, file: str) -> ConfigError:
    lines = []
    for error in exc.errors(include_url=False):
        loc = where.document_path(tuple(error["loc"]))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        message = message.removeprefix("Value error, ")
        lines.append(f"{file}:{where.line(loc)}: {_dotted(loc)}: {message}")
    return ConfigError("\n".join(lines))


def parse_config(text: str, file: str = "<config>", default_name: str = "llmling") -> SystemConfig:
    """Validate a YAML document. Raises ConfigError naming `file:line` and the key path."""
    try:
        root, loader = compose(text)
        where = _Located(root, file)
        data = construct(root, loader)
    except YamlProblem as exc:
        raise ConfigError(f"{file}:{exc.line}: invalid YAML: {exc.message}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{file}:{line}: invalid YAML: {exc.reason} #x{exc.character:04x}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{file}:{yaml_line(exc)}: invalid YAML: {problem}") from None
    except RecursionError:  # not reachable under MAX_DEPTH; a last guard so no traceback reaches the user
        raise ConfigError(f"{file}:1: invalid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}:1: the config must be a mapping with an 'agents' key")
    if "source" in data:
        raise ConfigError(f"{file}:{where.line(('source',))}: source: unknown key")
    refs: dict[str, set[str]] = {}
    data = _interpolate(data, (), where, file, refs)
    data.setdefault("name", default_name)
    try:
        config = SystemConfig.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, where, file) from None
    for agent_name, agent in config.agents.items():
        for index, connection in enumerate(agent.connections):
            target = connection.name
            if target not in config.agents:
                loc: Loc = ("agents", agent_name, "connections", index)
                raise ConfigError(f"{file}:{where.line(loc)}: {_dotted(loc)}: unknown agent {target!r}")
    if config.transport.nats is not None and "." in config.name:
        raise ConfigError(
            f"{file}:{where.line(('name',))}: name: {config.name!r} must not contain '.' with transport.nats "
            "(the name is a NATS subject token)"
        )
    if config.transport.nats is None:
        for agent_name, agent in config.agents.items():
            if agent.placement != "local":
                loc = ("agents", agent_name, "placement")
                raise ConfigError(
                    f"{file}:{where.line(loc)}: {_dotted(loc)}: placement {agent.placement!r} needs "
                    "'transport: {nats: {url: ...}}'"
                )
    for loc, problem in webhook_conflicts(config.agents):
        raise ConfigError(f"{file}:{where.line(loc)}: {_dotted(loc)}: {problem}")
    for agent_name, names in refs.items():
        if agent_name in config.agents:
            config.agents[agent_name]._referenced_env = frozenset(names)
    return config


def load_config(path: str | os.PathLike[str]) -> SystemConfig:
    """Read and validate a config file. Raises ConfigError (also for a missing or unreadable file)."""
    file = Path(path)
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror or exc}") from None
    try:
        text = decode_config(data)
    except YamlProblem as exc:
        raise ConfigError(f"{file}:{exc.line}: cannot read config: {exc.message}") from None
    config = parse_config(text, str(file), default_name=file.stem)
    config.source = file.resolve()
    return config


def json_schema() -> dict[str, Any]:
    return SystemConfig.model_json_schema()
