"""rbd's Prometheus metrics (rbd.daemon.export.metrics): the setting, the file's text
format, names and bounds, its atomic replacement, a failing file logged once, a daemon
without the setting starting nothing, and end to end: Debian's node_exporter and
Prometheus, started by the test on loopback, count the real daemon's builds."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from rbd.contract import protocol
from rbd.daemon.errors import ConfigError
from rbd.daemon.export import metrics
from rbd.daemon.export.metrics import (
    BUCKETS_S,
    OTHER_CRATE,
    TOP_CRATES,
    CrateSeconds,
    ProjectMetrics,
    TextfileExporter,
    render,
    write_atomically,
)
from rbd.daemon.projects import settings
from rbd.daemon.rpc.events import EventHub
from tests.conftest import WAIT_S, Rbd, make_crate
from tests.test_projects import edit, main_rs

ROOT = Path(__file__).resolve().parent.parent

# The metric names, types and labels: dashboards and alerts are built on them, so a
# rename is a breaking change (README's "Prometheus" table lists the same).
PINNED = {
    "rbd_build_duration_seconds": ("histogram", ("project", "kind", "outcome")),
    "rbd_builds_total": ("counter", ("project", "kind", "outcome")),
    "rbd_build_phase_seconds_total": ("counter", ("project", "kind", "phase")),
    "rbd_build_units_rebuilt_total": ("counter", ("project", "kind")),
    "rbd_crate_compile_seconds_total": ("counter", ("project", "crate")),
    "rbd_save_to_serving_seconds": ("histogram", ("project",)),
    "rbd_last_build_timestamp_seconds": ("gauge", ("project",)),
}

NODE_EXPORTER = "prometheus-node-exporter"
PROMETHEUS = "prometheus"
MISSING = [name for name in (NODE_EXPORTER, PROMETHEUS) if shutil.which(name) is None]
needs_prometheus = pytest.mark.skipif(
    bool(MISSING), reason=f"{' and '.join(MISSING)} not installed (.ci/setup installs them)"
)

# Unescaped, these would end a label value or a line early.
AWKWARD_ROOT = '/tmp/a "quoted"\\back\nslash'

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def phases(**values: float | None) -> dict[str, float | None]:
    found: dict[str, float | None] = dict.fromkeys(protocol.PHASE_KEYS, 0.0)
    found.update({"frontend_s": None, "codegen_s": None})
    found.update(values)
    return found


def finished(
    project: str,
    wall_s: float | None = 1.0,
    kind: str | None = "edit",
    outcome: str = "success",
    units: list[tuple[str, float]] | None = None,
    **phase_values: float | None,
) -> dict[str, Any]:
    """A build_finished event as rbd.daemon.projects.recorder publishes it."""
    unit_list = [
        {"name": name, "target": name, "kind": "lib", "fresh": False, "total_s": seconds}
        for name, seconds in (units or [])
    ]
    build = {
        "id": 1,
        "project": project,
        "outcome": outcome,
        "kind": kind,
        "wall_s": wall_s,
        "units_rebuilt": len(unit_list),
        "phases": phases(**phase_values),
        "app": None,
    }
    return {
        "event": protocol.BUILD_FINISHED,
        "project": project,
        "build_id": 1,
        "build": build,
        "units": unit_list,
        "first_error": None,
    }


def parse(text: str) -> Samples:
    """Every sample of the text, by name and labels; the format as Prometheus' own
    Python parser reads it (a malformed line raises)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"sample twice: {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def projects_in(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {dict(labels)["project"] for _, labels in parse(path.read_text())}


async def until(condition: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.01)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- the setting ------------------------------------------------------------------------


def test_the_setting_comes_from_rbd_toml_or_the_environment(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "demo")
    assert settings.load(root, {}, {}).metrics_textfile is None
    (root / "rbd.toml").write_text('metrics_textfile = "/var/lib/node-exporter/./rbd.prom"\n')
    assert settings.load(root, {}, {}).metrics_textfile == "/var/lib/node-exporter/rbd.prom"
    env = {"RBD_METRICS_TEXTFILE": "/srv/metrics/rbd.prom"}
    assert settings.load(root, env, {}).metrics_textfile == "/srv/metrics/rbd.prom"
    assert settings.load(root, env, {}).to_json()["metrics_textfile"] == "/srv/metrics/rbd.prom"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("rbd.prom", "must be an absolute path"),
        (3, "must be an absolute path"),
        ("/var/lib/node-exporter/rbd.txt", "must name a .prom file"),
        ("/var/lib/node-exporter/", "must name a .prom file"),
    ],
)
def test_a_bad_setting_is_one_clear_line(tmp_path: Path, value: object, message: str) -> None:
    root = make_crate(tmp_path / "demo")
    with pytest.raises(ConfigError) as caught:
        settings.load(root, {}, {"metrics_textfile": value})
    assert message in str(caught.value)
    assert "rbd start options" in str(caught.value)
    assert "\n" not in str(caught.value)


