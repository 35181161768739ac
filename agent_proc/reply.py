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


def error_frame(exc: BaseException) -> dict[str, Any]:
    """The `error` reply of a run the agent's code failed (kind "error"); a model error adds its typed `cause`."""
    from llmling.errors import ModelError
    from llmling.logs import redact

    # Redacted: the text reaches the caller, history and logs; no secret value may ride along.
    frame: dict[str, Any] = {"t": "error", "error": redact(f"{type(exc).__name__}: {exc}"), "kind": "error"}
    if isinstance(exc, ModelError):
        cause = exc.to_cause()
        cause["message"] = redact(cause["message"])  # a provider may echo the key it refused
        frame["cause"] = cause
    return frame
