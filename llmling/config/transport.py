"""Config of how the supervisor reaches agents on other hosts: `transport: {nats: {...}}` (NATS JetStream).

Without `transport:` every agent is a child of the supervisor, reached over its Unix socket (the default,
single-host transport). With it, agents whose `placement` is `remote` or `any` are also served by
`llmling host` processes on any machine that reaches the NATS server.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from llmling.config.base import Strict

# A typo cannot ask for a thousand processes of one agent.
MAX_REPLICAS = 64

Placement = Literal["local", "remote", "any"]


class NatsTlsConfig(Strict):
    """TLS towards the NATS server (a `tls://` URL, or a server that requires it)."""

    ca_file: str | None = Field(None, description="CA bundle that signed the server's certificate")
    cert_file: str | None = Field(None, description="client certificate (mutual TLS)")
    key_file: str | None = Field(None, description="the client certificate's private key")


class NatsConfig(Strict):
    """`transport: {nats: ...}`: where the NATS server is and how to authenticate to it."""

    url: str = Field("nats://127.0.0.1:4222", description="server URL(s), comma-separated; nats:// or tls://")
    stream: str = Field("llmling", description="the JetStream stream (and subject prefix) of llmling's work")
    creds_file: str | None = Field(None, description="NATS credentials file (JWT + nkey seed)")
    nkey_seed_file: str | None = Field(None, description="file holding an nkey seed (nkey authentication)")
    user: str | None = Field(None, description="user name (with `password_env`)")
    password_env: str | None = Field(None, description="environment variable holding the user's password")
    token_env: str | None = Field(None, description="environment variable holding an authentication token")
    tls: NatsTlsConfig | None = Field(None, description="TLS: {ca_file, cert_file, key_file}")
    ack_wait: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds a delivered run may go unacknowledged before it is redelivered (a running run "
        "sends progress acks, so this bounds how long a dead host holds a run)",
    )
    connect_timeout: float = Field(5.0, gt=0, le=300, description="seconds to connect before giving up once")
    host_heartbeat: float = Field(
        2.0, gt=0, le=300, description="seconds between a host's reports; three missed ones: unreachable"
    )

    @field_validator("url")
    @classmethod
    def _schemes(cls, value: str) -> str:
        for url in value.split(","):
            if not url.strip().startswith(("nats://", "tls://", "ws://", "wss://")):
                raise ValueError(f"{url.strip()!r} is not a nats://, tls://, ws:// or wss:// URL")
        return value

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        if not value.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"stream {value!r} must be letters, digits, '_' or '-'")
        return value


class TransportConfig(Strict):
    """`transport:`: today one kind, NATS."""

    nats: NatsConfig | None = Field(None, description="NATS JetStream between the supervisor and agent hosts")
