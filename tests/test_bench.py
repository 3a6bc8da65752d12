"""`rbd bench` end to end: the real daemon, real cargo, tiny crates."""

from __future__ import annotations

import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rbd.client.errors import RequestFailed
from rbd.contract import protocol
from tests.conftest import WAIT_S, Rbd, make_crate
from tests.test_projects import started

RESULT_KEYS = {
    "config",
    "mode",
    "available",
    "reason",
    "mean_s",
    "stddev_s",
    "min_s",
    "median_s",
    "delta_s",
    "delta_pct",
    "noisy",
    "phases",
}
# Slow only in the bench's own target dirs: the watched build before it stays quick.
SLOW_BUILD_RS = """\
fn main() {
    if std::env::var("OUT_DIR").unwrap().contains("/rbd/bench/") {
        std::thread::sleep(std::time::Duration::from_secs(120));
    }
}
"""


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the project outside its target dir."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "target" not in p.relative_to(root).parts
    }


def bench_json(rbd: Rbd, crate: Path, *args: str, timeout: float = 120) -> dict[str, Any]:
    done = rbd.run("bench", "--json", *args, cwd=crate, timeout=timeout)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_bench_measures_both_modes_and_leaves_the_project_alone(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo")
    before = snapshot(crate)
    configs = "default,line-tables-only,cranelift"
    report = bench_json(rbd, crate, "--configs", configs, "--runs", "2", "--warmup", "1")

    assert report["project"] == str(crate.resolve())
    assert (report["runs"], report["warmup"]) == (2, 1)
    assert report["edit"] == {"file": "src/main.rs", "kind": "string"}
    rows = {(r["config"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {(c, m) for c in configs.split(",") for m in ("clean", "incremental")}
    for row in report["results"]:
        assert set(row) >= RESULT_KEYS
        if row["config"] == "cranelift" and not row["available"]:
            assert "nightly" in row["reason"] and row["median_s"] is None
            continue
        assert row["available"] and row["reason"] is None
        assert len(row["runs_s"]) == 2 and row["min_s"] == min(row["runs_s"])
        assert row["min_s"] <= row["median_s"] and row["stddev_s"] >= 0
        assert isinstance(row["noisy"], bool)
        # The median run's phases, as rbd measures any build: the bin links.
        assert row["phases"]["compile_s"] > 0 and row["phases"]["link_s"] > 0
    for mode in ("clean", "incremental"):
        assert rows[("default", mode)]["delta_s"] == 0
        lt, base = rows[("line-tables-only", mode)], rows[("default", mode)]
        assert lt["delta_s"] == pytest.approx(lt["median_s"] - base["median_s"], abs=1e-3)

    # Nothing of the user's changed; bench built only under target/rbd/bench.
    assert snapshot(crate) == before
    assert sorted(os.listdir(crate / "target")) == ["rbd"]
    assert sorted(os.listdir(crate / "target" / "rbd" / "bench")) == [
        "default",
        "line-tables-only",
        "src",
    ]
    # Stored as evidence, and not mistaken for the project's own builds.
    with sqlite3.connect(rbd.store) as db:
        (stored,) = db.execute("SELECT report FROM benches").fetchone()
        assert db.execute("SELECT count(*) FROM builds").fetchone() == (0,)
    assert json.loads(stored)["results"] == report["results"]


def test_table_output_names_every_configuration(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo")
    done = rbd.run(
        "bench", "--incremental", "--configs", "default,cranelift", "--runs", "1",
        "--warmup", "0", cwd=crate, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "incremental rebuild after an edit of src/main.rs (string)" in done.stdout
    lines = done.stdout.splitlines()
    assert any(line.startswith("default ") and " ms" in line for line in lines)
    assert any(line.startswith("cranelift ") for line in lines)
    assert "clean build" not in done.stdout


def test_watched_builds_wait_for_the_bench_and_suggest_cites_it(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo")
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    events.finished()
    main = crate / "src" / "main.rs"
    for i in range(3):
        main.write_text(f'fn main() {{ println!("edit {i}"); }}\n')
        events.finished()

    rbd.ok(
        "bench", "--detach", "--incremental", "--configs", "default,line-tables-only",
        "--runs", "3", "--warmup", "1", cwd=crate,
    )  # fmt: skip
    events.wait_for(lambda e: e.get("event") == protocol.BENCH_STARTED)
    main.write_text('fn main() { println!("saved during the bench"); }\n')
    finished = events.wait_for(lambda e: e.get("event") == protocol.BENCH_FINISHED, timeout=120)
    build = events.finished()
    assert build["trigger"] == ["src/main.rs"]
    names = [e.get("event") for e in events.seen]
    start, end = names.index(protocol.BENCH_STARTED), names.index(protocol.BENCH_FINISHED)
    assert protocol.BUILD_STARTED not in names[start:end], "a watcher build ran during the bench"
    progress = [e for e in events.seen[start:end] if e.get("event") == protocol.BENCH_PROGRESS]
    # 2 configurations x (1 priming build + 1 warm-up + 3 counted runs).
    assert len(progress) == 10, (names, finished["report"]["results"])
    assert progress[-1]["done"] == progress[-1]["total"] == 10
    assert sum(e["counted"] for e in progress) == 6
    # The user's save is what the watcher built, untouched by the bench's edits.
    assert main.read_text() == 'fn main() { println!("saved during the bench"); }\n'

    bench_id = finished["report"]["id"]
    suggested = json.loads(rbd.ok("suggest", "--json", cwd=crate))
    assert suggested["bench"]["id"] == bench_id
    cited = [s for s in suggested["suggestions"] if s["id"] == "debuginfo-line-tables"]
    withdrawn = [w for w in suggested["withdrawn"] if w["id"] == "debuginfo-line-tables"]
    assert len(cited) + len(withdrawn) == 1, "the debuginfo rule fires on full debuginfo"
    if cited:
        assert cited[0]["expected"]["source"] == "measured"
        assert f"rbd bench #{bench_id}" in cited[0]["expected"]["basis"]
    else:
        assert f"rbd bench #{bench_id}" in withdrawn[0]["reason"]


def bench_processes(crate: Path) -> list[int]:
    marker = str(crate / "target" / "rbd" / "bench").encode()
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker in f.read():
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


def wait_until(check: Any, timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_cancel_stops_the_bench_and_its_processes(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "slow", "slow", {"build.rs": SLOW_BUILD_RS})
    events = started(rbd, crate)
    events.finished()
    rbd.ok("bench", "--detach", "--clean", "--configs", "default", "--runs", "1", cwd=crate)
    events.wait_for(lambda e: e.get("event") == protocol.BENCH_STARTED)
    assert wait_until(lambda: bench_processes(crate)), "the build script never ran"

    # One bench at a time: a second would measure the first.
    with pytest.raises(RequestFailed) as busy:
        rbd.request(protocol.BENCH, path=str(crate), configs=["default"], runs=1)
    assert busy.value.code == protocol.BUSY

    assert "cancelled the bench" in rbd.ok("bench", "--cancel", cwd=crate)
    finished = events.wait_for(lambda e: e.get("event") == protocol.BENCH_FINISHED)
    assert finished["code"] == protocol.CANCELLED and "report" not in finished
    assert wait_until(lambda: not bench_processes(crate)), bench_processes(crate)
    with sqlite3.connect(rbd.store) as db:
        assert db.execute("SELECT count(*) FROM benches").fetchone() == (0,)
    # Nothing to cancel now, and the daemon carries on.
    done = rbd.run("bench", "--cancel", cwd=crate)
    assert done.returncode == 1 and "no bench" in done.stderr
    assert rbd.daemon_pid() > 0


def test_foreground_bench_runs_without_a_daemon(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo")
    report = bench_json(
        rbd, crate, "--foreground", "--incremental", "--configs", "default", "--runs", "1",
        "--warmup", "0",
    )  # fmt: skip
    (row,) = report["results"]
    assert row["config"] == "default" and row["median_s"] > 0
    assert not os.path.exists(rbd.socket), "a daemon was started"
    with sqlite3.connect(rbd.store) as db:
        assert db.execute("SELECT count(*) FROM benches").fetchone() == (1,)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runs", "0"], "--runs must be between 1 and"),
        (["--configs", "default,warp-drive"], "warp-drive"),
        (["--edit", "/etc/hostname"], "not inside the project"),
        (["--edit", "Cargo.toml"], "not a Rust source"),
    ],
)
def test_bad_bench_requests_are_one_clear_line(
    rbd: Rbd, tmp_path: Path, args: list[str], message: str
) -> None:
    crate = make_crate(tmp_path / "demo")
    done = rbd.run("bench", *args, cwd=crate)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (crate / "target").exists()
    assert rbd.daemon_pid() > 0


def test_bench_outside_a_cargo_project_and_bad_usage(rbd: Rbd, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = rbd.run("bench", cwd=empty)
    assert done.returncode == 1 and "Cargo.toml" in done.stderr
    done = rbd.run("bench", "--configs", ",", cwd=empty)
    assert done.returncode == 2 and "names no configuration" in done.stderr


def test_a_raw_request_needs_an_absolute_path(rbd: Rbd, tmp_path: Path) -> None:
    rbd.start_daemon()
    for path in (None, "relative/dir"):
        with pytest.raises(RequestFailed) as failed:
            rbd.request(protocol.BENCH, path=path)
        assert failed.value.code == protocol.BAD_REQUEST and "absolute" in str(failed.value)


def test_the_daemon_benches_only_watched_projects(rbd: Rbd, tmp_path: Path) -> None:
    watched = make_crate(tmp_path / "watched", "watched")
    other = make_crate(tmp_path / "other", "other")
    (tmp_path / "link").symlink_to(other)
    events = started(rbd, watched)
    events.finished()
    # Canonicalized first: neither `..` nor a symlink leads out of the watched project.
    for path in (other, watched / ".." / "other", tmp_path / "link", watched / "src" / "../.."):
        with pytest.raises(RequestFailed) as failed:
            rbd.request(protocol.BENCH, path=str(path), configs=["default"], runs=1)
        assert failed.value.code == protocol.NOT_WATCHED, path
    assert not (other / "target").exists(), "cargo ran in a project nobody watches"
    # The CLI benches an unwatched project in its own process instead.
    report = bench_json(
        rbd, other, "--incremental", "--configs", "default", "--runs", "1", "--warmup", "0"
    )
    assert report["project"] == str(other) and report["results"][0]["median_s"] > 0


def test_the_bench_never_writes_through_a_symlink(rbd: Rbd, tmp_path: Path) -> None:
    """The edited file and a manifest are links to files outside the project: the bench
    edits and rewrites its own copies of them, and the files the links lead to keep
    their bytes."""
    outside = tmp_path / "outside"
    outside.mkdir()
    real_main = outside / "main.rs"
    real_main.write_text('fn main() {\n    println!("outside");\n}\n')
    crate = make_crate(tmp_path / "demo", files={"lib/Cargo.toml": "", "lib/src/lib.rs": ""})
    real_manifest = outside / "Cargo.toml"
    # A path dependency outside the project: the bench rewrites the copied manifest.
    real_manifest.write_text(
        '[package]\nname = "lib"\nversion = "0.1.0"\nedition = "2021"\n\n'
        f'[dependencies]\nfar = {{ path = "{tmp_path / "far"}" }}\n'
    )
    make_crate(tmp_path / "far", name="far", files={"src/lib.rs": "pub fn f() {}\n"})
    (tmp_path / "far" / "src" / "main.rs").unlink()
    (crate / "lib" / "Cargo.toml").unlink()
    (crate / "lib" / "Cargo.toml").symlink_to(real_manifest)
    (crate / "Cargo.toml").write_text(
        '[package]\nname = "demo"\nversion = "0.1.0"\nedition = "2021"\n\n'
        '[dependencies]\nlib = { path = "lib" }\n'
    )
    main = crate / "src" / "main.rs"
    main.unlink()
    main.symlink_to(real_main)
    events = started(rbd, crate)
    assert events.finished()["outcome"] == "success"
    # A save that replaces the link records src/main.rs as the trigger, which makes it
    # the file the bench edits.
    real_main.write_text('fn main() {\n    println!("saved");\n}\n')
    (crate / "src" / "new-link").symlink_to(real_main)
    (crate / "src" / "new-link").replace(main)
    assert events.finished()["trigger"] == ["src/main.rs"]
    before = {p: p.read_bytes() for p in (real_main, real_manifest)}

    report = bench_json(rbd, crate, "--incremental", "--configs", "default", "--runs", "1")

    assert report["edit"]["file"] == "src/main.rs"
    (row,) = report["results"]
    assert row["available"] and len(row["runs_s"]) == 1
    assert {p: p.read_bytes() for p in before} == before
    assert main.is_symlink() and (crate / "lib" / "Cargo.toml").is_symlink()


def test_status_shows_a_running_bench(rbd: Rbd, tmp_path: Path) -> None:
    # Found on a real app: `rbd status` said `[idle]` for the whole of a 25-minute bench.
    crate = make_crate(tmp_path / "slow", "slow", {"build.rs": SLOW_BUILD_RS})
    events = started(rbd, crate)
    events.finished()
    rbd.ok("bench", "--detach", "--clean", "--configs", "default", "--runs", "2", cwd=crate)
    events.wait_for(lambda e: e.get("event") == protocol.BENCH_STARTED)
    assert wait_until(lambda: bench_processes(crate)), "the build script never ran"

    (project,) = json.loads(rbd.ok("status", "--json"))["projects"]
    assert project["state"] == "paused"
    bench = project["bench"]
    assert (bench["config"], bench["mode"], bench["run"]) == ("default", "clean", "warm-up")
    assert (bench["number"], bench["of"]) == (1, 2)
    assert (bench["runs"], bench["warmup"], bench["configs"]) == (2, 2, ["default"])
    assert bench["done"] < bench["total"] == 4 and bench["elapsed_s"] > 0
    text = rbd.ok("status")
    assert f"{crate}  [paused]" in text
    assert "  bench    clean default: warm-up 1 of 2; 0/4 builds, " in text

    rbd.ok("bench", "--cancel", cwd=crate)
    events.wait_for(lambda e: e.get("event") == protocol.BENCH_FINISHED)
    events.wait_for(lambda e: e.get("event") == protocol.PROJECT_STATE and e["state"] == "idle")
    (project,) = json.loads(rbd.ok("status", "--json"))["projects"]
    assert project["state"] == "idle" and project["bench"] is None


def test_tail_and_a_bench_whose_output_is_no_terminal_show_its_progress(
    rbd: Rbd, tmp_path: Path
) -> None:
    # Found on a real app: the human `rbd tail` printed nothing during a bench, and
    # `rbd bench` into a log nothing until the end.
    crate = make_crate(tmp_path / "demo")
    events = started(rbd, crate)
    events.finished()
    tail = subprocess.Popen(
        [sys.executable, "-m", "rbd.client", "tail"],
        env=rbd.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stderr is not None and tail.stdout is not None
        assert "following" in tail.stderr.readline()  # subscribed
        lines: queue.Queue[str] = queue.Queue()
        stdout = tail.stdout

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        done = rbd.run(
            "bench", "--incremental", "--configs", "default", "--runs", "2", "--warmup", "0",
            cwd=crate, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        # A line per counted run on stderr, no bar; the table on stdout as ever.
        counted = [x for x in done.stderr.splitlines() if x.startswith("bench ")]
        assert [x.split()[1] for x in counted] == ["2/3", "3/3"], done.stderr
        assert all("incremental default" in x for x in counted)
        assert "\r" not in done.stderr and "default " in done.stdout

        shown: list[str] = []
        deadline = time.monotonic() + WAIT_S
        while not any("bench finished" in x for x in shown):
            shown.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
    finally:
        tail.send_signal(signal.SIGINT)
        tail.wait(timeout=WAIT_S)
    benched = [x for x in shown if x.startswith("demo: bench")]
    assert "bench started: default (incremental)" in benched[0], shown
    # The last build always shows, whatever the rate limit held back.
    assert "demo: bench 3/3  incremental default " in benched[-2], shown
    assert "bench finished (#" in benched[-1], shown


def test_bench_builds_read_the_frontend_codegen_split(rbd: Rbd, tmp_path: Path) -> None:
    # Found on a real app: bench builds logged `timings_schema_unknown` (cargo's version
    # unknown to them) and lost the split. A library alone: a binary's unit has no split.
    crate = make_crate(tmp_path / "lib", "lib", {"src/lib.rs": "pub fn f() -> u32 { 1 }\n"})
    (crate / "src" / "main.rs").unlink()
    report = bench_json(
        rbd, crate, "--foreground", "--clean", "--configs", "default", "--runs", "1",
        "--warmup", "0",
    )  # fmt: skip
    (row,) = report["results"]
    phases = row["phases"]
    assert phases["frontend_s"] is not None and phases["codegen_s"] is not None, phases
    assert phases["frontend_s"] + phases["codegen_s"] == pytest.approx(
        phases["compile_s"], abs=2e-3
    )
    log = Path(rbd.base / "state" / "rbd" / "rbd.log").read_text()
    assert "timings_schema_unknown" not in log
