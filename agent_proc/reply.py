"""What a backend returns for one run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

OnText = Callable[[str], None]


@dataclass(slots=True)
class Reply:
    content: str
    usage: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    async def init(self) -> None: ...

    async def run(self, messages: list[dict[str, Any]], on_text: OnText | None) -> Reply: ...
