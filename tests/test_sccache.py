"""sccache's server outlives the builds that use it (rbd.daemon.build.sccache), though
every build's leftover processes are swept (rbd.daemon.build.procs)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rbd.client import benchtable, render
from rbd.daemon.advice import rules
from rbd.daemon.bench.cache import BENCH_REDIS_TTL_S, BenchCache
from rbd.daemon.build import procs, sccache
from rbd.daemon.store.sqlite import Store
from tests.conftest import WAIT_S, Rbd, make_crate
from tests.test_htmlpage import summary
from tests.test_projects import edit, main_rs
from tests.test_suggest import build, environment, only

pytestmark = pytest.mark.skipif(
    shutil.which("sccache") is None, reason="sccache is not installed (.ci/setup installs it)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def servers(port: int) -> dict[int, bytes]:
    """Live sccache processes started for this test's port, with their environments."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        alive = stat.rsplit(b")", 1)[1].split()[0] != b"Z"
        if b"(sccache)" in stat and alive and f"SCCACHE_SERVER_PORT={port}".encode() in environ:
            found[int(entry)] = environ
    return found


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_one_server_serves_every_build_and_ends_with_the_daemon(rbd: Rbd, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **rbd.env,
        "RUSTC_WRAPPER": "sccache",
        "SCCACHE_DIR": str(tmp_path / "cache"),
        "SCCACHE_SERVER_PORT": str(port),
        "SCCACHE_IDLE_TIMEOUT": "0",
    }
    crate = make_crate(tmp_path / "cached")
    rbd.start_daemon()
    events = rbd.events()
    assert rbd.run("start", cwd=crate, env=env).returncode == 0
    assert events.finished()["outcome"] == "success"
    first = servers(port)
    assert len(first) == 1, "no sccache server outlived the first build"
    [(pid, environ)] = first.items()
    assert procs.MARKER.encode() not in environ, "the server carries a build's marker"

    edit(crate / "src" / "main.rs", main_rs("again"))
    assert events.finished()["outcome"] == "success"
    assert set(servers(port)) == {pid}, "the second build did not use the same server"

    rbd.ok("shutdown")
    wait_for(lambda: not servers(port), "the server outlived the daemon that started it")


# A dependency from a directory source (as `cargo vendor` lays one out): not a path
# dependency, so cargo compiles it without incremental and sccache can cache it, with no
# registry reached.
VENDORED = {
    "Cargo.toml": '[package]\nname = "cached"\nversion = "0.1.0"\nedition = "2021"\n'
    '[dependencies]\ntinydep = "0.1"\n',
    "src/main.rs": 'fn main() {\n    println!("{}", tinydep::add(1, 2));\n}\n',
    ".cargo/config.toml": '[source.crates-io]\nreplace-with = "vendored"\n'
    '[source.vendored]\ndirectory = "vendor"\n',
    "vendor/tinydep/Cargo.toml": '[package]\nname = "tinydep"\nversion = "0.1.0"\n'
    'edition = "2021"\n',
    "vendor/tinydep/src/lib.rs": "pub fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n",
    "vendor/tinydep/.cargo-checksum.json": '{"files": {}, "package": null}\n',
}


