"""Each build as an OpenTelemetry trace, sent over OTLP/HTTP to whatever collector the
standard `OTEL_*` environment names (an OpenTelemetry Collector, Jaeger, Tempo, Honeycomb…).

Which environment: a project's builds are exported as the environment `rbd start` gave it
says (Project.env, the user's shell), when that environment names an endpoint or turns
tracing off (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
`OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER`); otherwise as the daemon's own environment
says (a systemd unit's `Environment=`). All `OTEL_*` settings come from that one
environment, never some from each: the headers meant for one collector (its API key) must
not reach another one.

Invariants:
- Nothing of OpenTelemetry is imported, no thread is started and the hub is not subscribed
  to until a watched project's environment enables tracing: the SDK and its OTLP exporter
  cost about 230 ms to import and 13 MB of the daemon's RSS (35.2 → 48.0 MB, 1.45.2), and
  are imported then, in a worker thread, not on the event loop.
- The hub's subscriber never waits: it notes times and queues the finished build (0.03 to
  0.09 ms of the event loop per build); one worker thread at a time turns it into plain
  records (Span below) and those into the SDK's spans (3 ms for 60 units, 33 ms for 300),
  and the SDK's BatchSpanProcessor exports them from its own thread. A queue that is
  full drops the build's trace, never a build or its record.
- A collector that is down, slow or refusing costs one log line when exporting starts to
  fail (with the SDK's own reason) and one when it works again: the SDK's logging is kept
  out of the daemon's stderr and log.
- Shutdown waits at most CLOSE_S for the last spans to leave.

What rbd sends (span names and attribute keys are part of its interface, pinned by
tests/test_traces.py and listed in the README's "For teams"): a root span `rbd.build` per
build from cargo's spawn to its exit, a child `rbd.unit` per unit cargo ran (from the
unit's start on the build's timeline to its end), and an `rbd.app.restart` span, a child of
its build's span, when run mode restarts the app.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from rbd.contract import __version__, protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext, Tracer

    from rbd.contract.schema import AppFailed, AppReady, BuildFinished
    from rbd.daemon.rpc.events import EventHub, Subscription

log = structlog.get_logger("traces")

SPAN_BUILD = "rbd.build"
SPAN_UNIT = "rbd.unit"
SPAN_RESTART = "rbd.app.restart"

# Finished builds waiting for the worker thread: a few minutes of a busy project's saves.
# Full, a build's trace is dropped (said once in the log), never waited for.
QUEUE_BUILDS = 256
# At shutdown: how long the last spans get to reach the collector.
CLOSE_S = 2.0
# Builds and app starts remembered for the spans that need them later (a build's spawn
# time until it finishes, its span until its app is ready).
REMEMBERED = 64
# How much of a build's first error goes into its span's status (collectors cap
# attribute and status lengths; the full text is in the store).
ERROR_CHARS = 1000
# Paths of a build's trigger sent (a `git checkout` can touch thousands).
TRIGGER_PATHS = 20

# The variables that decide whether and where a project's builds are exported: an
# environment naming one of them is the one every OTEL_* setting is read from.
DECIDING = (
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
)
# The OpenTelemetry specification's defaults (its "Environment Variable Specification").
DEFAULT_TIMEOUT_MS = 10_000
DEFAULT_SCHEDULE_DELAY_MS = 5_000
DEFAULT_MAX_QUEUE_SIZE = 2048
DEFAULT_MAX_EXPORT_BATCH_SIZE = 512
HINT_INSTALL = "pip install 'rbd[otel]' (opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http)"

Attribute = str | bool | int | float | Sequence[str]


# --- configuration: the standard environment --------------------------------------------


@dataclass(frozen=True)
class Config:
    """Where and how a project's traces go: one OTLP/HTTP exporter per distinct Config."""

    # The full URL spans are POSTed to (…/v1/traces).
    endpoint: str
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float = DEFAULT_TIMEOUT_MS / 1000
    compression: str = "none"
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None
    # OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME (rbd adds its defaults under them).
    resource: tuple[tuple[str, str], ...] = ()
    schedule_delay_ms: float = DEFAULT_SCHEDULE_DELAY_MS
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    max_export_batch_size: int = DEFAULT_MAX_EXPORT_BATCH_SIZE


