"""Names that end up in socket paths, CLI arguments and log lines: one rule for all of them."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# How many valid names an "unknown name" message lists.
SHOWN_NAMES = 12


def check_name(value: str) -> str:
    """Return `value` when it is a valid name; raise ValueError (as pydantic validators do) otherwise."""
    if not _NAME.fullmatch(value):
        raise ValueError("must be letters, digits, '_', '.' or '-'")
    return value


def expand_short_form(value: object, key: str) -> object:
    """In a list, turn each plain string into `{key: string}` (the short form of a mapping entry)."""
    if isinstance(value, list):
        return [{key: item} if isinstance(item, str) else item for item in value]
    return value


def unknown(kind: str, name: str, known: Iterable[str]) -> str:
    """`unknown agent 'analyser'; did you mean 'analyzer'? (agents: analyzer, writer)`: the closest name when
    one is close, and the valid names (at most `SHOWN_NAMES` of them)."""
    choices = sorted(known)
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    shown = ", ".join(choices[:SHOWN_NAMES]) + (", …" if len(choices) > SHOWN_NAMES else "")
    return f"unknown {kind} {name!r}{hint} ({kind}s: {shown or 'none'})"