def sccache_env(rbd: Rbd, tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose sccache is this test's own: its port, its cache dir."""
    return {
        **rbd.env,
        "RUSTC_WRAPPER": "sccache",
        "SCCACHE_DIR": str(tmp_path / "cache"),
        "SCCACHE_SERVER_PORT": str(free_port()),
        "SCCACHE_IDLE_TIMEOUT": "0",
        **extra,
    }


def test_each_build_records_what_sccache_did_for_it(rbd: Rbd, tmp_path: Path) -> None:
    env = sccache_env(rbd, tmp_path)
    crate = make_crate(tmp_path / "cached", files=VENDORED)
    rbd.start_daemon()
    events = rbd.events()
    assert rbd.run("start", cwd=crate, env=env).returncode == 0
    first = events.finished()
    assert first["outcome"] == "success", first
    stats = first["sccache"]
    # The dependency missed (an empty cache); the bin and cargo's probes of rustc are
    # not cacheable.
    assert stats["misses"] >= 1 and stats["hits"] == 0 and stats["hit_rate"] == 0
    assert stats["not_cacheable"] >= 1
    # "crate-type" (0.4), "crate-type (bin)" (0.19).
    assert any(reason.startswith("crate-type") for reason in stats["reasons"]), stats
    assert stats["compile_requests"] >= stats["misses"] + stats["not_cacheable"]
    assert stats["errors"] == 0 and str(tmp_path / "cache") in stats["location"]

    # cargo clean, then a build: the dependency comes from the cache.
    cleaned = subprocess.run(["cargo", "clean", "-q"], cwd=crate, env=env, check=False)
    assert cleaned.returncode == 0
    again = json.loads(rbd.ok("build", "--json", cwd=crate))
    assert again["outcome"] == "success" and events.finished()["id"] == again["id"]
    assert again["sccache"]["hits"] >= 1 and again["sccache"]["hit_rate"] > 0
    shown = json.loads(rbd.ok("show", str(again["id"]), "--json"))
    assert shown["sccache"] == again["sccache"]
    text = rbd.ok("show", str(again["id"]))
    assert re.search(r"sccache\s+\d+ hits?, \d+ miss(es)? \(\d+%\)", text), text
    history = rbd.ok("history", cwd=crate).splitlines()
    header = next(line for line in history if line.lstrip().startswith("id "))
    assert "sccache" in header, history
    hits = f"{again['sccache']['hits']}/{again['sccache']['hits'] + again['sccache']['misses']}"
    assert any(line.lstrip().startswith(f"{again['id']} ") and hits in line for line in history)

    # An edit rebuilds the workspace crate alone: nothing sccache could cache.
    edit(crate / "src" / "main.rs", VENDORED["src/main.rs"].replace("1, 2", "2, 3"))
    edited = events.finished()
    assert edited["outcome"] == "success" and edited["kind"] == "edit"
    assert edited["sccache"]["hits"] == 0 and edited["sccache"]["misses"] == 0
    assert edited["sccache"]["not_cacheable"] >= 1


def test_what_plain_cargo_cached_is_a_hit_for_rbds_build(rbd: Rbd, tmp_path: Path) -> None:
    """sccache hashes every CARGO_* variable: rbd's progress settings go to cargo as
    `--config`, so its builds share keys with a plain `cargo build` (CI's, a teammate's)."""
    env = sccache_env(rbd, tmp_path)
    crate = make_crate(tmp_path / "cached", files=VENDORED)
    ci_target = str(tmp_path / "ci-target")
    plain = subprocess.run(["cargo", "build", "-q", "--target-dir", ci_target], cwd=crate, env=env)
    assert plain.returncode == 0
    # That cargo's client started a server: stopped, the cache stays on disk.
    subprocess.run(["sccache", "--stop-server"], env=env, capture_output=True, check=True)
    wait_for(lambda: not servers(int(env["SCCACHE_SERVER_PORT"])), "sccache did not stop")
    rbd.start_daemon()
    events = rbd.events()
    assert rbd.run("start", cwd=crate, env=env).returncode == 0
    first = events.finished()
    assert first["outcome"] == "success" and first["kind"] == "full"
    assert first["sccache"]["hits"] >= 1 and first["sccache"]["misses"] == 0


def test_the_sccache_configuration_builds_through_sccache(rbd: Rbd, tmp_path: Path) -> None:
    env = sccache_env(rbd, tmp_path)
    del env["RUSTC_WRAPPER"]
    crate = make_crate(tmp_path / "cached", files=VENDORED)
    rbd.start_daemon()
    events = rbd.events()
    assert rbd.run("start", "--config", "sccache", cwd=crate, env=env).returncode == 0
    first = events.finished()
    assert first["outcome"] == "success" and first["config"] == "sccache"
    assert first["rustc_wrapper"] == shutil.which("sccache")
    assert (
        first["sccache"]["misses"] >= 1 and str(tmp_path / "cache") in first["sccache"]["location"]
    )
    assert (crate / "target" / "rbd" / "sccache" / "debug").is_dir()


def sccache_processes_using(path: Path) -> list[int]:
    """Live sccache processes whose environment names path (their cache dir)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        alive = stat.rsplit(b")", 1)[1].split()[0] != b"Z"
        if b"(sccache)" in stat and alive and str(path).encode() in environ:
            found.append(int(entry))
    return found


def test_bench_measures_sccache_cold_and_warm(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "cached", files=VENDORED)
    rbd.start_daemon()
    events = rbd.events()
    assert rbd.run("start", cwd=crate).returncode == 0
    assert events.finished()["sccache"] is None  # no RUSTC_WRAPPER: nothing to count
    args = ("--configs", "default,sccache", "--clean", "--runs", "1", "--warmup", "0")
    done = rbd.run("bench", "--json", *args, cwd=crate, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {(r["config"], r["cache"]): r for r in json.loads(done.stdout)["results"]}
    assert set(rows) == {("default", None), ("sccache", "cold"), ("sccache", "warm")}
    assert rows[("default", None)]["sccache"] is None
    cold, warm = rows[("sccache", "cold")], rows[("sccache", "warm")]
    assert cold["median_s"] is not None and warm["median_s"] is not None
    # Each from the bench's own cache: empty for the cold run, filled by it for the warm.
    assert cold["sccache"]["hits"] == 0 and cold["sccache"]["misses"] >= 1
    assert warm["sccache"]["hits"] >= 1 and warm["sccache"]["misses"] == 0
    bench_cache = crate / "target" / "rbd" / "bench" / "sccache-cache"
    assert str(bench_cache) in warm["sccache"]["location"]
    # The bench's server ended with it, and no other was started (`cargo clean` runs no
    # sccache client that would start one on the user's port).
    wait_for(lambda: not sccache_processes_using(bench_cache), "the bench's server outlived it")
    assert not sccache_processes_using(rbd.base), "the bench left an sccache server running"

    table = rbd.run("bench", *args, cwd=crate, timeout=120)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    for state in ("cold", "warm"):
        assert any(line.startswith(f"sccache ({state}) ") and " ms" in line for line in lines)
    assert any(re.match(r"sccache \(warm\): [1-9]\d* hits?, 0 misses", line) for line in lines)


# --- sccache's stats, read as two versions print them ---------------------------------

# `sccache --show-stats --stats-format json` of Debian's 0.4.0-pre.6, after one build.
STATS_0_4 = {
    "stats": {
        "compile_requests": 6,
        "requests_unsupported_compiler": 0,
        "requests_not_compile": 0,
        "requests_not_cacheable": 5,
        "requests_executed": 1,
        "cache_errors": {"counts": {}},
        "cache_hits": {"counts": {}},
        "cache_misses": {"counts": {"Rust": 1}},
        "cache_timeouts": 0,
        "cache_read_errors": 0,
        "non_cacheable_compilations": 0,
        "forced_recaches": 0,
        "cache_write_errors": 0,
        "cache_writes": 1,
        "compile_fails": 0,
        "not_cached": {"crate-type": 1, "-": 1, "missing input": 3},
    },
    "cache_location": 'Local disk: "/tmp/cache"',
    "cache_size": None,
    "max_cache_size": None,
}


def grown(stats: dict[str, Any], **counts: Any) -> dict[str, Any]:
    return {**stats, "stats": {**stats["stats"], **counts}}


def test_a_builds_counts_are_the_difference_of_two_reads() -> None:
    after = grown(
        STATS_0_4,
        compile_requests=13,
        requests_not_cacheable=9,
        cache_hits={"counts": {"Rust": 2}, "adv_counts": {"rust": 2}},  # 0.19 adds adv_counts
        cache_misses={"counts": {"Rust": 2}},
        cache_read_errors=1,
        not_cached={"crate-type": 2, "-": 1, "missing input": 3, "incremental": 3},
    )
    counted = sccache.difference(STATS_0_4, after)
    assert counted == {
        "compile_requests": 7,
        "hits": 2,
        "misses": 1,
        "not_cacheable": 4,
        "errors": 1,
        "hit_rate": pytest.approx(2 / 3, abs=1e-4),
        "reasons": {"crate-type": 1, "incremental": 3},
        "location": 'Local disk: "/tmp/cache"',
    }
    # A key this rbd does not know the shape of: that count is unknown, not zero.
    odd = sccache.difference(
        grown(STATS_0_4, cache_hits={"total": 0}), grown(after, cache_hits={"total": 2})
    )
    assert odd is not None and odd["hits"] is None and odd["hit_rate"] is None
    assert odd["misses"] == 1
    stripped = {k: v for k, v in after["stats"].items() if k != "cache_timeouts"}
    assert sccache.difference(STATS_0_4, {"stats": stripped})["errors"] is None  # type: ignore[index]
    # Counts that went down are another server's (restarted in between): no difference.
    assert sccache.difference(after, STATS_0_4) is None


def test_the_progress_settings_move_to_config_words_with_sccache() -> None:
    env = {"PATH": "/bin", "CARGO_TERM_COLOR": "never", "CARGO_TERM_PROGRESS_WHEN": "always"}
    argv, out = sccache.with_term_config(
        ["cargo", "+nightly", "build", "-v"], env, {"CARGO_TERM_COLOR": "always"}
    )
    assert argv[:2] == ["cargo", "+nightly"] and argv[-2:] == ["build", "-v"]
    assert argv[2:-2] == [
        "--config", 'term.progress.when="always"',
        "--config", "term.progress.width=1000",
        "--config", 'term.color="never"',
    ]  # fmt: skip
    # The user's own value stays in the environment (a plain cargo of theirs hashes it too).
    assert out == {"PATH": "/bin", "CARGO_TERM_COLOR": "always"}


def test_a_bench_cache_is_its_own_and_a_cold_one_gets_a_new_prefix(tmp_path: Path) -> None:
    user = {
        "SCCACHE_SERVER_UDS": "/run/user/1/sccache.sock",
        "SCCACHE_REDIS_ENDPOINT": "redis://cache.internal:6379",
        "SCCACHE_REDIS_KEY_PREFIX": "team/",
        "SCCACHE_BUCKET": "",  # named but empty: not a backend
    }
    cache = BenchCache(tmp_path / "sccache-cache", "sccache")
    env = cache.env(user)
    assert "SCCACHE_SERVER_UDS" not in env and env["SCCACHE_SERVER_PORT"] == str(cache.port)
    assert env["SCCACHE_DIR"] == str(tmp_path / "sccache-cache" / "cache")
    assert env["SCCACHE_REDIS_KEY_PREFIX"] == f"team/rbd-bench-{cache.namespace}"
    assert env["SCCACHE_REDIS_EXPIRATION"] == str(BENCH_REDIS_TTL_S)
    assert "SCCACHE_S3_KEY_PREFIX" not in env
    # What it is given is the user's environment: asked twice, the same.
    assert cache.env(user) == env


# --- suggest's sccache rule -------------------------------------------------------------


def bench_row(config: str, mode: str, median: float, cache: str | None = None) -> dict[str, Any]:
    return {"config": config, "mode": mode, "cache": cache, "median_s": median, "stddev_s": 0.05}


BENCH: dict[str, Any] = {
    "id": 4,
    "finished_at": "2026-12-03T08:00:00Z",
    "runs": 6,
    "baseline": "default",
    "results": [
        bench_row("default", "clean", 20.0),
        bench_row("sccache", "clean", 26.0, "cold"),
        bench_row("sccache", "clean", 6.0, "warm"),
        bench_row("default", "incremental", 1.0),
        bench_row("sccache", "incremental", 1.04),
    ],
}


def measured(*reports: dict[str, Any]) -> list[Any]:
    """What suggest reads: each configuration's latest measurement across the reports,
    stored one after the other in a real store (Store.latest_results)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "rbd.sqlite3")
        try:
            for report in reports:
                store.record_bench("/p", report)  # type: ignore[arg-type]
            return list(store.latest_results("/p"))
        finally:
            store.close()


