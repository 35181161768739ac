"""The base of every config model: unknown keys are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # defer_build: a model builds its validators on first use, not at import. The supervisor validates (and so
    # builds) as before; agent processes only unpickle the AgentConfig of their spec, which needs no validator,
    # so the forkserver's preload of this schema stays cheap (~0.1 s CPU less per system start).
    model_config = ConfigDict(extra="forbid", defer_build=True)
