"""Tools of the example agent in capabilities.yml: plain Python functions (sync or async).

The model sees each function's name, the first paragraph of its docstring, and a JSON schema built from its
signature (the `Args:` section describes the parameters). Whatever a tool raises goes back to the model as an
error message; the agent keeps serving.
"""

from __future__ import annotations

import datetime


def utc_now() -> str:
    """The current date and time in UTC, ISO 8601."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


async def word_count(text: str, unique: bool = False) -> int:
    """Count the words of a text.

    Args:
        text: the text to count
        unique: count each distinct word (case-insensitive) once
    """
    words = text.split()
    return len({word.lower() for word in words}) if unique else len(words)
