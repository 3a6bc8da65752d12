"""OpenTelemetry traces (daemon.export.traces): the real daemon exports its builds over
OTLP/HTTP to a receiver in the test, which decodes each request with OpenTelemetry's own
protobuf definitions (opentelemetry-proto), as a collector would.

The span names and attribute keys pinned here are rbd's interface to a team's tracing
(dashboards and queries name them): renaming one is a breaking change, and the README's
table lists the same names (checked below).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

from rbd.contract import __version__, protocol
from rbd.daemon.export import traces
from tests.conftest import WAIT_S, Events, Rbd, make_crate, wait_gone

README = Path(__file__).resolve().parent.parent / "README.md"

BUILD_KEYS = {
    "rbd.project",
    "rbd.build.id",
    "rbd.build.kind",
    "rbd.build.outcome",
    "rbd.build.trigger",
    "rbd.build.command",
    "rbd.build.config",
    "rbd.build.linker",
    "rbd.build.rustc_wrapper",
    "rbd.build.units_rebuilt",
    "rbd.build.units_fresh",
    "rbd.build.errors",
    "rbd.build.warnings",
    "rbd.build.wall_s",
    "rbd.build.settle_s",
    *(f"rbd.phase.{key}" for key in protocol.PHASE_KEYS),
    "error.type",
}
UNIT_KEYS = {
    "rbd.project",
    "rbd.unit.name",
    "rbd.unit.target",
    "rbd.unit.kind",
    "rbd.unit.critical_path",
    "rbd.unit.failed",
    "rbd.unit.dirty_reason",
    "rbd.unit.start_s",
    "rbd.unit.ready_s",
    "rbd.unit.queue_s",
    "rbd.unit.path_s",
    "rbd.unit.compile_s",
    "rbd.unit.frontend_s",
    "rbd.unit.codegen_s",
    "rbd.unit.link_s",
    "rbd.unit.build_script_s",
    "rbd.unit.total_s",
    "error.type",
}
RESTART_KEYS = {
    "rbd.project",
    "rbd.build.id",
    "rbd.app.bin",
    "rbd.app.pid",
    "rbd.app.stop_s",
    "rbd.app.ready_s",
    "rbd.app.serving_s",
    "rbd.app.ready_by",
    "rbd.app.replaced_exit",
    "rbd.app.handover",
    "error.type",
}
# What every span of a kind carries whatever the build.
BUILD_ALWAYS = {
    "rbd.project",
    "rbd.build.id",
    "rbd.build.kind",
    "rbd.build.outcome",
    "rbd.build.trigger",
    "rbd.build.command",
    "rbd.build.config",
    "rbd.build.units_rebuilt",
    "rbd.build.units_fresh",
    "rbd.build.wall_s",
    "rbd.phase.compile_s",
}
UNIT_ALWAYS = {
    "rbd.project",
    "rbd.unit.name",
    "rbd.unit.target",
    "rbd.unit.kind",
    "rbd.unit.critical_path",
    "rbd.unit.failed",
    "rbd.unit.start_s",
    "rbd.unit.total_s",
}
# Nanoseconds: the build's numbers are rounded to 0.1 ms, a float of epoch seconds
# holds about 0.25 µs.
NS_SLACK = 2_000
# Between spans of a build and of its restart: the app's numbers are rounded to 0.1 ms.
RESTART_SLACK = 1_000_000

# --- a receiver -------------------------------------------------------------------------


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


@dataclass
class Received:
    """One span as a collector received it."""

    resource: dict[str, Any]
    scope: str
    span: trace_pb2.Span
    attributes: dict[str, Any]

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def start(self) -> int:
        return self.span.start_time_unix_nano

    @property
    def end(self) -> int:
        return self.span.end_time_unix_nano


class Receiver:
    """An OTLP/HTTP receiver on loopback: POST /v1/traces, decoded with opentelemetry-proto.
    `status` is what it answers; with `hold` unset, each request waits for it first."""

    def __init__(self, status: int = 200, hold: threading.Event | None = None) -> None:
        self.status = status
        self.hold = hold
        self.posts = 0
        self.spans: list[Received] = []
        self.headers: list[dict[str, str]] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.changed:
                    receiver.posts += 1
                    receiver.headers.append(dict(self.headers.items()))
                    if self.path == "/v1/traces":
                        receiver._add(request)
                    receiver.changed.notify_all()
                if receiver.hold is not None:
                    receiver.hold.wait(WAIT_S * 2)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(receiver.status if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Received(
                            resource, scope_spans.scope.name, span, _attributes(span.attributes)
                        )
                    )

    def wait_for(self, predicate: Callable[[Receiver], bool], timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"not received within {timeout} s: {len(self.spans)} spans"
                self.changed.wait(remaining)

    def build(self, build_id: int) -> Received:
        """The build's span, once received."""
        self.wait_for(lambda r: r._build(build_id) is not None)
        found = self._build(build_id)
        assert found is not None
        return found

    def _build(self, build_id: int) -> Received | None:
        for span in self.spans:
            if span.name == "rbd.build" and span.attributes.get("rbd.build.id") == build_id:
                return span
        return None

    def children(self, parent: Received) -> list[Received]:
        return [s for s in self.spans if s.span.parent_span_id == parent.span.span_id]

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()


