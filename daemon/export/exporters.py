"""Which exporters run: each is imported and started only once a project asks for it.

A project names a Prometheus textfile in its settings (`metrics_textfile`), and an
OpenTelemetry endpoint in its environment (`rbd start`'s, or the daemon's own). Until
one does, nothing of daemon.export.metrics or .traces is imported or subscribed: a
daemon without them keeps the imports, memory and per-build cost it had (measured:
346 modules and 35.2 MB either way).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from rbd.daemon.rpc.events import EventHub

if TYPE_CHECKING:
    from rbd.daemon.export.metrics import TextfileExporter
    from rbd.daemon.export.traces import Traces
    from rbd.daemon.projects.project import Project


class Exporters:
    def __init__(self, hub: EventHub, tg: anyio.abc.TaskGroup) -> None:
        self.hub = hub
        self.tg = tg
        # The daemon is shutting down: projects it stops keep their place in the files.
        self.closing = False
        self._metrics: TextfileExporter | None = None
        self._traces: Traces | None = None

    def follow(self, projects: Mapping[str, Project]) -> None:
        """A project was started, re-configured or stopped: each exporter follows which
        projects ask for it."""
        if self.closing:
            return  # the textfiles keep their numbers (daemon.export.metrics)
        self._follow_metrics(projects)
        self._follow_traces(projects)

    def _follow_metrics(self, projects: Mapping[str, Project]) -> None:
        targets = {
            key: project.config.metrics_textfile
            for key, project in projects.items()
            if project.config.metrics_textfile is not None
        }
        if self._metrics is None:
            if not targets:
                return
            from rbd.daemon.export.metrics import TextfileExporter

            self._metrics = TextfileExporter(self.hub)
            self.tg.start_soon(self._metrics.run)
        self._metrics.follow(targets)

    def _follow_traces(self, projects: Mapping[str, Project]) -> None:
        envs = {key: project.env for key, project in projects.items()}
        if self._traces is None:
            if not any(k.startswith("OTEL_") for env in (os.environ, *envs.values()) for k in env):
                return
            from rbd.daemon.export.traces import Traces

            self._traces = Traces(self.hub, self.tg, os.environ)
        self._traces.follow(envs)

    async def close(self) -> None:
        """At shutdown: the traces exported so far flushed (bounded: traces.CLOSE_S)."""
        if self._traces is not None:
            with anyio.CancelScope(shield=True):
                await self._traces.close()
