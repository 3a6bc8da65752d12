"""Idle benches (`auto_bench`) end to end: the real daemon, real cargo, tiny crates.

The idle time is half a second and the load threshold out of reach, so that a bench
starts as soon as a project is quiet on a shared test machine; every wait is on an
event, a log line or a process, with a timeout."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from rbd.contract import protocol
from rbd.contract.schema import BenchStatus
from tests.conftest import Events, Rbd, make_crate
from tests.test_bench import SLOW_BUILD_RS, bench_processes, wait_until

AUTO = "auto_bench = true\nauto_bench_idle_s = 0.5\nauto_bench_max_load = 1000\n"
SCHED_IDLE = 5


def main_rs(message: str) -> str:
    return f'fn main() {{\n    println!("{message}");\n}}\n'


def edited(events: Events, crate: Path, times: int, start: int = 0) -> None:
    """Save src/main.rs `times` times, each once the build of the one before finished
    (rules need three edit rebuilds before they suggest anything)."""
    for i in range(start, start + times):
        (crate / "src" / "main.rs").write_text(main_rs(f"edit {i}"))
        events.wait_for(
            lambda e: (
                e.get("event") == protocol.BUILD_FINISHED
                and e["build"]["project"] == str(crate)
                and e["build"]["trigger"] == ["src/main.rs"]
            )
        )


def first_build(events: Events, crate: Path) -> None:
    events.wait_for(
        lambda e: e.get("event") == protocol.BUILD_FINISHED and e["build"]["project"] == str(crate)
    )


def is_bench(event: dict[str, Any], name: str, crate: Path) -> bool:
    return event.get("event") == name and event.get("project") == str(crate)


def log_lines(rbd: Rbd, event: str, crate: Path) -> list[dict[str, Any]]:
    path = rbd.base / "state" / "rbd" / "rbd.log"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event and entry.get("root") == str(crate):
            found.append(entry)
    return found


def stored_benches(rbd: Rbd) -> list[dict[str, Any]]:
    with sqlite3.connect(rbd.store) as db:
        return [json.loads(r[0]) for r in db.execute("SELECT report FROM benches ORDER BY id")]


def test_an_idle_bench_runs_once_quiet_is_stored_cited_and_not_repeated_while_fresh(
    rbd: Rbd, tmp_path: Path
) -> None:
    auto = make_crate(tmp_path / "auto", "auto", {"rbd.toml": AUTO})
    # The same idle time, auto_bench left at its default: off.
    off = make_crate(
        tmp_path / "off",
        "off",
        {"rbd.toml": "auto_bench_idle_s = 0.5\nauto_bench_max_load = 1000\n"},
    )
    rbd.start_daemon()
    events = rbd.events()
    for crate in (off, auto):
        rbd.ok("start", cwd=crate)
        first_build(events, crate)
    edited(events, off, 3)
    edited(events, auto, 3)

    started = events.wait_for(lambda e: is_bench(e, protocol.BENCH_STARTED, auto), 120)
    assert started["idle"] is True
    assert started["modes"] == ["incremental"]
    assert started["configs"][0] == "default" and len(started["configs"]) >= 2
    status = rbd.request(protocol.STATUS)
    (project,) = [p for p in status["projects"] if p["root"] == str(auto)]
    # Running beside the project, not pausing it.
    assert project["state"] != "paused"
    assert project["bench"] is None or project["bench"]["idle"] is True
    finished = events.wait_for(lambda e: is_bench(e, protocol.BENCH_FINISHED, auto), 120)
    assert finished["idle"] is True and "error" not in finished, finished
    names = [(e.get("event"), e.get("project")) for e in events.seen]
    # It started once the project's last build had finished and the project was quiet.
    last_build = max(
        i
        for i, e in enumerate(events.seen)
        if e.get("event") == protocol.BUILD_FINISHED and e["build"]["project"] == str(auto)
    )
    assert names.index((protocol.BENCH_STARTED, str(auto))) > last_build
    # Never for the project that left it off, idle just as long.
    assert (protocol.BENCH_STARTED, str(off)) not in names

    (report,) = stored_benches(rbd)
    assert report["project"] == str(auto)
    conditions = report["conditions"]
    assert conditions["rustc"].startswith("rustc ") and conditions["cargo"].startswith("cargo ")
    assert conditions["lock_digest"] and conditions["profile"]["name"] == "dev"

    suggested = json.loads(rbd.ok("suggest", "--json", cwd=auto))
    cited = [s["expected"]["basis"] for s in suggested["suggestions"]] + [
        w["reason"] for w in suggested["withdrawn"]
    ]
    ours = [c for c in cited if f"rbd bench #{finished['report']['id']}" in c]
    assert ours, cited
    assert all(" ago)" in c and "σ " in c and "stale" not in c for c in ours), ours

    # A save, then quiet again: everything is fresh, so no bench runs.
    before = len(log_lines(rbd, "idle_bench_nothing_to_do", auto))
    edited(events, auto, 1, start=10)
    assert wait_until(lambda: len(log_lines(rbd, "idle_bench_nothing_to_do", auto)) > before)
    assert [e for e in events.seen if is_bench(e, protocol.BENCH_STARTED, auto)] == [started]
    assert len(stored_benches(rbd)) == 1


def priority_of(pid: int) -> tuple[int, int, str]:
    """(nice, scheduling policy, I/O class as ionice prints it) of a live process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    io = subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True, check=False)
    return int(fields[16]), int(fields[38]), io.stdout.strip()


