"""A store the last release wrote opens in today's daemon with its history intact.

tests/data/store-release-0.1.0.sqlite3 was written by rbd 0.1.0 (git f48fa16,
the last commit before the `rbd` namespace), installed from a git worktree into
a venv of its own. With an environment of only PATH, HOME and XDG_* dirs under
/tmp/rbd-compat-0.1.0 (the store records the environment `rbd start` ran in),
`cargo new --vcs none demo` there, then in demo/: `rbd start` (build 1, a
success), a syntax error written into src/main.rs (build 2, a failure with 2
errors), `rbd shutdown`. The file is the store as the daemon left it (61 kB, its
WAL checkpointed at shutdown; `strings` shows no variable but those). Then the
project dir was deleted, the release's daemon started on a copy of the file,
and what it printed for `rbd history --all --json` and `rbd show ID --json` kept
in tests/data/store-release-0.1.0.json.

The project the store says is watched does not exist here, as on any machine
but the one that wrote the file: the daemon must log that it cannot resume it
and serve the history all the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rbd.contract import protocol
from tests.conftest import Rbd, make_crate

DATA = Path(__file__).resolve().parent / "data"
STORE = DATA / "store-release-0.1.0.sqlite3"
RELEASE_OUTPUT = DATA / "store-release-0.1.0.json"
RECORDED_PROJECT = "/tmp/rbd-compat-0.1.0/demo"


def contains(new: Any, old: Any, where: str = "") -> list[str]:
    """Where `new` differs from `old`, keys only `new` has aside (an added field is compatible)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            difference
            for key, value in old.items()
            for difference in (
                contains(new[key], value, f"{where}.{key}")
                if key in new
                else [f"{where}.{key}: missing"]
            )
        ]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            d
            for i, (n, o) in enumerate(zip(new, old, strict=True))
            for d in contains(n, o, f"{where}[{i}]")
        ]
    return [] if new == old else [f"{where}: {old!r} became {new!r}"]


def test_a_release_store_keeps_its_history(rbd: Rbd, tmp_path: Path) -> None:
    if Path(RECORDED_PROJECT).exists():
        pytest.skip(f"{RECORDED_PROJECT} exists here: the daemon would resume and build it")
    release = json.loads(RELEASE_OUTPUT.read_text())
    Path(rbd.store).parent.mkdir(parents=True)
    shutil.copyfile(STORE, rbd.store)
    rbd.start_daemon()
    pid = rbd.daemon_pid()

    builds = json.loads(rbd.ok("history", "--all", "--json"))
    assert [(b["id"], b["outcome"]) for b in builds] == [(2, "failure"), (1, "success")]
    assert not contains(builds, release["history_all"]), contains(builds, release["history_all"])
    for build_id, old in release["show"].items():
        shown = json.loads(rbd.ok("show", build_id, "--json"))
        assert not contains(shown, old), contains(shown, old)
    failure = json.loads(rbd.ok("show", "2", "--json"))
    assert failure["errors"] == 2 and "expected `;`" in failure["first_error"]
    assert failure["phases"]["overhead_s"] > 0 and failure["units"][0]["name"] == "demo"
    # The project's own history, asked for by its (missing) path, as the release answered.
    by_path = json.loads(rbd.ok("history", "--json", RECORDED_PROJECT))
    assert [b["id"] for b in by_path] == [2, 1]

    # The missing project was not resumed, and its failure did not take the daemon down.
    status = rbd.request(protocol.STATUS)
    assert status["daemon"]["pid"] == pid
    assert RECORDED_PROJECT not in [p["root"] for p in status["projects"]]
    log = Path(rbd.store).with_name("rbd.log").read_text()
    assert "resume_failed" in log and RECORDED_PROJECT in log

    # A new build is recorded alongside the old ones, numbered after them.
    crate = make_crate(tmp_path / "demo")
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    finished = events.wait_for(
        lambda e: e.get("event") == protocol.BUILD_FINISHED and e["build"]["project"] == str(crate)
    )["build"]
    assert finished["outcome"] == "success" and finished["id"] > 2
    builds = json.loads(rbd.ok("history", "--all", "--json"))
    assert [b["id"] for b in builds] == [finished["id"], 2, 1]
    assert not contains(builds[1:], release["history_all"])
    assert [b["id"] for b in json.loads(rbd.ok("history", "--json", cwd=crate))] == [finished["id"]]
