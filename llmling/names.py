"""Names that end up in socket paths, CLI arguments and log lines: one rule for all of them."""

from __future__ import annotations

import re

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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
