"""Exporting builds to a team's observability stack: Prometheus, OpenTelemetry."""