def _get(env: Mapping[str, str], *names: str) -> str | None:
    """The first of names set to something; the specification reads an empty value as unset."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def chosen_env(project_env: Mapping[str, str], daemon_env: Mapping[str, str]) -> Mapping[str, str]:
    """The environment a project's tracing is configured by: its own (`rbd start`'s) when
    that decides anything about tracing, else the daemon's."""
    return project_env if _get(project_env, *DECIDING) is not None else daemon_env


def _pairs(text: str, name: str, notes: list[str]) -> list[tuple[str, str]]:
    """`key=value,key=value` with percent-encoded values (the format of OTEL_*_HEADERS
    and OTEL_RESOURCE_ATTRIBUTES); a malformed member is skipped with a note."""
    pairs = []
    for member in text.split(","):
        if not member.strip():
            continue
        key, sep, value = member.partition("=")
        if not sep or not key.strip():
            notes.append(f"{name}: ignored {member.strip()!r} (not key=value)")
            continue
        pairs.append((key.strip(), unquote(value.strip())))
    return pairs


def _number(
    env: Mapping[str, str], names: tuple[str, ...], default: float, notes: list[str]
) -> float:
    raw = _get(env, *names)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        notes.append(f"{names[0]}={raw!r} is not a number of milliseconds; using {default:g}")
        return default
    return value