def counted(hits: int = 0, misses: int = 0, not_cacheable: int = 2) -> dict[str, Any]:
    return {
        "compile_requests": hits + misses + not_cacheable,
        "hits": hits,
        "misses": misses,
        "not_cacheable": not_cacheable,
        "errors": 0,
        "hit_rate": None,
        "reasons": {"incremental": not_cacheable},
        "location": None,
    }


def test_suggest_leaves_sccache_out_of_edits_that_got_no_hit() -> None:
    with_sccache = environment()
    with_sccache["rustc_wrapper"] = "/usr/bin/sccache"
    edits = [{**build(i), "sccache": counted()} for i in (3, 2, 1)]
    item = only(rules.Context(with_sccache, edits, measurements=measured(BENCH)), "sccache")
    assert item is not None and item["title"].startswith("Leave sccache out")
    assert "the last 3 edit rebuilds" in item["evidence"] and "no hit" in item["evidence"]
    assert "6 not cacheable" in item["evidence"] and item["expected"]["source"] == "measured"
    # What leaving it costs is measured too: the bench's cold and warm clean builds.
    assert "6.00 s from a warm cache, 26.00 s from an empty one" in item["tradeoffs"]
    # Edit rebuilds that did get hits: sccache earns its cost here.
    hit = [{**build(i), "sccache": counted(hits=1)} for i in (3, 2, 1)]
    assert only(rules.Context(with_sccache, hit), "sccache") is None
    # Builds an older rbd recorded, without counts: the argument from how sccache works.
    older = only(rules.Context(with_sccache, [build(i) for i in (3, 2, 1)]), "sccache")
    assert older is not None and older["expected"]["source"] == "estimate"