def test_a_save_stops_the_idle_bench_at_once_and_it_resumes_later(rbd: Rbd, tmp_path: Path) -> None:
    # Its build script sleeps only in the bench's target dirs: the bench is still
    # building when the save comes, the project's own builds are quick.
    crate = make_crate(tmp_path / "slow", "slow", {"build.rs": SLOW_BUILD_RS, "rbd.toml": AUTO})
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    events.finished()
    edited(events, crate, 3)
    events.wait_for(lambda e: is_bench(e, protocol.BENCH_STARTED, crate), 120)
    assert wait_until(lambda: bench_processes(crate)), "the bench's build script never ran"
    # At the lowest priority, inherited by what cargo starts (the sleeping build script).
    nice, policy, io = priority_of(bench_processes(crate)[0])
    assert nice == 19 and policy == SCHED_IDLE and io == "idle", (nice, policy, io)

    status = rbd.request(protocol.STATUS)
    (project,) = status["projects"]
    assert project["bench"]["idle"] is True and project["state"] == "idle"

    seen = len(events.seen)
    (crate / "src" / "main.rs").write_text(main_rs("back at work"))
    stopped = events.wait_for(lambda e: is_bench(e, protocol.BENCH_FINISHED, crate))
    assert stopped["idle"] is True and stopped["code"] == protocol.CANCELLED
    assert "a change in" in stopped["error"] and "report" not in stopped
    build = events.finished()
    assert build["trigger"] == ["src/main.rs"] and build["outcome"] == "success"
    # The save's build was not held: no pause, nothing between it and the bench.
    states = [e["state"] for e in events.seen[seen:] if e.get("event") == protocol.PROJECT_STATE]
    assert "paused" not in states, states
    assert wait_until(lambda: not bench_processes(crate)), bench_processes(crate)
    assert stored_benches(rbd) == [], "a stopped idle bench keeps nothing"

    # Quiet again: the bench starts over.
    again = events.wait_for(lambda e: is_bench(e, protocol.BENCH_STARTED, crate), 120)
    assert again["idle"] is True
    assert wait_until(lambda: bench_processes(crate))
    # A bench asked for goes first: the idle one is stopped, then it runs.
    rbd.ok(
        "bench", "--detach", "--incremental", "--configs", "default", "--runs", "1",
        "--warmup", "0", cwd=crate,
    )  # fmt: skip
    stopped = events.wait_for(lambda e: is_bench(e, protocol.BENCH_FINISHED, crate))
    assert stopped["idle"] is True and "a bench was asked for" in stopped["error"]
    asked = events.wait_for(lambda e: is_bench(e, protocol.BENCH_STARTED, crate))
    assert "idle" not in asked
    assert "cancelled the bench" in rbd.ok("bench", "--cancel", cwd=crate)


def test_the_budget_stops_an_idle_bench_and_those_after_it(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path / "slow",
        "slow",
        {"build.rs": SLOW_BUILD_RS, "rbd.toml": AUTO + "auto_bench_budget_s = 1\n"},
    )
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    events.finished()
    edited(events, crate, 3)
    events.wait_for(lambda e: is_bench(e, protocol.BENCH_STARTED, crate), 120)
    stopped = events.wait_for(lambda e: is_bench(e, protocol.BENCH_FINISHED, crate))
    assert stopped["code"] == protocol.CANCELLED and "budget" in stopped["error"], stopped
    assert wait_until(lambda: log_lines(rbd, "idle_bench_budget_used", crate))
    assert wait_until(lambda: not bench_processes(crate))
    # Decided after the stop: no idle bench started since.
    assert len(log_lines(rbd, "idle_bench_started", crate)) == 1


