"""The config of how the supervisor keeps an agent: its admission, its run deadline, its restart intensity."""

from __future__ import annotations

from pydantic import Field

from llmling.config.base import Strict

# Upper bounds, so a typo cannot ask for a million processes' worth of concurrency or an unbounded queue.
MAX_CONCURRENCY = 1024
MAX_QUEUE = 1_000_000


class RestartConfig(Strict):
    """Restart intensity: more than `max_restarts` restarts within `period` seconds marks the agent failed.

    The first restart after a crash is immediate; repeated ones wait a random time up to an exponential cap.
    A failed agent stays failed until `llmling restart AGENT`.
    """

    max_restarts: int = Field(5, ge=0, le=1000, description="restarts allowed within `period` seconds")
    period: float = Field(
        60.0, gt=0, le=86_400, description="the window, in seconds, that restarts are counted in"
    )