def test_suggest_recommends_sccache_for_clean_builds_from_a_bench() -> None:
    builds = [build(i) for i in (3, 2, 1)]
    item = only(rules.Context(environment(), builds, measurements=measured(BENCH)), "sccache")
    assert item is not None and "not in the edit loop" in item["title"]
    assert "rbd bench #1" in item["evidence"] and "6.00 s with a warm sccache" in item["evidence"]
    assert "26.00 s from an empty cache" in item["evidence"] and "20.00 s" in item["evidence"]
    assert "+40 ms" in item["evidence"]  # an edit rebuild pays, and gets nothing
    assert item["expected"]["saves_s"] == 0.0 and "saves 14.00 s" in item["expected"]["basis"]
    # A warm cache no faster than the runs' spread, or no bench: nothing to recommend.
    close = {**BENCH, "results": [*BENCH["results"][:2], bench_row("sccache", "clean", 19.97,
                                                                  "warm")]}  # fmt: skip
    assert (
        only(rules.Context(environment(), builds, measurements=measured(close)), "sccache") is None
    )
    assert only(rules.Context(environment(), builds), "sccache") is None


def test_a_later_bench_of_other_configurations_keeps_the_sccache_finding() -> None:
    """The rule read only the latest bench: a later `--configs default,mold` bench made
    it forget what sccache's cold and warm clean builds had measured."""
    later = {
        "id": 5,
        "runs": 3,
        "baseline": "default",
        "results": [
            bench_row("default", "incremental", 1.0),
            bench_row("mold", "incremental", 0.8),
        ],
    }
    builds = [build(i) for i in (3, 2, 1)]
    item = only(
        rules.Context(environment(), builds, measurements=measured(BENCH, later)), "sccache"
    )
    assert item is not None and "rbd bench #1" in item["evidence"]
    assert "saves 14.00 s" in item["expected"]["basis"]
    assert "stale" not in item["evidence"]
    # A measurement that no longer holds is cited as stale, not used as measured.
    old = [{**m, "stale": "Cargo.lock changed since"} for m in measured(BENCH, later)]
    item = only(rules.Context(environment(), builds, measurements=old), "sccache")
    assert item is not None and "stale: Cargo.lock changed since" in item["evidence"]
    assert item["expected"]["source"] == "estimate"