def test_a_new_cargo_lock_makes_a_measurement_stale_and_suggest_says_so(
    rbd: Rbd, tmp_path: Path
) -> None:
    crate = make_crate(tmp_path / "demo")
    make_crate(tmp_path / "helper", "helper", {"src/lib.rs": "pub fn one() -> u32 { 1 }\n"})
    (tmp_path / "helper" / "src" / "main.rs").unlink()
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    events.finished()
    edited(events, crate, 3)
    done = rbd.run(
        "bench", "--json", "--incremental", "--configs", "default,line-tables-only",
        "--runs", "2", "--warmup", "0", cwd=crate, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    bench_id = json.loads(done.stdout)["id"]

    def cited() -> list[str]:
        suggested = json.loads(rbd.ok("suggest", "--json", cwd=crate))
        found = [s["expected"]["basis"] for s in suggested["suggestions"]] + [
            w["reason"] for w in suggested["withdrawn"]
        ]
        return [c for c in found if f"rbd bench #{bench_id}" in c]

    fresh = cited()
    assert fresh and not any("stale" in c for c in fresh), fresh

    manifest = crate / "Cargo.toml"
    manifest.write_text(
        manifest.read_text() + '\n[dependencies]\nhelper = { path = "../helper" }\n'
    )
    events.wait_for(
        lambda e: (
            e.get("event") == protocol.BUILD_FINISHED
            and e["build"]["outcome"] == "success"
            and "Cargo.toml" in e["build"]["trigger"]
        )
    )
    suggested = json.loads(rbd.ok("suggest", "--json", cwd=crate))
    stale = [
        s for s in suggested["suggestions"] if f"rbd bench #{bench_id}" in s["expected"]["basis"]
    ]
    # Kept, not withdrawn, its estimate back, and the measurement said stale.
    assert stale, suggested
    for suggestion in stale:
        assert suggestion["expected"]["source"] != "measured"
        assert "stale: Cargo.lock changed since" in suggestion["expected"]["basis"]
    assert not [w for w in suggested["withdrawn"] if f"rbd bench #{bench_id}" in w["reason"]]

    # Another toolchain (the nightly this machine has), named by the project's own file.
    (crate / "rust-toolchain.toml").write_text('[toolchain]\nchannel = "nightly"\n')
    suggested = json.loads(rbd.ok("suggest", "--json", cwd=crate))
    bases = [
        s["expected"]["basis"]
        for s in suggested["suggestions"]
        if f"rbd bench #{bench_id}" in s["expected"]["basis"]
    ]
    assert bases and all(
        "stale: rustc, cargo and Cargo.lock changed since (rustc 1.95" in b and "nightly" in b
        for b in bases
    ), bases


def test_status_and_tail_say_a_bench_is_idle() -> None:
    from rbd.client import benchtable, render

    status: BenchStatus = {
        "configs": ["default", "line-tables-only"],
        "modes": ["incremental"],
        "runs": 6,
        "warmup": 2,
        "done": 3,
        "total": 18,
        "elapsed_s": 4.0,
        "config": "line-tables-only",
        "cache": None,
        "mode": "incremental",
        "run": "warm-up",
        "number": 1,
        "of": 2,
        "idle": True,
    }
    line = render.bench_state(status)
    assert "idle, measuring default, line-tables-only (stops at a save)" in line
    assert "incremental line-tables-only" in line and "3/18 builds" in line
    manual = render.bench_state({**status, "idle": False})
    assert "idle" not in manual
    started = {"event": "bench_started", "configs": ["default", "lld"], "modes": ["incremental"]}
    assert benchtable.started({**started, "total": 18, "idle": True}).startswith(
        "idle bench started: default, lld (incremental), 18 builds at the lowest priority"
    )
    stopped = {"error": "idle bench stopped: a change in /p; nothing was recorded", "idle": True}
    assert benchtable.finished(stopped) == stopped["error"]
    assert benchtable.finished({"report": {"id": 4}, "idle": True}).startswith(
        "idle bench finished (#4;"
    )