# --- names and format -------------------------------------------------------------------


def test_the_metric_names_are_pinned() -> None:
    assert {f.name: (f.type, f.labels) for f in metrics.FAMILIES} == PINNED
    for name, (kind, _) in PINNED.items():
        # Prometheus' conventions: base units in the name, counters end in _total.
        assert name.startswith("rbd_")
        assert name.endswith("_total") == (kind == "counter")


def test_the_readme_lists_every_metric() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Prometheus", 1)[1].split("\n## ", 1)[0]
    listed = {}
    for line in section.splitlines():
        match = re.match(r"\| `(rbd_\w+)` \| (\w+) \| ([^|]*)\|", line)
        if match:
            labels = tuple(re.findall(r"`(\w+)`", match.group(3)))
            listed[match.group(1)] = (match.group(2), labels)
    assert listed == PINNED


def test_the_file_parses_and_its_labels_are_escaped() -> None:
    one, two = ProjectMetrics(), ProjectMetrics()
    one.build_finished(finished(AWKWARD_ROOT)["build"], [], at=1_700_000_000.25)
    # Bytes that are not UTF-8 in a path (os.fsdecode's surrogates).
    undecodable = os.fsdecode(b"/tmp/caf\xe9")
    two.build_finished(finished(undecodable, wall_s=0.3, kind=None)["build"], [], at=1.0)
    text = render({AWKWARD_ROOT: one, undecodable: two})
    text.encode("utf-8")  # valid UTF-8 throughout
    samples = parse(text)
    assert value(samples, "rbd_builds_total", project=AWKWARD_ROOT, kind="edit", outcome="success")
    assert value(
        samples, "rbd_builds_total", project="/tmp/caf\ufffd", kind="unknown", outcome="success"
    )
    assert (
        value(samples, "rbd_last_build_timestamp_seconds", project=AWKWARD_ROOT) == 1_700_000_000.25
    )
    # Each family's HELP and TYPE come once, before its samples.
    for name, (kind, _) in PINNED.items():
        if f"\n{name}" in text:
            assert text.count(f"# TYPE {name} {kind}\n") == 1
            assert text.index(f"# TYPE {name} ") < text.index(f"\n{name}")


def test_every_family_is_written_with_its_pinned_labels() -> None:
    project = ProjectMetrics()
    event = finished("/p", units=[("app", 1.0)])
    project.build_finished(event["build"], event["units"], at=1.0)
    project.app_ready(0.5)
    samples = parse(render({"/p": project}))
    written: dict[str, set[tuple[str, ...]]] = {}
    for name, labels in samples:
        family = next(f for f in PINNED if name == f or name.startswith(f + "_"))
        written.setdefault(family, set()).add(tuple(sorted(k for k, _ in labels if k != "le")))
    assert written == {name: {tuple(sorted(labels))} for name, (_, labels) in PINNED.items()}


def test_a_histogram_counts_each_build_in_its_bucket_cumulatively() -> None:
    project = ProjectMetrics()
    walls = [0.05, 0.1, 0.7, 4.0, 4.0, 1200.0]
    for wall in walls:
        project.build_finished(finished("/p", wall_s=wall)["build"], [], at=1.0)
    project.build_finished(
        finished("/p", wall_s=None, kind=None, outcome="cancelled")["build"], [], at=2.0
    )
    samples = parse(render({"/p": project}))
    labels = {"project": "/p", "kind": "edit", "outcome": "success"}
    previous = 0.0
    for bound in BUCKETS_S:
        count = value(samples, "rbd_build_duration_seconds_bucket", **labels, le=f"{bound:g}")
        assert count == sum(1 for wall in walls if wall <= bound)
        assert count >= previous
        previous = count
    assert value(samples, "rbd_build_duration_seconds_bucket", **labels, le="+Inf") == len(walls)
    assert value(samples, "rbd_build_duration_seconds_count", **labels) == len(walls)
    assert value(samples, "rbd_build_duration_seconds_sum", **labels) == pytest.approx(sum(walls))
    # A build without a wall time is counted, not observed.
    cancelled = {"project": "/p", "kind": "unknown", "outcome": "cancelled"}
    assert value(samples, "rbd_builds_total", **cancelled) == 1
    assert ("rbd_build_duration_seconds_count", frozenset(cancelled.items())) not in samples


