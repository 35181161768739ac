"""What the system shows outside: Prometheus metrics and OpenTelemetry spans, both built from supervisor events."""
