"""`rbd suggest` and `rbd tune` end to end: the real daemon, its recorded builds of a
real crate, the probe of the installed toolchain, and the project's files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import anyio

from rbd.contract.schema import BenchReport, BuildSummary
from rbd.daemon.advice import advisor
from rbd.daemon.bench import freshness
from rbd.daemon.store.sqlite import Store, TuneRecord
from tests.conftest import WAIT_S, Rbd, make_crate
from tests.test_projects import started

MANIFEST = (
    "# my app, my comments\n"
    '[package]\nname = "tuned"\nversion = "0.1.0"\nedition = "2021"  # keep me\n\n'
    "[profile.dev]\n# full debuginfo for now\nopt-level = 0\n"
)


def rebuilt_three_times(rbd: Rbd, tmp_path: Path) -> Path:
    crate = make_crate(tmp_path / "tuned", "tuned", {"Cargo.toml": MANIFEST})
    events = started(rbd, crate)
    events.finished()
    for i in range(3):
        (crate / "src" / "main.rs").write_text(f'fn main() {{ println!("{i}"); }}\n')
        assert events.finished()["outcome"] == "success"
    return crate


def test_suggest_apply_and_revert_byte_for_byte(rbd: Rbd, tmp_path: Path) -> None:
    crate = rebuilt_three_times(rbd, tmp_path)
    data = json.loads(rbd.ok("suggest", "--json", cwd=crate))
    assert data["environment"]["host"] and data["environment"]["profile"]["debug"] == 2
    assert data["builds_considered"] == 3
    by_id = {s["id"]: s for s in data["suggestions"]}
    line_tables = by_id["debuginfo-line-tables"]
    assert "last 3 builds" in line_tables["evidence"]
    assert line_tables["expected"]["source"] == "unmeasured"
    assert line_tables["expected"]["saves_s"] is None
    text = rbd.ok("suggest", cwd=crate)
    assert "rbd tune apply debuginfo-line-tables" in text
    # Unknown until a bench measures it, shown with its bound; no number made up.
    assert "saves     unknown, at most " in text

    # One step applies only a measured saving: before any bench there is none.
    refused = rbd.run("suggest", "--apply-best", cwd=crate)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "no measured suggestion" in refused.stderr
    assert "rbd bench --incremental" in refused.stderr
    assert (crate / "Cargo.toml").read_text() == MANIFEST

    # Two suggestions setting the same key: one line, nothing written.
    both = rbd.run("tune", "apply", "debuginfo-line-tables", "debuginfo-none", cwd=crate)
    assert both.returncode == 1 and both.stderr.count("\n") == 1
    assert "both set profile.dev.debug in Cargo.toml" in both.stderr
    assert (crate / "Cargo.toml").read_text() == MANIFEST

    dry = rbd.ok("tune", "apply", "debuginfo-line-tables", "--dry-run", cwd=crate)
    assert '+debug = "line-tables-only"' in dry and "nothing written" in dry
    assert (crate / "Cargo.toml").read_text() == MANIFEST

    events = rbd.events()
    applied = rbd.ok("tune", "apply", "debuginfo-line-tables", cwd=crate)
    assert "tune #1" in applied
    after = (crate / "Cargo.toml").read_text()
    assert after.startswith(MANIFEST.split("opt-level")[0])  # comments and order kept
    assert "# keep me" in after and 'debug = "line-tables-only"' in after
    # The daemon sees the manifest change and rebuilds with the new profile.
    assert events.finished()["outcome"] == "success"

    reverted = rbd.ok("tune", "revert", cwd=crate)
    assert "reverted tune #1" in reverted
    assert (crate / "Cargo.toml").read_bytes() == MANIFEST.encode()
    again = rbd.run("tune", "revert", "1", cwd=crate)
    assert again.returncode == 1 and "already reverted" in again.stderr


def test_revert_refuses_to_lose_a_later_edit(rbd: Rbd, tmp_path: Path) -> None:
    crate = rebuilt_three_times(rbd, tmp_path)
    rbd.ok("tune", "apply", "debuginfo-line-tables", cwd=crate)
    edited = (crate / "Cargo.toml").read_text() + "\n# my later edit\n"
    (crate / "Cargo.toml").write_text(edited)
    refused = rbd.run("tune", "revert", cwd=crate)
    assert refused.returncode == 1
    assert "changed since tune #1" in refused.stderr and "--force" in refused.stderr
    assert (crate / "Cargo.toml").read_text() == edited
    rbd.ok("tune", "revert", "--force", cwd=crate)
    assert (crate / "Cargo.toml").read_bytes() == MANIFEST.encode()


def test_bad_tune_requests_are_clear_errors(rbd: Rbd, tmp_path: Path) -> None:
    crate = rebuilt_three_times(rbd, tmp_path)
    missing = rbd.run("tune", "apply", "linker-mold", cwd=crate)
    assert missing.returncode == 1
    assert "'linker-mold' is not a current suggestion" in missing.stderr
    assert "Traceback" not in missing.stderr
    usage = rbd.run("tune", "apply", cwd=crate)
    assert usage.returncode == 2
    nothing = rbd.run("tune", "revert", cwd=crate)
    assert nothing.returncode == 1 and "no applied tune" in nothing.stderr
    elsewhere = rbd.run("suggest", cwd=tmp_path)
    assert elsewhere.returncode == 1 and "not inside a project rbd watches" in elsewhere.stderr
    assert (crate / "Cargo.toml").read_text() == MANIFEST


def test_advice_and_tuning_need_a_watched_project(rbd: Rbd, tmp_path: Path) -> None:
    # Recorded builds are not enough: suggest probes the toolchain and apply runs
    # cargo, in projects their user currently watches only.
    crate = rebuilt_three_times(rbd, tmp_path)
    rbd.ok("stop", cwd=crate)
    for command in (["suggest"], ["tune", "apply", "debuginfo-line-tables"], ["tune", "revert"]):
        done = rbd.run(*command, cwd=crate)
        assert done.returncode == 1 and "not inside a project rbd watches" in done.stderr
    # History still reads it.
    assert json.loads(rbd.ok("history", "--json", cwd=crate))
    assert (crate / "Cargo.toml").read_text() == MANIFEST


def test_tune_writes_through_a_link_only_inside_the_project(rbd: Rbd, tmp_path: Path) -> None:
    """A linked Cargo.toml: followed (and named in the diff) where it leads inside the
    project; refused in one line, with nothing written, where it leads outside."""
    crate = rebuilt_three_times(rbd, tmp_path)
    manifest = crate / "Cargo.toml"
    inside = crate / "conf" / "Cargo.toml"
    inside.parent.mkdir()
    manifest.replace(inside)
    manifest.symlink_to(Path("conf") / "Cargo.toml")

    applied = rbd.ok("tune", "apply", "debuginfo-line-tables", cwd=crate)
    assert "Cargo.toml -> conf/Cargo.toml" in applied
    assert manifest.is_symlink() and 'debug = "line-tables-only"' in inside.read_text()
    rbd.ok("tune", "revert", cwd=crate)
    assert manifest.is_symlink() and inside.read_bytes() == MANIFEST.encode()

    outside = tmp_path / "elsewhere" / "Cargo.toml"
    outside.parent.mkdir()
    inside.replace(outside)
    manifest.unlink()
    manifest.symlink_to(outside)
    refused = rbd.run("tune", "apply", "debuginfo-line-tables", cwd=crate)
    assert refused.returncode == 1
    [line] = refused.stderr.splitlines()
    assert "outside the project" in line and str(outside) in line
    assert outside.read_bytes() == MANIFEST.encode() and manifest.is_symlink()


def test_two_tunes_at_once_are_recorded_in_the_order_they_wrote(rbd: Rbd, tmp_path: Path) -> None:
    """The first tune's cargo check is slow (a cargo wrapper sleeps on its first check),
    so the second is asked for while the first is between its write and its record:
    the second waits, the history of tunes is the order of the writes, and two reverts
    give back the original bytes without a false conflict."""
    real_cargo = shutil.which("cargo")
    assert real_cargo is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    first = tmp_path / "first-check"
    wrapper = bin_dir / "cargo"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = clean ] && [ ! -e {first} ]; then : > {first}; sleep 3; fi\n'
        f'exec {real_cargo} "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {**rbd.env, "PATH": f"{bin_dir}:{rbd.env['PATH']}"}
    # Two of the profile's settings that rules undo: two suggestions to apply at once.
    manifest = MANIFEST + "codegen-units = 16\n"
    crate = make_crate(tmp_path / "tuned", "tuned", {"Cargo.toml": manifest})
    rbd.start_daemon()
    events = rbd.events()
    assert rbd.run("start", cwd=crate, env=env).returncode == 0
    events.finished()
    for i in range(3):
        (crate / "src" / "main.rs").write_text(f'fn main() {{ println!("{i}"); }}\n')
        events.finished()
    suggested = json.loads(rbd.ok("suggest", "--json", cwd=crate))
    ids = [s["id"] for s in suggested["suggestions"] if "manual" not in s["change"]][:2]
    assert len(ids) == 2, suggested["suggestions"]

    command = [sys.executable, "-m", "rbd.client", "tune", "apply"]
    slow = subprocess.Popen([*command, ids[0]], cwd=crate, env=rbd.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + WAIT_S
    while not first.exists():
        assert slow.poll() is None and time.monotonic() < deadline, slow.communicate()
        time.sleep(0.05)
    second = rbd.run("tune", "apply", ids[1], cwd=crate)
    assert slow.wait(timeout=WAIT_S) == 0, slow.communicate()
    assert second.returncode == 0, second.stderr

    assert "reverted tune #2" in rbd.ok("tune", "revert", cwd=crate)
    assert "reverted tune #1" in rbd.ok("tune", "revert", cwd=crate)
    assert (crate / "Cargo.toml").read_bytes() == manifest.encode()


def test_after_a_tune_suggest_argues_from_the_builds_made_since(rbd: Rbd, tmp_path: Path) -> None:
    crate = rebuilt_three_times(rbd, tmp_path)
    events = rbd.events()
    rbd.ok("tune", "apply", "debuginfo-line-tables", cwd=crate)
    assert events.finished()["outcome"] == "success"  # the manifest change's rebuild
    # Too few builds since: the old ones are still used, and said to predate the tune.
    stale = json.loads(rbd.ok("suggest", "--json", cwd=crate))
    assert "predates tune #1" in (stale["hint"] or "")
    assert stale["builds_considered"] >= 3
    for i in range(3):
        (crate / "src" / "main.rs").write_text(f'fn main() {{ println!("tuned {i}"); }}\n')
        assert events.finished()["outcome"] == "success"
    fresh = json.loads(rbd.ok("suggest", "--json", cwd=crate))
    assert "predates" not in (fresh["hint"] or "")
    # Only the builds since the tune: not the three before it, too.
    assert 3 <= fresh["builds_considered"] < stale["builds_considered"] + 3


def test_enough_builds_after_a_tune_are_min_builds_edit_rebuilds() -> None:
    def made(build_id: int, at: str) -> BuildSummary:
        summary = {"id": build_id, "started_at": at, "outcome": "success", "kind": "edit"}
        return cast(BuildSummary, {**summary, "trigger": ["src/main.rs"], "wall_s": 1.0})

    tune: TuneRecord = {
        "id": 4,
        "applied_at": "2026-12-01T10:00:00.000+00:00",
        "suggestions": ["debuginfo-line-tables"],
        "reverted_at": None,
        "files": [],
    }
    before = [made(i, f"2026-12-01T09:0{i}:00.000+00:00") for i in (3, 2, 1)]
    after = [made(i, f"2026-12-01T10:0{i}:00.000+00:00") for i in (7, 6, 5)]
    builds, note = advisor.since_tune(after[1:] + before, tune)
    assert builds == after[1:] + before and note and "predates tune #4" in note
    assert advisor.since_tune(after + before, tune) == (after, None)
    assert advisor.since_tune(after + before, None) == (after + before, None)


def measured_suggestion(id: str, saves: float | None, **extra: object) -> dict[str, object]:
    source = "unmeasured" if saves is None else "measured"
    return {
        "id": id,
        "expected": {"saves_s": saves, "source": source, "basis": "b"},
        "change": {"file": "Cargo.toml", "set": []},
        "runnable": True,
        **extra,
    }


def test_apply_best_takes_the_first_measured_saving_it_can_apply() -> None:
    from rbd.client.cli import best_measured

    unmeasured = measured_suggestion("a", None)
    manual = measured_suggestion("b", 0.5, change={"file": "env", "manual": "do it"})
    elsewhere = measured_suggestion("c", 0.4, runnable=False)
    nothing = measured_suggestion("d", 0.0)
    # A stale bench measurement keeps the rule's own source (evidence.cite).
    stale = measured_suggestion("e", None)
    best = measured_suggestion("f", 0.2)
    found = [unmeasured, manual, elsewhere, nothing, stale, best]
    assert best_measured(found) is best
    assert best_measured(found[:-1]) is None


def test_apply_best_applies_a_fresh_measured_saving_in_one_step(rbd: Rbd, tmp_path: Path) -> None:
    """A bench report made under the project's conditions now (the daemon's own reader
    judges them) measured no-debuginfo well ahead of default: `--apply-best` applies
    debuginfo-none, the measured one, and nothing else."""
    crate = rebuilt_three_times(rbd, tmp_path)
    current = anyio.run(freshness.of_project, crate, rbd.env, None)
    assert current is not None and current["rustc"]
    row = {"mode": "incremental", "cache": None, "stddev_s": 0.01, "available": True}
    report = {
        "runs": 5,
        "baseline": "default",
        "conditions": current,
        "results": [
            {**row, "config": "default", "median_s": 0.9},
            {**row, "config": "no-debuginfo", "median_s": 0.4, "delta_pct": -55.6},
        ],
    }
    store = Store(Path(rbd.store))
    try:
        store.record_bench(str(crate), cast(BenchReport, report))
    finally:
        store.close()
    data = json.loads(rbd.ok("suggest", "--json", cwd=crate))
    top = data["suggestions"][0]
    assert top["id"] == "debuginfo-none" and top["expected"]["source"] == "measured"
    assert top["expected"]["saves_s"] == 0.5 and "σ 0.01 s" in top["expected"]["basis"]

    dry = rbd.ok("suggest", "--apply-best", "--dry-run", cwd=crate)
    assert dry.startswith("debuginfo-none: ") and "+debug = 0" in dry
    assert (crate / "Cargo.toml").read_text() == MANIFEST
    done = json.loads(rbd.ok("suggest", "--apply-best", "--json", cwd=crate))
    assert done["suggestion"]["id"] == "debuginfo-none" and done["tune"]["applied"] == [
        "debuginfo-none"
    ]
    assert "debug = 0" in (crate / "Cargo.toml").read_text()
    rbd.ok("tune", "revert", cwd=crate)
    assert (crate / "Cargo.toml").read_bytes() == MANIFEST.encode()