def test_phase_totals_add_up_to_the_wall_time() -> None:
    project = ProjectMetrics()
    for wall, compile_s in ((1.0, 0.6), (2.0, 1.5)):
        build = finished(
            "/p",
            wall_s=wall,
            compile_s=compile_s,
            frontend_s=compile_s / 2,  # a part of compile_s
            link_s=0.1,
            overhead_s=0.2,
            queue_s=wall - compile_s - 0.3,
            build_script_s=None,  # not measured: left out, not counted as 0
        )["build"]
        project.build_finished(build, [], at=1.0)
    samples = parse(render({"/p": project}))
    by_phase = {
        dict(labels)["phase"]: seconds
        for (name, labels), seconds in samples.items()
        if name == "rbd_build_phase_seconds_total"
    }
    assert sum(by_phase.values()) == pytest.approx(3.0)
    # frontend and codegen are parts of compile: not phases of their own.
    assert set(by_phase) == set(metrics.PHASES) - {"build_script"}
    assert by_phase["compile"] == pytest.approx(2.1)


def test_top_crates_are_bounded_and_every_series_only_grows() -> None:
    crates = CrateSeconds()
    exported: dict[str, float] = {}
    total = 0.0
    # 30 crates whose costs shift over time: the top set changes, and crates come back.
    for build in range(60):
        seconds = {f"crate{(build * 7 + i) % 30}": float((build + i) % 5 + 1) for i in range(6)}
        crates.add(seconds)
        total += sum(seconds.values())
        series = dict(crates.series())
        assert len(series) <= TOP_CRATES + 1
        assert series[OTHER_CRATE] >= exported.get(OTHER_CRATE, 0.0)
        for crate, count in series.items():
            assert count >= exported.get(crate, 0.0), f"{crate} went down: a false counter reset"
            exported[crate] = count
        assert sum(series.values()) <= total + 1e-6
    # The series add up to every crate's seconds: none counted twice, or lost.
    everything = sum(crates.counted.values()) + crates.other
    assert everything == pytest.approx(total)
    top = sorted(crates.cumulative, key=lambda c: -crates.cumulative[c])[:TOP_CRATES]
    assert set(dict(crates.series())) == {*top, OTHER_CRATE}


def test_fresh_units_cost_no_crate_seconds() -> None:
    project = ProjectMetrics()
    event = finished("/p", units=[("app", 1.5), ("serde", 2.0)])
    event["units"][1]["fresh"] = True
    project.build_finished(event["build"], event["units"], at=1.0)
    samples = parse(render({"/p": project}))
    assert value(samples, "rbd_crate_compile_seconds_total", project="/p", crate="app") == 1.5
    assert (
        "rbd_crate_compile_seconds_total",
        frozenset({("project", "/p"), ("crate", "serde")}),
    ) not in samples


# --- writing ----------------------------------------------------------------------------


def test_the_file_is_replaced_whole_and_readable_by_node_exporter(tmp_path: Path) -> None:
    path = tmp_path / "rbd.prom"
    versions = [b"# small\n", b"# large\n" + b"x 1\n" * 50_000]
    seen: set[bytes] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add(path.read_bytes())

    reader = threading.Thread(target=read)
    old_umask = os.umask(0o077)  # a private umask does not hide it from node_exporter
    try:
        reader.start()
        for i in range(100):
            write_atomically(path, versions[i % 2])
    finally:
        done.set()
        reader.join()
        os.umask(old_umask)
    assert seen <= set(versions), "a reader saw half a file"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["rbd.prom"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rbd.prom"
    write_atomically(path, b"# old\n")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        write_atomically(path, b"# new\n")
    assert path.read_bytes() == b"# old\n"
    assert os.listdir(tmp_path) == ["rbd.prom"]
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "missing" / "rbd.prom", b"# new\n")


