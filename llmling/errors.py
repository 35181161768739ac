"""Typed errors raised by library code. Only `llmling.cli` turns them into exit codes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, TypedDict, cast, get_args

# Why a run failed: the agent's code raised ("error"), its process died during the run ("crash"), it ran past
# its run_timeout ("timeout"), the agent cannot take runs (failed, stopped, removed: "unavailable"), or its
# queue is full ("busy").
RunErrorKind = Literal["error", "crash", "timeout", "unavailable", "busy"]


class LLMlingError(Exception):
    """Base class of every error llmling raises on purpose."""


class ConfigError(LLMlingError):
    """A config file is invalid. The message names `file:line` and the key path."""


class StartupError(LLMlingError):
    """The system could not start (an agent failed its init, the socket is taken, ...)."""


class StartupInterrupted(StartupError):
    """A stop was requested (Ctrl+C, SIGTERM, `llmling stop`) before every agent was ready."""


# -- model errors --------------------------------------------------------------------------------------------
class ModelErrorCause(TypedDict):
    """A model error as it crosses the process boundary: the `cause` of an agent's `error` frame."""

    type: str  # the class name: "ModelTimeout", "ModelUnreachable", ...
    message: str  # the provider's own message (without llmling's sentence around it)
    model: str
    api_base: str | None  # None: the provider's default endpoint
    status: int | None  # the HTTP status the provider answered, when it answered
    attempts: int  # model calls made, retries included
    elapsed: float  # seconds from the first attempt to the failure


class ModelError(LLMlingError):
    """A model call failed. Names the model and its `api_base`, keeps the provider's message.

    `str()` is one readable sentence, e.g. `model openai/gpt-4o-mini at http://127.0.0.1:9/v1 unreachable:
    Connection refused (after 0.01 s)`. The subclasses say what happened; `to_cause()`/`from_cause()` carry
    one across the process boundary.
    """

    # What happened, in the sentence: "model M at URL <what>: <message>".
    what: ClassVar[str] = "failed"

    def __init__(
        self,
        message: str,
        *,
        model: str,
        api_base: str | None = None,
        status: int | None = None,
        attempts: int = 1,
        elapsed: float = 0.0,
    ) -> None:
        self.message = message
        self.model = model
        self.api_base = api_base
        self.status = status
        self.attempts = attempts
        self.elapsed = elapsed
        super().__init__(self._sentence())

    def _sentence(self) -> str:
        where = f"model {self.model}" + (f" at {self.api_base}" if self.api_base else "")
        status = f" (HTTP {self.status})" if self.status else ""
        tries = f"{self.attempts} attempts in " if self.attempts > 1 else ""
        return f"{where} {self.what}{status}: {self.message} (after {tries}{self.elapsed:.2f} s)"

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_model_error, (self.to_cause(),)

    def to_cause(self) -> ModelErrorCause:
        return ModelErrorCause(
            type=type(self).__name__,
            message=self.message,
            model=self.model,
            api_base=self.api_base,
            status=self.status,
            attempts=self.attempts,
            elapsed=self.elapsed,
        )

    @staticmethod
    def from_cause(cause: ModelErrorCause) -> ModelError:
        """The typed error of a `cause` (an unknown `type` gives a plain ModelError)."""
        kind = MODEL_ERRORS.get(cause["type"], ModelError)
        return kind(
            str(cause["message"]),
            model=str(cause["model"]),
            api_base=cause["api_base"],
            status=cause["status"],
            attempts=int(cause["attempts"]),
            elapsed=float(cause["elapsed"]),
        )


def _rebuild_model_error(cause: ModelErrorCause) -> ModelError:
    return ModelError.from_cause(cause)


class ModelUnreachable(ModelError):
    """No connection to the model's server (refused, DNS, TLS). Not retried."""

    what = "unreachable"


