"""The rules for the newer levers (wild, the parallel frontend), on recorded builds made
to make each fire and not fire, and a bench of their configurations replacing the bound
they start with (evidence.MEASURED_BY)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rbd.contract.schema import BenchConditions
from rbd.daemon.advice import evidence, rules
from rbd.daemon.advice.tune import changes
from tests.test_evidence import measured, row
from tests.test_suggest import HOST, build, environment, only, unit

WILD = "/home/u/.cargo/bin/wild"
# What the bench ran with, and the project has now: its measurements are fresh.
CONDITIONS: BenchConditions = {
    "rustc": "1.95.0",
    "cargo": "1.95.0",
    "lock_digest": None,
    "profile": {"debug": 2},
}


def with_linkers(**linkers: str | None) -> dict[str, Any]:
    env = environment()
    env["linkers"] = {**env["linkers"], **linkers}
    env["cores"] = 2
    return env


def link_heavy(linker: str = "rust-lld") -> list[dict[str, Any]]:
    # link 0.5 s of a 1 s rebuild: half of it.
    return [build(i, 1.0, link=0.5, linker=linker) for i in range(1, 5)]


def frontend_heavy(front: float = 0.6) -> list[dict[str, Any]]:
    # compile 0.8 s, of which codegen 0.8 - front: the frontend is `front` of 1 s.
    return [build(i, 1.0, compile_s=0.8, codegen=0.8 - front, link=0.1) for i in range(1, 5)]


def test_wild_fires_on_a_link_heavy_rebuild_with_its_bound_and_how_to_measure() -> None:
    item = only(rules.Context(with_linkers(wild=WILD), link_heavy()), "linker-wild")
    assert item is not None and item["runnable"] is True
    assert "link was 50% of the median edit rebuild" in item["evidence"]
    assert "linked by rust-lld" in item["evidence"]
    expected = item["expected"]
    assert expected["saves_s"] is None and expected["source"] == "unmeasured"
    assert expected.get("at_most_s") == 0.5
    assert "rbd bench --incremental --configs default,wild" in expected["basis"]
    # No other project's numbers in the argument.
    assert "article" not in expected["basis"] and "web app" not in expected["basis"]
    # gcc alone: the -B directory is the user's to make; with clang, tune applies it.
    assert "manual" in item["change"] and WILD in item["change"]["manual"]
    assert "linker-features=-lld" in item["change"]["manual"]
    clang = only(
        rules.Context(with_linkers(wild=WILD, clang="/usr/bin/clang"), link_heavy()),
        "linker-wild",
    )
    assert clang is not None
    # One change tune takes whole: the driver set and the flag added, in one file.
    changes.change_from_json(clang["change"])
    assert clang["change"] == {
        "file": ".cargo/config.toml",
        "set": [{"key": ["target", HOST, "linker"], "value": "clang"}],
        "rustflags": {
            "key": ["target", HOST, "rustflags"],
            "add": ["-C", f"link-arg=--ld-path={WILD}"],
        },
    }


def test_wild_not_installed_cannot_run_here_and_says_how_to_install() -> None:
    item = only(rules.Context(with_linkers(wild=None), link_heavy()), "linker-wild")
    assert item is not None and item["runnable"] is False
    assert "cannot run on this machine" in item["evidence"]
    assert "cargo install --locked wild-linker" in item["evidence"]
    found = rules.suggest(rules.Context(with_linkers(wild=None), link_heavy()))[0]
    # What cannot run here never tops the list.
    assert found[0]["id"] != "linker-wild"


def test_wild_stays_quiet_when_link_is_small_or_wild_links_already() -> None:
    small = [build(i, 1.0, link=0.05) for i in range(1, 5)]
    assert only(rules.Context(with_linkers(wild=WILD), small), "linker-wild") is None
    done = link_heavy("wild")
    assert only(rules.Context(with_linkers(wild=WILD), done), "linker-wild") is None
    mac = with_linkers(wild=WILD)
    mac["host"] = "aarch64-apple-darwin"
    assert only(rules.Context(mac, link_heavy()), "linker-wild") is None


def test_parallel_frontend_fires_on_a_frontend_heavy_rebuild_with_a_nightly() -> None:
    env = with_linkers()
    env["nightly"] = {"toolchain": "nightly-x86_64-unknown-linux-gnu", "cranelift": False}
    item = only(rules.Context(env, frontend_heavy()), "parallel-frontend")
    assert item is not None and item["runnable"] is True and item["needs_nightly"] is True
    assert "was 60% of the median edit rebuild" in item["evidence"]
    # At most what 2 threads can share out of the 0.6 s frontend.
    assert item["expected"]["saves_s"] is None
    assert item["expected"].get("at_most_s") == 0.3
    assert "--configs default,parallel-frontend" in item["expected"]["basis"]
    # Never applied by itself: the user's builds move to nightly only by hand.
    assert "manual" in item["change"] and "-Zthreads=2" in item["change"]["manual"]
    assert "cargo +nightly-x86_64-unknown-linux-gnu" in item["change"]["manual"]


def test_parallel_frontend_from_the_units_when_a_binary_hides_the_phase() -> None:
    # A bin on the critical path has no split: the phase is null, the library's counts.
    builds = [build(i, 1.0, compile_s=0.8) for i in range(1, 5)]
    core = unit("core", "lib", frontend_s=0.5, critical_path=True)
    app = unit("app", "bin", frontend_s=None, critical_path=True)
    off_path = unit("util", "lib", frontend_s=0.9, critical_path=False)
    units = {i: [core, app, off_path] for i in range(1, 5)}
    item = only(rules.Context(with_linkers(), builds, units), "parallel-frontend")
    assert item is not None and "0.50 s of 1.00 s" in item["evidence"]
    assert item["expected"].get("at_most_s") == 0.25
    # Split in one build of four: not a signal.
    sparse = {1: [core, app], 2: [app], 3: [app], 4: [app]}
    assert only(rules.Context(with_linkers(), builds, sparse), "parallel-frontend") is None


def test_parallel_frontend_without_a_nightly_or_signal() -> None:
    env = with_linkers()
    item = only(rules.Context(env, frontend_heavy()), "parallel-frontend")
    assert item is not None and item["runnable"] is False
    assert "rustup toolchain install nightly" in item["evidence"]
    # A frontend that is a small share, or one cargo did not split, is no signal.
    assert only(rules.Context(env, frontend_heavy(0.1)), "parallel-frontend") is None
    unsplit = [build(i, 1.0, compile_s=0.8) for i in range(1, 5)]
    assert only(rules.Context(env, unsplit), "parallel-frontend") is None
    one_core = {**env, "cores": 1}
    assert only(rules.Context(one_core, frontend_heavy()), "parallel-frontend") is None
    threaded = {**env, "rustflags": ["-Zthreads=8"]}
    assert only(rules.Context(threaded, frontend_heavy()), "parallel-frontend") is None


def test_a_bench_of_each_lever_replaces_its_bound(tmp_path: Path) -> None:
    env = with_linkers(wild=WILD)
    env["nightly"] = {"toolchain": "nightly", "cranelift": False}
    builds = [build(i, 1.0, compile_s=0.4, codegen=0.1, link=0.5) for i in range(1, 5)]
    found = rules.suggest(rules.Context(env, builds))[0]
    ids = {s["id"] for s in found}
    assert {"linker-wild", "parallel-frontend", "split-debuginfo"} <= ids
    bench = {
        "id": 3,
        "runs": 3,
        "baseline": "default",
        "finished_at": "2026-12-03T12:00:00+00:00",
        "conditions": CONDITIONS,
        "results": [
            row("default", "incremental", 1.00, 0.01, 0.0),
            row("wild", "incremental", 0.70, 0.01, -30.0),
            row("split-debuginfo", "incremental", 0.90, 0.01, -10.0),
            row("parallel-frontend", "incremental", 1.02, 0.01, 2.0),
        ],
    }
    now = datetime(2026, 12, 3, 13, 0, tzinfo=UTC)
    kept, withdrawn = evidence.cite(found, measured(tmp_path, bench), CONDITIONS, now)
    by_id = {s["id"]: s for s in kept}
    assert by_id["linker-wild"]["expected"]["source"] == "measured"
    assert by_id["linker-wild"]["expected"]["saves_s"] == 0.3
    assert by_id["split-debuginfo"]["expected"]["saves_s"] == 0.1
    assert [w["id"] for w in withdrawn] == ["parallel-frontend"]
    assert "slower" in withdrawn[0]["reason"]
