"""Reading a YAML config safely: bounded in size, nesting, aliases and their expansion; strict about duplicate
keys. Every refusal is a `YamlProblem` carrying the 1-based line it is about.

Limits (each a constant here, documented in the README's "Config errors"):
- the file: at most `MAX_CONFIG_BYTES`, UTF-8 text without NUL bytes;
- nesting: at most `MAX_DEPTH` levels of mappings/sequences, also counting through aliases;
- aliases (`*name`): at most `MAX_ALIASES` uses, and the document with every alias expanded in place has at most
  `MAX_NODES` nodes. So an anchor with `<<: *defaults` merges works as usual, while an alias bomb (a few hundred
  bytes that expand to billions of nodes) is refused while composing, before anything is built from it;
- a key repeated in one mapping (a second `agents:`, two agents of one name) is an error naming both lines.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_CONFIG_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 200
MAX_NODES = 100_000

_MERGE = "tag:yaml.org,2002:merge"


class YamlProblem(Exception):
    """The document cannot be read; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def decode_config(data: bytes) -> str:
    """The text of a config file's bytes. Raises YamlProblem for a file that is too large, binary or not UTF-8."""
    if len(data) > MAX_CONFIG_BYTES:
        raise YamlProblem(1, f"the file is too large: more than {MAX_CONFIG_BYTES} bytes")
    nul = data.find(b"\0")
    if nul >= 0:
        raise YamlProblem(data.count(b"\n", 0, nul) + 1, "not a text file (it contains NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise YamlProblem(line, f"not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer counts nesting and aliases as it goes, so nothing deep or explosive is built."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise YamlProblem(line, f"more than {MAX_ALIASES} aliases")
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlProblem(
                    self.peek_event().start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep"
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Scalar constructors (`!!int`, `!!timestamp`, ...) raise plain Python errors: name the line."""
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            raise YamlProblem(node.start_mark.line + 1, f"invalid value for {node.tag}: {exc}") from None


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document that, with its aliases expanded, has more than MAX_NODES nodes or MAX_DEPTH levels, or
    whose aliases form a cycle. Iterative and memoised per node: linear in the composed (unexpanded) document."""
    # id(node) -> (nodes, height) of its expansion
    done: dict[int, tuple[int, int]] = {}
    active: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if not children_done:
            if key in done:
                continue
            if key in active:
                raise YamlProblem(node.start_mark.line + 1, "an alias refers to a node that contains it")
            active.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in done)
            continue
        size, height = 1, 1
        for child in children:
            child_size, child_height = done[id(child)]
            size += child_size
            height = max(height, child_height + 1)
        line = node.start_mark.line + 1
        if size > MAX_NODES:
            raise YamlProblem(line, f"aliases expand this node to more than {MAX_NODES} nodes")
        if height > MAX_DEPTH:
            raise YamlProblem(line, f"aliases nest this node more than {MAX_DEPTH} levels deep")
        active.discard(key)
        done[key] = (size, height)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def duplicate_keys(node: yaml.MappingNode) -> tuple[yaml.Node, int] | None:
    """The first key of `node` that repeats an earlier one, with the earlier one's line; None if all differ."""
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode):
            continue
        ident = (key.tag, key.value)
        if ident in seen:
            return key, seen[ident]
        seen[ident] = key.start_mark.line + 1
    return None


def compose(text: str) -> tuple[yaml.Node | None, _BoundedLoader]:
    """Compose the single document of `text` under the limits; the loader then constructs it (`construct`)."""
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root)
    except BaseException:
        loader.dispose()
        raise
    return root, loader


def construct(root: yaml.Node | None, loader: _BoundedLoader) -> Any:
    try:
        return None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()


def yaml_line(exc: yaml.YAMLError) -> int:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    return 1


__all__ = [
    "MAX_ALIASES",
    "MAX_CONFIG_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "YamlProblem",
    "compose",
    "construct",
    "decode_config",
    "duplicate_keys",
    "yaml_line",
]
