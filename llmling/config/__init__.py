"""The config: its schema (`schema`, `capabilities`, `triggers`) and its loader (`loader`)."""

from __future__ import annotations

from llmling.config.capabilities import (
    HistoryConfig,
    HttpServerConfig,
    KnowledgeConfig,
    ResourceRef,
    StdioServerConfig,
)
from llmling.config.loader import json_schema, load_config, parse_config
from llmling.config.schema import (
    LOCAL_PREFIX,
    AgentConfig,
    CallableCondition,
    ConnectionConfig,
    ModelSettings,
    SystemConfig,
    WordMatch,
)
from llmling.config.supervision import RestartConfig
from llmling.config.transport import NatsConfig, NatsTlsConfig, TransportConfig
from llmling.config.triggers import BackgroundConfig, FileTrigger, TimeTrigger, WebhookTrigger

__all__ = [
    "LOCAL_PREFIX",
    "AgentConfig",
    "BackgroundConfig",
    "CallableCondition",
    "ConnectionConfig",
    "FileTrigger",
    "HistoryConfig",
    "HttpServerConfig",
    "KnowledgeConfig",
    "ModelSettings",
    "NatsConfig",
    "NatsTlsConfig",
    "ResourceRef",
    "RestartConfig",
    "StdioServerConfig",
    "SystemConfig",
    "TimeTrigger",
    "TransportConfig",
    "WebhookTrigger",
    "WordMatch",
    "json_schema",
    "load_config",
    "parse_config",
]
