"""The config schema of triggers (`triggers:`) and background runs (`background:`) of an agent.

A trigger turns something outside the system (a file change, an HTTP request, the clock) into a run of its
agent. The supervisor owns every trigger; agents only receive runs. `template` (str.format syntax) renders
the prompt from the fields each kind offers (`TEMPLATE_FIELDS`).
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from llmling.config.base import Strict
from llmling.cron import CronError, validate, zone
from llmling.names import check_name

# The fields a template may use, per trigger kind.
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "file": ("change", "path", "abs_path", "name", "agent"),
    "webhook": ("body", "data", "query", "headers", "event", "method", "path", "name", "agent"),
    "time": ("time", "count", "name", "agent"),
}
DEFAULT_MAX_BODY = 1024 * 1024


def check_template(template: str, kind: str) -> str:
    """Raise ValueError naming an unknown field or a malformed template; return the template."""
    allowed = TEMPLATE_FIELDS[kind]
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"template is not valid str.format syntax: {exc}") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if root == "" or root.isdigit():
            raise ValueError("template fields must be named, e.g. {path}")
        if root not in allowed:
            raise ValueError(f"unknown template field {{{root}}}; {kind} triggers offer {', '.join(allowed)}")
    return template


class _Trigger(Strict):
    name: str = Field(description="unique among the agent's triggers; `llmling trigger enable AGENT NAME`")
    enabled: bool = Field(True, description="a disabled trigger stays configured but does not fire")
    template: str | None = Field(None, description="str.format template of the prompt (fields: see the docs)")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _template(self) -> _Trigger:
        if self.template is not None:
            check_template(self.template, self.type)  # type: ignore[attr-defined]  (each kind has its fields)
        return self


class FileTrigger(_Trigger):
    """A run when files change. Each batch of changes (debounced) becomes one run naming every change."""

    type: Literal["file"]
    paths: list[str] = Field(
        min_length=1, description="files, folders or globs (`docs/**/*.md`), relative to the config's folder"
    )
    extensions: list[str] | None = Field(None, description="only these suffixes, e.g. ['.md']")
    debounce_ms: int = Field(200, ge=0, le=60_000, description="changes within this window become one run")

    @field_validator("extensions")
    @classmethod
    def _dots(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [ext if ext.startswith(".") else f".{ext}" for ext in value]


# How a webhook request is signed (`signature:`); each needs `secret_env`.
SignatureScheme = Literal["github", "stripe", "slack", "hmac-sha256"]
SIGNATURE_SCHEMES: tuple[str, ...] = get_args(SignatureScheme)
# Keys that belong to the server of a (host, port), not to one trigger: every trigger on that address that
# sets one must set the same value; the one set (or the default) applies to the whole server.
WEBHOOK_SERVER_KEYS = ("header_timeout_s", "keepalive_timeout_s", "max_connections", "max_connections_per_client")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def _header_name(value: str) -> str:
    if not _HEADER_NAME.match(value):
        raise ValueError(f"{value!r} is not an HTTP header name")
    return value


class WebhookTrigger(_Trigger):
    """A run for each HTTP POST on `host:port` + `path`; triggers on one port share one server."""

    type: Literal["webhook"]
    port: int = Field(ge=1, le=65535)
    host: str = Field("127.0.0.1", description="the address to bind; 0.0.0.0 for every interface")
    path: str = Field("/webhook", description="the URL path, starting with /")
    secret_env: str | None = Field(
        None, description="environment variable with the HMAC-SHA256 secret the `signature` is checked with"
    )
    signature: SignatureScheme | None = Field(
        None,
        description="how requests are signed: github (X-Hub-Signature-256, the default with a secret), stripe "
        "(Stripe-Signature t=,v1=), slack (X-Slack-Signature v0= + X-Slack-Request-Timestamp), hmac-sha256 "
        "(hex HMAC of the body in `signature_header`)",
    )
    signature_header: str = Field("X-Signature-256", description="the header of `signature: hmac-sha256`")
    timestamp_tolerance_s: float = Field(
        300, gt=0, le=86_400, description="stripe/slack: a signed timestamp further than this from now is refused"
    )
    max_body_bytes: int = Field(DEFAULT_MAX_BODY, gt=0, description="larger bodies are refused with 413")
    body_timeout_s: float = Field(10.0, gt=0, le=3600, description="the whole body must arrive within this")
    events: list[str] | None = Field(
        None, min_length=1, description="only these events (from `event_header`) start a run; others get 204"
    )
    event_header: str = Field("X-GitHub-Event", description="the header naming the event (`events`, `ping`)")
    replay_headers: list[str] = Field(
        ["X-GitHub-Delivery", "Idempotency-Key"],
        description="a delivery id in one of these headers, seen before within `replay_window_s`, is answered "
        "with the first delivery's reply and not run again; [] turns this off",
    )
    replay_window_s: float = Field(86_400, gt=0, description="how long a delivery id is remembered")
    replay_max_ids: int = Field(10_000, ge=1, le=1_000_000, description="how many delivery ids are remembered")
    # Server keys (WEBHOOK_SERVER_KEYS): one value per (host, port).
    header_timeout_s: float = Field(5.0, gt=0, le=3600, description="a request's head must arrive within this")
    keepalive_timeout_s: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="an idle kept-alive connection (no next request head) is closed after this",
    )
    max_connections: int = Field(256, ge=1, le=100_000, description="open connections on the server, at most")
    max_connections_per_client: int = Field(
        64, ge=1, le=100_000, description="open connections from one client address, at most"
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in "?#{} "):
            raise ValueError("must start with / and contain no '?', '#', '{', '}' or spaces")
        return value

    @field_validator("signature_header", "event_header")
    @classmethod
    def _header(cls, value: str) -> str:
        return _header_name(value)

    @field_validator("replay_headers")
    @classmethod
    def _headers(cls, value: list[str]) -> list[str]:
        return [_header_name(name) for name in value]

    @model_validator(mode="after")
    def _signed(self) -> WebhookTrigger:
        if self.signature is not None and self.secret_env is None:
            raise ValueError(f"signature: {self.signature} needs secret_env (the variable holding the secret)")
        if "signature_header" in self.model_fields_set and self.scheme != "hmac-sha256":
            raise ValueError("signature_header is for signature: hmac-sha256 (the other schemes name their own)")
        return self

    @property
    def scheme(self) -> str | None:
        """The signature scheme in force: `signature`, or github when only a secret is set; None: unsigned."""
        if self.secret_env is None:
            return None
        return self.signature or "github"


class TimeTrigger(_Trigger):
    """A run on a schedule: a cron expression (wall clock of `timezone`, default local) or a fixed interval."""

    type: Literal["time"]
    cron: str | None = Field(None, description="5 fields: minute hour day-of-month month day-of-week")
    timezone: str | None = Field(
        None, description="IANA time zone of the cron expression (`Europe/Berlin`, `UTC`); default: local time"
    )
    interval_s: float | None = Field(None, gt=0, description="seconds between runs (the first after one interval)")
    prompt: str | None = Field(None, description="the prompt of every run, as it is")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return validate(value)
        except CronError as exc:
            raise ValueError(f"invalid cron expression: {exc}") from None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        try:
            zone(value)
        except CronError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> TimeTrigger:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("set exactly one of 'cron' or 'interval_s'")
        if self.timezone is not None and self.cron is None:
            raise ValueError("'timezone' applies to 'cron' only")
        if self.prompt is not None and self.template is not None:
            raise ValueError("set 'prompt' or 'template', not both")
        return self


TriggerConfig = Annotated[FileTrigger | WebhookTrigger | TimeTrigger, Field(discriminator="type")]


class BackgroundConfig(Strict):
    """Runs of one prompt repeated by the supervisor: the first at once, then one every `interval` seconds."""

    prompt: str = Field(min_length=1)
    interval: float = Field(gt=0, description="seconds between the starts of two runs")
    max_count: int | None = Field(None, ge=1, description="stop after this many runs (default: never)")


def unique_trigger_names(triggers: list[Any]) -> list[Any]:
    seen: set[str] = set()
    for trigger in triggers:
        if trigger.name in seen:
            raise ValueError(f"two triggers are named {trigger.name!r}")
        seen.add(trigger.name)
    return triggers


def webhook_conflicts(agents: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """(key path, problem) for each webhook trigger whose host, port and path another one already uses, and
    for each server key (WEBHOOK_SERVER_KEYS) set to a value another trigger on the same address set otherwise."""
    seen: dict[tuple[str, int, str], str] = {}
    # (host, port, key) -> (value, the trigger that set it)
    server_keys: dict[tuple[str, int, str], tuple[Any, str]] = {}
    problems: list[tuple[tuple[str | int, ...], str]] = []
    for agent_name, agent in agents.items():
        for index, trigger in enumerate(agent.triggers):
            if not isinstance(trigger, WebhookTrigger):
                continue
            key = (trigger.host, trigger.port, trigger.path)
            owner = f"{agent_name}/{trigger.name}"
            where: tuple[str | int, ...] = ("agents", agent_name, "triggers", index)
            if key in seen:
                problems.append(
                    (
                        (*where, "path"),
                        f"{trigger.host}:{trigger.port}{trigger.path} is already used by trigger {seen[key]}",
                    )
                )
            else:
                seen[key] = owner
            for name in WEBHOOK_SERVER_KEYS:
                if name not in trigger.model_fields_set:
                    continue
                value = getattr(trigger, name)
                first = server_keys.setdefault((trigger.host, trigger.port, name), (value, owner))
                if first[0] != value:
                    problems.append(
                        (
                            (*where, name),
                            f"{name} {value} differs from {first[0]} set by trigger {first[1]} on the same "
                            f"server {trigger.host}:{trigger.port} (one value per server)",
                        )
                    )
    return problems


def webhook_server_settings(triggers: list[WebhookTrigger]) -> dict[str, Any]:
    """The server keys of the triggers sharing one address: the value one of them set, else the default."""
    settings = {name: WebhookTrigger.model_fields[name].default for name in WEBHOOK_SERVER_KEYS}
    for trigger in triggers:
        settings.update({name: getattr(trigger, name) for name in trigger.model_fields_set & set(settings)})
    return settings


__all__ = [
    "SIGNATURE_SCHEMES",
    "TEMPLATE_FIELDS",
    "WEBHOOK_SERVER_KEYS",
    "BackgroundConfig",
    "FileTrigger",
    "TimeTrigger",
    "TriggerConfig",
    "WebhookTrigger",
    "check_template",
    "webhook_conflicts",
    "webhook_server_settings",
]