@pytest.mark.anyio
async def test_projects_share_a_file_and_leave_it(tmp_path: Path) -> None:
    hub = EventHub(64)
    exporter = TextfileExporter(hub)
    path = tmp_path / "rbd.prom"
    other = tmp_path / "other.prom"
    exporter.follow({"/a": str(path), "/b": str(path)})
    async with anyio.create_task_group() as tg:
        await tg.start(exporter.run)
        hub.publish(finished("/a"))
        hub.publish(finished("/b"))
        hub.publish(finished("/unnamed"))  # watched, but naming no file
        await until(lambda: projects_in(path) == {"/a", "/b"}, "both projects in the file")
        # /a moves to another file: it leaves this one, its counters go with it.
        exporter.follow({"/a": str(other), "/b": str(path)})
        await until(lambda: projects_in(path) == {"/b"}, "/a gone from the file")
        # Its counters moved with it (the file is written at once, and after the build).
        builds = (
            "rbd_builds_total",
            frozenset({("project", "/a"), ("kind", "edit"), ("outcome", "success")}),
        )
        await until(lambda: other.exists() and parse(other.read_text()).get(builds) == 1, "moved")
        hub.publish(finished("/a"))
        await until(lambda: parse(other.read_text()).get(builds) == 2, "/a's next build counted")
        assert projects_in(other) == {"/a"}
        # Stopped (or no longer naming a file): a file no project names is removed.
        exporter.follow({"/a": str(other)})
        await until(lambda: not path.exists(), "the file nobody names removed")
        assert "/b" not in exporter.projects
        tg.cancel_scope.cancel()
    assert other.exists(), "shutting down leaves the file (its numbers stay true)"
    assert len(hub) == 0


@pytest.mark.anyio
async def test_a_file_that_cannot_be_written_is_logged_once_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts = []
    real_write = metrics.write_atomically

    def counted(path: Path, data: bytes) -> None:
        attempts.append(path)
        real_write(path, data)

    monkeypatch.setattr(metrics, "write_atomically", counted)
    hub = EventHub(64)
    exporter = TextfileExporter(hub, retry_s=0.05)
    # A directory that is not there (root may write anywhere, so no chmod): as a full
    # disk, every write fails until it is made.
    directory = tmp_path / "textfiles"
    path = directory / "rbd.prom"
    exporter.follow({"/a": str(path)})
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(exporter.run)
            for _ in range(3):
                hub.publish(finished("/a"))
            await until(
                lambda: (
                    "/a" in exporter.projects
                    and sum(exporter.projects["/a"].builds.values()) == 3
                    and len(attempts) >= 6
                ),
                "three builds counted, their writes tried and retried",
            )
            failed = [e for e in logs if e["event"] == "metrics_write_failed"]
            assert len(failed) == 1, logs
            assert failed[0]["path"] == str(path)
            assert "No such file or directory" in failed[0]["error"]
            directory.mkdir()
            await until(path.exists, "the file written once the directory is there")
            assert exporter.failing == {}
            tg.cancel_scope.cancel()
    assert [e["event"] for e in logs if e["event"].startswith("metrics_write")] == [
        "metrics_write_failed",
        "metrics_write_recovered",
    ]
    samples = parse(path.read_text())
    assert value(samples, "rbd_builds_total", project="/a", kind="edit", outcome="success") == 3


@pytest.mark.anyio
async def test_a_bug_in_the_exporter_ends_the_exporting_not_the_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(projects: object) -> str:
        raise RuntimeError("a bug")

    monkeypatch.setattr(metrics, "render", broken)
    hub = EventHub(64)
    exporter = TextfileExporter(hub)
    exporter.follow({"/a": str(tmp_path / "rbd.prom")})
    with capture_logs() as logs, anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            await tg.start(exporter.run)
            hub.publish(finished("/a"))
        # run() returned by itself, raising nothing into the daemon's task group.
    assert "metrics_failed" in [e["event"] for e in logs]
    assert len(hub) == 0


@pytest.mark.anyio
async def test_run_mode_save_to_serving_is_a_histogram(tmp_path: Path) -> None:
    hub = EventHub(64)
    exporter = TextfileExporter(hub)
    path = tmp_path / "rbd.prom"
    exporter.follow({"/a": str(path)})
    async with anyio.create_task_group() as tg:
        await tg.start(exporter.run)
        hub.publish(finished("/a"))
        for serving in (0.4, None, 1.2):
            app = {"pid": 1, "serving_s": serving, "ready_s": 0.01}
            hub.publish(
                {"event": protocol.APP_READY, "project": "/a", "build_id": 1, "pid": 1, "app": app}
            )
        count = ("rbd_save_to_serving_seconds_count", frozenset({("project", "/a")}))
        await until(
            lambda: path.exists() and parse(path.read_text()).get(count) == 2,
            "both ready apps with a save observed",
        )
        tg.cancel_scope.cancel()
    samples = parse(path.read_text())
    assert value(samples, "rbd_save_to_serving_seconds_sum", project="/a") == pytest.approx(1.6)
    assert value(samples, "rbd_save_to_serving_seconds_bucket", project="/a", le="0.5") == 1