def config_from(env: Mapping[str, str]) -> tuple[Config | None, list[str]]:
    """The Config env asks for, None when it asks for no traces (no endpoint, or tracing
    turned off), and the notes to log once about what it asks for that rbd does not do."""
    notes: list[str] = []
    if (_get(env, "OTEL_SDK_DISABLED") or "").lower() == "true":
        return None, notes
    exporter = (_get(env, "OTEL_TRACES_EXPORTER") or "otlp").lower()
    if exporter == "none":
        return None, notes
    if exporter != "otlp":
        notes.append(f"OTEL_TRACES_EXPORTER={exporter}: rbd exports traces over OTLP only")
    traces_endpoint = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    base = _get(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if traces_endpoint is not None:
        endpoint = traces_endpoint  # used as it is, by the specification
    elif base is not None:
        endpoint = base.removesuffix("/") + "/v1/traces"
    else:
        return None, notes
    if not endpoint.startswith(("http://", "https://")):
        notes.append(f"OTLP endpoint {endpoint!r} is not an http:// or https:// URL: no traces")
        return None, notes
    protocol_ = _get(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol_ is not None and protocol_ != "http/protobuf":
        notes.append(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol_}: rbd exports OTLP/HTTP (http/protobuf)"
            f" to {endpoint}"
        )
    headers = _pairs(
        _get(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") or "",
        "OTEL_EXPORTER_OTLP_HEADERS",
        notes,
    )
    compression = (
        _get(env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")
        or "none"
    ).lower()
    if compression not in ("none", "gzip", "deflate"):
        notes.append(f"OTEL_EXPORTER_OTLP_COMPRESSION={compression}: not supported, sent as none")
        compression = "none"
    resource = _pairs(
        _get(env, "OTEL_RESOURCE_ATTRIBUTES") or "", "OTEL_RESOURCE_ATTRIBUTES", notes
    )
    service = _get(env, "OTEL_SERVICE_NAME")
    if service is not None:
        resource.append(("service.name", service))
    queue = int(_number(env, ("OTEL_BSP_MAX_QUEUE_SIZE",), DEFAULT_MAX_QUEUE_SIZE, notes)) or 1
    batch = int(
        _number(env, ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",), DEFAULT_MAX_EXPORT_BATCH_SIZE, notes)
    )
    config = Config(
        endpoint=endpoint,
        headers=tuple(headers),
        # Milliseconds, as the specification has it (the Python SDK's own reading takes
        # seconds; rbd follows the specification every other service's SDK follows).
        timeout_s=_number(
            env,
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
            DEFAULT_TIMEOUT_MS,
            notes,
        )
        / 1000,
        compression=compression,
        certificate=_get(
            env, "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"
        ),
        client_key=_get(
            env, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"
        ),
        client_certificate=_get(
            env,
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ),
        resource=tuple(resource),
        schedule_delay_ms=_number(
            env, ("OTEL_BSP_SCHEDULE_DELAY",), DEFAULT_SCHEDULE_DELAY_MS, notes
        ),
        max_queue_size=queue,
        max_export_batch_size=max(1, min(batch, queue)),
    )
    return config, notes


def resource_attributes(config: Config, pid: int, host: str) -> dict[str, str | int]:
    """The resource every span of config's exporter carries: rbd's defaults (semantic
    conventions' service, host and process attributes), then what the environment sets."""
    attributes: dict[str, str | int] = {
        "service.name": "rbd",
        "service.version": __version__,
        "host.name": host,
        "process.pid": pid,
    }
    attributes.update(config.resource)
    return attributes


# --- spans as plain records (no OpenTelemetry needed) ------------------------------------


@dataclass
class Span:
    """A span to be made: times in nanoseconds since the epoch; error: its status is ERROR
    with this description. Children are made with it as their parent."""

    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Attribute]
    error: str | None = None
    error_type: str | None = None
    children: list[Span] = field(default_factory=list)


def _put(attributes: dict[str, Attribute], key: str, value: Any) -> None:
    # OpenTelemetry attributes have no null: an unknown value is left out.
    if value is not None:
        attributes[key] = value


def _iso_ns(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1e9)


def build_span(event: BuildFinished, spawned_ns: int | None) -> Span:
    """A finished build and its units as spans. The build's span runs from cargo's spawn
    (spawned_ns, the build_started event's wall clock; the recorded start when cargo never
    ran) for wall_s; each unit that ran is a child from its start on the build's timeline
    (start_s, from cargo's spawn) for its total_s.

    The units' times are cargo's (its --timings report), placed on rbd's clock by an
    estimated offset (daemon.build.timings.offset_s) that can be tens of ms late: the last
    unit then ends after cargo exited (41 ms in a two-crate workspace). A child must lie
    within its parent, so the units are moved earlier together by that overshoot (never
    before the build's start), keeping their durations and their order; a unit still
    longer than what is left is cut at the build's end."""
    summary = event["build"]
    start = spawned_ns if spawned_ns is not None else _iso_ns(summary["started_at"])
    wall_s = summary["wall_s"] or 0.0
    attributes: dict[str, Attribute] = {"rbd.project": summary["project"]}
    _put(attributes, "rbd.build.id", summary["id"])
    _put(attributes, "rbd.build.kind", summary["kind"])
    _put(attributes, "rbd.build.outcome", summary["outcome"])
    attributes["rbd.build.trigger"] = list(summary["trigger"][:TRIGGER_PATHS])
    attributes["rbd.build.command"] = list(summary["command"])
    attributes["rbd.build.config"] = summary["config"]
    for key in ("linker", "rustc_wrapper", "units_rebuilt", "units_fresh", "errors", "warnings"):
        _put(attributes, f"rbd.build.{key}", summary.get(key))
    _put(attributes, "rbd.build.wall_s", summary["wall_s"])
    _put(attributes, "rbd.build.settle_s", summary["settle_s"])
    phases: Mapping[str, object] = summary["phases"]
    for key in protocol.PHASE_KEYS:
        _put(attributes, f"rbd.phase.{key}", phases.get(key))
    span = Span(SPAN_BUILD, start, start + round(wall_s * 1e9), attributes)
    outcome = summary["outcome"]
    if outcome in ("failure", "timeout", "interrupted"):
        # A cancelled build is not an error: a newer save replaced it.
        span.error_type = outcome
        span.error = (event["first_error"] or f"build {outcome}")[:ERROR_CHARS]
    end = span.end_ns
    # Fresh units (cargo did not run them) have no times.
    ran = [
        (unit, unit["start_s"], unit["total_s"])
        for unit in event["units"]
        if unit["start_s"] is not None and unit["total_s"] is not None
    ]
    overshoot = max((begun + took for _, begun, took in ran), default=0.0) - wall_s
    shift = max(0.0, min([overshoot, *(begun for _, begun, _ in ran)]))
    for unit, begun, took in ran:
        unit_start = start + round((begun - shift) * 1e9)
        unit_attributes: dict[str, Attribute] = {
            "rbd.project": summary["project"],
            "rbd.unit.name": unit["name"],
            "rbd.unit.target": unit["target"],
            "rbd.unit.kind": unit["kind"],
            "rbd.unit.critical_path": unit["critical_path"],
            "rbd.unit.failed": unit["failed"],
        }
        _put(unit_attributes, "rbd.unit.dirty_reason", unit["dirty_reason"])
        for key in (
            "start_s",
            "ready_s",
            "queue_s",
            "path_s",
            "compile_s",
            "frontend_s",
            "codegen_s",
            "link_s",
            "build_script_s",
            "total_s",
        ):
            _put(unit_attributes, f"rbd.unit.{key}", unit.get(key))
        child = Span(
            SPAN_UNIT,
            min(unit_start, end),
            min(unit_start + round(took * 1e9), end),
            unit_attributes,
        )
        if unit["failed"]:
            child.error_type = "failure"
            child.error = f"{unit['name']} ({unit['target']}) failed"
        span.children.append(child)
    return span


def restart_span(event: AppReady | AppFailed, started_ns: int | None, now_ns: int) -> Span:
    """Run mode's restart after a build: from stopping the app it replaced (stop_s before
    the new one started, started_ns: when its app_started event came) to ready, or to the
    failure (now_ns, when the event came)."""
    app = event["app"]
    begun = started_ns if started_ns is not None else now_ns
    start = begun - round((app["stop_s"] or 0.0) * 1e9)
    ready_s = app["ready_s"]
    end = begun + round(ready_s * 1e9) if ready_s is not None and started_ns else now_ns
    attributes: dict[str, Attribute] = {"rbd.project": event["project"]}
    _put(attributes, "rbd.build.id", event["build_id"])
    for key in ("bin", "pid", "stop_s", "ready_s", "serving_s", "ready_by", "replaced_exit"):
        _put(attributes, f"rbd.app.{key}", app.get(key))
    attributes["rbd.app.handover"] = app["handover"]
    span = Span(SPAN_RESTART, min(start, end), end, attributes)
    if event["event"] == protocol.APP_FAILED:
        span.error_type = "app_failed"
        span.error = (app["error"] or "the app did not start serving")[:ERROR_CHARS]
    return span


# --- the SDK's side (imported when a project asks for traces) -----------------------------


class _SdkMessages(logging.Handler):
    """The SDK's own warnings, kept (the first per thread) for the export or the span that
    caused them, and never printed: the daemon's log gets rbd's one line instead."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._first: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        self._first.setdefault(record.thread or 0, message[:ERROR_CHARS])

    def take(self) -> str | None:
        """The first message the calling thread caused since it last took one."""
        return self._first.pop(threading.get_ident(), None)


_messages = _SdkMessages()


def _quiet_sdk() -> None:
    sdk = logging.getLogger("opentelemetry")
    if _messages not in sdk.handlers:
        sdk.addHandler(_messages)
        sdk.setLevel(logging.WARNING)
        sdk.propagate = False


class _Health:
    """Whether config's collector takes the spans: a change is logged, a repeat is not
    (an outage is one line, its end another; spans dropped, one line until a batch is
    sent again)."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.failing = False
        self.dropping = False

    def exported(self, ok: bool, why: str | None, spans: int) -> None:
        if ok:
            self.dropping = False
        if ok and self.failing:
            self.failing = False
            log.info("traces_export_recovered", endpoint=self.endpoint)
        elif not ok and not self.failing:
            self.failing = True
            log.warning(
                "traces_export_failed",
                endpoint=self.endpoint,
                spans=spans,
                error=why or "the exporter gave no reason",
                note="builds and their records are unaffected; said again once it works",
            )

    def dropped(self, why: str) -> None:
        if not self.dropping:
            self.dropping = True
            log.warning(
                "traces_dropped",
                endpoint=self.endpoint,
                error=why,
                hint="more spans waited than OTEL_BSP_MAX_QUEUE_SIZE allows (default 2048)",
            )


class _Pipeline:
    """One collector's exporter: a TracerProvider of its own (never the global one), its
    BatchSpanProcessor, and the OTLP/HTTP exporter. Made and used in worker threads.
    Raises ImportError when the SDK is not installed."""

    def __init__(self, config: Config, health: _Health) -> None:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace import TracerProvider as Provider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from opentelemetry.sdk.version import __version__ as sdk_version

        _quiet_sdk()

        class Watched(SpanExporter):
            """The OTLP exporter, its results told to health."""

            def __init__(self, inner: SpanExporter) -> None:
                self.inner = inner

            def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
                why = None
                try:
                    result = self.inner.export(spans)
                except Exception as exc:  # the SDK's bug must not end its thread
                    result, why = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
                why = _messages.take() or why
                health.exported(result is SpanExportResult.SUCCESS, why, len(spans))
                return result

            def shutdown(self) -> None:
                self.inner.shutdown()

            def force_flush(self, timeout_millis: int = 30000) -> bool:
                return self.inner.force_flush(timeout_millis)

        compression = {
            "gzip": Compression.Gzip,
            "deflate": Compression.Deflate,
        }.get(config.compression, Compression.NoCompression)
        exporter = OTLPSpanExporter(
            endpoint=config.endpoint,
            certificate_file=config.certificate,
            client_key_file=config.client_key,
            client_certificate_file=config.client_certificate,
            headers=dict(config.headers),
            timeout=config.timeout_s,
            compression=compression,
        )
        # Not shutdown_on_exit: its atexit hook would wait up to 30 s for a collector
        # that is down; Traces.close bounds that. Every build is sampled: a few traces a
        # minute need no sampling in the SDK (a collector can still sample).
        self.provider: TracerProvider = Provider(
            # Resource(), not Resource.create(): that reads the daemon's own OTEL_*
            # variables, which are not config's when the project's environment decides.
            resource=Resource(
                {
                    "telemetry.sdk.language": "python",
                    "telemetry.sdk.name": "opentelemetry",
                    "telemetry.sdk.version": sdk_version,
                    **resource_attributes(config, os.getpid(), socket.gethostname()),
                }
            ),
            sampler=ALWAYS_ON,
            shutdown_on_exit=False,
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(
                Watched(exporter),
                max_queue_size=config.max_queue_size,
                schedule_delay_millis=config.schedule_delay_ms,
                max_export_batch_size=config.max_export_batch_size,
            )
        )
        self.tracer: Tracer = self.provider.get_tracer("rbd", __version__)
        self.health = health

    def emit(self, span: Span, parent: SpanContext | None) -> SpanContext:
        """Make span and its children (ended, so handed to the batch processor); returns
        its context, for spans that come later as its children."""
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace import Status, StatusCode

        context = (
            Context()
            if parent is None
            else trace.set_span_in_context(trace.NonRecordingSpan(parent))
        )
        made = self.tracer.start_span(
            span.name,
            context=context,
            kind=trace.SpanKind.INTERNAL,
            attributes={**span.attributes, **_error_type(span)},
            start_time=span.start_ns,
        )
        if span.error is not None:
            made.set_status(Status(StatusCode.ERROR, span.error))
        made_context = made.get_span_context()
        for child in span.children:
            self.emit(child, made_context)
        made.end(end_time=span.end_ns)
        return made_context


def _error_type(span: Span) -> dict[str, Attribute]:
    # error.type: the semantic conventions' class of error; absent on success.
    return {} if span.error_type is None else {"error.type": span.error_type}


# --- the daemon's side -------------------------------------------------------------------


@dataclass
class _Job:
    config: Config
    # Made in the worker thread: a build of 300 units takes about 2.6 ms to turn into
    # records, which the event loop need not spend (the event is not changed once
    # published).
    span: Callable[[], Span]
    # The build this span belongs to: a build's span is remembered under it, a restart's
    # span is made its child.
    build: tuple[str, int | None]
    restart: bool = False


def _remember(table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > REMEMBERED:
        table.popitem(last=False)


class Traces:
    """The exporter as the daemon runs it: told the watched projects' environments
    (`follow`, whenever the registry's projects change), it subscribes to the hub once one
    asks for traces, and exports those projects' builds; `close` at shutdown, bounded."""

    def __init__(
        self, hub: EventHub, tg: anyio.abc.TaskGroup, daemon_env: Mapping[str, str]
    ) -> None:
        self.hub = hub
        self._tg = tg
        self._daemon_env = dict(daemon_env)
        self._configs: dict[str, Config] = {}
        self._noted: set[str] = set()
        self._running = False
        self._send, self._receive = anyio.create_memory_object_stream[_Job](QUEUE_BUILDS)
        self._idle = anyio.Event()
        self._stopped = anyio.Event()
        self._full = False
        self._subscription: Subscription
        # Event-loop side: when each build's cargo spawned, each app started.
        self._spawned: OrderedDict[tuple[str, int | None], int] = OrderedDict()
        self._app_started: OrderedDict[tuple[str, int | None], int] = OrderedDict()
        self._restarts: OrderedDict[tuple[str, int | None], _Job] = OrderedDict()
        # Worker side (one worker call at a time): the exporters, the builds' spans.
        self._pipelines: dict[Config, _Pipeline | None] = {}
        self._build_spans: OrderedDict[tuple[str, int | None], SpanContext] = OrderedDict()

    def follow(self, envs: Mapping[str, Mapping[str, str]]) -> None:
        """The watched projects' environments, by root, after one was started or updated:
        each project's builds are exported as its environment, or the daemon's, says
        (chosen_env). A project no longer listed keeps what it had (its last build, which
        its stop cancels, is still traced). Never raises; never waits."""
        for root, env in envs.items():
            config, notes = config_from(chosen_env(env, self._daemon_env))
            for note in notes:
                if note not in self._noted:
                    self._noted.add(note)
                    log.warning("traces_config", root=root, note=note)
            if config is None:
                self._configs.pop(root, None)
                continue
            self._configs[root] = config
            if not self._running:
                self._running = True
                log.info("traces_enabled", root=root, endpoint=config.endpoint)
                self._subscription = self.hub.subscribe(None)
                self._tg.start_soon(self._listen)
                self._tg.start_soon(self._export)

    async def close(self) -> None:
        """Stop listening, make the spans of what was queued, and give the batch processors
        CLOSE_S in all to send them. Never raises."""
        if not self._running:
            return
        self._stopped.set()
        # Ends the listener once it has read what was published before (the builds the
        # shutdown cancelled among them).
        self.hub.unsubscribe(self._subscription)
        deadline = anyio.current_time() + CLOSE_S
        with anyio.move_on_after(CLOSE_S):
            await self._idle.wait()
        pipelines = [p for p in self._pipelines.values() if p is not None]
        if not pipelines:
            return

        # A thread of its own (a daemon thread): a collector that does not answer holds
        # it, not the daemon's exit.
        def shutdown() -> None:
            for pipeline in pipelines:
                pipeline.provider.shutdown()

        flushing = threading.Thread(
            target=shutdown,
            name="rbd-traces-shutdown",
            daemon=True,
        )
        flushing.start()
        remaining = max(0.0, deadline - anyio.current_time())
        await anyio.to_thread.run_sync(flushing.join, remaining)
        if flushing.is_alive():
            log.warning("traces_not_flushed", waited_s=CLOSE_S, endpoints=len(pipelines))

    async def _listen(self) -> None:
        """Read every hub event until close; a subscription the hub dropped (this fell
        behind by a whole buffer) is replaced, the builds it missed untraced."""
        try:
            while not self._stopped.is_set():
                subscription = self._subscription
                async for event in subscription.receive:
                    try:
                        self._take(event)
                    except Exception:
                        # A malformed event must not end the daemon's task group.
                        log.exception("traces_event_failed", event=event.get("event"))
                if subscription.dropped.is_set() and not self._stopped.is_set():
                    log.warning("traces_missed_events", buffer=self.hub.buffer)
                    self._subscription = self.hub.subscribe(None)
        finally:
            self.hub.unsubscribe(self._subscription)
            self._send.close()

    def _take(self, event: Mapping[str, Any]) -> None:
        """One hub event, on the event loop: only dict work, then a queued job."""
        kind = event.get("event")
        project = event.get("project")
        if not isinstance(project, str):
            return
        key = (project, event.get("build_id"))
        if kind == protocol.BUILD_STARTED:
            _remember(self._spawned, key, round(event["spawned_at"] * 1e9))
        elif kind == protocol.BUILD_FINISHED:
            spawned = self._spawned.pop(key, None)
            config = self._configs.get(project)
            if config is not None:
                finished: BuildFinished = event  # type: ignore[assignment]
                self._queue(_Job(config, partial(build_span, finished, spawned), key))
            waiting = self._restarts.pop(key, None)
            if waiting is not None:
                self._queue(waiting)
        elif kind == protocol.APP_STARTED:
            _remember(self._app_started, key, time.time_ns())
        elif kind in (protocol.APP_READY, protocol.APP_FAILED):
            started = self._app_started.pop(key, None)
            config = self._configs.get(project)
            if config is not None:
                app: AppReady | AppFailed = event  # type: ignore[assignment]
                span = restart_span(app, started, time.time_ns())
                job = _Job(config, lambda: span, key, True)
                if key in self._spawned:
                    # Run mode restarts the app as soon as cargo is done, and may be ready
                    # before the build's record is written and announced: the restart's
                    # span waits for its parent's.
                    _remember(self._restarts, key, job)
                else:
                    self._queue(job)

    def _queue(self, job: _Job) -> None:
        try:
            self._send.send_nowait(job)
            self._full = False
        except anyio.WouldBlock:
            if not self._full:
                self._full = True
                log.warning("traces_dropped", reason=f"{QUEUE_BUILDS} builds wait to be traced")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # shutting down

    async def _export(self) -> None:
        try:
            async for job in self._receive:
                await anyio.to_thread.run_sync(self._make, job)
        finally:
            self._idle.set()

    def _make(self, job: _Job) -> None:
        """In a worker thread: the job's spans, handed to its collector's batch processor."""
        if job.config not in self._pipelines:
            health = _Health(job.config.endpoint)
            try:
                self._pipelines[job.config] = _Pipeline(job.config, health)
            except ImportError as exc:
                self._pipelines[job.config] = None
                log.error("traces_unavailable", error=str(exc), hint=HINT_INSTALL)
            except Exception as exc:
                self._pipelines[job.config] = None
                log.error("traces_unavailable", endpoint=job.config.endpoint, error=str(exc))
        pipeline = self._pipelines[job.config]
        if pipeline is None:
            return
        try:
            parent = self._build_spans.get(job.build) if job.restart else None
            made = pipeline.emit(job.span(), parent)
            if not job.restart:
                _remember(self._build_spans, job.build, made)
        except Exception as exc:
            log.error("traces_span_failed", endpoint=job.config.endpoint, error=str(exc))
        dropped = _messages.take()
        if dropped is not None:
            pipeline.health.dropped(dropped)
