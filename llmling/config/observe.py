"""Config of what the system shows outside: Prometheus (`metrics:`) and OpenTelemetry (`telemetry:`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from llmling.config.base import Strict


class MetricsConfig(Strict):
    """`metrics: {port: 9464}`: the supervisor serves Prometheus' `/metrics` (without a dashboard)."""

    port: int = Field(9464, ge=1, le=65535, description="TCP port of the /metrics endpoint")
    host: str = Field("127.0.0.1", description="address to bind; loopback by default")


class TelemetryConfig(Strict):
    """`telemetry: {otlp_endpoint: ...}`: one OpenTelemetry span per run, exported with OTLP/HTTP in batches."""

    otlp_endpoint: str = Field(
        "http://127.0.0.1:4318", description="OTLP/HTTP collector base URL; spans go to <endpoint>/v1/traces"
    )
    service_name: str | None = Field(None, description="the `service.name` resource; default: the system's name")

    @field_validator("otlp_endpoint")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("otlp_endpoint must be an http:// or https:// URL")
        return value.rstrip("/")