# --- the real daemon --------------------------------------------------------------------


def log_events(rbd: Rbd) -> list[dict[str, Any]]:
    found = []
    for line in (rbd.base / "state" / "rbd" / "rbd.log").read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def test_without_the_setting_nothing_is_imported_or_started(rbd: Rbd, crate: Path) -> None:
    # The daemon's whole import graph (rbd.daemon.main imports the app when it runs).
    probe = (
        "import sys, rbd.daemon.main, rbd.daemon.app, rbd.daemon.rpc.handlers;"
        "print(sorted(m for m in sys.modules if m.startswith('rbd.daemon.export')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    # Only what decides whether to start an exporter (rbd.daemon.export.exporters).
    assert done.stdout.strip() == "['rbd.daemon.export', 'rbd.daemon.export.exporters']"
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    assert events.finished()["outcome"] == "success"
    assert not [e for e in log_events(rbd) if str(e.get("event")).startswith("metrics_")]


def test_builds_and_their_records_carry_on_when_the_file_cannot_be_written(
    rbd: Rbd, tmp_path: Path
) -> None:
    directory = tmp_path / "textfiles"  # not there yet: every write fails
    path = directory / "rbd.prom"
    crate = make_crate(tmp_path / "demo", files={"rbd.toml": f'metrics_textfile = "{path}"\n'})
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    assert events.finished()["outcome"] == "success"
    edit(crate / "src" / "main.rs", main_rs("two"))
    assert events.finished()["outcome"] == "success"
    history = rbd.request(protocol.HISTORY, path=str(crate))["builds"]
    assert len(history) == 2 and all(b["outcome"] == "success" for b in history)
    wait_until(
        lambda: any(e.get("event") == "metrics_write_failed" for e in log_events(rbd)),
        "the failure logged",
    )
    directory.mkdir()
    edit(crate / "src" / "main.rs", main_rs("three"))
    assert events.finished()["outcome"] == "success"
    wait_until(path.exists, "the file written once its directory is there")
    wait_until(
        lambda: any(e.get("event") == "metrics_write_recovered" for e in log_events(rbd)),
        "the recovery logged",
    )
    failures = [e for e in log_events(rbd) if e.get("event") == "metrics_write_failed"]
    assert len(failures) == 1, "logged once, not once per build"
    samples = parse(path.read_text())
    builds = sum(v for (name, labels), v in samples.items() if name == "rbd_builds_total")
    assert builds == 3


def test_the_cost_benchmark_runs() -> None:
    # Imported by name: benchmarks/ is not among mypy's files (see test_benchmarks.py).
    bench = importlib.import_module("benchmarks.metrics_bench")
    rows = bench.run(True)
    assert all(len(row) == 4 and row[0] and row[1] for row in rows)
    assert [row[3] for row in rows if row[2] is not None] == [True]


# --- node_exporter and Prometheus -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# No proxy from the environment for loopback requests.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str) -> str | None:
    """The body of url, or None while nothing answers it (yet)."""
    try:
        with _opener.open(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()
    except OSError:
        return None


@contextlib.contextmanager
def server(argv: list[str], ready_url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server the test starts, ready once ready_url answers; killed when the block ends."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: process.poll() is None and get(ready_url) is not None,
            f"{argv[0]} to answer (its log: {log})",
        )
        yield process
    finally:
        process.kill()
        process.wait(timeout=WAIT_S)


def node_exporter(directory: Path, tmp_path: Path) -> contextlib.AbstractContextManager[str]:
    """node_exporter reading directory's *.prom files (nothing else), on a free port;
    yields its /metrics URL."""

    @contextlib.contextmanager
    def run() -> Iterator[str]:
        address = f"127.0.0.1:{free_port()}"
        argv = [
            NODE_EXPORTER,
            f"--web.listen-address={address}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={directory}",
        ]
        url = f"http://{address}/metrics"
        with server(argv, url, tmp_path / "node_exporter.log"):
            yield url

    return run()


@needs_prometheus
def test_node_exporter_reads_the_file_with_awkward_labels(tmp_path: Path) -> None:
    directory = tmp_path / "textfiles"
    directory.mkdir()
    project = ProjectMetrics()
    event = finished(AWKWARD_ROOT, units=[("app", 0.5)])
    project.build_finished(event["build"], event["units"], at=1_700_000_000.0)
    project.app_ready(0.3)
    write_atomically(directory / "rbd.prom", render({AWKWARD_ROOT: project}).encode())
    with node_exporter(directory, tmp_path) as url:
        body = get(url)
    assert body is not None
    samples = parse(body)
    assert value(samples, "node_textfile_scrape_error") == 0
    assert (
        value(samples, "rbd_builds_total", project=AWKWARD_ROOT, kind="edit", outcome="success")
        == 1
    )
    assert (
        value(samples, "rbd_crate_compile_seconds_total", project=AWKWARD_ROOT, crate="app") == 0.5
    )
    assert value(samples, "rbd_save_to_serving_seconds_count", project=AWKWARD_ROOT) == 1


def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The result of an instant PromQL query through Prometheus' HTTP API."""
    body = get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
    if body is None:
        return []
    reply = json.loads(body)
    assert reply["status"] == "success", reply
    result: list[dict[str, Any]] = reply["data"]["result"]
    return result


def scalar(base: str, promql: str) -> float | None:
    result = query(base, promql)
    return float(result[0]["value"][1]) if result else None


@needs_prometheus
def test_prometheus_counts_rbd_builds_through_node_exporter(rbd: Rbd, tmp_path: Path) -> None:
    directory = tmp_path / "textfiles"
    directory.mkdir()
    path = directory / "rbd.prom"
    crate = make_crate(tmp_path / "demo", files={"rbd.toml": f'metrics_textfile = "{path}"\n'})
    with contextlib.ExitStack() as stack:
        exporter_url = stack.enter_context(node_exporter(directory, tmp_path))
        target = urllib.parse.urlsplit(exporter_url).netloc
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: node\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        address = f"127.0.0.1:{free_port()}"
        base = f"http://{address}"
        prometheus = stack.enter_context(
            server(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address={address}",
                ],
                f"{base}/-/ready",
                tmp_path / "prometheus.log",
            )
        )

        rbd.start_daemon()
        events = rbd.events()
        rbd.ok("start", cwd=crate)
        walls = [events.finished()["wall_s"]]
        for message in ("two", "three"):
            edit(crate / "src" / "main.rs", main_rs(message))
            build = events.finished()
            assert build["outcome"] == "success" and build["kind"] == "edit"
            walls.append(build["wall_s"])

        selector = f"project={json.dumps(str(crate))}"
        count = f"sum(rbd_builds_total{{{selector}}})"
        wait_until(lambda: scalar(base, count) == 3, "Prometheus to count 3 builds", timeout=WAIT_S)
        buckets = f"rbd_build_duration_seconds_bucket{{{selector}}}"
        median = scalar(base, f"histogram_quantile(0.5, sum by (le) ({buckets}))")
        assert median is not None and math.isfinite(median)
        # Interpolated within the buckets the three walls fell in.
        assert min(b for b in (0.0, *BUCKETS_S) if b <= min(walls)) <= median
        assert median <= min(b for b in BUCKETS_S if b >= max(walls))
        phases = scalar(base, f"sum(rbd_build_phase_seconds_total{{{selector}}})")
        assert phases is not None and phases > 0
        assert scalar(base, "node_textfile_scrape_error") == 0
        # HELP and TYPE reached Prometheus through node_exporter.
        metadata = json.loads(get(f"{base}/api/v1/metadata?metric=rbd_builds_total") or "{}")
        assert metadata["data"]["rbd_builds_total"][0]["type"] == "counter"

        # The collector and Prometheus gone mid-run: rbd builds and records as before.
        prometheus.kill()
        stack.close()
    edit(crate / "src" / "main.rs", main_rs("four"))
    assert events.finished()["outcome"] == "success"
    wait_until(
        lambda: (
            sum(v for (n, _), v in parse(path.read_text()).items() if n == "rbd_builds_total") == 4
        ),
        "the fourth build in the file",
    )
    assert len(rbd.request(protocol.HISTORY, path=str(crate))["builds"]) == 4