class ModelAuthError(ModelError):
    """The provider refused the credentials (401/403). A key that is not set fails the start: MissingAPIKey."""

    what = "refused the credentials"


class ModelTimeout(ModelError):
    """The model call (all its attempts, streaming included) did not end within `model_settings.timeout`."""

    what = "timed out"


class ModelRateLimited(ModelError):
    """The provider kept answering 429 after `model_settings.num_retries` retries."""

    what = "rate limited"


class ModelServerError(ModelError):
    """The provider kept answering 5xx after `model_settings.num_retries` retries."""

    what = "server error"


class ModelBadRequest(ModelError):
    """The provider refused the request itself (400, 404 unknown model, 422, context too long, ...)."""

    what = "refused the request"


MODEL_ERRORS: dict[str, type[ModelError]] = {
    kind.__name__: kind
    for kind in (
        ModelError,
        ModelUnreachable,
        ModelAuthError,
        ModelTimeout,
        ModelRateLimited,
        ModelServerError,
        ModelBadRequest,
    )
}


class MissingAPIKey(LLMlingError):
    """The variable that holds a model's API key is not set (found at the agent's start and by `validate`)."""

    def __init__(self, variable: str, model: str) -> None:
        super().__init__(f"{variable} is not set (model {model})")
        self.variable = variable
        self.model = model


# -- runs ----------------------------------------------------------------------------------------------------
class AgentRunError(LLMlingError):
    """An agent's run failed: its code raised, its model call failed or its process died mid-run.

    `cause` is a ModelError (ModelTimeout, ModelUnreachable, ...) when the model call failed, else the text of
    the failure; `str(cause)` is readable either way. `kind` is one of "error" (the agent's code or model
    failed), "crash" (its process died during the run), "timeout" (run_timeout), "unavailable" (the agent
    failed, stopped or was removed), "busy" (its queue is full).
    """

    def __init__(self, agent: str, cause: str | ModelError, kind: RunErrorKind = "error") -> None:
        super().__init__(f"agent {agent!r} failed: {cause}")
        self.agent = agent
        self.cause = cause
        self.kind: RunErrorKind = kind
        # The attempts this failure used, when the transport counted them itself (NATS redeliveries); the
        # router then counts them as its own. None: this was one attempt.
        self.attempts: int | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.agent, self.cause, self.kind)

    @classmethod
    def from_reply(cls, agent: str, reply: Mapping[str, Any]) -> AgentRunError:
        """The error of an `error` reply (`error`, [`kind`], [`cause`]); a typed ModelError cause if it has one."""
        given = reply.get("kind")
        kind = cast(RunErrorKind, given if given in get_args(RunErrorKind) else "error")
        cause = reply.get("cause")
        if isinstance(cause, dict):
            try:
                return cls(agent, ModelError.from_cause(cast(ModelErrorCause, cause)), kind)
            except (KeyError, TypeError, ValueError):
                pass  # not a cause this version knows: keep the text
        return cls(agent, str(reply.get("error")), kind)

    def reply_fields(self) -> dict[str, Any]:
        """`error`, `kind` and (for a model error) `cause`, for a frame or a JSON record of this failure."""
        fields: dict[str, Any] = {"error": str(self.cause), "kind": self.kind}
        if isinstance(self.cause, ModelError):
            fields["cause"] = self.cause.to_cause()
        return fields


class AgentBusyError(AgentRunError):
    """The agent's queue is full (`max_queue` runs accepted and not started): the run was not accepted.

    `retry_after` is the slot's estimate, in whole seconds, of when a place may be free.
    """

    def __init__(self, agent: str, queued: int, retry_after: int = 1) -> None:
        super().__init__(agent, f"busy ({queued} queued)", kind="busy")
        self.queued = queued
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"agent {self.agent} is busy ({self.queued} queued)"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.agent, self.queued, self.retry_after)


class UnknownAgentError(LLMlingError):
    """A request named an agent the system does not have."""