def otel_env(rbd: Rbd, endpoint: str, **more: str) -> dict[str, str]:
    """The test's environment without any OTEL_ variable of the machine's, plus these."""
    env = {k: v for k, v in rbd.env.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    # Batches leave 50 ms after a span ends, not the specification's 5 s.
    env["OTEL_BSP_SCHEDULE_DELAY"] = "50"
    env.update(more)
    return env


def workspace(root: Path) -> Path:
    """Two crates: a bin `app` using the lib `util`."""
    make_crate(
        root,
        "app",
        {
            "Cargo.toml": '[workspace]\nmembers = ["app", "util"]\nresolver = "2"\n',
            "app/Cargo.toml": '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n'
            '\n[dependencies]\nutil = { path = "../util" }\n',
            "app/src/main.rs": 'fn main() {\n    println!("{}", util::greet());\n}\n',
            "util/Cargo.toml": '[package]\nname = "util"\nversion = "0.1.0"\nedition = "2021"\n',
            "util/src/lib.rs": 'pub fn greet() -> &\'static str {\n    "hi"\n}\n',
        },
    )
    (root / "src" / "main.rs").unlink()
    (root / "src").rmdir()
    return root


def log_lines(rbd: Rbd, event: str) -> list[dict[str, Any]]:
    path = rbd.base / "state" / "rbd" / "rbd.log"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def wait_logged(rbd: Rbd, event: str, timeout: float = WAIT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not (found := log_lines(rbd, event)):
        assert time.monotonic() < deadline, f"no {event} in the daemon's log within {timeout} s"
        time.sleep(0.05)
    return found[0]


def seen_or_next(events: Events, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    for event in events.seen:
        if predicate(event):
            return event
    return events.wait_for(predicate)


def finished_event(events: Events) -> dict[str, Any]:
    return events.wait_for(lambda e: e.get("event") == protocol.BUILD_FINISHED)


# --- the traces -------------------------------------------------------------------------


def check_build_trace(
    receiver: Receiver, event: dict[str, Any], spawned_at: float | None
) -> tuple[Received, list[Received]]:
    """The build's span and its units' spans, checked against its build_finished event."""
    summary = event["build"]
    build = receiver.build(summary["id"])
    ran = [u for u in event["units"] if u["start_s"] is not None and u["total_s"] is not None]
    receiver.wait_for(lambda r: len(r.children(build)) >= len(ran))
    units = receiver.children(build)
    assert build.name == "rbd.build" and build.scope == "rbd"
    assert build.span.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
    assert build.span.parent_span_id == b""
    # From cargo's spawn, for wall_s.
    if spawned_at is not None:
        assert abs(build.start - spawned_at * 1e9) < NS_SLACK
    assert abs((build.end - build.start) - summary["wall_s"] * 1e9) < NS_SLACK
    attributes = build.attributes
    assert BUILD_ALWAYS <= set(attributes) <= BUILD_KEYS
    assert attributes["rbd.project"] == summary["project"]
    assert attributes["rbd.build.kind"] == summary["kind"]
    assert attributes["rbd.build.outcome"] == summary["outcome"]
    assert attributes["rbd.build.trigger"] == summary["trigger"]
    assert attributes["rbd.build.units_rebuilt"] == summary["units_rebuilt"]
    assert attributes["rbd.build.units_fresh"] == summary["units_fresh"]
    for key, seconds in summary["phases"].items():
        assert attributes.get(f"rbd.phase.{key}") == seconds
    # Every unit cargo ran, a child on the build's timeline, in the same trace.
    earliest = min(units, key=lambda u: u.start)
    first_s = min(u["start_s"] for u in ran)
    assert sorted(u.attributes["rbd.unit.name"] for u in units) == sorted(u["name"] for u in ran)
    for unit in units:
        assert unit.name == "rbd.unit" and unit.span.trace_id == build.span.trace_id
        assert unit.span.kind == trace_pb2.Span.SPAN_KIND_INTERNAL
        assert UNIT_ALWAYS <= set(unit.attributes) <= UNIT_KEYS
        assert build.start <= unit.start <= unit.end <= build.end + NS_SLACK
        measured = next(
            u
            for u in ran
            if u["name"] == unit.attributes["rbd.unit.name"]
            and u["kind"] == unit.attributes["rbd.unit.kind"]
        )
        # Where cargo's clock put it against the others (the units move together, if at
        # all, to lie within the build: daemon.export.traces.build_span), for as long.
        assert abs((unit.start - earliest.start) - (measured["start_s"] - first_s) * 1e9) < NS_SLACK
        assert abs(unit.end - unit.start - measured["total_s"] * 1e9) < NS_SLACK
        assert unit.attributes["rbd.unit.critical_path"] == measured["critical_path"]
        assert unit.attributes.get("rbd.unit.dirty_reason") == measured["dirty_reason"]
        assert unit.attributes.get("rbd.unit.queue_s") == measured["queue_s"]
        assert unit.attributes.get("rbd.unit.compile_s") == measured["compile_s"]
        assert unit.resource == build.resource
    return build, units


def test_each_build_is_a_trace_of_its_units(rbd: Rbd, receiver: Receiver, tmp_path: Path) -> None:
    ws = workspace(tmp_path / "ws")
    # A daemon that was started without tracing (as by systemd): `rbd start`'s own
    # environment asks for it.
    rbd.env = {k: v for k, v in rbd.env.items() if not k.startswith("OTEL_")}
    rbd.start_daemon()
    events = rbd.events()
    env = otel_env(
        rbd,
        receiver.endpoint,
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=ci,team=rust%20tools",
        OTEL_EXPORTER_OTLP_HEADERS="x-team-key=s3cret",
    )
    started = rbd.run("start", cwd=ws, env=env)
    assert started.returncode == 0, started.stderr

    first_started = events.started()
    first = finished_event(events)
    assert first["build"]["outcome"] == "success"
    build, units = check_build_trace(receiver, first, first_started["spawned_at"])
    assert {u.attributes["rbd.unit.name"] for u in units} == {"app", "util"}
    assert build.resource["service.name"] == "rbd"
    assert build.resource["service.version"] == __version__
    assert build.resource["process.pid"] == rbd.daemon_pid()
    assert build.resource["host.name"] == socket.gethostname()
    assert build.resource["deployment.environment.name"] == "ci"
    assert build.resource["team"] == "rust tools"
    assert build.resource["telemetry.sdk.name"] == "opentelemetry"
    assert receiver.headers[0]["x-team-key"] == "s3cret"
    assert "error.type" not in build.attributes
    assert build.span.status.code != trace_pb2.Status.STATUS_CODE_ERROR

    # An edit of the lib: both crates again, a trace of its own.
    (ws / "util" / "src" / "lib.rs").write_text('pub fn greet() -> &\'static str {\n    "ho"\n}\n')
    second_started = events.started()
    second = finished_event(events)
    assert second["build"]["kind"] == "edit"
    edit, edit_units = check_build_trace(receiver, second, second_started["spawned_at"])
    assert edit.span.trace_id != build.span.trace_id
    assert edit.attributes["rbd.build.trigger"] == ["util/src/lib.rs"]
    assert "rbd.build.settle_s" in edit.attributes
    assert any(u.attributes.get("rbd.unit.dirty_reason") for u in edit_units)

    # A failed build: its span and its failed unit's are errors, the first error said.
    (ws / "util" / "src" / "lib.rs").write_text("pub fn greet() -> &'static str { 1 }\n")
    third_started = events.started()
    third = finished_event(events)
    assert third["build"]["outcome"] == "failure"
    failed, failed_units = check_build_trace(receiver, third, third_started["spawned_at"])
    assert failed.span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert "mismatched types" in failed.span.status.message
    assert failed.attributes["error.type"] == "failure"
    broken = [u for u in failed_units if u.attributes["rbd.unit.failed"]]
    assert [u.attributes["rbd.unit.name"] for u in broken] == ["util"]
    assert broken[0].span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert broken[0].attributes["error.type"] == "failure"
    assert {s.name for s in receiver.spans} == {"rbd.build", "rbd.unit"}


READY_MAIN = """\
fn main() {
    println!("listening @V@");
    std::thread::sleep(std::time::Duration::from_secs(600));
}
"""


def test_run_mode_restart_is_a_span_of_its_build(
    rbd: Rbd, receiver: Receiver, tmp_path: Path
) -> None:
    crate = make_crate(tmp_path / "srv", "srv", {"src/main.rs": READY_MAIN.replace("@V@", "v1")})
    rbd.env = otel_env(rbd, receiver.endpoint, RBD_READY_PATTERN="^listening")
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", "--run", cwd=crate)
    first = finished_event(events)["build"]
    seen_or_next(events, lambda e: e.get("event") == "app_ready" and e["build_id"] == first["id"])
    (crate / "src" / "main.rs").write_text(READY_MAIN.replace("@V@", "v2"))
    second = finished_event(events)["build"]
    # The app may be ready before its build is announced (and is then traced after it).
    ready = seen_or_next(
        events, lambda e: e.get("event") == "app_ready" and e["build_id"] == second["id"]
    )

    build = receiver.build(second["id"])
    receiver.wait_for(lambda r: any(s.name == "rbd.app.restart" for s in r.children(build)))
    (restart,) = [s for s in receiver.children(build) if s.name == "rbd.app.restart"]
    assert restart.span.trace_id == build.span.trace_id
    assert RESTART_KEYS >= set(restart.attributes) >= {"rbd.project", "rbd.build.id"}
    app = ready["app"]
    assert restart.attributes["rbd.app.pid"] == app["pid"] == ready["pid"]
    assert restart.attributes["rbd.app.bin"] == "srv"
    assert restart.attributes["rbd.app.ready_by"] == "pattern"
    assert restart.attributes["rbd.app.stop_s"] == app["stop_s"] is not None
    assert restart.attributes["rbd.app.ready_s"] == app["ready_s"]
    assert restart.attributes["rbd.app.handover"] is False
    # After the build (it stops the app the build replaces), for stop_s + ready_s.
    assert restart.start >= build.end - RESTART_SLACK
    assert abs(restart.end - restart.start - (app["stop_s"] + app["ready_s"]) * 1e9) < NS_SLACK
    assert restart.span.status.code != trace_pb2.Status.STATUS_CODE_ERROR


# --- a collector that is not there, refuses, or hangs -----------------------------------


def test_a_collector_that_is_down_costs_one_log_line(rbd: Rbd, crate: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # The daemon's own environment asks (a systemd unit's), `rbd start`'s says nothing.
    plain = {k: v for k, v in rbd.env.items() if not k.startswith("OTEL_")}
    # The exporter's own timeout (10 s): it retries, and says why.
    rbd.env = otel_env(rbd, closed)
    rbd.start_daemon()
    events = rbd.events()
    assert rbd.run("start", cwd=crate, env=plain).returncode == 0
    ids = [finished_event(events)["build"]["id"]]
    failed = wait_logged(rbd, "traces_export_failed")
    assert failed["endpoint"] == closed + "/v1/traces"
    assert "refused" in failed["error"].lower() or "connect" in failed["error"].lower()
    for n in range(2):
        (crate / "src" / "main.rs").write_text(f'fn main() {{ println!("{n}"); }}\n')
        ids.append(finished_event(events)["build"]["id"])
    # Every build recorded all the same.
    history = rbd.request(protocol.HISTORY, path=str(crate))
    assert sorted(b["id"] for b in history["builds"]) == sorted(ids)
    assert {b["outcome"] for b in history["builds"]} == {"success"}
    pid = rbd.daemon_pid()
    rbd.ok("shutdown")
    assert wait_gone(pid, WAIT_S)
    # Said once, however many batches failed (the last at shutdown); nothing of the
    # SDK's own on stderr.
    assert len(log_lines(rbd, "traces_export_failed")) == 1
    assert "Traceback" not in (rbd.base / "daemon.err").read_text()
    assert "opentelemetry" not in (rbd.base / "daemon.err").read_text()


def test_a_collector_that_refuses_is_said_once_and_its_return_too(rbd: Rbd, crate: Path) -> None:
    refusing = Receiver(status=500)
    try:
        rbd.env = otel_env(rbd, refusing.endpoint)
        rbd.start_daemon()
        events = rbd.events()
        rbd.ok("start", cwd=crate)
        first = finished_event(events)["build"]
        failed = wait_logged(rbd, "traces_export_failed")
        assert "500" in failed["error"]
        # It was sent (and refused): rbd did not keep it to send again.
        refusing.build(first["id"])
        (crate / "src" / "main.rs").write_text('fn main() { println!("again"); }\n')
        finished_event(events)
        refusing.wait_for(lambda r: r.posts >= 2)
        assert len(log_lines(rbd, "traces_export_failed")) == 1
        # The collector is back: said once, and the next build's trace arrives.
        refusing.status = 200
        (crate / "src" / "main.rs").write_text('fn main() { println!("back"); }\n')
        back = finished_event(events)["build"]
        refusing.build(back["id"])
        wait_logged(rbd, "traces_export_recovered")
        assert back["outcome"] == "success"
    finally:
        refusing.close()


def test_shutdown_waits_a_bounded_time_for_a_collector_that_hangs(rbd: Rbd, crate: Path) -> None:
    hold = threading.Event()
    hanging = Receiver(hold=hold)
    try:
        # The exporter itself would wait two minutes for an answer.
        rbd.env = otel_env(rbd, hanging.endpoint, OTEL_EXPORTER_OTLP_TIMEOUT="120000")
        rbd.start_daemon()
        events = rbd.events()
        rbd.ok("start", cwd=crate)
        first = finished_event(events)["build"]
        hanging.build(first["id"])  # received, and not answered
        (crate / "src" / "main.rs").write_text('fn main() { println!("queued"); }\n')
        finished_event(events)
        pid = rbd.daemon_pid()
        rbd.ok("shutdown")
        # Gone while the collector still holds the first request: the daemon's shutdown
        # waited for it at most traces.CLOSE_S (and the projects' STOP_GRACE_S).
        assert wait_gone(pid, WAIT_S)
        assert not hold.is_set()
        assert log_lines(rbd, "traces_not_flushed")
        assert log_lines(rbd, "daemon_stopped")
    finally:
        hanging.close()


# --- the configuration, and the README ------------------------------------------------


def test_the_environment_decides_where_and_whether() -> None:
    config, notes = traces.config_from({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert config is not None and config.endpoint == "http://c:4318/v1/traces" and not notes
    # The signal's own endpoint is used as it is, and wins.
    config, _ = traces.config_from(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t:443/custom",
        }
    )
    assert config is not None and config.endpoint == "https://t:443/custom"
    for off in (
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ""},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"},
    ):
        assert traces.config_from(off)[0] is None
    # grpc is named, and said: rbd sends OTLP/HTTP.
    config, notes = traces.config_from(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert config is not None and any("OTLP/HTTP" in note for note in notes)
    config, notes = traces.config_from(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%3Db, bad ,x=1",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            "OTEL_SERVICE_NAME": "rbd-ci",
            "OTEL_RESOURCE_ATTRIBUTES": "service.name=ignored,team=a",
        }
    )
    assert config is not None
    assert dict(config.headers) == {"api-key": "a=b", "x": "1"} and len(notes) == 1
    assert config.timeout_s == 2.5
    resource = traces.resource_attributes(config, 42, "host")
    assert resource["service.name"] == "rbd-ci" and resource["team"] == "a"
    assert resource["process.pid"] == 42 and resource["host.name"] == "host"
    # Which environment: the project's when it decides, else the daemon's, never a mix.
    daemon: Mapping[str, str] = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://d:4318"}
    assert traces.chosen_env({"OTEL_SERVICE_NAME": "x"}, daemon) is daemon
    project = {"OTEL_SDK_DISABLED": "true"}
    assert traces.chosen_env(project, daemon) is project


def test_the_readme_lists_the_span_names_and_attributes() -> None:
    text = README.read_text()
    start = text.index("### OpenTelemetry traces")
    after = re.search(r"\n##+ ", text[start + 1 :])
    section = text[start : start + 1 + after.start()] if after else text[start:]
    documented = set(re.findall(r"`((?:rbd|error)\.[a-z_.]+)`", section))
    spans = {traces.SPAN_BUILD, traces.SPAN_UNIT, traces.SPAN_RESTART}
    assert spans == {"rbd.build", "rbd.unit", "rbd.app.restart"}
    # `rbd.phase.<phase>_s` stands for every phase.
    pinned = BUILD_KEYS | UNIT_KEYS | RESTART_KEYS | spans
    pinned = {k for k in pinned if not k.startswith("rbd.phase.")}
    documented = {k for k in documented if not k.startswith("rbd.phase.")}
    assert documented == pinned
    for key in ("service.name", "service.version", "host.name", "process.pid"):
        assert f"`{key}`" in section