# --- a shared backend: Redis ----------------------------------------------------------------


def redis_sccache() -> str | None:
    """An sccache built with Redis: $RBD_TEST_SCCACHE, else the one `cargo install
    --locked sccache --root ~/.cache/rbd-bench/sccache` put there, else the one on PATH
    (Debian's 0.4 is built without it)."""
    for candidate in (
        os.environ.get("RBD_TEST_SCCACHE"),
        str(Path.home() / ".cache" / "rbd-bench" / "sccache" / "bin" / "sccache"),
        shutil.which("sccache"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            shown = subprocess.run([candidate, "--help"], capture_output=True, text=True)
            if re.search(r"Redis:\s+true", shown.stdout):
                return candidate
    return None


@pytest.fixture
def redis_endpoint() -> Iterator[str]:
    """A redis-server of the test's own on loopback, keeping nothing on disk."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip

    def pongs() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(pongs, "redis-server did not answer")
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(WAIT_S)


def redis_cli(port: str, *args: str) -> str:
    done = subprocess.run(["redis-cli", "-p", port, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.redis
def test_two_users_share_hits_through_redis(rbd: Rbd, tmp_path: Path, redis_endpoint: str) -> None:
    """CI's plain cargo fills a team's Redis; a developer's rbd, with another sccache
    server and cache dir, gets its dependency from there, and benches it cold and warm.
    Dependencies must sit at the same path for both (sccache hashes the compile's
    directory and CARGO_MANIFEST_DIR): here one vendored source, as a shared
    CARGO_HOME would have it."""
    wrapper = redis_sccache()
    if wrapper is None:
        pytest.skip("no sccache built with Redis (cargo install --locked sccache)")
    vendor = tmp_path / "registry"
    files = {k: v for k, v in VENDORED.items() if not k.startswith("vendor/")}
    files[".cargo/config.toml"] = VENDORED[".cargo/config.toml"].replace('"vendor"', f'"{vendor}"')
    make_crate(vendor / "tinydep", "tinydep", {
        k.removeprefix("vendor/tinydep/"): v for k, v in VENDORED.items()
        if k.startswith("vendor/tinydep/")
    })  # fmt: skip
    (vendor / "tinydep" / "src" / "main.rs").unlink()
    ci = make_crate(tmp_path / "ci" / "app", files=files)
    developer = make_crate(tmp_path / "dev" / "app", files=files)

    ci_env = sccache_env(rbd, tmp_path / "ci", RUSTC_WRAPPER=wrapper)
    ci_env["SCCACHE_REDIS_ENDPOINT"] = redis_endpoint
    plain = subprocess.run(["cargo", "build", "-q"], cwd=ci, env=ci_env)
    assert plain.returncode == 0
    subprocess.run([wrapper, "--stop-server"], env=ci_env, capture_output=True, check=True)

    env = sccache_env(rbd, tmp_path / "dev", RUSTC_WRAPPER=wrapper)
    env["SCCACHE_REDIS_ENDPOINT"] = redis_endpoint
    assert env["SCCACHE_SERVER_PORT"] != ci_env["SCCACHE_SERVER_PORT"]
    rbd.start_daemon()
    events = rbd.events()
    assert rbd.run("start", cwd=developer, env=env).returncode == 0
    first = events.finished()
    assert first["outcome"] == "success", first
    assert first["sccache"]["hits"] >= 1 and first["sccache"]["misses"] == 0
    assert "redis" in first["sccache"]["location"].lower()

    args = ("--configs", "default,sccache", "--clean", "--runs", "1", "--warmup", "0")
    done = rbd.run("bench", "--json", *args, cwd=developer, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {(r["config"], r["cache"]): r for r in json.loads(done.stdout)["results"]}
    cold, warm = rows[("sccache", "cold")]["sccache"], rows[("sccache", "warm")]["sccache"]
    # The cold run's own key prefix: the team's entries neither hit nor overwritten.
    assert cold["hits"] == 0 and cold["misses"] >= 1 and "redis" in cold["location"].lower()
    assert warm["hits"] >= 1 and warm["misses"] == 0
    assert re.search(r"prefix: /rbd-bench-[0-9a-f]{8}/?$", cold["location"]), cold["location"]
    # What the bench wrote expires; what CI wrote does not (no expiry was asked for).
    port = redis_endpoint.rsplit(":", 1)[1]
    ttls = {
        key.split("/", 1)[0].startswith("rbd-bench-"): int(ttl)
        for key in redis_cli(port, "--scan").split()
        if (ttl := redis_cli(port, "ttl", key).strip())
    }
    assert 0 < ttls[True] <= BENCH_REDIS_TTL_S and ttls[False] == -1, ttls


# --- what the client prints ---------------------------------------------------------------


def test_the_bench_table_shows_cold_and_warm_as_rows() -> None:
    def row(median: float, cache: str | None, **more: Any) -> dict[str, Any]:
        config = "default" if cache is None else "sccache"
        made = {**bench_row(config, "clean", median, cache), "available": True, "reason": None}
        return {**made, "mean_s": median, "min_s": median, "noisy": False, "phases": {}, **more}

    report = {
        "project": "/src/app", "runs": 3, "warmup": 1, "baseline": "default", "edit": None,
        "results": [
            row(20.0, None, delta_s=0.0, delta_pct=0.0, sccache=None),
            row(26.0, "cold", delta_s=6.0, delta_pct=30.0, sccache=counted(misses=61)),
            row(6.0, "warm", delta_s=-14.0, delta_pct=-70.0, sccache=counted(hits=61)),
        ],
    }  # fmt: skip
    lines = benchtable.table(report).splitlines()
    assert any(line.startswith("sccache (cold)  ") and "+6.00 s" in line for line in lines)
    assert any(line.startswith("sccache (warm)  ") and "−14.00 s" in line for line in lines)
    assert "fastest: sccache (warm) (−70.0% clean)" in lines
    assert any(line.startswith("sccache (warm): 61 hits, 0 misses") for line in lines)
    assert any(line.startswith("sccache (cold): every run from an empty cache") for line in lines)


def test_show_and_history_print_the_counts_only_where_there_are_some() -> None:
    stats = {**counted(hits=12, misses=3, not_cacheable=5), "hit_rate": 0.8}
    stats["reasons"] = {"-": 1, "crate-type": 4}
    line = render.sccache_line(stats)  # type: ignore[arg-type]
    assert line == "12 hits, 3 misses (80%), 5 not cacheable (stdin 1, crate-type 4)"
    cached = {**summary(2), "sccache": stats}
    table = render.history([cached, summary(1)]).splitlines()  # type: ignore[list-item]
    assert "sccache" in table[0] and "12/15" in table[1] and "12/15" not in table[2]
    assert "sccache" not in render.history([summary(1)])
